"""What each unlearning method costs, measured in one run; writes bench/RESULTS.md and bench/results.json.

    python bench/costs.py [--out DIR] [--quick]                        # tiny LLaVA, CPU (2-4 minutes)
    python bench/costs.py --device cuda --model-shape llava-7b         # LLaVA-1.5-7B shape, random weights, GPU

Tiny model (default), on the embedded benchmark's forget_10 with the demo's unlearning budget:

(a) seconds per unlearning epoch of every method and its ratio to GA (ViKeR reads a warm reference cache);
(b) ViKeR's reference distributions: computing them (empty cache) and loading them (warm cache) against
    one GA epoch; the cache's bytes on disk and in memory per answer token, and what they would be for a
    32k vocabulary (a cache built from random distributions, in both storage formats);
(c) generating the evaluator's answers in batches of 32 against one prompt at a time (the published
    benchmark code's way), with a check that the answers are identical;
(d) peak memory of each phase.

Every unlearning run is a whole ``viker.unlearn.run_unlearn`` (the command's own code path); its epoch time
is the training time it records in ``timing.json`` (total minus setup) divided by the epochs. Repeats run
round-robin over the methods (GA and ViKeR side by side, every other repeat in reverse) and the median is
reported, so load that comes and goes on a shared machine hits every method alike. PyTorch uses
``--threads`` threads (0, the default, keeps PyTorch's own choice, one per core, which is what viker's
commands use; on a machine busy with other work pass ``--threads 1``: there two threads spin against the
other processes and one run can take ten times as long as the next).

``--model-shape llava-7b`` (needs a GPU): a LlavaForConditionalGeneration built from llava-1.5-7b's
published configuration with random weights (nothing is downloaded) in bfloat16, LoRA, gradient
checkpointing: seconds per optimiser step and peak GPU memory for GA and ViKeR (k = 5), ViKeR's reference
computation, and batched generation throughput. ``llava-7b-mini`` is the same geometry (336-pixel images,
576 image tokens, a 32,064-token vocabulary) with tiny layers, to check that path on a CPU.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
VIKER_TOPK = 1024  # ViKeR's default storage above FULL_VOCAB_LIMIT tokens (viker/methods/viker.py)
MiB = 1 << 20
METHODS = ("ga", "graddiff", "klmin", "npo", "idkpo", "viker")  # GA and ViKeR are always measured


# --------------------------------------------------------------------------------------------------
# peak memory of a phase
# --------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """The process's resident set now (Linux), else its lifetime peak (ru_maxrss) as the best available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS so a phase's peak is not hidden under the last one's."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory during a ``with`` block. On CUDA, the allocator's own peak (``max_memory_allocated``).
    On a CPU, the resident set sampled every 10 ms by a thread: ``ru_maxrss`` only ever grows over a
    process's life, so it cannot tell one phase from the next."""

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device, self.interval = device, interval
        self.start = self.peak = 0

    def __enter__(self):
        release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        return False

    def record(self) -> dict:
        return {"peak_mib": round(self.peak / MiB, 1), "above_start_mib": round((self.peak - self.start) / MiB, 1)}


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    out: str = "bench-out"
    results: str | None = None  # folder for RESULTS.md and results.json (None: bench/, or --out when quick)
    quick: bool = False
    model_shape: str = "tiny"  # tiny | llava-7b | llava-7b-mini
    device: str | None = None
    threads: int = 0  # 0: PyTorch's default (one per core)
    data: str | None = None  # an MLLMU-Bench-layout folder (None: generate the embedded benchmark)
    vanilla: str | None = None  # the model to unlearn (None: finetune the tiny model briefly, reused later)
    forget: str = "forget_10"
    repeats: int = 3
    methods: tuple[str, ...] = METHODS
    epochs: float = 1.0  # unlearning epochs per run (tiny)
    finetune_epochs: float = 4.0  # the vanilla model's training (tiny)
    k: int = 5
    eval_prompts: int | None = None  # None: every generation prompt of the demo's evaluation
    eval_batch_size: int = 32
    rows_32k: int = 512  # answer tokens in the 32k-vocabulary cache that is built and measured
    steps: int = 8  # optimiser steps timed per run (7B shape)

    def quick_settings(self) -> "BenchConfig":
        """A smoke run in well under a minute: one repeat, one epoch, few prompts, a smaller benchmark."""
        return replace(self, repeats=1, finetune_epochs=1.0, k=min(self.k, 3), eval_prompts=8,
                       rows_32k=64, steps=2)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "os": platform.platform(terse=True),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    import transformers

    info["transformers"] = transformers.__version__
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class Clock:
    """Progress lines with the time since the start."""

    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)


