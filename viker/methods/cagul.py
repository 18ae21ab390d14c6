"""CAGUL: unlearning without touching the model (Cross-Modal Attention Guided Unlearning).

The model stays frozen; what trains is in :mod:`viker.model.cagul`: a discriminator that flags images of
the people to forget and an encoder that rewrites the least attended visual tokens of flagged images.

Training, in two stages:

1. ``setup``: the discriminator, on the visual tokens of the forget people's training images
   (positives) against every other face the run can see: the retain people, the real-world people
   and the reference pool of strangers (negatives). Each image is also seen under ``augment`` random
   crops, flips and lighting changes (both classes alike), so that other photos of a person are
   recognised too. Its precision and recall, and its behaviour on the Test_Set photos it never saw,
   are recorded in the run's config.
2. the trainer's loop, the encoder, with every forget and retain image rewritten (``cagul="force"``):
   - forget term ``reference`` (default): per answer token KL(R̂ ‖ Q), where R̂ is what the frozen model
     says when the image shows someone else (ViKeR's reference distributions, in the same cache folder but
     an entry of their own: CAGUL's forget examples are the image questions only) — the model answers
     about a forget person as about a stranger; or ``npo``: NPO on whole answers against the
     frozen model;
   - retain term: KL(P ‖ Q) to the frozen model's own distributions on retain images, so that a
     retain person wrongly flagged still gets the model's usual answer. Its weight is light (0.25):
     the discriminator already keeps retain images away from the encoder, and a heavy retain term
     makes the encoder itself tell people apart, which competes with forgetting.

CAGUL acts through images only: text-only questions are dropped from its training streams (asked by
name, a person is still known; the evaluation's text-only accuracy shows it).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image, ImageEnhance

from viker.collate import model_inputs
from viker.data.loader import decode_image, has_config, load_profiles
from viker.data.schema import FORGET_SPLITS, Example
from viker.errors import VikerError, require
from viker.methods import register
from viker.methods.base import share
from viker.methods.losses import gather_answer_positions, kl_to_reference, npo_loss, sequence_logprob
from viker.methods.reference import (
    check_pool_size,
    check_refs,
    default_topk,
    pool_owners,
    record_reference,
    reference_distributions,
    reference_pool_and_source,
)
from viker.model.cagul import CagulConfig, CagulModel, Discriminator, per_image
from viker.progress import progress_bar

FORGET_LOSSES = ("reference", "npo")
PROBE_QUESTION = "Who is the person in this image?"


def augment(image: bytes, rng: random.Random) -> bytes:
    """Another photo of the same face, roughly: a random crop (75–100% of the side), a mirror image half
    of the time, a small rotation, brightness and contrast changes."""
    img = decode_image(image)
    w, h = img.size
    side = rng.uniform(0.75, 1.0)
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    corner = img.getpixel((0, 0))
    img = img.rotate(rng.uniform(-10, 10), resample=Image.BILINEAR, fillcolor=corner)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.25))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    out = BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


@torch.no_grad()
def pooled_features(model: CagulModel, processor, images: list[bytes], batch_size: int = 64,
                    progress: bool = False) -> torch.Tensor:
    """(n, 2·dim) each image's visual tokens pooled as the discriminator reads them."""
    from viker.collate import Collator

    collate = Collator(processor, answers=False)
    out = []
    for start in progress_bar(range(0, len(images), batch_size), desc="visual tokens", disable=not progress):
        chunk = [Example(PROBE_QUESTION, "", img) for img in images[start : start + batch_size]]
        batch = {k: v.to(model.device) for k, v in model_inputs(collate(chunk)).items()}
        out += [Discriminator.pool(f) for f in per_image(model.original_features(batch))]
    return torch.stack(out)


