"""``viker demo``: the paper's comparison, end to end, on the embedded benchmark and the tiny model.

Steps: generate the benchmark, finetune the vanilla model (reused when a previous demo in the same
folder trained it on the same data with the same settings), unlearn forget_10 with every method on the
same budget, sweep ViKeR's λ, evaluate everything, and write ``results.json``, ``report.md``,
``tradeoff.png`` and the key-token page. Everything runs offline on a CPU.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from viker.data.synth import SynthConfig, build_benchmark
from viker.eval.evaluate import EvalConfig
from viker.eval.run import run_eval
from viker.finetune import TINY_TRAIN, FinetuneConfig, run_finetune
from viker.keytokens import run_keytokens
from viker.model import LoraSettings, load_model
from viker.report import column_glossary, markdown_table, plain_table, tradeoff_plot
from viker.runs import file_hashes, to_jsonable, under, write_json
from viker.train import TrainConfig
from viker.unlearn import TINY_UNLEARN, UnlearnConfig, run_unlearn

METHODS = ("ga", "graddiff", "klmin", "npo", "idkpo", "viker", "cagul")


@dataclass
class DemoConfig:
    out: str = "viker-demo"
    seed: int = 0
    forget: str = "forget_10"
    synth: SynthConfig = field(default_factory=SynthConfig)
    finetune: TrainConfig = field(default_factory=lambda: TINY_TRAIN)
    unlearn: TrainConfig = field(default_factory=lambda: TINY_UNLEARN)
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32, dropout=0.0))
    viker: dict = field(default_factory=lambda: {"lam": 0.7, "k": 5, "refs": "people"})
    lam_sweep: tuple[float, ...] = (0.1, 0.3, 0.9)
    # CAGUL trains new modules from scratch rather than adjusting the model: its own epochs and learning rate
    cagul: dict = field(default_factory=lambda: {"k": 5, "refs": "people"})
    cagul_train: TrainConfig = field(default_factory=lambda: replace(TINY_UNLEARN, epochs=15, lr=3e-3))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(retain_limit=30))


def fast(cfg: DemoConfig) -> DemoConfig:
    """Smaller settings for a quick look (about 3 minutes): fewer people, shorter training."""
    return replace(
        cfg,
        synth=replace(cfg.synth, profiles=40, celebrities=8, ref_per_pool=12, strangers=10),
        finetune=replace(cfg.finetune, epochs=20),
        lam_sweep=(0.3,),
        cagul_train=replace(cfg.cagul_train, epochs=5),
        eval=replace(cfg.eval, retain_limit=12),
    )


def _vanilla(cfg: DemoConfig, data: Path, out: Path, progress: bool) -> Path:
    """Finetune the vanilla model, or reuse the one a previous demo trained on the same inputs."""
    run = out / "vanilla"
    settings = to_jsonable({"train": cfg.finetune, "data": file_hashes(data)})
    stamp = run / "demo-inputs.json"
    if (run / "model" / "config.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        print(f"reusing the vanilla model in {run}")
        return run
    run_finetune(FinetuneConfig(model="tiny", data=str(data), out=str(run), train=cfg.finetune), progress=progress)
    write_json(stamp, settings)
    return run


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    started = time.perf_counter()
    out = Path(cfg.out)
    data = out / "data"
    synth = replace(cfg.synth, seed=cfg.seed)
    if not (data / "README.md").is_file() or json.loads((out / "synth.json").read_text() if (out / "synth.json").is_file()
                                                         else "null") != to_jsonable(synth):
        print("1/5 generating the embedded benchmark")
        build_benchmark(data, synth, progress=progress)
        write_json(out / "synth.json", synth)
    print("2/5 the vanilla model")
    vanilla = _vanilla(cfg, data, out, progress)
    vanilla_model = load_model(vanilla)
    cache = out / "cache"

    runs: list[dict] = []
    cagul = None
    ecfg = replace(cfg.eval, forget=cfg.forget)

    def evaluate_run(run_dir: Path, model_and_processor, model_dir: Path | None = None) -> dict:
        return run_eval(str(model_dir or run_dir / "model"), str(data), str(run_dir), ecfg, progress=progress,
                        model_and_processor=model_and_processor)

    print("3/5 unlearning with every method on the same budget")
    runs.append({"method": "vanilla", "forget_split": cfg.forget,
                 "metrics": evaluate_run(out / "runs" / "vanilla", vanilla_model, vanilla / "model")})
    base = UnlearnConfig(model=str(vanilla), data=str(data), forget=cfg.forget, train=replace(cfg.unlearn, seed=cfg.seed),
                         lora=cfg.lora, cache_dir=str(cache))
    timings = {}
    for method in METHODS:
        args = {"viker": cfg.viker, "cagul": cfg.cagul}.get(method, {})
        run_dir = under(out, "runs", method)
        t = time.perf_counter()
        train = replace(cfg.cagul_train, seed=cfg.seed) if method == "cagul" else base.train
        model_and_processor = run_unlearn(replace(base, method=method, method_args=dict(args), out=str(run_dir),
                                                  train=train), progress=progress)[:2]
        timings[method] = round(time.perf_counter() - t, 1)
        runs.append({"method": method, "forget_split": cfg.forget,
                     "metrics": evaluate_run(run_dir, model_and_processor)})
        if method == "cagul":
            cagul = cagul_details(run_dir, model_and_processor, data, cfg)

    print("4/5 ViKeR's λ sweep")
    sweep = [{"lam": cfg.viker["lam"], "metrics": next(r["metrics"] for r in runs if r["method"] == "viker")}]
    for lam in cfg.lam_sweep:
        run_dir = under(out, "runs", f"viker_lam{lam:g}")
        mp = run_unlearn(replace(base, method="viker", method_args={**cfg.viker, "lam": lam}, out=str(run_dir)),
                         progress=progress)[:2]
        sweep.append({"lam": lam, "metrics": evaluate_run(run_dir, mp)})

    print("5/5 key tokens, report and plot")
    run_keytokens(str(vanilla), str(data), cfg.forget, str(out / "keytokens.html"), k=cfg.viker.get("k", 5),
                  refs=cfg.viker.get("refs", "people"), cache_dir=cache, progress=progress,
                  model_and_processor=vanilla_model)
    results = {"runs": runs, "lam_sweep": sweep, "settings": to_jsonable(cfg), "unlearn_seconds": timings,
               "cagul": cagul}
    write_json(out / "results.json", results)
    tradeoff_plot(runs, sweep, out / "tradeoff.png", f"{cfg.forget} of the embedded benchmark, tiny LLaVA")
    minutes = (time.perf_counter() - started) / 60
    write_report(out / "report.md", runs, sweep, cfg, minutes, cagul)
    print()
    print(plain_table(runs))
    print(f"\nwrote {out}/report.md, results.json, tradeoff.png, keytokens.html in {minutes:.1f} min")
    return results


def cagul_details(run_dir: Path, model_and_processor, data: Path, cfg: DemoConfig) -> dict:
    """What the CAGUL row needs beside its metrics: how its discriminator flags images (recorded by the
    run) and its cost per answer against the bare model, on the forget and retain people's questions."""
    from viker.data.examples import generation_examples
    from viker.data.loader import load_profiles
    from viker.data.schema import RETAIN_OF
    from viker.model.cagul import inference_cost

    model, processor = model_and_processor
    people = load_profiles(data, cfg.forget) + load_profiles(data, RETAIN_OF[cfg.forget])[: cfg.eval.retain_limit]
    examples = generation_examples(people)
    setup = json.loads((run_dir / "config.json").read_text())["setup"]
    return {"discriminator": setup.get("cagul_discriminator", {}),
            "inference": inference_cost(model, processor, examples, cfg.eval.batch_size, cfg.eval.max_new_tokens)}


