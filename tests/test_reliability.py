"""Interrupted runs resume to the weights an uninterrupted run reaches; divergence stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from viker.errors import VikerError
from viker.train import CHECKPOINT, TrainConfig, train


def _unlearn(tiny_dir, bench_dir, out, *extra):
    return [sys.executable, "-m", "viker", "unlearn", "--model", str(tiny_dir), "--data", str(bench_dir),
            "--method", "graddiff", "--max-steps", "150", "--batch-size", "4", "--lr", "1e-3",
            "--checkpoint-every", "5", "--save", "adapter", "--out", str(out), *extra]


def test_a_killed_run_resumes_to_the_same_weights(tiny_dir, bench_dir, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    subprocess.run(_unlearn(tiny_dir, bench_dir, tmp_path / "whole"), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_unlearn(tiny_dir, bench_dir, run), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / CHECKPOINT / "state.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # land between two checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "model").exists()  # nothing half-written where the result goes
    state = torch.load(run / CHECKPOINT / "state.pt", weights_only=True)
    assert 0 < state["step"] < 150

    subprocess.run(_unlearn(tiny_dir, bench_dir, run, "--resume"), check=True, env=env, capture_output=True)
    resumed = load_file(str(run / "model" / "adapter_model.safetensors"))
    whole = load_file(str(tmp_path / "whole" / "model" / "adapter_model.safetensors"))
    assert resumed.keys() == whole.keys()
    for name in whole:
        assert torch.equal(resumed[name], whole[name]), name
    assert not (run / CHECKPOINT).exists()  # the finished model replaced its checkpoint


def test_sigterm_stops_a_run_as_ctrl_c_does_and_says_how_to_go_on(tiny_dir, bench_dir, tmp_path):
    """A cluster's time limit (`scancel`, `docker stop`) sends SIGTERM: the log ended without a word, and the
    clean-up Ctrl-C runs was skipped."""
    run = tmp_path / "run"
    proc = subprocess.Popen(_unlearn(tiny_dir, bench_dir, run), env={**os.environ, "TQDM_DISABLE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / CHECKPOINT / "state.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate()[1]
    assert proc.returncode == 143, err
    assert f"terminated (SIGTERM): {run} holds the unfinished run; --resume continues it" in err
    assert not (run / "model").exists()


class _Fit:
    """A least-squares fit of a linear model: every batch, every learning rate and every step shows in its weights."""

    streams = ("train",)

    def loss(self, model, batches):
        return ((model(batches["train"]["x"]) - 1.0) ** 2).mean(), {}


@pytest.mark.parametrize("settings", [{"grad_accum": 2}, {"scheduler": "linear", "warmup_ratio": 0.2},
                                      {"grad_accum": 3, "scheduler": "cosine"}])
def test_a_resumed_run_takes_the_batches_and_learning_rates_it_would_have(settings, tmp_path):
    """Resumed from its step-4 checkpoint, a 6-step run reaches the weights of one never stopped: with gradient
    accumulation it skips the micro-batches already trained on, and its schedule goes on where it was."""
    import copy

    from viker.data.schema import Example

    examples = [Example(f"{i}", "a", None) for i in range(11)]
    collate = lambda batch: {"x": torch.tensor([[float(e.question), 1.0] for e in batch])}  # noqa: E731
    cfg = TrainConfig(max_steps=6, batch_size=2, lr=0.02, checkpoint_every=4, log_every=1, max_grad_norm=None,
                      **settings)
    torch.manual_seed(0)
    start = torch.nn.Linear(2, 1)
    whole = copy.deepcopy(start)
    train(whole, _Fit(), {"train": examples}, collate, cfg, progress=False, run_dir=tmp_path)
    assert torch.load(tmp_path / CHECKPOINT / "state.pt", weights_only=True)["step"] == 4  # left where it stopped
    resumed = copy.deepcopy(start)
    train(resumed, _Fit(), {"train": examples}, collate, cfg, progress=False, run_dir=tmp_path, resume=True)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(start.weight, whole.weight)


class _Exploding:
    """An objective whose loss turns infinite at the fourth step."""

    streams = ("train",)

    def __init__(self):
        self.calls = 0

    def loss(self, model, batches):
        self.calls += 1
        value = model.weight.sum() * 0 + (1.0 if self.calls < 4 else float("inf"))
        return value + (model.weight ** 2).sum(), {}


def test_snapshots_are_the_models_shorter_runs_give_and_leave_the_run_unchanged(tiny_dir, bench_dir, tmp_path):
    """epochs/N of a run is what a run of N epochs ends with (constant schedule), loadable for evaluation,
    and keeping snapshots does not change the run's own result."""
    from viker.cli import main
    from viker.report import read_run

    def unlearn(out, epochs, *extra):
        assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--lr", "1e-2",
                     "--batch-size", "8", "--epochs", str(epochs), "--out", str(tmp_path / out), *extra]) == 0

    unlearn("snapshots", 3, "--snapshot-every", "1", "--save", "adapter")
    unlearn("one-epoch", 1, "--save", "adapter")
    unlearn("plain", 3, "--save", "adapter")
    run = tmp_path / "snapshots"
    assert sorted(p.name for p in (run / "epochs").iterdir()) == ["1", "2"]  # the last epoch is the run's own model

    def adapter(folder):
        return load_file(str(folder / "model" / "adapter_model.safetensors"))

    for mine, theirs in ((adapter(run / "epochs" / "1"), adapter(tmp_path / "one-epoch")),
                         (adapter(run), adapter(tmp_path / "plain"))):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not all(torch.equal(a, b) for a, b in zip(adapter(run / "epochs" / "1").values(),
                                                    adapter(run / "epochs" / "2").values()))
    # each snapshot says what it is: a GA run of that many epochs, of this run
    assert main(["eval", "--model", str(run / "epochs" / "2"), "--data", str(bench_dir), "--max-new-tokens", "4",
                 "--only", "forget:multiple_choice", "--out", str(run / "epochs" / "2")]) == 0
    row = read_run(run / "epochs" / "2")
    assert row["method"] == "ga" and row["settings"]["epochs"] == 2 and "forget_acc" in row["metrics"]
    # a run saved merged keeps its snapshots as adapters, and their configs say so
    unlearn("merged", 2, "--snapshot-every", "1")
    saved = [json.loads((tmp_path / "merged" / sub / "config.json").read_text())["saved"] for sub in ("", "epochs/1")]
    assert saved == ["merged", "adapter"]
    assert (tmp_path / "merged" / "epochs" / "1" / "model" / "adapter_config.json").is_file()


