"""CAGUL: the base model never changes, unflagged images pass through untouched, the least attended
tokens are the ones rewritten, and a run folder loads back as a model that answers questions."""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import pytest
import torch
from PIL import Image

from viker.cli import main
from viker.collate import Collator, model_inputs
from viker.data.examples import unlearning_examples
from viker.errors import VikerError
from viker.eval.evaluate import answer_logprobs
from viker.eval.generate import generate
from viker.methods.base import FrozenReference
from viker.methods.cagul import CAGUL, augment, precision_recall
from viker.model import load_model, resolve_model_path
from viker.model.cagul import CagulConfig, CagulModel, per_image
from viker.train import TrainConfig
from viker.unlearn import UnlearnConfig, run_unlearn


def _examples(bench_dir, n=4):
    forget = unlearning_examples(bench_dir, "forget_10")
    return [ex for ex in forget if ex.image is not None][:n] + [ex for ex in forget if ex.image is None][:1]


@pytest.fixture(scope="module")
def cagul_run(tiny_dir, bench_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cagul")
    model, processor = load_model(tiny_dir, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), forget="forget_10", method="cagul",
                        method_args={"k": 2, "augment": 2, "disc_steps": 50}, out=str(out),
                        train=TrainConfig(max_steps=3, batch_size=4, lr=1e-2, log_every=1),
                        cache_dir=str(out / "cache"))
    trained, _, history = run_unlearn(cfg, progress=False, model_and_processor=(model, processor))
    return out, model, before, trained, history


def test_base_weights_are_bit_for_bit_unchanged(cagul_run):
    out, model, before, trained, history = cagul_run
    assert history
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "CAGUL changed a weight of the base model"
    assert isinstance(trained, CagulModel)
    assert trained.encoder.up.weight.abs().sum() > 0, "the encoder did not train"
    assert not (out / "model").exists(), "a CAGUL run must not save a copy of the model"
    # its record, and the report's settings column, hold what its forget loss read: k, not NPO's β
    recorded = json.loads((out / "config.json").read_text())["method"]
    assert recorded["forget_loss"] == "reference" and recorded["k"] == 2 and "beta" not in recorded
    # --layers and --heads left unset are recorded as what they became: the middle layer, every head
    text = model.config.get_text_config()
    assert recorded["layers"] is None and json.loads((out / "config.json").read_text())["setup"]["cagul_attention"] == {
        "layers": [text.num_hidden_layers // 2], "heads": list(range(text.num_attention_heads))}
    saved = json.loads((out / "cagul" / "config.json").read_text())
    assert saved["cagul"]["rewrite"] > 0 and "cagul_discriminator" in saved["info"]
    report = saved["info"]["cagul_discriminator"]
    assert {"split_images", "test_set_images"} <= report.keys()


def test_run_folder_loads_as_a_model_that_answers(cagul_run, tiny_dir, bench_dir):
    out, *_ = cagul_run
    model, processor = load_model(out, device="cpu")
    assert isinstance(model, CagulModel)
    with pytest.raises(VikerError, match=rf"the modules of a CAGUL run, not a model; give the run folder, {out},"):
        load_model(out / "cagul", device="cpu")  # its config.json is the modules' own
    named = Path(shutil.copytree(out, out.parent / "runs" / "cagul", ignore=shutil.ignore_patterns("cache")))
    assert isinstance(load_model(named, device="cpu")[0], CagulModel)  # a run folder named cagul is a run (the demo's)
    assert resolve_model_path(named) == str(named.resolve())  # as the folders a run reads name it (NPO's reference)
    base, _ = load_model(tiny_dir, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.base.state_dict().values(), base.state_dict().values()))
    trained = cagul_run[3]
    for part in ("encoder", "discriminator"):  # both modules come back as trained
        mine, theirs = getattr(model, part).state_dict(), getattr(trained, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), part
    # and the loaded model answers as the trained one: same flags, same rewritten tokens, same replies
    batch = model_inputs(Collator(processor)(_examples(bench_dir)))
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, trained.eval()(**batch).logits)
    answers = generate(model, processor, _examples(bench_dir), max_new_tokens=5, progress=False)
    assert answers == generate(trained, processor, _examples(bench_dir), max_new_tokens=5, progress=False)


