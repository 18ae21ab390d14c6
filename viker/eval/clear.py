"""CLEAR's evaluation: ROUGE-L recall, Prob. and truth ratio on the forget split, the retain persons and
the real world; forget quality against a model trained without the forget set; model utility.

Per item (:class:`viker.data.clear.EvalItem`) the model gives the teacher-forced loss (mean NLL over
the answer tokens) of the answer, of the paraphrase and of every perturbed answer, and a greedy reply.
Each distinct (question, image, answer) is scored once and each distinct (question, image) generated
once, all sets in the same batches. Every metric is in [0, 1], as CLEAR reports them:

- ``{set}_rougeL_recall``: ROUGE-L recall (stemmed) of the reply against the answer;
- ``{set}_prob``: exp(-loss) of the answer for captions; for names and real-world questions, the
  answer's share P(answer) / (P(answer) + Σ P(wrong)) with per-token probabilities exp(-loss);
- ``{set}_truth_ratio``: tr = exp(mean loss of the perturbed answers - loss of the paraphrase) per item,
  reported as mean(min(tr, 1/tr)) on the forget sets and mean(max(0, 1 - 1/tr)) elsewhere;
- ``forget_quality``: the p-value of the two-sample KS test between the forget captions' truth ratios
  and those of a model trained without the forget set (``retain_model``); None without one;
- ``model_utility``: the harmonic mean of the twelve non-forget metrics above.

Besides CLEAR's own measures, ``{set}_coherence`` is the offline coherence of the replies
(:func:`viker.eval.metrics.coherence`, in percent as on MLLMU-Bench), and ``coherence`` that of the replies
on the forget captions: replies that fell apart score near zero on every forgetting measure without having
forgotten anything, and the report does not mark them best there.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from viker.data.clear import EVAL_SETS, FORGET_SETS, PERTURBED, TOFU, EvalItem, eval_items, forget_base
from viker.data.loader import config_files
from viker.data.schema import Example
from viker.errors import VikerError, check_config, check_types, require
from viker.eval import metrics as M
from viker.eval.evaluate import answer_logprobs
from viker.eval.generate import check_generation_settings, generate
from viker.progress import bars_as_asked
from viker.runs import (
    as_recorded,
    check_eval_out,
    file_hashes,
    flat,
    model_named,
    other_benchmark,
    other_split,
    runs_behind,
    scored_run,
    scored_weights,
    write_eval_config,
    write_json,
    written_together,
)

TRUTH_RATIOS = "forget_truth_ratios.json"  # per-item truth ratios of an evaluated model, reusable as a --retain-model
RETAIN_TRUTH_RATIOS = "retain_model_truth_ratios.json"  # the same, of the --retain-model when it was evaluated here
METRICS = ("rougeL_recall", "prob", "truth_ratio")
UTILITY_KEYS = tuple(f"{s}_{m}" for s, _, _ in EVAL_SETS if s not in FORGET_SETS for m in METRICS)


@dataclass
class ClearEvalConfig:
    forget: str = "forget10"
    batch_size: int = 32
    max_new_tokens: int = 100  # captions are a sentence or two; CLEAR itself generates up to 300 tokens
    retain_model: str | None = None  # a model trained without the forget set, or its truth-ratio file
    retain_limit: int | None = None  # evaluate at most this many retain_perturbed rows (None: all)

    def __post_init__(self):
        check_types(self)
        check_generation_settings(self)


@dataclass(frozen=True)
class ItemScore:
    """What the model gave on one item: mean per-token losses and the reply's ROUGE-L recall."""

    answer_loss: float
    paraphrase_loss: float
    perturbed_losses: tuple[float, ...]
    rougeL_recall: float = 0.0

    @property
    def truth_ratio(self) -> float:
        return M.truth_ratio(self.paraphrase_loss, self.perturbed_losses)

    def prob(self, option_share: bool) -> float:
        if option_share:
            return M.option_prob(-self.answer_loss, [-loss for loss in self.perturbed_losses])
        return M.prob_from_loss(self.answer_loss)


