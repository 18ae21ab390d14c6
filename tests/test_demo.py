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
    claim_holds,
    fast,
    forget_acc_not_higher,
    idkpo_note,
    idkpo_trace,
    mistaken_note,
    naming_rates,
    p_at_least,
    quick_look_note,
    resting_point_note,
    run_demo,
    shorter_budget_note,
    viker_vs_ga,
    write_report,
)
from viker.eval.evaluate import EvalConfig
from viker.model import LoraSettings
from viker.train import TrainConfig

KEYS = ("forget_acc", "test_acc", "retain_acc", "real_acc", "forget_rougeL", "test_rougeL", "retain_rougeL",
        "retain_bleu", "real_rougeL", "real_bleu", "forget_cloze", "coherence")


def micro(out) -> DemoConfig:
    step = TrainConfig(epochs=1, batch_size=16, lr=1e-3, scheduler="constant")
    return DemoConfig(
        out=str(out), seed=3,
        synth=SynthConfig(profiles=20, celebrities=3, ref_per_pool=6, strangers=3, test_images=1, image_size=32),
        finetune=replace(step, epochs=2), unlearn=replace(step, epochs=2, log_every=1), cagul_train=step,
        lam_sweep=(0.3,),
        viker={"lam": 2.0, "k": 2, "refs": "people"}, cagul={"k": 2, "refs": "people"},
        eval=EvalConfig(retain_limit=2, max_new_tokens=12, batch_size=32), shorter_budget=0.5,
        lora=LoraSettings(r=8, alpha=16, dropout=0.0, merge=None))  # not the default: CAGUL takes none of it


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(micro(out), progress=False)


def test_demo_writes_every_promised_output(demo):
    out, results = demo
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert [r["method"] for r in results["runs"]] == ["vanilla", *METHODS]
    settings = results["settings"]  # the seeds the runs used, as the report points readers here for them
    assert settings["synth"]["seed"] == settings["unlearn"]["seed"] == settings["cagul_train"]["seed"] == 3
    assert json.loads((out / "runs" / "ga" / "config.json").read_text())["unlearn"]["train"]["seed"] == 3
    assert json.loads((out / "runs" / "viker" / "config.json").read_text())["unlearn"]["lora"]["r"] == 8
    for r in results["runs"]:
        assert r["forget_split"] == "forget_10"
        assert all(0.0 <= r["metrics"][k] <= 100.0 for k in KEYS), r["method"]
    assert sorted(s["lam"] for s in results["lam_sweep"]) == [0.3, 2.0]
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "keytokens.html").read_text().startswith("<!doctype html>")
    report = (out / "report.md").read_text()
    # the paper-style table: a row per run, named as the papers name the methods, ViKeR with its settings
    rows = [line.split(" | ")[0] for line in report.splitlines() if line.startswith("| ") and " | " in line]
    assert rows[:10] == ["| Method", "| ---", "| vanilla", "| GA", "| GradDiff", "| KL-Min", "| NPO", "| IdkPO",
                         "| ViKeR (λ=2, k=2, people)", "| CAGUL (weights untouched)"]
    assert "## How ViKeR and GA compare here, and why" in report and "## Settings" in report
    assert "quick look" not in report  # a full demo makes the comparison
    assert f"({results['machine']['cpu_kernels']} kernels," in report  # the figures hold for this processor model
    # where the time went: every step, in the order the demo ran them, in results.json and in the report
    steps = results["step_seconds"]
    assert list(steps)[:2] == ["the embedded benchmark", "the vanilla model"] and len(steps) == 6
    assert results["reused_steps"] == {}
    assert all(seconds >= 0 for seconds in steps.values())
    assert all((f"| {text} | {seconds / 60:.1f} min |" if seconds >= 6 else f"| {text} | {seconds:.1f} s |") in report
               for text, seconds in steps.items())
    # IdkPO's training, read off its log, for the note on why it has not forgotten where it has not
    history = json.loads((out / "runs" / "idkpo" / "history.json").read_text())
    assert results["idkpo_training"]["steps"][1] == history[-1]["step"]
    assert results["idkpo_training"]["dpo_weight"] == history[-1]["dpo_weight"]


