"""The folder a training run writes: new or empty, replaced whole where asked (``--overwrite``), or continued
from its checkpoint (``--resume``) with the settings, data and starting weights it began with."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Callable, Sequence

from viker.errors import VikerError
from viker.runs import (
    CHECKPOINT,
    EVAL_CONFIG,
    TRAINING_METRICS,
    checkpoints,
    differing,
    file_hashes,
    flat,
    holds_finished_model,
    model_folder,
    out_folder,
    read_configs,
    to_jsonable,
    visible_entries,
)


def check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    """A run either goes on with the run in its folder or replaces it: both asked is refused, not one of them
    silently dropped."""
    if resume and overwrite:
        raise VikerError("--resume goes on with the run in --out, --overwrite replaces it: give one of them")


def check_run_folder(out: str | Path, accelerator, resume: bool = False, overwrite: bool = False,
                     reads: Sequence[str | Path] = ()) -> bool:
    """Whether a new run may write into ``out``: a new or empty folder, or (``overwrite``) one that holds an
    earlier run of ours, to be removed whole (True: :func:`claim_run_folder` does it), so that none of its
    files (an evaluation's metrics, above all) is taken for the new run's; anything else is refused.
    ``resume`` continues the run already there. ``reads``: the folders the run reads (model, data), which
    must not lie inside one it removes. Called before the model loads, so that a refusal comes at once;
    on several processes each looks before any goes on."""
    try:
        return _folder_to_replace(out_folder(out), resume, overwrite, reads)
    finally:
        accelerator.wait_for_everyone()


def claim_run_folder(out: str | Path, accelerator, replace: bool) -> None:
    """Remove the earlier run in ``out`` that :func:`check_run_folder` found to be replaced, once every check
    of the new run has passed (so that a run that cannot start removes nothing); the main process removes
    it while the others wait. What is in the folder goes, the folder stays: an ``out`` that is a link to a
    folder elsewhere keeps pointing there."""
    if replace:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            # its config.json last: a removal stopped midway leaves a folder that reads as the run, which
            # --overwrite replaces again (without it, the rest read as "something other than a run")
            for entry in sorted(Path(out).iterdir(), key=lambda entry: entry.name == "config.json"):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        accelerator.wait_for_everyone()


# the folders a training run writes (model/, CAGUL's cagul/, snapshots' epochs/, the checkpoint), and their
# .partial, .tmp and .old siblings while they are written
RUN_PARTS = {f"{part}{suffix}" for part in ("model", "cagul", "epochs", CHECKPOINT)
             for suffix in ("", ".partial", ".tmp", ".old")}


# the files a run and an evaluation written into its folder put there (and their .tmp while written)
RUN_FILES = {f"{name}{suffix}" for name in ("config.json", "history.json", "timing.json", TRAINING_METRICS,
                                            "metrics.json", "generations.jsonl", EVAL_CONFIG,
                                            "forget_truth_ratios.json", "retain_model_truth_ratios.json")
             for suffix in ("", ".tmp")}


def _of_the_run(out: Path, name: str) -> bool:
    """Whether ``out/name`` is the run's own: a file or folder it writes, or an evaluation of a model inside it (its
    model or a snapshot, being replaced, as an evaluation written into ``out`` itself is)."""
    if name in RUN_PARTS or name in RUN_FILES:
        return True
    if not (out / name).is_dir():  # a file of the user's (notes, a page, a copy of a figure)
        return False
    config, evaluation = read_configs(out / name)
    scored = (evaluation or {}).get("model") if config.get("command") == "eval" else None
    where = model_folder(scored) if scored and Path(scored).is_absolute() else None  # a hub id is no folder here
    return where is not None and (where == out.resolve() or out.resolve() in where.parents)  # a CAGUL run's is out


def _folder_to_replace(out: Path, resume: bool, overwrite: bool, reads: Sequence[str | Path]) -> bool:
    if resume or not visible_entries(out):  # a new folder, or one with hidden files alone (.DS_Store)
        return False
    command = read_configs(out)[0].get("command")
    root = out.resolve()
    if command is None:
        read = next((str(p) for p in reads if Path(p).exists() and Path(p).resolve() == root), None)
        what = f"is {read}, which this run reads (--model, --data, --reference-model or --refs)" if read else \
            "holds files of something other than a run (a model?)"
        raise VikerError(f"--out {out}: {what}; choose a new or empty folder")
    inside = [str(p) for p in reads if Path(p).exists() and root in (Path(p).resolve(), *Path(p).resolve().parents)]
    if inside:  # never to be replaced: --overwrite is no way out
        held = "--overwrite would remove" if overwrite else f"holds a `viker {command}` run, with"
        raise VikerError(f"--out {out}: {held} {inside[0]}, which this run reads; choose another folder")
    if not overwrite:
        stopped = bool(checkpoints(out))
        # a training run with no model and no checkpoint was stopped before its first checkpoint (or as it saved)
        unfinished = command in ("finetune", "unlearn") and not stopped and not holds_finished_model(out)
        held = "an unfinished" if stopped or unfinished else "a"
        then = " (it keeps no checkpoint to --resume from)" if unfinished else " (or --resume to continue it)" \
            if stopped else ""
        raise VikerError(f"--out {out}: holds {held} `viker {command}` run already; choose another folder, or "
                         f"--overwrite to replace it{then}")
    # what is not the run's (another run kept inside it, a user's copy of its model, their notes) is not replaced
    other = [name for name in visible_entries(out) if not _of_the_run(out, name)]
    if other:
        raise VikerError(f"--out {out}: --overwrite would remove {out / other[0]}, which is no part of the "
                         f"`viker {command}` run there; move it out, or choose another folder")
    return True


def used_settings(recorded: dict) -> dict:
    """A training run's settings (``FinetuneConfig`` or ``UnlearnConfig``, as recorded) without those it never
    reads: the tiny model's sizes when it trains another model, LoRA's when it trains every weight, and the
    tuning and LoRA's when it is CAGUL (which trains modules of its own)."""
    unused = {"lora"} if recorded.get("tuning") == "full" else set()
    if recorded.get("method") == "cagul":
        unused |= {"lora", "tuning"}
    if recorded.get("model", "tiny") != "tiny":
        unused.add("tiny")
    return {k: v for k, v in recorded.items() if k not in unused}


