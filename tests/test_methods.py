"""Every method runs end to end on the tiny model; method-level losses match hand-computed values;
ViKeR's reference cache matches a direct computation."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch

from viker.cli import main
from viker.collate import Collator, model_inputs
from viker.data.examples import unlearning_examples
from viker.data.schema import Example
from viker.errors import VikerError
from viker.methods import METHODS, get_method
from viker.methods.base import FrozenReference, UnlearnContext, log_likelihood, logits_of
from viker.methods.losses import gather_answer_positions
from viker.methods.reference import (
    ReferenceDistributions,
    cache_key,
    compute_reference_distributions,
    processor_fingerprint,
    reference_pool,
)
from viker.model import LoraSettings, apply_lora, enable_gradient_checkpointing, load_model
from viker.train import TrainConfig
from viker.unlearn import UnlearnConfig, run_unlearn

STEPS = TrainConfig(max_steps=2, batch_size=4, lr=1e-3, log_every=1)


def _config(tiny_dir, bench_dir, out, method, **args):
    return UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), forget="forget_10", method=method,
                         method_args=args, out=str(out), train=STEPS, cache_dir=str(out / "cache"),
                         lora=LoraSettings(r=4, alpha=8, dropout=0.0, merge=False))


@pytest.mark.parametrize("method", ["ga", "graddiff", "klmin", "npo", "idkpo", "viker"])
def test_every_method_runs_and_with_lora_only_adapters_change(method, tiny_dir, bench_dir, tmp_path):
    model, processor = load_model(tiny_dir, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained, _, history = run_unlearn(_config(tiny_dir, bench_dir, tmp_path, method, **(
        {"k": 2} if method == "viker" else {})), progress=False, model_and_processor=(model, processor))
    assert history and all(math.isfinite(row["loss"]) for row in history)
    changed = {k for k, v in trained.state_dict().items() if "lora_" in k}
    assert changed, "LoRA adapters were not created"
    for name, value in trained.state_dict().items():
        if "lora_" not in name:
            base = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(value, before[base]), f"{name} changed under LoRA"
    lora_b = [v for k, v in trained.state_dict().items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b), "the adapters did not train"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"]["name"] == method and config["unlearn"]["forget"] == "forget_10"
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    # target modules left unset: the run records which layers that came to (the decoder's linear layers)
    assert config["unlearn"]["lora"]["target_modules"] is None
    adapted = [k for k in trained.state_dict() if k.endswith("lora_A.default.weight")]
    assert config["runtime"]["lora_layers"] == len(adapted) == model.config.text_config.num_hidden_layers * 7
    assert config["runtime"]["lora_targets"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                 "v_proj"]


def _context(tiny_dir, bench_dir, tmp_path, lora=True):
    model, processor = load_model(tiny_dir, device="cpu")
    if lora:
        model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    data = {"forget": unlearning_examples(bench_dir, "forget_10"),
            "retain": unlearning_examples(bench_dir, "retain_90")}
    collate = Collator(processor)
    return UnlearnContext(model, processor, collate, data, FrozenReference(model), bench_dir, tmp_path / "cache",
                          progress=False)


def test_npo_and_idkpo_at_the_start_equal_their_hand_computed_values(tiny_dir, bench_dir, tmp_path):
    """Before the first step θ = θ_full, so every log-ratio is 0: NPO = (2/β)·log 2 per sequence
    (−(2/β)·log σ(0)), and IdkPO = log 2 (−log σ(0)), whatever the batch."""
    ctx = _context(tiny_dir, bench_dir, tmp_path)
    batch = {"forget": ctx.collate(ctx.data["forget"][:4]) | {"index": torch.arange(4)}}
    for name, beta, expected in (("npo", 0.1, 20 * math.log(2)), ("npo", 0.5, 4 * math.log(2)),
                                 ("idkpo", 0.1, math.log(2))):
        method = get_method(name)(beta=beta, retain_weight=0.0)
        method.setup(ctx)
        loss, _ = method.loss(ctx.model, batch)
        assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_under_mixed_precision_the_frozen_reference_agrees_with_the_model_at_the_start(
        tuning, tiny_dir, bench_dir, tmp_path):
    """accelerate autocasts the trained model's forward; the frozen copy full tuning takes must run under
    the same autocast, or θ and θ_full differ at step 0 and NPO's first loss is off (2/β)·log 2."""
    cfg = _config(tiny_dir, bench_dir, tmp_path, "npo", beta=0.1)
    cfg = replace(cfg, tuning=tuning, train=replace(STEPS, max_steps=1, mixed_precision="bf16"),
                  # full tuning takes no LoRA settings of its own
                  lora=replace(cfg.lora if tuning == "lora" else UnlearnConfig().lora, merge=tuning == "full"))
    _, _, history = run_unlearn(cfg, progress=False)
    assert history[0]["loss"] == pytest.approx(20 * math.log(2), rel=1e-6)


def test_reference_distributions_under_autocast_are_cached_apart(tiny_dir, bench_dir, tmp_path):
    """R̂ computed under bf16 autocast is not R̂ computed in float32: a run under --mixed-precision neither
    reads nor fills the float32 run's cache entry."""
    def reference_cache(name, precision):
        cfg = _config(tiny_dir, bench_dir, tmp_path / name, "viker", k=2)
        cfg = replace(cfg, cache_dir=str(tmp_path / "cache"), train=replace(STEPS, max_steps=1,
                                                                            mixed_precision=precision))
        run_unlearn(cfg, progress=False)
        return json.loads((tmp_path / name / "config.json").read_text())["setup"]["reference_cache"]

    plain, autocast = reference_cache("plain", "no"), reference_cache("bf16", "bf16")
    assert not autocast["from_cache"] and autocast["path"] != plain["path"]
    assert reference_cache("bf16-again", "bf16")["from_cache"]  # the same setting still finds its own entry


def _answer_log_probs(model, collate, ex) -> list[tuple[torch.Tensor, int]]:
    """One example alone: at each answer token, the log-distribution that predicts it and the token."""
    b = collate([ex])
    ids, labels = b["input_ids"][0], b["labels"][0]
    with torch.no_grad():
        log_q = model(**model_inputs(b)).logits[0].float().log_softmax(-1)
    return [(log_q[i - 1], int(ids[i])) for i in (labels != -100).nonzero().squeeze(-1).tolist()]


def _answer_logp(collate, model, ex) -> float:
    """One example's whole-answer log-likelihood: the sum over its answer tokens."""
    return sum(log_q[y].item() for log_q, y in _answer_log_probs(model, collate, ex))


def _moved(ctx):
    """θ away from θ_full (the context's frozen copy), so that no log-ratio or KL is zero by construction."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.01 * torch.randn_like(p))


def _mean_answer_log_prob(model, collate, examples) -> float:
    """GA's term: each answer's mean token log-probability, averaged over the answers."""
    per_answer = [[lq[y].item() for lq, y in _answer_log_probs(model, collate, ex)] for ex in examples]
    return sum(sum(lp) / len(lp) for lp in per_answer) / len(per_answer)


def test_viker_matches_a_per_token_loop_at_lambda_above_zero(tiny_dir, bench_dir, tmp_path):
    """ViKeR at λ = 2: the mean over every answer token of log Q(y) + λ·KL(R̂ ‖ Q), with R̂ the cached
    reference row of that token; the JSD regulariser gives another loss."""
    ctx = _context(tiny_dir, bench_dir, tmp_path, lora=False)
    method = get_method("viker")(lam=2.0, k=2)
    method.setup(ctx)
    _moved(ctx)
    examples = ctx.data["forget"][:3]
    order = [2, 0, 1]  # a batch as training draws one, in another order than the examples': each row is its own
    batch = ctx.collate([examples[i] for i in order]) | {"index": torch.tensor(order)}
    loss, logs = method.loss(ctx.model, {"forget": batch})
    terms, lls, kls = [], [], []
    for i, ex in enumerate(examples):
        rows = method.dists.rows([i]).float()
        for (log_q, y), r in zip(_answer_log_probs(ctx.model, ctx.collate, ex), rows, strict=True):
            kl = sum(r[v].item() * (math.log(r[v].item()) - log_q[v].item()) for v in r.nonzero().flatten().tolist())
            terms.append(log_q[y].item() + 2.0 * kl)
            lls.append(log_q[y].item())
            kls.append(kl)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    # history.json logs the two terms apart: the ascent's log-likelihood and the divergence from R̂
    assert logs == {"forget_ll": pytest.approx(sum(lls) / len(lls), rel=1e-4),
                    "reference_kl": pytest.approx(sum(kls) / len(kls), rel=1e-4)}
    jsd = get_method("viker")(lam=2.0, k=2, regularizer="jsd")
    jsd.dists = method.dists
    jsd_loss, _ = jsd.loss(ctx.model, {"forget": ctx.collate(examples) | {"index": torch.arange(3)}})
    assert abs(jsd_loss.item() - loss.item()) > 1e-3


def test_graddiff_and_klmin_match_their_definitions(tiny_dir, bench_dir, tmp_path):
    """GradDiff: GA's term on the forget answers plus w × the retain answers' NLL; KL-Min: GA's term plus
    w × the mean over retain answer tokens of KL(p_full ‖ p_θ)."""
    ctx = _context(tiny_dir, bench_dir, tmp_path, lora=False)
    reference, _ = load_model(tiny_dir, device="cpu")
    _moved(ctx)
    forget, retain = ctx.data["forget"][:3], ctx.data["retain"][:3]
    batches = {"forget": ctx.collate(forget), "retain": ctx.collate(retain)}
    ga_term = _mean_answer_log_prob(ctx.model, ctx.collate, forget)
    graddiff, _ = get_method("graddiff")(retain_weight=0.5).loss(ctx.model, batches)
    retain_nll = -_mean_answer_log_prob(ctx.model, ctx.collate, retain)
    assert graddiff.item() == pytest.approx(ga_term + 0.5 * retain_nll, rel=1e-4)
    klmin = get_method("klmin")(retain_weight=0.5)
    klmin.setup(ctx)
    kls = []
    for ex in retain:
        for (log_q, _), (log_p, _) in zip(_answer_log_probs(ctx.model, ctx.collate, ex),
                                          _answer_log_probs(reference, ctx.collate, ex), strict=True):
            kls.append((log_p.exp() * (log_p - log_q)).sum().item())
    loss, logs = klmin.loss(ctx.model, batches)
    assert loss.item() == pytest.approx(ga_term + 0.5 * sum(kls) / len(kls), rel=1e-4)
    # the term alone, θ well away from θ_full: KL(p_full ‖ p_θ), not the other way round, and with a gradient
    with torch.no_grad():
        for p in ctx.model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    forward, backward = [], []
    for ex in retain:
        for (log_q, _), (log_p, _) in zip(_answer_log_probs(ctx.model, ctx.collate, ex),
                                          _answer_log_probs(reference, ctx.collate, ex), strict=True):
            forward.append((log_p.exp() * (log_p - log_q)).sum().item())
            backward.append((log_q.exp() * (log_q - log_p)).sum().item())
    loss, logs = klmin.loss(ctx.model, batches)
    assert logs["retain_kl"] == pytest.approx(sum(forward) / len(forward), rel=1e-4)
    assert abs(sum(forward) - sum(backward)) > 0.005 * abs(sum(forward))  # far beyond the tolerance above

    def gradients(value):
        ctx.model.zero_grad()
        value.backward()
        return [p.grad.clone() for p in ctx.model.parameters() if p.grad is not None]

    with_kl, forget_alone = gradients(loss), gradients(log_likelihood(ctx.model, batches["forget"]))
    assert any(not torch.allclose(a, b) for a, b in zip(with_kl, forget_alone))  # the KL term trains θ too


def test_idkpo_prefers_the_refusal_to_the_true_answer(tiny_dir, bench_dir, tmp_path):
    """IdkPO is DPO with the refusal chosen and the true answer rejected: −log σ(β((lc − rc) − (lr − rr))),
    per answer then averaged, with θ away from θ_full so that the order of the two matters."""
    ctx = _context(tiny_dir, bench_dir, tmp_path, lora=False)
    reference, _ = load_model(tiny_dir, device="cpu")
    method = get_method("idkpo")(beta=0.5, retain_weight=0.0)
    method.setup(ctx)
    _moved(ctx)
    examples = ctx.data["forget"][:3]
    loss, logs = method.loss(ctx.model, {"forget": ctx.collate(examples) | {"index": torch.arange(3)}})

    logp = partial(_answer_logp, ctx.collate)
    losses, gains, weights = [], [], []
    for i, ex in enumerate(examples):
        refusal = method.refusals[i]
        assert refusal.answer != ex.answer and refusal.question == ex.question
        gains.append((logp(ctx.model, refusal) - logp(reference, refusal), logp(ctx.model, ex) - logp(reference, ex)))
        margin = gains[-1][0] - gains[-1][1]
        losses.append(math.log1p(math.exp(-0.5 * margin)))
        weights.append(1 / (1 + math.exp(0.5 * margin)))  # σ(−β·margin), DPO's weight on this answer's gradient
    assert loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    # what the demo's report reads of its log: how far each side moved from θ_full, and DPO's weight
    assert logs["refusal_gain"] == pytest.approx(sum(g[0] for g in gains) / 3, rel=1e-4, abs=1e-4)
    assert logs["forget_gain"] == pytest.approx(sum(g[1] for g in gains) / 3, rel=1e-4, abs=1e-4)
    assert logs["dpo_weight"] == pytest.approx(sum(weights) / 3, rel=1e-4)


def test_npo_matches_a_per_sequence_loop(tiny_dir, bench_dir, tmp_path):
    """NPO on whole-answer log-likelihoods: Σ over each answer's tokens, then the NPO formula."""
    ctx = _context(tiny_dir, bench_dir, tmp_path, lora=False)
    reference_model, _ = load_model(tiny_dir, device="cpu")
    with torch.no_grad():  # move θ away from θ_full
        for p in ctx.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    method = get_method("npo")(beta=0.1)
    method.setup(ctx)
    examples = ctx.data["forget"][:3]
    loss, _ = method.loss(ctx.model, {"forget": ctx.collate(examples)})
    per_seq = []
    for ex in examples:  # one sequence at a time, summing log-probs by hand
        b = ctx.collate([ex])
        ids, labels = b["input_ids"][0], b["labels"][0]
        with torch.no_grad():
            lp_t = ctx.model(**model_inputs(b)).logits[0].log_softmax(-1)
            lp_r = reference_model(**model_inputs(b)).logits[0].log_softmax(-1)
        pos = (labels != -100).nonzero().squeeze(-1)
        logp = sum(lp_t[i - 1, ids[i]].item() for i in pos)
        ref = sum(lp_r[i - 1, ids[i]].item() for i in pos)
        per_seq.append(-(2 / 0.1) * math.log(1 / (1 + math.exp(0.1 * (logp - ref)))))
    assert loss.item() == pytest.approx(sum(per_seq) / len(per_seq), rel=1e-4)