def test_the_report_names_the_gpu_a_demo_ran_on(demo, tmp_path):
    out, results = demo
    on_gpu = results["machine"] | {"gpu": "NVIDIA H100 80GB HBM3", "cuda": "12.8"}
    write_report(tmp_path / "report.md", results["runs"], results["lam_sweep"], micro(out), 1.0, on_gpu)
    settings = " ".join((tmp_path / "report.md").read_text().split("## Settings")[1].split())
    assert "GPU NVIDIA H100 80GB HBM3 (CUDA 12.8)" in settings
    assert "same numbers on the same processor model and GPU model with as many PyTorch threads" in settings
    assert "GPU" not in " ".join((out / "report.md").read_text().split("## Settings")[1].split("|")[0].split())


def test_a_sweep_row_below_chance_is_read_as_chance(demo, tmp_path):
    """λ = 2 at a Forget ACC of 20.0 read as more forgetting than λ = 50 at 25.0, with nothing said of it."""
    out, results = demo
    sweep = [s | {"metrics": s["metrics"] | {"forget_acc": acc}} for s, acc in zip(results["lam_sweep"], (20.0, 25.0))]
    write_report(tmp_path / "report.md", results["runs"], sweep, micro(out), 1.0, results["machine"])
    lams = sorted(s["lam"] for s in sweep if s["metrics"]["forget_acc"] < 25)
    section = " ".join((tmp_path / "report.md").read_text().split("## ViKeR's λ sweep")[1].split("![")[0].split())
    assert f"λ = {lams[0]:g}: Forget ACC below chance (25, four options), which is no more forgetting" in section
    assert section.count("below chance") == 1  # λ = 50 at chance is not below it


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
    # these runs and the λ sweep are evaluated on what the report and plot read of them, nothing more
    for m in [d["metrics"] for d in diag["runs"].values()] + [s["metrics"] for s in results["lam_sweep"][1:]]:
        assert {"forget_acc", "retain_rougeL", "coherence"} <= set(m) and "test_acc" not in m and "real_acc" not in m
    assert set(diag["names"]) == {"vanilla", "ga", "viker", "viker_lam0.3", *diag["runs"]}
    for rates in diag["names"].values():
        assert all(v is None or 0.0 <= v <= 100.0 for v in rates.values())
    # what the rates are over: the generation questions asked with a person's photo, as the report says
    gens = [json.loads(line) for line in (out / "runs" / "ga" / "generations.jsonl").read_text().splitlines()]
    pictured = {s: sum(g["set"] == s and g["task"] == "generation" and bool(g["image"]) for g in gens)
                for s in ("forget", "retain")}
    assert diag["names_over"] == pictured and min(pictured.values()) > 0
    # the floor of a model that knows no face: below a perfect score, above nothing
    assert 0.0 < diag["no_face_retain_rougeL"] < 100.0
    report = " ".join((out / "report.md").read_text().split())  # the report wraps its lines
    assert "λ = 0.3, below 1, no token has a resting point" in report
    assert (f"of the generation questions about a pictured forget (retain) person ({pictured['forget']} and "
            f"{pictured['retain']} questions, the same for every run), the percentage") in report
    assert f"scores {diag['no_face_retain_rougeL']:.1f} Retain ROUGE-L" in report
    # each column says how many questions it is over (Forget ACC: the forget people's image questions)
    assert f"no more forgetting than knowing nothing. Over {results['forget_image_questions']} questions." in report


def test_second_demo_reuses_the_vanilla_model(demo, capsys, monkeypatch):
    import time

    import viker.demo

    out, _ = demo
    cfg = replace(micro(out), shorter_budget=None, quick=True)
    before = (out / "vanilla" / "model" / "model.safetensors").stat().st_mtime_ns
    plot = viker.demo.tradeoff_plot  # a plot that takes a while: its time is in its step's
    monkeypatch.setattr(viker.demo, "tradeoff_plot", lambda *a, **kw: time.sleep(3.0) or plot(*a, **kw))
    results = run_demo(cfg, progress=False)
    assert results["step_seconds"]["key tokens and the plot"] >= 3.0
    printed = capsys.readouterr().out
    assert f"2/5 the vanilla model, reused from an earlier demo ({out / 'vanilla'})" in printed
    assert printed.startswith(f"1/5 the embedded benchmark, reused from an earlier demo ({out / 'data'})\n")
    assert (out / "vanilla" / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert results["diagnostics"] is None
    # a step keeps its name in results.json (a script reads it by that name), and says where it was reused from
    assert list(results["step_seconds"])[:2] == ["the embedded benchmark", "the vanilla model"]
    assert results["reused_steps"] == {"the embedded benchmark": str(out / "data"),
                                       "the vanilla model": str(out / "vanilla")}
    report = " ".join((out / "report.md").read_text().split())
    assert "| the vanilla model (reused from an earlier demo) |" in report  # its minutes are those of loading it
    assert "How ViKeR and GA compare" not in report
    # a quick look says, in the report and at the end of the output, that it is too small to compare methods
    assert "--fast is a quick look" in printed
    assert f"Forget ACC is over {results['forget_image_questions']} image questions" in report
    assert "unlearns for 2 epochs: too few questions" in report
    assert report.index("A quick look") < report.index("ViKeR against GA on this run")  # read first


def test_a_demo_with_other_inputs_finetunes_its_vanilla_model_again(bench_dir, tmp_path):
    """Another seed, --fast or release makes another vanilla model: the earlier one's run folder is replaced, its
    record of the demo's inputs included (it was refused as no part of the run there)."""
    from viker.demo import Steps, _vanilla

    cfg = replace(micro(tmp_path), finetune=TrainConfig(max_steps=1, batch_size=4))
    _vanilla(cfg, bench_dir, tmp_path, False, Steps(5))
    first = (tmp_path / "vanilla" / "model" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "vanilla" / "demo-inputs.json").read_text())["train"]["max_steps"] == 1
    _vanilla(replace(cfg, finetune=replace(cfg.finetune, max_steps=2)), bench_dir, tmp_path, False, Steps(5))
    assert json.loads((tmp_path / "vanilla" / "demo-inputs.json").read_text())["train"]["max_steps"] == 2
    assert (tmp_path / "vanilla" / "model" / "model.safetensors").read_bytes() != first


