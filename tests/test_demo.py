"""`viker demo` end to end on a very small benchmark: every output it promises, and the diagnostics that
explain how ViKeR and GA compare."""

import json
from dataclasses import replace

import pytest

from viker.data.synth import SynthConfig
from viker.data.synth.people import UNKNOWN_ANSWER, name_in_answer
from viker.demo import METHODS, DemoConfig, longer_budget_note, naming_rates, run_demo
from viker.eval.evaluate import EvalConfig
from viker.train import TrainConfig

KEYS = ("forget_acc", "test_acc", "retain_acc", "real_acc", "forget_rougeL", "test_rougeL", "retain_rougeL",
        "retain_bleu", "real_rougeL", "real_bleu", "forget_cloze", "coherence")


def micro(out) -> DemoConfig:
    step = TrainConfig(epochs=1, batch_size=16, lr=1e-3, scheduler="constant")
    return DemoConfig(
        out=str(out), seed=3,
        synth=SynthConfig(profiles=20, celebrities=3, ref_per_pool=6, strangers=3, test_images=1, image_size=32),
        finetune=replace(step, epochs=2), unlearn=step, cagul_train=step, lam_sweep=(0.3,),
        viker={"lam": 0.7, "k": 2, "refs": "people"}, cagul={"k": 2, "refs": "people"},
        eval=EvalConfig(retain_limit=2, max_new_tokens=12, batch_size=32), longer_budget=2.0)


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
    assert sorted(s["lam"] for s in results["lam_sweep"]) == [0.3, 0.7]
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "keytokens.html").read_text().startswith("<!doctype html>")
    report = (out / "report.md").read_text()
    for method in ("GA", "ViKeR", "CAGUL"):
        assert method in report
    assert "## How ViKeR and GA compare here, and why" in report and "## Settings" in report


def test_demo_diagnostics_are_the_runs_they_describe(demo):
    out, results = demo
    diag = results["diagnostics"]
    assert diag["epochs"] == 1 and diag["longer_epochs"] == 2
    assert set(diag["runs"]) == {"viker_no_ga", "ga_2ep", "viker_2ep"}
    no_ga = json.loads((out / "runs" / "viker_no_ga" / "config.json").read_text())
    assert no_ga["method"]["ablation"] == "no_ga"
    longer = json.loads((out / "runs" / "ga_2ep" / "config.json").read_text())
    assert longer["unlearn"]["train"]["epochs"] == 2
    for key, d in diag["runs"].items():
        assert d["metrics"] == json.loads((out / "runs" / key / "metrics.json").read_text())
    assert set(diag["names"]) == {"vanilla", "ga", "viker", *diag["runs"]}
    for rates in diag["names"].values():
        assert all(v is None or 0.0 <= v <= 100.0 for v in rates.values())


def test_second_demo_reuses_the_vanilla_model(demo, capsys):
    out, _ = demo
    cfg = replace(micro(out), longer_budget=None)
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


def test_longer_budget_note_says_which_method_fell_apart():
    whole = {"coherence": 99.0, "retain_rougeL": 80.0}
    broken = {"coherence": 2.0, "retain_rougeL": 0.0}
    assert "GA's answers fall apart first" in longer_budget_note(broken, whole, 7, 0.7)
    viker_first = longer_budget_note(whole, broken, 7, 0.7)
    assert "ViKeR's answers fall apart first" in viker_first and "1 − λ = 0.3" in viker_first
    assert "neither method stays ahead" in longer_budget_note(broken, broken, 7, 0.7)
