"""ViKeR's reference distributions R̂: what the frozen model says when the image shows someone else.

For every forget example and every answer position i,
``R̂_i = (1/k) Σ_j p_θfull(· | I'_j, x, y_<i)`` over ``k`` reference images ``I'_j`` (probabilities are
averaged, not logits). R̂ does not depend on the model being trained, so it is computed once, in
batches of ``k`` images per example, and cached on disk under a key made of everything it depends on:
the frozen model's weights, the processor, the examples, the reference images, ``k``, the seed and the
storage format.

Storage: the full distribution (float32) by default for vocabularies up to FULL_VOCAB_LIMIT (8,192)
tokens; above it, the top 1,024 entries plus a uniform tail, whose KL error is measured and recorded
with the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from viker.collate import chat_template
from viker.data.loader import has_config, image_bytes, load_profiles
from viker.data.schema import Example
from viker.errors import VikerError, require
from viker.methods.losses import answer_token_counts, compress_topk, decompress_topk, kl_to_reference
from viker.progress import progress_bar
from viker.runs import as_recorded, as_umask_gives, check_writable, remove_stale

SOURCES = ("people", "patterns", "scenes", "pets", "forget", "retain")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CACHE_VERSION = 3
FULL_VOCAB_LIMIT = 8192  # above this, store top-k by default
AUTO_TOPK = 1024  # the k stored then


def default_cache_dir() -> Path:
    """Where R̂ is cached when no folder is given: $VIKER_CACHE (when set to a folder), else ~/.cache/viker."""
    return Path(os.environ.get("VIKER_CACHE") or Path.home() / ".cache" / "viker")


def given_cache_dir(cache_dir: str | Path | None) -> str | None:
    """``--cache-dir`` as a run records and reads it: absolute (a relative one was recorded as typed), refused where
    it is blank (it fell back on the default and recorded ""), writable; None for the default."""
    if cache_dir is None:
        return None
    require(str(cache_dir).strip() != "", "--cache-dir", repr(cache_dir),
            "name a folder (leave it out for $VIKER_CACHE, else ~/.cache/viker)")
    check_writable("--cache-dir", cache_dir, read_only=True)  # a shared one, filled
    return as_recorded(cache_dir, local=True)


def default_topk(model: torch.nn.Module) -> int | None:
    """How R̂ is stored for ``model`` by default: in full up to FULL_VOCAB_LIMIT tokens, else top-AUTO_TOPK."""
    vocab = model.get_output_embeddings().weight.shape[0]
    return None if vocab <= FULL_VOCAB_LIMIT else AUTO_TOPK


def reference_pool(refs: str, data_dir: str | Path | None, forget_split: str | None = None) -> list[bytes]:
    """The images a reference source names (see :func:`reference_pool_and_source`)."""
    return reference_pool_and_source(refs, data_dir, forget_split)[0]


def reference_pool_and_source(refs: str, data_dir: str | Path | None,
                              forget_split: str | None = None) -> tuple[list[bytes], str]:
    """The images a reference source names, and where they came from: a pool of the embedded benchmark
    (``ref_people`` ...), the forget or retain people's own images, or any folder of image files.

    The real MLLMU-Bench has no ``ref_people`` pool: there ``people`` falls back to the Retain_Set
    (real-world people: never in a forget split, and not the fictitious retain people, whose images
    the paper found to hurt retention as references); on CLEAR, to its ``real_faces`` for the same reason."""
    from viker.data import clear

    if refs in ("forget", "retain"):
        if data_dir is None or forget_split is None:
            raise VikerError(f"--refs {refs} needs --data and --forget")
        owners, split = _people_of(refs, data_dir, forget_split)
        return list(owners), split
    folder = Path(data_dir) / f"ref_{refs}" if refs in SOURCES and data_dir is not None else Path(refs)
    if not folder.is_dir():
        if refs == "people" and data_dir is not None and (clear.is_forget_split(forget_split) or
                                                          clear.is_clear(data_dir)):
            return clear.real_face_images(data_dir), "CLEAR real_faces (real people; CLEAR has no ref_people pool)"
        if refs == "people" and data_dir is not None:
            if not has_config(data_dir, "Retain_Set"):
                raise VikerError(f"--refs people: {data_dir} has neither a ref_people pool nor a Retain_Set, whose "
                                 "real-world people stand in for one; choose forget, retain or a folder of images")
            return [p.image for p in load_profiles(data_dir, "Retain_Set")], \
                "Retain_Set (real-world people; the data has no ref_people pool)"
        if refs in SOURCES and data_dir is not None:  # patterns, scenes, pets: pools only the embedded benchmark has
            raise VikerError(f"--refs {refs}: no folder {folder}; the ref_* pools are the embedded benchmark's "
                             f"(`viker data synth`), MLLMU-Bench and CLEAR ship none: choose people (the real "
                             "people of the benchmark where it has no pool), forget, retain or a folder of images")
        raise VikerError(f"--refs {refs}: no folder {folder} (choose {', '.join(SOURCES)} or a folder of images)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VikerError(f"--refs {refs}: {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    others = sorted(p.name for p in folder.iterdir() if p.suffix.lower() not in IMAGE_SUFFIXES
                    and not p.name.startswith(".") and p.is_file())
    if others:  # a HEIC photo, say: not among the references, and said so
        files_are = f"{len(others)} files are" if len(others) > 1 else "1 file is"
        print(f"warning: --refs {folder}: {files_are} not read as images (not {', '.join(IMAGE_SUFFIXES)}; e.g. "
              f"{others[0]})", file=sys.stderr)
    return [image_bytes({"bytes": f.read_bytes()}, str(f)) for f in files], as_recorded(folder)


def check_refs(refs: str) -> None:
    """Refuse a ``--refs`` that names neither a source nor a folder, before anything loads."""
    if refs not in SOURCES and not Path(refs).is_dir():
        what = "a file, not a folder" if Path(refs).exists() else f"no folder {refs}"
        raise VikerError(f"--refs {refs}: {what} (choose {', '.join(SOURCES)} or a folder of images)")


def record_reference(info: dict, dists: "ReferenceDistributions", path: Path | None) -> None:
    """What a run's config records of the R̂ it trained toward: where it is cached, how it was stored, its size."""
    info["reference_cache"] = {"path": str(path) if path else None, **(dists.meta or {}), "bytes": dists.nbytes()}


