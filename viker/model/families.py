"""Tiny Qwen2-VL and Idefics2 models, built offline from configs, beside the tiny LLaVA of ``tiny.py``.

Each is the family's real ``*ForConditionalGeneration`` class with its real processor (the PIL image
processor, a BPE tokenizer trained on the benchmark's text with the family's special tokens, and a
chat template written in the family's own conversation format). Saved with ``save_pretrained``, they
load back through the Auto classes like the released checkpoints (``Qwen/Qwen2-VL-7B-Instruct``,
``HuggingFaceM4/idefics2-8b``), so every family goes through the same code path as a real model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from viker.errors import VikerError
from viker.model.tiny import TinyConfig, benchmark_texts, train_tokenizer

FAMILIES = ("llava", "qwen2_vl", "idefics2")

# --- Qwen2-VL: ChatML turns, the image as <|vision_start|><|image_pad|><|vision_end|> ----------
QWEN2_VL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                   "<|image_pad|>", "<|video_pad|>")
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# --- Idefics2: "User:<image>question<end_of_utterance>\nAssistant: answer<end_of_utterance>\n" -----
IDEFICS2_TOKENS = ("<unk>", "<s>", "</s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>")
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _image_text_qwen2_vl_processor_class():
    """Qwen2-VL's processor without its video half, for machines without torchvision.

    ``Qwen2VLProcessor`` insists on a video processor, and transformers' video processors need
    torchvision; viker never feeds videos. This subclass takes only the image processor and the
    tokenizer and otherwise is the standard processor (same image-token expansion, same outputs). It
    carries the standard class's name, so a folder it saves names ``Qwen2VLProcessor`` and loads as the
    standard processor wherever torchvision is installed."""
    from transformers import Qwen2VLProcessor as Standard
    from transformers.processing_utils import ProcessorMixin

    class Qwen2VLProcessor(Standard):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return Qwen2VLProcessor


def qwen2_vl_processor(image_processor, tokenizer, chat_template: str | None = None):
    """The standard Qwen2-VL processor where torchvision is installed, else the image-and-text one."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

        return Qwen2VLProcessor(image_processor, tokenizer, Qwen2VLVideoProcessor(), chat_template=chat_template)
    return _image_text_qwen2_vl_processor_class()(image_processor, tokenizer, chat_template=chat_template)


def processor_without_video(path: str, trust_remote_code: bool = False, config_path: str | None = None):
    """A Qwen2-VL processor loaded from ``path`` with its image processor and tokenizer alone, for
    machines without torchvision; ``None`` for other families (their own loading error stands). The
    family is read from the config in ``config_path`` (default: ``path``)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(config_path or path, trust_remote_code=trust_remote_code)
    if config.model_type != "qwen2_vl":
        return None
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return qwen2_vl_processor(image_processor, tokenizer, tokenizer.chat_template or processor_chat_template(path))


def processor_chat_template(path: str) -> str | None:
    """The chat template a processor saved beside its model (``chat_template.jinja``, or the older
    ``chat_template.json``), which the tokenizer alone does not read."""
    folder = Path(path)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None


def build_tiny_family(data_dir: str | Path, cfg: TinyConfig, benchmark: str | None = None):
    builders = {"qwen2_vl": build_tiny_qwen2_vl, "idefics2": build_tiny_idefics2}
    if cfg.family not in builders:
        raise VikerError(f"--family {cfg.family}: choose from {', '.join(FAMILIES)}")
    return builders[cfg.family](data_dir, cfg, benchmark)


def _finish(model, tokenizer, cfg: TinyConfig, eos_ids: list[int]):
    """Record the tiny settings (how `viker unlearn` recognises a tiny model) and the generation tokens."""
    model.config.tiny = asdict(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_tiny_qwen2_vl(data_dir: str | Path, cfg: TinyConfig, benchmark: str | None = None):
    """A random tiny Qwen2-VL: a ViT over 2x2-merged patches (``image_grid_thw`` and patch-shaped
    ``pixel_values``) feeding a Qwen2 decoder with multimodal rotary positions."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    pad, im_end = "<|endoftext|>", "<|im_end|>"
    tokenizer = train_tokenizer(benchmark_texts(data_dir, benchmark), cfg.vocab_size, QWEN2_VL_TOKENS, bos=None,
                                eos=im_end, pad=pad,
                                named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
                                chat_template=QWEN2_VL_CHAT_TEMPLATE)
    merge = 2
    pixels = cfg.image_size * cfg.image_size  # every image is resized to about image_size x image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels}, patch_size=cfg.patch_size, merge_size=merge,
        temporal_patch_size=2,
    )
    processor = qwen2_vl_processor(image_processor, tokenizer, QWEN2_VL_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN2_VL_TOKENS}
    head_dim = cfg.hidden // cfg.heads
    third = head_dim // 2 // 3
    config = Qwen2VLConfig(
        vision_config=dict(depth=cfg.vision_layers, embed_dim=cfg.vision_hidden, hidden_size=cfg.hidden,
                           num_heads=4, mlp_ratio=2, patch_size=cfg.patch_size, spatial_merge_size=merge,
                           temporal_patch_size=2),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.max_positions, pad_token_id=ids[pad], bos_token_id=None,
                         eos_token_id=ids[im_end],
                         # the rotary halves split over (time, height, width); the sections must fill head_dim/2
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [head_dim // 2 - 2 * third, third, third]}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2VLForConditionalGeneration(config)
    return _finish(model, tokenizer, cfg, [ids[im_end]]), processor


def build_tiny_idefics2(data_dir: str | Path, cfg: TinyConfig, benchmark: str | None = None):
    """A random tiny Idefics2: a SigLIP-style vision tower (``pixel_attention_mask`` marks the padded
    pixels), a perceiver resampler down to a few latents per image, and a Mistral decoder."""
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessorPil,
        Idefics2Processor,
    )

    pad, bos, eos, eou = "<unk>", "<s>", "</s>", "<end_of_utterance>"
    tokenizer = train_tokenizer(benchmark_texts(data_dir, benchmark), cfg.vocab_size, IDEFICS2_TOKENS, bos=bos,
                                eos=eos, pad=pad, named={}, chat_template=IDEFICS2_CHAT_TEMPLATE)
    latents = max(1, (cfg.image_size // cfg.patch_size) ** 2 // 2)  # the resampler halves the patch count
    image_processor = Idefics2ImageProcessorPil(
        size={"shortest_edge": cfg.image_size, "longest_edge": cfg.image_size}, do_image_splitting=False,
    )
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=latents,
                                  chat_template=IDEFICS2_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IDEFICS2_TOKENS}
    config = Idefics2Config(
        vision_config=dict(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                           num_hidden_layers=cfg.vision_layers, num_attention_heads=4, image_size=cfg.image_size,
                           patch_size=cfg.patch_size),
        perceiver_config=dict(hidden_size=cfg.hidden, resampler_n_latents=latents, resampler_depth=1,
                              resampler_n_heads=2, resampler_head_dim=cfg.hidden // 4, num_key_value_heads=1),
        text_config=dict(model_type="mistral", vocab_size=len(tokenizer), hidden_size=cfg.hidden,
                         intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
                         num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.max_positions, pad_token_id=ids[pad], bos_token_id=ids[bos],
                         eos_token_id=ids[eos]),
        image_token_id=ids["<image>"],
    )
    torch.manual_seed(cfg.seed)
    model = Idefics2ForConditionalGeneration(config)
    return _finish(model, tokenizer, cfg, [ids[eos], ids[eou]]), processor
