"""GA against ViKeR over many embedded benchmarks: does the paper's claim hold beyond one seed?

    python bench/ga_vs_viker.py --seeds 0 1 2 3 --epochs 4 5 6 --out /tmp/ga-vs-viker [--jobs 4]

For every seed: generate the embedded benchmark of that seed, finetune its vanilla tiny model, then
unlearn forget_10 with GA and with ViKeR (the demo's settings: LoRA r=16, lr 2e-4, batch 8, λ=0.7, k=5,
people) for each number of epochs, and with ViKeR without its ascent term on the demo's budget;
evaluate each run as the demo does. The paper's claim is checked per seed and budget with the demo's own
``claim_holds`` (ViKeR keeps more Retain ROUGE-L and coherence at an equal or lower Forget ACC).

Writes ``OUT/seed_S.json`` per seed (updated after every run, so a stopped study keeps what it did),
``OUT/summary.json`` and ``OUT/summary.md`` (a table per budget), and prints the tables. Seeds run in
``--jobs`` processes at once (one PyTorch thread each); a seed whose vanilla model is already in
``OUT/seed_S/vanilla`` reuses it. Eight seeds with ``--jobs 8`` took 6 minutes on a 16-core machine with one
H100 (bench/ga_vs_viker.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("forget_acc", "test_acc", "retain_acc", "retain_rougeL", "real_rougeL", "coherence", "forget_rougeL")


def run_seed(seed: int, epochs: list[int], out: Path, device: str | None) -> dict:
    import torch

    torch.set_num_threads(1)
    from viker.data.synth import build_benchmark
    from viker.demo import DemoConfig, naming_rates, person_names
    from viker.eval.run import run_eval
    from viker.finetune import FinetuneConfig, run_finetune
    from viker.unlearn import UnlearnConfig, run_unlearn

    cfg = DemoConfig(seed=seed)
    root, data, vanilla = out / f"seed_{seed}", out / f"seed_{seed}" / "data", out / f"seed_{seed}" / "vanilla"
    result = {"seed": seed, "device": device or ("cuda" if torch.cuda.is_available() else "cpu"), "runs": {}}
    record_file = out / f"seed_{seed}.json"
    if not (vanilla / "model" / "config.json").is_file():
        build_benchmark(data, replace(cfg.synth, seed=seed), progress=False)
        run_finetune(FinetuneConfig(model="tiny", data=str(data), out=str(vanilla), train=cfg.finetune,
                                    device=device, dtype="float32"), progress=False)
    names = person_names(data, cfg.forget)
    ecfg = replace(cfg.eval, forget=cfg.forget)

    def record(key: str, run_dir: Path, model_and_processor=None, model: Path | None = None) -> None:
        m = run_eval(str(model or run_dir / "model"), str(data), str(run_dir), ecfg, device=device, dtype="float32",
                     progress=False, model_and_processor=model_and_processor)
        result["runs"][key] = {k: m[k] for k in KEYS} | {"named": naming_rates(run_dir / "generations.jsonl", names)}
        record_file.write_text(json.dumps(result, indent=1))
        print(f"seed {seed} {key:14s} " + " ".join(f"{k}={m[k]:.1f}" for k in KEYS), flush=True)

    record("vanilla", root / "runs" / "vanilla", model=vanilla / "model")
    base = UnlearnConfig(model=str(vanilla), data=str(data), forget=cfg.forget, train=replace(cfg.unlearn, seed=seed),
                         lora=cfg.lora, cache_dir=str(root / "cache"), device=device, dtype="float32")
    plan = [(f"{m}_e{e}", m, args, e) for m, args in (("ga", {}), ("viker", cfg.viker)) for e in epochs]
    plan.append((f"viker_no_ga_e{cfg.unlearn.epochs:g}", "viker", {**cfg.viker, "ablation": "no_ga"},
                 cfg.unlearn.epochs))
    for key, method, args, e in plan:
        run_dir = root / "runs" / key
        mp = run_unlearn(replace(base, method=method, method_args=dict(args), out=str(run_dir),
                                 train=replace(base.train, epochs=e)), progress=False)[:2]
        record(key, run_dir, mp)
    return result


def summarize(results: list[dict], epochs: list[int]) -> str:
    from viker.demo import claim_holds

    def fmt(m: dict) -> str:
        return f"{m['forget_acc']:.0f} / {m['retain_rougeL']:.1f} / {m['coherence']:.1f}"

    lines = []
    for e in epochs:
        lines += [f"### {e} epochs (Forget ACC / Retain R-L / coherence)", "",
                  "| seed | GA | ViKeR | claim holds |", "| --- | --- | --- | --- |"]
        held = 0
        for r in results:
            g, v = r["runs"].get(f"ga_e{e}"), r["runs"].get(f"viker_e{e}")
            if g and v:
                held += claim_holds(v, g)
                lines.append(f"| {r['seed']} | {fmt(g)} | {fmt(v)} | {'yes' if claim_holds(v, g) else 'no'} |")
        lines += ["", f"holds on {held} of {len(results)} seeds", ""]
    no_ga = [(r["seed"], m) for r in results for k, m in r["runs"].items() if k.startswith("viker_no_ga")]
    lines += ["### ViKeR without GA (the demo's budget)", "", "| seed | run |", "| --- | --- |"]
    lines += [f"| {s} | {fmt(m)} |" for s, m in no_ga]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, nargs="+", default=[4, 5, 6])
    p.add_argument("--out", default="ga-vs-viker")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(a.jobs) as pool:
        results = list(pool.map(run_seed, a.seeds, [a.epochs] * len(a.seeds), [out] * len(a.seeds),
                                [a.device] * len(a.seeds)))
    table = summarize(results, a.epochs)
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