def test_reference_distributions_match_a_direct_computation_and_the_cache(tiny_dir, bench_dir, tmp_path):
    ctx = _context(tiny_dir, bench_dir, tmp_path)
    pool = reference_pool("people", bench_dir)
    examples = ctx.data["forget"][:4]  # two questions about the pictured person, two by name
    k = 3
    dists = compute_reference_distributions(ctx.reference.answer_probs, ctx.collate, examples, pool, k, seed=0,
                                            progress=False)
    # direct: k other people's images drawn here with the same seed, one image at a time, probabilities
    # averaged by hand
    import random

    rng = random.Random("viker-refs-0")
    assert any(ex.image is None for ex in examples) and any(ex.image is not None for ex in examples)
    for i, ex in enumerate(examples):
        # a text-only question has no image to swap: its reference is the frozen model on its own input
        images = [None] if ex.image is None else rng.sample([img for img in pool if img != ex.image], k)
        assert ex.image is None or (len(set(images)) == k and ex.image not in images)
        per_image = [ctx.reference.answer_probs(ctx.collate([replace(ex, image=img)])) for img in images]
        direct = torch.stack(per_image).mean(0)
        assert torch.allclose(dists.rows([i]), direct, atol=1e-6)
        assert torch.allclose(dists.rows([i]).sum(-1), torch.ones(direct.shape[0]), atol=1e-5)
    path = tmp_path / "r.safetensors"
    dists.save(path)
    loaded = ReferenceDistributions.load(path)
    assert torch.equal(loaded.rows([0, 2, 1]), dists.rows([0, 2, 1]))
    # rows read against answers of another length (a cache made for other answers) are refused, not paired off
    n = int(dists.offsets[1])
    assert dists.rows([0], tokens=n).shape[0] == n
    with pytest.raises(VikerError, match=f"hold {n} rows for their {n + 1} answer tokens"):
        dists.rows([0], tokens=n + 1)
    # a writer killed outright (SIGKILL) left its temporary file: the entry's next writing removes it, a day on, and
    # never one another writer may still be writing
    import os
    import time

    stale, fresh = tmp_path / ".r-abc.tmp", tmp_path / ".r-def.tmp"
    for left in (stale, fresh):
        left.write_bytes(b"half an entry")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    dists.save(path)
    assert not stale.exists() and fresh.exists()


def test_viker_no_reg_is_gradient_ascent(tiny_dir, bench_dir, tmp_path):
    ctx = _context(tiny_dir, bench_dir, tmp_path)
    batch = {"forget": ctx.collate(ctx.data["forget"][:4]) | {"index": torch.arange(4)}}
    viker = get_method("viker")(ablation="no_reg")
    viker.setup(ctx)
    ga = get_method("ga")()
    logits = ctx.model(**model_inputs(batch["forget"])).logits
    answer_logits, targets = gather_answer_positions(logits, batch["forget"]["labels"])
    token_mean = answer_logits.log_softmax(-1).gather(-1, targets[:, None]).mean()
    assert viker.loss(ctx.model, batch)[0].item() == pytest.approx(token_mean.item(), rel=1e-5)
    # GA averages each answer's tokens first, then the answers (as the baselines' code does)
    labels = batch["forget"]["labels"][:, 1:]  # the token each position predicts
    answer = labels != -100
    logp = logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    per_answer = ((logp * answer).sum(1) / answer.sum(1)).mean()
    assert ga.loss(ctx.model, batch)[0].item() == pytest.approx(per_answer.item(), rel=1e-5)
    assert per_answer.item() != pytest.approx(token_mean.item(), rel=1e-5)  # answers of unequal length


def test_viker_reference_cache_is_reused(tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    ctx = _context(tiny_dir, bench_dir, tmp_path)
    first = get_method("viker")(k=2)
    first.setup(ctx)
    files = list((tmp_path / "cache").glob("refdist-*.safetensors"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = get_method("viker")(k=2)
    second.setup(ctx)
    assert files[0].stat().st_mtime_ns == stamp  # loaded, not recomputed
    assert torch.equal(first.dists.rows([0, 1]), second.dists.rows([0, 1]))
    third = get_method("viker")(k=3)  # a different k is a different cache entry
    third.setup(ctx)
    assert len(list((tmp_path / "cache").glob("refdist-*.safetensors"))) == 2
    # damaged since it was written, or another entry copied over it: named, never trained toward, computed again
    other = next(f for f in (tmp_path / "cache").glob("refdist-*.safetensors") if f != files[0])
    for damage, said in ((lambda: files[0].write_bytes(files[0].read_bytes()[:100]), "an unreadable reference cache"),
                         (lambda: shutil.copy(other, files[0]), "the entry of another key")):
        damage()
        again = get_method("viker")(k=2)
        again.setup(ctx)
        err = capsys.readouterr().err
        assert f"warning: {files[0]}: {said}" in err and err.rstrip().endswith("; computed again")
        assert torch.equal(again.dists.rows([0, 1]), first.dists.rows([0, 1]))
        assert not ctx.info["reference_cache"]["from_cache"]
    assert ReferenceDistributions.load(files[0]).fault(first.dists.meta["key"]) is None  # written again, whole
    # a cache that cannot be written (a full disk) costs the entry, not the run
    files[0].unlink()
    monkeypatch.setattr(ReferenceDistributions, "save", lambda self, path: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    full = get_method("viker")(k=2)
    full.setup(ctx)
    assert "warning: the reference cache could not be written" in capsys.readouterr().err
    assert torch.equal(full.dists.rows([0, 1]), first.dists.rows([0, 1]))
    assert ctx.info["reference_cache"]["path"] is None


def test_the_cache_key_follows_the_weights_and_the_processor_the_reference_answers_with(tiny_dir):
    """R̂ cached for one model or processor is never served for another: a trained adapter in effect, or
    another chat template, gives another key; adapters the reference switches off, or fresh ones (which
    change no output), give the base model's."""
    model, processor = load_model(tiny_dir, device="cpu")
    base = FrozenReference(model, separate=model).fingerprint()
    lora = apply_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0))
    assert FrozenReference(lora, separate=lora).fingerprint() == base  # fresh: every LoRA B is zero
    with torch.no_grad():
        next(p for n, p in lora.named_parameters() if "lora_B" in n).fill_(0.01)
    assert FrozenReference(lora, separate=lora).fingerprint() != base  # e.g. an adapter run loaded to be shown
    assert FrozenReference(lora).fingerprint() == base  # LoRA unlearning: the reference switches adapters off

    other = load_model(tiny_dir, device="cpu")[1]
    assert processor_fingerprint(other) == processor_fingerprint(processor)
    # what a batch leaves set in the tokenizer (padding to the left for answers, say) is no other processor
    Collator(other, answers=False)([Example("Who is this?", "Ava.", None), Example("Who?", "Ava Lind.", None)])
    assert processor_fingerprint(other) == processor_fingerprint(processor)
    other.chat_template = other.chat_template.replace("USER: ", "User: ")
    keys = {cache_key(base, [], None, 5, 0, None, processor_fingerprint(p)) for p in (processor, other)}
    assert len(keys) == 2


def test_the_cache_key_tells_apart_models_one_weight_or_one_setting_apart(tiny_dir):
    """A model that differs from another in a single weight (as a sparse unlearning method leaves it), or in
    config.json alone (the same weights with another RoPE base), is never served the other's cached R̂; a
    model loaded again, or set to train with gradient checkpointing, keeps its key."""
    fingerprint = lambda m: FrozenReference(m, separate=m).fingerprint()  # noqa: E731
    base = fingerprint(load_model(tiny_dir, device="cpu")[0])
    again = load_model(tiny_dir, device="cpu")[0]
    enable_gradient_checkpointing(again)
    assert fingerprint(again) == base
    edited = load_model(tiny_dir, device="cpu")[0]
    weight = edited.get_output_embeddings().weight
    with torch.no_grad():
        weight[weight.shape[0] // 2, 1] += 1.0  # off any stride a sample of the tensor would take
    assert fingerprint(edited) != base
    retuned = load_model(tiny_dir, device="cpu")[0]
    retuned.config.text_config.rope_parameters = {"rope_type": "default", "rope_theta": 10.0}
    assert fingerprint(retuned) != base


def test_the_frozen_reference_of_a_lora_model_is_its_base_with_the_adapters_off(tiny_dir, bench_dir):
    """Once the adapters have trained (their B no longer zero), the reference must still be θ_full: with them on,
    NPO would be plain ascent and KL-Min's term zero."""
    model, processor = load_model(tiny_dir, device="cpu")
    batch = Collator(processor)(unlearning_examples(bench_dir, "forget_10")[:2])
    with torch.no_grad():
        base = logits_of(model, batch)
        lora = apply_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0)).eval()
        torch.manual_seed(0)
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        trained, reference = logits_of(lora, batch), FrozenReference(lora).logits(batch)
    assert not torch.allclose(trained, base, atol=1e-3)
    assert torch.allclose(reference, base, atol=1e-5)


def test_a_reference_image_is_never_the_question_s_own(bench_dir):
    """Without a map of whose face each pool image is (the embedded pools, a folder of strangers), the example's
    own image, where the pool holds it, is still never one of its references."""
    import random

    from viker.methods.reference import choose_reference_images

    example = Example("Who is this?", "Ann Lee.", b"own", "0001")
    pool = [b"own", b"a", b"b", b"c"]
    for seed in range(50):
        assert b"own" not in choose_reference_images(example, pool, 3, random.Random(seed))
    with pytest.raises(VikerError, match=r"has 3 usable images \(not this person's\), fewer than k=4"):
        choose_reference_images(example, pool, 4, random.Random(0))


def test_the_frozen_reference_answers_without_dropout_while_the_model_trains(tiny_dir, bench_dir):
    """With LoRA the reference is the trained network with its adapters off: its passes must not take the
    dropout of a model in train mode, and must leave that model training."""
    model, processor = load_model(tiny_dir, device="cpu")
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    lora = apply_lora(model, LoraSettings(r=2, alpha=4, dropout=0.5)).train()
    batch = Collator(processor)(unlearning_examples(bench_dir, "forget_10")[:2])
    with torch.no_grad():
        assert not torch.equal(logits_of(lora, batch), logits_of(lora, batch))  # dropout acts while it trains
    ref = FrozenReference(lora)
    assert torch.equal(ref.logits(batch), ref.logits(batch))
    assert all(m.training for m in lora.modules())


@pytest.mark.parametrize("method, copies", [("ga", 0), ("graddiff", 0), ("klmin", 1), ("viker", 0)])
def test_full_tuning_copies_the_model_only_for_a_method_that_reads_the_frozen_reference(
        method, copies, tiny_dir, bench_dir, tmp_path, monkeypatch):
    """A frozen copy of a 7B model is 14 GB more on the GPU: GA and GradDiff never read one, and ViKeR
    reads θ_full only to compute R̂, before the first step, when the model itself is θ_full."""
    import copy

    import viker.methods.base

    made, deepcopy = [], copy.deepcopy

    def counted(obj, *args):  # whole models copied (the copy's own recursion into their parts aside)
        if isinstance(obj, torch.nn.Module) and not getattr(counted, "inside", False):
            made.append(type(obj).__name__)
            counted.inside = True
            try:
                return deepcopy(obj, *args)
            finally:
                counted.inside = False
        return deepcopy(obj, *args)

    monkeypatch.setattr(viker.methods.base.copy, "deepcopy", counted)
    run_unlearn(UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), method=method, tuning="full",
                              method_args={"k": 2} if method == "viker" else {},
                              out=str(tmp_path / "run"), train=TrainConfig(max_steps=1, batch_size=2),
                              cache_dir=str(tmp_path / "cache")), progress=False)
    assert len(made) == copies


