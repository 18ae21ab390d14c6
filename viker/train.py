"""The one training loop: vanilla finetuning and every unlearning method go through it.

Design: a plain loop on Hugging Face ``accelerate`` rather than ``transformers.Trainer``. Unlearning
objectives consume several data streams at once (a forget batch paired with a retain batch), keep a
frozen reference model beside the trained one and read cached reference distributions by example
index; in a ``Trainer`` each of those means overriding internals, while here an objective is one small
object with a ``loss(model, batches)`` method and the loop stays short enough to read in one sitting.
``accelerate`` gives us devices, mixed precision and gradient accumulation. (Runs are single-process
for now: splitting the batches across several processes is not done yet.)
"""

from __future__ import annotations

import itertools
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from viker.data.schema import Example
from viker.errors import VikerError


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "constant"  # constant | linear | cosine
    max_grad_norm: float | None = 1.0
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16
    log_every: int = 10
    checkpoint_every: int = 0  # steps between checkpoints (0: none)


class Objective(Protocol):
    """What a method says: which data streams it reads and the loss of one step."""

    streams: tuple[str, ...]  # the first one sets the epoch length; the others are cycled alongside

    def loss(self, model: torch.nn.Module, batches: dict[str, dict]) -> tuple[torch.Tensor, dict[str, float]]:
        ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batches(examples: Sequence[Example], collate: Callable, batch_size: int, seed: int, start: int = 0):
    """Batches of ``examples`` forever, reshuffled each epoch by a generator seeded once, from
    micro-batch number ``start`` on: a resumed run skips (without collating) the batches it had used,
    so it sees exactly those an uninterrupted run would. Each batch carries ``index``, the examples'
    positions in ``examples``, for objectives that look up per-example caches."""
    loader = DataLoader(range(len(examples)), batch_size=batch_size, shuffle=True, collate_fn=list,
                        generator=torch.Generator().manual_seed(seed))
    micro = 0
    for epoch in itertools.count():
        for chosen in loader:
            if micro >= start:
                batch = collate([examples[j] for j in chosen])
                batch["index"] = torch.tensor(chosen)
                yield epoch, batch
            micro += 1


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


CHECKPOINT = "checkpoint"


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, step: int, history: list[dict]) -> None:
    """Trainable weights (safetensors) and the optimiser's state, written atomically: a run killed at
    any moment leaves either the previous checkpoint or this one, never half of one."""
    from safetensors.torch import save_file

    final, tmp, old = run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.tmp", run_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "history": history, "rng": torch.get_rng_state()}, tmp / "state.pt")
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    path = next((run_dir / d for d in (CHECKPOINT, f"{CHECKPOINT}.old") if (run_dir / d / "state.pt").is_file()),
                None)
    if path is None:
        raise VikerError(f"{run_dir}: no checkpoint to resume from")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["step"], state["history"]


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
) -> list[dict]:
    """Optimise ``model`` (only its trainable parameters) on ``objective``; return the logged history.

    With ``run_dir`` and ``cfg.checkpoint_every``, a checkpoint is written every that many steps;
    ``resume=True`` continues from it and ends with the weights an uninterrupted run would have."""
    from accelerate import Accelerator

    for name in objective.streams:
        if not data.get(name):
            raise VikerError(f"the '{name}' data is empty: nothing to train on")
    seed_everything(cfg.seed)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                              cpu=not torch.cuda.is_available())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    main, *others = objective.streams
    steps_per_epoch = math.ceil(math.ceil(len(data[main]) / cfg.batch_size) / cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.scheduler, int(cfg.warmup_ratio * total), total)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run_dir = Path(run_dir) if run_dir is not None else None
    step, history = 0, []
    if resume:
        if run_dir is None:
            raise VikerError("resuming needs the run folder")
        step, history = load_checkpoint(run_dir, model, optimizer, scheduler)
    start = step * cfg.grad_accum  # micro-batches already consumed by every stream
    streams = {name: batches(data[name], collate, cfg.batch_size, cfg.seed + i, start)
               for i, name in enumerate(objective.streams)}

    model.train()
    running, n_micro = {}, 0
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, dynamic_ncols=True)
    while step < total:
        with accelerator.accumulate(model):
            epoch, batch = next(streams[main])
            batches_now = {main: batch} | {name: next(streams[name])[1] for name in others}
            batches_now = {k: {key: v.to(accelerator.device) for key, v in b.items()} for k, b in batches_now.items()}
            loss, logs = objective.loss(model, batches_now)
            if not torch.isfinite(loss):
                where = f"; the last good checkpoint is {run_dir / CHECKPOINT}" if run_dir is not None and \
                    (run_dir / CHECKPOINT).exists() else ""
                raise VikerError(f"step {step}: the loss became {loss.item()} (diverged); lower the learning rate{where}")
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        for k, v in {"loss": loss.item(), **logs}.items():
            running[k] = running.get(k, 0.0) + v
        n_micro += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            row = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0]}
            row |= {k: v / n_micro for k, v in running.items()}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            running, n_micro = {}, 0
        if run_dir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            save_checkpoint(run_dir, accelerator.unwrap_model(model), optimizer, scheduler, step, history)
    bar.close()
    model.eval()
    return history


def discard_checkpoint(run_dir: str | Path) -> None:
    """Once the finished model is saved, its checkpoint is no longer needed."""
    shutil.rmtree(Path(run_dir) / CHECKPOINT, ignore_errors=True)
