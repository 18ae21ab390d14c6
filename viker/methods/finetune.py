"""Vanilla finetuning: the answer-token NLL of the training examples."""

from __future__ import annotations

from dataclasses import dataclass

from viker.collate import model_inputs
from viker.methods import register
from viker.methods.base import share
from viker.methods.losses import answer_nll


@register("finetune", "finetune")
@dataclass
class Finetune:  # no settings
    streams = ("train",)

    def loss(self, model, batches):
        batch = batches["train"]
        logits = model(**model_inputs(batch)).logits
        return answer_nll(logits, batch["labels"]) * share(batch, "row"), {}