def test_sharded_full_tuning_of_a_method_that_reads_a_frozen_reference_is_refused_before_anything_changes(
        tiny_dir, bench_dir, tmp_path, monkeypatch, capsys):
    """Under FSDP or DeepSpeed a full-tuned model has no frozen copy: NPO, KL-Min and IdkPO were refused at their
    first step, once --overwrite had removed the run in --out; a method that reads none runs."""
    import viker.unlearn

    monkeypatch.setattr(viker.unlearn, "shards_model", lambda accelerator: True)  # as under FSDP, on this CPU
    run = tmp_path / "run"
    common = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--tuning", "full", "--max-steps", "1",
              "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]
    assert main([*common, "--method", "viker", "--lam", "0"]) == 0  # plain ascent reads no frozen model
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    monkeypatch.setattr(viker.unlearn, "load_for_training", lambda *a, **k: pytest.fail("the model was loaded"))
    for method in ("npo", "klmin", "idkpo"):
        assert main([*common, "--method", method, "--overwrite"]) == 2
        assert f"has no frozen reference model (a copy of a sharded model is not one); use --tuning lora, DDP, or a " \
            f"method that reads none (ga, graddiff, viker at --lam 0, npo with --reference-model) (--method " \
            f"{method} reads one)" in capsys.readouterr().err
        assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before  # the earlier run is there


@pytest.mark.parametrize("method, args, reads", [("ascent_descent", {}, False), ("viker", {"lam": 0.0}, False),
                                                 ("viker", {"k": 2}, True), ("klmin", {}, True)])
def test_a_frozen_reference_is_made_only_for_a_method_that_reads_it(method, args, reads, registered, tiny_dir,
                                                                     bench_dir, tmp_path, monkeypatch):
    """A method of one's own without a setup (the one place the reference is handed over) cannot read the frozen
    model, and was given a copy of the weights under full tuning; ViKeR at λ = 0, plain GA, fingerprinted every
    weight for a cache it never reads."""
    import viker.unlearn

    if method == "ascent_descent":
        _documented_method(monkeypatch)
    made = []
    monkeypatch.setattr(viker.unlearn, "FrozenReference", lambda *a, **k: made.append(1) or FrozenReference(*a, **k))
    run_unlearn(UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), method=method, tuning="full",
                              method_args=args, out=str(tmp_path / "run"), train=TrainConfig(max_steps=1, batch_size=2),
                              cache_dir=str(tmp_path / "cache")), progress=False)
    assert bool(made) == reads


def test_a_reference_read_in_setup_only_is_the_model_before_training_then_closes(tiny_dir, bench_dir):
    """Full tuning, setup_only: the reference is the model itself, without its dropout (as a copy would
    answer), leaving it training; once closed, a read is an error, never the learning model's answer."""
    from viker.errors import VikerError

    model, processor = load_model(tiny_dir, device="cpu")
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    model.train()
    batch = Collator(processor)(unlearning_examples(bench_dir, "forget_10")[:2])
    copied = FrozenReference(model).logits(batch)
    ref = FrozenReference(model, setup_only=True)
    assert ref._copy is None
    assert torch.equal(ref.logits(batch), copied)
    assert all(m.training for m in model.modules())
    ref.close()
    with pytest.raises(VikerError, match="before training only"):
        ref.logits(batch)


def test_registry_lists_every_method():
    get_method("ga")
    assert {"ga", "graddiff", "klmin", "npo", "idkpo", "viker"} <= set(METHODS)


@pytest.mark.parametrize("args, message", [
    (["--lam", "-0.5"], "λ must be at least 0"),
    (["--k", "0"], "at least one reference image"),
    (["--refs", "nowhere"], "--refs nowhere: no folder"),
    (["--ablation", "no_ga", "--lam", "0"], "no_ga with --lam 0"),  # no loss at all: a run that changes nothing
])
def test_bad_viker_settings_are_one_line_errors(args, message, tiny_dir, bench_dir, tmp_path, capsys):
    code = main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache"), "--max-steps", "1", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [line for line in err.splitlines()
                                                                               if message in line]
    assert not (tmp_path / "run").exists()


def test_a_pool_only_the_embedded_benchmark_has_is_named_so_on_a_real_one(bench_dir, tmp_path):
    """MLLMU-Bench ships no ref_patterns/: "no folder (choose people, patterns, scenes, pets, ...)" offered the
    very pool that was missing."""
    from viker.methods.reference import reference_pool_and_source

    real = tmp_path / "bench"
    shutil.copytree(bench_dir, real, ignore=shutil.ignore_patterns("ref_*"))
    with pytest.raises(VikerError, match=r"^--refs patterns: no folder .*; the ref_\* pools are the embedded "
                                         r"benchmark's \(`viker data synth`\), MLLMU-Bench and CLEAR ship none: "
                                         r"choose people"):
        reference_pool_and_source("patterns", real, "forget_10")
    assert "Retain_Set" in reference_pool_and_source("people", real, "forget_10")[1]  # what it offers instead
    with pytest.raises(VikerError, match=r"^--refs patterns: no folder patterns \(choose people, "):  # no data named
        reference_pool_and_source("patterns", None)


def test_a_folder_of_references_reads_gif_and_tiff_and_names_the_files_it_cannot(bench_dir, tmp_path, capsys):
    from PIL import Image

    from viker.methods.reference import reference_pool_and_source

    folder = tmp_path / "refs"
    shutil.copytree(bench_dir / "ref_people", folder)
    n = len(list(folder.iterdir()))
    Image.new("RGB", (8, 8), "red").save(folder / "z.gif")
    Image.new("RGB", (8, 8), "blue").save(folder / "z.tif")
    (folder / "photo.heic").write_bytes(b"not read")
    (folder / ".DS_Store").write_bytes(b"")
    pool, source = reference_pool_and_source(str(folder), bench_dir)
    assert len(pool) == n + 2 and source == str(folder)
    assert capsys.readouterr().err == f"warning: --refs {folder}: 1 file is not read as images (not .png, .jpg, " \
        ".jpeg, .webp, .bmp, .gif, .tif, .tiff; e.g. photo.heic)\n"


def test_unknown_forget_split_is_an_error(tiny_dir, bench_dir, tmp_path, capsys):
    code = main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(tmp_path / "run"),
                 "--forget", "forget_50", "--method", "ga"])
    assert code == 2 and "--forget forget_50: choose from forget_5, forget_10, forget_15" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["ga", "graddiff"])
def test_average_token_is_the_models_own_loss_and_sequence_weighs_each_answer_alike(tiny, bench_dir, method):
    """--average token: GA's log-likelihood is minus the model's own loss (the mean over every answer token of
    the batch), as the published GA code has it; sequence (the default) averages each answer first, so that
    the two differ on answers of different lengths. GradDiff averages both its terms the same way."""
    model, processor = tiny
    collate = Collator(processor)
    forget = collate(unlearning_examples(bench_dir, "forget_10")[:4])
    retain = collate(unlearning_examples(bench_dir, "retain_90")[:4])
    lengths = (forget["labels"] != -100).sum(-1)
    assert len(set(lengths.tolist())) > 1  # answers of different lengths
    objective = get_method(method)
    with torch.no_grad():
        own = {k: model(**model_inputs(b), labels=b["labels"]).loss
               for k, b in (("forget", forget), ("retain", retain))}
        token, token_logs = objective(average="token").loss(model, {"forget": forget, "retain": retain})
        sequence, _ = objective().loss(model, {"forget": forget, "retain": retain})
    retain_term = own["retain"] if method == "graddiff" else 0.0
    assert token_logs["forget_ll"] == pytest.approx(-own["forget"].item(), rel=1e-5)
    assert token.item() == pytest.approx((-own["forget"] + retain_term).item(), rel=1e-5, abs=1e-5)
    assert abs(sequence.item() - token.item()) > 1e-4


@pytest.mark.parametrize("method", ["ga", "graddiff", "klmin"])
def test_average_sum_is_each_answers_log_likelihood_averaged_over_the_answers(tiny, bench_dir, method):
    """--average sum: the methods' definition, an answer's log-likelihood the sum over its tokens (each answer
    alone: the model's own mean loss times its answer tokens), then the mean over the batch's answers."""
    model, processor = tiny
    collate = Collator(processor)
    examples = unlearning_examples(bench_dir, "forget_10")[:4]
    forget, retain = collate(examples), collate(unlearning_examples(bench_dir, "retain_90")[:4])

    def objective(**kw):
        made = get_method(method)(**kw)
        made.reference = FrozenReference(model, separate=model)  # KL-Min's retain term reads one
        return made

    with torch.no_grad():
        alone = []
        for ex in examples:
            one = collate([ex])
            alone.append(-model(**model_inputs(one), labels=one["labels"]).loss * (one["labels"] != -100).sum())
        _, logs = objective(average="sum").loss(model, {"forget": forget, "retain": retain})
        _, sequence_logs = objective().loss(model, {"forget": forget, "retain": retain})
    assert logs["forget_ll"] == pytest.approx(torch.stack(alone).mean().item(), rel=1e-5)
    assert logs["forget_ll"] < 3 * sequence_logs["forget_ll"]  # answers of several tokens: far below their mean


@pytest.mark.parametrize("method", ["npo", "idkpo"])
def test_average_sets_how_npo_and_idkpo_average_their_retain_nll(tiny, bench_dir, method):
    """NPO's and IdkPO's retain NLL averages as --average says: each answer's mean by default, each answer's
    sum (the methods' page's log-likelihood, as their own log-ratios are) with ``sum``."""
    model, processor = tiny
    collate = Collator(processor)
    retained = unlearning_examples(bench_dir, "retain_90")[:4]
    retain = collate(retained)

    def logs_of(**kw):  # the term each adds to its own loss
        made = get_method(method)(retain_weight=1.0, **kw)
        assert made.streams == ("forget", "retain")
        return made.plus_retain_nll(torch.tensor(0.0), {}, model, {"retain": retain})[1]

    with torch.no_grad():
        alone = []
        for ex in retained:
            one = collate([ex])
            alone.append((model(**model_inputs(one), labels=one["labels"]).loss, (one["labels"] != -100).sum()))
        summed, default = logs_of(average="sum")["retain_nll"], logs_of()["retain_nll"]
    assert summed == pytest.approx(torch.stack([nll * n for nll, n in alone]).mean().item(), rel=1e-5)
    assert default == pytest.approx(torch.stack([nll for nll, _ in alone]).mean().item(), rel=1e-5)
    with torch.no_grad():  # --retain-weight scales the term it adds
        loss, logs = get_method(method)(retain_weight=0.5).plus_retain_nll(torch.tensor(0.0), {}, model,
                                                                          {"retain": retain})
    assert loss.item() == pytest.approx(0.5 * logs["retain_nll"]) and logs["retain_nll"] == pytest.approx(default)


