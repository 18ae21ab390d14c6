"""`viker demo` end to end on a very small benchmark: every output it promises, and the diagnostics that
explain how ViKeR and GA compare."""

import json
import math
from dataclasses import replace

import pytest

from viker.data.synth import SynthConfig
from viker.data.synth.people import UNKNOWN_ANSWER, name_in_answer
from viker.demo import (
    METHODS,
    DemoConfig,
    chance_p_value,
    naming_rates,
    resting_point_note,
    run_demo,
    shorter_budget_note,
    viker_vs_ga,
)
from viker.eval.evaluate import EvalConfig
from viker.train import TrainConfig

KEYS = ("forget_acc", "test_acc", "retain_acc", "real_acc", "forget_rougeL", "test_rougeL", "retain_rougeL",
        "retain_bleu", "real_rougeL", "real_bleu", "forget_cloze", "coherence")


def micro(out) -> DemoConfig:
    step = TrainConfig(epochs=1, batch_size=16, lr=1e-3, scheduler="constant")
    return DemoConfig(
        out=str(out), seed=3,
        synth=SynthConfig(profiles=20, celebrities=3, ref_per_pool=6, strangers=3, test_images=1, image_size=32),
        finetune=replace(step, epochs=2), unlearn=replace(step, epochs=2), cagul_train=step, lam_sweep=(0.3,),
        viker={"lam": 2.0, "k": 2, "refs": "people"}, cagul={"k": 2, "refs": "people"},
        eval=EvalConfig(retain_limit=2, max_new_tokens=12, batch_size=32), shorter_budget=0.5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(micro(out), progress=False)


def test_demo_writes_every_promised_output(demo):
    out, results = demo
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert [r["method"] for r in results["runs"]] == ["vanilla", *METHODS]
    for r in results["runs"]:
        assert r["forget_split"] == "forget_10"
        assert all(0.0 <= r["metrics"][k] <= 100.0 for k in KEYS), r["method"]
    assert sorted(s["lam"] for s in results["lam_sweep"]) == [0.3, 2.0]
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "keytokens.html").read_text().startswith("<!doctype html>")
    report = (out / "report.md").read_text()
    for method in ("GA", "ViKeR", "CAGUL"):
        assert method in report
    assert "## How ViKeR and GA compare here, and why" in report and "## Settings" in report


def test_demo_diagnostics_are_the_runs_they_describe(demo):
    out, results = demo
    diag = results["diagnostics"]
    assert diag["epochs"] == 2 and diag["shorter_epochs"] == 1
    assert set(diag["runs"]) == {"viker_no_ga", "ga_1ep", "viker_1ep"}
    no_ga = json.loads((out / "runs" / "viker_no_ga" / "config.json").read_text())
    assert no_ga["method"]["ablation"] == "no_ga"
    shorter = json.loads((out / "runs" / "ga_1ep" / "config.json").read_text())
    assert shorter["unlearn"]["train"]["epochs"] == 1
    for key, d in diag["runs"].items():
        assert d["metrics"] == json.loads((out / "runs" / key / "metrics.json").read_text())
    assert set(diag["names"]) == {"vanilla", "ga", "viker", "viker_lam0.3", *diag["runs"]}
    for rates in diag["names"].values():
        assert all(v is None or 0.0 <= v <= 100.0 for v in rates.values())
    # the floor of a model that knows no face: below a perfect score, above nothing
    assert 0.0 < diag["no_face_retain_rougeL"] < 100.0
    report = " ".join((out / "report.md").read_text().split())  # the report wraps its lines
    assert "λ = 0.3, below 1, no token has a resting point" in report
    assert f"scores {diag['no_face_retain_rougeL']:.1f} Retain ROUGE-L" in report


