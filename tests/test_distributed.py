"""Several processes train like one: 2 CPU processes (gloo, launched by torchrun) with a global batch B
end at the weights 1 process reaches with B; ViKeR's reference distributions are computed once, split
across the processes, and shared. Also: how a global batch is split, gradient checkpointing, bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from viker.cli import main
from viker.data.examples import unlearning_examples
from viker.train import batches

# Runs `viker` commands in one launch. A command given a number n is stopped on every process at its
# (n+1)-th checkpoint, before that checkpoint is written, as if it had been killed there; a marker row
# is then added to the history of the checkpoint it left, so that a resumed run shows it started there.
DRIVER = """import json, sys
import accelerate.utils
import torch
import torch.distributed as dist
from viker.cli import main

class Stop(Exception):
    pass

gather = accelerate.utils.gather_object

def stopping_after(n):
    calls = []
    def gather_then_stop(obj):  # the trainer gathers RNG states just before writing a checkpoint
        out = gather(obj)
        calls.append(obj)
        if len(calls) > n:
            raise Stop
        return out
    return gather_then_stop

for argv, stop in json.loads(sys.argv[1]):
    accelerate.utils.gather_object = stopping_after(stop) if stop else gather
    try:
        code = main(argv)
    except Stop:
        if dist.get_rank() == 0:
            path = argv[argv.index("--out") + 1] + "/checkpoint/state.pt"
            state = torch.load(path, weights_only=True)
            state["history"].insert(0, {"step": 0, "marker": 1.0})
            torch.save(state, path)
        dist.barrier()
        continue
    if code:
        sys.exit(code)
"""


def _argv(tiny_dir, bench_dir, out, cache, method, batch_size, steps, *extra):
    return ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", method,
            "--max-steps", str(steps), "--batch-size", str(batch_size), "--lr", "1e-3", "--save", "adapter",
            "--out", str(out), "--cache-dir", str(cache), *extra]


# graddiff: 2 rows per process. viker: global batch 3 (rows split 2/1, answer tokens unevenly), and its
# 8th batch holds the epoch's last example alone, so one process has an empty slice. npo, idkpo and klmin
# read the frozen reference in the loop, on rows split 2/1 (npo and idkpo weigh rows, klmin tokens). GA averaged
# over all answer tokens weighs tokens, on rows split 2/1.
RUNS = {"graddiff": ("graddiff", 4, 3), "viker": ("viker", 3, 8, "--k", "2"), "npo": ("npo", 3, 3),
        "idkpo": ("idkpo", 3, 3), "klmin": ("klmin", 3, 3), "ga-token": ("ga", 3, 3, "--average", "token")}


@pytest.fixture(scope="module")
def runs(tiny_dir, bench_dir, tmp_path_factory):
    """The same runs on 2 processes (one launch) and on 1 (in this process)."""
    root = tmp_path_factory.mktemp("distributed")
    two = [(_argv(tiny_dir, bench_dir, root / f"two-{name}", root / "cache-two", *spec), 0)
           for name, spec in RUNS.items()]
    two.append((_argv(tiny_dir, bench_dir, root / "two-again", root / "cache-two", *RUNS["viker"]), 0))
    for run, extra, stop in (("whole", (), 0), ("stopped", (), 1), ("stopped", ("--resume",), 0)):
        two.append((_argv(tiny_dir, bench_dir, root / f"two-{run}", root / "cache-two", "graddiff", 4, 6,
                          "--checkpoint-every", "2", *extra), stop))
    # past one epoch (6 steps of 4 of the 22 examples), keeping the model after it
    two.append((_argv(tiny_dir, bench_dir, root / "two-snapshots", root / "cache-two", "graddiff", 4, 8,
                      "--snapshot-every", "1"), 0))
    # a finetune: warm-up, cosine decay and gradient accumulation (a LoRA model folder takes the real preset's)
    two.append((_finetune_argv(tiny_dir, bench_dir, root / "two-finetune"), 0))
    (root / "drive.py").write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(root / "drive.py"), json.dumps(two)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "stdout.txt").write_text(done.stdout)
    for name, spec in RUNS.items():
        assert main(_argv(tiny_dir, bench_dir, root / f"one-{name}", root / "cache-one", *spec)) == 0
    assert main(_finetune_argv(tiny_dir, bench_dir, root / "one-finetune")) == 0
    return root


def test_the_main_process_alone_says_what_a_run_wrote(runs):
    said = (runs / "stdout.txt").read_text().splitlines()
    written = [line for line in said if "unlearned model written to" in line]
    assert len(written) == 10 and len(set(written)) == len(written)  # the stopped run said nothing; each other once
    assert said.count("{") == 1  # the finetune's figures


# rank 1 given another forget split than rank 0: a node whose copy of the data differs from the others'
ANOTHER_SPLIT_ON_RANK_1 = """import os, sys
from viker.cli import main
argv = sys.argv[1:]
if os.environ["RANK"] == "1":
    argv[argv.index("--forget") + 1] = "forget_5"