# --------------------------------------------------------------------------------------------------
# inputs: the benchmark and the vanilla model
# --------------------------------------------------------------------------------------------------
def benchmark(cfg: BenchConfig, clock: Clock) -> Path:
    """The embedded benchmark under ``out/data`` (kept while its settings are unchanged), or ``--data``."""
    from viker.data.synth import SynthConfig, build_benchmark
    from viker.runs import to_jsonable, write_json

    if cfg.data:
        return Path(cfg.data)
    synth = SynthConfig(profiles=20, celebrities=4, test_images=1, ref_per_pool=6) if cfg.quick else SynthConfig()
    data, stamp = Path(cfg.out) / "data", Path(cfg.out) / "synth.json"
    if (data / "README.md").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == to_jsonable(synth):
        clock.say(f"reusing the embedded benchmark in {data}")
        return data
    clock.say(f"generating the embedded benchmark in {data}")
    build_benchmark(data, synth, progress=False)
    write_json(stamp, synth)
    return data


def vanilla_model(cfg: BenchConfig, data: Path, clock: Clock) -> tuple[Path, dict]:
    """The model to unlearn: ``--vanilla``, or the tiny LLaVA finetuned for ``finetune_epochs`` (costs do
    not need a fully trained model, but generation lengths do need one that answers and stops)."""
    from viker.finetune import FinetuneConfig, run_finetune
    from viker.model.tiny import TinyConfig
    from viker.presets import TINY_TRAIN
    from viker.runs import file_hashes, to_jsonable, write_json

    if cfg.vanilla:
        return Path(cfg.vanilla), {"source": cfg.vanilla}
    run = Path(cfg.out) / "vanilla"
    tiny = TinyConfig(hidden=64, intermediate=128, layers=2, vision_hidden=32) if cfg.quick else TinyConfig()
    train = replace(TINY_TRAIN, epochs=cfg.finetune_epochs)
    settings = to_jsonable({"train": train, "tiny": tiny, "data": file_hashes(data)})
    stamp = run / "bench-inputs.json"
    if (run / "model" / "config.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        clock.say(f"reusing the vanilla model in {run}")
        return run, json.loads((run / "bench-vanilla.json").read_text()) | {"reused": True}
    clock.say(f"finetuning the tiny vanilla model for {cfg.finetune_epochs:g} epochs")
    with PeakMemory(torch.device("cpu")) as mem:
        start = time.perf_counter()
        metrics = run_finetune(FinetuneConfig(model="tiny", data=str(data), out=str(run), train=train, tiny=tiny),
                               progress=False, overwrite=True)
    info = {"source": str(run), "epochs": cfg.finetune_epochs,
            "seconds": round(time.perf_counter() - start, 1), "memory": mem.record(),
            "recall": {k: v for k, v in metrics.items() if k.endswith("_exact")}}
    write_json(run / "bench-vanilla.json", info)
    write_json(stamp, settings)
    return run, info


# --------------------------------------------------------------------------------------------------
# (a), (b): unlearning epochs and ViKeR's reference distributions
# --------------------------------------------------------------------------------------------------
def unlearn_once(base, method: str, args: dict, out: Path, cache: Path, device: torch.device,
                 model_and_processor=None, **train_changes) -> dict:
    """One whole ``run_unlearn``: its recorded setup and training seconds, peak memory and the
    reference cache it used (ViKeR)."""
    from viker.unlearn import run_unlearn

    cfg = replace(base, method=method, method_args=args, out=str(out), cache_dir=str(cache),
                  train=replace(base.train, **train_changes))
    with PeakMemory(device) as mem:
        result = run_unlearn(cfg, progress=False, model_and_processor=model_and_processor, overwrite=True)
    timing = json.loads((out / "timing.json").read_text())
    setup = json.loads((out / "config.json").read_text()).get("setup", {})
    train_s = timing["total_seconds"] - timing["setup_seconds"]
    record = {"setup_s": timing["setup_seconds"], "train_s": round(train_s, 3), "memory": mem.record()}
    if "reference_cache" in setup:
        record["cache"] = setup["reference_cache"]
    return record | {"model": result[0]}


def cache_numbers(cache: dict) -> dict:
    """Bytes of a ViKeR run's reference cache, whole and per answer token."""
    rows = max(1, int(cache["rows"]))
    disk = os.path.getsize(cache["path"]) if cache.get("path") and os.path.isfile(cache["path"]) else None
    return {"storage": cache.get("storage"), "vocab_size": cache.get("vocab_size"), "rows": cache["rows"],
            "memory_bytes": cache["bytes"], "disk_bytes": disk, "memory_per_token": round(cache["bytes"] / rows, 1),
            "disk_per_token": round(disk / rows, 1) if disk else None}


def time_methods(cfg: BenchConfig, vanilla: Path, data: Path, clock: Clock) -> dict:
    """Each method's epoch, ViKeR's reference computation (empty cache) and load (warm cache)."""
    from viker.demo import DemoConfig
    from viker.presets import TINY_UNLEARN
    from viker.unlearn import UnlearnConfig

    device = torch.device(cfg.device or "cpu")
    viker_args = {**DemoConfig().viker, "k": cfg.k}
    base = UnlearnConfig(model=str(vanilla), data=str(data), forget=cfg.forget, device=cfg.device,
                         train=replace(TINY_UNLEARN, epochs=cfg.epochs))
    runs = Path(cfg.out) / "runs"
    epochs: dict[str, list[float]] = {m: [] for m in cfg.methods}
    memory: dict[str, list] = {m: [] for m in cfg.methods}
    cold, warm, cache = [], [], None
    for r in range(cfg.repeats):
        clock.say(f"unlearning, repeat {r + 1}/{cfg.repeats}: ViKeR's reference distributions from an empty cache")
        cache_dir = runs / f"cache-{r}"
        shutil.rmtree(cache_dir, ignore_errors=True)  # an empty cache each repeat, also when --out is reused
        first = unlearn_once(base, "viker", viker_args, runs / "viker-cold", cache_dir, device, max_steps=1)
        del first["model"]
        cold.append(first["setup_s"])
        memory.setdefault("reference", []).append(first["memory"])
        # GA and ViKeR side by side, and every other repeat in reverse, so that load rising or falling during
        # the run does not favour the methods that run first
        order = ["ga", "viker", *[m for m in cfg.methods if m not in ("ga", "viker")]]
        for method in order if r % 2 == 0 else order[::-1]:
            clock.say(f"unlearning, repeat {r + 1}/{cfg.repeats}: {method}, {cfg.epochs:g} epochs")
            args = viker_args if method == "viker" else {}
            run = unlearn_once(base, method, args, runs / method, cache_dir, device)
            del run["model"]
            epochs[method].append(run["train_s"] / cfg.epochs)
            memory[method].append(run["memory"])
            if method == "viker":
                warm.append(run["setup_s"])
                cache = run["cache"]
    ga = statistics.median(epochs["ga"])
    table = {m: {"epoch_s": round(statistics.median(v), 3), "ratio_to_ga": round(statistics.median(v) / ga, 3),
                 "epoch_s_all": [round(x, 3) for x in v], **peak(memory[m])} for m, v in epochs.items()}
    steps = -(-len_forget(data, cfg.forget) // base.train.batch_size)
    return {
        "settings": {"forget": cfg.forget, "examples": len_forget(data, cfg.forget), "steps_per_epoch": steps,
                     "epochs_per_run": cfg.epochs, "repeats": cfg.repeats, "train": asdict(base.train),
                     "lora": asdict(base.lora), "viker": viker_args},
        "epochs": table,
        "reference": {"computed_s": round(statistics.median(cold), 3), "loaded_s": round(statistics.median(warm), 3),
                      "computed_s_all": cold, "loaded_s_all": warm,
                      "computed_to_ga_epoch": round(statistics.median(cold) / ga, 3),
                      "loaded_to_ga_epoch": round(statistics.median(warm) / ga, 3),
                      **peak(memory["reference"])},
        "cache": cache_numbers(cache),
    }


def peak(records: list[dict]) -> dict:
    """The highest peak over the repeats, and the most a phase rose above its own start."""
    return {"peak_rss_mib": max(r["peak_mib"] for r in records),
            "above_start_mib": max(r["above_start_mib"] for r in records)}


def len_forget(data: Path, forget: str) -> int:
    from viker.data.examples import unlearning_examples
    from viker.data.loader import load_finetune, load_profiles

    return len(unlearning_examples(data, forget, load_profiles(data, forget), load_finetune(data)))


def cache_for_vocabulary(vocab: int, rows: int, examples: int, path: Path, seed: int = 0) -> dict:
    """Bytes per answer token of a reference cache for a ``vocab``-token model, in both storage formats,
    measured on a ReferenceDistributions built from random peaked distributions and saved like ViKeR's
    (no model needed: the sizes depend only on the shapes)."""
    from viker.methods.losses import compress_topk
    from viker.methods.reference import FULL_VOCAB_LIMIT, ReferenceDistributions

    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen) * 3.0
    probs = torch.softmax(logits, dim=-1)
    bounds = torch.linspace(0, rows, examples + 1).round().long()  # answer tokens split over the examples
    out = {"vocab_size": vocab, "rows": rows, "default": "full" if vocab <= FULL_VOCAB_LIMIT else f"top-{VIKER_TOPK}"}
    formats = {"full": dict(probs=probs)}
    indices, values = compress_topk(probs, VIKER_TOPK)
    formats[f"top-{VIKER_TOPK}"] = dict(indices=indices, values=values)
    for name, tensors in formats.items():
        dists = ReferenceDistributions(bounds, vocab, meta={"storage": name}, **tensors)
        file = path / f"refdist-{vocab}-{name}.safetensors"
        dists.save(file)
        out[name] = {"memory_per_token": round(dists.nbytes() / rows, 1),
                     "disk_per_token": round(os.path.getsize(file) / rows, 1)}
        file.unlink()
    return out


# --------------------------------------------------------------------------------------------------
# (c): evaluation, batched against one prompt at a time
# --------------------------------------------------------------------------------------------------
def eval_prompts(data: Path, cfg: BenchConfig):
    """The generation prompts of the demo's evaluation (forget, test, retain and real-world sets)."""
    from viker.data.examples import generation_examples
    from viker.demo import DemoConfig
    from viker.eval.evaluate import eval_sets

    ecfg = replace(DemoConfig().eval, forget=cfg.forget)
    prompts = [ex for s in eval_sets(data, ecfg) for ex in generation_examples(s.profiles)]
    return prompts[: cfg.eval_prompts] if cfg.eval_prompts else prompts, ecfg.max_new_tokens


def time_generation(model, processor, prompts, batch_size: int, max_new_tokens: int, device) -> tuple[list[str], dict]:
    from viker.eval.generate import generate

    with PeakMemory(device) as mem:
        start = time.perf_counter()
        answers = generate(model, processor, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in processor.tokenizer(answers, add_special_tokens=False)["input_ids"])
    return answers, {"seconds": round(seconds, 3), "prompts": len(prompts), "batch_size": batch_size,
                     "answer_tokens": tokens, "prompts_per_s": round(len(prompts) / seconds, 2),
                     "memory": mem.record()}


def time_evaluation(cfg: BenchConfig, vanilla: Path, data: Path, clock: Clock) -> dict:
    """Batched and one-at-a-time generation of the same prompts, alternated ``repeats`` times (medians)."""
    from viker.model import load_model

    device = torch.device(cfg.device or "cpu")
    model, processor = load_model(vanilla, cfg.device)
    prompts, max_new = eval_prompts(data, cfg)
    runs: dict[str, list[dict]] = {"batched": [], "one_at_a_time": []}
    for r in range(cfg.repeats):
        clock.say(f"evaluation, repeat {r + 1}/{cfg.repeats}: {len(prompts)} prompts in batches of "
                  f"{cfg.eval_batch_size}, then one at a time")
        batched, b = time_generation(model, processor, prompts, cfg.eval_batch_size, max_new, device)
        single, s = time_generation(model, processor, prompts, 1, max_new, device)
        same = sum(x == y for x, y in zip(batched, single))
        assert same == len(prompts), f"batched and one-at-a-time answers differ on {len(prompts) - same} prompts"
        runs["batched"].append(b)
        runs["one_at_a_time"].append(s)
    out = {name: median_run(rs) for name, rs in runs.items()}
    return out | {"speedup": round(out["one_at_a_time"]["seconds"] / out["batched"]["seconds"], 2),
                  "speedup_all": [round(s["seconds"] / b["seconds"], 2) for b, s in zip(*runs.values())],
                  "identical_answers": same, "max_new_tokens": max_new}


def median_run(runs: list[dict]) -> dict:
    """The run with the median time (its own figures), and every run's seconds."""
    middle = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return middle | {"seconds_all": [r["seconds"] for r in runs]}


# --------------------------------------------------------------------------------------------------
# the LLaVA-1.5-7B shape (GPU)
# --------------------------------------------------------------------------------------------------
# llava-hf/llava-1.5-7b-hf's config.json: a CLIP ViT-L/14 at 336 pixels and a Llama-2-7B (Vicuna) decoder.
LLAVA_15_7B = {
    "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   projection_dim=768),
    "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32),
}
SHAPES = {
    "llava-7b": LLAVA_15_7B,
    "llava-7b-mini": {  # the same geometry and vocabulary with tiny layers: the 7B path, testable on a CPU
        "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       projection_dim=64),
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2),
    },
}
LLAVA_15_SHARED = {"image_size": 336, "patch_size": 14, "vocab_size": 32064, "max_position_embeddings": 4096,
                   "projector_hidden_act": "gelu", "vision_feature_layer": -2,
                   "vision_feature_select_strategy": "default", "image_seq_length": 576}