def test_a_demo_on_another_machine_or_tiny_model_finetunes_its_vanilla_model_again(bench_dir, tmp_path, monkeypatch):
    """Another thread count gives other weights from the same settings, and another tiny model (the code's
    defaults) another model: reused, the vanilla model would be what the demo's report does not say it is."""
    from dataclasses import asdict

    import viker.demo
    from viker.demo import Steps, _vanilla
    from viker.model.tiny import TinyConfig
    from viker.runs import machine

    cfg = replace(micro(tmp_path), finetune=TrainConfig(max_steps=1, batch_size=4))
    _vanilla(cfg, bench_dir, tmp_path, False, Steps(5))
    stamp = json.loads((tmp_path / "vanilla" / "demo-inputs.json").read_text())
    assert stamp["tiny"] == asdict(TinyConfig()) and stamp["machine"] == machine()
    _vanilla(cfg, bench_dir, tmp_path, False, steps := Steps(5))
    assert steps.reused == {"the vanilla model": str(tmp_path / "vanilla")}
    monkeypatch.setattr(viker.demo, "machine", lambda: machine() | {"threads": "64"})
    _vanilla(cfg, bench_dir, tmp_path, False, steps := Steps(5))
    assert steps.reused == {}
    assert json.loads((tmp_path / "vanilla" / "demo-inputs.json").read_text())["machine"]["threads"] == "64"


def test_a_demo_folder_copied_elsewhere_runs_again(demo, tmp_path, capsys):
    """Its vanilla model's evaluation named the model in the folder it was copied from, and was refused as
    another model's."""
    import shutil

    out, _ = demo
    copied = shutil.copytree(out, tmp_path / "copied", symlinks=True)
    run_demo(replace(micro(copied), shorter_budget=None, quick=True), progress=False)
    recorded = json.loads((copied / "runs" / "vanilla" / "config.json").read_text())
    assert recorded["model"] == str(copied / "vanilla" / "model")


def test_fast_shrinks_the_demo_and_marks_it_a_quick_look():
    full = DemoConfig()
    quick = fast(full)
    assert quick.quick and not full.quick
    assert quick.synth.profiles < full.synth.profiles and quick.unlearn.epochs < full.unlearn.epochs
    assert quick.finetune.epochs < full.finetune.epochs and quick.shorter_budget is None
    # its report, which has a λ sweep of its own, says what the full demo's adds (it said "the λ sweep")
    note = " ".join(quick_look_note(quick, 15).split())
    assert f"a λ sweep of {len(full.lam_sweep) + 1} values rather than {len(quick.lam_sweep) + 1}" in note
    assert quick_look_note(full, 50) == ""
    from viker.demo import plot_title  # its plot too, which travels without the report

    assert "--fast: a quick look, too small to compare" in plot_title(quick) and "--fast" not in plot_title(full)


