"""The ``viker`` command: parse arguments, call the library, print one-line errors."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from viker import __version__
from viker.errors import VikerError
from viker.presets import (
    AVERAGES,
    FINETUNE_LORA,
    MC_MODES,
    MIXED_PRECISION,
    REAL_TRAIN,
    REAL_UNLEARN,
    TINY_CAGUL,
    TINY_TRAIN,
    TINY_UNLEARN,
    UNLEARN_LORA,
    TrainConfig,
    finetune_preset,
    unlearn_preset,
)


def _synth(args) -> None:
    from viker.data.synth import SynthConfig, build_benchmark, claim_benchmark_folder

    cfg = SynthConfig(seed=args.seed, profiles=args.profiles)  # checked before --overwrite removes anything
    counts = build_benchmark(claim_benchmark_folder(args.out, args.overwrite), cfg)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _finetune(args) -> None:
    from viker.finetune import FinetuneConfig, no_adapter, run_finetune
    from viker.model.tiny import TinyConfig

    if args.family is not None and args.model != "tiny":
        raise VikerError("--family applies to --model tiny only (a checkpoint's own config names its family)")

    train = replace(finetune_preset(args.model), **_train_overrides(args))
    cfg = FinetuneConfig(
        model=args.model, data=args.data, benchmark=args.benchmark, without=args.without, out=args.out,
        tuning=args.tuning, train=train, lora=_lora(args, no_adapter(args.model, args.tuning)),
        device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, max_length=args.max_length,
        tiny=TinyConfig(family=args.family or "llava", seed=train.seed),  # --seed: its initialisation too
        train_on=args.train_on,
    )
    metrics = run_finetune(cfg, resume=args.resume, overwrite=args.overwrite)
    if not _main_process():
        return  # under torchrun or accelerate launch the main process alone reports, as it alone writes
    print(json.dumps(metrics, indent=2))


def _main_process() -> bool:
    """False in a process that a launcher (torchrun, accelerate launch) started beside the main one (the run's
    accelerate state says which it is)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _given(**values) -> dict:
    """The options the user set: unset ones (None) leave the config's default."""
    return {k: v for k, v in values.items() if v is not None}


def _train_overrides(args) -> dict:
    return _given(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_steps=args.max_steps,
                  grad_accum=args.grad_accum, seed=args.seed, checkpoint_every=args.checkpoint_every,
                  mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing or None,
                  snapshot_every=getattr(args, "snapshot_every", None))


def _unlearn(args) -> None:
    from viker.model import is_tiny_model
    from viker.run_folder import SAVE_CHOICES
    from viker.train import last_logged_loss
    from viker.unlearn import UnlearnConfig, no_adapter, run_unlearn

    saved_as = {choice: merge for merge, choice in SAVE_CHOICES.items()}  # --save's value as lora.merge records it

    method_args = _given(lam=args.lam, k=args.k, refs=args.refs, regularizer=args.regularizer, ablation=args.ablation,
                         beta=args.beta, average=args.average, retain_weight=args.retain_weight,
                         rewrite=args.rewrite, layers=args.layers, heads=args.heads, encoder_width=args.encoder_width,
                         threshold=args.threshold, forget_loss=args.forget_loss,
                         reference_model=args.reference_model)
    base = unlearn_preset(args.method, is_tiny_model(args.model))
    if base is TINY_CAGUL and _resumes_on(args, TINY_UNLEARN):
        base = TINY_UNLEARN  # a CAGUL run started before CAGUL had a preset of its own goes on with the one it had
    cfg = UnlearnConfig(
        model=args.model, data=args.data, benchmark=args.benchmark, forget=_forget(args), method=args.method,
        method_args=method_args,
        out=args.out, tuning=args.tuning, train=replace(base, **_train_overrides(args)),
        lora=_lora(args, no_adapter(args.method, args.tuning), merge=saved_as[args.save]),
        cache_dir=args.cache_dir, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        max_length=args.max_length, train_on=args.train_on,
    )
    _, _, history = run_unlearn(cfg, resume=args.resume, overwrite=args.overwrite)
    if not _main_process():
        return
    loss = f"{last_logged_loss(history)}; every logged step in history.json"
    model = Path(args.out, "model")  # "out/" or "out": one slash before the folder's name
    if args.method == "cagul":
        print(f"CAGUL modules written to {Path(args.out, 'cagul')}, beside the untouched base model ({loss})")
    elif Path(model, "adapter_config.json").is_file():
        print(f"unlearned model written to {model} as its LoRA adapter, on the model it names ({loss})")
    else:
        print(f"unlearned model written to {model} ({loss})")