# --save's values, by what a run's lora.merge records of them (auto: None, chosen when the run starts)
SAVE_CHOICES = {None: "auto", True: "merged", False: "adapter"}
# settings whose record is a code for an option: the option, and what each value of the record gives it
RESUME_SHOWN = {"lora.merge": ("--save", SAVE_CHOICES)}
# the settings of a record that are options of `viker finetune` and `viker unlearn` of the same name
OPTIONS = {"": ("model", "data", "benchmark", "forget", "method", "tuning", "dtype", "max_length", "train_on",
                "without"),
           "train": ("epochs", "max_steps", "batch_size", "grad_accum", "lr", "seed", "mixed_precision",
                     "gradient_checkpointing", "snapshot_every"),
           "tiny": ("family", "seed")}


def option_of(key: str) -> str:
    """A setting of a run's record (``train.lr``, ``method_args.beta``, ``lora.r``) as the command line names it
    (``--lr``, ``--beta``, ``--lora-r``); one no option sets (``train.warmup_ratio``), as recorded."""
    if key in RESUME_SHOWN:
        return RESUME_SHOWN[key][0]
    group, _, name = key.rpartition(".")
    if group == "method_args" or name in OPTIONS.get(group, ()):
        return "--" + name.replace("_", "-")
    return f"--lora-{name}" if group == "lora" else key


def kept_checkpoints(cfg, started: dict, command: str):
    """``cfg`` (a run's config, its ``train`` resolved) with the checkpoint interval of the run a --resume goes on
    with, where none is given: resumed without --checkpoint-every, it wrote none, and a second interruption lost
    every step since the first."""
    from dataclasses import replace

    was = ((started.get(command) or {}).get("train") or {}).get("checkpoint_every") or 0
    return replace(cfg, train=replace(cfg.train, checkpoint_every=was)) if was and not cfg.train.checkpoint_every \
        else cfg


# what a resumed run may change; `out` too: a run folder moved or copied elsewhere (a pre-empted job) goes on there
# (and --data and --model, where the files the run recorded by hash are those there)
RESUME_FREE = ("cache_dir", "device", "trust_remote_code", "checkpoint_every", "out")


