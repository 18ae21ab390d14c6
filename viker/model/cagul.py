"""CAGUL at inference: a frozen model plus two small modules that act on its visual tokens.

Cross-Modal Attention Guided Unlearning never changes the model's weights. For every image in a batch:

1. the **discriminator** reads the image's visual tokens (the projector's output, pooled by mean and max) and
   flags images that show a person to forget;
2. for flagged images, the frozen model's **cross-modal attention** (from the question tokens after the
   image to the image's tokens, at chosen layers and heads) ranks the visual tokens;
3. the **encoder** (a small transformer over the image's tokens) rewrites the least attended ones,
   so that the frozen model stops revealing what it knows about that person. The tokens the question
   attends to most are left as they are, which keeps the answer's wording intact.

Unflagged images pass through untouched, so on everything but the forget set the combination is the
bare model, bit for bit. ``CagulModel`` wraps the model and behaves like it (``forward``, ``generate``,
``parameters``), so the evaluator and the trainer use it as any other model.

How the tokens reach the model: the wrapper replaces ``get_image_features`` on the model's base module
(the one its ``forward`` and ``generate`` call) for the duration of a call, returning the rewritten
features. That works for every family whose features come back as one tensor per image (LLaVA,
Idefics2 and others); see ``per_image``.

The choices the CAGUL paper leaves open (which layers and heads, how many tokens, the encoder's shape,
the threshold) are ours and configurable; docs/design.md explains the defaults.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from viker.errors import VikerError, require
from viker.methods.losses import IGNORE

MODULES_FILE, CONFIG_FILE = "modules.safetensors", "config.json"
ATTENTION_PATTERN = r"(^|\.)(language_model|text_model)\.(?:model\.)?layers\.(\d+)\.self_attn$"


@dataclass
class CagulConfig:
    layers: list[int] | None = None  # decoder layers whose attention ranks visual tokens (None: the middle one)
    heads: list[int] | None = None  # heads averaged at those layers (None: all)
    rewrite: float = 0.75  # visual tokens rewritten per flagged image: a fraction (< 1) or a count (>= 1)
    encoder_width: int = 128
    encoder_layers: int = 1
    encoder_heads: int = 4
    disc_width: int = 128
    threshold: float = 0.5  # discriminator probability above which an image is flagged
    extra: dict = field(default_factory=dict)  # free-form notes saved with the modules

    def __post_init__(self):
        require(self.rewrite > 0, "--rewrite", self.rewrite, "rewrite at least one visual token")
        require(self.rewrite < 1 or float(self.rewrite).is_integer(), "--rewrite", self.rewrite,
                "a fraction below 1, or a whole number of tokens")
        for flag, chosen in (("--layers", self.layers), ("--heads", self.heads)):  # each is averaged over once
            require(chosen is None or (chosen and len(set(chosen)) == len(chosen)), flag,
                    ",".join(map(str, chosen or [])), "name at least one, and each once")
        require(0.0 < self.threshold < 1.0, "--threshold", self.threshold, "a probability strictly between 0 and 1")
        require(self.encoder_width >= 1, "--encoder-width", self.encoder_width, "must be at least 1")
        require(self.encoder_layers >= 1, "encoder_layers", self.encoder_layers, "must be at least 1")
        require(self.encoder_width % self.encoder_heads == 0, "--encoder-width", self.encoder_width,
                f"must be divisible by the encoder's {self.encoder_heads} heads")

    def count(self, tokens: int) -> int:
        n = round(self.rewrite * tokens) if self.rewrite < 1 else int(self.rewrite)
        return max(1, min(tokens, n))


class Discriminator(nn.Module):
    """An image's visual tokens, pooled (mean and max over tokens), -> logit of 'shows a person to forget'.
    Max pooling keeps the few tokens where a distinctive feature sits; the mean alone blurs them."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, width), nn.GELU(), nn.Linear(width, 1))

    @staticmethod
    def pool(tokens: torch.Tensor) -> torch.Tensor:
        """(T, dim) -> (2·dim,)"""
        tokens = tokens.float()
        return torch.cat([tokens.mean(dim=0), tokens.amax(dim=0)])

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled.float()).squeeze(-1)