def _resumes_on(args, preset: TrainConfig) -> bool:
    """Whether the unlearning run that ``--resume`` continues started with ``preset``'s epochs and rate, where
    they are not given now."""
    from viker.runs import read_configs

    if not args.resume or not Path(args.out, "config.json").is_file():
        return False
    train = read_configs(args.out)[0].get("unlearn", {}).get("train", {})
    return all(train.get(k) == getattr(preset, k) for k in ("epochs", "lr") if getattr(args, k) is None)


def _forget(args) -> str:
    """--forget, defaulting to the benchmark's 10% split."""
    from viker.data.schema import DEFAULT_FORGET

    return args.forget or DEFAULT_FORGET[args.benchmark]


def _model_forget(args) -> str:
    """--forget of a command that looks at a model (eval, keytokens), defaulting to the split the model was
    unlearned on (or, a CLEAR retain model, finetuned without), else to the benchmark's 10% split."""
    from viker.runs import model_split

    made = None if args.forget else model_split(args.model, args.benchmark)
    return made[0] if made else _forget(args)


def _eval_clear(args) -> None:
    from viker.eval.clear import ClearEvalConfig, run_clear_eval

    for flag, given in (("--gib-model", args.gib_model), ("--judge", args.judge), ("--mc-mode", args.mc_mode),
                        ("--test-images", args.test_images)):
        if given:
            raise VikerError(f"{flag} applies to --benchmark mllmu")
    cfg = ClearEvalConfig(forget=_model_forget(args), batch_size=args.batch_size, retain_model=args.retain_model,
                          retain_limit=args.retain_limit, **_given(max_new_tokens=args.max_new_tokens))
    metrics = run_clear_eval(args.model, args.data, args.out, cfg, args.device, args.dtype, args.trust_remote_code)
    _evaluated(args, metrics)


def _scope(only: list[str] | None) -> dict | None:
    """--only forget:generation,multiple_choice --only retain -> {set: tasks} (a set alone: all its tasks;
    a set named twice: the tasks of both)."""
    from viker.eval.evaluate import TASKS, check_scope

    if not only:
        return None
    scope = {}
    for item in only:
        name, colon, tasks = item.partition(":")  # "forget: generation, cloze" as typed in quotes reads the same
        asked = tuple(t.strip() for t in tasks.split(",") if t.strip())
        if not name.strip():  # ":generation" reads as a set named '' ("--only : unknown set")
            from viker.eval.evaluate import SETS

            raise VikerError(f"--only {item}: name a set before ':' ({', '.join(SETS)})")
        if colon and not asked:  # "forget:" is a list of tasks left blank, not every task of forget
            raise VikerError(f"--only {item}: name the tasks after ':' ({', '.join(TASKS)}), or give the set "
                             f"alone for all of them")
        asked = asked or TASKS
        scope[name.strip()] = tuple(dict.fromkeys(scope.get(name.strip(), ()) + asked))
    check_scope(scope)
    return scope


def _eval(args) -> None:
    from viker.eval.evaluate import EvalConfig
    from viker.eval.run import run_eval

    if args.benchmark == "clear":
        if args.only:
            raise VikerError("--only applies to --benchmark mllmu")
        return _eval_clear(args)
    if args.retain_model:
        raise VikerError("--retain-model applies to --benchmark clear")
    cfg = EvalConfig(forget=_model_forget(args), mc_mode=args.mc_mode or "likelihood", batch_size=args.batch_size,
                     test_images=args.test_images or "first", retain_limit=args.retain_limit,
                     gib_model=args.gib_model, judge=args.judge, scope=_scope(args.only),
                     **_given(max_new_tokens=args.max_new_tokens))
    metrics = run_eval(args.model, args.data, args.out, cfg, args.device, args.dtype, args.trust_remote_code)
    _evaluated(args, metrics)


def _judge(args) -> None:
    from viker.eval.run import run_judge

    metrics = run_judge(args.run, args.judge)
    scored = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k.endswith("_factuality") and v is not None)
    print(f"{args.run}: {scored} (on the judge's 1-10 scale); wrote them into metrics.json and each answer's score "
          "into generations.jsonl")


def _evaluated(args, metrics: dict) -> None:
    """What an evaluation prints: the table's columns, then where every figure and answer went."""
    from viker.report import benchmark_of, columns_text, questions_behind
    from viker.runs import read_records

    records = read_records(Path(args.out) / "generations.jsonl")
    asked = questions_behind(records) if benchmark_of(metrics) == "mllmu" else None
    measured = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    width = max(map(len, measured), default=0) + 2  # --only with none of the table's columns: what it measured
    shown = columns_text(metrics, asked) or "\n".join(f"  {k.ljust(width)}{v:>7.1f}" for k, v in measured.items())
    print(f"{args.model} on {_model_forget(args)}:\n{shown}\n"
          f"wrote {Path(args.out) / 'metrics.json'} ({len(metrics)} figures) and generations.jsonl "
          f"({len(records)} answers)")