sys.exit(main(argv))
"""


def test_processes_that_read_different_examples_are_refused_together(tiny_dir, bench_dir, tmp_path):
    """Each process reads its own copy of the data: where they differ, DDP averaged their gradients into a run no
    one dataset gives, and a process with fewer steps left the others waiting for it for good."""
    (tmp_path / "drive.py").write_text(ANOTHER_SPLIT_ON_RANK_1)
    argv = [*_argv(tiny_dir, bench_dir, tmp_path / "run", tmp_path / "cache", "ga", 4, 3), "--forget", "forget_10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "drive.py"), *argv], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    said = "error: the processes read different examples: give every process the same --data"
    assert done.stderr.count(said) == 2, done.stderr[-3000:]  # both stop, neither waits for the other
    assert not (tmp_path / "run" / "model").exists()


def _finetune_argv(tiny_dir, bench_dir, out):
    return ["finetune", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-steps", "4", "--batch-size", "4",
            "--lr", "1e-2", "--lora-dropout", "0", "--out", str(out)]


def _adapter(run):
    return load_file(str(run / "model" / "adapter_model.safetensors"))


@pytest.mark.parametrize("method", list(RUNS))
def test_two_processes_reach_the_weights_of_one_with_the_same_global_batch(runs, method):
    one, two = _adapter(runs / f"one-{method}"), _adapter(runs / f"two-{method}")
    assert one.keys() == two.keys()
    assert any(v.abs().max() > 1e-3 for k, v in one.items() if "lora_B" in k), "the adapters did not train"
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-5), name
    h1 = json.loads((runs / f"one-{method}" / "history.json").read_text())
    h2 = json.loads((runs / f"two-{method}" / "history.json").read_text())
    assert [r["step"] for r in h1] == [r["step"] for r in h2]
    # every logged value (the loss and each method's own terms) is the global batch's, as on one process
    assert h2[-1].keys() == h1[-1].keys()
    for key, value in h1[-1].items():
        assert h2[-1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    runtime = json.loads((runs / f"two-{method}" / "config.json").read_text())["runtime"]
    assert runtime["processes"] == 2 and runtime["distributed_type"] == "MULTI_CPU"


def test_two_processes_follow_the_learning_rate_schedule_of_one(runs, tiny_dir):
    """The schedule moves once per optimiser step, however many processes share the global batch: a
    finetune with a cosine decay and gradient accumulation ends at the same weights on 2 processes as on 1
    (were the schedule to move once per process, its learning rate would fall twice as fast)."""
    config = json.loads((runs / "two-finetune" / "config.json").read_text())
    assert config["runtime"]["processes"] == 2
    train = config["finetune"]["train"]
    assert train["scheduler"] == "cosine" and train["grad_accum"] > 1 and train["max_steps"] == 4
    one = load_file(str(runs / "one-finetune" / "model" / "model.safetensors"))
    two = load_file(str(runs / "two-finetune" / "model" / "model.safetensors"))
    base = load_file(str(tiny_dir / "model.safetensors"))
    assert one.keys() == two.keys() == base.keys()
    assert max((one[k] - base[k]).abs().max() for k in one) > 1e-3, "the finetune did not train"
    for name in one:  # float noise, amplified by Adam, stays under 1e-5 here; a doubled decay moves weights by 1e-2
        assert torch.allclose(one[name], two[name], rtol=0, atol=1e-4), name


def test_reference_distributions_are_computed_once_split_across_processes_and_shared(runs, bench_dir):
    n = len(unlearning_examples(bench_dir, "forget_10"))
    computed = json.loads((runs / "two-viker" / "config.json").read_text())["setup"]["reference_cache"]
    assert computed["from_cache"] is False and computed["processes"] == 2
    assert sum(computed["examples_by_process"]) == n and min(computed["examples_by_process"]) > 0
    files = sorted((runs / "cache-two").iterdir())
    assert [f.name for f in files] == [f"refdist-{computed['key']}.safetensors"]  # one file, nothing half-written
    alone = load_file(str(next((runs / "cache-one").glob("refdist-*.safetensors"))))
    shared = load_file(str(files[0]))
    assert torch.equal(alone["offsets"], shared["offsets"])
    assert torch.allclose(alone["probs"], shared["probs"], atol=1e-6)
    again = json.loads((runs / "two-again" / "config.json").read_text())["setup"]["reference_cache"]
    assert again["from_cache"] is True and again["key"] == computed["key"]


def test_a_global_batch_is_split_into_slices_that_make_it_up_exactly():
    examples = list(range(7))

    def collate(chosen):
        return {"x": torch.tensor(chosen)}

    def draw(rank, world, start=0, n=6):
        stream = batches(examples, collate, 3, seed=4, start=start, rank=rank, world=world)
        return [next(stream) for _ in range(n)]

    alone = draw(0, 1)
    for world in (2, 3):
        parts = [draw(rank, world) for rank in range(world)]
        for step, (epoch, whole, real) in enumerate(alone):
            assert real
            slices = [parts[r][step] for r in range(world)]
            assert {e for e, _, _ in slices} == {epoch}
            got = sorted(int(i) for _, b, r in slices if r for i in b["index"])
            assert got == sorted(whole["index"].tolist())  # every example once, none twice
            for _, b, r in slices:
                assert torch.equal(b["x"], b["index"])
                if not r:  # an empty slice: one stand-in example, weighted zero by the trainer
                    assert len(b["index"]) == 1
        # a resumed stream continues the same slices
        assert all(torch.equal(a[1]["index"], b[1]["index"]) for a, b in zip(draw(1, world, start=2, n=4),
                                                                            parts[1][2:]))
    # with 3 processes and batches of 3, 3 and 1 examples per epoch, some slices are empty
    assert any(not r for _, _, r in draw(2, 3))


def test_gradient_checkpointing_changes_memory_not_results(tiny_dir, bench_dir, tmp_path):
    from viker.model import LoraSettings
    from viker.train import TrainConfig
    from viker.unlearn import UnlearnConfig, run_unlearn

    steps = TrainConfig(max_steps=2, batch_size=4, lr=1e-3, log_every=1)
    trained = {}
    for checkpointing in (False, True):
        cfg = UnlearnConfig(model=str(tiny_dir), data=str(bench_dir), method="graddiff",
                            out=str(tmp_path / str(checkpointing)), cache_dir=str(tmp_path / "cache"),
                            train=replace(steps, gradient_checkpointing=checkpointing),
                            lora=LoraSettings(r=4, alpha=8, dropout=0.0, merge=False))
        model, _, _ = run_unlearn(cfg, progress=False)
        base = model.get_base_model()  # the flag, under its name before transformers renamed it or after
        new = "is_activation_checkpointing"
        flag = new if hasattr(base, new) else "is_gradient_checkpointing"
        assert getattr(base, flag) == checkpointing
        trained[checkpointing] = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        config = json.loads((tmp_path / str(checkpointing) / "config.json").read_text())
        assert config["unlearn"]["train"]["gradient_checkpointing"] == checkpointing
    for name, value in trained[False].items():
        assert torch.allclose(value, trained[True][name], atol=1e-6), name


def test_bf16_mixed_precision_runs_in_bf16_and_is_recorded(runs, tiny_dir, bench_dir):
    """The float32 graddiff run again with bf16 autocast. Autocast is process-wide accelerate state, so
    the bf16 run gets its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    argv = _argv(tiny_dir, bench_dir, runs / "one-bf16", runs / "cache-one", *RUNS["graddiff"],
                 "--mixed-precision", "bf16")
    done = subprocess.run([sys.executable, "-m", "viker", *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((runs / "one-bf16" / "config.json").read_text())
    assert config["unlearn"]["train"]["mixed_precision"] == "bf16" and config["runtime"]["mixed_precision"] == "bf16"
    assert json.loads((runs / "one-graddiff" / "config.json").read_text())["runtime"]["mixed_precision"] == "no"
    fp32 = json.loads((runs / "one-graddiff" / "history.json").read_text())[-1]["loss"]
    bf16 = json.loads((runs / "one-bf16" / "history.json").read_text())[-1]["loss"]
    assert bf16 != fp32  # the forward pass really ran in bf16 ...
    assert bf16 == pytest.approx(fp32, abs=0.05)  # ... and trained alike


def test_a_resumed_two_process_run_ends_at_the_weights_of_an_uninterrupted_one(runs):
    """Stopped on both processes after its step-2 checkpoint (written by the main process with both
    processes' RNG states) and resumed on 2 processes, a run must redo steps 3 to 6 exactly."""
    assert not (runs / "two-stopped" / "checkpoint").exists()  # the resumed run finished and discarded it
    whole, resumed = _adapter(runs / "two-whole"), _adapter(runs / "two-stopped")
    for name in whole:
        assert torch.allclose(whole[name], resumed[name], rtol=0, atol=1e-7), name
    history = json.loads((runs / "two-stopped" / "history.json").read_text())
    assert history[0] == {"step": 0, "marker": 1.0}  # it continued from the checkpoint, not from scratch
    assert history[1:] == json.loads((runs / "two-whole" / "history.json").read_text())


def test_two_processes_keep_the_snapshot_an_uninterrupted_shorter_run_ends_with(runs):
    """Every process takes part in saving a snapshot; the main process writes it once."""
    snapshot, whole = _adapter(runs / "two-snapshots" / "epochs" / "1"), _adapter(runs / "two-whole")
    assert sorted(p.name for p in (runs / "two-snapshots" / "epochs").iterdir()) == ["1"]
    for name in whole:
        assert torch.equal(whole[name], snapshot[name]), name


def test_a_sharded_model_without_adapters_has_no_frozen_reference_and_says_so(tiny):
    from viker.errors import VikerError
    from viker.methods.base import FrozenReference
    from viker.model import LoraSettings, apply_lora

    model, _ = tiny
    with pytest.raises(VikerError, match="full tuning under FSDP or DeepSpeed has no frozen reference"):
        FrozenReference(model, sharded=True).fingerprint()
    lora = apply_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0))
    try:
        ref = FrozenReference(lora, sharded=True)
        assert ref._fingerprint is not None  # taken before accelerate shards the weights
        assert ref.fingerprint() == FrozenReference(model, separate=model).fingerprint()  # adapters ignored
        # a method that caches nothing (NPO, KL-Min) does not spend the seconds hashing every weight takes
        uncached = FrozenReference(lora, sharded=True, cached=False)
        assert uncached._fingerprint is None
        with pytest.raises(RuntimeError, match="taken before sharding"):
            uncached.fingerprint()
    finally:
        lora.unload()  # the session's tiny model is shared