def set_metrics(scores: list[ItemScore], forget: bool, option_share: bool) -> dict[str, float]:
    """ROUGE-L recall, Prob. and the truth-ratio score of one set (see the module docstring)."""
    if not scores:
        raise ValueError("a set without items has no score")
    return {"rougeL_recall": statistics.fmean(s.rougeL_recall for s in scores),
            "prob": statistics.fmean(s.prob(option_share) for s in scores),
            "truth_ratio": M.truth_ratio_score([s.truth_ratio for s in scores], forget)}


def model_utility(metrics: dict[str, float]) -> float:
    """Harmonic mean of the retain, retain-name, real-faces and real-world metrics: 0 if any is 0."""
    return M.harmonic_mean(metrics[k] for k in UTILITY_KEYS)


def _examples(item: EvalItem) -> list[Example]:
    answers = (item.answer, item.paraphrase, *item.perturbed)
    return [Example(item.question, a, item.image, item.person) for a in answers]


def item_losses(model, processor, items: list[EvalItem], batch_size: int) -> list[tuple[float, float, tuple]]:
    """(answer loss, paraphrase loss, perturbed losses) of every item, each distinct text scored once."""
    keys = {(ex.question, ex.answer, ex.image): ex for item in items for ex in _examples(item)}
    scored = answer_logprobs(model, processor, list(keys.values()), batch_size)
    loss = {key: -total / n for key, (total, n) in zip(keys, scored)}
    out = []
    for item in items:
        answer, paraphrase, *perturbed = [loss[(ex.question, ex.answer, ex.image)] for ex in _examples(item)]
        out.append((answer, paraphrase, tuple(perturbed)))
    return out


def clear_eval_sets(data: str | Path, cfg: ClearEvalConfig) -> tuple[dict[str, list], dict[str, int], int]:
    """The items of each evaluated set (the retain sets cut to ``cfg.retain_limit``), how many rows of each
    config were skipped, and how many items the limit left out; refused when a set is empty."""
    sets, skipped = eval_items(data, cfg.forget)
    whole = sum(len(sets[name]) for name in ("retain", "retain_names"))
    for name in ("retain", "retain_names"):
        sets[name] = sets[name][:cfg.retain_limit]
    for name, items in sets.items():
        if not items:
            why = (f" (its {skipped[name]} rows were skipped: no option of theirs differs from the answer)"
                   if skipped.get(name) else "")
            raise VikerError(f"{data}: the {name} set has no items to evaluate{why}")
    for name, n in skipped.items():  # left out of every figure: said as it happens, and counted in metrics.json
        if n:
            print(f"warning: {data}: {n} {name} row{'s' * (n != 1)} skipped, no option of "
                  f"{'theirs' if n != 1 else 'its'} differing from the answer ({name}_skipped in metrics.json)",
                  file=sys.stderr)
    return sets, skipped, whole - sum(len(sets[name]) for name in ("retain", "retain_names"))


def evaluate_clear(model, processor, data: str | Path, cfg: ClearEvalConfig, progress: bool = True,
                   read: tuple[dict[str, list], dict[str, int], int] | None = None):
    """Returns (metrics, one record per item, per-item truth ratios of the forget sets). ``read``:
    :func:`clear_eval_sets` already read (a command reads them before loading a model)."""
    sets, skipped, _ = clear_eval_sets(data, cfg) if read is None else read
    items = [item for name, _, _ in EVAL_SETS for item in sets[name]]
    losses = item_losses(model, processor, items, cfg.batch_size)
    prompts = {(it.question, it.image): Example(it.question, "", it.image) for it in items}
    replies = dict(zip(prompts, generate(model, processor, list(prompts.values()), batch_size=cfg.batch_size,
                                         max_new_tokens=cfg.max_new_tokens, desc="generating", progress=progress)))
    metrics: dict = {}
    records, ratios, start = [], {}, 0
    for name, task, option_share in EVAL_SETS:
        chunk = sets[name]
        scores, said = [], []
        for item, (answer, paraphrase, perturbed) in zip(chunk, losses[start:start + len(chunk)]):
            reply = replies[(item.question, item.image)]
            said.append(reply)
            score = ItemScore(answer, paraphrase, perturbed, M.rougeL_recall(reply, item.answer))
            scores.append(score)
            records.append({"set": name, "task": task, "person": item.person, "image": True,
                            "question": item.question, "reference": item.answer, "answer": reply,
                            "rougeL_recall": score.rougeL_recall, "prob": score.prob(option_share),
                            "truth_ratio": score.truth_ratio, "loss": answer})
        start += len(chunk)
        metrics |= {f"{name}_{k}": v for k, v in set_metrics(scores, name in FORGET_SETS, option_share).items()}
        metrics[f"{name}_coherence"] = M.coherence_mean(said)
        metrics[f"{name}_items"] = len(chunk)
        if name in FORGET_SETS:
            ratios[name] = [s.truth_ratio for s in scores]
    metrics |= {f"{config}_skipped": n for config, n in skipped.items()}
    metrics["model_utility"] = model_utility(metrics)
    metrics["coherence"] = metrics["forget_coherence"]  # as MLLMU-Bench's column: the replies on the forget set
    return metrics, records, ratios


