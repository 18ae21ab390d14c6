"""Gradient accumulation: an optimiser step over accumulated micro-batches is the step one batch of them
would give, and --epochs counts passes over the data whatever --grad-accum is."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

import viker.train
from viker.collate import IGNORE_INDEX
from viker.methods.base import share
from viker.train import TrainConfig, train

# Example i has i + 1 answer tokens worth values[i] each, and a row value rows[i]: micro-batches of one
# step hold different numbers of rows and tokens.
TOKENS = [1, 2, 5, 8]
VALUES = [[0.5 + i + 0.1 * j for j in range(8)] for i in range(4)]
ROWS = [3.0, -1.0, 2.0, 0.5]


def collate(indices: list[int]) -> dict:
    longest = max(TOKENS[i] for i in indices)
    labels = torch.full((len(indices), longest + 1), IGNORE_INDEX)  # the first position is the shifted-out one
    values = torch.zeros(len(indices), longest)
    for row, i in enumerate(indices):
        labels[row, 1 : TOKENS[i] + 1] = 1
        values[row, : TOKENS[i]] = torch.tensor(VALUES[i][: TOKENS[i]])
    return {"labels": labels, "values": values, "rows": torch.tensor([ROWS[i] for i in indices])}


class Means:
    """A mean over answer tokens (as ViKeR's loss) plus a mean over rows (as GA's), each times its share."""

    streams = ("train",)

    def __init__(self):
        self.seen: list[list[int]] = []

    def loss(self, model, batches):
        batch = batches["train"]
        self.seen.append(batch["index"].tolist())
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        tokens = (model.w[0] * batch["values"] * mask).sum() / mask.sum() * share(batch, "token")
        rows = (model.w[1] * batch["rows"]).mean() * share(batch, "row")
        return tokens + rows, {}


class Weights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


def _one_step(batch_size: int, grad_accum: int, monkeypatch) -> torch.Tensor:
    monkeypatch.setattr(viker.train.torch.optim, "AdamW", lambda params, lr, weight_decay: torch.optim.SGD(params, lr))
    model = Weights()
    train(model, Means(), {"train": list(range(4))}, collate,
          TrainConfig(max_steps=1, batch_size=batch_size, grad_accum=grad_accum, lr=1.0, max_grad_norm=None),
          progress=False)
    return -model.w.detach()  # SGD from zero at lr 1: the step's gradient


def test_an_accumulated_step_is_the_step_of_one_batch(monkeypatch):
    token_mean = sum(sum(VALUES[i][: TOKENS[i]]) for i in range(4)) / sum(TOKENS)
    row_mean = sum(ROWS) / 4
    whole = _one_step(4, 1, monkeypatch)
    torch.testing.assert_close(whole, torch.tensor([token_mean, row_mean]))
    for batch_size, grad_accum in ((2, 2), (1, 4)):  # micro-batches of unequal rows and tokens
        torch.testing.assert_close(_one_step(batch_size, grad_accum, monkeypatch), whole)


@pytest.mark.parametrize("examples, batch_size, grad_accum, epochs", [(22, 3, 3, 3), (18, 4, 2, 5), (20, 4, 4, 5)])
def test_epochs_are_passes_over_the_data_whatever_the_accumulation(examples, batch_size, grad_accum, epochs):
    objective, snapshots = Means(), []
    per_epoch = math.ceil(examples / batch_size)
    history = train(Weights(), objective, {"train": [i % 4 for i in range(examples)]}, collate,
                    TrainConfig(epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, log_every=1,
                                snapshot_every=1),
                    progress=False, snapshot=snapshots.append)
    steps = math.ceil(epochs * per_epoch / grad_accum)  # rounded up to whole steps
    # each micro-batch scored once, and the last once more after the last update (a look at where it leads)
    assert len(history) == steps and len(objective.seen) == steps * grad_accum + 1
    assert objective.seen[-1] == objective.seen[-2]
    assert steps * grad_accum - epochs * per_epoch < grad_accum  # at most one step's batches beyond the passes
    visits = Counter(i for batch in objective.seen[: epochs * per_epoch] for i in batch)  # positions in the data
    assert sorted(visits) == list(range(examples)) and set(visits.values()) == {epochs}  # each once an epoch
    assert snapshots == list(range(1, epochs))  # after each epoch but the last
    # history counts the passes done as the snapshots do: epoch k ends at the first row at or above k
    assert [row["epoch"] for row in history] == pytest.approx(
        [s * grad_accum / per_epoch for s in range(1, steps + 1)], abs=1e-4)


def test_history_gives_the_learning_rate_each_step_used():
    history = train(Weights(), Means(), {"train": list(range(4))}, collate,
                    TrainConfig(max_steps=4, batch_size=2, grad_accum=2, lr=0.8, scheduler="linear", log_every=1),
                    progress=False)
    assert [row["lr"] for row in history] == pytest.approx([0.8, 0.6, 0.4, 0.2])  # 0.8 · (1 − (k − 1)/4)


def test_a_warm_up_rises_to_the_rate_and_cosine_decay_starts_where_it_ends():
    """Half the steps warm up (step k of w at lr · k/w: the first step moves the weights), then a cosine from the
    full rate over the steps left: 0.8 · (1 + cos(π · (k − w)/(n − w)))/2."""
    history = train(Weights(), Means(), {"train": list(range(4))}, collate,
                    TrainConfig(max_steps=4, batch_size=2, grad_accum=1, lr=0.8, scheduler="cosine", warmup_ratio=0.5,
                                log_every=1), progress=False)
    assert [row["lr"] for row in history] == pytest.approx([0.4, 0.8, 0.8, 0.4])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_training_half_precision_weights_in_place_is_warned_of(dtype, capsys):
    """AdamW on bf16 weights, with no float32 copy, rounds small updates away (full tuning of a model loaded
    with --dtype auto on a GPU): a run says so and how to train instead; float32 weights train silently."""
    from viker.train import prepare

    model = Weights().to(dtype)
    with torch.no_grad():
        model.w.fill_(1.0)
    prepared = prepare(model, TrainConfig(lr=1e-4, max_steps=1, warmup_ratio=0.0, weight_decay=0.0), n_examples=4)
    model.w.grad = torch.ones_like(model.w)
    prepared.optimizer.step()
    moved = bool((model.w != 1.0).all())
    warned = "--dtype float32 --mixed-precision bf16" in capsys.readouterr().err
    assert moved == (dtype == torch.float32)  # a 1e-4 step of a weight of 1 is below bf16's rounding step
    assert warned == (not moved)


@pytest.mark.parametrize("epochs, examples, accum, steps, passes", [
    (0.07, 800, 1, 7, None), (0.28, 200, 1, 7, None), (0.28, 200, 7, 1, None), (2.5, 16, 1, 5, None),
    (1, 17, 2, 2, "1.33333"), (1, 16, 100, 1, "50")])
def test_a_fraction_of_an_epoch_takes_the_steps_it_names(epochs, examples, accum, steps, passes, capsys):
    """--epochs 0.07 over 100 batches is 7 steps: float rounding (0.07 * 100 = 7.000000000000001) must not
    add an eighth; a part step is still rounded up to a whole one, and where that trains much more than asked
    (--epochs 1 --grad-accum 100 over 2 batches: 50 passes), the run says so."""
    from viker.train import prepare

    cfg = TrainConfig(epochs=epochs, batch_size=8, grad_accum=accum)
    assert prepare(Weights(), cfg, n_examples=examples).total == steps
    err = capsys.readouterr().err
    assert (f"rounded up: {passes} passes over the {examples} examples" in err) if passes else "rounded up" not in err


def test_runs_in_one_process_each_get_their_own_mixed_precision():
    """accelerate's state is process-wide: a bf16 run, then one that sets none, must not autocast the second
    (nor refuse a third that asks for bf16 again). On the CPU, fp16 is refused: accelerate autocasts to it on a
    GPU only, so the run would train in float32 and record fp16."""
    from viker.errors import VikerError
    from viker.train import make_accelerator

    assert make_accelerator(TrainConfig(mixed_precision="bf16")).mixed_precision == "bf16"
    assert make_accelerator(TrainConfig()).mixed_precision == "no"
    assert make_accelerator(TrainConfig(mixed_precision="bf16")).mixed_precision == "bf16"
    with pytest.raises(VikerError, match="^--mixed-precision fp16: accelerate autocasts to fp16 on a GPU only"):
        make_accelerator(TrainConfig(mixed_precision="fp16"), device="cpu")


@pytest.mark.parametrize("device, cpu, current",
                         [("cpu", True, None), ("cuda:1", False, "cuda:1"), (None, False, None)])
def test_device_decides_where_accelerate_trains(device, cpu, current, monkeypatch):
    """accelerate moves a single process's model to its own device: on a GPU machine --device cpu must ask it
    for the CPU, and --device cuda:1 make GPU 1 the current one, or the run trains on GPU 0."""
    import accelerate
    from accelerate.utils import DistributedType

    from viker.train import make_accelerator

    asked, made_current = {}, []

    class Recorded:
        distributed_type = DistributedType.NO
        mixed_precision = "no"

        def __init__(self, **kwargs):
            asked.update(kwargs)
            self.device = torch.device("cpu" if kwargs["cpu"] else "cuda")

    monkeypatch.setattr(accelerate, "Accelerator", Recorded)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: made_current.append(str(d)))
    make_accelerator(TrainConfig(), device=device)
    assert asked["cpu"] is cpu and made_current == ([current] if current else [])
