"""Pieces every unlearning method shares: the forward pass, the frozen reference model, the context."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from viker.collate import IGNORE_INDEX, model_inputs
from viker.data.schema import Example
from viker.methods.losses import answer_nll, gather_answer_positions


def logits_of(model, batch: dict) -> torch.Tensor:
    return model(**model_inputs(batch)).logits


def log_likelihood(model, batch: dict) -> torch.Tensor:
    """Mean answer-token log-likelihood (per sequence, then over the batch): what GA minimises."""
    return -answer_nll(logits_of(model, batch), batch["labels"])


class FrozenReference:
    """θ_full, the model before unlearning, frozen.

    With LoRA the reference is the same network with its adapters switched off, so no second copy of
    the weights is held; with full finetuning it is a frozen copy taken before the first step.
    """

    def __init__(self, model: torch.nn.Module, separate: torch.nn.Module | None = None):
        self._model = model
        self._copy = separate
        if separate is None and not hasattr(model, "disable_adapter"):
            self._copy = copy.deepcopy(model).eval().requires_grad_(False)

    def network_for_fingerprint(self) -> torch.nn.Module:
        """The module whose weights define the reference (adapters are ignored when fingerprinting)."""
        return self._copy if self._copy is not None else self._model

    @contextmanager
    def _network(self):
        if self._copy is not None:
            yield self._copy
        else:
            with self._model.disable_adapter():
                yield self._model

    @torch.no_grad()
    def logits(self, batch: dict, logits_to_keep: int = 0) -> torch.Tensor:
        with self._network() as net:
            if logits_to_keep:
                return net(**model_inputs(batch), logits_to_keep=logits_to_keep).logits
            return logits_of(net, batch)

    @torch.no_grad()
    def answer_probs(self, batch: dict) -> torch.Tensor:
        """(N,V) next-token distributions at the answer positions of ``batch``, row-major.

        Only the positions from the earliest answer on are projected onto the vocabulary (with left
        padding that is the last few tokens of every row), which saves most of the output layer."""
        labels = batch["labels"]
        answer = labels != IGNORE_INDEX
        first = int(answer.float().argmax(dim=1).min()) if answer.any() else labels.shape[1] - 1
        keep = labels.shape[1] - first + 1  # one more: the position before an answer predicts it
        logits = self.logits(batch, logits_to_keep=keep)
        logits, _ = gather_answer_positions(logits, labels[:, -logits.shape[1]:])
        return torch.softmax(logits.float(), dim=-1)


@dataclass
class UnlearnContext:
    """What a method may need beyond its batches, handed to ``setup`` once before training."""

    model: torch.nn.Module
    processor: object
    collate: Callable[[Sequence[Example]], dict]
    data: dict[str, list[Example]]
    reference: FrozenReference
    data_dir: Path | None = None
    cache_dir: Path | None = None
    seed: int = 0
    progress: bool = True
    info: dict = field(default_factory=dict)  # what setup wants recorded in the run's config