def forget_truth_ratios(model, processor, data: str | Path, forget: str, batch_size: int) -> dict[str, list[float]]:
    """Per-item truth ratios of the forget sets alone (no generation): what a --retain-model contributes."""
    sets, _ = eval_items(data, forget)
    out = {}
    for name in FORGET_SETS:
        out[name] = [M.truth_ratio(p, q) for _, p, q in item_losses(model, processor, sets[name], batch_size)]
    return out


def forget_files(data: str | Path, forget: str) -> dict[str, str] | None:
    """sha256 of the files the forget truth ratios are scored from (the split's ``_perturbed`` config), by
    name; None for a benchmark read by hub id."""
    root = Path(data).expanduser()
    if not root.is_dir():
        return None
    names = {str(path.relative_to(root)) for path in config_files(root, forget_base(forget) + PERTURBED)}
    return {name: digest for name, digest in file_hashes(root).items() if name in names}


def truth_ratio_file(model: str, forget: str, ratios: dict[str, list[float]], data: str | Path) -> dict:
    return {"benchmark": "clear", "forget_split": forget_base(forget), "model": model,
            "data_files": forget_files(data, forget), "truth_ratios": ratios}


def read_truth_ratios(path: Path, forget: str, data: str | Path) -> dict[str, list[float]]:
    """The forget truth ratios a previous evaluation saved, checked to be of the same forget split, scored on
    the same files (as far as the file and ``data`` record them: the same bytes under any layout)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        ratios = {name: [float(x) for x in saved["truth_ratios"][name]] for name in FORGET_SETS}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise VikerError(f"{path}: not a truth-ratio file of `viker eval --benchmark clear` ({e})") from None
    # a ratio is exp(a difference of losses): never below 0, and NaN only from a loss that was no number (an
    # overflow in 16 bits), which would leave forget quality unmeasured without a word (0 and inf are its
    # underflow and overflow)
    if bad := next(((name, i, x) for name in FORGET_SETS for i, x in enumerate(ratios[name])
                    if math.isnan(x) or x < 0), None):
        raise VikerError(f"{path}: {bad[0]} truth ratio {bad[1]} is {bad[2]}, which no truth ratio (exp of a "
                         "difference of losses) is (NaN: a loss that was no number, as an overflow in 16 bits gives); "
                         "score the retain model again (--retain-model with its model)")
    if saved.get("forget_split") != forget_base(forget):
        raise VikerError(f"{path}: truth ratios of {saved.get('forget_split')}, not of {forget_base(forget)}")
    then, now = saved.get("data_files"), forget_files(data, forget)
    if isinstance(then, dict) and now is not None and sorted(then.values()) != sorted(now.values()):
        raise VikerError(f"{path}: truth ratios scored on other files than {data}'s {forget_base(forget)}{PERTURBED} "
                         "(another release or seed of the benchmark, or edited since): score the retain model on this "
                         "data (--retain-model with its model)")
    return ratios


def retain_model_folder(spec: str | Path) -> str:
    """The model a ``--retain-model`` stands for (:func:`model_named`): the one its truth ratios were scored from
    (named when they were, so a model moved away since is still the same one), or the model it names."""
    saved = saved_ratios(spec)
    if saved is not None:
        try:
            spec = json.loads(saved.read_text(encoding="utf-8"))["model"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return str(spec)  # read_truth_ratios says what is wrong with the file
    return model_named(spec)


def saved_ratios(spec: str | Path) -> Path | None:
    """The truth-ratio file a ``--retain-model`` names: the file itself, the one beside a metrics.json, or
    the one in an evaluation's folder; None when it names a model to evaluate."""
    spec = Path(spec)
    saved = spec.parent / TRUTH_RATIOS if spec.name == "metrics.json" else spec if spec.is_file() \
        else spec / TRUTH_RATIOS
    return saved if saved.is_file() else None