def test_keytokens_page_marks_high_entropy_tokens(tiny_dir, bench_dir, tmp_path, capsys):
    out = tmp_path / "kt" / "keytokens.html"
    assert main(["keytokens", "--model", str(tiny_dir), "--data", str(bench_dir), "--forget", "forget_10",
                 "--out", str(out), "--k", "2", "--epsilon", "0.0", "--cache-dir", str(tmp_path / "cache")]) == 0
    page = out.read_text()
    n_answers = len(unlearning_examples(bench_dir, "forget_10"))
    assert page.count("<div class='a'>") + page.count("<div class='a named'>") == n_answers
    # what made it, so that pages of other references (the paper's ablation) tell themselves apart once saved
    assert html.escape(f"Settings: --model {tiny_dir}; R̂ over --k 2 reference images each (--refs people, "
                       "--seed 0); --train-on all") in page
    said = capsys.readouterr().out  # the key tokens of the image questions' answers, R̂ proper, counted apart
    n_key_image = re.search(r"\((\d+) of \d+ in the answers to image questions\)", page)[1]  # as the page says
    n_key = page.count("class='key'")
    assert f": {n_key} key tokens ({n_key_image} in answers to image questions) in {n_answers} answers" in said
    # ... and as its record beside it keeps them, with what a page's settings line leaves out (the data, by hash)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"] == "keytokens" and record["model"] == str(tiny_dir) and record["k"] == 2
    assert (record["answers"], record["key_tokens"], record["image_key_tokens"]) == (n_answers, n_key, int(n_key_image))
    assert record["data_files"] and record["device"] == "cpu" and "lam" in record and "forgotten" not in record
    # with ε = 0 every token of a random model (its entropy is far above 0) is a key token ...
    assert page.count("class='key'") == page.count("<span ") > n_answers
    assert page.count("R̂(y) = ") == page.count("<span ") and "Reference probability of the true token" in page
    assert out.with_suffix(".png").stat().st_size > 1000
    # ... and none is above an entropy no distribution reaches (log V nats at most)
    assert main(["keytokens", "--model", str(tiny_dir), "--data", str(bench_dir), "--forget", "forget_10",
                 "--out", str(out), "--k", "2", "--epsilon", "1000", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "class='key'" not in out.read_text() and f"0 of {page.count('<span ')} answer tokens" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["key_tokens"] == 0
    # a .json of that name that is no page's record is not replaced
    other = tmp_path / "kt" / "mine.html"
    other.with_suffix(".json").write_text('{"my": "notes"}')
    assert main(["keytokens", "--model", str(tiny_dir), "--data", str(bench_dir), "--forget", "forget_10",
                 "--out", str(other), "--k", "2", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "mine.json is there already, and is no key-token page's record" in capsys.readouterr().err
    # the end-of-turn token closing every answer is no part of what it says: not shown, not counted
    collate = Collator(load_model(tiny_dir, device="cpu")[1])
    end = collate.tokenizer.decode([collate.end_of_turn_id()])
    assert end and f">{end}<" not in page and f">{html.escape(end)}<" not in page


def test_keytokens_underlines_what_a_viker_run_at_lam_forgets(tiny_dir, bench_dir, tmp_path, capsys):
    """Above λ = 1 ViKeR forgets the tokens whose reference probability is under 1/λ and holds the others;
    at λ ≤ 1 it ascends them all. The page says which, token by token, for the λ it is given."""
    import re

    out, cache = tmp_path / "keytokens.html", str(tmp_path / "cache")

    def spans(*lam):
        assert main(["keytokens", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out), "--k", "2",
                     "--cache-dir", cache, *lam]) == 0
        found = re.findall(r"<span class='([^']*)' style=[^>]*R̂\(y\) = ([0-9.e-]+)'>", out.read_text())
        assert found and len(found) == out.read_text().count("<span ")
        return [("gone" in classes.split(), float(p)) for classes, p in found]

    plain = spans()
    assert not any(gone for gone, _ in plain)
    lam = round(1 / sorted(p for _, p in plain)[len(plain) // 2])  # the random model's R̂(y) are small: 1/λ splits them
    at_lam = spans("--lam", str(lam))
    assert all(gone == (p < 1 / lam) for gone, p in at_lam if abs(p * lam - 1) > 1e-3)  # the title rounds R̂(y)
    assert 0 < sum(g for g, _ in at_lam) < len(at_lam)
    assert f"{sum(g for g, _ in at_lam)} forgotten at λ = {lam}" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".json").read_text())["forgotten"] == sum(g for g, _ in at_lam)
    assert all(gone for gone, _ in spans("--lam", "0.5"))
    assert all(gone for gone, _ in spans("--lam", "0"))
    assert "At λ = 0 ViKeR is plain gradient ascent: it ascends every answer token alike" in out.read_text()


def test_the_key_token_picture_draws_the_benchmarks_text_as_it_is(tmp_path, monkeypatch):
    """'$' in a question or an answer is money, not a formula: matplotlib must not read it as math."""
    import matplotlib.figure

    from viker.keytokens import TokenEntropy, write_png

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: drawn.extend(fig.axes[0].texts))
    write_png([TokenEntropy("Did it cost $5 or $6?", True, ["It", " cost", " $5"], [0.1, 0.2, 0.9], [0.9] * 3)],
              tmp_path / "keys.png", epsilon=0.5)
    texts = {t.get_text(): t for t in drawn}
    assert {"[image] Did it cost $5 or $6?", "$5"} <= set(texts)
    assert not any(t.get_parse_math() for t in drawn)
    titles = []  # nor is one in its settings line (a folder named "$x$")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: titles.append(_title(fig)))
    write_png([TokenEntropy("q", True, [" a"], [0.1], [0.9])], tmp_path / "keys.png", 0.5, settings="--model $x$")
    assert titles[0].get_text().endswith("--model $x$") and not titles[0].get_parse_math()


def _title(fig):
    """The text of a figure's left-hand title, where the key-token picture sets its own."""
    from matplotlib.text import Text

    ax = fig.axes[0]
    return next(c for c in ax.get_children() if isinstance(c, Text) and c.get_text() == ax.get_title(loc="left"))


def test_the_key_token_pictures_title_names_its_split_and_sits_above_the_answers(tmp_path, monkeypatch):
    """A picture of one answer made by a long command line: the title's lines squeezed the answers until the
    question covered its answer, or ran off the top of the picture. The figure grows by its title's lines, and the
    title, as the page's, names the split."""
    import matplotlib.figure

    from viker.keytokens import TokenEntropy, write_png

    drawn = {}

    def saved(fig, path, **kw):
        renderer = fig.canvas.get_renderer()
        drawn["title"] = _title(fig).get_window_extent(renderer)
        drawn["texts"] = {t.get_text(): t.get_window_extent(renderer) for t in fig.axes[0].texts}
        drawn["text"], drawn["height"] = fig.axes[0].get_title(loc="left"), fig.bbox.height

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", saved)
    settings = ("Settings: --model /scratch/projects/mllm-unlearning/experiments/2026-12/llava-1.5-7b-hf-finetuned-"
                "mllmu-vanilla-lora-merged/run_0001; R̂ over --k 5 reference images each (--refs /scratch/projects/"
                "mllm-unlearning/reference_images/irrelevant_people_v2, --seed 0); --train-on ft_Data; --dtype "
                "bfloat16; --mixed-precision bf16")
    for long in (1, 3):  # three lines of settings, and more than twice as many
        write_png([TokenEntropy("Where was this person born?", True, [" Oslo"], [2.0], [0.1])], tmp_path / "keys.png",
                  0.5, lam=10, settings=f"{settings} " * long, heading="Key tokens of forget_10")
        assert drawn["text"].startswith("Key tokens of forget_10\nAnswer tokens shaded")
        question, answer = drawn["texts"]["[image] Where was this person born?"], drawn["texts"]["Oslo"]
        assert drawn["title"].y0 >= question.y1, "the title covers the question"
        assert drawn["title"].y1 <= drawn["height"], "the title runs off the picture"
        assert question.y0 >= answer.y1, "the question and its answer are drawn over each other"


def test_keytokens_reads_the_reference_cache_that_a_viker_run_filled(tiny_dir, bench_dir, tmp_path, monkeypatch):
    """Same model, data, k and seed: the page reuses the run's R̂ from the default cache, stored as top-k
    as it is for a 7B model's vocabulary, instead of computing it again in full."""
    from viker.methods import reference

    monkeypatch.setattr(reference, "FULL_VOCAB_LIMIT", 100)  # this tiny vocabulary counts as a large one
    monkeypatch.setenv("VIKER_CACHE", str(tmp_path / "cache"))
    common = ["--model", str(tiny_dir), "--data", str(bench_dir), "--k", "2", "--seed", "3"]
    assert main(["unlearn", *common, "--method", "viker", "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    monkeypatch.setattr(reference, "compute_reference_distributions",
                        lambda *args, **kwargs: pytest.fail("keytokens computed R̂ again instead of reading the cache"))
    assert main(["keytokens", *common, "--out", str(tmp_path / "kt" / "keys.html")]) == 0
    assert sorted((tmp_path / "cache").iterdir()) == cached


def test_keytokens_shows_the_r_hat_a_mixed_precision_run_trained_against(tiny_dir, bench_dir, tmp_path, monkeypatch,
                                                                         capsys):
    """A run under --mixed-precision computes R̂ under its autocast, and caches it apart; keytokens given the same
    --mixed-precision reads that cache, and computes the very same R̂ where there is none."""
    from safetensors.torch import load_file

    from viker.methods import reference

    monkeypatch.setenv("VIKER_CACHE", str(tmp_path / "cache"))
    common = ["--model", str(tiny_dir), "--data", str(bench_dir), "--k", "2"]
    assert main(["unlearn", *common, "--method", "viker", "--max-steps", "1", "--mixed-precision", "bf16",
                 "--out", str(tmp_path / "run")]) == 0
    [cached] = sorted((tmp_path / "cache").iterdir())
    with monkeypatch.context() as patched:
        patched.setattr(reference, "compute_reference_distributions",
                        lambda *args, **kwargs: pytest.fail("keytokens computed R̂ again instead of reading the cache"))
        assert main(["keytokens", *common, "--mixed-precision", "bf16", "--out", str(tmp_path / "kt.html")]) == 0
    assert sorted((tmp_path / "cache").iterdir()) == [cached]
    assert main(["keytokens", *common, "--mixed-precision", "bf16", "--cache-dir", str(tmp_path / "fresh"),
                 "--out", str(tmp_path / "fresh.html")]) == 0
    [fresh] = sorted((tmp_path / "fresh").iterdir())
    assert fresh.name == cached.name and torch.equal(load_file(fresh)["probs"], load_file(cached)["probs"])
    # without autocast, R̂ is another one (by 1e-3 here), cached apart
    assert main(["keytokens", *common, "--cache-dir", str(tmp_path / "fresh"), "--out", str(tmp_path / "no.html")]) == 0
    [plain] = [f for f in (tmp_path / "fresh").iterdir() if f != fresh]
    assert not torch.equal(load_file(plain)["probs"], load_file(fresh)["probs"])
    # the run's own model gives another R̂ than the one it trained against: said
    capsys.readouterr()
    assert main(["keytokens", *common[2:], "--model", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "fresh"),
                 "--out", str(tmp_path / "run.html")]) == 0
    assert f"is an unlearning run: the page shows its own R̂, not the one it trained against, which the model it " \
        f"started from gives (--model {tiny_dir} --forget forget_10)" in capsys.readouterr().err
    # and so do the page and its record, which outlive the warning: no "frozen model" there
    page = (tmp_path / "run.html").read_text()
    assert "of the unlearned model's distribution" in page and "frozen model's" not in page
    assert f"the model is an unlearning run: R̂ is its own, not that of the model it started from (--model " \
           f"{tiny_dir}), which ViKeR trains against" in page
    assert "frozen model's" in (tmp_path / "kt.html").read_text()  # a model that trained nothing: the frozen one


def test_a_token_keeps_the_space_before_it_where_its_tokenizer_drops_it_when_decoded_alone():
    """SentencePiece tokenizers (LLaVA-1.5's, Idefics2's) strip a text's leading space: "▁is" alone decodes to
    "is". The page shows each token as it reads in the whole answer, so its words stay apart."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from viker.keytokens import characters, group_texts

    vocab = {w: i for i, w in enumerate(["<unk>", "▁The", "▁person", "▁is", "▁Jos", "é", "."])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix=""))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    ids = tok("The person is José.", add_special_tokens=False)["input_ids"]
    assert tok.decode([ids[2]]) == "is"  # the tokenizer itself drops the space
    shown = group_texts(tok, ids, characters(tok, ids))
    assert shown == ["The", " person", " is", " Jos", "é", "."]
    assert "".join(shown) == tok.decode(ids) == "The person is José."


def test_the_picture_shades_as_the_page_does(tmp_path, monkeypatch):
    """The PNG shows the first answers; its darkest shade is still the largest entropy of them all, as on the
    page, so that one token has one colour in both."""
    import matplotlib.figure

    from viker.keytokens import PNG_ANSWERS, TokenEntropy, _color, write_png

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: drawn.extend(fig.axes[0].texts))
    rows = [TokenEntropy("q", True, [" a"], [1.0], [0.5])] * PNG_ANSWERS
    rows.append(TokenEntropy("last", True, [" b"], [4.0], [0.5]))  # not drawn, the largest entropy
    write_png(rows, tmp_path / "keys.png", epsilon=5.0)
    token = next(t for t in drawn if t.get_text() == "a")
    shade = [int(c) / 255 for c in _color(1.0, 4.0)[4:-1].split(",")]
    assert token.get_bbox_patch().get_facecolor()[:3] == pytest.approx(shade)


def test_the_picture_and_the_page_say_what_their_shading_and_counts_cover(tmp_path, monkeypatch):
    """The PNG showed the first 12 answers under a title for them all, and shaded questions asked by name (no
    image to replace: the frozen model's own entropy) under "reference entropy H(R̂)"; the page counted their
    key tokens with the image answers'. Each now says which answers it shows and counts."""
    import matplotlib.figure

    from viker.keytokens import PNG_ANSWERS, TokenEntropy, write_html, write_png

    titles, outlines = [], []

    def saved(fig, path, **kw):
        titles.append(fig.axes[0].get_title(loc="left"))
        outlines[:] = [(t.get_text(), t.get_bbox_patch().get_linestyle()) for t in fig.axes[0].texts
                       if t.get_bbox_patch() is not None and t.get_bbox_patch().get_linewidth() > 0]

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", saved)
    pictured, by_name = (TokenEntropy(q, has_image, [" Ann", " Lee"], [2.0, 0.1], [0.01, 0.9])
                         for q, has_image in (("Who is this?", True), ("Where was Ann Lee born?", False)))
    rows = [pictured, by_name, by_name] + [pictured] * PNG_ANSWERS  # 15 answers, 5 of their 30 tokens asked by name
    write_png(rows, tmp_path / "keys.png", epsilon=0.5)
    assert f"The first {PNG_ANSWERS} of 15 forget answers (the page shows them all)." in titles[-1]
    assert "Questions without [image] name the person: with no image to replace, their shading is the frozen " \
        "model's own entropy,\nand their key tokens are outlined dashed." in titles[-1]
    # the key tokens of answers by name (the second and third) outlined dashed, the image answers' solid
    assert [style for _, style in outlines] == ["-", "--", "--"] + ["-"] * (PNG_ANSWERS - 3)
    # what its shades stand for: the darkest is the largest entropy shown
    assert "\nShading from white (H = 0) to the darkest orange-red (H = 2.00 nats, the largest over all the answers, " \
        "as on the page)." in titles[-1]
    write_png([pictured] * 3, tmp_path / "keys.png", epsilon=0.5)  # all shown, all pictured: nothing to add
    assert titles[-1].count("\n") == 1
    write_png([pictured] * 3, tmp_path / "keys.png", epsilon=0.5, settings="Settings: --model m")  # what made it
    assert titles[-1].endswith("as on the page).\nSettings: --model m")
    write_html(rows, tmp_path / "keys.html", epsilon=0.5, title="t")
    page = (tmp_path / "keys.html").read_text()
    assert "15 of 30 answer tokens (13 of 26 in the answers to image questions)" in page
    # a token keeps its leading space, and a long answer wraps at those spaces rather than running off the column
    assert "white-space:pre-wrap" in page and "white-space:pre}" not in page
    assert page.count("<div class='a named'>") == 2 and ".named .key{outline-style:dashed}" in page


def test_a_key_token_page_stopped_before_its_picture_leaves_the_earlier_pair(tiny_dir, bench_dir, tmp_path,
                                                                             capsys, monkeypatch):
    """The page was written, then the picture: Ctrl-C between them left a new page beside the old picture."""
    import viker.keytokens

    page = tmp_path / "keys" / "k.html"
    command = ["keytokens", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(page), "--k", "2",
               "--cache-dir", str(tmp_path / "cache")]
    assert main(command) == 0
    before = {f.name: f.read_bytes() for f in page.parent.iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(viker.keytokens, "write_png", stopped)
    assert main([*command, "--lam", "10"]) == 130
    assert {f.name: f.read_bytes() for f in page.parent.iterdir()} == before


def test_the_key_tokens_of_a_cagul_run_are_those_of_its_frozen_model(tiny, bench_dir, tmp_path):
    """CAGUL's reference distributions come from its frozen model; a page made from a CAGUL run reads them
    the same way, not through modules that rewrite every image they flag."""
    from viker.keytokens import answer_token_entropies, forget_answers
    from viker.model.cagul import CagulConfig, CagulModel

    base, processor = tiny
    wrapped = CagulModel(base, CagulConfig())
    torch.nn.init.normal_(wrapped.encoder.up.weight, std=0.5)  # an encoder that changes what it rewrites
    torch.nn.init.constant_(wrapped.discriminator.net[-1].bias, 1e4)  # that flags every image
    answers = forget_answers(bench_dir, "forget_10")
    with torch.no_grad():
        mine = answer_token_entropies(wrapped, processor, answers, k=2, cache_dir=tmp_path / "a", progress=False)
        frozen = answer_token_entropies(base, processor, answers, k=2, cache_dir=tmp_path / "b", progress=False)
    assert mine == frozen


def test_key_tokens_refuse_reference_rows_that_do_not_match_the_answer_tokens(tiny, bench_dir, monkeypatch):
    """A cache whose rows do not line up with the answer's tokens would shade the wrong tokens: refused."""
    import viker.keytokens
    from viker.errors import VikerError

    vocab = tiny[0].get_output_embeddings().weight.shape[0]

    class OneRow:  # fewer rows than any answer has tokens
        def rows(self, indices, device=None):
            return torch.full((1, vocab), 1.0 / vocab)

    monkeypatch.setattr(viker.keytokens, "reference_distributions", lambda *args, **kwargs: (OneRow(), None))
    answers = viker.keytokens.forget_answers(bench_dir, "forget_10")
    with pytest.raises(VikerError, match="answer tokens without the image, 1 reference rows"):
        viker.keytokens.answer_token_entropies(*tiny, answers, k=2, progress=False)


@pytest.mark.parametrize("field", ["cloze_max_new_tokens", "frame_max_new_tokens", "letter_max_new_tokens"])
def test_a_reply_length_below_one_token_is_refused(field):
    from viker.errors import VikerError
    from viker.eval.evaluate import EvalConfig

    with pytest.raises(VikerError, match=f"{field} 0: must be at least 1"):
        EvalConfig(**{field: 0})


def test_a_character_split_over_byte_tokens_is_shown_whole(tiny):
    from viker.keytokens import characters

    tok = tiny[1].tokenizer
    ids = tok(" Zoë flew to 東京 😀", add_special_tokens=False)["input_ids"]
    shown = [tok.decode([ids[j] for j in group]) for group in characters(tok, ids)]
    assert "".join(shown) == tok.decode(ids) and "\ufffd" not in "".join(shown)
    assert {"ë", "東", "京", "😀"} <= set(shown)  # each its own group, not merged with its neighbours


def test_a_character_split_over_tokens_is_as_uncertain_as_its_most_uncertain_piece(tiny):
    """Its shade (entropy) is its pieces' largest, and its R̂(y), which decides whether a run forgets it, their
    smallest: an "ë" whose second byte the references cannot predict is a key token, whatever its first."""
    from viker.keytokens import characters, forgotten, per_character

    tok = tiny[1].tokenizer
    ids = tok(" Zoë", add_special_tokens=False)["input_ids"]
    groups = characters(tok, ids)
    split = next(g for g in groups if len(g) > 1)  # ë, over its bytes
    entropies, probs = [0.1] * len(ids), [0.95] * len(ids)
    entropies[split[-1]], probs[split[-1]] = 2.5, 0.002
    shade, kept = per_character(groups, entropies, probs)
    at = groups.index(split)
    assert shade[at] == 2.5 and kept[at] == 0.002 and forgotten(kept[at], 10.0)
    assert all(h == 0.1 and r == 0.95 and not forgotten(r, 10.0) for i, (h, r) in enumerate(zip(shade, kept))
               if i != at)


def test_the_key_token_picture_wraps_a_long_answer_instead_of_shrinking_every_row(tmp_path, monkeypatch):
    import matplotlib.figure

    from viker.keytokens import CHAR, TokenEntropy, layout, write_png

    long = [f" word{i:02d}" for i in range(45)]  # about 300 characters: three lines
    placed = layout(long)
    assert max(line for _, line, _ in placed) == 2 and all(x + len(t) * CHAR <= 100 for x, _, t in placed)
    drawn = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: drawn.update(fig=fig))
    rows = [TokenEntropy("short", True, [" It", " is"], [0.1, 0.9], [0.5] * 2),
            TokenEntropy("long", True, long, [0.2] * 45, [0.5] * 45)]
    write_png(rows, tmp_path / "keys.png", epsilon=0.5)
    fig = drawn["fig"]
    assert fig.axes[0].get_position().width > 0.9  # the axes keep the figure's width
    assert fig.get_size_inches()[1] > 0.31 * 4 + 0.9  # and the figure grows by the extra lines


def test_the_key_token_picture_spaces_words_as_the_answer_does():
    """A token's leading space is the gap before its box, never inside it; a piece of a word follows the one
    before it closely, and every box is clear of the next."""
    from viker.keytokens import CHAR, GAP, layout

    placed = layout(["This", " person", " is", " Rund", "rim", "."])
    assert [t for _, _, t in placed] == ["This", "person", "is", "Rund", "rim", "."]
    ends = [x + CHAR * len(t) for x, _, t in placed]
    gaps = [round(x - end, 6) for (x, _, _), end in zip(placed[1:], ends)]
    assert gaps == [round(CHAR + GAP, 6)] * 3 + [GAP] * 2  # a space between words, a hairline inside them
    assert layout([" "])[0][2] == " "  # a token that is only a space is still drawn
    # a line ends between words: a name of several tokens moves to the next line whole
    wrapped = layout(["This"] + [" person"] * 14 + [" is", " Bre", "il", "v", "ath", " St", "aith", "kl", "aith", "."])
    lines = {}
    for _, line, text in wrapped:
        lines.setdefault(line, []).append(text)
    assert lines[1][:5] == ["St", "aith", "kl", "aith", "."] and lines[0][-4:] == ["Bre", "il", "v", "ath"]
    assert all(x + CHAR * len(t) <= 100 for x, _, t in wrapped)
    longest = layout(["a" * 60, "b" * 60, "c" * 60])  # a word wider than a line is cut where it must be
    assert [line for _, line, _ in longest] == [0, 0, 1]


@pytest.mark.parametrize("question", ["Where?", "Which organization does this person work for? " * 3,
                                      "Which organization does this person work for? " * 9])
def test_the_key_token_boxes_as_drawn_neither_cover_each_other_nor_leave_their_slots(tmp_path, monkeypatch, question):
    """Drawn, each box ends before the next begins (words and pieces of one word alike) and each text fits
    the slot the layout gave it, whatever the length of the question above it, which wraps inside the picture
    and stays above its answer."""
    import matplotlib.figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from viker.keytokens import CHAR, TokenEntropy, write_png

    drawn = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: drawn.update(fig=fig))
    tokens = ["This", " person", " is", " Rund", "rim", " Nir", ",", " born", " in", " 1989", "."]
    write_png([TokenEntropy(question, True, tokens, [1.0] * len(tokens), [0.5] * len(tokens))],
              tmp_path / "keys.png", epsilon=0.5)
    fig = drawn["fig"]
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # places each box around its text
    ax, renderer = fig.axes[0], canvas.get_renderer()
    boxes = [t for t in ax.texts if t.get_bbox_patch() is not None]
    assert [t.get_text() for t in boxes] == [t.lstrip(" ") for t in tokens]
    extents = [t.get_bbox_patch().get_window_extent(renderer) for t in boxes]
    assert all(a.x1 < b.x0 for a, b in zip(extents, extents[1:]))
    unit = ax.transData.transform((1, 0))[0] - ax.transData.transform((0, 0))[0]  # pixels per x unit
    for t in boxes:
        text = t.get_window_extent(renderer)
        assert text.width <= CHAR * len(t.get_text()) * unit * 1.02
    asked = [t for t in ax.texts if t.get_bbox_patch() is None]
    assert " ".join(t.get_text() for t in asked) == f"[image] {question}".strip()
    frame = ax.get_window_extent(renderer)
    assert all(t.get_window_extent(renderer).x1 <= frame.x1 for t in asked)
    assert min(t.get_window_extent(renderer).y0 for t in asked) > max(e.y1 for e in extents)  # above the answer


def test_the_key_token_picture_underlines_what_viker_at_lam_forgets(tmp_path, monkeypatch):
    """As on the page: given a run's λ, a line under each token whose reference probability is under 1/λ
    (above λ = 1), under every token at λ ≤ 1, and none without λ; the title says what the line means."""
    import matplotlib.figure

    from viker.keytokens import CHAR, GONE, TokenEntropy, write_png

    drawn = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: drawn.update(ax=fig.axes[0]))
    rows = [TokenEntropy("q", True, ["This", " person", " is", " Deirdi", "."], [0.0, 0.1, 0.0, 3.0, 0.0],
                         [0.99, 0.95, 0.97, 0.004, 0.3])]

    def underlined(lam):
        write_png(rows, tmp_path / "keys.png", epsilon=0.5, lam=lam)
        ax = drawn["ax"]
        boxes = {round(t.get_position()[0], 6): t.get_text() for t in ax.texts if t.get_text() != "[image] q"}
        lines = [ln for ln in ax.lines if ln.get_color() == GONE]
        for ln in lines:  # each line runs under its token's box, from its start to its end
            (x0, x1), _ = ln.get_data()
            assert round(x1 - x0, 6) == round(CHAR * len(boxes[round(x0, 6)]), 6)
        return sorted(boxes[round(ln.get_data()[0][0], 6)] for ln in lines), ax.get_title(loc="left")

    names, title = underlined(None)
    assert names == [] and title.startswith("Answer tokens shaded by reference entropy H(R̂); outlined: key tokens "
                                            "(H > 0.5)\n")
    names, title = underlined(10)
    assert names == ["Deirdi"] and title.split("\n")[0].endswith("; underlined: forgotten by ViKeR at λ = 10")
    assert underlined(2)[0] == [".", "Deirdi"]  # 0.3 < 1/2
    assert underlined(0.5)[0] == sorted(["This", "person", "is", "Deirdi", "."])


def test_ref_prob_summary_counts_tokens_below_one_and_above_ninety_percent():
    from viker.keytokens import TokenEntropy, ref_prob_summary

    rows = [TokenEntropy("q", True, ["a", "b", "c", "d"], [0.0] * 4, [0.001, 0.95, 0.5, 0.999]),
            TokenEntropy("q", False, [], [], [])]
    text = ref_prob_summary(rows)
    assert "25.0% of the answer tokens below 1%, 50.0% above 90%, 25.0% in between" in text
    # what it says of λ is what `forgotten` does at either end of that range
    from viker.keytokens import forgotten

    assert "any λ from 1.2 to 100 holds the tokens above 90% and forgets those below 1%" in text
    assert all(not forgotten(0.9001, lam) and forgotten(0.0099, lam) for lam in (1.2, 10.0, 100.0))
    assert ref_prob_summary([]) == "No answer tokens."


def test_forget_and_retain_sharing_a_person_is_refused(tiny_dir, bench_dir, tmp_path, capsys):
    import shutil

    import pyarrow.parquet as pq

    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    forget = pq.read_table(root / "forget_10" / "train-00000-of-00001.parquet")
    retain = pq.read_table(root / "retain_90" / "train-00000-of-00001.parquet")
    import pyarrow as pa

    pq.write_table(pa.concat_tables([retain, forget.slice(0, 1)]), root / "retain_90" / "train-00000-of-00001.parquet")
    code = main(["unlearn", "--model", str(tiny_dir), "--data", str(root), "--out", str(tmp_path / "run"),
                 "--method", "ga"])
    err = capsys.readouterr().err
    assert code == 2 and "forget_10 and retain_90 share profile IDs" in err
    assert not (tmp_path / "run").exists()
    # nor scored as both: the retain figures would count a forget person's answers
    code = main(["eval", "--model", str(tiny_dir), "--data", str(root), "--out", str(tmp_path / "scores")])
    assert code == 2 and "forget_10 and retain_90 share profile IDs" in capsys.readouterr().err
    assert not (tmp_path / "scores" / "metrics.json").exists()


def test_a_kept_person_with_a_forget_persons_image_or_id_is_refused(tiny_dir, bench_dir, tmp_path, capsys):
    """A retain person given a forget person's photo would have their ft_Data pairs unlearned with the forget
    person's (a pair is a person's by its image); a forget person's photo among the Retain_Set celebrities would
    be scored as one to keep. Both are said before anything runs."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from viker.data.examples import unlearning_examples
    from viker.data.loader import load_profiles

    def swapped_image(config: str, old: bytes, new: bytes) -> None:
        path = next((root / config).glob("*.parquet"))
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            if row["image"]["bytes"] == old:
                row["image"] = {**row["image"], "bytes": new}
        pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)

    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    forget, kept = load_profiles(root, "forget_10")[0], load_profiles(root, "retain_90")[0]
    before = len(unlearning_examples(root, "forget_10"))
    for config in ("retain_90", "Full_Set", "ft_Data"):  # a placeholder photo, say
        swapped_image(config, kept.image, forget.image)
    # what the check keeps from happening: the retain person's pairs join the forget stream
    assert len(unlearning_examples(root, "forget_10")) > before
    code = main(["unlearn", "--model", str(tiny_dir), "--data", str(root), "--out", str(tmp_path / "run"),
                 "--method", "ga"])
    err = capsys.readouterr().err
    assert code == 2 and f"1 retain_90 person has the image of a forget_10 person (ID {forget.id} and {kept.id})" \
        in err
    assert not (tmp_path / "run").exists()
    code = main(["keytokens", "--model", str(tiny_dir), "--data", str(root), "--out", str(tmp_path / "page.html")])
    assert code == 2 and "retain_90 person has the image" in capsys.readouterr().err

    shutil.rmtree(root)
    shutil.copytree(bench_dir, root)
    real = next((root / "Retain_Set").glob("*.parquet"))
    celebrities = pq.read_table(real)
    # the celebrities are numbered apart from the fictitious people: an ID of both is no person of both
    renamed = celebrities.to_pylist()
    renamed[0]["ID"] = forget.id
    pq.write_table(pa.Table.from_pylist(renamed, schema=celebrities.schema), real)
    scope = ["--only", "real:cloze", "--max-new-tokens", "1"]
    assert main(["eval", "--model", str(tiny_dir), "--data", str(root), "--out", str(tmp_path / "ok"), *scope]) == 0
    forget_row = pq.read_table(next((root / "forget_10").glob("*.parquet"))).slice(0, 1)
    pq.write_table(pa.concat_tables([celebrities, forget_row.select(celebrities.schema.names)]), real)
    capsys.readouterr()
    code = main(["eval", "--model", str(tiny_dir), "--data", str(root), "--out", str(tmp_path / "scores"), *scope])
    assert code == 2 and f"1 Retain_Set person has the image of a forget_10 person (ID {forget.id} and " \
        f"{forget.id})" in capsys.readouterr().err
    assert not (tmp_path / "scores" / "metrics.json").exists()


def test_same_seed_same_metrics(tiny_dir, bench_dir, tmp_path):
    """Reproducibility on CPU: the same seed and settings give identical metrics.json."""
    from viker.eval.evaluate import EvalConfig
    from viker.eval.run import run_eval

    metrics = []
    for name in ("a", "b"):
        cfg = _config(tiny_dir, bench_dir, tmp_path / name, "viker", k=2)
        mp = run_unlearn(cfg, progress=False)[:2]
        run_eval(str(tmp_path / name), str(bench_dir), str(tmp_path / name),
                 EvalConfig(max_new_tokens=4, retain_limit=2), progress=False, model_and_processor=mp)
        metrics.append((tmp_path / name / "metrics.json").read_text())
    assert metrics[0] == metrics[1]


def test_viker_without_visual_guidance_regularises_toward_the_frozen_model_on_the_image_itself(
        tiny_dir, bench_dir, tmp_path):
    """The 'w/o Vis' ablation: R̂ is the frozen model's own distribution on the example's own image (one
    per token, no reference images drawn), so before the first step the KL term is zero and the loss is
    the token-mean ascent term; once θ moves, the regulariser adds to it."""
    ctx = _context(tiny_dir, bench_dir, tmp_path, lora=False)
    method = get_method("viker")(lam=2.0, k=3, ablation="no_vis")
    method.setup(ctx)
    assert "reference_pool" not in ctx.info and ctx.info["reference_cache"]["k"] == 1
    examples = ctx.data["forget"][:3]
    assert any(ex.image is not None for ex in examples)
    for i, ex in enumerate(examples):
        own = ctx.reference.answer_probs(ctx.collate([ex]))
        assert torch.allclose(method.dists.rows([i]), own, atol=1e-6)
    batch = {"forget": ctx.collate(examples) | {"index": torch.arange(3)}}

    def token_mean():
        return sum(log_q[y].item() for ex in examples for log_q, y in _answer_log_probs(ctx.model, ctx.collate, ex)
                   ) / sum(len(_answer_log_probs(ctx.model, ctx.collate, ex)) for ex in examples)

    assert method.loss(ctx.model, batch)[0].item() == pytest.approx(token_mean(), rel=1e-5)
    _moved(ctx)
    assert method.loss(ctx.model, batch)[0].item() > token_mean() + 1e-4  # λ·KL(R̂ ‖ Q) > 0
    guided = get_method("viker")(lam=2.0, k=3)
    guided.setup(ctx)
    assert not torch.allclose(guided.dists.rows([0]), method.dists.rows([0]), atol=1e-4)


def test_npo_reference_model_from_the_command_line_loads_as_the_run_loads(tiny_dir, bench_dir, tmp_path, monkeypatch,
                                                                            capsys):
    """`viker unlearn --method npo --reference-model M` takes its log-ratio against M, loaded in the run's dtype
    (a float32 run against a 16-bit copy would not start its log-ratio at 0), and records it as a folder that
    names it from anywhere."""
    import viker.model

    loaded = []

    def recording(path, device=None, dtype="auto", trust_remote_code=False, **kw):
        loaded.append((str(path), dtype))
        return load_model(path, device, dtype, trust_remote_code, **kw)

    shutil.copytree(tiny_dir, tmp_path / "retain-model")
    monkeypatch.setattr(viker.model, "load_model", recording)
    monkeypatch.chdir(tmp_path)
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "npo",
                 "--reference-model", "retain-model", "--dtype", "bfloat16", "--max-steps", "1", "--batch-size", "2",
                 "--out", "run"]) == 0
    assert [dtype for path, dtype in loaded if path.endswith("retain-model")] == ["bfloat16"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["method"]["reference_model"] == str(tmp_path / "retain-model")
    assert config["setup"]["npo_reference"] == str(tmp_path / "retain-model")
    assert config["unlearn"]["method_args"]["reference_model"] == str(tmp_path / "retain-model")  # --resume's view
    # a run that reads another run as its reference never removes it with --overwrite
    capsys.readouterr()
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "npo",
                 "--reference-model", "run", "--max-steps", "1", "--out", "run", "--overwrite"]) == 2
    assert "--out run: --overwrite would remove" in capsys.readouterr().err
    assert (tmp_path / "run" / "model").is_dir()
    # a reference whose tokenizer is another one scores other tokens: refused before the first step
    other, processor = load_model(tmp_path / "retain-model", device="cpu")
    processor.tokenizer.add_tokens(["Zqxvor"])
    other.resize_token_embeddings(len(processor.tokenizer))  # a model of its own, which embeds every token
    other.save_pretrained(tmp_path / "retain-model")
    processor.save_pretrained(tmp_path / "retain-model")
    loaded.clear()
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "npo",
                 "--reference-model", "retain-model", "--max-steps", "1", "--out", "other-tokens"]) == 2
    assert f"--reference-model {tmp_path / 'retain-model'}: its tokenizer is not the trained model's" in \
        capsys.readouterr().err
    assert not (tmp_path / "other-tokens").exists()
    assert not [path for path, _ in loaded if path.endswith("retain-model")]  # refused before its weights load
    # a CAGUL run as the reference answers with its base model's tokenizer: that one is checked
    assert main(["unlearn", "--model", "retain-model", "--data", str(bench_dir), "--method", "cagul", "--k", "2",
                 "--max-steps", "1", "--batch-size", "4", "--cache-dir", "cache", "--out", "cagul-run"]) == 0
    capsys.readouterr()
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "npo",
                 "--reference-model", "cagul-run", "--max-steps", "1", "--out", "other-tokens"]) == 2
    assert f"--reference-model {tmp_path / 'cagul-run'}: its tokenizer is not the trained model's" in \
        capsys.readouterr().err


def test_npo_against_another_reference_model_reads_that_model(tiny_dir, bench_dir, tmp_path):
    """--reference-model: NPO's log-ratio is taken against the named model (MLLMU-Bench's choice, a model
    finetuned on the retain set), not θ_full; the run's setup records which."""
    other, processor = load_model(tiny_dir, device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn_like(p))
    other.save_pretrained(tmp_path / "retain-model")
    processor.save_pretrained(tmp_path / "retain-model")
    ctx = _context(tiny_dir, bench_dir, tmp_path, lora=False)
    method = get_method("npo")(beta=0.1, reference_model=str(tmp_path / "retain-model"))
    assert not method.needs_reference
    method.setup(ctx)
    assert ctx.info["npo_reference"] == str(tmp_path / "retain-model")
    examples = ctx.data["forget"][:3]
    loss, _ = method.loss(ctx.model, {"forget": ctx.collate(examples)})

    logp = partial(_answer_logp, ctx.collate)
    per_answer = [-(2 / 0.1) * math.log(1 / (1 + math.exp(0.1 * (logp(ctx.model, ex) - logp(other, ex)))))
                  for ex in examples]
    assert loss.item() == pytest.approx(sum(per_answer) / len(per_answer), rel=1e-4)
    assert loss.item() != pytest.approx(20 * math.log(2), rel=1e-3)  # θ_full would give (2/β)·log 2


