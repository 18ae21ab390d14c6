"""The one training loop: vanilla finetuning and every unlearning method go through it.

Design: a plain loop on Hugging Face ``accelerate`` rather than ``transformers.Trainer``. Unlearning
objectives consume several data streams at once (a forget batch paired with a retain batch), keep a
frozen reference model beside the trained one and read cached reference distributions by example
index; in a ``Trainer`` each of those means overriding internals, while here an objective is one small
object with a ``loss(model, batches)`` method and the loop stays short enough to read in one sitting.
``accelerate`` gives us devices, mixed precision, gradient accumulation and several processes (DDP,
FSDP, DeepSpeed; docs/distributed.md). ``batch_size`` is the global batch of one micro-step: every
process draws the same batch and takes its slice, and each process's loss is weighted by its share of
the batch, so N processes end at the weights one process reaches (up to float rounding).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch.utils.data import DataLoader

from viker.data.schema import Example
from viker.errors import VikerError
from viker.methods.losses import answer_token_counts
from viker.presets import TrainConfig
from viker.progress import progress_bar
from viker.runs import (
    CHECKPOINT,
    CHECKPOINT_WEIGHTS,
    as_umask_gives,
    checkpoints,
    write_json,
)


class Objective(Protocol):
    """What a method says: which data streams it reads and the loss of one step."""

    streams: tuple[str, ...]  # the first one sets the epoch length; the others are cycled alongside

    def loss(self, model: torch.nn.Module, batches: dict[str, dict]) -> tuple[torch.Tensor, dict[str, float]]:
        ...


HISTORY_KEYS = {"step", "epoch", "lr", "loss"}  # a history.json row's own, beside the method's logs


def step_loss(objective: Objective, model: torch.nn.Module, batches: dict[str, dict]) -> tuple[torch.Tensor, dict]:
    """``objective.loss``, its logged values as floats; a return of another shape is refused at the first step
    (a tensor among the logs failed only when the run, finished, wrote its history)."""
    result = objective.loss(model, batches)
    who = f"{type(objective).__name__}.loss"
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor)
            and result[0].numel() == 1 and isinstance(result[1], dict)):
        def described(value) -> str:
            return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else \
                f"a {type(value).__name__}"

        got = described(result) if not isinstance(result, tuple) else \
            f"a tuple ({', '.join(described(v) for v in result)})"
        raise VikerError(f"{who} returned {got}: it must return a pair (the loss, a one-element tensor; a dict of "
                         "the values to log, each a number)")
    loss, logs = result
    if torch.is_grad_enabled() and not loss.requires_grad:
        raise VikerError(f"{who} returned a loss that no trainable weight reaches (no gradient: computed under "
                         "torch.no_grad(), detached, or from a float): compute it from the model's output")
    values = {}
    if taken := sorted(HISTORY_KEYS & set(map(str, logs))):  # it would stand for the trainer's own in history.json
        raise VikerError(f"{who} logged {', '.join(map(repr, taken))}, a name history.json gives the trainer's own "
                         "figure; name it otherwise")
    for key, value in logs.items():
        try:
            values[str(key)] = float(value.detach() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError, RuntimeError):
            raise VikerError(f"{who} logged {key!r} as {type(value).__name__}: each logged value must be a "
                             "number (or a one-element tensor)") from None
    return loss, values


def batches(examples: Sequence[Example], collate: Callable, batch_size: int, seed: int, start: int = 0,
            rank: int = 0, world: int = 1):
    """Batches of ``examples`` forever, reshuffled each epoch by a generator seeded once, from
    micro-batch number ``start`` on: a resumed run skips (without collating) the batches it had used,
    so it sees exactly those an uninterrupted run would. Each batch carries ``index``, the examples'
    positions in ``examples``, for objectives that look up per-example caches.

    With ``world`` processes every process draws the same global batch and collates only its slice
    ``chosen[rank::world]``. Yields ``(epoch, batch, real)``: ``real`` is False when the slice is
    empty (an epoch's last batch can hold fewer examples than there are processes); the process then
    gets the batch's first example to weight by zero, since DDP needs every process in every step."""
    loader = DataLoader(range(len(examples)), batch_size=batch_size, shuffle=True, collate_fn=list,
                        generator=torch.Generator().manual_seed(seed))
    micro = 0
    for epoch in itertools.count():
        for chosen in loader:
            if micro >= start:
                mine = chosen[rank::world]
                real = bool(mine)
                mine = mine or chosen[:1]
                batch = collate([examples[j] for j in mine])
                batch["index"] = torch.tensor(mine)
                yield epoch, batch, real
            micro += 1


def batch_units(batch: dict) -> tuple[int, int]:
    """(rows, answer tokens) of a batch: what the methods' means run over (answer tokens counted after
    the shift, as the losses count them)."""
    rows = len(batch["index"])
    labels = batch.get("labels")
    return rows, int(answer_token_counts(labels).sum()) if labels is not None else 0


def attach_shares(group: list[dict[str, tuple[dict, bool]]], accelerator, accum: int) -> None:
    """Give each batch of an optimiser step (``accum`` micro-batches on each process, each a stream name ->
    ``(batch, real)``) its share of the step's global batch, per unit (``row_share``, ``token_share``):
    ``n · world · accum / N`` for n of the N rows (or answer tokens) of all the step's micro-batches on all
    processes.

    A method's loss is a mean over its micro-batch; times its share it becomes the micro-batch's sum over
    N, times world · accum. The backward pass divides by accum and DDP averages over the world, so the
    step's gradient is that of the mean over the whole step, as with one batch on one process, however
    unevenly the rows and tokens fall into micro-batches and processes."""
    names = list(group[0])
    local = torch.tensor([[batch_units(batch) if real else (0, 0) for batch, real in (drawn[n] for n in names)]
                          for drawn in group], dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local.sum(0), reduction="sum")
    shares = (local * accelerator.num_processes * accum / total.clamp_min(1.0)).float().cpu()
    for drawn, step_shares in zip(group, shares):
        for name, (rows, tokens) in zip(names, step_shares):
            drawn[name][0]["row_share"], drawn[name][0]["token_share"] = rows, tokens


def lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if kind == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return f



def rng_state() -> dict[str, torch.Tensor]:
    """This process's random state: the CPU generator's and, on a GPU, its device's, which dropout there
    draws from."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor] | torch.Tensor) -> None:
    """Restore :func:`rng_state` (or a bare CPU state, as older checkpoints hold)."""
    state = state if isinstance(state, dict) else {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, step: int, history: list[dict],
                    rng_states: list[dict] | None = None, pending: dict | None = None, scaler=None) -> None:
    """Trainable weights (safetensors) and the optimiser's state, written atomically: a run killed at
    any moment leaves either the previous checkpoint or this one, never half of one. Under DDP the
    main process writes it (every process holds the same weights and optimiser state) with every
    process's RNG state (``rng_states``, :func:`rng_state` in process order). ``pending``: the loss sums
    not yet logged, so that a resumed run logs the averages an uninterrupted one would; ``scaler``: fp16's
    gradient scaler, whose loss scale goes on from where it was."""
    from safetensors.torch import save_file

    final, tmp, old = run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.tmp", run_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    also = tuple(getattr(model, "checkpoint_also", ()))  # weights set before the loop and frozen in it (CAGUL's)
    weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
               if p.requires_grad or n.startswith(also)}
    save_file(weights, str(tmp / CHECKPOINT_WEIGHTS))
    rng_states = rng_states or [rng_state()]
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "history": history, "rng_by_process": rng_states, "pending": pending or {},
                **({"scaler": scaler.state_dict()} if scaler is not None else {})}, tmp / "state.pt")
    as_umask_gives(*tmp.iterdir())
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # left by a rotation stopped after its last step: final is newer
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def last_logged_loss(history: list[dict]) -> str:
    """The last row of a run's history as said at its end: a logged loss is the mean over the steps since the row
    before (metrics.json's final_loss is this mean too)."""
    if not history or "loss" not in history[-1]:
        return "no loss logged"
    last, first = history[-1]["step"], history[-2]["step"] + 1 if len(history) > 1 else 1
    over = f"step {last}'s" if first == last else f"the mean over steps {first}–{last}"
    return f"loss {history[-1]['loss']:.4f} ({over})"


def load_checkpoint(run_dir: Path, model, optimizer, scheduler, rank: int = 0, world: int = 1,
                    scaler=None) -> tuple[int, list[dict], dict]:
    from safetensors.torch import load_file

    path = next(iter(checkpoints(run_dir)), None)
    if path is None:
        raise VikerError(f"{run_dir}: no checkpoint to resume from")
    weights = load_file(str(path / CHECKPOINT_WEIGHTS))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    by_process = state.get("rng_by_process") or [state["rng"]]  # older checkpoints: one CPU state
    set_rng_state(by_process[rank] if len(by_process) == world else by_process[0])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return state["step"], state["history"], state.get("pending", {})


def make_accelerator(cfg: TrainConfig, resume: bool = False, device: str | None = None, dtype: str = "auto"):
    """The run's ``Accelerator``, made before the model is loaded: it says how many processes there are,
    which device is this process's and whether the model will be sharded (which decides where to load
    it). Under ``accelerate launch`` the launcher's configuration (DDP, FSDP, DeepSpeed) applies;
    ``cfg.mixed_precision``, when set, overrides the launcher's. What a sharded run cannot do is
    refused here, before anything is loaded. ``device`` (``--device``, one process only) is where accelerate
    trains: the CPU, or the GPU it names (accelerate moves a single process's model to the current GPU). ``dtype``
    (``--dtype``) is refused where the CPU's autocast cannot take it."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedType

    from viker.model import check_cpu_autocast, check_mixed_precision, pick_device

    check_mixed_precision(cfg.mixed_precision)
    single = int(os.environ.get("WORLD_SIZE") or 1) == 1
    if single:
        from accelerate.state import AcceleratorState

        # accelerate keeps one state per process, made by its first Accelerator: a second run in the same
        # process (the demo, a notebook) would refuse another --mixed-precision, or keep the first run's
        # autocast where it sets none. One process runs one run at a time, so each starts from a fresh state.
        AcceleratorState._reset_state()
    chosen = pick_device(device) if device and single else None
    if chosen is not None and chosen.type == "cuda" and chosen.index is not None:
        torch.cuda.set_device(chosen)
    # split_batches: --batch-size is the global batch, split across the processes, so the schedule takes one
    # step per optimiser step whatever their number (by default accelerate takes one per process)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                              cpu=not torch.cuda.is_available() or (chosen is not None and chosen.type == "cpu"),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    check_mixed_precision(accelerator.mixed_precision, accelerator.device.type,
                          "--mixed-precision" if cfg.mixed_precision else "the launcher's mixed_precision:")
    if dtype != "auto":
        check_cpu_autocast(dtype, accelerator.mixed_precision, accelerator.device.type)
    if shards_model(accelerator) and (cfg.checkpoint_every or resume):
        raise VikerError("--checkpoint-every/--resume: checkpoints are written on one process and under DDP; "
                         "under FSDP or DeepSpeed the optimiser state is split across processes")
    if accelerator.distributed_type == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise VikerError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config "
                         "(configs/accelerate/fsdp.yaml)")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        steps = accelerator.state.deepspeed_plugin.deepspeed_config.get("gradient_accumulation_steps", "auto")
        if steps not in ("auto", cfg.grad_accum):
            raise VikerError(f"the DeepSpeed config's gradient_accumulation_steps ({steps}) differs from "
                             f"--grad-accum {cfg.grad_accum}; leave it out of the config (auto)")
    return accelerator


def shards_model(accelerator) -> bool:
    """FSDP and DeepSpeed split the weights or the optimiser state across processes: no process can
    save, checkpoint or run the model alone."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def load_device(accelerator, requested: str | None = None) -> str:
    """Where this process loads the model: its own device, or the CPU when accelerate will shard the
    model (FSDP/DeepSpeed move each process's part to its device; the whole may not fit on one)."""
    if accelerator.num_processes > 1 and requested:
        raise VikerError(f"--device {requested}: under a multi-process launch each process uses the device "
                         "accelerate gives it; leave --device out")
    if shards_model(accelerator):
        return "cpu"
    from viker.model import pick_device

    return str(pick_device(requested)) if requested else str(accelerator.device)


def load_dtype(accelerator, dtype: str = "auto") -> str:
    """``auto``: bf16 weights when the processes' devices are GPUs that have it, else float32 (decided by
    the device the model will train on, not the CPU a sharded model is loaded on)."""
    from viker.model import pick_dtype

    return dtype if dtype != "auto" else str(pick_dtype(accelerator.device)).removeprefix("torch.")


def load_for_training(accelerator, path: str, device: str | None = None, dtype: str = "auto",
                      trust_remote_code: bool = False):
    """A model and its processor, loaded where and in the dtype this process will train it
    (:func:`load_device`, :func:`load_dtype`)."""
    from viker.model import load_model

    return load_model(path, load_device(accelerator, device), load_dtype(accelerator, dtype), trust_remote_code,
                      check_inputs=False)  # Collator.preflight runs the run's own first image question


def runtime_info(accelerator, model: torch.nn.Module) -> dict:
    """What a run's config.json records about how it ran, ``weights_dtype`` (what ``--dtype auto`` became: the
    dtype most of the model's weights are held in) and the layers LoRA adapts (what target modules left unset
    became: ``lora_layers`` of them, of the kinds ``lora_targets`` names) included."""
    from viker.model import weights_dtype

    info = {"processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type.value),
            "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device),
            "weights_dtype": weights_dtype(model)}
    adapted = [name for name, module in accelerator.unwrap_model(model).named_modules() if hasattr(module, "lora_A")]
    if adapted:
        info |= {"lora_layers": len(adapted), "lora_targets": sorted({name.rsplit(".", 1)[-1] for name in adapted})}
    return info


def half_precision_training(params: list[torch.nn.Parameter], accelerator) -> str | None:
    """A warning when the optimiser would update half-precision weights in place: with no float32 copy, an
    update smaller than the weight's rounding step (about 1/256 of it in bf16) is lost, so many weights never
    move at a small learning rate. LoRA adapters are float32 (peft upcasts them); full tuning of a model
    loaded in bf16 (``--dtype auto`` on a GPU) is what this catches. DeepSpeed keeps float32 master weights
    of its own."""
    from accelerate.utils import DistributedType

    half = {str(p.dtype).removeprefix("torch.") for p in params if p.dtype in (torch.bfloat16, torch.float16)}
    if not half or accelerator.distributed_type == DistributedType.DEEPSPEED:
        return None
    return (f"the trained weights are {'/'.join(sorted(half))}, and the optimiser updates them in place with no "
            "float32 copy, so small updates are rounded away; for full tuning load float32 weights and autocast "
            "(--dtype float32 --mixed-precision bf16; docs/distributed.md)")


@dataclass
class Prepared:
    """The model, optimiser and schedule as accelerate wrapped them (DDP, FSDP, DeepSpeed or nothing)."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    total: int  # optimiser steps of the run
    batches_per_epoch: int = 1  # micro-batches


def prepare(model: torch.nn.Module, cfg: TrainConfig, n_examples: int, accelerator=None,
            resume: bool = False) -> Prepared:
    """Optimiser and schedule for ``model``'s trainable parameters, wrapped by accelerate. A run prepares
    before its method's setup, so that the reference pass of a sharded model runs on the shards;
    ``n_examples`` (of the first stream) sets the epoch length."""
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    accelerator = accelerator or make_accelerator(cfg, resume)
    world = accelerator.num_processes
    sharded = shards_model(accelerator)
    if world > 1 and not sharded and any(p.requires_grad and "lora_" not in n for n, p in model.named_parameters()):
        # full tuning: a batch without images leaves the vision tower without gradients on that process
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if plugin.is_auto("train_micro_batch_size_per_gpu"):  # no DataLoader is prepared to infer it from
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = math.ceil(cfg.batch_size / world)
        if plugin.is_auto("gradient_clipping"):  # DeepSpeed clips inside its step
            plugin.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm or 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # a model passed in from Python, frozen before
        raise VikerError("no weight of the model is trainable (every parameter's requires_grad is False): pass one "
                         "whose weights train, or load it again")
    if any(p.dtype == torch.float16 for p in params) and accelerator.distributed_type != DistributedType.DEEPSPEED:
        # AdamW's ε (1e-8) is 0 in float16: a weight whose gradient is 0 gets 0/0, the first step gives NaN
        autocast = "--mixed-precision bf16" if accelerator.device.type == "cpu" else "--mixed-precision fp16"
        raise VikerError("float16 weights cannot be trained in place (AdamW's ε is 0 in float16, and its first step "
                         f"gives NaN): load float32 weights and autocast (--dtype float32 {autocast}), "
                         "or train LoRA adapters, which are float32")
    if accelerator.is_main_process and (warning := half_precision_training(params, accelerator)):
        print(f"warning: {warning}", file=sys.stderr)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # The batches run on across epochs (a step can end in the next epoch): E epochs are E passes' batches,
    # rounded up to whole optimiser steps.
    batches_per_epoch = math.ceil(n_examples / cfg.batch_size)
    # in exact fractions: 0.07 epochs of 100 batches is 7 steps, where floats make it 7.000000000000001 (8)
    total = cfg.max_steps or max(1, math.ceil(Fraction(str(cfg.epochs)) * batches_per_epoch / cfg.grad_accum))
    passes = Fraction(total * cfg.grad_accum, batches_per_epoch)
    if not cfg.max_steps and passes > Fraction(str(cfg.epochs)) * Fraction(5, 4) and accelerator.is_main_process:
        print(f"warning: --epochs {cfg.epochs:g} takes {total} optimiser step{'s' if total > 1 else ''} of "
              f"{cfg.grad_accum} batches of {cfg.batch_size}, rounded up: {float(passes):g} passes over the "
              f"{n_examples} examples; lower --grad-accum or --batch-size to train about {cfg.epochs:g}",
              file=sys.stderr)
    # a snapshot is taken where a step before the last completes N passes (train): a run this short takes none
    if cfg.snapshot_every and (total - 1) * cfg.grad_accum // batches_per_epoch < cfg.snapshot_every and \
            accelerator.is_main_process:
        print(f"warning: --snapshot-every {cfg.snapshot_every}: the run trains {float(passes):g} pass"
              f"{'es' * (passes != 1)} over its {n_examples} examples, and saves no snapshot (one is saved where a "
              f"step before the last completes {cfg.snapshot_every}; the last step's model is the run's own)",
              file=sys.stderr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.scheduler, int(cfg.warmup_ratio * total), total)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return Prepared(accelerator, model, optimizer, scheduler, total, batches_per_epoch)


def check_same_examples(data: dict[str, Sequence[Example]]) -> None:
    """Refuse processes that read different examples (a node-local copy of the data that differs from the others):
    their gradients were averaged into a run no one dataset gives, and a process with fewer steps left the others
    waiting for it for good. Called on every process together."""
    import torch.distributed as dist

    def sha(blob: bytes) -> str:
        return hashlib.sha256(blob).hexdigest()

    read = {name: [[ex.question, ex.answer, ex.image and sha(ex.image)] for ex in examples]
            for name, examples in data.items()}
    # torch's gather, not accelerate's gather_object: the trainer's own calls of that (before each checkpoint) are
    # where the distributed tests stop a run, and keep their count
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, sha(json.dumps(read).encode()))
    if len(set(digests)) > 1:
        raise VikerError("the processes read different examples: give every process the same --data (a copy on each "
                         "node must hold the same files)")


def train(
    model: torch.nn.Module,
    objective: Objective,
    data: dict[str, Sequence[Example]],
    collate: Callable,
    cfg: TrainConfig,
    desc: str = "training",
    progress: bool = True,
    run_dir: str | Path | None = None,
    resume: bool = False,
    prepared: Prepared | None = None,
    snapshot: Callable[[int], Any] | None = None,
) -> list[dict]:
    """Optimise ``model`` (only its trainable parameters) on ``objective``; return the logged history.

    With ``run_dir`` and ``cfg.checkpoint_every``, a checkpoint is written every that many steps;
    ``resume=True`` continues from it and ends with the weights an uninterrupted run would have.
    ``prepared`` (from :func:`prepare`) trains the model it holds; without it ``model`` is prepared
    here. With ``cfg.snapshot_every``, ``snapshot(epochs)`` is called on every process after each that
    many epochs but the last (the caller saves the model as it is then). On several processes every
    process returns the same history (losses averaged over them)."""
    from accelerate.utils import gather_object, set_seed

    for name in objective.streams:
        if not data.get(name):
            raise VikerError(f"the '{name}' data is empty: nothing to train on")
    main, *others = objective.streams
    if prepared is None:
        set_seed(cfg.seed)
        prepared = prepare(model, cfg, len(data[main]), resume=resume)
    accelerator, model, optimizer, scheduler, total = (prepared.accelerator, prepared.model, prepared.optimizer,
                                                       prepared.scheduler, prepared.total)
    rank, world = accelerator.process_index, accelerator.num_processes
    if world > 1:
        check_same_examples({name: data[name] for name in objective.streams})
    params = [p for p in model.parameters() if p.requires_grad]  # after prepare: FSDP replaces them
    set_seed(cfg.seed)
    run_dir = Path(run_dir) if run_dir is not None else None
    step, history, pending = 0, [], {}
    if resume:
        if run_dir is None:
            raise VikerError("resuming needs the run folder")
        step, history, pending = load_checkpoint(run_dir, accelerator.unwrap_model(model), optimizer, scheduler,
                                                 rank, world, accelerator.scaler)
        if step >= total:
            raise VikerError(f"--resume: the checkpoint is at step {step}, and this run has {total} steps")
        if progress and accelerator.is_main_process:
            print(f"resuming from the checkpoint at step {step} of {total}", file=sys.stderr)
    start = step * cfg.grad_accum  # micro-batches already consumed by every stream
    streams = {name: batches(data[name], collate, cfg.batch_size, cfg.seed + i, start, rank, world)
               for i, name in enumerate(objective.streams)}

    model.train()
    running, n_micro = pending.get("running", {}), pending.get("micro", 0)
    bar = progress_bar(total=total, initial=step, desc=desc, disable=not progress or not accelerator.is_main_process,
                       dynamic_ncols=True)
    # what to do where the loss diverges: --resume keeps the rate the run started with, and would diverge again
    # (a loss may diverge from a method's weight as well: --lam, --beta, --retain-weight of 1e308; a learning rate
    # that overflows the optimiser is the rate's alone)
    def lower(also: str = "") -> str:
        return (f"start the run again with a lower --lr{also} and --overwrite" if run_dir is not None else
                f"lower the learning rate{also}")

    again = lower()  # the rate overflowed the optimiser
    how = lower("" if getattr(objective, "name", None) == "finetune" else
                " (or a smaller weight of the method's terms)")  # the loss diverged
    while step < total:
        lr = scheduler.get_last_lr()[0]  # the rate this step uses (the scheduler moves on after it)
        group = []  # the step's micro-batches, drawn first so that each is weighted by its share of the step
        for _ in range(cfg.grad_accum):
            _, batch, real = next(streams[main])
            group.append({main: (batch, real)} | {name: next(streams[name])[1:] for name in others})
        if world * cfg.grad_accum > 1:
            attach_shares(group, accelerator, cfg.grad_accum)
        for drawn in group:
            with accelerator.accumulate(model):
                batches_now = {k: {key: v.to(accelerator.device) for key, v in b.items()}
                               for k, (b, _) in drawn.items()}
                loss, logs = step_loss(objective, model, batches_now)
                values = {"loss": loss.item(), **logs}
                if world > 1:  # every process logs (and checks) the loss of the whole global batch
                    mean = accelerator.reduce(torch.tensor(list(values.values()), dtype=torch.float64,
                                                          device=accelerator.device), "mean")
                    values = dict(zip(values, mean.tolist()))
                if not math.isfinite(values["loss"]):  # steps counted from 1, as history.json counts them
                    raise VikerError(f"step {step + 1}: the loss became {values['loss']} (diverged); {how}")
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                try:
                    optimizer.step()
                except RuntimeError as e:  # a rate too large for the optimizer's float arithmetic (lr / (1 - β₁))
                    if "overflow" not in str(e):
                        raise
                    raise VikerError(f"step {step + 1}: the learning rate {lr:g} (this step's) overflows the "
                                     f"optimizer's arithmetic; {again}") from None
                scheduler.step()
                optimizer.zero_grad()
            for k, v in values.items():
                running[k] = running.get(k, 0.0) + v
            n_micro += 1
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            # epochs done, as snapshot folders count them: 1.0 at the end of the first pass
            row = {"step": step, "epoch": round(step * cfg.grad_accum / prepared.batches_per_epoch, 4), "lr": lr}
            row |= {k: v / n_micro for k, v in running.items()}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
            running, n_micro = {}, 0
        if snapshot is not None and cfg.snapshot_every and step < total:
            passes = [n * cfg.grad_accum // prepared.batches_per_epoch for n in (step - 1, step)]
            for epochs in range(passes[0] + 1, passes[1] + 1):  # the epochs this step completed
                if epochs % cfg.snapshot_every == 0:
                    snapshot(epochs)
        if run_dir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            rng = gather_object([rng_state()]) if world > 1 else None
            if accelerator.is_main_process:
                save_checkpoint(run_dir, accelerator.unwrap_model(model), optimizer, scheduler, step, history, rng,
                                {"running": running, "micro": n_micro}, accelerator.scaler)
    bar.close()
    model.eval()
    # no step came after the last update to see the loss it leads to: its own last batches are scored once more, so
    # that weights that diverged there are not saved as the run's model
    with torch.no_grad():
        after = step_loss(objective, model, batches_now)[0].detach().float().reshape(1)
    if world > 1:  # every process stops, or none
        after = accelerator.reduce(after.to(accelerator.device), "mean")
    if not math.isfinite(after.item()):
        raise VikerError(f"step {step}, the last: the loss after its update became {after.item()} (diverged); {how}")
    return history


def finished_state_dict(prepared: Prepared) -> dict | None:
    """The whole trained state dict when the model is sharded (every process must call this: the
    shards are gathered to the main process); None otherwise (the main process saves its own copy)."""
    if not shards_model(prepared.accelerator):
        return None
    return prepared.accelerator.get_state_dict(prepared.model)


def finish_run(prepared: Prepared, run_dir: str | Path, records: dict[str, Any], save: Callable[[dict | None], Any]):
    """End a training run. Every process takes part in gathering a sharded model's weights; the main process
    then writes ``records`` (file name -> JSON value) into ``run_dir``, calls ``save(state_dict)`` and drops
    the resume checkpoint. Every process returns once the run folder is complete; the main process returns
    what ``save`` returned, the others None."""
    state_dict = finished_state_dict(prepared)
    saved = None
    if prepared.accelerator.is_main_process:
        for name, value in records.items():
            write_json(Path(run_dir) / name, value)
        saved = save(state_dict)
        discard_checkpoint(run_dir)
    prepared.accelerator.wait_for_everyone()
    return saved


def discard_checkpoint(run_dir: str | Path) -> None:
    """Once the finished model is saved, its checkpoints are no longer needed: the last, and the one before it
    that a rotation stopped midway leaves (``--resume`` would take it for a run still to finish)."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.tmp"):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)