def _keytokens(args) -> None:
    from viker.keytokens import PNG_ANSWERS, forgotten, image_key_counts, key_counts, run_keytokens

    rows = run_keytokens(args.model, args.data, _model_forget(args), args.out, args.k, args.refs, args.epsilon,
                         args.cache_dir, args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                         seed=args.seed, lam=args.lam, benchmark=args.benchmark, train_on=args.train_on,
                         mixed_precision=args.mixed_precision)
    n_key, _ = key_counts(rows, args.epsilon)
    apart = image_key_counts(rows, args.epsilon)
    by_image = f" ({apart[0]} in answers to image questions)" if apart else ""
    n_gone = None if args.lam is None else sum(forgotten(p, args.lam) for r in rows for p in r.ref_prob)
    gone = "" if n_gone is None else f", {n_gone} forgotten at λ = {args.lam:g} (underlined on the page and the PNG)"
    shown = f" (the PNG shows the first {PNG_ANSWERS})" if len(rows) > PNG_ANSWERS else ""
    print(f"wrote {args.out}, {Path(args.out).with_suffix('.png').name} and {Path(args.out).with_suffix('.json').name}"
          f": {n_key} key tokens{by_image}{gone} in "
          f"{len(rows)} answers{shown}")


def _report(args) -> None:
    from viker.report import REPORT_FILES, plain_table, run_report

    rows = run_report(args.runs, args.out, args.title)
    print(plain_table(rows))
    written = [name for name in REPORT_FILES if (Path(args.out) / name).is_file()]
    missing = "" if "tradeoff.png" in written else " (no plot: no run has both of its figures; report.md says which)"
    print(f"\nwrote {', '.join(written)} in {args.out}{missing}")


def _demo(args) -> None:
    from viker.demo import DemoConfig, fast, run_demo

    cfg = DemoConfig(out=args.out, seed=args.seed)
    run_demo(fast(cfg) if args.fast else cfg)


def _number(text: str) -> float:
    """A float option's value: a finite number (``inf`` and ``nan`` parse as floats but are no setting)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


class _Help(argparse.HelpFormatter):
    """``--help`` that shows an option's default where it has one (not for flags or options without one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if action.option_strings and shown and "default" not in text:
            text += f"{' ' if text else ''}(default: %(default)s)"
        return text


def _command(sub, name: str, summary: str, description: str = ""):
    """A subcommand: ``summary`` in ``viker --help``, and with ``description`` in its own ``--help``."""
    command = sub.add_parser(name, help=summary, formatter_class=_Help,
                             description=f"{summary[0].upper()}{summary[1:]}. {description}".strip())
    command.set_defaults(command_prog=command.prog)  # the command a mistake is in: whose --help to read
    return command


def _preset(text: str, name: str, tiny: TrainConfig, real: TrainConfig, names: tuple[str, str]) -> str:
    """An option's help with the preset value it takes when unset: for the tiny model and for any other."""
    a, b = getattr(tiny, name), getattr(real, name)
    return f"{text} (default: {a})" if a == b else f"{text} (default: {a:g} for {names[0]}, {b:g} for {names[1]})"


def _add_train_args(p: argparse.ArgumentParser, tiny: TrainConfig, real: TrainConfig, names: tuple[str, str],
                    note: str = "") -> None:
    p = p.add_argument_group("training", f"Unset options take the preset for {names[0]} or for {names[1]}{note}; "
                                         "every run's config.json records the values it used.")
    p.add_argument("--epochs", type=_number,
                   help=_preset("passes over the data (fractions allowed)", "epochs", tiny, real, names))
    p.add_argument("--max-steps", type=int, help="optimiser steps; overrides --epochs")
    p.add_argument("--lr", type=_number, help=_preset("peak learning rate", "lr", tiny, real, names))
    p.add_argument("--batch-size", type=int, help=_preset("examples per micro-step over all processes together",
                                                           "batch_size", tiny, real, names))
    p.add_argument("--grad-accum", type=int,
                   help=_preset("micro-steps per optimiser step", "grad_accum", tiny, real, names))
    p.add_argument("--seed", type=int,
                   help=_preset("seed of the initialisation and the data order", "seed", tiny, real, names))
    p.add_argument("--checkpoint-every", type=int, help="write a checkpoint every N steps (atomically)")
    folder = p.add_mutually_exclusive_group()  # the run in --out goes on or is replaced, never both
    folder.add_argument("--resume", action="store_true",
                        help="continue a stopped run from its last checkpoint: give the command it was started with "
                             "again, plus --resume (other settings are refused)")
    folder.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (removing its files; anything else there is "
                             "refused)")
    p.add_argument("--max-length", type=int, help="refuse examples longer than this many tokens (never truncates)")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                   help="autocast the forward pass; fp16 on a GPU only (default: the accelerate launch setting, "
                        "else no)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: much less memory, about a third slower "
                        "(not CAGUL, whose frozen model runs in eval mode)")