def test_divergence_stops_with_a_message_saying_how_to_go_on(tmp_path):
    """A resumed run keeps its learning rate and would diverge again where this one did: the message says to
    start again with a lower one."""
    from viker.data.schema import Example

    model = torch.nn.Linear(2, 2)
    examples = [Example(f"q{i}", "a", None) for i in range(8)]

    def collate(exs):
        return {"x": torch.zeros(len(exs), 2)}

    how = r"start the run again with a lower --lr \(or a smaller weight of the method's terms\) and --overwrite"
    with pytest.raises(VikerError, match=rf"step 4: the loss became inf \(diverged\); {how}$"):
        train(model, _Exploding(), {"train": examples}, collate,
              TrainConfig(max_steps=10, batch_size=2, checkpoint_every=2, log_every=1), progress=False,
              run_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT / "state.pt", weights_only=True)
    assert state["step"] == 2


def test_weights_that_diverge_at_the_last_update_are_not_taken_for_a_finished_run(tmp_path):
    """No step comes after the last update to see its loss: the run scores its last batches once more, and a loss
    gone infinite there stops it as at any step (its model would have been saved, the run said to succeed)."""
    from viker.data.schema import Example

    examples = [Example(f"q{i}", "a", None) for i in range(8)]
    cfg = TrainConfig(max_steps=3, batch_size=2, log_every=1)
    how = r"start the run again with a lower --lr \(or a smaller weight of the method's terms\) and --overwrite"
    with pytest.raises(VikerError, match=rf"^step 3, the last: the loss after its update became inf \(diverged\); "
                                         rf"{how}$"):
        train(torch.nn.Linear(2, 2), _Exploding(), {"train": examples}, lambda exs: {"x": torch.zeros(len(exs), 2)},
              cfg, progress=False, run_dir=tmp_path)
    history = train(torch.nn.Linear(2, 2), _Exploding(), {"train": examples}, lambda exs: {"x": torch.zeros(
        len(exs), 2)}, replace(cfg, max_steps=2), progress=False)
    assert [row["step"] for row in history] == [1, 2]  # the look after the last update is no step of its own


