"""Examples -> model inputs: chat-templated prompt, image inputs, and an answer-only label mask.

The prompt is rendered with the processor's own chat template, so each model family gets its own
format. Labels are -100 everywhere except on the answer tokens and the end of the turn after them (the
template's end-of-turn token, or the tokenizer's end-of-sequence token where the template writes none
after an answer, as LLaVA-1.5's does): never on the prompt, the image placeholders or the padding. So
a model learns where its answer stops.

How the answer tokens are found, for any tokenizer and padding side: the number of answer tokens is
``len(tokenize(prompt + answer)) - len(tokenize(prompt))`` on the unexpanded text (checked to be a
prefix), and the answer is always the last that many attended tokens of a row. Image-placeholder
expansion happens inside the prompt, so it never changes that count.
"""

from __future__ import annotations

import re
import sys
from typing import Sequence

import torch

from viker.data.loader import decode_image, image_size
from viker.data.schema import Example
from viker.errors import VikerError, require
from viker.methods.losses import IGNORE as IGNORE_INDEX  # the label of a token no loss reads

# batch entries that are ours, not the model's (the shares: a process's part of a global batch, viker.train)
META_KEYS = ("labels", "index", "row_share", "token_share")


def messages(example: Example, answer: str | None = None) -> list[dict]:
    content = ([{"type": "image"}] if example.image is not None else []) + [{"type": "text", "text": example.question}]
    conversation = [{"role": "user", "content": content}]
    if answer is not None:
        conversation.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return conversation


def chat_template(processor) -> str | None:
    """The processor's chat template, or its tokenizer's: older checkpoints keep it in tokenizer_config.json
    only, where the processor does not look. A checkpoint that ships several (``additional_chat_templates/``,
    a ``tool_use`` one beside the chat one) loads them as a dict: its ``default`` is the chat template."""
    tokenizer = getattr(processor, "tokenizer", processor)
    template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        if "default" not in template:
            raise VikerError(f"{type(processor).__name__}: the processor has chat templates named "
                             f"{', '.join(sorted(template))} and no default one to ask questions with")
        return template["default"]
    return template


def _first_line(ex: Example) -> str:
    """How an error names an example: its question's first line (a multiple-choice prompt runs on with its
    options), cut short."""
    return (ex.question.splitlines() or [""])[0][:50]


def model_inputs(batch: dict) -> dict:
    """Everything the processor produced (pixel_values, image_sizes, image_grid_thw, ...), nothing of ours."""
    return {k: v for k, v in batch.items() if k not in META_KEYS}


def scoring_inputs(model, batch: dict) -> dict:
    """``model_inputs(batch)``, with the labels for a model that must know which tokens are the answer it scores:
    CAGUL's, whose answer never decides which visual tokens it rewrites (viker.model.cagul.CagulModel)."""
    labels = {"labels": batch["labels"]} if getattr(model, "reads_answer_labels", False) else {}
    return model_inputs(batch) | labels


SPECIAL_READING = ("which the tokenizer reads as a special token (an image placeholder or an end mark), not as text; "
                   "take it out of the data (the image is given apart from the text)")