def _add_lora_args(p: argparse.ArgumentParser, defaults: dict) -> None:
    # left unset (None) unless given, so that a run that trains no adapter can refuse them
    p.set_defaults(lora_defaults=defaults)
    p.add_argument("--lora-r", type=int, help=f"LoRA rank (default: {defaults['r']})")
    p.add_argument("--lora-alpha", type=int,
                   help=f"LoRA α (the update is scaled by α/r) (default: {defaults['alpha']})")
    p.add_argument("--lora-dropout", type=_number, help=f"dropout on LoRA's input (default: {defaults['dropout']:g})")


def _lora(args, no_adapter: str | None, merge: bool | None = True):
    """The LoRA settings given over the command's defaults; a --lora-* option given to a run that trains no
    adapter (``no_adapter`` says what it trains instead), even at its default value, is refused."""
    from viker.model import LoraSettings, refuse_unused_lora

    given = _given(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
    refuse_unused_lora([f"--lora-{name}" for name in given], no_adapter)
    return LoraSettings(**(args.lora_defaults | given), merge=merge)


def _add_benchmark_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", choices=("mllmu", "clear"), default="mllmu",
                   help="the layout of --data: MLLMU-Bench (and the embedded benchmark) or CLEAR")


def _add_learned_arg(p: argparse.ArgumentParser) -> None:
    from viker.data.examples import FINETUNE_SETS

    p.add_argument("--train-on", choices=("auto", *FINETUNE_SETS), default="auto",
                   help="MLLMU: the forget (and retain) examples, as the vanilla finetune's --train-on names what "
                        "it learned: ft_Data = the people's ft_Data pairs alone (MLLMU-Bench's protocol: the "
                        "generation questions are what the evaluation asks); all = also their generation "
                        "questions (auto: what the model's viker finetune run learned; else all for a tiny model, "
                        "ft_Data for a checkpoint)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p = p.add_argument_group("model loading")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU that computes in it, compute capability 8 "
                   "on, else float32), float32 (fp32), bfloat16 (bf16), float16 (fp16)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")