class _Steady:
    """An objective with a finite loss and gradient at every step."""

    streams = ("train",)

    def loss(self, model, batches):
        return (model.weight ** 2).sum() + 1.0, {}


def test_a_learning_rate_too_large_for_the_optimizer_is_one_message_not_a_traceback(tmp_path):
    """--lr 1e38: AdamW's step (lr over 1 - β₁) overflows float32 before any loss is infinite."""
    from viker.data.schema import Example

    model = torch.nn.Linear(2, 2)
    examples = [Example(f"q{i}", "a", None) for i in range(4)]
    how = "overflows the optimizer's arithmetic; start the run again with a lower --lr and --overwrite"
    with pytest.raises(VikerError, match=rf"step 1: the learning rate 1e\+38 \(this step's\) {how}$"):
        train(model, _Steady(), {"train": examples}, lambda exs: {"x": torch.zeros(len(exs), 2)},
              TrainConfig(max_steps=2, batch_size=2, lr=1e38), progress=False, run_dir=tmp_path)


def test_output_paths_never_escape_the_run_folder(tmp_path):
    from viker.runs import under

    assert under(tmp_path, "runs", "viker") == (tmp_path / "runs" / "viker").resolve()
    for bad in (("..", "elsewhere"), ("runs", "../../x"), ("/etc",)):
        with pytest.raises(VikerError, match="would be written outside"):
            under(tmp_path, *bad)


def test_a_checkpoint_keeps_the_random_state_and_the_fp16_loss_scale(tmp_path):
    from viker.train import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=2.0**7)  # where a run's dynamic loss scale had got to
    torch.manual_seed(5)
    save_checkpoint(tmp_path, model, optimizer, scheduler, 3, [], pending={}, scaler=scaler)
    expected = torch.rand(3)  # what an uninterrupted run draws next
    restored = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert load_checkpoint(tmp_path, model, optimizer, scheduler, scaler=restored)[0] == 3
    assert torch.equal(torch.rand(3), expected) and restored.get_scale() == 2.0**7
    # a checkpoint written before the device's state was kept (one CPU state) still resumes
    state = torch.load(tmp_path / CHECKPOINT / "state.pt", weights_only=True)
    state["rng"] = state.pop("rng_by_process")[0]["cpu"]
    torch.save(state, tmp_path / CHECKPOINT / "state.pt")
    assert load_checkpoint(tmp_path, model, optimizer, scheduler)[0] == 3
    assert torch.equal(torch.rand(3), expected)


def test_a_snapshot_interval_the_run_never_reaches_is_warned_of(capsys):
    """--snapshot-every 5 on a run of 2 passes (or 1 on a run of 1) wrote no epochs/ folder, without a word."""
    from viker.train import prepare

    for passes, every, warned in ((2, 5, True), (1, 1, True), (2, 1, False), (3, 2, False)):
        prepare(torch.nn.Linear(2, 2), TrainConfig(epochs=passes, batch_size=2, snapshot_every=every), 4)
        err = capsys.readouterr().err
        assert (f"warning: --snapshot-every {every}: the run trains {passes} pass" in err) == warned, (passes, every)
    # 2 steps of 4 batches over 3 batches a pass: the second pass ends inside the last step, which takes no snapshot
    prepare(torch.nn.Linear(2, 2), TrainConfig(epochs=2, batch_size=2, grad_accum=4, snapshot_every=2), 6)
    assert "the run trains 2.66667 passes over its 6 examples, and saves no snapshot (one is saved where a step " \
        "before the last completes 2; the last step's model is the run's own)" in capsys.readouterr().err