def _wrapped(tiny, **cfg):
    base, processor = tiny
    model = CagulModel(base, CagulConfig(**cfg))
    return model, processor


def test_unflagged_images_pass_through_untouched_and_flagged_ones_change(tiny, bench_dir):
    model, processor = _wrapped(tiny)
    torch.nn.init.normal_(model.encoder.up.weight, std=0.5)  # an encoder that changes what it rewrites
    batch = model_inputs(Collator(processor)(_examples(bench_dir)))
    with torch.no_grad():
        bare = model.base(**batch).logits
        torch.nn.init.constant_(model.discriminator.net[-1].bias, -1e4)  # flags nothing
        auto = model(**batch).logits
        forced = model(**batch, cagul="force").logits
    assert torch.equal(auto, bare)
    assert not torch.allclose(forced[:4], bare[:4]), "rewritten images did not change the answers"
    assert torch.equal(forced[4], bare[4]), "a text-only row must never change"
    # called as the wrapped model may be, without a mask (every token attended): the same rewrite
    one = model_inputs(Collator(processor)(_examples(bench_dir)[:1]))
    assert bool(one["attention_mask"].all())
    with torch.no_grad():
        unmasked = model(**{k: v for k, v in one.items() if k != "attention_mask"}, cagul="force").logits
        torch.testing.assert_close(unmasked, model(**one, cagul="force").logits)


def test_a_fresh_encoder_is_the_identity(tiny, bench_dir):
    model, processor = _wrapped(tiny)
    batch = model_inputs(Collator(processor)(_examples(bench_dir)))
    with torch.no_grad():
        assert torch.allclose(model(**batch, cagul="force").logits, model.base(**batch).logits, atol=1e-5)


def _two_images_ranked(tiny, bench_dir, rewrite: float):
    """A CAGUL model whose encoder changes what it rewrites, two images' visual tokens and their importance."""
    model, processor = _wrapped(tiny, rewrite=rewrite)
    torch.nn.init.normal_(model.encoder.up.weight, std=0.5)
    batch = model_inputs(Collator(processor)(_examples(bench_dir, 2)))
    output = model.original_features(batch)
    return model, per_image(output), model.importance(batch, output, [0, 1])


def test_only_the_least_attended_tokens_are_rewritten(tiny, bench_dir):
    model, feats, scores = _two_images_ranked(tiny, bench_dir, rewrite=0.25)
    assert [s.shape[0] for s in scores] == [f.shape[0] for f in feats]
    assert all(torch.isfinite(s).all() and (s > 0).all() for s in scores)
    new = model.rewrite(feats, [1], [scores[1]])
    assert torch.equal(new[0], feats[0]), "an image that was not chosen changed"
    changed = (new[1] != feats[1]).any(dim=-1)
    lowest = scores[1].argsort()[: model.cfg.count(feats[1].shape[0])]
    assert changed.nonzero().squeeze(-1).sort().values.tolist() == lowest.sort().values.tolist()


def test_a_rewrite_count_beyond_an_images_tokens_rewrites_them_all_and_says_so_once(tiny, bench_dir, capsys):
    model, feats, scores = _two_images_ranked(tiny, bench_dir, rewrite=10_000)
    for _ in range(2):
        new = model.rewrite(feats, [0, 1], scores)
        assert all((n != f).any(dim=-1).all() for n, f in zip(new, feats))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: --rewrite 10000: an image here has {feats[0].shape[0]} visual tokens, and every "
                        "one of them is rewritten"]


def test_importance_of_an_image_does_not_depend_on_the_rest_of_the_batch(tiny, bench_dir):
    model, processor = _wrapped(tiny)
    examples = _examples(bench_dir, 3)
    collate = Collator(processor, answers=False)
    together = model_inputs(collate(examples))
    alone = model_inputs(collate(examples[1:2]))
    both = model.importance(together, model.original_features(together), [1])[0]
    single = model.importance(alone, model.original_features(alone), [0])[0]
    assert torch.allclose(both, single, atol=1e-5)