def test_cagul_cost_below_the_bare_models_is_said_to_be_none_measured():
    """0.92× read as a speed-up; CAGUL adds work, and answers of other lengths and the timing's noise make the rest."""
    from viker.demo import cagul_section

    def section(cagul_ms: float) -> str:
        return " ".join(cagul_section({"discriminator": {}, "inference": {
            "cagul_seconds_per_answer": cagul_ms / 1000, "bare_seconds_per_answer": 0.0125,
            "ratio": cagul_ms / 12.5, "answers": 60}}).split())

    assert "(0.91×)" in section(11.4) and "below 1×, no added cost is measured" in section(11.4)
    assert "(1.09×)" in section(13.6) and "no added cost" not in section(13.6)


def test_naming_rate_counts_answers_that_give_the_pictured_persons_name_or_another_persons(tmp_path):
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
    # the retain answer takes Mira Dol for Brailen Tousk: not her name, another person's
    assert naming_rates(path, names) == {"forget": 50.0, "forget_other": 0.0, "retain": 0.0, "retain_other": 100.0}
    assert naming_rates(path, {"0001": "Brailen Tousk"}) == {"forget": 50.0, "forget_other": 0.0, "retain": None,
                                                             "retain_other": None}
    # a name inside a longer word is not given: "Brailen Touskovtouskov" names nobody
    path.write_text(json.dumps({**records[3], "answer": "This person is Brailen Touskovtouskov."}) + "\n")
    assert naming_rates(path, names)["retain_other"] == 0.0


def test_mistaken_identities_are_told_apart_from_lost_faces():
    vk = {"retain_rougeL": 83.6, "retain_acc": 38.0}
    mixed = mistaken_note(vk, {"retain": 11.7, "retain_other": 76.7}, 66.8)
    assert "76.7% of the answers about a pictured retain person give another person's name" in mixed
    assert "Retain R-L (83.6) sits above that floor" in mixed and "Retain ACC (38.0" in mixed
    # at or below the floor there is nothing to explain; with few faces mistaken, nothing to say
    assert "sits above" not in mistaken_note({**vk, "retain_rougeL": 60.0}, {"retain_other": 76.7}, 66.8)
    assert mistaken_note(vk, {"retain": 80.0, "retain_other": 5.0}, 66.8) == ""
    # a Retain ACC that stayed high shows no face lost, and the note does not say it does
    kept = mistaken_note({**vk, "retain_acc": 97.0}, {"retain": 11.7, "retain_other": 20.0}, 66.8)
    assert "sits above that floor." in kept and "Retain ACC" not in kept
    assert mistaken_note(vk, {"retain": None, "retain_other": None}, 66.8) == ""


def test_name_in_answer_reads_the_benchmark_name_answer():
    assert name_in_answer("This person is Brailen Tousk.") == "Brailen Tousk"
    assert name_in_answer(UNKNOWN_ANSWER) is None
    assert name_in_answer("Brailen Tousk was born in Oslo.") is None