def retain_model_run(spec: str | Path) -> dict:
    """The config of the ``viker finetune``/``unlearn`` run behind a ``--retain-model``: the run whose model
    it names, or whose model its truth ratios were scored from; empty for a model from elsewhere."""
    folder = Path(retain_model_folder(spec))
    return next(runs_behind(str(folder)), {}) if folder.is_dir() else {}


def check_retain_model(spec: str | Path, forget: str, model_path: str | None = None) -> None:
    """Refuse a ``--retain-model`` that has seen the forget persons: forget quality compares with a model finetuned
    without them (``viker finetune --without``). A run of ours shows it by its configs; a model from elsewhere, by
    holding the weights an unlearning run behind ``model_path`` started from (their hashes, as that run recorded
    them): a copy of the vanilla model would give the forget quality of a model that forgot nothing."""
    from viker.model import same_weights, weight_hashes

    base = forget_base(forget)
    config, start = retain_model_run(spec), None
    if not config and model_path and Path(folder := retain_model_folder(spec)).is_dir():
        held = None
        for run in runs_behind(model_path):
            if run["command"] == "unlearn" and run.get("model_files"):
                held = held if held is not None else weight_hashes(folder)  # hashed once, where there is a record
                if same_weights(run["model_files"], held):
                    raise VikerError(f"--retain-model {spec}: the same weights as {run['unlearn'].get('model')}, "
                                     f"which {model_path} was unlearned from and which saw {base}'s persons: not a "
                                     f"model that never saw them (`viker finetune --without {base}`)")
    while config:  # the model, then the viker finetune it started from, and so on while each is a run of ours
        without = (config.get("finetune") or {}).get("without") if config["command"] == "finetune" else None
        if without is None or without.removesuffix(TOFU) != base:
            seen = ("an unlearning run" if config["command"] == "unlearn" else "finetuned on every person"
                    if without is None else f"finetuned without {without}'s persons")
            seen = f"finetuned without {base}'s persons, but from {start}, {seen}:" if start else f"{seen},"
            raise VikerError(f"--retain-model {spec}: {seen} not a model that never saw {base}'s persons "
                             f"(`viker finetune --without {base}` from a model that has not seen them)")
        start = config["finetune"].get("model")
        config = next(runs_behind(start), {}) if start else {}


# the settings of a finetune that make its recipe (each compared where both runs record it), by how a warning names
# them; its budget, batch, precision and starting model are compared as the run read them (other_recipe)
RECIPE = {"train.lr": "--lr", "train.weight_decay": "weight decay", "train.warmup_ratio": "warm-up ratio",
          "train.scheduler": "schedule", "train.max_grad_norm": "gradient clipping", "tuning": "--tuning",
          "lora.r": "--lora-r", "lora.alpha": "--lora-alpha", "lora.dropout": "--lora-dropout",
          "lora.target_modules": "LoRA's target modules", "tiny.family": "--family"}


