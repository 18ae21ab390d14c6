"""GA: gradient ascent on the forget set (minimise the answers' log-likelihood)."""

from __future__ import annotations

from dataclasses import dataclass

from viker.methods import register
from viker.methods.base import log_likelihood


@register("ga", "GA")
@dataclass
class GA:
    average: str = "sequence"  # each answer's mean, then over the answers; over all tokens at once; or sums (AVERAGES)
    streams = ("forget",)
    needs_reference = False  # no frozen model: with full tuning no copy of the weights is made

    def loss(self, model, batches):
        ll = log_likelihood(model, batches["forget"], self.average)
        return ll, {"forget_ll": ll.item()}
