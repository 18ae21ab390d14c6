"""IdkPO: DPO with a refusal as the preferred answer and the true answer as the dispreferred one."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from viker.methods import register
from viker.methods.base import OptionalRetainNLL, logits_of, share
from viker.methods.losses import dpo_loss, sequence_logprob
from viker.prompts import REFUSALS


@register("idkpo", "IdkPO")
@dataclass
class IdkPO(OptionalRetainNLL):
    beta: float = 0.1
    retain_weight: float = 1.0  # 0 leaves the retain NLL term out
    average: str = "sequence"  # how the retain NLL averages, as GA's log-likelihood (AVERAGES)

    @staticmethod
    def preflight_examples(data: dict, seed: int) -> list:
        """The preferred answers: one fixed refusal per forget example, so that it does not change between
        epochs. Trained on beside the streams, so checked with them before the run starts."""
        rng = random.Random(seed)
        return [replace(ex, answer=rng.choice(REFUSALS), kind="refusal") for ex in data["forget"]]

    def setup(self, ctx):
        self.reference = ctx.reference
        self.collate = ctx.collate
        self.refusals = self.preflight_examples(ctx.data, ctx.seed)

    def loss(self, model, batches):
        rejected = batches["forget"]
        chosen = self.collate([self.refusals[i] for i in rejected["index"].tolist()])
        chosen = {k: v.to(rejected["input_ids"].device) for k, v in chosen.items()}
        lc = sequence_logprob(logits_of(model, chosen), chosen["labels"])
        lr = sequence_logprob(logits_of(model, rejected), rejected["labels"])
        rc = sequence_logprob(self.reference.logits(chosen), chosen["labels"])
        rr = sequence_logprob(self.reference.logits(rejected), rejected["labels"])
        rows = share(rejected, "row")
        loss = dpo_loss(lc, lr, rc, rr, self.beta) * rows
        with torch.no_grad():  # how far each side has moved from θ_full (0 at the start), and DPO's weight on
            chosen_gain, rejected_gain = lc - rc, lr - rr  # the margin, σ(−β·margin): 1/2 at the start
            weight = torch.sigmoid(-self.beta * (chosen_gain - rejected_gain))
        # means over the rows, weighted as the loss is, so that the processes' logs average to the global batch's
        logs = {"dpo": loss.item(), **{name: float(values.detach().mean() * rows) for name, values in (
            ("refusal_logp", lc), ("forget_logp", lr), ("refusal_gain", chosen_gain), ("forget_gain", rejected_gain),
            ("dpo_weight", weight))}}
        return self.plus_retain_nll(loss, logs, model, batches)