@pytest.fixture
def registered():
    """The names a test registers, taken out of the registry again after it."""
    from viker.methods import METHODS, _registered

    _registered()
    before = dict(METHODS)
    yield
    METHODS.clear()
    METHODS.update(before)


def _documented_method(monkeypatch) -> dict:
    """Import the example of docs/design.md's "Adding a method" as a module of a user's."""
    import sys
    import types

    page = (Path(__file__).parents[1] / "docs" / "design.md").read_text()
    section = page.split("## Adding a method", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    module = types.ModuleType("users_methods")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "design.md", "exec"), module.__dict__)
    return module.__dict__


def test_the_documented_way_to_add_a_method_trains_it_on_answer_tokens(registered, tiny_dir, bench_dir, tmp_path,
                                                                       monkeypatch):
    """A method added as docs/design.md shows, without touching the library, runs through run_unlearn: its
    settings recorded, its logs kept, its forget log-likelihood that of the answer tokens alone."""
    from viker.methods import title

    namespace = _documented_method(monkeypatch)
    assert get_method("ascent_descent") is namespace["AscentDescent"] and title("ascent_descent") == "Ascent+Descent"
    cfg = _config(tiny_dir, bench_dir, tmp_path / "run", "ascent_descent", retain_weight=1.0)
    model, processor, history = run_unlearn(cfg, progress=False)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["method"]
    assert recorded == {"name": "ascent_descent", "title": "Ascent+Descent", "forget_weight": 1.0, "retain_weight": 1.0}
    # a report made where the method is not registered (`viker report` on the command line) names it alike
    from viker.cli import main
    from viker.methods import METHODS
    from viker.report import _labels, read_run

    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(bench_dir), "--only", "forget:cloze",
                 "--max-new-tokens", "2", "--out", str(tmp_path / "run")]) == 0
    monkeypatch.delitem(METHODS, "ascent_descent")
    assert _labels([read_run(tmp_path / "run")]) == ["Ascent+Descent"]
    assert len(history) == 2 and {"forget_ll", "retain_nll"} <= set(history[0])
    # what it ascends is the answers' likelihood: the same loss with the prompt's labels masked by hand
    forget = unlearning_examples(bench_dir, "forget_10")[:2]
    batch = Collator(processor)(forget)
    method = namespace["AscentDescent"]()
    with torch.no_grad():
        ll = method.loss(model, {"forget": batch, "retain": batch})[1]["forget_ll"]
        logits = logits_of(model, batch)[:, :-1].float()
        targets = batch["labels"][:, 1:]
        per_token = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        mask = targets != -100
        by_hand = ((per_token * mask).sum(1) / mask.sum(1)).mean().item()
    assert ll == pytest.approx(by_hand, rel=1e-5)