class _Parser(argparse.ArgumentParser):
    """A command line mistake is one line, as every other error is, rather than the usage block and a line."""

    def error(self, message: str):
        raise VikerError(f"{self.prog}: {message} (see {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        cut = extra.index("--") if "--" in extra else len(extra)  # after "--" every word is a run
        if extra and getattr(parsed, "runs", None) is not None and not any(a.startswith("-") for a in extra[:cut]):
            parsed.runs += extra[:cut] + extra[cut + 1:]  # `report A --out DIR B`: B is a run as A is
        elif extra:  # an option of one command given to another, or mistyped: name that command's --help
            prog = getattr(parsed, "command_prog", self.prog)
            raise VikerError(f"{prog}: unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
        return parsed


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="viker", description="Make a multimodal LLM forget specific people.", formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"viker {__version__}")
    sub = ap.add_subparsers(dest="command")

    data_command = _command(sub, "data", "benchmark data")
    data = data_command.add_subparsers(dest="data_command")
    synth = _command(data, "synth", "write the embedded benchmark (MLLMU-Bench layout)",
                     "Fictitious people with generated faces and facts, real-world people, reference images and "
                     "strangers, in MLLMU-Bench's files and columns; offline, the same for the same seed.")
    synth.add_argument("--out", required=True, help="the benchmark folder to write")
    synth.add_argument("--seed", type=int, default=0, help="seed of the people, their faces and their facts")
    synth.add_argument("--profiles", type=int, default=100,
                       help="fictitious people (10 or more, so that forget_5 has someone)")
    synth.add_argument("--overwrite", action="store_true", help="replace the benchmark already in --out")
    synth.set_defaults(func=_synth)

    ft = _command(sub, "finetune", "train the vanilla model on the benchmark's people",
                  "Writes OUT/model, config.json, history.json, timing.json and metrics.json: the last logged loss "
                  "(final_loss, a mean over the steps since the row before it in history.json) and, on MLLMU-Bench "
                  "in one process or under DDP, how many answers it recalls exactly.")
    ft.add_argument("--model", default="tiny", help="'tiny' (built offline) or a model folder / hub id")
    ft.add_argument("--data", required=True, help="benchmark folder (MLLMU-Bench's layout, or CLEAR's with "
                                                   "--benchmark clear)")
    ft.add_argument("--out", required=True, help="the run folder to write")
    _add_benchmark_arg(ft)
    ft.add_argument("--without", help="CLEAR: leave out this forget split's persons (forget01 | forget05 | forget10), "
                                      "to train the reference model of forget quality")
    ft.add_argument("--family", choices=("llava", "qwen2_vl", "idefics2"),
                    help="with --model tiny: which architecture to build (LLaVA-1.5, Qwen2-VL or Idefics2; default "
                         "llava)")
    ft.add_argument("--train-on", choices=("auto", "all", "ft_Data"), default="auto",
                    help="MLLMU: ft_Data = the benchmark's vanilla finetune (its ft_Data pairs); all = also every "
                         "generation question and pretrain_Data, for a model trained from scratch (auto: all for "
                         "--model tiny, ft_Data otherwise)")
    ft.add_argument("--tuning", choices=("auto", "full", "lora"), default="auto",
                    help="train every weight or LoRA adapters (auto: full for --model tiny, LoRA otherwise)")
    _add_train_args(ft, TINY_TRAIN, REAL_TRAIN, ("--model tiny", "a model folder"))
    _add_lora_args(ft, FINETUNE_LORA)
    _add_model_args(ft)
    ft.set_defaults(func=_finetune)

    un = _command(sub, "unlearn", "make the vanilla model forget a forget split",
                  "Writes OUT/model (CAGUL: OUT/cagul, beside the untouched base model), config.json, "
                  "history.json and timing.json. Options marked with a method's name apply to that method only.")
    un.add_argument("--model", required=True, help="the vanilla model: a `viker finetune` run folder or model folder")
    un.add_argument("--data", required=True, help="the benchmark folder")
    _add_benchmark_arg(un)
    un.add_argument("--forget", help="forget_5 | forget_10 | forget_15 (default forget_10); CLEAR: forget01 | "
                                     "forget05 | forget10, +tofu to include its text questions (default forget10)")
    un.add_argument("--method", default="viker", help="ga | graddiff | klmin | npo | idkpo | viker | cagul")
    _add_learned_arg(un)
    un.add_argument("--out", required=True, help="the run folder to write")
    un.add_argument("--lam", type=_number, help="ViKeR: weight λ ≥ 0 of the reference regulariser; above 1, tokens "
                    "the reference images predict with probability above 1/λ are held, the others forgotten "
                    "(default 0.05; the demo uses 10)")
    un.add_argument("--k", type=int, help="ViKeR / CAGUL: reference images per example (default 5)")
    un.add_argument("--refs", help="ViKeR / CAGUL: people | patterns | scenes | pets | forget | retain | a folder of "
                                   "images (default people)")
    un.add_argument("--regularizer", help="ViKeR: kl | jsd | cos (default kl)")
    un.add_argument("--ablation", help="ViKeR: none | no_reg | no_ga | no_vis (default none)")
    un.add_argument("--beta", type=_number,
                    help="NPO / IdkPO / CAGUL (--forget-loss npo): inverse temperature β (default 0.1)")
    un.add_argument("--reference-model", metavar="MODEL",
                    help="NPO: the model of its log-ratio, a model or run folder (default: the model being "
                         "unlearned, before unlearning; MLLMU-Bench's code uses one finetuned on the retain set)")
    un.add_argument("--average", choices=AVERAGES,
                    help="GA / GradDiff / KL-Min's forget term / NPO's and IdkPO's retain NLL: the log-likelihood's "
                         "mean per answer, then over the answers (sequence: a short answer counts as much as a long "
                         "one), over all the batch's "
                         "answer tokens at once (token: a model's own loss, as the published GA code uses it), or "
                         "each answer's sum over its tokens, then over the answers (sum: the per-answer "
                         "log-likelihood of the methods' definitions; a step grows with the answer's length) "
                         "(default: sequence)")
    un.add_argument("--retain-weight", type=_number,
                    help="GradDiff / KL-Min / NPO / IdkPO / CAGUL: weight of the retain term "
                         "(default 1; CAGUL 0.25; NPO 0, no retain term)")
    un.add_argument("--rewrite", type=_number, help="CAGUL: visual tokens rewritten per flagged image, a fraction "
                                                   "(< 1) or a count (all where an image has fewer) (default 0.75)")
    un.add_argument("--layers", type=_int_list, help="CAGUL: decoder layers whose attention ranks visual tokens, "
                                                     "e.g. 1,2 (default: the middle layer)")
    un.add_argument("--heads", type=_int_list, help="CAGUL: attention heads averaged, e.g. 0,3 (default: all)")
    un.add_argument("--encoder-width", type=int, help="CAGUL: width of the visual-token encoder (default 128)")
    un.add_argument("--threshold", type=_number,
                    help="CAGUL: discriminator probability that flags an image (default 0.5)")
    un.add_argument("--forget-loss", choices=("reference", "npo"),
                    help="CAGUL: answer a forget person as a stranger (reference) or NPO (default reference)")
    un.add_argument("--tuning", choices=("lora", "full"), default="lora",
                    help="LoRA adapters on the language model's linear layers, or every weight")
    _add_train_args(un, TINY_UNLEARN, REAL_UNLEARN, ("a tiny model", "a checkpoint"),
                    f" (CAGUL, whose modules start from scratch, on a tiny model: --epochs {TINY_CAGUL.epochs:g} "
                    f"--lr {TINY_CAGUL.lr:g})")
    _add_lora_args(un, UNLEARN_LORA)
    un.add_argument("--save", choices=("auto", "merged", "adapter"), default="auto",
                    help="with LoRA: save the merged model or the adapter alone; auto: merged, but the adapter on "
                    "bf16 or fp16 weights, where a merge rounds away the smallest changes (a merged run's "
                    "model/merge.json says how much it lost), and under FSDP or DeepSpeed")
    un.add_argument("--snapshot-every", type=int, metavar="N",
                    help="also keep the model after every N epochs, in OUT/epochs/EPOCHS (LoRA: the adapter), "
                         "to evaluate where to stop")
    un.add_argument("--cache-dir", help="where ViKeR's and CAGUL's reference distributions are cached "
                                        "(default $VIKER_CACHE, else ~/.cache/viker)")
    _add_model_args(un)
    un.set_defaults(func=_unlearn)
    ev = _command(sub, "eval", "evaluate a model on a forget split, its Test_Set rows, the retain split and the "
                               "real-world people",
                  "Writes OUT/metrics.json (MLLMU-Bench: percentages; CLEAR: in [0, 1] but coherence, a percentage), "
                  "OUT/generations.jsonl "
                  "(every prompt, reference answer and model answer), its settings (config.json, or "
                  "eval_config.json in the folder of the run it evaluates) and, on CLEAR, forget_truth_ratios.json.")
    ev.add_argument("--model", required=True, help="a model folder, a run folder of viker's, or a hub id")
    ev.add_argument("--data", required=True, help="the benchmark folder")
    _add_benchmark_arg(ev)
    ev.add_argument("--forget", help="the forget split (default: the one the model was unlearned on, else "
                                     "forget_10; CLEAR: forget10)")
    ev.add_argument("--out", required=True, help="the folder to write: a new or empty one, an earlier evaluation "
                                                  "of this model, or the run or model folder it scores")
    ev.add_argument("--mc-mode", choices=MC_MODES,
                    help="multiple choice by option likelihood (likelihood: small models) or by a generated letter "
                         "(zero-shot, in the benchmark's prompt; docs/design.md), read as the reply means it "
                         "(letter) or as MLLMU-Bench's code reads it, by the reply's first character (first_char) "
                         "(default: likelihood; MLLMU-Bench only)")
    ev.add_argument("--batch-size", type=int, default=32, help="questions per forward pass")
    ev.add_argument("--max-new-tokens", type=int,
                    help="greedy reply length of the generation questions (default 50; CLEAR: 100); a cloze reply "
                         "is read in 50 tokens, a letter-mode reply in 8")
    ev.add_argument("--retain-limit", type=int, help="evaluate at most this many retain-split people (CLEAR: "
                                                      "retain_perturbed rows; default: all; the demo's runs: 30, "
                                                      "--fast 12)")
    ev.add_argument("--test-images", choices=("first", "all"),
                    help="the Test_Set photos each forget person's image questions are asked with: the first, or "
                         "every one (default: first; MLLMU-Bench only)")
    ev.add_argument("--gib-model", help="local folder of a gibberish classifier, for the gib column")
    ev.add_argument("--judge", metavar="MODULE:FUNCTION",
                    help="MLLMU-Bench's factuality judge, plugged in: a function (importable, or in a .py file in "
                         "the working folder) called with the generation questions, references and answers, "
                         "returning one score from 1 to 10 per answer; gives *_factuality")
    ev.add_argument("--only", action="append", metavar="SET[:TASK,...]",
                    help="evaluate only this set (forget, test, retain, real), optionally only these tasks "
                         "(generation, multiple_choice, cloze); repeat for more sets (default: everything)")
    ev.add_argument("--retain-model", help="CLEAR: a model trained without the forget set (model or run folder), "
                                           "or the forget_truth_ratios.json of its evaluation: gives forget_quality; "
                                           "a viker run that saw the forget persons is refused")
    _add_model_args(ev)
    ev.set_defaults(func=_eval)
    jd = _command(sub, "judge", "MLLMU-Bench's factuality of the answers an evaluation wrote, without generating "
                                "them again",
                  "Calls the judge on each set's generation answers in RUN/generations.jsonl, as viker eval --judge "
                  "does, and adds *_factuality to RUN/metrics.json, each answer's score to its record, and the judge "
                  "to the evaluation's settings: for an evaluation whose judge failed, or that had none (another "
                  "judge's scores are replaced, with a warning).")
    jd.add_argument("run", metavar="RUN", help="the folder viker eval wrote into")
    jd.add_argument("--judge", required=True, metavar="MODULE:FUNCTION",
                    help="as viker eval --judge: a function called with the generation questions, references and "
                         "answers, returning one score from 1 to 10 per answer")
    jd.set_defaults(func=_judge)
    kt = _command(sub, "keytokens", "show which answer tokens ViKeR treats as private (HTML + PNG)",
                  "Each forget answer's tokens, coloured by the entropy of the vanilla model's predictions "
                  "when the image is swapped for reference images, and the reference probability of the true token.")
    kt.add_argument("--model", required=True, help="the vanilla model")
    kt.add_argument("--data", required=True, help="the benchmark folder")
    _add_benchmark_arg(kt)
    kt.add_argument("--forget", help="the forget split whose answers are shown (default: the one the model was "
                                     "unlearned on, else forget_10; CLEAR: forget10, +tofu to include its text "
                                     "questions)")
    kt.add_argument("--out", required=True, help="an .html file, outside --data; the PNG and a .json record of its "
                                                 "settings and counts are written beside it (each replaces only an "
                                                 "earlier page's)")
    _add_learned_arg(kt)
    kt.add_argument("--k", type=int, default=5, help="reference images per answer")
    kt.add_argument("--refs", default="people",
                    help="reference images: people | patterns | scenes | pets | forget | retain | a folder of images")
    kt.add_argument("--epsilon", type=_number, default=0.5, help="entropy threshold (nats) for key tokens")
    kt.add_argument("--lam", type=_number, help="ViKeR's λ of a run: the page underlines the tokens that run forgets "
                                              "(above 1, those with R̂(y) < 1/λ; at most 1, every token), as its "
                                              "default loss does (--regularizer kl, no --ablation)")
    kt.add_argument("--cache-dir", help="where reference distributions are cached (default $VIKER_CACHE, else "
                                        "~/.cache/viker)")
    kt.add_argument("--seed", type=int, default=0,
                    help="the seed that draws the reference images, as `viker unlearn --seed` (shares its cache)")
    kt.add_argument("--mixed-precision", choices=MIXED_PRECISION,
                    help="the autocast of the ViKeR run whose R̂ to show, as its --mixed-precision (shares its "
                         "cache; default: none)")
    _add_model_args(kt)
    kt.set_defaults(func=_keytokens)
    rp = _command(sub, "report", "the paper-style table and the trade-off plot of evaluated runs",
                  "Reads each run folder's metrics.json (written by viker eval) and what its config says about "
                  "the model; writes OUT/report.md (the table, best per column in bold, what each column means, "
                  "the runs), results.json and tradeoff.png, for MLLMU-Bench or CLEAR. Every run must have been "
                  "evaluated on the same benchmark files and forget split, with the same --mc-mode, --retain-limit, "
                  "--test-images, --judge, --max-new-tokens and --gib-model where they changed its figures (on CLEAR, "
                  "forget quality against the same --retain-model). A viker finetune "
                  "model is the vanilla row (with --without, the retain model's).")
    rp.add_argument("runs", nargs="+", metavar="RUN", help="an evaluated run folder, in the order of the table's rows")
    rp.add_argument("--out", required=True, help="the folder to write, of its own (a run's, an evaluation's or a "
                                                 "demo's folder is refused)")
    rp.add_argument("--title", help="the report's title (default: 'Unlearning' and the forget split)")
    rp.set_defaults(func=_report)
    dm = _command(sub, "demo", "the whole comparison on the embedded benchmark, offline on a CPU",
                  "Generates the benchmark, finetunes the vanilla tiny model, unlearns forget_10 with every method "
                  "on the same budget (CAGUL, which trains new modules, on its own), sweeps ViKeR's λ, evaluates "
                  "everything, and writes OUT/report.md, results.json, tradeoff.png and keytokens.html (with its "
                  "picture, keytokens.png, and record, keytokens.json). A second demo in the same folder with the "
                  "same --seed and --fast reuses the benchmark and the vanilla model; with another, it regenerates "
                  "them and replaces the folder's runs and report.")
    dm.add_argument("--out", default="viker-demo",
                    help="the folder for the data, the models, the runs and the report: a new or empty folder, "
                         "or an earlier demo's")
    dm.add_argument("--seed", type=int, default=0,
                    help="seed of the benchmark and of the unlearning runs (the vanilla finetune keeps seed 0)")
    dm.add_argument("--fast", action="store_true",
                    help="a quick look at every step (about 3 minutes): smaller settings, too small to compare methods")
    dm.set_defaults(func=_demo)
    for command, commands in ((ap, sub), (data_command, data)):  # `viker`, `viker data` alone: name the commands
        command.set_defaults(func=_commands_of(command.prog, commands))
    return ap


def _commands_of(prog: str, commands) -> Callable:
    def refuse(args) -> None:
        raise VikerError(f"{prog}: name a command: {', '.join(commands.choices)} (see {prog} --help)")

    return refuse


PATH_OPTIONS = ("out", "data", "model", "retain_model", "gib_model", "cache_dir", "runs", "reference_model")


def _home_expanded(args: argparse.Namespace) -> argparse.Namespace:
    """Paths with ``~`` that the shell left as they were (``--out=~/run``, quoted) name the home folder, as the
    shell would have made them, rather than a folder called ``~``."""
    import os

    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) for v in value])
        elif isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
    return args