def test_second_demo_reuses_the_vanilla_model(demo, capsys):
    out, _ = demo
    cfg = replace(micro(out), shorter_budget=None)
    before = (out / "vanilla" / "model" / "model.safetensors").stat().st_mtime_ns
    results = run_demo(cfg, progress=False)
    assert "reusing the vanilla model" in capsys.readouterr().out
    assert (out / "vanilla" / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert results["diagnostics"] is None
    assert "How ViKeR and GA compare" not in (out / "report.md").read_text()


def test_naming_rate_counts_answers_that_give_the_pictured_persons_name(tmp_path):
    records = [
        {"set": "forget", "task": "generation", "profile": "0001", "image": True,
         "answer": "This person is Brailen Tousk, born in Oslo."},
        {"set": "forget", "task": "generation", "profile": "0001", "image": True, "answer": UNKNOWN_ANSWER},
        {"set": "forget", "task": "generation", "profile": "0001", "image": False,  # asked by name: not counted
         "answer": "Brailen Tousk was born in Oslo."},
        {"set": "retain", "task": "generation", "profile": "0002", "image": True,
         "answer": "This person is Brailen Tousk, who works as a pilot."},  # someone else's name
        {"set": "retain", "task": "cloze", "profile": "0002", "image": True, "answer": "Mira Dol"},
    ]
    path = tmp_path / "generations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    names = {"0001": "Brailen Tousk", "0002": "Mira Dol"}
    assert naming_rates(path, names) == {"forget": 50.0, "retain": 0.0}
    assert naming_rates(path, {"0001": "Brailen Tousk"}) == {"forget": 50.0, "retain": None}


def test_name_in_answer_reads_the_benchmark_name_answer():
    assert name_in_answer("This person is Brailen Tousk.") == "Brailen Tousk"
    assert name_in_answer(UNKNOWN_ANSWER) is None
    assert name_in_answer("Brailen Tousk was born in Oslo.") is None


def test_budget_notes_say_which_method_fell_apart():
    whole = {"coherence": 99.0, "retain_rougeL": 80.0, "forget_acc": 30.0}
    broken = {"coherence": 2.0, "retain_rougeL": 0.0, "forget_acc": 30.0}
    note = resting_point_note(broken, whole, [], 8, 10.0)
    assert "above 1/λ = 10%" in note and "GA's answers have fallen apart and ViKeR's have not" in note
    assert "ViKeR's answers have fallen apart and GA's have not" in resting_point_note(whole, broken, [], 8, 10.0)
    assert "neither method's answers have fallen apart" in resting_point_note(whole, whole, [], 8, 10.0)
    low = resting_point_note(broken, whole, [{"lam": 0.7, "metrics": broken}], 8, 10.0)
    assert "With λ = 0.7, below 1, no token has a resting point and its answers have fallen apart too" in low
    assert "no answer token has a resting point" in resting_point_note(broken, whole, [], 8, 0.7)
    # shorter budget: ViKeR forgot more and kept less, which the note explains; a held claim needs no excuse
    ahead = {"coherence": 99.0, "retain_rougeL": 90.0, "forget_acc": 40.0}
    assert "the same currency, faces" in shorter_budget_note(ahead, whole, 5)
    assert "holds here" in shorter_budget_note(broken, whole, 5)
    assert "the same currency" not in shorter_budget_note(broken, whole, 5)


def test_chance_p_value_is_the_binomial_tail():
    hand = sum(math.comb(50, j) * 0.25**j * 0.75 ** (50 - j) for j in range(16, 51))  # 16 or more of 50 by luck
    assert chance_p_value(32.0, 50) == pytest.approx(hand, rel=1e-9)
    assert chance_p_value(40.0, 50) < 0.05 < chance_p_value(32.0, 50)


def test_claim_wording_reads_a_forget_acc_failure_against_chance():
    ga = {"forget_acc": 24.0, "retain_rougeL": 0.0, "coherence": 0.0}
    at_chance = viker_vs_ga({"forget_acc": 32.0, "retain_rougeL": 73.7, "coherence": 99.2}, ga, questions=50)
    assert "does not hold" in at_chance and "16 of 50 right" in at_chance
    assert "indistinguishable from chance" in at_chance
    above = viker_vs_ga({"forget_acc": 40.0, "retain_rougeL": 73.7, "coherence": 99.2}, ga, questions=50)
    assert "is above chance" in above
    holds = viker_vs_ga({"forget_acc": 20.0, "retain_rougeL": 73.7, "coherence": 99.2}, ga, questions=50)
    assert "holds here." in holds and "binomial" not in holds
    assert "binomial" not in viker_vs_ga({"forget_acc": 32.0, "retain_rougeL": 73.7, "coherence": 99.2}, ga)
