"""Batched greedy generation (left padding), the workhorse of every generation metric."""

from __future__ import annotations

from typing import Sequence

import torch

from viker.collate import Collator, model_inputs, warn_past_context
from viker.data.schema import Example
from viker.errors import require
from viker.model import eval_mode
from viker.progress import progress_bar

# Greedy is greedy whatever the checkpoint's generation_config.json ships (Qwen2-VL-Instruct's sets a
# repetition penalty): settings that would change which token is picked are set to their neutral values.
# (min_new_tokens=0 takes precedence over a shipped min_length, which is not set itself: transformers warns of both)
GREEDY = dict(do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
              suppress_tokens=None, begin_suppress_tokens=None, bad_words_ids=None, sequence_bias=None,
              forced_bos_token_id=None, forced_eos_token_id=None, exponential_decay_length_penalty=None)


def check_generation_settings(cfg) -> None:
    """The settings every evaluation config shares: questions per batch, reply length, retain limit."""
    require(cfg.batch_size >= 1, "--batch-size", cfg.batch_size, "must be at least 1")
    require(cfg.max_new_tokens >= 1, "--max-new-tokens", cfg.max_new_tokens, "must be at least 1")
    require(cfg.retain_limit is None or cfg.retain_limit >= 1, "--retain-limit", cfg.retain_limit,
            "must be at least 1" + (" (--only leaves a set out)" if hasattr(cfg, "scope") else ""))


def stop_token_ids(model, collate: Collator) -> list[int] | None:
    """The tokens an answer may end on: the model's own end-of-sequence tokens and the end of the turn it was
    trained to end its answers with (a checkpoint's generation_config.json may list only the former, and an
    answer then runs on past its turn)."""
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    listed = [] if listed is None else [listed] if isinstance(listed, int) else list(listed)
    end = collate.end_of_turn_id()
    return (listed + [end] if end is not None and end not in listed else listed) or None


@torch.no_grad()
def generate(
    model,
    processor,
    examples: Sequence[Example],
    batch_size: int = 32,
    max_new_tokens: int = 50,
    desc: str = "generating",
    progress: bool = True,
    inner: bool = False,
) -> list[str]:
    """Greedy answers to ``examples``, in order. Prompts are batched with left padding so every new
    token follows its own prompt; the answers are identical to one-at-a-time decoding. The model's own
    generation settings that would steer away from greedy (``GREEDY``) are overridden. ``inner``: the progress
    bar is nested in the caller's (:func:`viker.progress.progress_bar`)."""
    collate = Collator(processor, answers=False)
    tokenizer = collate.tokenizer
    device = next(model.parameters()).device
    stop = stop_token_ids(model, collate)
    # Sort by prompt length so batches hold similar lengths (less padding), then restore the order.
    order = sorted(range(len(examples)), key=lambda i: (examples[i].image is None, len(examples[i].question)))
    answers: list[str] = [""] * len(examples)
    lengths: list[int] = []  # of the prompts as the model reads them, image tokens included
    # said before generating, which past the context may take long (a prompt of thousands of words, or a reply of
    # --max-new-tokens far beyond it): by the prompts' text alone, their images' tokens counted as batches are read
    texts = [collate.render(ex) for ex in examples]
    told = warn_past_context(model, [len(ids) for ids in collate.tokenize(texts)] if texts else [],  # none: no call
                             f"prompts ({desc}; their text alone)", max_new_tokens)
    with eval_mode(model):
        for start in progress_bar(range(0, len(order), batch_size), desc=desc, disable=not progress, inner=inner):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in model_inputs(collate([examples[i] for i in idx])).items()}
            lengths += batch["attention_mask"].sum(dim=1).tolist()
            out = model.generate(**batch, max_new_tokens=max_new_tokens, **GREEDY, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=stop)
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                answers[i] = text.strip()
    if not told:
        warn_past_context(model, lengths, f"prompts ({desc})", max_new_tokens)
    return answers