def precision_recall(flags: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    tp = int((flags & truth).sum())
    fp, fn = int((flags & ~truth).sum()), int((~flags & truth).sum())
    return {"precision": round(100 * tp / max(1, tp + fp), 2), "recall": round(100 * tp / max(1, tp + fn), 2),
            "false_positive_rate": round(100 * fp / max(1, int((~truth).sum())), 2),
            "positives": int(truth.sum()), "negatives": int((~truth).sum())}


def discriminator_report(model: CagulModel, processor, data_dir: str | Path, forget_split: str,
                         retain_split: str) -> dict:
    """How the discriminator flags the forget people's own images against the retain and real-world
    people's, and the Test_Set photos (other photos of the same people, never seen in training)."""
    from viker.data.schema import RETAIN_OF

    def flags_for(images: list[bytes]) -> torch.Tensor:
        probs = torch.sigmoid(model.discriminator(pooled_features(model, processor, images)))
        return (probs > model.cfg.threshold).cpu()

    forget = load_profiles(data_dir, forget_split)
    others = load_profiles(data_dir, retain_split or RETAIN_OF[forget_split])
    if has_config(data_dir, "Retain_Set"):
        others += load_profiles(data_dir, "Retain_Set")
    flags = flags_for([p.image for p in forget] + [p.image for p in others])
    truth = torch.tensor([True] * len(forget) + [False] * len(others))
    report = {"split_images": precision_recall(flags, truth)}
    if has_config(data_dir, "Test_Set"):
        ids = {p.id for p in forget}
        tests = [(p.id in ids, img) for p in load_profiles(data_dir, "Test_Set") for img in p.images]
        flags = flags_for([img for _, img in tests])
        report["test_set_images"] = precision_recall(flags, torch.tensor([t for t, _ in tests]))
    return report


WEAK_DETECTOR = {"recall": 90.0, "false_positive_rate": 5.0}  # below, above: the warning of detector_warning


def detector_warning(report: dict) -> str | None:
    """A warning where the discriminator tells the split's forget people from the others poorly (it misses more
    than 10% of their images, or flags more than 5% of the others'): answers about people it misses are not
    changed, and answers about people it flags wrongly are. None where it tells them apart."""
    split = report["split_images"]
    if split["recall"] >= WEAK_DETECTOR["recall"] and split["false_positive_rate"] <= WEAK_DETECTOR[
            "false_positive_rate"]:
        return None
    return (f"CAGUL's face detector flags {split['recall']:g}% of the {split['positives']} forget people's images and "
            f"{split['false_positive_rate']:g}% of the {split['negatives']} others' (retain and real-world people): "
            "answers about a forget person it misses stay as they were, and answers about another person it flags "
            "change (config.json: setup.cagul_discriminator). It reads the model's visual features: it is surer on a "
            "model whose features tell these faces apart, or trained longer (CAGUL's disc_steps and augment)")


@register("cagul", "CAGUL")
@dataclass
class CAGUL:
    layers: list[int] | None = None  # decoder layers whose attention ranks visual tokens (None: the middle)
    heads: list[int] | None = None  # heads averaged (None: all)
    rewrite: float = 0.75  # visual tokens rewritten per flagged image: a fraction (< 1) or a count
    encoder_width: int = 128
    encoder_layers: int = 1
    threshold: float = 0.5
    forget_loss: str = "reference"  # reference (answer as about a stranger) | npo
    k: int = 5  # reference images per example (forget_loss=reference)
    refs: str = "people"
    beta: float = 0.1  # forget_loss=npo
    retain_weight: float = 0.25  # light: the discriminator gates; this only guards against its false positives
    augment: int = 8  # augmented copies of each image for the discriminator
    disc_steps: int = 1500
    forget_split: str | None = None
    retain_split: str | None = None
    streams = ("forget", "retain")
    wraps_model = True  # trains modules around the frozen model instead of the model's weights
    caches_reference = True  # its reference answers are cached as ViKeR's R̂ is

    def __post_init__(self):
        if self.forget_loss not in FORGET_LOSSES:
            raise VikerError(f"--forget-loss {self.forget_loss}: choose from {', '.join(FORGET_LOSSES)}")
        check_refs(self.refs)
        # the discriminator's training, set from Python alone (method_args)
        require(self.disc_steps >= 1, "disc_steps", self.disc_steps, "the discriminator trains at least one step")
        require(self.augment >= 0, "augment", self.augment, "augmented copies of each image: 0 or more")
        self.module_config = CagulConfig(layers=self.layers, heads=self.heads, rewrite=self.rewrite,
                                         encoder_width=self.encoder_width, encoder_layers=self.encoder_layers,
                                         threshold=self.threshold)

    @property
    def needs_reference(self) -> bool:
        """The frozen model, for R̂ (``forget_loss=reference``); NPO's and the retain term's reference passes are
        the wrapped model's own with its modules off."""
        return self.forget_loss == "reference"

    def unused_settings(self) -> dict[str, str]:
        """The settings its forget loss does not read, and why."""
        if self.forget_loss == "npo":
            return {"k": "with --forget-loss npo, which takes no reference images"}
        return {"beta": "with --forget-loss reference (NPO's β is for --forget-loss npo)"}

    def setup(self, ctx):
        for name in self.streams:
            ctx.data[name] = [ex for ex in ctx.data[name] if ex.image is not None]
            if not ctx.data[name]:
                raise VikerError(f"CAGUL acts through images, and the {name} split has no question with an image")
        torch.manual_seed(ctx.seed)
        try:
            pool, source = reference_pool_and_source(self.refs, ctx.data_dir, self.forget_split)
            ctx.info["reference_pool"] = {"refs": self.refs, "source": source, "images": len(pool)}
        except VikerError:
            if self.forget_loss == "reference" or self.refs != "people":  # a pool asked for by name must be there
                raise
            pool = []  # no pool of strangers: the other people suffice as the discriminator's negatives
        self.model = CagulModel(ctx.model, self.module_config)  # --layers and --heads checked against the model
        owners = pool_owners(self.refs, ctx.data_dir, self.forget_split)
        if self.forget_loss == "reference":  # a pool too small for --k, refused before the discriminator trains
            check_pool_size(ctx.data["forget"], pool, self.k, owners)
        heads = ctx.model.config.get_text_config().num_attention_heads
        ctx.info["cagul_attention"] = {"layers": self.model.layers,  # what --layers and --heads left unset became
                                       "heads": list(self.heads or range(heads))}
        if ctx.resume_from is not None:  # the one it had: trained again (on a GPU) it need not be the same
            ctx.info["cagul_discriminator_training"] = self.restore_discriminator(ctx.resume_from)
        else:
            ctx.info["cagul_discriminator_training"] = self.train_discriminator(ctx, pool)
        if ctx.data_dir is not None and self.forget_split in FORGET_SPLITS:  # MLLMU-Bench layout
            ctx.info["cagul_discriminator"] = discriminator_report(self.model, ctx.processor, ctx.data_dir,
                                                                   self.forget_split, self.retain_split)
            if warning := detector_warning(ctx.info["cagul_discriminator"]):
                print(f"warning: {warning}", file=sys.stderr)
        self.dists = None
        if self.forget_loss == "reference":
            self.dists, path = reference_distributions(ctx.reference, ctx.processor, ctx.data["forget"], pool,
                                                       self.k, ctx.seed, default_topk(ctx.model), ctx.cache_dir,
                                                       ctx.progress, owners)
            record_reference(ctx.info, self.dists, path)
        ctx.model = self.model

    def restore_discriminator(self, checkpoint: Path) -> dict:
        """The discriminator a checkpoint kept (``CagulModel.checkpoint_also``), in place of one trained again;
        what its training recorded, as the run's config had it."""
        from safetensors.torch import load_file

        from viker.runs import CHECKPOINT_WEIGHTS, read_configs

        prefix = "discriminator."
        kept = {k.removeprefix(prefix): v for k, v in load_file(str(checkpoint / CHECKPOINT_WEIGHTS)).items()
                if k.startswith(prefix)}
        if not kept:
            raise VikerError(f"{checkpoint}: this checkpoint keeps no CAGUL discriminator to go on with")
        with torch.no_grad():
            self.model.discriminator.load_state_dict(kept)
        self.model.discriminator.requires_grad_(False).eval()
        trained = read_configs(checkpoint.parent)[0].get("setup", {}).get("cagul_discriminator_training") or {}
        return {**trained, "restored_from": str(checkpoint)}

    def _negatives(self, ctx, pool: list[bytes]) -> list[bytes]:
        """Every other face the run can see: the retain people, the real-world people, the strangers."""
        images = [ex.image for ex in ctx.data["retain"]]
        if ctx.data_dir is not None and has_config(ctx.data_dir, "Retain_Set"):
            images += [p.image for p in load_profiles(ctx.data_dir, "Retain_Set")]
        return images + pool

    def train_discriminator(self, ctx, pool: list[bytes]) -> dict:
        positives = list(dict.fromkeys(ex.image for ex in ctx.data["forget"]))
        forget = set(positives)
        negatives = [img for img in dict.fromkeys(self._negatives(ctx, pool)) if img not in forget]
        rng = random.Random(f"cagul-augment-{ctx.seed}")
        images, labels = [], []
        for label, group in ((1.0, positives), (0.0, negatives)):
            for img in group:
                images += [img] + [augment(img, rng) for _ in range(self.augment)]
                labels += [label] * (1 + self.augment)
        x = pooled_features(self.model, ctx.processor, images, progress=ctx.progress)
        y = torch.tensor(labels, device=x.device)
        disc = self.model.discriminator.requires_grad_(True).train()
        optimizer = torch.optim.AdamW(disc.parameters(), lr=3e-3, weight_decay=1e-4)
        weight = torch.tensor(len(negatives) / max(1, len(positives)), device=x.device)
        for _ in range(self.disc_steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(disc(x), y, pos_weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        disc.eval().requires_grad_(False)
        return {"positive_images": len(positives), "negative_images": len(negatives),
                "augmented_copies": self.augment, "final_bce": round(loss.item(), 4)}

    def loss(self, model, batches):
        forget, retain = batches["forget"], batches["retain"]
        logits = model(**model_inputs(forget), labels=forget["labels"], cagul="force").logits
        if self.forget_loss == "reference":
            logits, _ = gather_answer_positions(logits, forget["labels"])
            ref = self.dists.rows(forget["index"].tolist(), device=logits.device, tokens=logits.shape[0])
            forget_term = kl_to_reference(ref, logits).mean() * share(forget, "token")
        else:
            with torch.no_grad():
                ref_logp = sequence_logprob(model(**model_inputs(forget), cagul="off").logits, forget["labels"])
            forget_term = npo_loss(sequence_logprob(logits, forget["labels"]), ref_logp, self.beta) * \
                share(forget, "row")
        logs = {"forget": forget_term.item()}
        loss = forget_term
        if self.retain_weight > 0:
            with torch.no_grad():
                target, _ = gather_answer_positions(model(**model_inputs(retain), cagul="off").logits,
                                                    retain["labels"])
            rewritten, _ = gather_answer_positions(
                model(**model_inputs(retain), labels=retain["labels"], cagul="force").logits, retain["labels"])
            retain_term = kl_to_reference(target.float().softmax(-1), rewritten).mean() * \
                share(retain, "token")
            loss = loss + self.retain_weight * retain_term
            logs["retain_kl"] = retain_term.item()
        return loss, logs

    def save(self, folder: Path, base_model: str, info: dict | None = None) -> None:
        self.model.save(folder, base_model, info)