def pool_owners(refs: str, data_dir: str | Path | None, forget_split: str | None = None) -> dict[bytes, str] | None:
    """Whose face each image of a ``forget`` or ``retain`` pool is (None for the other sources, which hold no
    benchmark person): a reference image must be another person's, and on CLEAR a person has several."""
    if refs not in ("forget", "retain") or data_dir is None or forget_split is None:
        return None
    return _people_of(refs, data_dir, forget_split)[0]


def _people_of(refs: str, data_dir: str | Path, forget_split: str) -> tuple[dict[bytes, str], str]:
    """The images of the forget (``refs="forget"``) or retain split's people, each with whose it is (a CLEAR
    person's name, an MLLMU-Bench profile's ID), in the split's order; and the split's name."""
    from viker.data import clear
    from viker.data.schema import RETAIN_OF

    if clear.is_forget_split(forget_split):  # CLEAR: the faces of its forget or retain persons
        split = clear.split_of(forget_split, refs)
        return {p.image: p.name for p in clear.load_portraits(data_dir, split)}, f"CLEAR {split}"
    split = forget_split if refs == "forget" else RETAIN_OF[forget_split]
    return {p.image: p.id for p in load_profiles(data_dir, split)}, split


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# config.json entries that say where a model came from or how it is run, not what it computes
_NOT_SETTINGS = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache",
                 "return_dict", "output_attentions", "output_hidden_states"}


def _settings(config) -> dict:
    """A config's settings (sub-configs included) less where the model came from and how it is run."""
    return {k: _settings(v) if isinstance(v, dict) else v for k, v in config.items()
            if k not in _NOT_SETTINGS and not str(k).startswith("_")}