def test_budget_notes_say_which_method_fell_apart():
    whole = {"coherence": 99.0, "retain_rougeL": 80.0, "forget_acc": 30.0}
    broken = {"coherence": 2.0, "retain_rougeL": 0.0, "forget_acc": 30.0}
    note = resting_point_note(broken, whole, [], 8, 10.0)
    assert "at least 1/λ = 10%" in note and "mostly the first names" in note  # what the key-token page underlines
    assert "GA's answers have fallen apart and ViKeR's have not" in note
    assert "ViKeR's answers have fallen apart and GA's have not" in resting_point_note(whole, broken, [], 8, 10.0)
    assert "neither method's answers have fallen apart" in resting_point_note(whole, whole, [], 8, 10.0)
    # two runs whose answers both fell apart are not two that held (the table's line: coherence under 50)
    worse = {**broken, "coherence": 0.0}
    assert "both methods' answers have fallen apart" in resting_point_note(worse, broken, [], 8, 10.0)
    assert "both methods' answers have already fallen apart" in shorter_budget_note(broken, worse, 5)
    assert "fallen apart too" in resting_point_note(worse, broken, [{"lam": 0.7, "metrics": worse}], 8, 10.0)
    low = resting_point_note(broken, whole, [{"lam": 0.7, "metrics": broken}], 8, 10.0)
    assert "With λ = 0.7, below 1, no token has a resting point and its answers have fallen apart too" in low
    # λ < 1 runs that ended alike share a sentence; one that held gets its own
    three = [{"lam": 0.3, "metrics": broken}, {"lam": 0.5, "metrics": whole}, {"lam": 0.7, "metrics": broken}]
    grouped = resting_point_note(broken, whole, three, 8, 10.0)
    assert ("With λ = 0.3 and 0.7, below 1, no token has a resting point and the answers of each have fallen apart "
            "too (coherence 2.0 and 2.0, Retain R-L 0.0 and 0.0)") in grouped
    assert "With λ = 0.5, below 1, no token has a resting point and its answers have held so far" in grouped
    assert "no answer token has a resting point" in resting_point_note(broken, whole, [], 8, 0.7)
    # a λ < 1 run some way below ViKeR but above the table's line has begun to fall apart, and alone
    held = {"coherence": 99.0, "retain_rougeL": 80.0, "forget_acc": 30.0}
    slipping = resting_point_note(held, {**held, "coherence": 99.2, "forget_acc": 34.0},
                                  [{"lam": 0.3, "metrics": {"coherence": 90.0, "retain_rougeL": 70.0}}], 8, 10.0)
    assert "neither method's answers have fallen apart" in slipping
    assert "its answers have begun to fall apart (coherence 90.0" in slipping and "too" not in slipping
    # shorter budget: ViKeR forgot more and kept less, which the note explains; a held claim needs no excuse
    ahead = {"coherence": 99.0, "retain_rougeL": 90.0, "forget_acc": 40.0}
    assert "the same currency, faces" in shorter_budget_note(ahead, whole, 5)
    # over 50 questions, 15 right against GA's 18 is no more forgetting (seed 1's 5-epoch runs); 15 against 29 is
    close = shorter_budget_note({**ahead, "forget_acc": 36.0}, {**whole, "forget_acc": 30.0}, 5, questions=50)
    assert "ViKeR's Forget ACC figure is the lower, though not by what 50 questions can tell" in close
    assert "has forgotten more" not in close
    far = shorter_budget_note({**ahead, "forget_acc": 58.0}, {**whole, "forget_acc": 30.0}, 5, questions=50)
    assert "ViKeR has forgotten more and kept less" in far
    assert "holds here" in shorter_budget_note(broken, whole, 5)
    # a Retain R-L that ties GA's is not less (nor said to be, beside a line saying it is no less)
    tie = shorter_budget_note({**whole, "forget_acc": 60.0}, {**whole, "forget_acc": 20.0}, 5, questions=50)
    assert "kept less" not in tie
    # a run some way below the other, but above the table's line for answers that fell apart, has begun to
    degraded = {**broken, "coherence": 77.0, "retain_rougeL": 63.3}
    assert "GA's answers have already begun to fall apart." in shorter_budget_note(degraded, whole, 5)
    begun = resting_point_note(degraded, whole, [], 8, 10.0)
    assert "GA's answers have begun to fall apart and ViKeR's have not" in begun
    assert "the same currency" not in shorter_budget_note(broken, whole, 5)
    # nor where GA has begun to fall apart and ViKeR forgot more for less (seed 5's 5-epoch runs)
    begun_ahead = shorter_budget_note({"forget_acc": 36.0, "retain_rougeL": 83.7, "coherence": 92.6},
                                      {"forget_acc": 24.0, "retain_rougeL": 83.4, "coherence": 99.3}, 5, questions=50)
    assert "GA's answers have already begun to fall apart" in begun_ahead and "the same currency" not in begun_ahead


def test_p_at_least_is_the_binomial_tail():
    def tail(k, n, p):  # k or more of n right by luck, for a model whose true accuracy is p
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))

    assert p_at_least(32.0, 50) == pytest.approx(tail(16, 50, 0.25), rel=1e-9)  # against chance by default
    assert p_at_least(42.0, 50, 30.0) == pytest.approx(tail(21, 50, 0.30), rel=1e-9)
    assert p_at_least(40.0, 50) < 0.05 < p_at_least(32.0, 50)


def test_forget_acc_is_compared_at_the_resolution_of_its_questions():
    # figure against figure, without the number of questions
    assert forget_acc_not_higher(24.0, 24.0) and not forget_acc_not_higher(26.0, 24.0)
    # GA below chance is held at chance: 18 of 50 right is p = 0.055 against 25%, 19 of 50 p = 0.029
    assert forget_acc_not_higher(36.0, 14.0, 50) and not forget_acc_not_higher(38.0, 14.0, 50)
    # GA above chance is held at its own figure: 21 of 50 is p = 0.048 against 30%, 20 of 50 p = 0.085
    assert forget_acc_not_higher(40.0, 30.0, 50) and not forget_acc_not_higher(42.0, 30.0, 50)
    # more questions resolve smaller gaps: 32% against chance is noise over 50 questions, not over 500
    assert forget_acc_not_higher(32.0, 24.0, 50) and not forget_acc_not_higher(32.0, 24.0, 500)
    # the claim needs more retention and more coherence as well
    v, g = {"forget_acc": 32.0, "retain_rougeL": 73.7, "coherence": 99.2}, {"forget_acc": 24.0, "retain_rougeL": 0.0,
                                                                          "coherence": 0.0}
    assert claim_holds(v, g, 50) and not claim_holds(v, g)
    assert not claim_holds({**v, "coherence": 0.0}, g, 50) and not claim_holds({**v, "retain_rougeL": 0.0}, g, 50)


