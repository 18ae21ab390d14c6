"""Shared fixtures: a small embedded benchmark and a tiny model, built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from viker.data.synth import SynthConfig, build_benchmark  # noqa: E402

SMALL = SynthConfig(seed=1, profiles=20, celebrities=4, test_images=1, ref_per_pool=4)


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    build_benchmark(out, SMALL, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny(bench_dir):
    """(model, processor) of a randomly initialised tiny LLaVA for the small benchmark."""
    from viker.model.tiny import TinyConfig, build_tiny

    return build_tiny(bench_dir, TinyConfig(hidden=64, intermediate=128, layers=2, vision_hidden=32))


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory):
    model, processor = tiny
    out = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