def model_context(model) -> int | None:
    """The positions the model's language model was trained with (``max_position_embeddings``), None if unsaid."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None) or getattr(config, "max_position_embeddings", None)


def warn_past_context(model, lengths: Sequence[int], what: str, new_tokens: int = 0) -> bool:
    """Warn when sequences of ``lengths`` tokens (``new_tokens`` more to generate) run past the model's context:
    nothing cuts them, and what the model does there comes from positions it never learned. Whether it warned."""
    context = model_context(model)
    over = sum(n + new_tokens > context for n in lengths) if context else 0
    if over:
        with_new = f", with up to {new_tokens} new tokens," if new_tokens else ""
        print(f"warning: {over} of {len(lengths)} {what}{with_new} run past the model's context ({context} positions, "
              "its max_position_embeddings); nothing cuts them, and the model has learned no position beyond it",
              file=sys.stderr)
    return bool(over)


def check_max_length(max_length: int | None) -> None:
    """``--max-length``, refused before any work when it could hold no example."""
    require(max_length is None or max_length >= 1, "--max-length", max_length,
            "must be at least 1 (leave it out for no limit)")


class Collator:
    """Turns a list of examples into one padded batch.

    ``answers=True`` (training): prompt + answer, labels on the answer tokens, right padding.
    ``answers=False`` (generation): prompts only, left padding so new tokens follow every prompt.
    ``padding_side="left"`` with answers puts every answer at the end of its row (for scoring only
    the last positions).
    """

    def __init__(self, processor, answers: bool = True, max_length: int | None = None,
                 padding_side: str | None = None):
        self.processor = processor
        self.padding_side = padding_side or ("right" if answers else "left")
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.answers = answers
        self.max_length = max_length
        self.chat_template = chat_template(processor)
        if self.chat_template is None:
            raise VikerError(f"{type(processor).__name__}: the processor has no chat template; pass a model whose "
                             "processor defines one")
        if self.tokenizer.pad_token is None:
            raise VikerError(f"{type(self.tokenizer).__name__}: the tokenizer has no padding token; set one "
                             "(viker.model.load_processor uses the end-of-sequence token)")
        self.special_tokens = tuple({t for t in self.tokenizer.all_special_tokens if t} |
                                    {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special})
        # all of them in one scan of a text (the longest first: "<|im_end|>" before a token it starts with)
        self._special_pattern = re.compile("|".join(map(re.escape, sorted(self.special_tokens, key=len,
                                                                          reverse=True))) or r"(?!)")
        # A template that writes the BOS token itself (Gemma 3's, Llama 3.2 Vision's) must not get a second one
        # from the tokenizer, as transformers' own tokenizing apply_chat_template sees to.
        bos = self.tokenizer.bos_token
        self.add_special_tokens = not (bos and self.render(Example("?", "a", None)).startswith(bos))

    def special_token_in(self, text: str) -> str | None:
        """A special token of the tokenizer written in ``text`` (``<image>``, ``</s>``), which the tokenizer would
        read as that token, not as text: the processor would expand an image placeholder, and a model learn to
        stop at an end mark."""
        found = self._special_pattern.search(text)
        return found.group() if found else None

    def render(self, example: Example, answer: str | None = None) -> str:
        for part, what in ((example.question, "question"), (answer or "", "answer")):
            if token := self.special_token_in(part):
                raise VikerError(f"example '{_first_line(example)}': its {what} holds {token!r}, {SPECIAL_READING}")
        text = self.processor.apply_chat_template(
            messages(example, answer), chat_template=self.chat_template, add_generation_prompt=answer is None,
            tokenize=False
        )
        if answer is None:
            return text
        text = text.rstrip()
        if text.endswith(self.special_tokens) or not self.tokenizer.eos_token:
            return text
        return text + self.tokenizer.eos_token  # the template ends the answer with nothing a model could learn

    def end_of_turn_id(self) -> int | None:
        """The token an answer ends with in training (the last labelled one): generation stops on it, whatever
        the checkpoint's generation_config.json lists as end-of-sequence."""
        text = self.render(Example("?", "a", None), "a")
        ends = [t for t in self.special_tokens if text.endswith(t)]
        return self.tokenizer.convert_tokens_to_ids(max(ends, key=len)) if ends else None

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of rendered texts, without the images' expansion (as the processor adds special tokens)."""
        return self.tokenizer(texts, add_special_tokens=self.add_special_tokens)["input_ids"]

    def answer_lengths(self, prompts: list[str], fulls: list[str], examples: Sequence[Example]) -> list[int]:
        enc_p = self.tokenize(prompts)
        enc_f = self.tokenize(fulls)
        lengths = []
        for p, f, ex in zip(enc_p, enc_f, examples):
            if not ex.answer.strip():
                raise VikerError(f"example '{_first_line(ex)}': the answer is empty, so it has no tokens to learn")
            if f[: len(p)] != p:
                raise VikerError(f"example '{_first_line(ex)}': the tokenized prompt is not a prefix of "
                                 "prompt+answer for this tokenizer, so the answer tokens cannot be located")
            if len(f) == len(p):
                raise VikerError(f"example '{_first_line(ex)}': the answer has no tokens")
            lengths.append(len(f) - len(p))
        return lengths

    def __call__(self, examples: Sequence[Example]) -> dict:
        prompts = [self.render(ex) for ex in examples]
        texts = [self.render(ex, ex.answer) for ex in examples] if self.answers else prompts
        decoded = {}  # a person's photo once a batch, however many of its questions show it (a large photo's copies)
        for ex in examples:
            if ex.image is not None and ex.image not in decoded:
                decoded[ex.image] = decode_image(ex.image, f"image of {ex.profile_id or _first_line(ex)}")
        images = [decoded[ex.image] for ex in examples if ex.image is not None]
        try:
            batch = dict(self._processed(texts, images))
        except ValueError as e:  # an image the processor takes no size of (Qwen2-VL's aspect ratio over 200)
            raise self._refused_image(examples, texts, decoded, e) from None
        if self.max_length is not None:
            for ex, n in zip(examples, batch["attention_mask"].sum(dim=1).tolist()):
                if n > self.max_length:
                    raise self._too_long(ex, n)
        if self.answers:
            batch["labels"] = self.answer_labels(batch, self.answer_lengths(prompts, texts, examples))
        return batch

    def _processed(self, texts: list[str], images: list):
        return self.processor(
            text=texts,
            images=images or None,
            return_tensors="pt",
            padding=True,
            padding_side=self.padding_side,
            **({} if self.add_special_tokens else {"add_special_tokens": False}),  # passed only when not the default
        )

    def _refused_image(self, examples: Sequence[Example], texts: list[str], decoded: dict,
                       error: ValueError) -> Exception:
        """The processor's refusal of a batch, named by the example whose image it refuses alone (each tried
        apart); the error as it came where none is refused alone (not an image's)."""
        for ex, text in zip(examples, texts):
            if ex.image is None:
                continue
            try:
                self._processed([text], [decoded[ex.image]])
            except ValueError as alone:
                width, height = decoded[ex.image].size
                return VikerError(f"image of {ex.profile_id or _first_line(ex)} ({width}×{height}): "
                                  f"{type(self.processor).__name__} refuses it: {alone}")
        return error

    def _too_long(self, ex: Example, n: int) -> VikerError:
        return VikerError(f"example '{_first_line(ex)}': {n} tokens, over --max-length {self.max_length}, which "
                          "refuses a longer example rather than cut its answer off; raise --max-length")

    def preflight(self, model, examples: Sequence[Example]) -> None:
        """Check, before any output is written, what would otherwise fail mid-run: every example fits
        ``max_length``, and the model accepts the processor's image tokens (one forward pass). Examples longer
        than the model's context (:func:`model_context`) are warned about: they are trained on positions it
        never learned."""
        with_image = next((ex for ex in examples if ex.image is not None), None)
        # each image's tokens exactly where --max-length refuses by them (one processor call per image size), else
        # as many as the first image's (dynamic resolutions add more for larger images: a warning's estimate)
        added = self.image_tokens(examples if self.max_length is not None else [with_image] if with_image else [])
        first = next(iter(added.values()), 0)
        lengths = [n + (0 if ex.image is None else added[self._image_key(ex)] if self.max_length is not None
                        else first)
                   for ex, n in zip(examples, map(len, self.tokenize([self.render(ex, ex.answer) for ex in examples])))]
        for ex, n in zip(examples, lengths):
            if self.max_length is not None and n > self.max_length:
                raise self._too_long(ex, n)
        warn_past_context(model, lengths, "examples")
        if with_image is not None:
            self.check_model_takes(model, with_image)

    def check_model_takes(self, model, example: Example | None = None) -> None:
        """One forward pass of ``example`` (by default a question on a blank image): the model given another
        model's processor (image tokens its features do not match, or token ids past its embeddings) is refused
        in one line, before any work, where it would fail deep inside the first batch."""
        if example is None:
            import io

            from PIL import Image

            blank = io.BytesIO()
            Image.new("RGB", (64, 64), (128, 128, 128)).save(blank, format="PNG")
            example = Example(question="Who is this?", answer="A person.", image=blank.getvalue())
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in model_inputs(self([example])).items()}
        try:
            with torch.no_grad():
                model(**batch)
        except (ValueError, IndexError, TypeError) as e:  # TypeError: an input this model's forward has no name for
            if isinstance(e, ValueError) and "image" not in str(e).lower():
                raise
            raise VikerError(f"the model cannot take what its processor makes ({str(e).splitlines()[0]}); processor "
                             "and model come from different configurations") from None

    @staticmethod
    def _image_key(ex: Example) -> tuple:
        """What the tokens an image adds depend on: its size, since dynamic resolutions (Qwen2-VL, LLaVA-NeXT,
        Idefics2's splitting) add more for larger images, and the question's first word, which the image's
        closing token can tokenize apart from (Idefics2's puts a space before it: "Who" is one token, " Who"
        two for some tokenizers)."""
        size = image_size(ex.image, f"image of {ex.profile_id or _first_line(ex)}")
        return size, tuple(ex.question.split(maxsplit=1)[:1])

    def image_tokens(self, examples: Sequence[Example]) -> dict[tuple, int]:
        """How many tokens the processor adds for an image, by ``_image_key``: one processor call per key."""
        added = {}
        for ex in examples:
            key = None if ex.image is None else self._image_key(ex)
            if key is not None and key not in added:
                text_only = len(self.tokenize([self.render(ex, ex.answer)])[0])
                added[key] = int(self([ex])["attention_mask"].sum()) - text_only
        return added

    @staticmethod
    def answer_labels(batch: dict, lengths: list[int]) -> torch.Tensor:
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for row, n in enumerate(lengths):
            attended = batch["attention_mask"][row].nonzero().squeeze(-1)
            positions = attended[-n:]
            labels[row, positions] = batch["input_ids"][row, positions]
        return labels
