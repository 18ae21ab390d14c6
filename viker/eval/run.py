"""``viker eval``: evaluate a model folder and write ``metrics.json`` and ``generations.jsonl``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from viker.errors import VikerError
from viker.eval.evaluate import EvalConfig, JudgeFailed, eval_sets, evaluate, load_judge
from viker.model import how_loaded, load_model
from viker.runs import as_recorded, check_eval_out, other_benchmark, other_split, write_eval_config, write_json


def write_generations(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def run_eval(model_path: str, data: str, out: str, cfg: EvalConfig, device=None, dtype="auto",
             trust_remote_code=False, progress=True, model_and_processor=None) -> dict:
    check_eval_out(model_path, out, data)
    sets = eval_sets(data, cfg)  # a wrong --data or split is refused before the model loads
    for warning in (other_benchmark(model_path, data), other_split(model_path, cfg.forget, "mllmu")):
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    if cfg.judge:
        load_judge(cfg.judge)  # and a judge that cannot be imported
    model, processor = model_and_processor or load_model(model_path, device, dtype, trust_remote_code,
                                                         merge_adapter=False)
    try:
        metrics, records = evaluate(model, processor, data, cfg, progress=progress, sets=sets)
        failed = None
    except JudgeFailed as e:  # every other figure and answer is kept, recorded as an evaluation without a judge
        metrics, records, failed = e.metrics, e.records, e
        cfg = replace(cfg, judge=None)
    unparsed = {k: v for k, v in metrics.items() if k.endswith("_unparsed") and v is not None and v > 50}
    if unparsed:
        shares = ", ".join(f"{k} {v:.0f}%" for k, v in unparsed.items())
        print(f"warning: most letter-mode replies name no option ({shares}); they count as wrong. A model "
              "that never learned to answer with a letter is scored with --mc-mode likelihood", file=sys.stderr)
    out = Path(out)
    write_eval_config(out, {"model": as_recorded(model_path), **how_loaded(model), "data": as_recorded(data),
                            "benchmark": "mllmu",
                            "eval": asdict(cfg) | {"gib_model": cfg.gib_model and as_recorded(cfg.gib_model)}}, data)
    write_json(out / "metrics.json", metrics)
    write_generations(out / "generations.jsonl", records)
    if failed:
        raise VikerError(f"{failed}. The other metrics and every answer are written to {out}, without factuality")
    return metrics