def test_a_method_the_trainer_cannot_run_is_refused_in_words(registered, tiny_dir, bench_dir, tmp_path):
    from dataclasses import dataclass, make_dataclass

    from viker.errors import VikerError
    from viker.methods import register
    from viker.methods.viker import ViKeR
    from viker.unlearn import make_method

    class Plain:  # streams and loss, but no dataclass: its settings could not be recorded
        streams = ("forget",)

    with pytest.raises(VikerError, match="method 'plain': Plain must be a dataclass"):
        register("plain", "Plain")(Plain)
    with pytest.raises(VikerError, match=r"method 'lossless': Lossless has no loss\(self, model, batches\) method"):
        register("lossless", "Lossless")(make_dataclass("Lossless", [], namespace={"streams": ("forget",)}))
    loss = {"loss": lambda self, model, batches: (0.0, {})}
    with pytest.raises(VikerError, match="method '': a method's name is a word that --method can give"):
        register("", "Blank")(make_dataclass("Blank", [], namespace=loss))
    with pytest.raises(VikerError, match=r"method 'one': One\.streams is the string 'forget'; give a tuple of stream "
                                         r"names, \('forget',\)"):
        register("one", "One")(make_dataclass("One", [], namespace={"streams": ("forget"), **loss}))
    with pytest.raises(VikerError, match=r"method 'ga' is already viker\.methods\.ga\.GA; register Mine under"):
        register("ga", "GA")(make_dataclass("Mine", [], namespace=loss))
    register("odd_streams", "Odd")(make_dataclass("Odd", [], namespace={"streams": ("forget", "test"), **loss}))
    with pytest.raises(VikerError, match=r"method 'odd_streams': streams \('forget', 'test'\); an unlearning"):
        make_method("odd_streams", {}, "forget_10")

    @register("viker_retain_refs", "ViKeR (retain refs)")
    @dataclass
    class RetainRefs(ViKeR):  # a variant under a name of its own reads its references from the splits too
        refs: str = "retain"

    assert make_method("viker_retain_refs", {}, "forget_10").forget_split == "forget_10"

    def losing(returned):
        name = f"returns_{len(METHODS_MADE)}"
        METHODS_MADE.append(name)
        register(name, name)(make_dataclass(name.title(), [], namespace={
            "streams": ("forget",), "needs_reference": False,
            "loss": lambda self, model, batches: returned(log_likelihood(model, batches["forget"]))}))
        return _config(tiny_dir, bench_dir, tmp_path / name, name)

    METHODS_MADE = []
    with pytest.raises(VikerError, match=r"Returns_0\.loss returned a tensor of shape \(\): it must return a pair \("):
        run_unlearn(losing(lambda ll: ll), progress=False)
    with pytest.raises(VikerError, match="Returns_1.loss logged 'note' as str: each logged value must be a number"):
        run_unlearn(losing(lambda ll: (ll, {"note": "hi"})), progress=False)
    history = run_unlearn(losing(lambda ll: (ll, {"ll": ll.detach()})), progress=False)[2]  # a tensor: its number
    assert history[0]["ll"] == pytest.approx(history[0]["loss"])
    with pytest.raises(VikerError, match=r"Returns_3\.loss returned a tuple \(a tensor of shape \(\), a tensor of "
                                         r"shape \(\)\): it must return"):  # what it returned, each part
        run_unlearn(losing(lambda ll: (ll, ll)), progress=False)
    with pytest.raises(VikerError, match=r"Returns_4\.loss returned a float: it must return"):
        run_unlearn(losing(lambda ll: float(ll.detach())), progress=False)
    # a log under the trainer's own name would replace its figure (the loss the divergence check reads)
    with pytest.raises(VikerError, match=r"Returns_5\.loss logged 'loss', a name history.json gives the trainer's"):
        run_unlearn(losing(lambda ll: (ll, {"loss": 0.0})), progress=False)
    # a loss no weight reaches: torch's "element 0 of tensors does not require grad" from deep in autograd
    with pytest.raises(VikerError, match=r"Returns_6\.loss returned a loss that no trainable weight reaches"):
        run_unlearn(losing(lambda ll: (ll.detach(), {})), progress=False)
    # a logged tensor that carries a gradient is read as its number, without torch's warning about it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = run_unlearn(losing(lambda ll: (ll, {"ll": ll})), progress=False)[2]
    assert history[0]["ll"] == pytest.approx(history[0]["loss"])