def _unfinished(args: argparse.Namespace | None) -> str:
    """What a training run stopped midway (Ctrl-C, a full disk) leaves in its --out, and how to go on from it;
    empty where it left nothing of its own."""
    from viker.runs import checkpoints, holds_finished_model, read_configs

    out = getattr(args, "out", None)
    if getattr(args, "command", None) not in ("finetune", "unlearn") or not (out and Path(out, "config.json").exists()):
        return ""
    try:
        if read_configs(out)[0].get("command") != args.command:
            return ""  # before an --overwrite removed what the folder held (an evaluation): it is there
    except VikerError:
        return ""
    # a finished run keeps no checkpoint, and its model appears whole or not at all (viker.runs.written_whole)
    if checkpoints(out):  # stopped in training, or while its model was saved
        on = "--resume continues it from its last checkpoint, --overwrite starts it again"
    elif holds_finished_model(Path(out)):
        return ""  # before an --overwrite removed the finished run: it is there as it was
    else:
        given = getattr(args, "checkpoint_every", None)
        on = "--overwrite starts it again" + ("" if given else " (--checkpoint-every N keeps checkpoints to --resume "
                                                                "from)")
    return f"{out} holds the unfinished run; {on}"


def _interrupted(args: argparse.Namespace | None, how: str = "interrupted") -> str:
    """What a run stopped by Ctrl-C (or SIGTERM: ``how``) leaves, and how to go on from it."""
    left = _unfinished(args)
    return f"{how}: {left}" if left else how


