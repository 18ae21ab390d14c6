"""NPO: -(2/β) log σ(-β (log p_θ(y) - log p_ref(y))) on whole-answer log-likelihoods.

The reference is θ_full (the model before unlearning), as in the NPO paper. MLLMU-Bench's own code
uses a model finetuned on the retain set instead; the choice is explicit here: ``reference_model``
names such a model, and the run's config records which one was used.
"""

from __future__ import annotations

from dataclasses import dataclass

from viker.errors import VikerError
from viker.methods import register
from viker.methods.base import FrozenReference, OptionalRetainNLL, logits_of, share
from viker.methods.losses import npo_loss, sequence_logprob


@register("npo", "NPO")
@dataclass
class NPO(OptionalRetainNLL):
    beta: float = 0.1
    retain_weight: float = 0.0  # > 0 adds the retain NLL term
    average: str = "sequence"  # how the retain NLL averages, as GA's log-likelihood (AVERAGES)
    reference_model: str | None = None  # None: θ_full

    @property
    def needs_reference(self) -> bool:
        """θ_full, unless another model is the reference."""
        return self.reference_model is None

    def setup(self, ctx):
        self.reference = ctx.reference
        if self.reference_model:
            from viker.model import load_model, processor_of
            from viker.model.cagul import cagul_meta, is_cagul_run

            # its tokenizer first, before minutes of loading its weights (a CAGUL run's is its base model's)
            named = cagul_meta(self.reference_model)["base_model"] if is_cagul_run(self.reference_model) else \
                self.reference_model
            if _vocabulary(processor_of(named, ctx.trust_remote_code)) != _vocabulary(ctx.processor):
                raise VikerError(f"--reference-model {self.reference_model}: its tokenizer is not the trained "
                                 "model's, so it cannot score the same answer tokens; give a model of the same family "
                                 "and tokenizer (e.g. one finetuned from the same base on the retain set)")
            other, _ = load_model(self.reference_model, str(next(ctx.model.parameters()).device), ctx.dtype,
                                  ctx.trust_remote_code)
            self.reference = FrozenReference(ctx.model, separate=other.eval().requires_grad_(False),
                                             autocast=ctx.autocast)
        ctx.info["npo_reference"] = self.reference_model or "vanilla (θ_full)"

    def loss(self, model, batches):
        forget = batches["forget"]
        logp = sequence_logprob(logits_of(model, forget), forget["labels"])
        ref_logp = sequence_logprob(self.reference.logits(forget), forget["labels"])
        rows = share(forget, "row")
        loss = npo_loss(logp, ref_logp, self.beta) * rows
        logs = {"npo": loss.item(), "forget_logp": float(logp.detach().mean() * rows)}  # weighted as the loss is
        return self.plus_retain_nll(loss, logs, model, batches)


def _vocabulary(processor) -> dict[str, int]:
    return getattr(processor, "tokenizer", processor).get_vocab()