def model_fingerprint(model: torch.nn.Module, adapters: bool = False) -> str:
    """The content identity of the frozen model: every byte of every tensor with its name, shape and dtype
    (sha256 reads 1-1.6 GB/s, some 10-15 s for a 7B model, once per run; a sample of each tensor would miss
    a model that differs from another in a few weights), and the configuration the weights run with (the
    same weights with another RoPE base or vision_feature_layer give another R̂). The names peft adds are
    left out, and so are LoRA adapters unless ``adapters`` says they act on the reference's outputs and one
    of them is trained (a LoRA B that is not zero): a model with fresh adapters, or one whose adapters the
    reference switches off, has its base model's fingerprint."""
    state = model.state_dict()
    trained = adapters and any("lora_B" in name and p.any() for name, p in state.items())
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        h.update(json.dumps(_settings(config.to_dict()), sort_keys=True, default=str).encode())
    for name, p in state.items():
        if "lora_" in name and not trained:
            continue
        name = name.replace("base_model.model.", "").replace(".base_layer", "")
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(memoryview(p.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy()))
    return h.hexdigest()


def processor_fingerprint(processor) -> str:
    """What of the processor shapes the reference passes: its settings (image processing, image tokens),
    the chat template and the tokenizer."""
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "is_fast", False):  # less the padding and truncation the last call left set
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        vocab = json.dumps({k: v for k, v in backend.items() if k not in ("padding", "truncation")}, sort_keys=True)
    else:
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    template = chat_template(processor)
    settings = processor.to_json_string() if hasattr(processor, "to_json_string") else ""
    return _sha(json.dumps([settings, template, vocab]).encode())


@dataclass
class ReferenceDistributions:
    """R̂ for a list of examples: the rows of example i are ``rows(i)`` (one per answer token)."""

    offsets: torch.Tensor  # (E+1,) int64: example i owns rows offsets[i]:offsets[i+1]
    vocab_size: int
    probs: torch.Tensor | None = None  # (N,V) float32, full storage
    indices: torch.Tensor | None = None  # (N,k) int32, top-k storage
    values: torch.Tensor | None = None  # (N,k) float32
    meta: dict | None = None

    def rows(self, example_indices: Sequence[int], device=None, tokens: int | None = None) -> torch.Tensor:
        """The rows of these examples, in order; ``tokens``, the number of answer tokens they are read against,
        is checked: a row short or over would pair every later token with another token's distribution."""
        parts = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in example_indices]
        held = sum(s.stop - s.start for s in parts)
        if tokens is not None and held != tokens:
            raise VikerError(f"the reference distributions of these examples hold {held} rows for their {tokens} "
                             "answer tokens: they were made for other answers; delete the reference cache")
        if self.probs is not None:
            out = torch.cat([self.probs[s] for s in parts])
        else:
            idx = torch.cat([self.indices[s] for s in parts])
            val = torch.cat([self.values[s] for s in parts])
            out = decompress_topk(idx, val, self.vocab_size)
        return out.to(device) if device is not None else out

    def nbytes(self) -> int:
        tensors = [t for t in (self.probs, self.indices, self.values, self.offsets) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def save(self, path: Path) -> None:
        tensors = {"offsets": self.offsets}
        if self.probs is not None:
            tensors["probs"] = self.probs.contiguous()
        else:
            tensors |= {"indices": self.indices.contiguous(), "values": self.values.contiguous()}
        # a temporary file of its own (two runs may write one entry at once), then renamed: atomic, so a killed run
        # never leaves half an entry behind; readable as the umask says, for a cache a team shares. A writer killed
        # outright (SIGKILL, out of memory) left its temporary file: this entry's, a day old, go now
        remove_stale(path.parent.glob(f".{path.stem}-*.tmp"))
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, tmp, metadata={"meta": json.dumps(self.meta or {}), "vocab_size": str(self.vocab_size)})
            as_umask_gives(tmp)  # a shared cache: readable by the others who share it
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def fault(self, key: str) -> str | None:
        """What makes a loaded entry no R̂ for ``key``, or None: another key's entry (copied over it), offsets that
        do not span its rows, or rows that are no probability distributions (not finite, not summing to 1)."""
        meta = self.meta or {}
        if meta.get("key", key) != key:
            return f"the entry of another key ({meta.get('key')})"
        rows = (self.probs if self.probs is not None else self.values)
        if rows is None or self.offsets.ndim != 1 or int(self.offsets[0]) != 0 or \
                int(self.offsets[-1]) != rows.shape[0] or bool((self.offsets.diff() < 0).any()):
            return "offsets that do not span its rows"
        total = rows.float().sum(-1)  # no copy of a float32 entry, which may be large
        if not bool(torch.isfinite(total).all()) or rows.numel() and float(rows.min()) < 0:
            return "probabilities that are not finite, or negative"
        if self.probs is not None and not bool(torch.allclose(total, torch.ones_like(total), atol=1e-3)) or \
                self.probs is None and bool((total > 1 + 1e-3).any()):
            return "rows that are no probability distributions"
        return None

    @classmethod
    def load(cls, path: Path) -> "ReferenceDistributions":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata()
            t = load_file(str(path))
            return cls(offsets=t["offsets"], vocab_size=int(metadata["vocab_size"]), probs=t.get("probs"),
                       indices=t.get("indices"), values=t.get("values"), meta=json.loads(metadata["meta"]))
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:  # written atomically: damaged since
            raise VikerError(f"{path}: an unreadable reference cache ({type(e).__name__}: {e})") from None