def cagul_section(cagul: dict | None) -> str:
    if not cagul:
        return ""
    d, cost = cagul["discriminator"], cagul["inference"]
    rows = "\n".join(f"| {name} | {v['precision']:.1f} | {v['recall']:.1f} | {v['false_positive_rate']:.1f} | "
                     f"{v['positives']} / {v['negatives']} |"
                     for name, v in (("forget-split images vs retain and real-world people", d.get("split_images")),
                                     ("Test_Set photos (never seen in training)", d.get("test_set_images")))
                     if v)
    return f"""## CAGUL

CAGUL leaves the model's weights untouched: a discriminator flags images of the forget people and an encoder
rewrites the least attended visual tokens of flagged images. How the discriminator flags images:

| images | precision | recall | false-positive rate | forget / other images |
| --- | --- | --- | --- | --- |
{rows}

Images it does not flag reach the model unchanged, so on them CAGUL answers exactly as the vanilla model does.
Added cost at inference: {cost['cagul_seconds_per_answer'] * 1000:.1f} ms per answer with CAGUL against
{cost['bare_seconds_per_answer'] * 1000:.1f} ms for the bare model ({cost['ratio']:.2f}×), greedy batched generation
of {cost['answers']} answers about forget and retain people.
"""


def viker_vs_ga(runs: list[dict]) -> str:
    """The paper's claim, checked on this run: ViKeR keeps more and stays more coherent than GA while
    forgetting at least as much."""
    by = {r["method"]: r["metrics"] for r in runs}
    if "viker" not in by or "ga" not in by:
        return ""
    v, g = by["viker"], by["ga"]
    holds = (v["forget_acc"] <= g["forget_acc"] and v["retain_rougeL"] > g["retain_rougeL"]
             and v["coherence"] > g["coherence"])
    return (f"ViKeR against GA on this run: Forget ACC {v['forget_acc']:.1f} vs {g['forget_acc']:.1f}, "
            f"Retain R-L {v['retain_rougeL']:.1f} vs {g['retain_rougeL']:.1f}, coherence {v['coherence']:.1f} vs "
            f"{g['coherence']:.1f}: the paper's claim (more retention and coherence at equal or lower forget "
            f"accuracy) {'holds' if holds else 'does not hold'} here.")