def test_claim_wording_says_whether_the_questions_tell_the_forget_accs_apart():
    ga = {"forget_acc": 24.0, "retain_rougeL": 0.0, "coherence": 0.0}
    within = viker_vs_ga({"forget_acc": 32.0, "retain_rougeL": 73.7, "coherence": 99.2}, ga, questions=50)
    assert "holds within noise here" in within and "not by what 50 questions can tell" in within
    assert "chance (25; GA's 24.0 is below it" in within and "16 or more of 50 right with probability 0.16" in within
    above = viker_vs_ga({"forget_acc": 40.0, "retain_rougeL": 73.7, "coherence": 99.2}, ga, questions=50)
    assert "does not hold" in above and "It fails on Forget ACC alone" in above and "probability 0.01" in above
    ga_above_chance = viker_vs_ga({"forget_acc": 36.0, "retain_rougeL": 73.7, "coherence": 99.2},
                                  {**ga, "forget_acc": 30.0}, questions=50)
    assert "holds within noise here" in ga_above_chance and "a model at GA's level (30.0)" in ga_above_chance
    lower = viker_vs_ga({"forget_acc": 20.0, "retain_rougeL": 73.7, "coherence": 99.2}, ga, questions=50)
    assert "claim (more retention and coherence at an equal or lower Forget ACC) holds here." in lower
    assert "binomial" not in lower
    digits = viker_vs_ga({"forget_acc": 32.0, "retain_rougeL": 73.7, "coherence": 99.2}, ga)
    assert "does not hold" in digits and "binomial" not in digits and "not higher than GA's" not in digits
    # where ViKeR does not keep more, the wording says what it does not keep more of; a tie counts as not more
    tie = viker_vs_ga({"forget_acc": 24.0, "retain_rougeL": 91.5, "coherence": 99.3},
                      {"forget_acc": 42.0, "retain_rougeL": 90.7, "coherence": 99.3}, questions=50)
    assert "does not hold" in tie and "ViKeR's coherence is not higher than GA's." in tie
    # ... and where that is a tie at a lower Forget ACC, that it forgets more for no less (not a loss)
    assert tie.endswith("Its Forget ACC is the lower at the same figures there: it forgets more for no less "
                        "retention, but the claim asks for more.")
    # a lower figure the questions cannot tell apart is not said to be more forgetting (seed 4's 5-epoch runs)
    near = viker_vs_ga({"forget_acc": 30.0, "retain_rougeL": 82.6, "coherence": 99.3},
                       {"forget_acc": 32.0, "retain_rougeL": 80.0, "coherence": 99.3}, questions=50)
    assert near.endswith("Its Forget ACC figure is the lower at the same figures there, though not by what 50 "
                         "questions can tell.")
    both = viker_vs_ga({"forget_acc": 24.0, "retain_rougeL": 60.0, "coherence": 90.0},
                       {"forget_acc": 42.0, "retain_rougeL": 90.7, "coherence": 99.3}, questions=50)
    assert both.endswith("ViKeR's Retain R-L and coherence are not higher than GA's.")  # lower: no such sentence
    # figures are compared as the report prints them: 91.54 and 91.46 are both 91.5, a tie
    printed_tie = viker_vs_ga({"forget_acc": 24.0, "retain_rougeL": 91.54, "coherence": 99.34},
                              {"forget_acc": 42.0, "retain_rougeL": 91.46, "coherence": 99.26}, questions=50)
    assert "does not hold" in printed_tie and "Retain R-L and coherence are not higher" in printed_tie
    # a p-value beside the 5% cut-off is printed so that it reads on its side of it
    near = {g: viker_vs_ga({"forget_acc": v, "retain_rougeL": 73.7, "coherence": 99.2},
                           {**ga, "forget_acc": g}, questions=50) for g, v in ((32.0, 44.0), (30.0, 42.0))}
    assert "probability 0.0503" in near[32.0] and "holds within noise here" in near[32.0]
    assert "probability 0.0478" in near[30.0] and "does not hold" in near[30.0]
    # where GA has kept all of the vanilla model's retention and coherence, no method could keep more (--fast)
    vanilla = {"forget_acc": 100.0, "retain_rougeL": 100.0, "coherence": 99.2}
    quick = viker_vs_ga({"forget_acc": 40.0, "retain_rougeL": 99.2, "coherence": 99.2},
                        {"forget_acc": 66.7, "retain_rougeL": 100.0, "coherence": 99.2}, vanilla=vanilla)
    assert quick.endswith("GA's Retain R-L and coherence are at or above the vanilla model's (100.0 and 99.2, "
                          "against 100.0 and 99.2): on this run GA has lost none of either for ViKeR to keep more of.")
    above = viker_vs_ga({"forget_acc": 40.0, "retain_rougeL": 99.2, "coherence": 99.2},
                        {"forget_acc": 66.7, "retain_rougeL": 100.0, "coherence": 99.4}, vanilla=vanilla)
    assert "(100.0 and 99.4, against 100.0 and 99.2)" in above  # GA's figures, said as GA's
    paid = viker_vs_ga({"forget_acc": 40.0, "retain_rougeL": 99.2, "coherence": 99.2},
                       {"forget_acc": 66.7, "retain_rougeL": 99.6, "coherence": 99.2}, vanilla=vanilla)
    assert "does not hold" in paid and "lost none" not in paid  # GA lost some Retain R-L: ViKeR lost more


