"""Vanilla finetuning: the answer-token NLL of the training examples (each answer's mean, then over the batch)."""

from __future__ import annotations

from dataclasses import dataclass

from viker.methods import register
from viker.methods.base import log_likelihood


@register("finetune", "finetune")
@dataclass
class Finetune:  # no settings
    streams = ("train",)

    def loss(self, model, batches):
        return -log_likelihood(model, batches["train"]), {}
