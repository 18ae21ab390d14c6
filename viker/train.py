"""The one training loop: vanilla finetuning and every unlearning method go through it.

Design: a plain loop on Hugging Face ``accelerate`` rather than ``transformers.Trainer``. Unlearning
objectives consume several data streams at once (a forget batch paired with a retain batch), keep a
frozen reference model beside the trained one and read cached reference distributions by example
index; in a ``Trainer`` each of those means overriding internals, while here an objective is one small
object with a ``loss(model, batches)`` method and the loop stays short enough to read in one sitting.
``accelerate`` still gives us devices, mixed precision, gradient accumulation and DDP/FSDP.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from viker.collate import model_inputs
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


class Objective(Protocol):
    """What a method says: which data streams it reads and the loss of one step."""

    streams: tuple[str, ...]  # the first one sets the epoch length; the others are cycled alongside

    def loss(self, model: torch.nn.Module, batches: dict[str, dict]) -> tuple[torch.Tensor, dict[str, float]]:
        ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class IndexedExamples(torch.utils.data.Dataset):
    """Examples that remember their position, so objectives can look up per-example caches."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[int, Example]:
        return i, self.examples[i]


def make_loader(examples: Sequence[Example], collate: Callable, batch_size: int, seed: int, shuffle: bool = True):
    def collate_indexed(items):
        batch = collate([ex for _, ex in items])
        batch["index"] = torch.tensor([i for i, _ in items])
        return batch

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(IndexedExamples(examples), batch_size=batch_size, shuffle=shuffle,
                      collate_fn=collate_indexed, generator=generator)


def _cycle(loader):
    while True:
        yield from loader


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


def train(
    model: torch.nn.Module,
    objective: Objective,
    data: dict[str, Sequence[Example]],
    collate: Callable,
    cfg: TrainConfig,
    desc: str = "training",
    progress: bool = True,
) -> list[dict]:
    """Optimise ``model`` (only its trainable parameters) on ``objective``; return the logged history."""
    from accelerate import Accelerator

    for name in objective.streams:
        if not data.get(name):
            raise VikerError(f"the '{name}' data is empty: nothing to train on")
    seed_everything(cfg.seed)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                              cpu=not torch.cuda.is_available())
    loaders = {name: make_loader(data[name], collate, cfg.batch_size, cfg.seed + i)
               for i, name in enumerate(objective.streams)}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(loaders[objective.streams[0]]) / cfg.grad_accum)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.scheduler, int(cfg.warmup_ratio * total), total)
    )
    model, optimizer, scheduler, *prepared = accelerator.prepare(model, optimizer, scheduler, *loaders.values())
    loaders = dict(zip(loaders, prepared))
    main, *others = objective.streams
    streams = {name: _cycle(loaders[name]) for name in others}
    epochs = itertools.count()

    model.train()
    history: list[dict] = []
    step, running, n_micro = 0, {}, 0
    bar = tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True)
    while step < total:
        epoch = next(epochs)
        for batch in loaders[main]:
            with accelerator.accumulate(model):
                batches = {main: batch} | {name: next(it) for name, it in streams.items()}
                loss, logs = objective.loss(model, batches)
                if not torch.isfinite(loss):
                    raise VikerError(f"step {step}: the loss became {loss.item()}; lower the learning rate")
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
            if step >= total:
                break
    bar.close()
    model.eval()
    return history