def build_shaped_llava(data: Path, shape: str, device: torch.device, dtype: torch.dtype):
    """A randomly initialised LLaVA of the given shape and a processor for it. The processor is the tiny
    model's (its tokenizer trained on the benchmark, LLaVA-1.5's chat template) with LLaVA-1.5's image
    geometry, so each image becomes 576 tokens; the model's vocabulary is LLaVA-1.5's 32,064 tokens (the
    tokenizer uses the first few thousand ids), so the output layer costs what it costs there."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from viker.model.tiny import IMAGE_TOKEN, TinyConfig, build_tiny

    s = LLAVA_15_SHARED
    _, processor = build_tiny(data, TinyConfig(vocab_size=32000, image_size=s["image_size"], patch_size=s["patch_size"],
                                               vision_hidden=16, vision_layers=1, hidden=16, layers=1, heads=1,
                                               intermediate=16))
    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=s["image_size"], patch_size=s["patch_size"], layer_norm_eps=1e-5,
                                       **SHAPES[shape]["vision"]),
        text_config=LlamaConfig(vocab_size=s["vocab_size"], max_position_embeddings=s["max_position_embeddings"],
                                rms_norm_eps=1e-5, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, **SHAPES[shape]["text"]),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=s["image_seq_length"],
        projector_hidden_act=s["projector_hidden_act"],
        vision_feature_layer=s["vision_feature_layer"],
        vision_feature_select_strategy=s["vision_feature_select_strategy"],
    )
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model.eval(), processor


def time_shape(cfg: BenchConfig, data: Path, clock: Clock) -> dict:
    """GA and ViKeR with LoRA, bf16 and gradient checkpointing on the 7B shape: seconds per optimiser step
    (the difference between a run of 2 steps and one of 2 + ``steps`` steps, so loading, setup, saving
    and the first step's warm-up cancel out), peak memory, ViKeR's reference computation, and batched
    generation throughput."""
    from viker.model import LoraSettings
    from viker.presets import REAL_UNLEARN
    from viker.unlearn import UnlearnConfig

    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    clock.say(f"building a random {cfg.model_shape} LLaVA on {device} ({dtype})")
    start = time.perf_counter()
    model, processor = build_shaped_llava(data, cfg.model_shape, device, dtype)
    built_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    train = replace(REAL_UNLEARN, gradient_checkpointing=True, log_every=1)
    base = UnlearnConfig(model=f"random {cfg.model_shape}", data=str(data), forget=cfg.forget, train=train,
                         train_on="all",  # the embedded benchmark's every example, as its tiny vanilla model learns
                         lora=LoraSettings(r=16, alpha=16, dropout=0.05, merge=False))
    viker_args = {"k": cfg.k, "refs": "people"}
    runs, cache = Path(cfg.out) / f"runs-{cfg.model_shape}", Path(cfg.out) / f"runs-{cfg.model_shape}" / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    results: dict = {"settings": {"shape": cfg.model_shape, "forget": cfg.forget, "device": str(device),
                                  "dtype": str(dtype),
                                  "parameters": params, "build_s": round(built_s, 1), "train": asdict(train),
                                  "lora": asdict(base.lora), "viker": viker_args, "timed_steps": cfg.steps}}

    def run(method: str, steps: int) -> dict:
        nonlocal model
        args = viker_args if method == "viker" else {}
        record = unlearn_once(base, method, args, runs / f"{method}-{steps}", cache, device,
                              model_and_processor=(model, processor), max_steps=steps)
        model = record.pop("model").unload()  # the base model without adapters, for the next run
        return record

    for method in ("ga", "viker"):
        clock.say(f"{cfg.model_shape}: {method}, 2 steps then {2 + cfg.steps} steps")
        short, long = run(method, 2), run(method, 2 + cfg.steps)
        per_step = (long["train_s"] - short["train_s"]) / cfg.steps
        results[method] = {"seconds_per_step": round(per_step, 3), "peak_mib": long["memory"]["peak_mib"],
                           "short": short, "long": long}
        if method == "viker":
            results["reference"] = {"computed_s": short["setup_s"], "loaded_s": long["setup_s"],
                                    "peak_mib": short["memory"]["peak_mib"], "cache": cache_numbers(short["cache"])}
    results["viker_to_ga"] = round(results["viker"]["seconds_per_step"] / results["ga"]["seconds_per_step"], 3)
    prompts, max_new = eval_prompts(data, cfg)
    prompts = prompts[: 2 * cfg.eval_batch_size] if not cfg.eval_prompts else prompts
    clock.say(f"{cfg.model_shape}: generating {len(prompts)} answers in batches of {cfg.eval_batch_size}")
    time_generation(model, processor, prompts[: cfg.eval_batch_size], cfg.eval_batch_size, 4, device)  # warm-up
    _, batched = time_generation(model, processor, prompts, cfg.eval_batch_size, max_new, device)
    few = prompts[: max(2, len(prompts) // 8)]
    clock.say(f"{cfg.model_shape}: {len(few)} answers one at a time")
    _, single = time_generation(model, processor, few, 1, max_new, device)
    results["generation"] = {"batched": batched, "one_at_a_time": single,
                             "speedup": round(batched["prompts_per_s"] / single["prompts_per_s"], 2),
                             "max_new_tokens": max_new}
    return results


# --------------------------------------------------------------------------------------------------
# RESULTS.md
# --------------------------------------------------------------------------------------------------


def kib(n: float | None) -> str:
    return "–" if n is None else f"{n / 1024:,.1f} KiB"


def mib(n: float | None) -> str:
    return "–" if n is None else f"{n / MiB:,.1f} MiB"


def name(method: str) -> str:
    """A method's title; ViKeR's epochs here run with its reference distributions already cached."""
    from viker.methods import title

    return "ViKeR (warm cache)" if method == "viker" else title(method)


def plural(n: float, word: str) -> str:
    return f"{n:g} {word}{'' if n == 1 else 's'}"


def header(r: dict) -> str:
    m = r["machine"]
    where = m["gpu"] or f"{m['cpu']}, {m['cores']} cores, {plural(m['threads'], 'PyTorch thread')}"
    load = ""
    if r.get("load_start"):
        # a load of half the cores before the benchmark's own threads start is other work, running or just ended
        busy = r["load_start"][0] >= m["cores"] / 2
        load = (f" · load average (1/5/15 min) {'/'.join(map(str, r['load_start']))} at the start"
                f"{' (other work was using the CPU)' if busy else ''}, {'/'.join(map(str, r['load_end']))} at the "
                "end (its own threads included)")
    reused = " (the vanilla model reused from an earlier run)" if r.get("vanilla", {}).get("reused") else ""
    return (f"`python bench/costs.py{r['argv']}` · {r['date']} · {where} · torch {m['torch']}, transformers "
            f"{m['transformers']}{load} · {r['total_s'] / 60:.1f} minutes in all{reused}")


def render_tiny(r: dict) -> str:
    s, e, ref, c, v, ev, van = (r[k] for k in ("settings", "epochs", "reference", "cache", "vocab_32k",
                                                "evaluation", "vanilla"))
    rows = "\n".join(f"| {name(k)} | {x['epoch_s']:.2f} | {x['ratio_to_ga']:.2f} "
                     f"| {x['peak_rss_mib']:.0f} | {x['above_start_mib']:.0f} |" for k, x in e.items())
    top = f"top-{VIKER_TOPK}"
    b, one = ev["batched"], ev["one_at_a_time"]
    if "seconds" in van:
        recall = ", ".join(f"{k.replace('_exact', '')} {x:.0f}%" for k, x in van["recall"].items())
        vanilla = (f"the tiny LLaVA finetuned for {van['epochs']:g} epochs ({van['seconds']:.0f} s"
                   f" when it was trained; exact recall {recall}): it has not memorised the people, but it answers "
                   "in the benchmark's format and stops, which is what generation time depends on")
    else:
        vanilla = f"`{van['source']}`"
    viker = ", ".join(f"{k}={x}" for k, x in s["viker"].items())
    top_method = max(e, key=lambda k: e[k]["peak_rss_mib"])
    finetune = f", the vanilla finetune at {van['memory']['peak_mib']:.0f} MiB" if "memory" in van else ""
    return f"""## Tiny LLaVA on a CPU

{header(r)}.

The embedded benchmark's {s['forget']}: {s['examples']} forget examples, {s['steps_per_epoch']} steps of
{s['train']['batch_size']} per epoch. The model unlearned is {vanilla}. Every method has the demo's budget
(LoRA r={s['lora']['r']}, lr {s['train']['lr']:g}, batch {s['train']['batch_size']}; GradDiff, KL-Min and IdkPO
pair each forget batch with a retain batch); ViKeR runs with {viker}. Each figure is the median of
{s['repeats']} whole `run_unlearn` calls of {plural(s['epochs_per_run'], 'epoch')}, run round-robin over the methods
(GA and ViKeR side by side, every other repeat in reverse), but for memory: the highest over those calls;
an epoch is the training time the run records (total minus setup) over the epochs.

### (a) One unlearning epoch

| method | seconds per epoch | relative to GA | peak RSS (MiB) | rise during the run (MiB) |
| --- | --- | --- | --- | --- |
{rows}

Every loss normalises over the vocabulary only at the answer positions (prompt and image tokens never
reach the softmax); ViKeR adds a KL to its reference rows there. With the reference distributions cached,
reading a batch's rows is a copy of {s['train']['batch_size']} examples' answer rows.

### (b) ViKeR's reference distributions

| setup of a ViKeR run | seconds | relative to one GA epoch |
| --- | --- | --- |
| computing them (empty cache; {s['viker']['k']} reference images per image question) | {ref['computed_s']:.2f} | {ref['computed_to_ga_epoch']:.2f} |
| loading them (warm cache; fingerprint of the weights included) | {ref['loaded_s']:.2f} | {ref['loaded_to_ga_epoch']:.2f} |

This run's cache: {c['rows']} answer tokens, a {c['vocab_size']}-token vocabulary, {c['storage']} storage:
{mib(c['memory_bytes'])} in memory and {mib(c['disk_bytes'])} on disk, **{kib(c['memory_per_token'])} in memory
and {kib(c['disk_per_token'])} on disk per answer token**.

For a {v['vocab_size']:,}-token vocabulary (LLaVA-1.5 has 32,064), measured on a cache of {v['rows']} answer tokens
built from random distributions and saved the way ViKeR saves its own ({v['default']} is ViKeR's default there):

| storage | memory per answer token | disk per answer token | {s['forget']} ({c['rows']} answer tokens here) |
| --- | --- | --- | --- |
| full float32 | {kib(v['full']['memory_per_token'])} | {kib(v['full']['disk_per_token'])} | {mib(v['full']['memory_per_token'] * c['rows'])} |
| {top}: int32 index + float32 value, uniform tail | **{kib(v[top]['memory_per_token'])}** | {kib(v[top]['disk_per_token'])} | {mib(v[top]['memory_per_token'] * c['rows'])} |

Training expands only the current batch's rows to the whole vocabulary (answer tokens × vocabulary × 4 bytes).

### (c) Evaluation: batched against one prompt at a time

The {b['prompts']} generation prompts of the demo's evaluation (forget, test, retain and real-world sets),
greedy, at most {ev['max_new_tokens']} new tokens, through `viker.eval.generate.generate`; median of
{len(b['seconds_all'])} alternating runs:

| | seconds | prompts per second | peak RSS (MiB) |
| --- | --- | --- | --- |
| batches of {b['batch_size']} (left padding) | {b['seconds']:.2f} | {b['prompts_per_s']:.1f} | {b['memory']['peak_mib']:.0f} |
| one at a time: the same function with batch size 1 (how the published benchmark code generates) | {one['seconds']:.2f} | {one['prompts_per_s']:.1f} | {one['memory']['peak_mib']:.0f} |

Batched generation is **{ev['speedup']:.1f}× faster** (each run: {', '.join(f'{x:.1f}×' for x in ev['speedup_all'])}),
with identical answers ({ev['identical_answers']} of {b['prompts']}, checked); the answers average
{b['answer_tokens'] / b['prompts']:.1f} tokens (the cap is {ev['max_new_tokens']}). Both run on
{plural(r['machine']['threads'], 'PyTorch thread')}.

### (d) Peak memory

The process's resident set, sampled every 10 ms during each phase after freed memory is handed back to the
OS, is in the tables above; "rise" is the peak minus the resident set at the phase's start (model loading
included). Unlearning peaks at {e[top_method]['peak_rss_mib']:.0f} MiB ({name(top_method)}), the ViKeR run that
computes the reference distributions at {ref['peak_rss_mib']:.0f} MiB{finetune}; the process's lifetime
peak (`ru_maxrss`) is {r['ru_maxrss_mib']:.0f} MiB.
"""


def render_shape(r: dict | None) -> str:
    if r is None:
        return """## LLaVA-1.5-7B shape on a GPU

**Not recorded: no GPU was available where these results were taken.** On a GPU machine,
`python bench/costs.py --device cuda --model-shape llava-7b` builds LLaVA-1.5-7B from its published
configuration (7,063,427,072 parameters) with random weights in bfloat16 and records, in this section,
seconds per optimiser step and peak GPU memory for GA and ViKeR (LoRA r=16, gradient checkpointing,
k = 5), ViKeR's reference computation and cache size, and batched generation throughput. The same code
path runs on a CPU with `--model-shape llava-7b-mini` (the same image geometry and vocabulary, tiny layers);
that is how it was checked here.
"""
    s, g, ref = r["settings"], r["generation"], r["reference"]
    memory = "peak GPU memory allocated" if s["device"].startswith("cuda") else "peak RSS"
    size = f"{s['parameters'] / 1e9:.2f} B" if s["parameters"] >= 1e9 else f"{s['parameters'] / 1e6:.1f} M"
    return f"""## LLaVA-1.5-7B shape ({s['shape']}) on {s['device']}

{header(r)}.

{size} parameters with random weights in {s['dtype'].replace('torch.', '')} (built in {s['build_s']:.0f} s); LoRA
r={s['lora']['r']} on the language model, gradient checkpointing, batch {s['train']['batch_size']} ×
{s['train']['grad_accum']} accumulation per optimiser step; {s['forget']} of the embedded benchmark, 576 image
tokens per image. Seconds per step are the difference between a {2 + s['timed_steps']}-step and a 2-step run over
{s['timed_steps']}, so loading, setup, saving and the first step's warm-up cancel out.

| | seconds per optimiser step | {memory} (MiB) |
| --- | --- | --- |
| GA | {r['ga']['seconds_per_step']:.2f} | {r['ga']['peak_mib']:.0f} |
| ViKeR (k = {s['viker']['k']}, warm cache) | {r['viker']['seconds_per_step']:.2f} | {r['viker']['peak_mib']:.0f} |

ViKeR's step is {r['viker_to_ga']:.2f}× GA's. Its reference distributions took {ref['computed_s']:.1f} s to compute
from an empty cache ({memory} {ref['peak_mib']:.0f} MiB) and {ref['loaded_s']:.2f} s to load; {ref['cache']['storage']}
storage, {kib(ref['cache']['memory_per_token'])} in memory and {kib(ref['cache']['disk_per_token'])} on disk per
answer token.

Generation of the evaluation's prompts, greedy, at most {g['max_new_tokens']} new tokens, random weights (how
soon an answer ends is arbitrary here, so prompts per second is the figure): batches of
{g['batched']['batch_size']}: {g['batched']['prompts_per_s']:.1f} prompts/s ({memory} {g['batched']['memory']['peak_mib']:.0f} MiB);
one at a time: {g['one_at_a_time']['prompts_per_s']:.2f} prompts/s; **{g['speedup']:.1f}×**.
"""


def write_results(cfg: BenchConfig, key: str, record: dict) -> Path:
    folder = Path(cfg.results) if cfg.results else (Path(cfg.out) if cfg.quick or key == "llava-7b-mini"
                                                   else BENCH_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    everything[key] = record
    path.write_text(json.dumps(everything, indent=2) + "\n")
    shape = everything.get("llava-7b") or everything.get("llava-7b-mini")
    text = "# What each method costs\n\nWritten by `bench/costs.py` from `results.json` beside this file " \
           "(every raw number, each repeat).\n\n"
    if "tiny" in everything:
        text += render_tiny(everything["tiny"]) + "\n"
    text += render_shape(shape)
    (folder / "RESULTS.md").write_text(text)
    return folder / "RESULTS.md"


# --------------------------------------------------------------------------------------------------
def run(cfg: BenchConfig, argv: list[str] | None = None) -> dict:
    import transformers

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices of the libraries
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    clock = Clock()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    common = {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "argv": "".join(f" {a}" for a in (argv or [])), "load_start": load_start}
    data = benchmark(cfg, clock)
    if cfg.model_shape == "tiny":
        vanilla, vanilla_info = vanilla_model(cfg, data, clock)
        record = common | time_methods(cfg, vanilla, data, clock)
        record["vanilla"] = vanilla_info
        clock.say(f"reference cache for a 32,000-token vocabulary ({cfg.rows_32k} answer tokens)")
        record["vocab_32k"] = cache_for_vocabulary(32000, cfg.rows_32k, max(1, cfg.rows_32k // 20), Path(cfg.out))
        record["evaluation"] = time_evaluation(cfg, vanilla, data, clock)
    elif cfg.model_shape in SHAPES:
        record = common | time_shape(cfg, data, clock)
    else:
        raise SystemExit(f"--model-shape {cfg.model_shape}: choose tiny or {', '.join(SHAPES)}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record |= {"total_s": round(clock.elapsed(), 1), "load_end": load_average(),
               "ru_maxrss_mib": round(peak / (MiB if sys.platform == "darwin" else 1024), 1)}
    path = write_results(cfg, cfg.model_shape, record)
    clock.say(f"wrote {path} and {path.with_name('results.json')}")
    return record


def parse_args(argv: list[str]) -> BenchConfig:
    d = BenchConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=d.out, help="working folder: benchmark, vanilla model, runs (reused)")
    ap.add_argument("--results", default=None, help="where RESULTS.md and results.json go (default: bench/, "
                                                    "or --out with --quick)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small benchmark, one repeat, few prompts")
    ap.add_argument("--model-shape", default=d.model_shape, choices=["tiny", *SHAPES])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu for tiny, cuda when present otherwise)")
    ap.add_argument("--threads", type=int, default=d.threads, help="PyTorch CPU threads (0: PyTorch's default)")
    ap.add_argument("--data", default=None, help="an MLLMU-Bench-layout folder instead of the embedded benchmark")
    ap.add_argument("--vanilla", default=None, help="the model to unlearn instead of a briefly finetuned tiny one")
    ap.add_argument("--methods", default=",".join(d.methods), help="comma-separated; GA and ViKeR always run")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None, help="unlearning epochs per timed run")
    ap.add_argument("--finetune-epochs", type=float, default=None)
    ap.add_argument("--eval-prompts", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps timed per run (7B shape)")
    a = ap.parse_args(argv)
    cfg = replace(d, out=a.out, results=a.results, quick=a.quick, model_shape=a.model_shape, device=a.device,
                  threads=a.threads, data=a.data, vanilla=a.vanilla,
                  methods=tuple(dict.fromkeys(["ga", "viker", *a.methods.split(",")])))
    if cfg.quick:
        cfg = cfg.quick_settings()
    given = {"repeats": a.repeats, "epochs": a.epochs, "finetune_epochs": a.finetune_epochs,
             "eval_prompts": a.eval_prompts, "steps": a.steps}
    return replace(cfg, **{k: v for k, v in given.items() if v is not None})


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    return run(parse_args(argv), argv)


if __name__ == "__main__":
    main()
