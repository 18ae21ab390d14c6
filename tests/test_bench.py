"""bench/costs.py: its quick mode measures every figure RESULTS.md reports, and its helpers measure truly."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def costs():
    spec = importlib.util.spec_from_file_location("bench_costs", ROOT / "bench" / "costs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_quick_run_measures_every_method_and_leaves_the_recorded_results_alone(costs, bench_dir, tiny_dir, tmp_path):
    recorded = (ROOT / "bench" / "RESULTS.md").read_bytes() if (ROOT / "bench" / "RESULTS.md").exists() else None
    from transformers.utils import logging

    threads, verbosity = torch.get_num_threads(), logging.get_verbosity()
    try:
        r = costs.main(["--quick", "--out", str(tmp_path), "--data", str(bench_dir), "--vanilla", str(tiny_dir)])
    finally:  # the script sets these for its own process
        torch.set_num_threads(threads)
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    assert set(r["epochs"]) == set(costs.METHODS)
    assert r["epochs"]["ga"]["ratio_to_ga"] == 1.0
    assert all(x["epoch_s"] > 0 and x["peak_rss_mib"] > 0 for x in r["epochs"].values())
    assert r["reference"]["computed_s"] > 0
    # the tiny vocabulary is stored in full: 4 bytes per vocabulary entry and answer token (+ the offsets)
    vocab = r["cache"]["vocab_size"]
    assert r["cache"]["storage"] == "full"
    assert vocab * 4 <= r["cache"]["memory_per_token"] < vocab * 4 + 16
    assert r["evaluation"]["identical_answers"] == r["evaluation"]["batched"]["prompts"] > 0
    assert r["evaluation"]["batched"]["batch_size"] == 32 and r["evaluation"]["one_at_a_time"]["batch_size"] == 1
    # results went to --out with --quick, the recorded ones are untouched
    assert json.loads((tmp_path / "results.json").read_text())["tiny"]["epochs"]["viker"]["epoch_s"] > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "ViKeR (warm cache)" in text and "32,000-token vocabulary" in text
    assert ((ROOT / "bench" / "RESULTS.md").read_bytes() if recorded is not None else None) == recorded


def test_the_7b_shape_path_runs_on_a_cpu_at_its_mini_size(costs, bench_dir, tmp_path):
    """What `--model-shape llava-7b` does on a GPU, at a size a CPU runs: GA and ViKeR with LoRA on a model
    built in memory (not a folder to look up), then batched generation."""
    from transformers.utils import logging

    threads, verbosity = torch.get_num_threads(), logging.get_verbosity()
    try:
        r = costs.main(["--quick", "--model-shape", "llava-7b-mini", "--out", str(tmp_path), "--data", str(bench_dir),
                        "--results", str(tmp_path / "results")])
    finally:  # the script sets these for its own process
        torch.set_num_threads(threads)
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    assert r["settings"]["shape"] == "llava-7b-mini"
    for method in ("ga", "viker"):  # a difference of two short timings: its sign is noise on a busy machine
        assert r[method]["short"]["train_s"] > 0 and r[method]["long"]["train_s"] > 0
        assert math.isfinite(r[method]["seconds_per_step"])
    assert r["generation"]["batched"]["prompts"] > 0


def test_cache_size_for_a_32k_vocabulary_follows_the_storage_format(costs, tmp_path):
    sizes = costs.cache_for_vocabulary(32000, rows=24, examples=3, path=tmp_path)
    assert sizes["default"] == f"top-{costs.VIKER_TOPK}"
    full, top = sizes["full"], sizes[f"top-{costs.VIKER_TOPK}"]
    assert 32000 * 4 <= full["memory_per_token"] < 32000 * 4 + 8  # float32 per vocabulary entry
    assert costs.VIKER_TOPK * 8 <= top["memory_per_token"] < costs.VIKER_TOPK * 8 + 8  # int32 index + float32
    for fmt in (full, top):  # the file is the tensors plus a small header
        assert 0 <= fmt["disk_per_token"] - fmt["memory_per_token"] < 64
    assert not list(tmp_path.iterdir())  # the measured files are removed
    assert costs.cache_for_vocabulary(4096, rows=4, examples=1, path=tmp_path)["default"] == "full"


def test_header_says_other_work_shared_the_cpu_only_when_the_load_says_so(costs):
    record = {"machine": {"gpu": None, "cpu": "AMD EPYC", "cores": 2, "threads": 2, "torch": "2.13.0+cpu",
                          "transformers": "5.25.0"}, "argv": "", "date": "2026-12-04 08:09", "total_s": 120.0,
              "load_start": [0.46, 1.31, 1.62], "load_end": [1.86, 1.56, 1.67]}
    quiet = costs.header(record)
    assert "0.46/1.31/1.62 at the start, 1.86/1.56/1.67 at the end (its own threads included)" in quiet
    assert "other work" not in quiet
    busy = costs.header({**record, "load_start": [1.45, 1.58, 1.75]})
    assert "1.45/1.58/1.75 at the start (other work was using the CPU)" in busy


def test_peak_memory_sees_a_phase_peak_that_is_gone_by_its_end(costs):
    with costs.PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(64 * costs.MiB // 4)  # 64 MiB, touched
        block.add_(1)
        import time

        time.sleep(0.05)
        del block
    assert mem.record()["above_start_mib"] >= 48


def test_the_7b_shape_is_llava_1_5_7b(costs, bench_dir):
    model, processor = costs.build_shaped_llava(bench_dir, "llava-7b", torch.device("meta"), torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072  # llava-hf/llava-1.5-7b-hf
    assert model.get_output_embeddings().weight.shape[0] == 32064
    from viker.collate import Collator
    from viker.data.examples import generation_examples
    from viker.data.loader import load_profiles

    example = next(ex for ex in generation_examples(load_profiles(bench_dir, "forget_10")) if ex.image is not None)
    batch = Collator(processor)([example])
    n_image = int((batch["input_ids"] == model.config.image_token_index).sum())
    assert n_image == 576 and batch["pixel_values"].shape[-2:] == (336, 336)


def test_recorded_ga_vs_viker_tables_are_the_recorded_runs():
    """bench/ga_vs_viker.md's tables are what its summary makes of bench/ga_vs_viker.json, claim counts included."""
    spec = importlib.util.spec_from_file_location("bench_ga_vs_viker", ROOT / "bench" / "ga_vs_viker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads((ROOT / "bench" / "ga_vs_viker.json").read_text())
    table = module.summarize(results, [5, 8], [10, 0.7])
    assert table in (ROOT / "bench" / "ga_vs_viker.md").read_text()
    eight_epochs = table.split("### 8 epochs")[1]
    assert "λ=10: holds on 8 of 8 seeds (4 with ViKeR's Forget ACC figure equal or lower)" in eight_epochs
    ga = {"forget_acc": 24.0, "retain_rougeL": 0.0, "coherence": 0.0}
    seed = {"seed": 9, "forget_image_questions": 50, "runs": {
        "ga_e8": ga, "viker_l10_e8": {"forget_acc": 32.0, "retain_rougeL": 70.0, "coherence": 99.0},
        "viker_l0.7_e8": {"forget_acc": 20.0, "retain_rougeL": 70.0, "coherence": 99.0}}}
    row = module.summarize([seed], [8], [10, 0.7]).split("\n")[4]
    assert row.endswith("| yes, within noise | 20 / 70.0 / 99.0 | yes |")  # 16 of 50 right: chance, GA below it
    seed["runs"]["viker_l10_e8"]["forget_acc"] = 40.0  # 20 of 50 right: above chance (p = 0.014)
    assert "| no | 20 / 70.0" in module.summarize([seed], [8], [10, 0.7])


def test_pooled_forget_acc_adds_up_the_seeds_questions():
    """The pooled line counts right answers over every seed's questions and tests them against chance."""
    spec = importlib.util.spec_from_file_location("bench_ga_vs_viker", ROOT / "bench" / "ga_vs_viker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seeds = [{"seed": 0, "forget_image_questions": 50, "runs": {"viker_l10_e8": {"forget_acc": 32.0}}},
             {"seed": 1, "forget_image_questions": 40, "runs": {"viker_l10_e8": {"forget_acc": 25.0}}},
             {"seed": 2, "forget_image_questions": 50, "runs": {}}]  # a seed without the run counts for nothing
    assert module.pooled(seeds, "viker_l10_e8") == (16 + 10, 90)
    line = module.pooled_line(seeds, [("ViKeR", "viker_l10_e8"), ("GA", "ga_e8")])
    p = sum(math.comb(90, k) * 0.25 ** k * 0.75 ** (90 - k) for k in range(26, 91))  # 26 or more of 90 at chance
    assert f"ViKeR 26 of 90 right (28.9%, p = {p:.3f})" in line and "GA" not in line
