"""KL-Min: GA on the forget set plus KL(p_full ‖ p_θ) on the retain set's answer tokens."""

from __future__ import annotations

from dataclasses import dataclass

from viker.methods import register
from viker.methods.base import log_likelihood, logits_of, share
from viker.methods.losses import gather_answer_positions, kl_to_reference


@register("klmin", "KL-Min")
@dataclass
class KLMin:
    retain_weight: float = 1.0
    average: str = "sequence"  # the forget term's, as GA's
    streams = ("forget", "retain")

    def setup(self, ctx):
        self.reference = ctx.reference

    def loss(self, model, batches):
        forget_ll = log_likelihood(model, batches["forget"], self.average)
        retain = batches["retain"]
        logits, _ = gather_answer_positions(logits_of(model, retain), retain["labels"])
        kl = kl_to_reference(self.reference.answer_probs(retain), logits).mean() * share(retain, "token")
        return forget_ll + self.retain_weight * kl, {"forget_ll": forget_ll.item(), "retain_kl": kl.item()}