def test_the_answer_scored_never_decides_which_tokens_are_rewritten(tiny, bench_dir):
    """Teacher-forced scoring (multiple choice by likelihood, CLEAR's probabilities) hands CAGUL the labels:
    every answer to a question is scored with the visual tokens the question alone picks for rewriting."""
    model, processor = _wrapped(tiny, rewrite=0.5)
    model.mode = "force"
    picked, rewrite = [], model.rewrite

    def spy(feats, which, scores):
        picked.extend(frozenset(s.argsort()[: model.cfg.count(s.shape[0])].tolist()) for s in scores)
        return rewrite(feats, which, scores)

    model.rewrite = spy
    ex = _examples(bench_dir, 1)[0]
    answers = [ex.answer, "Lima.", "A nurse who works at the hospital near the old harbour, six days a week."]
    scores = answer_logprobs(model, processor, [replace(ex, answer=a) for a in answers], batch_size=3)
    assert len(scores) == 3 and len(picked) == 3
    prompt = model_inputs(Collator(processor, answers=False)([ex]))
    alone = model.importance(prompt, model.original_features(prompt), [0])[0]
    assert set(picked) == {frozenset(alone.argsort()[: model.cfg.count(alone.shape[0])].tolist())}
    # a CAGUL run as NPO's --reference-model: its frozen reference pass scores the answers the same way
    picked.clear()
    batch = Collator(processor)([replace(ex, answer=a) for a in answers])
    FrozenReference(model.base, separate=model).logits(batch)
    assert len(picked) == 3 and set(picked) == {frozenset(alone.argsort()[: model.cfg.count(alone.shape[0])].tolist())}


def test_augmented_image_keeps_its_size_and_is_reproducible(bench_dir):
    image = _examples(bench_dir, 1)[0].image
    a, b = augment(image, random.Random(3)), augment(image, random.Random(3))
    assert a == b and a != image
    assert Image.open(BytesIO(a)).size == Image.open(BytesIO(image)).size


def test_precision_recall_by_hand():
    flags = torch.tensor([True, True, False, True, False])
    truth = torch.tensor([True, False, False, True, True])
    got = precision_recall(flags, truth)
    assert got["precision"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert got["recall"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert got["false_positive_rate"] == 50.0
    # one flag, right; one of two forget images missed: precision 1/1, recall 1/2, no false positive
    got = precision_recall(torch.tensor([True, False, False]), torch.tensor([True, True, False]))
    assert (got["precision"], got["recall"], got["false_positive_rate"]) == (100.0, 50.0, 0.0)


def _detector(recall: float, false_positives: float) -> dict:
    return {"split_images": {"precision": 100.0, "recall": recall, "false_positive_rate": false_positives,
                             "positives": 10, "negatives": 90}}


def test_a_detector_that_misses_forget_people_or_flags_others_is_warned_of():
    """A detector that misses forget people leaves their answers as they were, and one that flags others changes
    theirs: both make the run's figures say less than they seem to; one that tells them apart says nothing."""
    from viker.methods.cagul import detector_warning

    assert detector_warning(_detector(100.0, 0.0)) is None and detector_warning(_detector(90.0, 5.0)) is None
    missed = detector_warning(_detector(80.0, 0.0))
    assert missed.startswith("CAGUL's face detector flags 80% of the 10 forget people's images and 0% of the 90 ")
    assert "31.6% of the 90 others'" in detector_warning(_detector(100.0, 31.6))


def test_a_run_whose_detector_is_poor_says_so(tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    import viker.methods.cagul

    monkeypatch.setattr(viker.methods.cagul, "discriminator_report", lambda *a: _detector(100.0, 31.6))
    cfg = UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), forget="forget_10", method="cagul",
                        method_args={"k": 2, "augment": 0, "disc_steps": 2}, out=str(tmp_path / "run"),
                        train=TrainConfig(max_steps=1, batch_size=4), cache_dir=str(tmp_path / "cache"))
    run_unlearn(cfg, progress=False)
    assert "warning: CAGUL's face detector flags 100% of the 10 forget people's images and 31.6% of the 90 " \
        "others'" in capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["setup"]["cagul_discriminator"]
    assert saved == _detector(100.0, 31.6)  # what it warns of is in the run's record


@pytest.mark.parametrize("argv, message", [
    (["--lam", "0.5"], "--lam applies to --method viker only"),
    (["--rewrite", "0"], "rewrite at least one visual token"),
    (["--rewrite", "2.5"], "--rewrite 2.5: a fraction below 1, or a whole number of tokens"),
    (["--threshold", "1.5"], "strictly between 0 and 1"),
    (["--layers", "99"], "the language model has"),
    (["--layers", "0,1,1"], "--layers 0,1,1: name at least one, and each once"),
    (["--heads", "0,0"], "--heads 0,0: name at least one, and each once"),
    (["--forget-loss", "npo", "--refs", "no-such-folder"], "--refs no-such-folder: no folder no-such-folder"),
])
def test_bad_cagul_options_are_one_line_errors(argv, message, tiny_dir, bench_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "cagul",
                 "--out", str(out), "--max-steps", "1", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    ({"disc_steps": 0}, "disc_steps 0: the discriminator trains at least one step"),
    ({"augment": -1}, "augment -1: augmented copies of each image: 0 or more"),
    ({"encoder_layers": 0}, "encoder_layers 0: must be at least 1"),
])
def test_the_discriminators_python_settings_are_refused_out_of_range(args, message):
    """From Python: disc_steps=0 failed after the pool's features were computed, on a name never bound, and a
    negative augment paired images with other images' labels."""
    from viker.methods import get_method

    with pytest.raises(VikerError, match=message):
        get_method("cagul")(**args)


