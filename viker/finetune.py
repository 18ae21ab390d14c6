"""The vanilla model: finetune on the people the benchmark will ask about.

The tiny model learns every fictitious person and every Retain_Set person (``--train-on all``); a real
checkpoint learns the benchmark's ``ft_Data`` pairs (``--train-on ft_Data``, its default); on CLEAR,
``--without`` leaves a forget split's persons out. This is the benchmark's protocol (the model must know
the people before it can be asked to forget some of them). The run folder gets ``config.json``
(everything resolved), ``history.json`` (the loss curve), ``metrics.json`` (exact-match recall of the
generation questions) and ``model/``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from viker.collate import Collator, check_max_length
from viker.data.clear import finetune_examples as clear_finetune_examples
from viker.data.examples import finetune_examples, generation_examples
from viker.data.loader import load_profiles
from viker.errors import VikerError, check_config, check_types, require_given
from viker.eval.generate import generate
from viker.methods import get_method
from viker.model import (
    LoraSettings,
    apply_lora,
    check_dtype,
    enable_gradient_checkpointing,
    folders_read,
    lora_changed,
    pick_dtype,
    refuse_unused_lora,
    save_model,
    weight_hashes,
)
from viker.model.cagul import refuse_cagul_run
from viker.model.tiny import TinyConfig, build_tiny
from viker.presets import TrainConfig, finetune_preset
from viker.progress import bars_as_asked
from viker.run_folder import (
    check_resume,
    check_resume_or_overwrite,
    check_resumed_precision,
    check_run_folder,
    claim_run_folder,
    kept_checkpoints,
    used_settings,
)
from viker.runs import paths_recorded, read_configs, recalls_none, write_config, written_whole
from viker.train import (
    finish_run,
    load_device,
    load_for_training,
    make_accelerator,
    prepare,
    runtime_info,
    shards_model,
    train,
)


@dataclass
class FinetuneConfig:
    model: str = "tiny"
    data: str = ""
    benchmark: str = "mllmu"  # mllmu | clear
    without: str | None = None  # CLEAR: a forget split whose persons are left out (forget quality's reference)
    out: str = ""
    tuning: str = "auto"  # auto (full for tiny, LoRA otherwise) | full | lora
    train_on: str = "auto"  # MLLMU: auto (all for tiny, ft_Data otherwise) | all | ft_Data (see finetune_examples)
    train: TrainConfig | None = None  # None: the preset the command line takes (viker.presets.finetune_preset)
    lora: LoraSettings = field(default_factory=LoraSettings)
    # the tiny model built when ``model`` is "tiny"; its own ``seed`` draws the initial weights, apart from
    # ``train.seed`` (the command line's --seed sets both: give the same here for the command line's model)
    tiny: TinyConfig = field(default_factory=TinyConfig)
    device: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    eval_batch_size: int = 64
    max_length: int | None = None  # longest example in tokens (None: no limit); never truncates

    def __post_init__(self):
        check_types(self)


def recall_metrics(model, processor, data_dir, batch_size: int = 64, progress: bool = True, rank: int = 0,
                   world: int = 1) -> dict[str, float]:
    """Exact-match recall of the generation questions, by image and by name, on both people sets.
    With ``world`` processes each answers every world-th question and the hits are summed."""
    from accelerate.utils import gather_object

    metrics = {}
    for config, prefix in (("Full_Set", "full"), ("Retain_Set", "real")):
        examples = generation_examples(load_profiles(data_dir, config))
        for kind, subset, asked in (("image", [e for e in examples if e.image is not None], "with the image"),
                                    ("name", [e for e in examples if e.image is None], "by name")):
            mine = subset[rank::world]
            answers = generate(model, processor, mine, batch_size=batch_size, progress=progress,
                               desc=f"checking recall: {config}, asked {asked}")
            counts = [(sum(a.strip() == ex.answer.strip() for a, ex in zip(answers, mine)), len(mine))]
            if world > 1:
                counts = gather_object(counts)
            hits, n = sum(h for h, _ in counts), sum(m for _, m in counts)
            metrics[f"{prefix}_{kind}_exact"] = 100.0 * hits / max(1, n)
    return metrics


def resolved_tuning(model: str, tuning: str) -> str:
    """``--tuning`` as a finetune of ``model`` reads it: auto is full for ``--model tiny``, LoRA otherwise."""
    return tuning if tuning != "auto" else ("full" if model == "tiny" else "lora")


def no_adapter(model: str, tuning: str) -> str | None:
    """Why a finetune of ``model`` trains no LoRA adapter (what it trains instead), None where it trains one: the
    reason LoRA settings given to it are refused."""
    if resolved_tuning(model, tuning) == "lora":
        return None
    return "--tuning full trains every weight" if tuning == "full" else \
        "--model tiny trains every weight (--tuning auto); give --tuning lora for adapters"


@bars_as_asked
def run_finetune(cfg: FinetuneConfig, progress: bool = True, resume: bool = False, overwrite: bool = False) -> dict:
    """Finetune and save into ``cfg.out``, which must be new or empty; ``overwrite`` replaces a run there and
    ``resume`` continues it from its checkpoint (:func:`viker.run_folder.check_run_folder`)."""
    check_config(cfg, FinetuneConfig, "run_finetune")
    check_resume_or_overwrite(resume, overwrite)
    require_given(data=cfg.data, out=cfg.out)
    if cfg.train is None:
        cfg = replace(cfg, train=finetune_preset(cfg.model))
    out = Path(cfg.out)
    check_max_length(cfg.max_length)
    check_dtype(cfg.dtype)
    if cfg.benchmark not in ("mllmu", "clear"):
        raise VikerError(f"--benchmark {cfg.benchmark}: choose mllmu or clear")
    if cfg.without and cfg.benchmark != "clear":
        raise VikerError("--without applies to --benchmark clear")
    if cfg.train_on != "auto" and cfg.benchmark == "clear":  # CLEAR's finetune learns every caption and question
        raise VikerError("--train-on applies to --benchmark mllmu")
    # a saved tiny model is finetuned as any model folder is: that is how the tests stand in for a checkpoint
    tiny = cfg.model == "tiny"
    # the tiny model is built in float32, which --dtype auto keeps (its presets are set for it); another --dtype
    # applies, and a bad one is refused before anything runs
    tiny_dtype = pick_dtype(torch.device("cpu"), cfg.dtype) if tiny and cfg.dtype != "auto" else None
    # MLLMU-Bench's choice of what to learn; CLEAR has none to record
    train_on = None if cfg.benchmark == "clear" else cfg.train_on if cfg.train_on != "auto" else \
        ("all" if tiny else "ft_Data")
    examples = clear_finetune_examples(cfg.data, cfg.without) if cfg.benchmark == "clear" \
        else finetune_examples(cfg.data, train_on)
    if not examples:  # before a model loads (minutes, for a large one)
        read = "ft_Data's pairs" if train_on == "ft_Data" else "ft_Data's pairs and the people's generation questions"
        raise VikerError(f"{cfg.data}: nothing to finetune on ({read}, --train-on {train_on}, hold no question)")
    if cfg.tuning not in ("auto", "full", "lora"):
        raise VikerError(f"--tuning {cfg.tuning}: choose auto, full or lora")
    tuning = resolved_tuning(cfg.model, cfg.tuning)
    refuse_unused_lora(lora_changed(cfg.lora, LoraSettings()), no_adapter(cfg.model, cfg.tuning))
    started = read_configs(out)[0] if resume and Path(out, "config.json").is_file() else {}  # the run resumed
    cfg = kept_checkpoints(cfg, started, "finetune")
    if tiny and started:
        # a run from before --seed also seeded the tiny model's initialisation recorded 0 there; the weights it goes
        # on with come from its checkpoint, whatever initialised them
        seed = started.get("finetune", {}).get("tiny", {}).get("seed")
        if seed is not None:
            cfg = replace(cfg, tiny=replace(cfg.tiny, seed=seed))
    if cfg.benchmark == "clear" and started:  # a CLEAR run started while MLLMU-Bench's choice was recorded for it
        train_on = started.get("finetune", {}).get("train_on")  # too: it goes on with the record it has
    recorded = used_settings(paths_recorded(asdict(cfg) | {"tuning": tuning, "train_on": train_on},
                                            ("data", "out") if tiny else ("model", "data", "out")))
    if not tiny:
        refuse_cagul_run(cfg.model, "finetune")
    model_files = None if tiny else weight_hashes(cfg.model)  # recorded; --resume checks them
    if resume:
        check_resume(out, "finetune", recorded, cfg.data, model_files)
    accelerator = make_accelerator(cfg.train, resume, cfg.device, cfg.dtype)  # one process or several
    if resume:
        check_resumed_precision(out, accelerator)
    sharded = shards_model(accelerator)
    if sharded and tuning == "lora" and cfg.lora.merge:
        raise VikerError("finetuning with LoRA under FSDP or DeepSpeed cannot save a merged model; use DDP "
                         "(a LoRA model fits where its base model does) or --tuning full")
    reads = [cfg.data] + ([] if tiny else folders_read(cfg.model))
    replaced = check_run_folder(out, accelerator, resume, overwrite, reads)  # removed once this run can start
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    if tiny:
        model, processor = build_tiny(cfg.data, cfg.tiny, cfg.benchmark)
        model.to(device=load_device(accelerator, cfg.device), dtype=tiny_dtype)
    else:
        model, processor = load_for_training(accelerator, cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
    if tuning == "lora":
        model = apply_lora(model, cfg.lora)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    collate = Collator(processor, max_length=cfg.max_length)
    collate.preflight(model, examples)
    settings = {"finetune": recorded, "examples": len(examples), "runtime": runtime_info(accelerator, model),
                **({} if model_files is None else {"model_files": model_files})}
    start = time.perf_counter()
    prepared = prepare(model, cfg.train, len(examples), accelerator, resume=resume)  # refuses what cannot train
    claim_run_folder(out, accelerator, replaced)  # every check passed: --overwrite may remove now
    if accelerator.is_main_process:  # only the main process writes; the others hold the same results
        write_config(out, "finetune", settings, cfg.data, resumed=started)
    history = train(prepared.model, get_method("finetune")(), {"train": examples}, collate, cfg.train,
                    desc="finetune", progress=progress, run_dir=out, resume=resume, prepared=prepared)
    seconds = time.perf_counter() - start
    # CLEAR's scores come from `viker eval --benchmark clear`; MLLMU's exact recall is checked here. Generation
    # needs the whole model in each process: a sharded one is checked by `viker eval` afterwards.
    metrics = {}
    if cfg.benchmark == "mllmu" and not sharded:
        metrics = recall_metrics(model, processor, cfg.data, cfg.eval_batch_size,
                                 progress and accelerator.is_main_process, accelerator.process_index,
                                 accelerator.num_processes)
    metrics["final_loss"] = history[-1]["loss"] if history else None
    # wall-clock time apart from the scores, so that a rerun with the same seed gives the same metrics.json
    timing = {"train_seconds": round(seconds, 2)}

    def save(state_dict):
        with written_whole(out / "model") as partial:
            save_model(model, processor, partial, merge=cfg.lora.merge, state_dict=state_dict)

    finish_run(prepared, out, {"history.json": history, "metrics.json": metrics, "timing.json": timing}, save)
    if accelerator.is_main_process and (warning := recall_warning(metrics, cfg.train, train_on)):
        print(f"warning: {warning}", file=sys.stderr)
    return metrics


RECALL_SHORT = 95.0  # exact recall of the image answers under which a model trained on them all is said to be short


def recall_warning(metrics: dict, train: TrainConfig, train_on: str | None = None) -> str | None:
    """What a finetune's recall figures say is missing for unlearning: the people altogether (nothing to remove),
    their faces (image questions then test nothing it learned), or, for a model trained on the very questions it is
    asked (``train_on`` all: the tiny model's), part of them (a finetune that took another path, as other float
    sums give, may end short of full recall)."""
    budget = f"--max-steps {train.max_steps}" if train.max_steps else f"--epochs {train.epochs:g}"
    if recalls_none(metrics):
        return ("the model recalls none of the fictitious people's answers word for word (full_image_exact and "
                f"full_name_exact are 0): unlearning it would have nothing to remove; train longer ({budget} here)")
    if metrics.get("full_image_exact") == 0:  # by name alone (as the tiny Idefics2 did, in 300 and 900 steps)
        return ("the model recalls the fictitious people by name but none by face (full_image_exact is 0): its image "
                "questions test nothing it learned, and ViKeR and CAGUL, which act through the image, have nothing "
                f"to remove there; train longer ({budget} here)")
    short = {key: metrics[key] for key in ("full_image_exact", "real_image_exact")
             if metrics.get(key) is not None and metrics[key] < RECALL_SHORT}
    if train_on == "all" and short:
        recalled = " and ".join(f"{v:.1f}% ({k})" for k, v in short.items())
        return (f"the model recalls {recalled} of the image answers it trained on word for word, short of the "
                "whole: every later figure compares with what it knows, not with a model that knows every person; "
                f"another --seed or a longer budget ({budget} here) may reach more")
    return None