def _recipe(run: dict) -> dict[str, object]:
    """A `viker finetune` run's recipe, as :func:`other_recipe` compares it: by the names a warning gives."""
    from viker.run_folder import used_settings

    settings, ran = flat(used_settings(run["finetune"])), run.get("runtime", {})
    recipe = {name: settings[key] for key, name in RECIPE.items() if key in settings}
    recipe |= {f"the tiny model's {key.removeprefix('tiny.')}": value for key, value in settings.items()
               if key.startswith("tiny.") and key not in ("tiny.seed", "tiny.family")}
    steps, epochs = settings.get("train.max_steps"), settings.get("train.epochs")
    recipe["budget"] = f"--max-steps {steps}" if steps else f"--epochs {epochs:g}" if epochs is not None else None
    if None not in (batch := (settings.get("train.batch_size"), settings.get("train.grad_accum"))):
        recipe["--batch-size × --grad-accum"] = batch[0] * batch[1]  # the examples of one step, however split
    for key in ("mixed_precision", "weights_dtype"):  # as it ran (under accelerate launch's choice too)
        if ran.get(key) is not None:
            recipe[key.replace("_", " ")] = ran[key]
    # the weights it started from: by their hashes where both are files here (a copy elsewhere is the same
    # model), else by name (a hub id)
    recipe["--model"] = sorted(run["model_files"].values()) if run.get("model_files") else settings.get("model")
    return recipe


def other_recipe(spec: str | Path, model_path: str) -> str | None:
    """A warning where the ``--retain-model`` was finetuned otherwise than the vanilla model behind ``model_path``
    (the `viker finetune` run its chain of runs starts from): CLEAR's retain model is trained as that one was,
    without the forget persons, so that forget quality measures the forgetting alone."""
    from viker.runs import model_folder, run_folders_behind

    retain = retain_model_run(spec)
    folder, vanilla = next(((f, run) for f, run in run_folders_behind(model_path) if run["command"] == "finetune"),
                           (None, None))
    if retain.get("command") != "finetune" or vanilla is None:
        return None
    theirs, ours = _recipe(retain), _recipe(vanilla)
    if isinstance(theirs["--model"], list) != isinstance(ours["--model"], list):  # hashes on one side alone
        theirs["--model"], ours["--model"] = retain["finetune"].get("model"), vanilla["finetune"].get("model")
    differ = [name for name in theirs.keys() & ours.keys() if theirs[name] != ours[name]]
    if not differ:
        return None
    said = []
    for name in sorted(differ):
        mine, its = (retain["finetune"].get("model"), vanilla["finetune"].get("model")) if name == "--model" else \
            (theirs[name], ours[name])  # a model by its name, not its hashes
        said.append(f"{mine}, not {its}" if name == "budget" else f"{name} {mine}, not {its}")
    which = f"{model_path}, the vanilla run" if model_folder(model_path) == model_folder(folder) else \
        f"the vanilla run {folder} that {model_path} comes from"
    return (f"--retain-model {spec} was finetuned otherwise than {which}: {'; '.join(said)}. Forget quality then "
            "measures that difference too; finetune the retain model with the vanilla run's settings and --without")


def retain_model_truth_ratios(cfg: ClearEvalConfig, data: str | Path, device=None, dtype="auto",
                              trust_remote_code=False) -> tuple[dict[str, list[float]], bool]:
    """The forget truth ratios of the model trained without the forget set, and whether they were
    computed here: read from a truth-ratio file (or the folder of an evaluation that wrote one, or
    beside its metrics.json), else computed by evaluating ``cfg.retain_model`` (a model or run folder)."""
    from viker.model import load_model

    check_retain_model(cfg.retain_model, cfg.forget)
    saved = saved_ratios(cfg.retain_model)
    if saved is not None:
        return read_truth_ratios(saved, cfg.forget, data), False
    if Path(cfg.retain_model).name == "metrics.json":  # an evaluation's figures, with no truth ratios beside them
        raise VikerError(f"--retain-model {cfg.retain_model}: no {TRUTH_RATIOS} beside it (a CLEAR evaluation writes "
                         "one); give the retain model's folder, or such an evaluation's")
    model, processor = load_model(cfg.retain_model, device, dtype, trust_remote_code, merge_adapter=False)
    return forget_truth_ratios(model, processor, data, cfg.forget, cfg.batch_size), True