def test_a_pool_too_small_for_k_is_refused_before_the_discriminator_trains(tiny_dir, bench_dir, tmp_path, capsys,
                                                                            monkeypatch):
    """The pool and --k are known before any model pass: it was refused only after the discriminator's training
    (minutes on a 7B model)."""
    monkeypatch.setattr(CAGUL, "train_discriminator", lambda *a, **k: pytest.fail("the discriminator trained"))
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "cagul", "--k", "500",
                 "--max-steps", "1", "--out", str(tmp_path / "run")]) == 2
    assert "fewer than k=500" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_cagul_run_is_no_model_to_train_from(cagul_run, bench_dir, tmp_path, capsys):
    run = cagul_run[0]
    for command in (["unlearn", "--method", "ga"], ["finetune"]):
        code = main([*command, "--model", str(run), "--data", str(bench_dir), "--out", str(tmp_path / "again"),
                     "--max-steps", "1"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and f"--model {run}: a CAGUL run" in err
        assert not (tmp_path / "again").exists()


def test_the_discriminator_report_needs_no_retain_set(tiny, bench_dir, tmp_path):
    """A benchmark folder without Retain_Set trains CAGUL's discriminator on the retain split's people and
    the strangers; its report reads the same people, instead of failing after the training."""
    import shutil

    from viker.data.loader import load_profiles
    from viker.methods.cagul import discriminator_report

    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root, ignore=shutil.ignore_patterns("Retain_Set"))
    model, processor = _wrapped(tiny)
    with torch.no_grad():
        report = discriminator_report(model, processor, root, "forget_10", "retain_90")
    counts = report["split_images"]
    assert counts["positives"] == len(load_profiles(root, "forget_10"))
    assert counts["negatives"] == len(load_profiles(root, "retain_90"))


def test_a_checkpoint_keeps_the_discriminator_a_resumed_run_goes_on_with(tiny, tmp_path):
    """The discriminator is trained before the loop and frozen in it; one trained again need not be the same on a
    GPU. The checkpoint keeps it, and loading the checkpoint puts it back over any other."""
    from safetensors.torch import load_file

    from viker.train import CHECKPOINT, load_checkpoint, save_checkpoint

    def run_model():
        model, _ = _wrapped(tiny)
        model.discriminator.requires_grad_(False)  # as after its training
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model, optimizer, scheduler = run_model()
    torch.nn.init.normal_(model.discriminator.net[-1].weight)
    save_checkpoint(tmp_path, model, optimizer, scheduler, 3, [])
    resumed, optimizer, scheduler = run_model()  # its discriminator trained again: other weights
    assert not torch.equal(resumed.discriminator.net[-1].weight, model.discriminator.net[-1].weight)
    load_checkpoint(tmp_path, resumed, optimizer, scheduler)
    for (name, a), b in zip(model.discriminator.state_dict().items(), resumed.discriminator.state_dict().values()):
        assert torch.equal(a, b), name
    saved = load_file(str(tmp_path / CHECKPOINT / "trainable.safetensors"))
    assert not any(name.startswith("base.") for name in saved)  # the frozen model stays out


def test_a_resumed_run_goes_on_with_its_discriminator_and_records_that_ones_figures(tiny_dir, bench_dir, tmp_path,
                                                                                      monkeypatch):
    """Stopped after a checkpoint, a run resumes with the discriminator the checkpoint kept, instead of training one
    again (which on a GPU need not be the same), and its config records that discriminator's figures."""
    from safetensors.torch import load_file

    import viker.train
    from viker.model.cagul import MODULES_FILE
    from viker.train import CHECKPOINT

    saves = viker.train.save_checkpoint

    def save_then_stop(*args, **kwargs):
        saves(*args, **kwargs)
        raise KeyboardInterrupt

    run = tmp_path / "run"
    argv = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "cagul", "--k", "2",
            "--max-steps", "4", "--checkpoint-every", "2", "--batch-size", "4", "--cache-dir", str(tmp_path / "c"),
            "--out", str(run)]
    monkeypatch.setattr(CAGUL, "disc_steps", 50)
    with monkeypatch.context() as patched:
        patched.setattr(viker.train, "save_checkpoint", save_then_stop)
        assert main(argv) == 130
    kept = {k: v for k, v in load_file(str(run / CHECKPOINT / "trainable.safetensors")).items()
            if k.startswith("discriminator.")}
    stopped = json.loads((run / "config.json").read_text())["setup"]
    # it records no tuning and no LoRA settings, which it never reads
    assert {"tuning", "lora"}.isdisjoint(json.loads((run / "config.json").read_text())["unlearn"])
    monkeypatch.setattr(CAGUL, "train_discriminator", lambda *a, **k: pytest.fail("trained again"))
    assert main([*argv, "--resume"]) == 0
    saved = load_file(str(run / "cagul" / MODULES_FILE))
    assert kept and all(torch.equal(saved[name], value) for name, value in kept.items())
    resumed = json.loads((run / "config.json").read_text())["setup"]
    assert resumed["cagul_discriminator"] == stopped["cagul_discriminator"]  # the same one, so the same figures
    assert resumed["cagul_discriminator_training"] == {**stopped["cagul_discriminator_training"],
                                                       "restored_from": str(run.resolve() / CHECKPOINT)}