def test_a_run_stopped_in_training_or_finished_gives_the_model_back_to_train_again(tiny_dir, bench_dir, tmp_path):
    """A model passed in to a run whose loss is refused at its first step kept the run's LoRA layers and came back
    frozen, so that the next run on it was refused (LoRA over LoRA); one finished and merged came back frozen
    and in eval mode, and a run from it was refused (no weight trainable)."""
    from dataclasses import dataclass

    from viker.methods import register

    model, processor = load_model(tiny_dir, device="cpu")
    model.train()
    keys = set(model.state_dict())

    def as_it_came(given):
        assert set(given.state_dict()) == keys and not hasattr(given, "peft_config")
        assert all(p.requires_grad for p in given.parameters()) and all(m.training for m in given.modules())

    @register("per_token_loss", "Per-token loss")
    @dataclass
    class PerToken:  # one value per token: refused when the first step reads it
        streams = ("forget",)
        needs_reference = False

        def loss(self, model, batches):
            return logits_of(model, batches["forget"]).mean(-1), {}

    with pytest.raises(VikerError, match=r"PerToken\.loss returned a tuple \(a tensor of shape \(4, "):
        run_unlearn(_config(tiny_dir, bench_dir, tmp_path / "refused", "per_token_loss"), progress=False,
                    model_and_processor=(model, processor))
    as_it_came(model)

    @register("odd_record", "Odd record")
    @dataclass
    class OddRecord(PerToken):  # a setup that records what JSON cannot hold, refused once the run's record is written
        def setup(self, ctx):
            ctx.info["scale"], ctx.info["per_token"] = torch.tensor(3.0), torch.ones(2)

    with pytest.raises(VikerError, match=r"config\.json: cannot be written: Object of type Tensor is not JSON"):
        run_unlearn(_config(tiny_dir, bench_dir, tmp_path / "odd", "odd_record"), progress=False,
                    model_and_processor=(model, processor))  # was json's TypeError, the run's LoRA left on the model
    as_it_came(model)
    merged = replace(_config(tiny_dir, bench_dir, tmp_path / "merged", "ga"),
                     lora=LoraSettings(r=4, alpha=8, dropout=0.0, merge=True))
    trained = run_unlearn(merged, progress=False, model_and_processor=(model, processor))[0]
    assert trained is model
    as_it_came(trained)
    full = replace(merged, tuning="full", lora=UnlearnConfig().lora, out=str(tmp_path / "full"))
    assert run_unlearn(full, progress=False, model_and_processor=(trained, processor))[0] is model  # from it again
    as_it_came(model)


