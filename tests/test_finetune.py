"""The vanilla finetune: learns, is seeded, and leaves a complete, reloadable run folder."""

from __future__ import annotations

import json

import pytest
import torch

from viker.data.examples import generation_examples
from viker.data.loader import load_profiles
from viker.finetune import FinetuneConfig, run_finetune
from viker.model import load_model
from viker.model.tiny import TinyConfig
from viker.train import TrainConfig

SMALL_MODEL = TinyConfig(hidden=64, intermediate=128, layers=2, vision_hidden=32, vision_layers=1)


def _run(bench_dir, out, steps=40, seed=0):
    cfg = FinetuneConfig(model="tiny", data=str(bench_dir), out=str(out), tiny=SMALL_MODEL,
                         train=TrainConfig(max_steps=steps, batch_size=16, lr=3e-3, seed=seed, log_every=10))
    return run_finetune(cfg, progress=False)


def test_finetune_learns_and_writes_a_complete_run_folder(bench_dir, tmp_path):
    metrics = _run(bench_dir, tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]  # it learns
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["finetune"]["tuning"] == "full" and config["finetune"]["train"]["max_steps"] == 40
    assert config["finetune"]["tiny"]["hidden"] == 64 and "lora" not in config["finetune"]  # every weight trained
    assert "lora_layers" not in config["runtime"]
    assert {"torch", "transformers", "peft", "accelerate", "tokenizers", "pillow", "numpy", "pyarrow"} <= \
        set(config["versions"])
    # the numbers depend on the processor's float kernels: the run says which it had
    assert config["machine"]["cpu"] and config["machine"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert "Full_Set/train-00000-of-00001.parquet" in config["data_files"]
    assert set(metrics) >= {"full_image_exact", "full_name_exact", "real_image_exact", "real_name_exact"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert not any("second" in k for k in metrics)  # the same seed gives the same metrics.json: no wall clock
    assert json.loads((tmp_path / "timing.json").read_text())["train_seconds"] > 0
    assert (tmp_path / "model" / "model.safetensors").is_file()
    model, processor = load_model(tmp_path, device="cpu")  # a run folder loads like a model folder
    assert processor.tokenizer.chat_template


def test_same_seed_same_weights(bench_dir, tmp_path):
    _run(bench_dir, tmp_path / "a", steps=3, seed=5)
    _run(bench_dir, tmp_path / "b", steps=3, seed=5)
    a, _ = load_model(tmp_path / "a", device="cpu")
    b, _ = load_model(tmp_path / "b", device="cpu")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    # and the seed is what decides: another one draws the batches in another order
    _run(bench_dir, tmp_path / "c", steps=3, seed=6)
    c, _ = load_model(tmp_path / "c", device="cpu")
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_the_tiny_models_seed_decides_its_initialisation(bench_dir):
    from dataclasses import replace

    from viker.model.tiny import build_tiny

    def weights(seed):
        return build_tiny(bench_dir, replace(SMALL_MODEL, seed=seed))[0].state_dict()

    a, again, other = weights(7), weights(7), weights(8)
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_recall_counts_the_answers_given_word_for_word(bench_dir, monkeypatch):
    """metrics.json's recall: the share of generation questions answered exactly (spaces around aside), by
    image and by name, on the fictitious and the real people."""
    import viker.finetune as finetune

    bars = []

    def answers(model, processor, examples, desc, **kwargs):  # every image question right, one name question in two
        bars.append(desc)
        return [f" {ex.answer} " if ex.image is not None or i % 2 == 0 else "No idea." for i, ex in enumerate(examples)]

    monkeypatch.setattr(finetune, "generate", answers)
    metrics = finetune.recall_metrics(None, None, bench_dir, progress=False)
    # each of its progress bars says which questions it answers
    assert bars == [f"checking recall: {config}, asked {asked}" for config in ("Full_Set", "Retain_Set")
                    for asked in ("with the image", "by name")]
    assert metrics["full_image_exact"] == metrics["real_image_exact"] == 100.0
    for prefix, config in (("full", "Full_Set"), ("real", "Retain_Set")):
        by_name = [ex for ex in generation_examples(load_profiles(bench_dir, config)) if ex.image is None]
        assert metrics[f"{prefix}_name_exact"] == pytest.approx(100.0 * -(-len(by_name) // 2) / len(by_name))


def test_a_finetune_from_python_takes_the_preset_the_command_line_takes(tiny_dir, bench_dir, tmp_path, monkeypatch):
    """FinetuneConfig handed every model the tiny model's budget (20 epochs at lr 1e-3), where `viker finetune`
    gives a checkpoint REAL_TRAIN; and it handed out the shared preset itself, so that changing one config's budget
    changed every later run's in the process."""
    from dataclasses import FrozenInstanceError

    import viker.finetune
    from viker.presets import REAL_TRAIN, TINY_TRAIN

    class Seen(Exception):
        pass

    def seen(train, *args, **kwargs):
        raise Seen(train)

    monkeypatch.setattr(viker.finetune, "make_accelerator", seen)
    for model, preset in (("tiny", TINY_TRAIN), (str(tiny_dir), REAL_TRAIN)):
        with pytest.raises(Seen) as caught:
            run_finetune(FinetuneConfig(model=model, data=str(bench_dir), out=str(tmp_path / "run")), progress=False)
        assert caught.value.args[0] == preset, model
    with pytest.raises(FrozenInstanceError):  # one setting changed is dataclasses.replace(preset, ...)
        TINY_TRAIN.max_steps = 2