def test_the_npo_forget_loss_needs_no_strangers_and_lowers_the_rewritten_answers_likelihood(tiny_dir, bench_dir,
                                                                                               tmp_path):
    """--forget-loss npo: NPO between the answers with the image rewritten and the frozen model's own, so no
    pool of strangers' images is needed (the reference loss refuses a folder without one). A fresh encoder
    is the identity, so the first loss is (2/β)·log 2; training then makes the forget answers less likely
    with the image rewritten than without."""
    import shutil

    from viker.errors import VikerError
    from viker.methods.losses import sequence_logprob

    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root, ignore=shutil.ignore_patterns("ref_people", "ref_pets", "Retain_Set"))

    def config(out, **args):
        return UnlearnConfig(model=str(tiny_dir), data=str(root), forget="forget_10", method="cagul",
                             method_args={"augment": 1, "disc_steps": 20, "retain_weight": 0.0, **args},
                             out=str(tmp_path / out), train=TrainConfig(max_steps=4, batch_size=4, lr=1e-2,
                                                                        log_every=1),
                             cache_dir=str(tmp_path / "cache"))

    with pytest.raises(VikerError, match="--refs people: .* has neither a ref_people pool nor a Retain_Set"):
        run_unlearn(config("reference", k=2), progress=False)
    with pytest.raises(VikerError, match="--refs pets: no folder"):  # a pool asked for by name is never passed over
        run_unlearn(config("npo-pets", forget_loss="npo", refs="pets"), progress=False)
    model, _, history = run_unlearn(config("npo", forget_loss="npo", beta=0.1), progress=False)
    assert history[0]["loss"] == pytest.approx(20 * math.log(2), rel=1e-4)
    saved = json.loads((tmp_path / "npo" / "cagul" / "config.json").read_text())
    assert "reference_pool" not in saved["info"] and saved["info"]["cagul_discriminator_training"]["positive_images"]
    _, processor = load_model(tiny_dir, device="cpu")
    batch = Collator(processor)([ex for ex in unlearning_examples(root, "forget_10") if ex.image is not None][:6])
    with torch.no_grad():
        forced = sequence_logprob(model(**model_inputs(batch), cagul="force").logits, batch["labels"])
        off = sequence_logprob(model(**model_inputs(batch), cagul="off").logits, batch["labels"])
    assert forced.mean() < off.mean() - 1e-2 and (forced < off).sum() >= 5, (forced, off)


