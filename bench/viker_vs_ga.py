"""Wall time of a ViKeR run against a GA run with the same steps, reference computation included.

    python bench/viker_vs_ga.py --model VANILLA --data BENCH [--repeats 3]

Each run is a whole `run_unlearn` (model loading, LoRA, data, ViKeR's reference distributions with an
empty cache, training, saving). Prints a Markdown table; record it in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from viker.unlearn import TINY_UNLEARN, UnlearnConfig, run_unlearn


def timed(cfg: UnlearnConfig) -> float:
    start = time.perf_counter()
    run_unlearn(cfg, progress=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--forget", default="forget_10")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    times = {"ga": [], "viker": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for method in ("ga", "viker"):
                cache = Path(tmp) / f"cache-{method}-{r}"  # a fresh, empty cache: R̂ is computed every time
                cfg = UnlearnConfig(model=args.model, data=args.data, forget=args.forget, method=method,
                                    out=str(Path(tmp) / f"{method}-{r}"), cache_dir=str(cache),
                                    train=replace(TINY_UNLEARN))
                times[method].append(timed(cfg))
    ga, vk = statistics.median(times["ga"]), statistics.median(times["viker"])
    print(f"{date.today()} · {platform.machine()} · {args.repeats} repeats, median seconds\n")
    print("| run | seconds | relative to GA |\n| --- | --- | --- |")
    print(f"| GA | {ga:.2f} | 1.00 |")
    print(f"| ViKeR (k=5, reference distributions computed from an empty cache) | {vk:.2f} | {vk / ga:.2f} |")


if __name__ == "__main__":
    main()
