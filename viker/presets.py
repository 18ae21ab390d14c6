"""Training settings and the presets a run takes for what it leaves unset: light to import, so that
``viker --help`` can show them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, replace

from viker.errors import check_types, require

# How an evaluation reads multiple choice: option likelihood, or a generated letter read as it is meant
# (viker.eval.metrics.parse_choice) or as MLLMU-Bench's code reads it (first_char_choice)
MC_MODES = ("likelihood", "letter", "first_char")
# How GA's log-likelihood (GradDiff's, KL-Min's forget term's) averages over a batch's answer tokens:
# each answer's mean, then over the answers; over all the tokens at once (a model's own loss); or each answer's
# sum, then over the answers (the methods' page's per-sequence log-likelihood)
AVERAGES = ("sequence", "token", "sum")
# --mixed-precision: accelerate's autocast (no: none; None in a config: the launcher's setting, else no)
MIXED_PRECISION = ("no", "bf16", "fp16")
# LoRA where a run leaves it unset: a finetune's (viker.model.LoraSettings' defaults), and an unlearning run's,
# scaled twice as strongly (α/r = 2) and without dropout
FINETUNE_LORA = {"r": 16, "alpha": 16, "dropout": 0.05}
UNLEARN_LORA = {"r": 16, "alpha": 32, "dropout": 0.0}


@dataclass(frozen=True)
class TrainConfig:
    """``batch_size`` is global: the examples of one micro-step summed over every process (each of N
    processes holds about batch_size/N). An optimiser step sees batch_size × grad_accum examples, and
    ``epochs`` passes over the data take that many steps, rounded up (a step can end in the next pass).
    Frozen, as the presets are shared: one setting changed is ``dataclasses.replace(preset, lr=...)``."""

    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "constant"  # constant | linear | cosine
    max_grad_norm: float | None = 1.0
    seed: int = 0
    mixed_precision: str | None = None  # no | bf16 | fp16 (autocast); None: the launcher's setting, else no
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    log_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints (0: none)
    snapshot_every: int = 0  # epochs between snapshots of the model kept beside the final one (0: none)

    def __post_init__(self):
        check_types(self)
        require(self.epochs > 0, "--epochs", self.epochs, "must be above 0")
        require(self.max_steps is None or self.max_steps >= 1, "--max-steps", self.max_steps,
                "must be at least 1 (leave it out to train for --epochs)")
        require(self.batch_size >= 1, "--batch-size", self.batch_size, "must be at least 1")
        require(self.grad_accum >= 1, "--grad-accum", self.grad_accum, "must be at least 1")
        require(self.lr > 0, "--lr", self.lr, "must be above 0")
        require(0 <= self.seed < 2**32, "--seed", self.seed, "must be from 0 to 2**32 - 1")
        require(self.checkpoint_every >= 0, "--checkpoint-every", self.checkpoint_every, "must be at least 0 (0: none)")
        require(self.snapshot_every >= 0, "--snapshot-every", self.snapshot_every, "must be at least 0 (0: none)")
        require(self.scheduler in ("constant", "linear", "cosine"), "scheduler", self.scheduler,
                "choose constant, linear or cosine")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "must be from 0 to below 1")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be at least 0")
        require(self.log_every >= 1, "log_every", self.log_every, "must be at least 1")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm,
                "must be above 0 (None: no clipping)")


# Settings that memorise the embedded benchmark with the tiny model in a few CPU minutes.
TINY_TRAIN = TrainConfig(epochs=20, batch_size=16, lr=1e-3, warmup_ratio=0.05, scheduler="cosine",
                         weight_decay=0.0, max_grad_norm=1.0)
REAL_TRAIN = TrainConfig(epochs=5, batch_size=4, grad_accum=4, lr=1e-4, warmup_ratio=0.03, scheduler="cosine")

# Unlearning budgets: the tiny model (full CPU demo) and a 7B model with LoRA (the paper's setting).
TINY_UNLEARN = TrainConfig(epochs=8, batch_size=8, lr=2e-4, scheduler="constant", max_grad_norm=1.0, log_every=5)
REAL_UNLEARN = TrainConfig(epochs=5, batch_size=4, grad_accum=2, lr=1e-4, scheduler="constant", log_every=5)
# CAGUL trains new modules from scratch rather than adjusting the model: on the tiny model, more epochs at a
# higher rate than the model's own weights take
TINY_CAGUL = replace(TINY_UNLEARN, epochs=15, lr=3e-3)


def finetune_preset(model: str) -> TrainConfig:
    """The budget a finetune takes for what it leaves unset: the tiny model's, built here, or a checkpoint's."""
    return TINY_TRAIN if model == "tiny" else REAL_TRAIN


def unlearn_preset(method: str, tiny: bool) -> TrainConfig:
    """The budget an unlearning run takes for what it leaves unset: a checkpoint's, or on a tiny model its own
    (CAGUL's, whose modules start from scratch, or every other method's)."""
    if not tiny:
        return REAL_UNLEARN
    return TINY_CAGUL if method == "cagul" else TINY_UNLEARN