def choose_reference_images(example: Example, pool: Sequence[bytes], k: int, rng: random.Random,
                            owners: dict[bytes, str] | None = None) -> list[bytes]:
    """k distinct images from the pool, never the example's own image, nor (given ``owners``, whose face each
    pool image is) another image of the same person."""
    person = (owners or {}).get(example.image, example.profile_id)
    candidates = [img for img in pool if img != example.image and not (owners and owners.get(img) == person)]
    if len(candidates) < k:
        lower = "lower --k or " if candidates else ""  # none at all: no --k helps
        raise VikerError(f"the reference pool (--refs) has {len(candidates)} usable images (not this person's), "
                         f"fewer than k={k}; {lower}choose --refs with more images")
    return rng.sample(candidates, k)


def check_pool_size(examples: Sequence[Example], pool: Sequence[bytes], k: int,
                    owners: dict[bytes, str] | None = None) -> None:
    """:func:`choose_reference_images`' refusal of a pool too small for ``k``, for every example with an image,
    before any pass of the model (CAGUL trains its discriminator before it computes R̂)."""
    rng = random.Random(0)
    for example in examples:
        if example.image is not None:
            choose_reference_images(example, pool, k, rng, owners)


def compute_reference_distributions(
    answer_probs: Callable[[dict], torch.Tensor],
    collate: Callable[[Sequence[Example]], dict],
    examples: Sequence[Example],
    pool: Sequence[bytes] | None,
    k: int,
    seed: int = 0,
    topk: int | None = None,
    batch_size: int = 64,
    device=None,
    progress: bool = True,
    rank: int = 0,
    world: int = 1,
    owners: dict[bytes, str] | None = None,
) -> ReferenceDistributions:
    """R̂ for every example. ``pool=None`` is the 'w/o Vis' ablation: the example's own image (k=1);
    text-only examples always keep their own input. ``owners`` (:func:`pool_owners`) keeps a person's other
    images out of their references.

    ``answer_probs(batch)`` returns the frozen model's (N,V) distributions at the batch's answer
    positions. The k variants of an example share one batch, so their answer rows line up.

    With ``world`` processes, process ``rank`` computes every world-th batch and the parts are
    exchanged: each example is computed once, and every process returns the whole R̂. A process with
    fewer batches repeats one and drops the result, because a sharded model (FSDP) needs every process
    in every forward pass.
    """
    rng = random.Random(f"viker-refs-{seed}")
    # Visual guidance needs an image: a text-only question keeps its own input (one copy), so its
    # reference is the frozen model's distribution: the first step is plain GA (R̂ = Q), then the KL term
    # pulls Q back toward it (docs/design.md). The images are drawn for all examples in order on every
    # process, so the split does not change them.
    images = [[ex.image] if pool is None or ex.image is None else choose_reference_images(ex, pool, k, rng, owners)
              for ex in examples]
    per_batch = max(1, batch_size // max(1, k))
    if world > 1:  # smaller batches when there are fewer than one per process, so that each does its part
        per_batch = min(per_batch, max(1, math.ceil(len(examples) / world)))
    starts = list(range(0, len(examples), per_batch))
    mine = starts[rank::world]
    stored: dict[int, dict[str, torch.Tensor]] = {}
    for r in progress_bar(range(math.ceil(len(starts) / world)), desc="reference distributions",
                          disable=not progress):
        start = mine[r] if r < len(mine) else starts[0]
        stop = start + per_batch
        rows = _reference_rows(answer_probs, collate, examples[start:stop], images[start:stop], device)
        if r < len(mine):
            stored |= {start + i: _storage(block, topk) for i, block in enumerate(rows)}
    by_process = [len(stored)]
    if world > 1:
        from accelerate.utils import gather_object

        parts = gather_object([stored])
        stored = {i: block for part in parts for i, block in part.items()}
        by_process = [len(part) for part in parts]
    blocks = [stored[i] for i in range(len(examples))]
    lengths = [len(next(iter(b.values()))) for b in blocks]
    offsets = torch.tensor([0] + lengths).cumsum(0)
    meta = {"k": k if pool is not None else 1, "rows": sum(lengths), "processes": world,
            "examples_by_process": by_process}
    if not blocks or "probs" in blocks[0]:
        full = torch.cat([b["probs"] for b in blocks]) if blocks else torch.zeros(0, 0)
        vocab = full.shape[-1]
        return ReferenceDistributions(offsets, vocab, probs=full, meta=meta | {"vocab_size": vocab, "storage": "full"})
    kl = torch.cat([b["kl"] for b in blocks])  # KL(R̂ ‖ stored R̂): the price of top-k storage
    vocab = int(blocks[0]["vocab"])
    meta |= {"vocab_size": vocab, "storage": f"top-{topk}", "kl_mean": float(kl.mean()), "kl_max": float(kl.max())}
    return ReferenceDistributions(offsets, vocab, indices=torch.cat([b["indices"] for b in blocks]),
                                  values=torch.cat([b["values"] for b in blocks]), meta=meta)


def _reference_rows(answer_probs, collate, chunk: Sequence[Example], images: Sequence[list],
                    device) -> list[torch.Tensor]:
    """One batch: each example's (n,V) R̂ rows, the mean of its variants' answer distributions."""
    variants, copies = [], []
    for ex, imgs in zip(chunk, images):
        variants += [replace(ex, image=img) for img in imgs]
        copies.append(len(imgs))
    batch = collate(variants)
    if device is not None:
        batch = {key: v.to(device) for key, v in batch.items()}
    probs = answer_probs(batch)  # (Σ n, V) in variant order
    counts = answer_token_counts(batch["labels"]).tolist()
    rows, offset, first = [], 0, 0
    for n_copies in copies:
        n = counts[first]
        block = probs[offset : offset + n * n_copies].reshape(n_copies, n, -1)
        rows.append(block.mean(dim=0).float().cpu())
        offset += n * n_copies
        first += n_copies
    return rows


def _storage(rows: torch.Tensor, topk: int | None) -> dict[str, torch.Tensor]:
    """One example's rows as stored: whole, or their top-k entries with the KL that costs per row."""
    vocab = rows.shape[-1]
    if topk is None or topk >= vocab:
        return {"probs": rows}
    indices, values = compress_topk(rows, topk)
    kl = kl_to_reference(rows, torch.log(decompress_topk(indices, values, vocab)))
    return {"indices": indices, "values": values, "kl": kl, "vocab": torch.tensor(vocab)}


def cache_key(fingerprint: str, examples: Sequence[Example], pool: Sequence[bytes] | None, k: int, seed: int,
              topk: int | None, processor: str = "", owners: dict[bytes, str] | None = None) -> str:
    """Everything R̂ depends on: the frozen weights' and the processor's fingerprints, the examples, the
    reference images (and whose they are, when known), k, the seed and the storage."""
    payload = {
        "version": CACHE_VERSION,
        "model": fingerprint,
        "processor": processor,
        "examples": [[ex.question, ex.answer, _sha(ex.image) if ex.image else None] for ex in examples],
        "pool": None if pool is None else [_sha(img) for img in pool],
        "k": k,
        "seed": seed,
        "topk": topk,
    }
    if owners:  # only then: the keys of pools of strangers stay as they were
        payload["owners"] = sorted([_sha(img), person] for img, person in owners.items())
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]


