"""ViKeR: gradient ascent regularised toward what the frozen model says about irrelevant images.

Loss per answer token: ``log Q_i(y_i) + λ · D(R̂_i ‖ Q_i)`` (see losses.viker_token_loss). Tokens the
reference images still predict (template words) get GA scaled by 1-λ (descent once λ > 1); tokens
they do not (names, facts: the key tokens) are pushed toward the reference's spread-out distribution.

λ sets where ascent stops. With the KL regulariser a token whose reference probability R̂(y) exceeds
1/λ has a resting point, Q = (λR̂ - e_y)/(λ-1), which the loss pulls the model to and holds it at; a
token below it (a key token) is ascended without end. So λ < 1 gives no token a resting point (GA
damped by 1-λ, which any long enough budget turns into GA's collapse), while λ > 1 holds every token
the reference images still predict with probability above 1/λ and forgets the others.

Ablations: ``no_reg`` (λ = 0: gradient ascent, averaged over answer tokens like the whole loss, where the
``ga`` method averages each answer's tokens first), ``no_ga`` (the KL term alone), ``no_vis`` (the reference
is the frozen model on the target image itself, i.e. no visual guidance).
"""

from __future__ import annotations

from dataclasses import dataclass

from viker.errors import VikerError, require
from viker.methods import register
from viker.methods.base import log_likelihood, logits_of, share
from viker.methods.losses import REGULARIZERS, gather_answer_positions, viker_token_loss
from viker.methods.reference import (
    check_refs,
    default_topk,
    pool_owners,
    record_reference,
    reference_distributions,
    reference_pool_and_source,
)

ABLATIONS = ("none", "no_reg", "no_ga", "no_vis")


@register("viker", "ViKeR")
@dataclass
class ViKeR:
    lam: float = 0.05
    k: int = 5
    refs: str = "people"  # people | patterns | scenes | pets | forget | retain | a folder of images
    regularizer: str = "kl"  # kl | jsd | cos
    ablation: str = "none"
    topk: int | None = -1  # -1: full storage up to FULL_VOCAB_LIMIT tokens, else 1024; None: always full
    forget_split: str | None = None
    streams = ("forget",)
    caches_reference = True  # R̂ is cached under the frozen reference's fingerprint
    reference_at_setup_only = True  # R̂ is computed before the first step: full tuning needs no frozen copy

    def __post_init__(self):
        require(self.lam >= 0.0, "--lam", self.lam, "λ must be at least 0")
        if self.k < 1:
            raise VikerError(f"--k {self.k}: at least one reference image is needed")
        if self.regularizer not in REGULARIZERS:
            raise VikerError(f"--regularizer {self.regularizer}: choose from {', '.join(REGULARIZERS)}")
        check_refs(self.refs)
        if self.ablation not in ABLATIONS:
            raise VikerError(f"--ablation {self.ablation}: choose from {', '.join(ABLATIONS)}")
        if self.ablation == "no_ga" and self.lam == 0.0:
            raise VikerError("--ablation no_ga with --lam 0: the KL term alone at λ = 0 is no loss at all; "
                             "give λ > 0")
        self.ga_weight = 0.0 if self.ablation == "no_ga" else 1.0
        if self.ablation == "no_reg":
            self.lam = 0.0

    @property
    def needs_reference(self) -> bool:
        """The frozen model, for R̂; plain gradient ascent (λ = 0) reads none."""
        return self.lam > 0.0

    def unused_settings(self) -> dict[str, str]:
        """The settings this variant does not read, and why."""
        if self.ablation == "no_reg":
            return dict.fromkeys(("lam", "k", "refs", "regularizer", "topk"),
                                 "with --ablation no_reg: plain gradient ascent (λ = 0) reads no reference")
        if self.lam == 0.0:
            return dict.fromkeys(("k", "refs", "regularizer", "topk"), "at --lam 0: plain gradient ascent reads "
                                 "no reference")
        if self.ablation == "no_vis":
            return dict.fromkeys(("k", "refs"), "with --ablation no_vis: the reference is the frozen model on the "
                                 "question's own image")
        return {}

    def setup(self, ctx):
        self.dists = None
        if self.lam == 0.0:
            return  # plain GA: no reference distributions needed
        examples = ctx.data["forget"]
        pool = owners = None
        if self.ablation != "no_vis":
            pool, source = reference_pool_and_source(self.refs, ctx.data_dir, self.forget_split)
            owners = pool_owners(self.refs, ctx.data_dir, self.forget_split)
            ctx.info["reference_pool"] = {"refs": self.refs, "source": source, "images": len(pool)}
        topk = self.topk if self.topk != -1 else default_topk(ctx.model)
        self.dists, path = reference_distributions(ctx.reference, ctx.processor, examples, pool, self.k, ctx.seed,
                                                   topk, ctx.cache_dir, ctx.progress, owners)
        record_reference(ctx.info, self.dists, path)

    def loss(self, model, batches):
        batch = batches["forget"]
        if self.dists is None:  # λ = 0: plain GA, averaged over the answer tokens
            ll = log_likelihood(model, batch, "token")
            return ll, {"forget_ll": ll.item()}
        logits, targets = gather_answer_positions(logits_of(model, batch), batch["labels"])
        ref = self.dists.rows(batch["index"].tolist(), device=logits.device, tokens=logits.shape[0])
        terms = {}  # the two means apart, in history.json: loss = ga_weight · forget_ll + λ · reference_{D}
        loss = viker_token_loss(logits, targets, ref, self.lam, self.regularizer, self.ga_weight, terms)
        weight = share(batch, "token")
        return loss * weight, {name: value * float(weight) for name, value in terms.items()}
