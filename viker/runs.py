"""Run folders: every run writes its fully resolved configuration and its metrics beside its outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from viker.errors import VikerError


def hub_shaped(text: str | Path) -> bool:
    """Whether ``text`` has the form of a hub id, ``org/name`` (not ``./x``, ``/x`` or ``~/x``)."""
    text = str(text)
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def is_hub_id(text: str | Path) -> bool:
    """``org/name`` naming no local folder: a repository on the Hugging Face hub. When ``org`` is a local
    folder the text is taken for a mistyped path (``runs/vanila``), not looked up on the hub."""
    path = Path(text).expanduser()
    return hub_shaped(text) and not path.exists() and not path.parent.is_dir()


def check_hub_reachable(path: str, repo_type: str = "model", timeout: float = 10.0) -> None:
    """For a hub id (a model, or ``repo_type="dataset"`` a benchmark) that is neither a local folder nor in the
    hub's cache (a dataset: nor in ``datasets``' own), refuse at once when the hub cannot be reached (a machine
    offline, a mistyped path read as an id), rather than after minutes of retries. With ``HF_HUB_OFFLINE`` set,
    or the repository in a cache, loading goes on as the hub library decides."""
    from huggingface_hub import constants, get_session, try_to_load_from_cache

    if Path(path).expanduser().exists() or not is_hub_id(path) or constants.HF_HUB_OFFLINE:
        return
    try:
        if repo_type == "model" and isinstance(try_to_load_from_cache(path, "config.json"), str):
            return
    except ValueError:  # no valid hub id ("org/bad..name"): loading says so, as it did
        return
    if repo_type == "dataset":
        org, name = path.split("/")
        caches = [Path(constants.HF_HUB_CACHE, f"datasets--{org}--{name}"),
                  Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME, "datasets")), f"{org}___{name}")]
        if any(folder.exists() for folder in caches):
            return
    try:  # through the hub library's own client: its proxies and certificates
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # no answer at all, whatever the client (an error status is an answer, and no raise)
        reason = str(e) or type(e).__name__
        local = "the model's local folder" if repo_type == "model" else "the folder of a downloaded snapshot"
        raise VikerError(f"{path}: no such local folder, and the hub ({constants.ENDPOINT}) cannot be reached to "
                         f"download it ({reason}); give {local}") from None


def as_recorded(path: str | Path, local: bool = False) -> str:
    """A model or data path as a config records it: a local one (``local``: one that may not exist yet, as a
    run's output folder) absolute, so that the record names it from any working folder; a hub id as it is."""
    folder = Path(path).expanduser()
    return str(folder.resolve()) if local or folder.exists() else str(path)


def paths_recorded(settings: dict, keys: Sequence[str] = ("model", "data", "out")) -> dict:
    """A run's settings with their paths (``keys``; ``out`` is always local) as its config records them
    (:func:`as_recorded`), so that ``--resume`` compares folders rather than how they were typed."""
    return settings | {k: as_recorded(settings[k], local=k == "out") for k in keys if settings.get(k)}


def versions() -> dict[str, str]:
    from importlib import metadata

    import accelerate
    import peft
    import torch
    import transformers

    import viker

    return {
        "viker": viker.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        # what else shapes the figures: the tiny model's tokenizer, images as decoded, the benchmark's files as read
        **{name: metadata.version(name) for name in ("tokenizers", "pillow", "numpy", "pyarrow")},
    }


def machine() -> dict[str, str]:
    """The processor a run's float arithmetic depended on: its model name and the kernels PyTorch picks for
    it (AVX2, AVX512, ...), and on a GPU machine the GPU and CUDA version. The same seed gives the same
    numbers only on the same processor model."""
    import torch

    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    gpu = {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda} if torch.cuda.is_available() else {}
    return {"cpu": name, "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            "threads": str(torch.get_num_threads()), **gpu}


def machine_words(m: dict[str, str]) -> str:
    """``machine()``'s record in a sentence, the GPU named where there was one."""
    threads = f"{m['threads']} PyTorch thread" + "s" * (str(m["threads"]) != "1")
    words = f"{m['cpu']} ({m['cpu_kernels']} kernels, {threads})"
    return words + (f"; GPU {m['gpu']} (CUDA {m['cuda']})" if m.get("gpu") else "")


def _matching(root: Path, pattern: str) -> list[Path]:
    """The files under ``root`` that ``pattern`` names, hidden ones aside (the ``._NAME`` a copy through a FAT
    drive leaves, which the data loader skips too, and what a killed command left staged in a hidden folder);
    ``**/NAME`` goes into linked folders too (as the data loader does), each real folder once."""
    if not pattern.startswith("**/"):
        return sorted(p for p in root.glob(pattern) if not p.name.startswith("."))
    import fnmatch

    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [name for name in subfolders if name[:1] != "."]  # a command's staging (.viker-partial-*)
        found += [Path(folder, name) for name in files if fnmatch.fnmatch(name, pattern[3:]) and name[:1] != "."]
    return sorted(found)


def check_not_dangling(path: Path) -> None:
    """Refuse a link to a file that is not there (a hub cache's snapshot copied without its blobs) in words that
    say so, not as a file missing or unreadable."""
    if path.is_symlink() and not path.exists():
        raise VikerError(f"{path}: a link to {os.readlink(path)}, which is not there (a hub snapshot copied or kept "
                         "without its blobs?): copy the snapshot with its files (cp -L), or download it again")


def file_hashes(root: str | Path, pattern: str = "**/*.parquet") -> dict[str, str]:
    """sha256 of every data file a run read, so a result can be traced to its exact inputs."""
    root = Path(root)
    hashes = {}
    for path in _matching(root, pattern):
        check_not_dangling(path)
        stat = path.stat()
        # a file read again unchanged is hashed once; a file written since has another ctime (which no copy
        # that keeps times sets back) or inode
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if key not in _DIGESTS:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _DIGESTS[key] = h.hexdigest()
        hashes[str(path.relative_to(root))] = _DIGESTS[key]
    return hashes


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # file_hashes' digests in this process


def differing(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """The files (of ``file_hashes``-like records) whose hash is not the one recorded, or that came or went."""
    return sorted(name for name in recorded.keys() | now.keys() if recorded.get(name) != now.get(name))


def under(out: str | Path, *parts: str) -> Path:
    """``out/parts...``, refusing any path that would land outside ``out`` (a name with '..' or a leading
    '/' in a method or run name must not write elsewhere)."""
    root = Path(out).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise VikerError(f"{'/'.join(parts)}: would be written outside {out}")
    return path


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and math.isnan(obj):
        return None  # nothing measured (an empty split): JSON's null, since NaN is not JSON
    if type(obj).__module__.split(".")[0] in ("torch", "numpy") and hasattr(obj, "item"):
        try:  # a one-element tensor or a NumPy number a method recorded: its number
            return to_jsonable(obj.item())
        except (ValueError, RuntimeError):  # more than one element: no number (write_json says so)
            pass
    return obj


def flat(settings: Any, prefix: str = "") -> dict:
    """Recorded settings as one level, each by its dotted path (``train.lr``)."""
    if isinstance(settings, dict):
        return {k: v for key, item in settings.items() for k, v in flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): settings}


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False)
    except TypeError as e:  # a setting or record of a kind JSON has no form for (a custom method's own)
        raise VikerError(f"{path}: cannot be written: {e}; record numbers, text, lists or dicts") from None
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def as_umask_gives(*paths: str | Path) -> None:
    """Give files the permissions the user's umask gives a new file (rw-r--r-- under 022): safetensors writes its
    files readable by their owner alone, so that a model, checkpoint or cache saved into a team's folder would be
    read by nobody else."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, 0o666 & ~umask)


@contextmanager
def written_whole(folder: str | Path) -> Iterator[Path]:
    """Write a folder all at once: the files go to ``<folder>.partial``, which takes ``folder``'s place once
    complete, so that a write stopped midway (Ctrl-C, a full disk) never leaves a ``folder`` that looks whole.
    Its files are readable as the umask says (:func:`as_umask_gives`)."""
    folder = Path(folder)
    partial = folder.with_name(f"{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a write stopped before
    partial.mkdir(parents=True)
    yield partial
    as_umask_gives(*(f for f in partial.rglob("*") if f.is_file() and not f.is_symlink()))
    if folder.exists():  # a snapshot written again by a resumed run
        shutil.rmtree(folder)
    partial.replace(folder)


STALE_SECONDS = 86400  # a temporary file or folder this old is a killed writer's


def remove_stale(paths: Iterable[Path]) -> None:
    """Remove the temporary files or folders among ``paths`` a day old (``STALE_SECONDS``): a writer killed outright
    (SIGKILL, out of memory, a lost machine) ran no clean-up; younger ones may be another writer's at work."""
    import time

    for stale in paths:
        try:
            if time.time() - stale.stat().st_mtime <= STALE_SECONDS:
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except OSError:  # another's clean-up came first
            pass


@contextmanager
def written_together(folder: str | Path) -> Iterator[Path]:
    """Files that belong together (a benchmark's configs, an evaluation's settings, figures and answers) written
    all or none: they go to a hidden ``folder/.viker-partial-*/`` of their own (two commands writing into one
    folder at once keep theirs apart) and take their places in ``folder``, replacing those of the same names, once
    every one is written. A write stopped midway (Ctrl-C, a full disk) leaves ``folder`` as it was,
    never new files beside old ones, nor half a benchmark that reads as a whole one; a Ctrl-C while they take
    their places is heard once they all have."""
    import tempfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder.glob(".viker-partial-*"))  # a killed writer's: none stays for good
    try:
        stage = Path(tempfile.mkdtemp(prefix=".viker-partial-", dir=folder))
    except OSError as e:  # a folder that takes no file (/proc, a read-only mount root sees as writable): named itself
        raise VikerError(f"{folder}: cannot be written to ({e.strerror or e})") from None
    try:
        yield stage
        with _interrupt_deferred():
            # a kill no handler hears (SIGKILL) between two moves leaves no folder that reads as the new whole: a
            # training run's own figures kept first, the settings that say what the folder holds last
            for entry in sorted(stage.iterdir(), key=lambda e: (e.name != TRAINING_METRICS,
                                                                e.name.endswith("config.json"), e.name)):
                target = folder / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                entry.replace(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def held_alone(target: str | Path | None, flag: str = "--out") -> Iterator[None]:
    """Hold ``target`` (a command's --out) for this command alone while the block runs: a second viker command
    writing it meanwhile is refused, since two would leave a folder of both (one's config beside the other's
    model, an evaluation replaced by a narrower one). The lock is a hidden ``.NAME.viker-lock`` beside it,
    removed at the end; only the main process of a launch takes it (the others write nothing of their own).
    Where no lock can be taken (no ``fcntl``, a file system without locks, a folder above not there yet), the block
    runs as it is."""
    fd, lock = _lock(target, flag)
    if fd is None:
        yield
        return
    try:
        yield
    finally:
        _remove(lock)  # while still held: no other command holds a file no longer at the path
        os.close(fd)


# where a launcher says which process this is (torchrun and accelerate; MPI's launchers): the main one is rank 0
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _lock(target: str | Path | None, flag: str) -> tuple[int | None, Path | None]:
    """:func:`held_alone`'s lock, taken: its open file and path, or ``(None, None)`` where none can be taken (then
    no file it opened is left open, and none it made is left behind)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None, None
    if not target or any((os.environ.get(name) or "0") != "0" for name in RANK_VARIABLES):
        return None, None
    try:
        whole = Path(target).expanduser().resolve()
    except (OSError, RuntimeError):  # a link loop, say: the command says what it makes of it
        return None, None
    lock = whole.parent / f".{whole.name}.viker-lock"
    for _ in range(100):  # again only where the file was removed between its opening and its locking
        opened = _open_lock(lock)
        if opened is None:
            return None, None
        fd, made = opened
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino  # not a file its last holder removed meanwhile
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise VikerError(f"{flag} {target}: another viker command (pid {holder}) is writing it now; wait until it "
                             f"ends, or give another {flag}") from None
        except FileNotFoundError:
            same = False
        except OSError:  # no locks on this file system (Lustre without -o flock, some NFS and FUSE mounts)
            os.close(fd)
            if made:  # a file another command made may be its lock: never removed here
                _remove(lock)
            return None, None
        if same:
            try:  # who holds it, for the refusal of another (a full disk leaves it unsaid)
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            except OSError:
                pass
            return fd, lock
        os.close(fd)
    return None, None


def _open_lock(lock: Path) -> tuple[int, bool] | None:
    """The lock file opened, and whether this call made it; None where it cannot be (a folder above not there yet,
    or not ours to write: the command says what it makes of it)."""
    for _ in range(100):
        try:
            return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        except OSError:
            return None
        try:
            return os.open(lock, os.O_RDWR), False
        except FileNotFoundError:  # removed by its holder between the two: make it again
            continue
        except OSError:
            return None
    return None


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit, `scancel`, `docker stop`), stopping a command as Ctrl-C does: the same
    clean-up runs, and the same line says what the run left and how to go on."""


def _terminate(number, frame):
    raise Terminated


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` (where nothing else handles it, on the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT), and a SIGTERM that :func:`terminate_as_interrupt` hears, until the block has run, then
    raise it; off the main thread, where no handler can be set, the block runs as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    heard = []
    held = [signal.SIGINT] + [signal.SIGTERM] * (signal.getsignal(signal.SIGTERM) is _terminate)
    before = {number: signal.signal(number, lambda number, frame: heard.append(number)) for number in held}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, signal.default_int_handler if handler is None else handler)
    if heard:
        raise Terminated if signal.SIGTERM in heard else KeyboardInterrupt


# what a resumed run's config keeps of each part of the run before it: the command, where and with what it ran
PART_KEYS = ("argv", "runtime", "versions", "machine")


def write_config(out: str | Path, command: str, settings: dict, data_dir: str | Path | None = None,
                 name: str = "config.json", resumed: dict | None = None) -> Path:
    """A run's config: the command line, ``settings``, the versions and machine it runs with, and the hashes of
    ``data_dir``'s files. ``resumed``: the config a resumed run started with, whose parts before this one are
    kept under ``earlier_parts`` (oldest first), since a run may go on on another machine or with other versions."""
    config = {
        "command": command,
        "argv": sys.argv,
        **settings,
        "versions": versions(),
        "machine": machine(),
    }
    if resumed:
        part = {k: resumed[k] for k in PART_KEYS if k in resumed}
        config["earlier_parts"] = [*resumed.get("earlier_parts", []), part]
    if data_dir is not None and Path(data_dir).is_dir():
        config["data_files"] = file_hashes(data_dir)
    return write_json(Path(out) / name, config)


EVAL_CONFIG = "eval_config.json"  # an evaluation's settings, beside the config of the run it evaluated


def scored_run(model: str) -> dict | None:
    """The config of the run whose model an evaluation scores (None: a model that is no run of ours), read when
    the model is loaded, for :func:`write_eval_config` to hold the run to when the figures are written."""
    return next(runs_behind(str(model)), None)


def scored_weights(model: str) -> dict:
    """``{"model_files": hashes}`` of the weight files an evaluation reads (:func:`viker.model.weight_hashes`), for
    a model in local folders: what tells the model it scored from one made again at the same path since (a report
    holds the unlearning runs that start from that path to it); empty for a hub id."""
    from viker.model import weight_hashes

    hashes = weight_hashes(model) if Path(str(model)).expanduser().exists() else {}
    return {"model_files": hashes} if hashes else {}


def write_eval_config(out: str | Path, settings: dict, data_dir: str | Path | None = None,
                      into: str | Path | None = None, loaded_run: dict | None = None) -> Path:
    """An evaluation's settings: ``config.json`` in a folder of its own (or of an earlier evaluation),
    else ``eval_config.json`` beside the config of the run it evaluates, which it must not replace. ``into``:
    the folder the evaluation's files are staged in before they take their places in ``out``
    (:func:`written_together`). ``loaded_run``: the model's run as it was when the model was loaded
    (:func:`scored_run`); one made again since (``--overwrite``, while this evaluation ran) is refused, since the
    figures are the earlier model's and the config would name the new one."""
    config = Path(out) / "config.json"
    own = not config.is_file() or json.loads(config.read_text(encoding="utf-8")).get("command") == "eval"
    run_now = scored_run(settings["model"]) if settings.get("model") else None
    if loaded_run is not None and run_now != loaded_run:
        raise VikerError(f"{settings['model']}: its run was made again while this evaluation scored it (its "
                         "config.json is not the one it had when the model was loaded): these figures are the earlier "
                         "model's; evaluate it again")
    if own and settings.get("model"):
        # the config of the run whose model it scores, as that run was: one made again in its folder, or moved,
        # is not what a report names this evaluation's row by (null: a model that is no run of ours)
        settings = {**settings, "model_run": run_now}
    metrics = Path(out) / "metrics.json"
    into = Path(into or out)
    kept = (Path(out) / EVAL_CONFIG).is_file() or (Path(out) / TRAINING_METRICS).is_file()
    if not own and not kept and metrics.is_file():
        # the run's own figures (a finetune's recall), kept beside the evaluation's metrics.json (once: an evaluation
        # killed as its files took their places may have left its metrics.json, and no settings, beside them)
        shutil.copy2(metrics, into / TRAINING_METRICS)
    return write_config(into, "eval", settings, data_dir, name="config.json" if own else EVAL_CONFIG)


# where a training run's own metrics.json (``viker finetune``'s recall and final loss) is kept once the run is
# evaluated into its own folder, whose metrics.json is then the evaluation's
TRAINING_METRICS = "train_metrics.json"


TRAINING_COMMANDS = ("finetune", "unlearn")  # the commands whose run folder holds a model (model/ or cagul/)
CHECKPOINT = "checkpoint"  # where a run keeps what --resume continues from (viker.train.save_checkpoint)
CHECKPOINT_WEIGHTS = "trainable.safetensors"  # in a checkpoint: the trained weights, and those kept beside them


def checkpoints(run: str | Path) -> list[Path]:
    """The complete checkpoints in a run folder, newest first: the last one, and the one before it while
    the last is being replaced."""
    found = (Path(run) / CHECKPOINT, Path(run) / f"{CHECKPOINT}.old")
    return [path for path in found if (path / "state.pt").is_file()]


def check_writable(flag: str, value: str | Path, folder: str | Path | None = None, read_only: bool = False) -> None:
    """Refuse ``flag value`` before any work when ``folder`` (default: ``value``) could not be written into:
    a file stands where it or a folder above it should be, or the nearest existing one is read-only (unless
    ``read_only`` may do: a cache that may be read alone). Nothing is created."""
    folder = Path(value if folder is None else folder).expanduser().absolute()
    place = next(p for p in (folder, *folder.parents) if p.exists())
    if not place.is_dir():
        raise VikerError(f"{flag} {value}: {place} is a file, not a folder")
    if not read_only and not os.access(place, os.W_OK | os.X_OK):
        raise VikerError(f"{flag} {value}: {place} cannot be written to")


def out_folder(out: str | Path) -> Path:
    """``--out`` as a folder to write into, refused when it names a file or cannot be written, or is empty (which
    would name the working folder)."""
    if not str(out).strip():
        raise VikerError("--out is empty: give the folder to write into")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VikerError(f"--out {out}: a file, not a folder")
    if out.is_symlink() and not out.exists():
        raise VikerError(f"--out {out}: a link to {os.readlink(out)}, which does not exist")
    check_writable("--out", out)
    return out


def visible_entries(folder: Path) -> list[str]:
    """The names in ``folder`` a user put or a command wrote there, hidden ones aside; none for no folder."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def saved_model_of(run: Path) -> Path | None:
    """The model a run folder of ours holds under ``model/`` (a whole model, or a LoRA adapter), or None."""
    held = run / "model"
    return held if any((held / name).is_file() for name in ("config.json", "adapter_config.json")) else None


def model_folder(path: str | Path) -> Path:
    """A model as one folder, absolute: a run folder of ours by the model/ it holds (the two are one model), any
    other folder as it is."""
    folder = Path(path).expanduser()
    return (saved_model_of(folder) or folder).resolve()


def model_named(model: str | Path) -> str:
    """A model as records compare it (truth-ratio files, evaluations, the report's starting models): a folder by
    :func:`model_folder`, so that a run folder and its model/ agree; a model no longer here (or a hub id), as it
    was recorded."""
    return str(model_folder(model)) if Path(model).expanduser().is_dir() else str(model)


def runs_behind(model: str) -> Iterator[dict]:
    """The configs of the training runs of ours that ``model`` comes from, nearest first: the run whose model it
    is (the folder given, or the run folder holding it as model/), then the run that one started from, and so on
    back to a `viker finetune` run, while each is still here."""
    return (run for _, run in run_folders_behind(model))


def run_folders_behind(model: str) -> Iterator[tuple[Path, dict]]:
    """:func:`runs_behind`, each config with the folder it was read from (where the run is now, wherever it
    was written)."""
    seen = set()
    while model not in seen and Path(model).expanduser().exists():
        seen.add(model)
        folder = Path(model).expanduser()
        runs = [(f, read_configs(f)[0]) for f in ((folder, folder.parent) if folder.name == "model" else (folder,))]
        found = next(((f, c) for f, c in runs if c.get("command") in TRAINING_COMMANDS), None)
        if found is None:
            return
        yield found
        run = found[1]
        model = str(run.get("unlearn", {}).get("model") or "") if run["command"] == "unlearn" else ""
        if not model:
            return


def scored_split(forget: str | None, benchmark: str) -> str | None:
    """The forget split whose items are scored: on CLEAR, ``forget10+tofu`` (its text questions, trained on too)
    scores forget10's, as its evaluation reads the image sets alone."""
    return forget.removesuffix("+tofu") if forget and benchmark == "clear" else forget


def recalls_none(metrics: dict) -> bool:
    """Whether a `viker finetune` run's figures say it recalls none of the fictitious people's answers word for
    word: a model with nothing to unlearn."""
    return metrics.get("full_image_exact") == 0 and metrics.get("full_name_exact") == 0


def holds_finished_model(run: Path) -> bool:
    """Whether a training run's folder holds its finished model (model/, or CAGUL's cagul/), which a run writes
    whole or not at all (:func:`written_whole`)."""
    return any((run / name).is_dir() for name in ("model", "cagul"))


def split_made_for(run: dict, benchmark: str | None = None) -> tuple[str, str] | None:
    """The forget split a training run's model was made for, and how: ``("forget_5", "unlearned on")``, or for a
    CLEAR retain model ``("forget05", "finetuned without")``; None for a vanilla model, or a run on a benchmark
    other than ``benchmark``; as :func:`scored_split` names it."""
    if run.get("command") == "unlearn":
        settings, how = run.get("unlearn", {}), "unlearned on"
        bench, split = settings.get("benchmark", "mllmu"), settings.get("forget")
    elif run.get("command") == "finetune" and run.get("finetune", {}).get("without"):
        bench, split, how = "clear", run["finetune"]["without"], "finetuned without"
    else:
        return None
    if not split or (benchmark is not None and bench != benchmark):
        return None
    return scored_split(split, bench), how


def model_split(model: str, benchmark: str) -> tuple[str, str] | None:
    """:func:`split_made_for` of the run ``model`` comes from (None for a model that is no run of ours)."""
    run = next(runs_behind(model), None)
    return split_made_for(run, benchmark) if run else None


def other_split(model: str, forget: str, benchmark: str) -> str | None:
    """A warning when ``model`` is evaluated on another forget split than the one it was made for: its forget
    and retain sets then mix people it was asked to forget with people it was not."""
    made = model_split(model, benchmark)
    if made is None or made[0] == scored_split(forget, benchmark):
        return None
    return (f"{model} was {made[1]} {made[0]}, and is evaluated on {forget}: the two splits' people differ, so its "
            f"forget and retain figures mix people it was asked to forget with people it was not (`viker report` "
            f"puts it in no table of {forget}); --forget {made[0]} scores what it was made for")


def nothing_recalled_warning(model: str) -> str | None:
    """A warning when the `viker finetune` run that ``model`` comes from recalls none of the fictitious people's
    answers word for word (its own figures, kept as metrics.json or, once evaluated there, train_metrics.json):
    unlearning it has nothing to remove, and a table of such runs compares nothing."""
    chain = list(run_folders_behind(model))
    folder = next((f for f, run in chain if run["command"] == "finetune"), None)
    found = [folder / name for name in (TRAINING_METRICS, "metrics.json") if folder and (folder / name).is_file()]
    try:
        recall = read_json(found[0]) if found else {}
    except VikerError:  # figures cut short or edited by hand: no warning, rather than no run
        return None
    if isinstance(recall, dict) and recalls_none(recall):
        which = "the model this run starts from" if folder == chain[0][0] else \
            f"the finetune behind {chain[0][0].resolve()} (the model this run starts from)"
        return (f"{folder}, {which}, recalls none of the fictitious people's answers word "
                "for word (full_image_exact and full_name_exact 0 in its finetune's figures): unlearning it has "
                "nothing to remove; finetune it longer")
    return None


BENCHMARK_NAMES = {"mllmu": "MLLMU-Bench", "clear": "CLEAR"}


def other_benchmark(model: str, data: str | Path, benchmark: str = "mllmu") -> str | None:
    """A warning when the `viker finetune` run that ``model`` comes from was on the other benchmark than
    ``benchmark``, or read other benchmark files than ``data`` holds (another seed's embedded benchmark, another
    release): its people are then not this benchmark's, and neither unlearning nor scoring them means anything.
    Files only one side has do not count; the same benchmark written again by another version of pyarrow differs
    too, which the warning says."""
    vanilla = next((run for run in runs_behind(model) if run["command"] == "finetune"), {})
    learned_on = vanilla.get("finetune", {}).get("benchmark", "mllmu")
    if vanilla and learned_on != benchmark:
        return (f"{model} was finetuned on {BENCHMARK_NAMES.get(learned_on, learned_on)} "
                f"({vanilla['finetune'].get('data', 'its data')}), and is read here as a model of "
                f"{BENCHMARK_NAMES.get(benchmark, benchmark)}: its people are not those the model learned, and its "
                "figures here mean nothing")
    if "data_files" not in vanilla or not Path(data).expanduser().is_dir():
        return None
    recorded, now = vanilla["data_files"], file_hashes(Path(data).expanduser())
    changed = sorted(name for name in recorded.keys() & now.keys() if recorded[name] != now[name])
    if not changed and (recorded.keys() & now.keys() or not recorded or not now):
        return None
    theirs, ours = set(recorded.values()), set(now.values())
    if not recorded.keys() & now.keys() and theirs and ours and (theirs <= ours or ours <= theirs):
        return None  # the same files in another layout (the hub's parquet conversion, data/CONFIG-...)
    finetuned_on = vanilla.get("finetune", {}).get("data", "its data")
    which = f"{len(changed)} of its files differ from those, {changed[0]} first" if changed else \
        "it has none of those files"
    return (f"{model} was finetuned on {finetuned_on}, and {data} is not that benchmark byte for byte ({which}): if "
            "it is another one (another seed's embedded benchmark, another release), its people are not those the "
            "model learned, and its figures here mean nothing")


def check_eval_out(model_path: str, out: str | Path, data: str | Path | None = None) -> None:
    """An evaluation writes into a new or empty folder, an earlier evaluation of the same model, the folder of
    the run whose model it scores, or the model's own folder; never into another training run's or another
    model's evaluation (a report would show this model's scores as theirs), nor into the benchmark or any
    other folder of files it did not write."""
    out = out_folder(out)
    if not visible_entries(out):
        return
    here = out.resolve()
    if data is not None and here == Path(data).expanduser().resolve():
        raise VikerError(f"--out {out}: the benchmark folder given as --data; evaluate into a folder of its own")
    given, model = Path(model_path).expanduser().resolve(), model_folder(model_path)
    config, evaluation = read_configs(out)
    command = config.get("command")
    if command in TRAINING_COMMANDS:
        if model not in {here, here / "model", here / "cagul"}:
            raise VikerError(f"--out {out}: the folder of a `viker {command}` run of another model; evaluate "
                             f"{model_path} into a folder of its own, or this run with --model {out}")
    elif command == "eval":
        scored = Path(str(evaluation.get("model", ""))).expanduser()
        if model_folder(scored) != model:  # a hub id resolves alike on both sides
            raise VikerError(f"--out {out}: the evaluation of another model ({scored}); evaluate {model_path} "
                             "into a folder of its own, or remove that one first")
    elif here not in (model, given):
        raise VikerError(f"--out {out}: a folder of files that no viker evaluation wrote; evaluate into a new or "
                         "empty folder")


def read_json(path: str | Path) -> Any:
    """A JSON file of a run, refused with its name when it is not JSON (hand-edited, or cut short)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VikerError(f"{path}: not JSON ({e})") from None


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file of a run (an evaluation's generations.jsonl), one per line; a line that is
    not JSON (hand-edited, or cut short) is refused with its file and number."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise VikerError(f"{path}, line {number}: not JSON ({e})") from None
    return records


def read_configs(run: str | Path) -> tuple[dict, dict | None]:
    """A run folder's ``config.json`` (empty when it has none, or when it is a model's config rather than a
    run's) and the settings of its evaluation (None when it was not evaluated, or was evaluated before
    evaluations recorded them beside a run)."""
    run = Path(run)
    config = read_json(run / "config.json") if (run / "config.json").is_file() else {}
    config = config if isinstance(config, dict) and "command" in config else {}
    if (run / EVAL_CONFIG).is_file():
        return config, read_json(run / EVAL_CONFIG)
    return config, config if config.get("command") == "eval" else None