def test_cagul_on_a_tiny_model_takes_the_budget_of_modules_trained_from_scratch(tiny_dir, bench_dir, tmp_path,
                                                                                 monkeypatch):
    """CAGUL's modules start from nothing: unset, its epochs and rate are those the demo reports it with, while
    every method that adjusts the model keeps the tiny unlearning preset; a set option still wins."""
    import viker.unlearn
    from viker.demo import DemoConfig
    from viker.presets import TINY_UNLEARN

    taken = []
    monkeypatch.setattr(viker.unlearn, "run_unlearn", lambda cfg, **kw: taken.append(cfg.train) or (None, None, []))
    common = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(tmp_path / "run")]
    for argv in (["--method", "cagul"], ["--method", "ga"], ["--method", "cagul", "--lr", "1e-2"]):
        assert main([*common, *argv]) == 0
    cagul, ga, chosen = ((t.epochs, t.lr) for t in taken)
    assert cagul == (DemoConfig().cagul_train.epochs, DemoConfig().cagul_train.lr) == (15, 3e-3)
    assert ga == (TINY_UNLEARN.epochs, TINY_UNLEARN.lr) and chosen == (15, 1e-2)
    # --resume: a CAGUL run started on the common preset, before CAGUL had its own, goes on with it
    (tmp_path / "run").mkdir()
    for started, given in (((8, 2e-4), []), ((15, 3e-3), []), ((4, 2e-4), ["--epochs", "4"])):
        (tmp_path / "run" / "config.json").write_text(json.dumps(
            {"command": "unlearn", "unlearn": {"train": {"epochs": started[0], "lr": started[1]}}}))
        assert main([*common, "--method", "cagul", "--resume", *given]) == 0
        assert (taken[-1].epochs, taken[-1].lr) == started


def test_the_python_api_takes_the_preset_the_command_line_takes(tiny_dir, bench_dir, tmp_path, monkeypatch):
    """An UnlearnConfig left without a budget runs with the command line's, CAGUL's own on a tiny model included."""
    import viker.unlearn
    from viker.presets import TINY_CAGUL, TINY_UNLEARN

    class Started(Exception):
        pass

    taken = []

    def started(train, *args, **kwargs):
        taken.append(train)
        raise Started

    monkeypatch.setattr(viker.unlearn, "make_accelerator", started)
    for method, preset in (("cagul", TINY_CAGUL), ("ga", TINY_UNLEARN)):
        with pytest.raises(Started):
            run_unlearn(UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), method=method,
                                      out=str(tmp_path / method)), progress=False)
        assert taken[-1] == preset
        with pytest.raises(Started):
            main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", method, "--out",
                  str(tmp_path / method)])
        assert taken[-1] == preset