def test_a_folder_a_method_setting_names_is_recorded_absolute_from_python_too(tiny_dir, bench_dir, tmp_path,
                                                                             monkeypatch):
    """A --refs folder typed relative, from Python as from the command line, is recorded absolute: a run resumed
    with it typed another way (./faces/, or from another working folder) is the same run."""
    shutil.copytree(bench_dir / "ref_scenes", tmp_path / "faces")
    monkeypatch.chdir(tmp_path)
    for out, typed in (("api", "faces"), ("api2", "./faces/")):
        run_unlearn(_config(tiny_dir, bench_dir, tmp_path / out, "viker", k=2, refs=typed), progress=False)
        config = json.loads((tmp_path / out / "config.json").read_text())
        assert config["method"]["refs"] == config["unlearn"]["method_args"]["refs"] == str(tmp_path / "faces")
    # a run started from Python before such folders were recorded absolute resumes from where it was typed
    from viker.unlearn import resolved_settings

    older = {"method": "viker", "forget": "forget_10", "method_args": {"k": 2, "refs": "faces"}}
    assert resolved_settings(older)["method_args"]["refs"] == str(tmp_path / "faces")


def test_a_viker_runs_bar_names_its_lambda(tiny_dir, bench_dir, tmp_path, capsys):
    """The demo's λ sweep showed a bar "unlearn (viker)" for each λ, alike."""
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "viker", "--lam", "0.3",
                 "--k", "2", "--max-steps", "1", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "unlearn (viker, λ=0.3)" in capsys.readouterr().err


def test_a_run_from_python_names_the_settings_it_cannot_do_without(tiny_dir, bench_dir, tmp_path, monkeypatch):
    """out="" (the configurations' default) wrote the run into the working folder."""
    from viker.errors import VikerError
    from viker.finetune import FinetuneConfig, run_finetune

    monkeypatch.chdir(tmp_path)
    for cfg, missing in ((replace(_config(tiny_dir, bench_dir, tmp_path, "ga"), out=""), "--out"),
                         (replace(_config(tiny_dir, bench_dir, tmp_path, "ga"), data=""), "--data"),
                         (FinetuneConfig(data=str(bench_dir)), "--out")):
        with pytest.raises(VikerError, match=f"^{missing} is required$"):
            (run_unlearn if hasattr(cfg, "method") else run_finetune)(cfg, progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(epochs="2"), "TrainConfig.epochs: '2' is a str, not float or int"),
    (lambda: replace(TrainConfig(), max_steps=1.5), "TrainConfig.max_steps: 1.5 is a float, not int or None"),
    (lambda: LoraSettings(r="8"), "LoraSettings.r: '8' is a str, not int"),
    (lambda: UnlearnConfig(train={"max_steps": 1}), "UnlearnConfig.train: {'max_steps': 1} is a dict, not TrainConfig "
                                                    "or None"),
    (lambda: UnlearnConfig(method_args=["lam"]), "UnlearnConfig.method_args: ['lam'] is a list, not dict"),
    (lambda: run_unlearn({"model": "m"}), "run_unlearn takes an UnlearnConfig, not a dict"),
    (lambda: __import__("viker.eval.run").eval.run.run_eval("m", "d", "o", {"forget": "forget_5"}),
     "run_eval takes an EvalConfig, not a dict"),
    (lambda: __import__("viker.eval.evaluate").eval.evaluate.EvalConfig(scope={"forget": "generation"}),
     "scope['forget']: a tuple of tasks, not one string: ('generation',)"),
    (lambda: __import__("viker.eval.evaluate").eval.evaluate.EvalConfig(scope={}),  # wrote an empty evaluation
     "scope {}: no set to evaluate; name sets (forget, test, retain, real), or give None for all"),
])
def test_settings_of_the_wrong_kind_from_python_are_one_line(make, message):
    """From Python, a dict for a TrainConfig or a string for a number failed deep inside, at the first attribute read
    or comparison; a string of tasks was read letter by letter."""
    with pytest.raises(VikerError) as refused:
        make()
    assert str(refused.value) == message
    assert isinstance(LoraSettings(target_modules="q_proj|v_proj").target_modules, str)  # peft's regex form
    assert LoraSettings(target_modules=("q_proj",), alpha=32.0).alpha == 32  # as peft takes them


def test_a_refused_run_leaves_the_model_it_was_given_as_it_came(tiny_dir, bench_dir, tmp_path):
    """From Python, a model passed in is trained in place; a run refused before training (an answer over
    --max-length, CAGUL's layer the model lacks) added LoRA layers to it or froze it all the same, and the next run
    on it failed with a traceback from peft or the optimiser."""
    from viker.errors import VikerError

    model, processor = load_model(tiny_dir, device="cpu")
    model.train()  # as a notebook may hold it: CAGUL, refused, left it in eval mode
    keys = set(model.state_dict())
    flags = {name: p.requires_grad for name, p in model.named_parameters()}

    def as_it_came():
        assert set(model.state_dict()) == keys
        assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
        assert all(m.training for m in model.modules())

    with pytest.raises(VikerError, match="--max-length"):
        run_unlearn(replace(_config(tiny_dir, bench_dir, tmp_path / "long", "ga"), tuning="lora", max_length=8),
                    progress=False, model_and_processor=(model, processor))
    as_it_came()
    with pytest.raises(VikerError, match="fewer than k=500"):  # refused in the setup, after the adapters were added
        run_unlearn(replace(_config(tiny_dir, bench_dir, tmp_path / "k", "viker", k=500), tuning="lora"),
                    progress=False, model_and_processor=(model, processor))
    as_it_came()
    cagul = UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), method="cagul", out=str(tmp_path / "cagul"),
                          method_args={"layers": [99]}, train=STEPS, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(VikerError, match=r"CAGUL layers \[99\]: the language model has"):
        run_unlearn(cagul, progress=False, model_and_processor=(model, processor))
    as_it_came()
    run_unlearn(replace(cagul, method_args={"augment": 1, "disc_steps": 2, "k": 2}), progress=False,
                model_and_processor=(model, processor))  # CAGUL trains modules of its own, and none of the model
    as_it_came()
    # a model given with adapters of its own keeps them
    adapted = apply_lora(load_model(tiny_dir, device="cpu")[0], LoraSettings(r=2, alpha=4, dropout=0.0))
    own = {k for k in adapted.state_dict() if "lora_" in k}
    with pytest.raises(VikerError, match="fewer than k=500"):  # CAGUL trains none of its weights: it may have them
        run_unlearn(replace(cagul, method_args={"augment": 1, "disc_steps": 2, "k": 500}, out=str(tmp_path / "own-c")),
                    progress=False,
                    model_and_processor=(adapted, processor))
    assert own and {k for k in adapted.state_dict() if "lora_" in k} == own
    # full tuning of a model with adapters trained its adapters alone, recorded as full tuning
    with pytest.raises(VikerError, match="with tuning='full' only the adapters, not the model's weights, would train"):
        run_unlearn(replace(_config(tiny_dir, bench_dir, tmp_path / "own", "ga"), tuning="full",
                            lora=UnlearnConfig().lora), progress=False, model_and_processor=(adapted, processor))
    assert {k for k in adapted.state_dict() if "lora_" in k} == own and not (tmp_path / "own").exists()
    with pytest.raises(VikerError, match="^the model passed in has LoRA adapters of its own: merge them"):
        run_unlearn(_config(tiny_dir, bench_dir, tmp_path / "lora", "ga"),  # LoRA over LoRA: peft's traceback
                    progress=False, model_and_processor=(adapted, processor))
    assert {k for k in adapted.state_dict() if "lora_" in k} == own and not (tmp_path / "lora").exists()
    full = UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), method="ga", tuning="full", train=STEPS,
                         out=str(tmp_path / "full"))
    run_unlearn(full, progress=False, model_and_processor=(model, processor))
    model.requires_grad_(False)  # frozen by the caller: one line, not the optimiser's traceback
    with pytest.raises(VikerError, match="no weight of the model is trainable"):
        run_unlearn(replace(full, out=str(tmp_path / "frozen")), progress=False, model_and_processor=(model, processor))


def test_a_model_passed_in_is_checked_before_a_run_uses_it(tiny, tiny_dir, bench_dir, tmp_path):
    """From Python: a bare tokenizer as the processor asked every image question as text and trained on that; a
    dtype or device the model passed in is not in was ignored and recorded as the run's; a model alone, or the
    pair reversed, failed with a TypeError or AttributeError from inside the run. (run_eval's config may be left
    out.)"""
    from viker.eval.run import run_eval
    from viker.keytokens import run_keytokens

    model, processor = tiny
    ga = _config(tiny_dir, bench_dir, tmp_path / "ga", "ga")
    refusals = [((model, processor.tokenizer), {}, r"the pair's second is the model's processor \(AutoProcessor\), "
                 r"which reads images; a \w+ does not"),
                (model, {}, r"give a \(model, processor\) pair, not LlavaForConditionalGeneration"),
                ((processor, model), {}, r"the pair's first is the model, a torch module, not LlavaProcessor"),
                ((model, processor), {"dtype": "bfloat16"}, r"^dtype='bfloat16': the model passed in holds float32 "
                 r"weights, and is used as it is; convert it \(model\.to\(torch\.bfloat16\)\) or leave")]
    for given, asked, message in refusals:
        with pytest.raises(VikerError, match=message):
            run_unlearn(replace(ga, **asked), progress=False, model_and_processor=given)
        with pytest.raises(VikerError, match=message):
            run_eval("tiny", str(bench_dir), str(tmp_path / "eval"), progress=False, model_and_processor=given,
                     **asked)  # no config: viker eval's defaults, as from the command line
        with pytest.raises(VikerError, match=message):
            run_keytokens("tiny", str(bench_dir), "forget_10", str(tmp_path / "k.html"), progress=False,
                          model_and_processor=given, cache_dir=tmp_path / "cache", **asked)
    assert not any(tmp_path.iterdir())  # each refused before anything was written
    assert next(model.parameters()).dtype == torch.float32  # and the model left as it came


def test_a_tiny_model_passed_in_is_trained_as_tiny_whatever_its_name(bench_dir, tmp_path):
    """A model built in a notebook and passed in under a name that is no folder: the preset (train=None) was
    refused with 'no such model folder', and train_on='auto' picked a real checkpoint's ft_Data, where a tiny
    model learned from every split."""
    from dataclasses import asdict

    from viker.model.tiny import TinyConfig, build_tiny
    from viker.presets import unlearn_preset

    model, processor = build_tiny(bench_dir, TinyConfig(hidden=32, intermediate=64, layers=1, vision_hidden=16))
    cfg = UnlearnConfig(model="my-tiny", data=str(bench_dir), method="ga", out=str(tmp_path / "run"),
                        cache_dir=str(tmp_path / "cache"))
    run_unlearn(cfg, progress=False, model_and_processor=(model, processor))
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["unlearn"]
    assert recorded["train_on"] == "all" and recorded["train"] == asdict(unlearn_preset("ga", True))
    assert recorded["train"] != asdict(unlearn_preset("ga", False))


def test_a_method_setting_of_the_wrong_kind_from_python_is_named_in_one_line():
    """method_args={"beta": "0.1"} failed with a TypeError from the method's own range check ('>' between str and
    int); {"lam": "10"} named neither the setting nor the kind wanted."""
    from viker.unlearn import make_method

    with pytest.raises(VikerError, match=r"^method 'npo': NPO\.beta: '0\.1' is a str, not float or int$"):
        make_method("npo", {"beta": "0.1"}, "forget_10")
    with pytest.raises(VikerError, match=r"^method 'viker': ViKeR\.lam: '10' is a str, not float or int$"):
        make_method("viker", {"lam": "10"}, "forget_10")
    assert make_method("viker", {"lam": 10}, "forget_10").lam == 10  # an int where a float is asked is a number
