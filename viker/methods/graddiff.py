"""GradDiff: GA on a forget batch plus NLL on a retain batch, paired in the same step."""

from __future__ import annotations

from dataclasses import dataclass

from viker.methods import register
from viker.methods.base import log_likelihood


@register("graddiff", "GradDiff")
@dataclass
class GradDiff:
    retain_weight: float = 1.0
    average: str = "sequence"  # as GA's, for both terms
    streams = ("forget", "retain")
    needs_reference = False  # no frozen model: with full tuning no copy of the weights is made

    def loss(self, model, batches):
        forget_ll = log_likelihood(model, batches["forget"], self.average)
        retain_nll = -log_likelihood(model, batches["retain"], self.average)
        return forget_ll + self.retain_weight * retain_nll, {"forget_ll": forget_ll.item(),
                                                             "retain_nll": retain_nll.item()}