@bars_as_asked
def run_clear_eval(model_path: str, data: str, out: str, cfg: ClearEvalConfig | None = None, device=None,
                   dtype="auto", trust_remote_code=False, progress=True, model_and_processor=None) -> dict:
    """``viker eval --benchmark clear``: writes metrics.json, generations.jsonl, forget_truth_ratios.json
    and its settings (``viker.runs.write_eval_config``). ``cfg`` None: ``ClearEvalConfig()``, as ``viker eval
    --benchmark clear`` runs with no options."""
    from viker.eval.run import check_nothing_lost, write_generations
    from viker.model import check_dtype, given_model, how_loaded, load_model

    cfg = ClearEvalConfig() if cfg is None else cfg
    check_config(cfg, ClearEvalConfig, "run_clear_eval")
    check_dtype(dtype)
    if model_and_processor is not None:
        model_and_processor = given_model(model_and_processor, dtype, device)
    forget_base(cfg.forget)
    if cfg.retain_model:  # recorded as the other paths are: absolute, whatever folder it was typed in
        cfg = replace(cfg, retain_model=as_recorded(cfg.retain_model))
        # a file's name mistyped: no model of that name on the hub either
        require(Path(cfg.retain_model).suffix != ".json" or Path(cfg.retain_model).is_file(), "--retain-model",
                cfg.retain_model, f"no such file (a truth-ratio file is the {TRUTH_RATIOS} that viker eval wrote "
                "in the retain model's evaluation folder)")
    check_eval_out(model_path, out, data)
    check_nothing_lost(out, "clear", cfg)
    read = clear_eval_sets(data, cfg)  # a wrong --data or split is refused before any model loads
    if not read[2]:  # a --retain-limit that left no item out is recorded as none: every item
        cfg = replace(cfg, retain_limit=None)
    if cfg.retain_model:  # a model that saw the forget persons is refused before any warning about it
        check_retain_model(cfg.retain_model, cfg.forget, model_path)
    unmeasured = None if cfg.retain_model or next(runs_behind(model_path), {}).get("command") != "unlearn" else (
        f"no --retain-model, so no forget quality, CLEAR's measure of forgetting (give the model finetuned "
        f"--without {forget_base(cfg.forget)}, or its evaluation's folder)")
    for warning in (other_benchmark(model_path, data, "clear"), other_split(model_path, cfg.forget, "clear"),
                    unmeasured, other_recipe(cfg.retain_model, model_path) if cfg.retain_model else None):
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    out = Path(out)
    retained, computed = None, False
    if cfg.retain_model:  # first: the two models are never held at once
        retained, computed = retain_model_truth_ratios(cfg, data, device, dtype, trust_remote_code)
    loaded_run = scored_run(model_path)  # the run as the model loaded is: held to it when the figures are written
    model, processor = model_and_processor or load_model(model_path, device, dtype, trust_remote_code,
                                                         merge_adapter=False)
    scored_files = scored_weights(model_path)  # of the model loaded
    metrics, records, ratios = evaluate_clear(model, processor, data, cfg, progress, read)
    metrics["forget_quality"] = None
    if retained is not None:
        if len(retained["forget"]) != len(ratios["forget"]):
            raise VikerError(f"--retain-model {cfg.retain_model}: {len(retained['forget'])} forget truth ratios, but "
                             f"this evaluation has {len(ratios['forget'])}; they come from different data")
        metrics["forget_quality"] = M.forget_quality(ratios["forget"], retained["forget"])
    # the model forget quality compares with, however --retain-model named it: what the report holds rows to
    compared = {"forget_quality_reference": retain_model_folder(cfg.retain_model)} if retained is not None else {}
    with written_together(out) as stage:  # all or none: never some of an earlier evaluation's files beside these
        write_eval_config(out, {"model": as_recorded(model_path), **scored_files, **how_loaded(model),
                                "data": as_recorded(data),
                                "benchmark": "clear", "eval": asdict(cfg), **compared}, data, into=stage,
                          loaded_run=loaded_run)
        write_json(stage / "metrics.json", metrics)
        write_json(stage / TRUTH_RATIOS, truth_ratio_file(model_named(model_path), cfg.forget, ratios, data))
        if computed:  # saved so that the next evaluation against the same retain model can pass this file
            write_json(stage / RETAIN_TRUTH_RATIOS, truth_ratio_file(model_named(cfg.retain_model), cfg.forget,
                                                                     retained, data))
        write_generations(stage / "generations.jsonl", records)
    return metrics