def check_resumed_precision(out: str | Path, accelerator) -> None:
    """A resumed run goes on under the autocast it ran under (``runtime.mixed_precision`` in its config, from
    --mixed-precision or the launcher's setting): one resumed without the launcher's bf16 went on in float32."""
    ran = read_configs(out)[0].get("runtime", {}).get("mixed_precision")
    if ran is not None and ran != accelerator.mixed_precision:
        raise VikerError(f"--resume: the run trained under mixed precision {ran} (given with --mixed-precision or "
                         f"by its launcher's config) and would go on under {accelerator.mixed_precision}; give "
                         f"--mixed-precision {ran} with --resume")


def check_resume(out: str | Path, command: str, settings: dict, data_dir: str | Path | None = None,
                 model_files: dict[str, str] | None = None, resolve: Callable[[dict], dict] | None = None) -> None:
    """A resumed run goes on with the settings it was started with (``settings``: what its config.json records
    under ``command``), the data files it read (``data_dir``'s, by hash) and the weights of the model it
    started from (``model_files``: :func:`viker.model.weight_hashes`), so that it ends where the uninterrupted
    run would; only ``RESUME_FREE`` may differ. ``resolve`` maps both records to the settings a run reads (a
    default given or left out alike), where they are compared."""
    from viker.model import DTYPES, check_weights_unchanged, same_weights

    def same(key: str, was, is_) -> bool:  # --dtype's spellings of one dtype (bf16, bfloat16) are one setting
        return DTYPES[was] == DTYPES[is_] if key.endswith("dtype") and {was, is_} <= DTYPES.keys() else was == is_

    config = read_configs(out)[0]
    if config.get("command") != command:
        raise VikerError(f"--resume: {out} holds no {command} run to continue")
    if not checkpoints(out):  # a finished run, or one stopped before its first checkpoint: nothing to go on from
        if holds_finished_model(Path(out)):
            raise VikerError(f"--resume: {out} holds a finished run (its model is saved): there is nothing to "
                             "resume")
        raise VikerError(f"--resume: {out} has no checkpoint to resume from (a run keeps one while it trains with "
                         "--checkpoint-every N, and removes it when it ends); --overwrite starts it again")
    resolve = resolve or (lambda recorded: recorded)
    # a benchmark folder moved (or copied) elsewhere goes on where the run recorded its files' hashes, which are
    # compared below: the same files, wherever they are
    by_hash = {"data"} if "data_files" in config and data_dir is not None and Path(data_dir).is_dir() else set()
    # and so does a model folder moved elsewhere whose weight files are those the run started from
    model_moved = model_files is not None and same_weights(config.get("model_files"), model_files)
    by_hash |= {"model"} if model_moved else set()
    # the autocast the run ran under is compared as used, once the launcher's part in it is known
    # (check_resumed_precision): --mixed-precision no and none given, no launcher setting, are one
    by_hash |= {"train.mixed_precision"} if "mixed_precision" in config.get("runtime", {}) else set()
    # both as the run reads them: a record from before the settings it never read were left out compares alike
    before, now = (flat(used_settings(resolve(s))) for s in (config[command], to_jsonable(settings)))
    changed = [k for k in sorted(before.keys() | now.keys()) if k.rsplit(".", 1)[-1] not in RESUME_FREE
               and k not in by_hash and not same(k, before.get(k), now.get(k))]
    if changed:
        key = changed[0]
        argv = (config.get("earlier_parts") or [config])[0].get("argv") or []  # its first part's, not a --resume
        started = f" (it was started as `viker {shlex.join(argv[1:])}`: give those options again with --resume)" \
            if argv[1:2] == [command] else ""
        shown = RESUME_SHOWN.get(key, (key, None))[1]
        was, is_ = (shown.get(value, value) if shown else value for value in (before.get(key), now.get(key)))
        raise VikerError(f"--resume: {option_of(key)} was {was} when the run started and is {is_} now; "
                         f"a resumed run keeps the settings in {Path(out) / 'config.json'}{started}")
    if "data_files" in config and data_dir is not None and Path(data_dir).is_dir():
        changed = differing(config["data_files"], file_hashes(data_dir))
        if changed:
            raise VikerError(f"--resume: {Path(data_dir) / changed[0]} is not the file the run started with "
                             f"({len(changed)} data file(s) differ from those {Path(out) / 'config.json'} records)")
    if model_files is not None:  # the same files moved elsewhere pass
        check_weights_unchanged(out, model_files, "--resume")