def reference_distributions(reference, processor, examples: Sequence[Example], pool: Sequence[bytes] | None,
                            k: int, seed: int = 0, topk: int | None = None, cache_dir: Path | None = None,
                            progress: bool = True, owners: dict[bytes, str] | None = None,
                            ) -> tuple[ReferenceDistributions, Path | None]:
    """R̂ for ``examples`` through the frozen ``reference`` (a FrozenReference), loaded from
    ``cache_dir`` when a cache with the same key exists, else computed and stored there. ``owners``: whose
    face each pool image is (:func:`pool_owners`)."""
    from accelerate import PartialState

    from viker.collate import Collator

    state = PartialState()
    key = cache_key(reference.fingerprint(), examples, pool, k, seed, topk, processor_fingerprint(processor), owners)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        if len(set(gather_object([key]))) > 1:
            raise VikerError("the processes disagree on the reference distributions' cache key: each loaded "
                             "different weights or data")
    collate = Collator(processor, padding_side="left")  # answers last: only their positions are scored
    device = next(reference.network_for_fingerprint().parameters()).device

    def compute() -> ReferenceDistributions:
        return compute_reference_distributions(reference.answer_probs, collate, examples, pool, k, seed, topk,
                                               device=device, progress=progress and state.is_main_process,
                                               rank=state.process_index, world=state.num_processes, owners=owners)

    return cached_reference_distributions(cache_dir, key, compute)