def test_demo_refuses_a_folder_that_is_no_earlier_demos_and_removes_nothing_in_it(tmp_path):
    """`viker demo --out .` beside a `viker finetune --out vanilla` run: the demo would replace it."""
    from viker.errors import VikerError

    mine = tmp_path / "vanilla" / "model"
    mine.mkdir(parents=True)
    (mine / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(VikerError, match="no earlier demo's folder"):
        run_demo(micro(tmp_path), progress=False)
    assert (mine / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vanilla"]


def test_a_benchmark_generated_again_keeps_no_file_of_the_earlier_one_and_an_interrupted_one_is_redone(
        tmp_path, monkeypatch):
    """--fast after the full demo (fewer reference images), or a generation stopped midway: the demo must go on
    with one benchmark, not a mix of two."""
    import viker.demo

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    (tmp_path / "synth.json").write_text(json.dumps({"seed": 99}))  # an earlier demo, other settings
    stale = tmp_path / "data" / "ref_people" / "999.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"png")
    old_run = tmp_path / "runs" / "viker_lam50"  # a run of the earlier demo's that this one would not redo
    old_run.mkdir(parents=True)
    (tmp_path / "data" / "README.md").write_text("an earlier benchmark")
    reported = [tmp_path / name for name in ("report.md", "results.json", "tradeoff.png", "keytokens.html")]
    for file in reported:  # its report, which would read as this demo's were this one stopped
        file.write_text("the earlier demo's")
    monkeypatch.setattr(viker.demo, "_vanilla", stop)
    with pytest.raises(Stop):
        run_demo(micro(tmp_path), progress=False)
    assert not stale.exists() and not old_run.exists() and (tmp_path / "data" / "ref_people").is_dir()
    assert not any(file.exists() for file in reported)
    generated = json.loads((tmp_path / "synth.json").read_text())
    assert generated["seed"] == micro(tmp_path).seed

    build, built = viker.demo.build_benchmark, []
    monkeypatch.setattr(viker.demo, "build_benchmark", lambda out, cfg, progress: (build(out, cfg, progress), stop()))
    with pytest.raises(Stop):  # another seed's benchmark, stopped after writing its files, before the stamp
        run_demo(replace(micro(tmp_path), seed=4), progress=False)
    monkeypatch.setattr(viker.demo, "build_benchmark", lambda *args, **kw: (built.append(1), build(*args, **kw))[1])
    with pytest.raises(Stop):  # the earlier settings again: their benchmark is half overwritten, so it is redone
        run_demo(micro(tmp_path), progress=False)
    assert built and json.loads((tmp_path / "synth.json").read_text())["seed"] == micro(tmp_path).seed


def test_idkpo_note_explains_from_its_own_log_why_it_has_not_forgotten(tmp_path):
    """IdkPO at the vanilla model's Forget ACC gets a note read off its last logged window (a history row
    averages the steps since the row before), worded from which side of DPO's margin moved."""
    run = tmp_path / "idkpo"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": {"name": "idkpo", "beta": 0.1, "retain_weight": 1.0}}))
    logs = {"dpo": 0.1, "dpo_weight": 0.09, "refusal_gain": 15.3, "forget_gain": -0.1, "refusal_logp": -71.6,
            "forget_logp": -0.53}
    history = [{"step": 5, "loss": 0.67, **logs}, {"step": 10, "loss": 0.4, **logs}, {"step": 13, "loss": 0.15, **logs}]
    trace = idkpo_trace(history, run)
    assert trace == {"beta": 0.1, "steps": [11, 13], **logs}
    runs = [{"method": m, "metrics": {"forget_acc": 100.0}} for m in ("vanilla", "idkpo")]

    def note(**changed):
        return " ".join(idkpo_note({**trace, **changed}, runs).split())

    text = note()
    assert text.startswith("**IdkPO has not forgotten** (Forget ACC 100.0, the vanilla model's 100.0).")
    assert ("Over its last logged steps 11–13, its DPO loss averaged 0.10 (log 2 = 0.69 at the start) and DPO's "
            "weight on the margin, σ(−β·margin) with β = 0.1, was 0.09 (0.5 at the start): the margin has grown, "
            "mostly by making the refusals less unlikely, a refusal's log-likelihood up 15.3 nats from the vanilla "
            "model's and a true answer's down 0.1 nats from it.") in text
    assert "a true answer's within 0.05 nats of it." in note(forget_gain=-0.04)
    assert text.endswith("The refusals are still less likely than the true answers (-71.6 against -0.5 nats), and "
                         "Forget ACC says the model still picks the true answers.")
    assert "mostly by making the true answers less likely" in note(refusal_gain=1.0, forget_gain=-4.0)
    assert "the margin has not grown" in note(refusal_gain=-1.0, forget_gain=0.5)
    assert "still less likely" not in note(refusal_logp=-0.2)
    assert "(-59.6 against -0.03 nats)" in note(refusal_logp=-59.6, forget_logp=-0.03)
    assert "logged step 13," in " ".join(idkpo_note(idkpo_trace(history[-1:], run) | {"steps": [13, 13]},
                                                    runs).split())
    runs[1]["metrics"]["forget_acc"] = 60.0  # it has forgotten: nothing to explain
    assert idkpo_note(trace, runs) == ""
    runs[1]["metrics"]["forget_acc"] = 100.0
    assert idkpo_note(trace, runs[1:]) == ""  # no vanilla run to measure it against
    assert idkpo_trace([{"step": 5, "loss": 0.6}], run) is None and idkpo_note(None, runs) == ""


def test_the_time_table_gives_a_short_step_in_seconds_not_as_no_time():
    from viker.demo import time_table

    table = time_table({"unlearning with every method": 301.2, "key tokens and the plot": 2.34})
    assert "| unlearning with every method | 5.0 min |" in table
    assert "| key tokens and the plot | 2.3 s |" in table and "0.0" not in table
    assert "| the vanilla model (reused from an earlier demo) | 1.5 s |" in time_table({"the vanilla model": 1.5},
                                                                                        ["the vanilla model"])
    assert time_table({}) == ""


def test_the_claims_test_counts_the_right_answers_behind_a_figure_that_is_not_exact():
    """5 of 19 is 26.315...%, which times 19 / 100 falls just under 5: truncated, the test of ViKeR against chance
    read 4 right answers, and the p-value, the verdict and the sentence under it went with them."""
    from viker.demo import p_at_least
    from viker.eval.metrics import mean_percent

    def tail(k, n, p):
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))

    acc = mean_percent([True] * 5 + [False] * 14)
    assert acc * 19 / 100 < 5
    assert p_at_least(acc, 19) == pytest.approx(tail(5, 19, 0.25), rel=1e-9)


def test_the_no_face_floor_is_over_the_retain_people_evaluated(bench_dir):
    """The Retain ROUGE-L a model that forgot every face would score, over the retain people the demo's
    evaluations score (its --retain-limit), not over all of them."""
    from viker.data.examples import generation_examples
    from viker.data.loader import load_profiles
    from viker.data.synth.people import UNKNOWN_ANSWER
    from viker.demo import no_face_retain_rougeL
    from viker.eval import metrics as M

    first = load_profiles(bench_dir, "retain_90")[:1]
    expected = M.mean_percent([M.rouge(UNKNOWN_ANSWER, ex.answer)["rougeL"] if ex.image is not None else 1.0
                               for ex in generation_examples(first)])
    assert no_face_retain_rougeL(bench_dir, DemoConfig(eval=EvalConfig(retain_limit=1))) == round(expected, 1)