def test_the_inference_cost_is_not_the_cost_of_a_burst_of_other_work(monkeypatch):
    """Each mode is timed in turn, several times, and its fastest timing counts: a slow first pass of the bare
    model (another job on the machine) does not make CAGUL look faster than the model it sits in front of."""
    import time
    from types import SimpleNamespace

    import viker.eval.generate
    from viker.model.cagul import inference_cost

    clock = [0.0]
    passes = {"off": [5.0, 1.0, 1.0], "auto": [1.2, 1.2, 1.3]}  # seconds of each timed pass, in turn

    def answer(model, processor, examples, *args, **kwargs):
        clock[0] += passes[model.mode].pop(0) if len(examples) > 1 else 0.0  # the warm-up batch: one answer
        return [""] * len(examples)

    monkeypatch.setattr(viker.eval.generate, "generate", answer)
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    cost = inference_cost(SimpleNamespace(mode="auto"), None, ["q"] * 10, batch_size=1)
    assert cost["ratio"] == 1.2 and cost["bare_seconds_per_answer"] == 0.1


def test_the_reference_loss_is_the_kl_to_r_hat_on_the_rewritten_answers_plus_w_times_the_retain_kl(
        tiny_dir, bench_dir, tmp_path):
    """CAGUL's default loss: KL(R̂ ‖ Q_rewritten) over the forget answers' tokens, plus w × KL(P ‖ Q_rewritten)
    over the retain answers' (P: the model on the image as it is), each term's gradient reaching the encoder."""
    from viker.methods.base import UnlearnContext
    from viker.methods.losses import gather_answer_positions

    model, processor = load_model(tiny_dir, device="cpu")
    model.requires_grad_(False)  # as a run leaves it: CAGUL trains modules of its own
    collate = Collator(processor)
    data = {name: unlearning_examples(bench_dir, split) for name, split in (("forget", "forget_10"),
                                                                            ("retain", "retain_90"))}
    ctx = UnlearnContext(model, processor, collate, data, FrozenReference(model, separate=model), bench_dir,
                         tmp_path / "cache", progress=False)
    method = CAGUL(k=2, augment=1, disc_steps=5, retain_weight=0.25)
    method.setup(ctx)
    cagul = ctx.model
    torch.manual_seed(0)
    for weight in cagul.encoder.parameters():  # away from the identity a fresh encoder is
        torch.nn.init.normal_(weight, std=0.05)
    forget = collate(ctx.data["forget"][:3]) | {"index": torch.arange(3)}
    retain = collate(ctx.data["retain"][:3])

    def answer_log_q(batch, mode):
        logits = cagul(**model_inputs(batch), labels=batch["labels"], cagul=mode).logits
        return gather_answer_positions(logits, batch["labels"])[0].float().log_softmax(-1)

    r_hat = method.dists.rows([0, 1, 2]).float()
    forget_kl = (torch.xlogy(r_hat, r_hat) - r_hat * answer_log_q(forget, "force")).sum(-1).mean()
    with torch.no_grad():
        p = answer_log_q(retain, "off").exp()
    retain_kl = (torch.xlogy(p, p) - p * answer_log_q(retain, "force")).sum(-1).mean()
    loss, logs = method.loss(cagul, {"forget": forget, "retain": retain})
    assert logs["forget"] == pytest.approx(forget_kl.item(), rel=1e-4) and forget_kl.item() > 0
    assert logs["retain_kl"] == pytest.approx(retain_kl.item(), rel=1e-4) and retain_kl.item() > 1e-6
    assert loss.item() == pytest.approx(forget_kl.item() + 0.25 * retain_kl.item(), rel=1e-4)
    weights = list(cagul.encoder.parameters())
    got = torch.autograd.grad(loss, weights)
    want = torch.autograd.grad(forget_kl + 0.25 * retain_kl, weights, retain_graph=True)
    from_retain = torch.autograd.grad(retain_kl, weights)
    assert any(g.abs().max() > 0 for g in from_retain)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-7)
