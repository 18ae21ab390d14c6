"""A tiny LLaVA, built offline from a config, that runs the whole pipeline on a laptop CPU.

It is a real ``LlavaForConditionalGeneration`` (CLIP vision tower + projector + Llama decoder) with a
real ``LlavaProcessor`` (a byte-level BPE tokenizer trained on the benchmark's own text, a CLIP image
processor and a LLaVA-1.5-style chat template). It is saved and loaded with the standard
``save_pretrained`` / ``from_pretrained`` calls, so everything downstream treats it exactly like a
downloaded checkpoint such as ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from viker.data.loader import load_finetune, load_profiles

IMAGE_TOKEN, PAD, BOS, EOS = "<image>", "<pad>", "<s>", "</s>"

# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT: ...</s>"), as a chat template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "</s>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny model: small enough to finetune on 2 CPU cores in minutes."""

    vocab_size: int = 2048
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    hidden: int = 256
    layers: int = 3
    heads: int = 4
    intermediate: int = 512
    max_positions: int = 256
    feature_strategy: str = "default"  # default: patch tokens only; full: the CLS token too
    seed: int = 0
    family: str = "llava"  # llava | qwen2_vl | idefics2 (see viker.model.families)


def benchmark_texts(data_dir: str | Path, benchmark: str | None = None) -> Iterable[str]:
    """All text a model of this benchmark will read or write: the tokenizer's training corpus. ``benchmark``
    (mllmu or clear) says which layout ``data_dir`` has; None tells a local folder's by its configs (a hub id
    is then read as MLLMU-Bench)."""
    from viker.data import clear

    if benchmark == "clear" or (benchmark is None and clear.is_clear(data_dir)):
        yield from clear.benchmark_texts(data_dir)
        return
    for config in ("Full_Set", "Retain_Set"):
        for p in load_profiles(data_dir, config):
            yield from (p.biography, p.question, p.answer)
            for q in (*p.generation, *p.cloze):
                yield q.question
                yield q.answer
            for mc in p.mc:
                yield mc.question
                yield from mc.options.values()
    for record in load_finetune(data_dir):
        for q in record.qa:
            yield q.question
            yield q.answer
    from viker.prompts import PROMPT_TEXTS  # the fixed instructions and refusals we add to prompts

    yield from PROMPT_TEXTS


def train_tokenizer(texts: Iterable[str], vocab_size: int, specials: Sequence[str] = (PAD, BOS, EOS, IMAGE_TOKEN),
                    bos: str | None = BOS, eos: str = EOS, pad: str = PAD,
                    named: dict[str, str] | None = None, chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``. The defaults are LLaVA's (a BOS token before every
    text, ``<image>``); other families pass their own special tokens, BOS (None: none) and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens={"image_token": IMAGE_TOKEN} if named is None else named,
        chat_template=chat_template,
    )


def build_tiny(data_dir: str | Path, cfg: TinyConfig = TinyConfig(), benchmark: str | None = None):
    """A randomly initialised tiny model of ``cfg.family`` (LLaVA by default) and its processor, with the
    tokenizer trained on ``data_dir`` (a ``benchmark``'s layout; see :func:`benchmark_texts`)."""
    if cfg.family != "llava":
        from viker.model.families import build_tiny_family

        return build_tiny_family(data_dir, cfg, benchmark)
    tokenizer = train_tokenizer(benchmark_texts(data_dir, benchmark), cfg.vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy=cfg.feature_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    n_image_tokens = (cfg.image_size // cfg.patch_size) ** 2 + (cfg.feature_strategy == "full")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=cfg.vision_hidden,
            intermediate_size=cfg.vision_hidden * 2,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=4,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            projection_dim=cfg.vision_hidden,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden,
            intermediate_size=cfg.intermediate,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.heads,
            max_position_embeddings=cfg.max_positions,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=n_image_tokens,
        vision_feature_layer=-1,  # a tower this shallow has no better layer than its last
        vision_feature_select_strategy=cfg.feature_strategy,
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.tiny = asdict(cfg)
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor
