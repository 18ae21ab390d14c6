"""``viker eval``: evaluate a model folder and write ``metrics.json`` and ``generations.jsonl``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from viker.errors import VikerError, check_config
from viker.eval.evaluate import (
    SETS,
    TASKS,
    EvalConfig,
    JudgeFailed,
    eval_sets,
    evaluate,
    judge_answers,
    load_judge,
)
from viker.eval.metrics import mostly_unread, unread_replies
from viker.model import check_dtype, given_model, how_loaded, load_model
from viker.progress import bars_as_asked
from viker.prompts import GENERATION_SUFFIX
from viker.runs import (
    BENCHMARK_NAMES,
    EVAL_CONFIG,
    as_recorded,
    check_eval_out,
    other_benchmark,
    other_split,
    read_configs,
    read_json,
    read_records,
    scored_run,
    scored_weights,
    write_eval_config,
    write_json,
    written_together,
)


def write_generations(path: Path, records: list[dict]) -> None:
    """Every prompt, reference and answer, a JSON line each (into a staging folder: viker.runs.written_together)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def check_nothing_lost(out: str | Path, benchmark: str, cfg) -> None:
    """An evaluation into the folder of an earlier one replaces it: refused where the earlier one holds figures
    this one would not write (another benchmark's; on MLLMU-Bench a wider --only, factuality from a --judge,
    gib from a --gib-model; on CLEAR, forget quality against a --retain-model)."""
    earlier = read_configs(out)[1] if Path(out, "metrics.json").is_file() else None
    if not earlier:
        return
    was, before = earlier.get("benchmark", "mllmu"), earlier.get("eval") or {}

    def covered(scope: dict | None) -> set[tuple[str, str]]:
        return {(s, t) for s in SETS for t in TASKS if scope is None or t in scope.get(s, ())}

    if was != benchmark:
        lost = [f"its {BENCHMARK_NAMES.get(was, was)} figures"]
    elif benchmark == "clear":
        lost = [f"forget quality against --retain-model {before['retain_model']}"] \
            if before.get("retain_model") and not cfg.retain_model else []
    else:
        lost = [f"{s}:{t}" for s, t in sorted(covered(before.get("scope")) - covered(cfg.scope))]
        if before.get("judge") and not cfg.judge:
            lost.append(f"factuality by --judge {before['judge']}")
        if before.get("gib_model") and not cfg.gib_model:
            lost.append("gib by --gib-model")
    if lost:
        raise VikerError(f"--out {out}: holds an evaluation with figures this one would not write ({', '.join(lost)}) "
                         "and would replace; evaluate into a folder of its own, or delete its metrics.json first")


def replaced_scorers(out: str | Path, cfg: EvalConfig) -> dict[str, str]:
    """Per flag (``--judge``, ``--gib-model``), the warning that the earlier MLLMU-Bench evaluation in ``out`` was
    scored by another judge or classifier, whose scores this one replaces: said once it has replaced them."""
    earlier = read_configs(out)[1] if Path(out, "metrics.json").is_file() else None
    if not earlier or earlier.get("benchmark", "mllmu") != "mllmu":
        return {}
    before = earlier.get("eval") or {}
    return {flag: f"--out {out} was scored by {flag} {was_by}; its scores are replaced by {now_by}'s"
            for flag, was_by, now_by in (("--judge", before.get("judge"), cfg.judge),
                                         ("--gib-model", before.get("gib_model"),
                                          cfg.gib_model and as_recorded(cfg.gib_model)))
            if was_by and now_by and was_by != now_by}  # as `viker judge` says of it


@bars_as_asked
def run_eval(model_path: str, data: str, out: str, cfg: EvalConfig | None = None, device=None, dtype="auto",
             trust_remote_code=False, progress=True, model_and_processor=None) -> dict:
    """``viker eval`` on MLLMU-Bench (or the embedded benchmark): writes ``out``'s metrics.json, generations.jsonl
    and settings (all or none), and returns the metrics. ``model_and_processor`` skips loading; it must be the
    model ``model_path`` names, which the evaluation records as the one it scored. ``cfg`` None: ``EvalConfig()``,
    as ``viker eval`` runs with no options."""
    cfg = EvalConfig() if cfg is None else cfg
    check_config(cfg, EvalConfig, "run_eval")
    check_dtype(dtype)
    if model_and_processor is not None:
        model_and_processor = given_model(model_and_processor, dtype, device)
    check_eval_out(model_path, out, data)
    check_nothing_lost(out, "mllmu", cfg)
    replacing = replaced_scorers(out, cfg)
    sets = eval_sets(data, cfg)  # a wrong --data or split is refused before the model loads
    if not any(s.left_out for s in sets):  # a --retain-limit that left nobody out is recorded as none: everyone
        cfg = replace(cfg, retain_limit=None)
    for warning in (other_benchmark(model_path, data), other_split(model_path, cfg.forget, "mllmu")):
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    for flag, scorer, what in (("--judge", cfg.judge, "the judge"), ("--gib-model", cfg.gib_model, "the classifier")):
        if scorer and cfg.scope is not None and not any("generation" in tasks for tasks in cfg.scope.values()):
            raise VikerError(f"{flag} {scorer}: {what} scores generation answers, and --only asks none")
    if cfg.judge:
        load_judge(cfg.judge)  # and a judge that cannot be imported
    loaded_run = scored_run(model_path)  # the run as the model loaded is: held to it when the figures are written
    model, processor = model_and_processor or load_model(model_path, device, dtype, trust_remote_code,
                                                         merge_adapter=False)
    scored_files = scored_weights(model_path)  # of the model loaded
    try:
        metrics, records = evaluate(model, processor, data, cfg, progress=progress, sets=sets,
                                    desc=f"evaluating ({Path(out).name})")  # which, among a demo's bars
        failed = None
    except JudgeFailed as e:  # every other figure and answer is kept, recorded as an evaluation without a judge
        metrics, records, failed, judge = e.metrics, e.records, e, cfg.judge
        cfg = replace(cfg, judge=None)
        replacing.pop("--judge", None)  # the earlier judge's scores are dropped: the error below says so
    for warning in replacing.values():
        print(f"warning: {warning}", file=sys.stderr)
    if unparsed := mostly_unread(metrics):
        shares = ", ".join(f"{k} {v:.0f}%" for k, v in unparsed.items())
        print(f"warning: most letter-mode replies {unread_replies(cfg.mc_mode)} ({shares}); they count as wrong. "
              "A model that never learned to answer with a letter is scored with --mc-mode likelihood", file=sys.stderr)
    out = Path(out)
    with written_together(out) as stage:  # all or none: never some of an earlier evaluation's files beside these
        write_eval_config(out, {"model": as_recorded(model_path), **scored_files, **how_loaded(model),
                                "data": as_recorded(data),
                                "benchmark": "mllmu", "eval": asdict(cfg) | {
                                    "gib_model": cfg.gib_model and as_recorded(cfg.gib_model)}}, data, into=stage,
                          loaded_run=loaded_run)
        write_json(stage / "metrics.json", metrics)
        write_generations(stage / "generations.jsonl", records)
    if failed:
        raise VikerError(f"{failed}. The other metrics and every answer are written to {out}, without factuality, "
                         f"which `viker judge {out} --judge {judge}` adds once the judge works")
    return metrics


def run_judge(run: str | Path, spec: str) -> dict:
    """``viker judge``: MLLMU-Bench's factuality of the generation answers an evaluation in ``run`` wrote
    (``generations.jsonl``), without generating them again (after a judge failed, or to add one): each record
    gets its score, ``metrics.json`` the sets' ``*_factuality``, and the evaluation's settings name the judge.
    Returns the metrics."""
    run = Path(run)
    answers, figures = run / "generations.jsonl", run / "metrics.json"
    evaluation = read_configs(run)[1] if run.is_dir() else None
    if evaluation is None or not answers.is_file() or not figures.is_file():
        raise VikerError(f"{run}: no evaluation of viker's here (its settings, metrics.json and generations.jsonl); "
                         "viker eval writes one")
    if evaluation.get("benchmark", "mllmu") != "mllmu":
        raise VikerError(f"{run}: a {evaluation['benchmark']} evaluation; the factuality judge is MLLMU-Bench's")
    judge = load_judge(spec)
    records, earlier_metrics = read_records(answers), read_json(figures)
    if not isinstance(earlier_metrics, dict):  # checked before the judge is paid for
        raise VikerError(f"{figures}: holds no evaluation's figures (a JSON object of metrics); evaluate again")
    to_judge = []  # each set's generation answers, as the evaluation judges them: the questions as the benchmark asks
    for name in dict.fromkeys(r["set"] for r in records if r["task"] == "generation"):
        at = [i for i, r in enumerate(records) if r["set"] == name and r["task"] == "generation"]
        if at != list(range(at[0], at[0] + len(at))):
            raise VikerError(f"{answers}: the {name} set's generation answers are not together, as viker eval "
                             "writes them")
        to_judge.append((name, [records[i]["question"].removesuffix(f"\n{GENERATION_SUFFIX}") for i in at], at[0]))
    if not records:
        raise VikerError(f"{answers}: holds no answers (cut short?); evaluate again")
    if not to_judge:
        raise VikerError(f"{run}: its evaluation has no generation answers to judge (scoped with --only to other "
                         "tasks)")
    metrics = earlier_metrics | judge_answers(judge, spec, to_judge, records)  # all or nothing
    earlier = (evaluation.get("eval") or {}).get("judge")
    if earlier and earlier != spec:  # asked for, but said: another judge's scores may have been paid for
        print(f"warning: {run} was judged by {earlier}; its factuality scores are replaced by {spec}'s",
              file=sys.stderr)
    settings = run / EVAL_CONFIG if (run / EVAL_CONFIG).is_file() else run / "config.json"
    recorded = read_json(settings)
    recorded["eval"] = {**recorded.get("eval", {}), "judge": spec}
    with written_together(run) as stage:  # the scores, the figures and the judge named, all or none
        write_generations(stage / answers.name, records)
        write_json(stage / figures.name, metrics)
        write_json(stage / settings.name, recorded)
    return metrics
