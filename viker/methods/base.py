"""Pieces every unlearning method shares: the forward pass, the frozen reference model, the context."""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from viker.collate import scoring_inputs
from viker.data.schema import Example
from viker.methods.losses import answer_nll, answer_token_nll, answer_window, gather_answer_positions
from viker.model import eval_mode


def logits_of(model, batch: dict) -> torch.Tensor:
    return model(**scoring_inputs(model, batch)).logits


def share(batch: dict, unit: str) -> torch.Tensor | float:
    """This process's weight for a mean over the ``unit`` ("row" or "token") of its batch: 1 on one
    process; on several, its share of the global batch (set by viker.train.attach_shares), so that
    DDP's average of the processes' gradients is the gradient of the mean over the global batch.
    Every method multiplies each mean it returns by the share of the unit that mean runs over."""
    return batch.get(f"{unit}_share", 1.0)


def log_likelihood(model, batch: dict, average: str = "sequence") -> torch.Tensor:
    """The answers' log-likelihood, what GA minimises (viker.presets.AVERAGES), times this process's
    :func:`share` of the mean: each answer's mean over its tokens, then over the batch (``sequence``); the mean
    over every answer token of the batch (``token``, as a model's own loss has it); or each answer's sum over its
    tokens, then over the batch (``sum``)."""
    if average == "token":
        return -answer_token_nll(logits_of(model, batch), batch["labels"]) * share(batch, "token")
    nll = answer_nll(logits_of(model, batch), batch["labels"], length_normalised=average == "sequence")
    return -nll * share(batch, "row")


class OptionalRetainNLL:
    """For a method whose retain term, the retain answers' NLL weighted by its ``retain_weight`` field and
    averaged as its ``average`` field says (as GA's log-likelihood), is optional: at weight 0 the term, and the
    retain stream with it, are left out."""

    @property
    def streams(self):
        return ("forget", "retain") if self.retain_weight > 0 else ("forget",)

    def unused_settings(self) -> dict[str, str]:
        """``average`` at weight 0, where there is no retain term to average."""
        return {} if self.retain_weight > 0 else {"average": "at --retain-weight 0, where there is no retain term "
                                                             "(--average sets how the retain NLL averages)"}

    def plus_retain_nll(self, loss: torch.Tensor, logs: dict, model, batches: dict) -> tuple[torch.Tensor, dict]:
        if self.retain_weight > 0:
            retain_nll = -log_likelihood(model, batches["retain"], self.average)
            loss = loss + self.retain_weight * retain_nll
            logs["retain_nll"] = retain_nll.item()
        return loss, logs