class TokenEncoder(nn.Module):
    """Rewrites the selected visual tokens of an image, reading all of its tokens.

    A down-projection, a learned 'selected' marker, a small transformer, and a zero-initialised
    up-projection added to the input: before training it is the identity, so the frozen model starts
    from its own behaviour."""

    def __init__(self, dim: int, width: int, layers: int, heads: int):
        super().__init__()
        self.down = nn.Linear(dim, width)
        self.marker = nn.Embedding(2, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, tokens: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """tokens (B,T,dim), selected (B,T) bool -> (B,T,dim) with only the selected tokens changed."""
        x = tokens.float()
        h = self.body(self.down(x) + self.marker(selected.long()))
        return torch.where(selected.unsqueeze(-1), x + self.up(h), x).to(tokens.dtype)


class _Stop(Exception):
    """Raised from a hook to end a forward pass early (everything needed has been read)."""


def per_image(output) -> list[torch.Tensor]:
    """The per-image feature tensors (T_j, dim) inside a get_image_features output."""
    feats = getattr(output, "pooler_output", output)
    if isinstance(feats, torch.Tensor) and feats.dim() == 3:
        return list(feats)
    if isinstance(feats, (list, tuple)) and all(isinstance(f, torch.Tensor) and f.dim() == 2 for f in feats):
        return list(feats)
    raise VikerError("CAGUL: this model family returns its image features in a form without one tensor per "
                     f"image ({type(feats).__name__}); it is not supported")


def with_tokens(feats: list[torch.Tensor]) -> list[int]:
    """The entries of ``per_image`` that hold an image's tokens: Idefics2 gives a row without an image an
    empty one."""
    return [j for j, f in enumerate(feats) if f.shape[0]]


def with_features(output, feats: list[torch.Tensor]):
    """``output`` with its per-image features replaced by ``feats`` (same container type)."""
    old = getattr(output, "pooler_output", output)
    new = torch.stack(feats) if isinstance(old, torch.Tensor) else type(old)(feats)
    if not hasattr(output, "pooler_output"):
        return new
    out = copy.copy(output)
    out.pooler_output = new
    return out


class CagulModel(nn.Module):
    """A frozen image-text-to-text model with CAGUL's discriminator and encoder in front of its visual
    tokens. ``forward(..., cagul="auto"|"force"|"off")``: flag by the discriminator, rewrite every image
    (training), or the bare model; calls that do not say use ``self.mode`` ("auto").

    ``forward(..., labels=...)`` on a teacher-forced answer: the labels say which tokens are the answer,
    so that they never rank the visual tokens (the answer scored must not decide which tokens are
    rewritten); they are not passed on, and the output carries logits, no loss."""

    reads_answer_labels = True  # teacher-forced scoring passes the labels (viker.eval.evaluate.answer_logprobs)
    # Weights a checkpoint keeps besides the trained ones: the discriminator, trained before the loop and frozen
    # in it, so that a resumed run goes on with the one it had (training it again on a GPU need not give it).
    checkpoint_also = ("discriminator.",)

    def __init__(self, base: nn.Module, cfg: CagulConfig, dim: int | None = None):
        super().__init__()
        self.base = base.requires_grad_(False).eval()
        self.cfg = cfg
        dim = dim or base.config.get_text_config().hidden_size
        self.discriminator = Discriminator(dim, cfg.disc_width)
        self.encoder = TokenEncoder(dim, cfg.encoder_width, cfg.encoder_layers, cfg.encoder_heads)
        self.dim = dim
        self.mode = "auto"  # the default for calls that do not say: auto | force | off
        self.told_every_token = False  # warned that a --rewrite count is more than an image's visual tokens
        self.attention = self._attention_modules()
        self.layers = cfg.layers if cfg.layers is not None else [len(self.attention) // 2]
        bad = [i for i in self.layers if not 0 <= i < len(self.attention)]
        if bad:
            raise VikerError(f"CAGUL layers {bad}: the language model has {len(self.attention)} layers")
        heads = base.config.get_text_config().num_attention_heads
        bad = [i for i in cfg.heads or () if not 0 <= i < heads]
        if bad:
            raise VikerError(f"CAGUL heads {bad}: the language model's layers have {heads} heads (0 to {heads - 1})")
        self.image_token_id = getattr(base.config, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(base.config, "image_token_index", None)
        if self.image_token_id is None:
            raise VikerError(f"{type(base).__name__}: its config names no image token; CAGUL cannot find the "
                             "visual tokens")
        self.to(next(base.parameters()).device)

    # --- plumbing --------------------------------------------------------------------------------
    def _attention_modules(self) -> list[nn.Module]:
        found = {}
        for name, module in self.base.named_modules():
            m = re.search(ATTENTION_PATTERN, name)
            if m:
                found[int(m.group(3))] = module
        if not found:
            raise VikerError(f"{type(self.base).__name__}: found no attention layers under a language model")
        return [found[i] for i in sorted(found)]

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # the frozen model never trains (no dropout)
        return self

    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return self.base.generation_config

    @property
    def device(self):
        return next(self.base.parameters()).device

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    @contextmanager
    def _image_features(self, replace):
        """Within the block, the model's get_image_features returns ``replace(original, *args, **kw)``."""
        inner = self.base.base_model
        original = inner.get_image_features

        @functools.wraps(original)
        def patched(*args, **kwargs):
            return replace(original, *args, **kwargs)

        inner.get_image_features = patched
        try:
            yield
        finally:
            del inner.get_image_features

    @contextmanager
    def _eager_attention(self):
        """Attention probabilities are only materialised by the eager implementation."""
        config = self.base.config.get_text_config()
        before = config._attn_implementation
        config._attn_implementation = "eager"
        try:
            yield
        finally:
            config._attn_implementation = before

    @staticmethod
    def _model_inputs(kwargs: dict) -> dict:
        return {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor) and k != "labels"}

    # --- the three steps ---------------------------------------------------------------------------
    @torch.no_grad()
    def original_features(self, inputs: dict):
        """The model's own get_image_features output for ``inputs`` (the language model is not run)."""
        got = {}

        def capture(original, *args, **kwargs):
            got["output"] = original(*args, **kwargs)
            raise _Stop

        with self._image_features(capture):
            try:
                self.base(**inputs)
            except _Stop:
                pass
        return got.get("output")

    @torch.no_grad()
    def importance(self, inputs: dict, output, which: list[int],
                   labels: torch.Tensor | None = None) -> list[torch.Tensor]:
        """(T_j,) attention that image j's visual tokens receive from the text after the image (the question
        and the template's turn markers; never answer tokens), averaged over the chosen layers and heads,
        for each image j in ``which`` (counting the batch's images, not the empty entries of rows without
        one). Only the rows of those images are run, and the forward pass stops after the last chosen layer."""
        is_image = inputs["input_ids"] == self.image_token_id
        image_rows = [r for r in range(is_image.shape[0]) if is_image[r].any()]
        feats = per_image(output)
        images = [feats[j] for j in with_tokens(feats)]
        if len(image_rows) != len(images):
            raise VikerError("CAGUL expects one image per prompt (found a different number of images and image "
                             "token runs)")
        rows = [image_rows[j] for j in which]
        sub = {}
        for key, value in inputs.items():  # the chosen rows' inputs, all of them (Qwen2-VL's positions read some)
            if "pixel" in key:
                sub[key] = value  # read by the patched call only
            elif value.dim() >= 2 and value.shape[:2] == is_image.shape:
                sub[key] = value[rows]  # one entry per token: input_ids, attention_mask, mm_token_type_ids
            elif value.dim() >= 1 and value.shape[0] == len(image_rows):
                sub[key] = value[which]  # one entry per image: image_grid_thw, image_sizes
        sub_output = with_features(output, [images[j] for j in which])
        labels = labels[rows] if labels is not None else None
        is_image = is_image[rows]
        # a call without a mask attends every token, as the wrapped model takes it
        attended = sub["attention_mask"].bool() if sub.get("attention_mask") is not None else torch.ones_like(is_image)
        scores = [torch.zeros(int(is_image[i].sum()), device=is_image.device) for i in range(len(rows))]
        last = max(self.layers)

        def hook(layer):
            def read(module, args, result):
                weights = result[1]  # (B, heads, q, k)
                if weights is None:
                    raise VikerError("CAGUL: the attention layer returned no weights")
                if self.cfg.heads is not None:
                    weights = weights[:, self.cfg.heads]
                weights = weights.float().mean(dim=1)  # (B, q, k)
                for i in range(len(rows)):
                    positions = is_image[i].nonzero().squeeze(-1)
                    query = (torch.arange(is_image.shape[1], device=is_image.device) > positions.max()) & attended[i]
                    if labels is not None:
                        query &= labels[i] == IGNORE
                    scores[i] += weights[i][query][:, positions].mean(dim=0) / len(self.layers)
                if layer == last:
                    raise _Stop
            return read

        handles = [self.attention[i].register_forward_hook(hook(i)) for i in self.layers]
        try:
            with self._eager_attention(), self._image_features(lambda *a, **k: sub_output):
                self.base(**sub)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return scores

    def rewrite(self, feats: list[torch.Tensor], which: list[int], scores: list[torch.Tensor]) -> list[torch.Tensor]:
        """Replace the least attended tokens of the images ``which`` by the encoder's output."""
        out = list(feats)
        for j, score in zip(which, scores):
            tokens = feats[j]
            selected = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
            selected[score.argsort()[: self.cfg.count(tokens.shape[0])]] = True
            if self.cfg.rewrite > tokens.shape[0] and not self.told_every_token:  # a count beyond the image's
                self.told_every_token = True
                print(f"warning: --rewrite {self.cfg.rewrite:g}: an image here has {tokens.shape[0]} visual tokens, "
                      "and every one of them is rewritten", file=sys.stderr)
            out[j] = self.encoder(tokens.unsqueeze(0), selected.unsqueeze(0)).squeeze(0)
        return out

    def flag_probs(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.discriminator(torch.stack([Discriminator.pool(f) for f in feats])))

    def rewritten_features(self, inputs: dict, mode: str = "auto", labels: torch.Tensor | None = None):
        """What the batch's images become: the base model's image-features output with the flagged images'
        tokens rewritten (unchanged where none is flagged, so that it is not computed again); None where the
        batch has no image, or ``mode`` is off."""
        if mode not in ("auto", "force", "off"):
            raise ValueError(f"cagul mode {mode!r}: auto | force | off")
        if mode == "off" or not (inputs["input_ids"] == self.image_token_id).any():
            return None
        output = self.original_features(inputs)
        if output is None:
            return None
        feats = per_image(output)
        images = with_tokens(feats)
        with torch.no_grad():
            probs = self.flag_probs([feats[j] for j in images])
        flags = torch.ones_like(probs, dtype=torch.bool) if mode == "force" else probs > self.cfg.threshold
        if not flags.any():
            return output
        which = flags.nonzero().squeeze(-1).tolist()
        new = self.rewrite(feats, [images[j] for j in which], self.importance(inputs, output, which, labels))
        return with_features(output, new)

    # --- the model's interface ----------------------------------------------------------------------
    def forward(self, cagul: str | None = None, **kwargs):
        labels = kwargs.pop("labels", None)
        features = self.rewritten_features(self._model_inputs(kwargs), cagul or self.mode, labels)
        if features is None:
            return self.base(**kwargs)
        with self._image_features(lambda *a, **k: features):
            return self.base(**kwargs)

    @torch.no_grad()
    def generate(self, cagul: str | None = None, **kwargs):
        features = self.rewritten_features(self._model_inputs(kwargs), cagul or self.mode)
        if features is None:
            return self.base.generate(**kwargs)
        with self._image_features(lambda *a, **k: features):
            return self.base.generate(**kwargs)

    # --- saving and loading -------------------------------------------------------------------------
    def save(self, folder: str | Path, base_model: str, info: dict | None = None) -> None:
        """The modules (safetensors) and their configuration; the base model is referenced, not copied."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()}
        tensors |= {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / MODULES_FILE))
        meta = {"cagul": asdict(self.cfg), "dim": self.dim, "base_model": str(base_model), "info": info or {}}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def is_cagul_run(path: str | Path) -> bool:
    return (Path(path).expanduser() / "cagul" / CONFIG_FILE).is_file()


def refuse_cagul_run(path: str | Path, command: str) -> None:
    """A CAGUL run is modules around a frozen model, not a model of its own to ``command`` (finetune, unlearn)."""
    if is_cagul_run(path):
        raise VikerError(f"--model {path}: a CAGUL run, modules around a frozen model rather than a model of its "
                         f"own; {command} from the model it was trained on ({cagul_meta(path)['base_model']}) instead")


def cagul_meta(path: str | Path) -> dict:
    """What a CAGUL run saved beside its modules: its settings, and the base model it wraps (refused in one line
    when the file is cut short or lacks them)."""
    from viker.runs import read_json

    file = Path(path).expanduser() / "cagul" / CONFIG_FILE
    meta = read_json(file)
    missing = [key for key in ("base_model", "cagul", "dim") if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise VikerError(f"{file}: lacks {', '.join(missing)}; not a CAGUL run's config (was it edited?)")
    return meta


def load_cagul(path: str | Path, device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False):
    """(CagulModel, processor) from a ``viker unlearn --method cagul`` run folder: the base model it names,
    untouched, and the saved modules."""
    from safetensors.torch import load_file

    from viker.model import base_still_there, check_weights_unchanged, load_model, weight_hashes

    folder = Path(path).expanduser() / "cagul"
    meta = cagul_meta(path)
    base_still_there(str(meta["base_model"]), str(folder / CONFIG_FILE), "the CAGUL modules were trained around")
    check_weights_unchanged(Path(path).expanduser(), weight_hashes(meta["base_model"]),
                            f"{path}: CAGUL modules trained around {meta['base_model']}")
    base, processor = load_model(meta["base_model"], device, dtype, trust_remote_code)
    model = CagulModel(base, CagulConfig(**meta["cagul"]), meta["dim"])
    tensors = load_file(str(folder / MODULES_FILE))
    for prefix, module in (("discriminator.", model.discriminator), ("encoder.", model.encoder)):
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return model.eval(), processor


def inference_cost(model: CagulModel, processor, examples, batch_size: int = 32, max_new_tokens: int = 50,
                   repeats: int = 3) -> dict:
    """Seconds per generated answer with CAGUL in front of the model and with the bare model, on the same
    prompts and batches (after one warm-up batch each): the fastest of ``repeats`` timings of each, taken in
    turn, so that a burst of other work on the machine slows neither alone. Each batch decodes until its
    longest answer ends; CAGUL changes the answers about flagged images, and with them maybe their lengths, so
    the ratio holds that difference as well as CAGUL's own work (the flagging, and the rewrite of flagged
    images)."""
    import time

    from viker.eval.generate import generate

    def seconds(mode: str, warm_up: bool = False) -> float:
        before, model.mode = model.mode, mode
        try:
            if warm_up:
                generate(model, processor, examples[:batch_size], batch_size, max_new_tokens, progress=False)
            start = time.perf_counter()
            generate(model, processor, examples, batch_size, max_new_tokens, progress=False)
            return (time.perf_counter() - start) / max(1, len(examples))
        finally:
            model.mode = before

    bare, with_cagul = seconds("off", warm_up=True), seconds("auto", warm_up=True)
    for _ in range(repeats - 1):
        bare, with_cagul = min(bare, seconds("off")), min(with_cagul, seconds("auto"))
    return {"answers": len(examples), "bare_seconds_per_answer": round(bare, 4),
            "cagul_seconds_per_answer": round(with_cagul, 4), "ratio": round(with_cagul / bare, 3)}