def write_report(path: Path, runs: list[dict], sweep: list[dict], cfg: DemoConfig, minutes: float,
                 cagul: dict | None = None) -> None:
    sweep_rows = "\n".join(
        f"| {s['lam']:g} | {s['metrics']['forget_acc']:.1f} | {s['metrics']['retain_rougeL']:.1f} | "
        f"{s['metrics']['coherence']:.1f} |" for s in sorted(sweep, key=lambda s: s["lam"]))
    text = f"""# viker demo: unlearning {cfg.forget} of the embedded benchmark

{markdown_table(runs)}

Best value of each column among the unlearning methods in bold (vanilla is the model before unlearning).
All numbers are percentages.

{viker_vs_ga(runs)}

## Columns

{column_glossary(runs)}

## ViKeR's λ sweep

| λ | Forget ACC | Retain R-L | Coherence |
| --- | --- | --- | --- |
{sweep_rows}

![trade-off](tradeoff.png)

Key tokens of the forget answers: [keytokens.html](keytokens.html) (![key tokens](keytokens.png)).

{cagul_section(cagul)}
## Settings

- Date {date.today().isoformat()}, {platform.machine()} CPU, {minutes:.1f} minutes in all; seed {cfg.seed}.
- Benchmark: {cfg.synth.profiles} fictitious people, {cfg.synth.celebrities} real-world people; forget split {cfg.forget}.
- Vanilla: tiny LLaVA, full finetune, {cfg.finetune.epochs:g} epochs, lr {cfg.finetune.lr:g}, batch {cfg.finetune.batch_size}.
- Unlearning (every method): LoRA r={cfg.lora.r}, α={cfg.lora.alpha} on the language model; {cfg.unlearn.epochs:g} epochs,
  lr {cfg.unlearn.lr:g}, batch {cfg.unlearn.batch_size}; retain terms paired batch by batch.
- ViKeR: {", ".join(f"{k}={v}" for k, v in cfg.viker.items())}.
- CAGUL: the model frozen; its new modules trained {cfg.cagul_train.epochs:g} epochs at lr {cfg.cagul_train.lr:g}
  ({", ".join(f"{k}={v}" for k, v in cfg.cagul.items())}, the rest at their defaults).
- Evaluation: multiple choice by option likelihood; generation greedy, {cfg.eval.max_new_tokens} new tokens;
  retain metrics on {cfg.eval.retain_limit or 'all'} retain people.
- Full settings: `results.json`; each run's own `config.json` and `metrics.json` under `runs/`.
"""
    path.write_text(text)