def cached_reference_distributions(cache_dir: Path | None, key: str, compute: Callable[[], ReferenceDistributions]):
    """Load R̂ from ``cache_dir`` when a cache with this key exists, else compute and store it.
    ``meta["from_cache"]`` says which happened.

    Several processes: each reads the entry, and it is used only where every one found it whole (nodes may keep
    caches of their own), so either all load it or all compute their part of it; each node's first process writes
    it. It is never computed once per process."""
    from accelerate import PartialState

    state = PartialState()
    if cache_dir is None:
        dists = compute()
        dists.meta = (dists.meta or {}) | {"from_cache": False}
        return dists, None
    path = cache_dir / f"refdist-{key}.safetensors"
    fault = "none here"
    if path.is_file():
        try:
            dists = ReferenceDistributions.load(path)
            fault = dists.fault(key)
        except VikerError as e:
            fault = str(e).removeprefix(f"{path}: ")
        if fault is not None and state.is_local_main_process:  # damaged or replaced since it was written: unused
            print(f"warning: {path}: {fault}; computed again", file=sys.stderr)
    usable = fault is None
    if state.num_processes > 1:  # all load it, or all compute it (nodes may have caches of their own)
        from accelerate.utils import gather_object

        usable = all(gather_object([usable]))
    if usable:
        dists.meta = (dists.meta or {}) | {"from_cache": True}
        return dists, path
    dists = compute()
    dists.meta = (dists.meta or {}) | {"key": key}
    if state.is_local_main_process:  # one write per node: a node may keep a cache of its own
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            dists.save(path)
        except (OSError, SafetensorError) as e:  # a full or read-only cache costs the entry, not the run
            print(f"warning: the reference cache could not be written ({cache_dir}: {e}); this run goes on with "
                  "the R̂ it computed", file=sys.stderr)
            path = None
    dists.meta |= {"from_cache": False}
    return dists, path