def _write_failure(e: Exception) -> str | None:
    """Why a file could not be written, where the library writing it raises no OSError (safetensors' error, and
    torch.save's); None for any other error."""
    text = str(e).strip()
    if type(e).__name__ == "SafetensorError" and "while serializing" in text:  # not reading ("deserializing")
        return "No space left on device" if "No space left on device" in text else text
    if isinstance(e, RuntimeError) and "PytorchStreamWriter failed writing" in text:
        return "torch.save could not write the file (is the disk full?)"
    return None


def _end_progress_bars() -> None:
    """Close the progress bars a stopped command left open, so that its last line stands below them rather
    than inside the last one, and no bar is drawn again after it."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


SPLIT_ACROSS_PROCESSES = ("finetune", "unlearn")  # the commands that split their work under a launcher


def _refuse_launcher(command: str | None) -> None:
    """Refuse any other command under a multi-process launcher (torchrun, accelerate launch): each process did all
    of its work and wrote the same files at once (and called an LLM judge once a process)."""
    world = int(os.environ.get("WORLD_SIZE") or 1)  # set blank: no launcher
    if command and command not in SPLIT_ACROSS_PROCESSES and world > 1:
        raise VikerError(f"viker {command} runs in one process: under a launcher of {world} processes each would do "
                         f"all of it and write the same files; run it without the launcher (only "
                         f"{' and '.join(SPLIT_ACROSS_PROCESSES)} split their work across processes)")


def main(argv: list[str] | None = None) -> int:
    from viker.runs import Terminated, held_alone, terminate_as_interrupt

    args = None
    try:
        with terminate_as_interrupt():
            args = _home_expanded(parser().parse_args(argv))
            _refuse_launcher(args.command)
            written = ("RUN", args.run) if args.command == "judge" else ("--out", getattr(args, "out", None))
            with held_alone(written[1], written[0]):
                args.func(args)
    except VikerError as e:
        _end_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated): 128 + the signal's number, as a shell says
        _end_progress_bars()
        print(_interrupted(args, "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"),
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # an --out that is a file, a read-only folder, a full disk, a name too long
        reason = f"{e.filename}: " * bool(e.filename) + (e.strerror or str(e)) if isinstance(e, OSError) else \
            _write_failure(e)
        if reason is None:
            raise
        _end_progress_bars()
        left = _unfinished(args)
        print(f"error: {reason}" + (f"; {left}" if left else ""), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