class FrozenReference:
    """θ_full, the model before unlearning, frozen.

    With LoRA the reference is the same network with its adapters switched off, so no second copy of
    the weights is held; with full finetuning it is a frozen copy taken before the first step, unless
    ``setup_only``: a method that reads the reference only in its setup (ViKeR's R̂, computed before
    the first step) reads the model itself, in eval mode, and :meth:`close` ends the reference then.

    ``autocast`` is the training run's autocast (``Accelerator.autocast``): a separate copy runs its
    passes under it, as the trained model's prepared forward runs, so that at step 0 the two agree.
    ``precision`` names it (accelerate's ``mixed_precision``: "no", "bf16", "fp16"); what the reference
    gives under autocast differs from what it gives without, so the fingerprint says which.

    Several processes: under DDP ``model`` is the module inside the DDP wrapper (reference passes
    need no gradient synchronisation); under FSDP (version 2) or DeepSpeed it is the sharded module
    itself, whose forward gathers the shards, so every process must run the same reference passes.
    ``sharded=True`` says the model will be sharded: full finetuning then has no reference (a copy of a
    sharded module would not be an independent model), and using it is an error. ``cached=True`` says
    what the reference gives will be cached under its fingerprint (ViKeR's R̂): with ``sharded``, the
    fingerprint is taken now, while each process still holds whole weights (hashing them takes seconds a
    method that caches nothing need not spend).
    """

    def __init__(self, model: torch.nn.Module, separate: torch.nn.Module | None = None, sharded: bool = False,
                 cached: bool = True, setup_only: bool = False, autocast: Callable = nullcontext,
                 precision: str | None = None):
        self._model = model
        self._precision = precision
        self._copy = separate
        self._autocast = autocast
        self._fingerprint = None
        self._unavailable = None
        self._sharded_unhashed = sharded and not cached
        if separate is None and not hasattr(model, "disable_adapter"):
            if sharded:
                self._unavailable = NO_SHARDED_REFERENCE
            elif not setup_only:
                self._copy = copy.deepcopy(model).eval().requires_grad_(False)
        if sharded and cached and self._unavailable is None:
            self.fingerprint()

    def close(self) -> None:
        """The end of a ``setup_only`` reference, once training starts: it lets go of any copy, and a
        later read is an error (the model it reads now learns)."""
        self._model = self._copy = None
        self._unavailable = "the frozen reference was read before training only (setup_only); it is closed"

    def network_for_fingerprint(self) -> torch.nn.Module:
        """The module whose weights define the reference (with its adapters when they are in effect)."""
        if self._unavailable:
            from viker.errors import VikerError

            raise VikerError(self._unavailable)
        return self._copy if self._copy is not None else self._model

    def fingerprint(self) -> str:
        """The frozen weights' fingerprint (viker.methods.reference.model_fingerprint), taken once, and the
        autocast its passes run under, where there is one."""
        if self._fingerprint is None:
            from viker.methods.reference import model_fingerprint

            if self._sharded_unhashed:
                raise RuntimeError("the fingerprint of a sharded model is taken before sharding: pass cached=True")

            # a separate copy answers with whatever adapters it carries; the shared network switches its off
            self._fingerprint = model_fingerprint(self.network_for_fingerprint(), adapters=self._copy is not None)
            if self._precision not in (None, "no"):  # without autocast the key stays what it was
                self._fingerprint += f"+autocast-{self._precision}"
        return self._fingerprint

    @contextmanager
    def _network(self):
        self.network_for_fingerprint()  # refuses an unavailable reference
        if self._copy is not None:
            with self._autocast():
                yield self._copy
            return
        if not hasattr(self._model, "disable_adapter"):  # full tuning, setup_only: the model before its first step
            with eval_mode(self._model) as net:
                yield net
            return
        # the trained network itself, adapters off and in eval mode (no dropout), then as it was
        with self._model.disable_adapter(), eval_mode(self._model) as net:
            yield net

    @torch.no_grad()
    def logits(self, batch: dict, logits_to_keep: int = 0) -> torch.Tensor:
        with self._network() as net:
            if logits_to_keep:
                return net(**scoring_inputs(net, batch), logits_to_keep=logits_to_keep).logits
            return logits_of(net, batch)

    @torch.no_grad()
    def answer_probs(self, batch: dict) -> torch.Tensor:
        """(N,V) next-token distributions at the answer positions of ``batch``, row-major.

        Only the positions from the earliest answer on are projected onto the vocabulary (with left
        padding that is the last few tokens of every row), which saves most of the output layer."""
        labels = batch["labels"]
        logits = self.logits(batch, logits_to_keep=answer_window(labels))
        logits, _ = gather_answer_positions(logits, labels[:, -logits.shape[1]:])
        return torch.softmax(logits.float(), dim=-1)


NO_SHARDED_REFERENCE = ("full tuning under FSDP or DeepSpeed has no frozen reference model (a copy of a sharded model "
                        "is not one); use --tuning lora, DDP, or a method that reads none (ga, graddiff, viker at "
                        "--lam 0, npo with --reference-model)")


def needs_reference(method) -> bool:
    """Whether ``method`` reads the frozen model (with full tuning, a copy of the weights): as its
    ``needs_reference`` says, else where it has a ``setup``, the one place ``ctx.reference`` is handed to it."""
    return getattr(method, "needs_reference", hasattr(method, "setup"))


@dataclass
class UnlearnContext:
    """What a method may need beyond its batches, handed to ``setup`` once before training."""

    model: torch.nn.Module
    processor: object
    collate: Callable[[Sequence[Example]], dict]
    data: dict[str, list[Example]]
    reference: FrozenReference | None  # None for a method that reads no frozen model (needs_reference)
    data_dir: Path | None = None
    cache_dir: Path | None = None
    seed: int = 0
    progress: bool = True
    info: dict = field(default_factory=dict)  # what setup wants recorded in the run's config
    resume_from: Path | None = None  # the checkpoint a resumed run goes on from (None: a run from its start)
    autocast: Callable = nullcontext  # the run's autocast, for a reference model a method loads itself
    dtype: str = "auto"  # and how the run loads its model: such a model is loaded alike
    trust_remote_code: bool = False
