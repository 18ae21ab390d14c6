"""One loader for MLLMU-Bench-layout data, wherever it came from.

Accepted layouts under a root folder (the hub snapshot's and the generator's):
``CONFIG/*.parquet``, ``data/CONFIG-*.parquet``, ``data/CONFIG/*.parquet``, ``CONFIG.parquet``, and the
hub's parquet conversion (its ``refs/convert/parquet`` branch), ``CONFIG/train/*.parquet``.
A hub id (``org/name`` that is not a folder) is read through the ``datasets`` library instead, when
it is installed and the hub can be reached. Every problem with the files is raised as a
:class:`VikerError` naming the file (and row) at fault. CLEAR's loader (:mod:`viker.data.clear`)
reuses these helpers with its own schemas.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from viker.data.schema import (
    CONFIGS,
    IMAGE,
    IMAGE_TEXTUAL,
    LETTERS,
    PRETRAIN_CONFIG,
    PURE_TEXT,
    QA,
    RETAIN_OF,
    FinetuneRecord,
    MCQuestion,
    Profile,
    schema_for,
)
from viker.errors import VikerError
from viker.runs import check_hub_reachable, check_not_dangling, is_hub_id


def spaced(text: str) -> str:
    """``text`` with its runs of spaces as one and its ends trimmed: an option or answer as the benchmark means it
    (the file's stray spaces would be scored as tokens of it, and keep it from being found where it is named)."""
    return " ".join(text.split())


def has_config(root: str | Path, config: str, known: tuple[str, ...] = CONFIGS) -> bool:
    """Whether the benchmark holds ``config``: a hub id holds every config of its release (``known``: MLLMU-Bench's,
    not the embedded benchmark's own ``pretrain_Data``), so that it is read as its downloaded folder would be."""
    if is_hub_id(root):
        return config in known
    try:
        return bool(config_files(root, config, known))
    except VikerError:
        return False


def config_files(root: str | Path, config: str, known: tuple[str, ...] = CONFIGS) -> list[Path]:
    """The parquet files of ``config`` under ``root``; ``known`` are the configs listed when it is missing."""
    root = Path(root)
    if root.is_file():
        raise VikerError(f"{root}: a file; pass the benchmark's folder, the one holding {config}/")
    if not root.is_dir():
        raise VikerError(f"{root}: no such benchmark folder")
    for pattern in _patterns(config):
        files = _visible(root.glob(pattern))
        if files:
            return files
    if _visible(root.glob(f"{config}/**/*.arrow")):  # datasets' save_to_disk writes Arrow files, not parquet
        raise VikerError(f"{root / config}: a `datasets` save_to_disk folder (Arrow files); viker reads a config's "
                         f"parquet files: write them with datasets.load_from_disk(FOLDER) (its ['train'] where it "
                         f"holds splits) and .to_parquet('{root / config / 'train-00000-of-00001.parquet'}')")
    present = _present(root, known)
    if not present:  # the other benchmark's folder, given for this one?
        from viker.data import clear

        other, name, flag = (clear.CONFIGS, "a CLEAR", "clear") if known == CONFIGS else (CONFIGS, "an MLLMU-Bench",
                                                                                           "mllmu")
        if theirs := _present(root, other):
            raise VikerError(f"{root}: {name} folder (configs {', '.join(theirs)}), not the benchmark asked "
                             f"for; read it with --benchmark {flag}")
        if any((root / f).is_file() for f in ("config.json", "adapter_config.json")):  # --data given a model's
            raise VikerError(f"{root}: a model or run folder, not a benchmark; --data takes the benchmark's folder "
                             f"(the one holding {config}/)")
        whole = root.resolve()  # `--data .` inside forget_10/, `--data Full_Set` beside it
        if above := next((f for f in (whole.parent, whole.parent.parent) if _present(f, known)), None):
            raise VikerError(f"{root}: a folder inside a benchmark, not one; --data takes the benchmark's folder, the "
                             f"one holding {config}/ ({above}?)")
    raise VikerError(
        f"{root}: config '{config}' not found (looked for {', '.join(_patterns(config))}); "
        f"configs present: {', '.join(present) or 'none'}"
    )


def _present(root: Path, configs: tuple[str, ...]) -> list[str]:
    return [c for c in configs if any(_visible(root.glob(pattern)) for pattern in _patterns(c))]


def _visible(paths) -> list[Path]:
    """``paths`` sorted, without hidden files: the ``._train-….parquet`` a copy through a FAT or exFAT drive leaves
    beside each file (macOS's AppleDouble metadata) is no shard of the benchmark."""
    return sorted(p for p in paths if not p.name.startswith("."))


def _patterns(config: str) -> list[str]:
    """Where a config's parquet files may lie under a benchmark's root (the module docstring's layouts)."""
    return [f"{config}/*.parquet", f"data/{config}-*.parquet", f"data/{config}/*.parquet", f"{config}.parquet",
            f"{config}/train/*.parquet"]


def hub_table(repo: str, config: str) -> pa.Table:
    """One config's ``train`` split from the hub, as the Arrow table its parquet files hold (an image
    column stays the ``{bytes, path}`` struct). ``datasets`` is imported only here: local folders never
    need it."""
    # read as a hub id because no such folder is here: say so, in case a local path was meant
    local = f"; there is no local folder {repo} either"
    try:
        import datasets
    except ImportError:
        raise VikerError(f"{repo}: reading a benchmark from the hub needs the `datasets` package "
                         f'(pip install "viker[hub]"); or pass the folder of a downloaded snapshot{local}') from None
    check_hub_reachable(repo, "dataset")
    try:
        dataset = datasets.load_dataset(repo, config, split="train")
    except Exception as e:  # offline, unknown repo or config, ...: the library's own message says which
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        snapshot = cached_snapshot(repo)  # where the hub could not be reached, the copy a download left
        cached = (f"; a downloaded snapshot of it is in the hub's cache ({snapshot}): set HF_HUB_OFFLINE=1 to read "
                  "it there, or pass that folder" if snapshot and _present(snapshot, (config,)) else local)
        raise VikerError(f"{repo}: cannot load config '{config}' from the hub ({first}){cached}") from None
    return dataset.with_format("arrow")[:]


def cached_snapshot(repo: str) -> Path | None:
    """The folder of benchmark ``repo``'s snapshot in the hub's download cache (where ``hf download
    --repo-type dataset`` puts it), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except Exception:  # not there (or no valid id): the hub, or the refusal, says the rest
        return None


def config_tables(root: str | Path, config: str, known: tuple[str, ...] = CONFIGS) -> list[tuple[str, pa.Table]]:
    """``(name for messages, table)`` for each file of ``config``: local parquet files, or the hub's split. With
    ``HF_HUB_OFFLINE`` set, a hub id whose snapshot the hub's cache holds is read from that snapshot's folder
    (``datasets``, offline, reads only a copy it converted itself)."""
    if is_hub_id(root):
        from huggingface_hub import constants

        snapshot = cached_snapshot(str(root)) if constants.HF_HUB_OFFLINE else None
        if snapshot is None:
            return [(f"{root}[{config}]", hub_table(str(root), config))]
        if not _present(snapshot, (config,)):
            raise VikerError(f"{root}: the snapshot of it in the hub's cache ({snapshot}) has no config '{config}' "
                             "(a partial download?), and HF_HUB_OFFLINE is set: download that config, or unset it")
        root = snapshot
    tables = []
    for path in config_files(root, config, known):
        try:
            tables.append((str(path), pq.read_table(path)))
        except (pa.ArrowInvalid, OSError) as e:
            check_not_dangling(path)
            if _lfs_pointer(path):
                raise VikerError(f"{path}: a Git LFS pointer, not the file itself (the clone did not fetch "
                                 "it: run `git lfs pull` in the clone)") from None
            raise VikerError(f"{path}: not a readable parquet file ({e})") from None
    return tables


def _lfs_pointer(path: Path) -> bool:
    """Whether ``path`` is a Git LFS pointer file (a clone without `git lfs pull`); False for one not readable."""
    try:
        with open(path, "rb") as f:
            return f.read(40).startswith(b"version https://git-lfs")
    except OSError:  # a link to nothing, say: the parquet error says what there is to say
        return False


def _check_type(path: Path | str, name: str, actual: pa.DataType, expected: pa.DataType) -> None:
    """Check that the nested fields we read exist with compatible types (extra fields are fine)."""
    if pa.types.is_null(actual):  # written without a type (all null, or lists all empty): each row says so when read
        return
    if pa.types.is_dictionary(actual):  # dictionary-encoded (pandas' categoricals): its values are what is read
        actual = actual.value_type
    if pa.types.is_struct(expected):
        if not pa.types.is_struct(actual):
            image = " (an image is {bytes, path}, as the Hugging Face Image feature stores it)" * (
                {expected.field(i).name for i in range(expected.num_fields)} == {"bytes", "path"})
            raise VikerError(f"{path}: column '{name}' should be a struct, found {actual}{image}")
        present = {actual.field(i).name: actual.field(i).type for i in range(actual.num_fields)}
        for i in range(expected.num_fields):
            sub = expected.field(i)
            if sub.name not in present:
                raise VikerError(f"{path}: column '{name}' lacks nested field '{sub.name}'")
            _check_type(path, f"{name}.{sub.name}", present[sub.name], sub.type)
    elif pa.types.is_list(expected) or pa.types.is_large_list(expected):
        if not (pa.types.is_list(actual) or pa.types.is_large_list(actual)):
            raise VikerError(f"{path}: column '{name}' should be a list, found {actual}")
        _check_type(path, f"{name}[]", actual.value_type, expected.value_type)
    elif pa.types.is_binary(expected):
        if not (pa.types.is_binary(actual) or pa.types.is_large_binary(actual) or pa.types.is_binary_view(actual)):
            raise VikerError(f"{path}: column '{name}' should hold bytes, found {actual}")
    elif pa.types.is_string(expected):
        if not (pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_string_view(actual)):
            raise VikerError(f"{path}: column '{name}' should hold text, found {actual}")


def read_config(root: str | Path, config: str, expected: pa.Schema | None = None,
                known: tuple[str, ...] = CONFIGS, optional: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """Rows of one config as ``(source, row)`` pairs, after checking every file against ``expected``
    (default: MLLMU-Bench's schema of ``config``); ``known`` are the configs a missing one is told from;
    a column of ``optional`` a file lacks is read as nulls."""
    expected = schema_for(config) if expected is None else expected
    rows: list[tuple[str, dict]] = []
    for path, table in config_tables(root, config, known):
        for field in expected:
            if field.name not in table.schema.names:
                if field.name in optional:
                    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
                    continue
                raise VikerError(f"{path}: missing column '{field.name}' (config {config})")
            _check_type(path, field.name, table.schema.field(field.name).type, field.type)
        table = table.select(expected.names)
        images = [field.name for field in expected if IMAGE in (field.type, getattr(field.type, "value_type", None))]
        try:
            listed = table.to_pylist()
        except UnicodeDecodeError:  # a string column written from bytes in another encoding
            bad = next((name for name in table.column_names if not _decodes(table.column(name))), "?")
            raise VikerError(f"{path}: column '{bad}' holds text that is not UTF-8 (config {config}); write the file "
                             "again with its text decoded") from None
        for i, row in enumerate(listed):
            for name in images:
                _anchor(row[name], Path(path).parent)
            rows.append((f"{path}:row {i}", row))
    return rows


def _decodes(column: pa.ChunkedArray) -> bool:
    """Whether a column's values read as Python objects: its text is UTF-8."""
    try:
        column.to_pylist()
    except UnicodeDecodeError:
        return False
    return True


def _anchor(cells: dict | list | None, folder: Path) -> None:
    """Image cells stored by path (``{"bytes": None, "path": ...}``) take a relative path from the folder of
    the file that lists them."""
    for cell in cells if isinstance(cells, list) else [cells]:
        if cell and not cell.get("bytes") and cell.get("path") and not Path(cell["path"]).is_absolute():
            cell["path"], cell["relative_path"] = str(folder / cell["path"]), cell["path"]


def has_image(cell: dict | None) -> bool:
    """Whether an image cell holds an image, in its bytes or as a file path."""
    cell = cell or {}
    return bool(cell.get("bytes") or cell.get("path"))


# what PIL raises for bytes that are no image it can read; a header claiming a huge image is refused too
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def unreadable(source: str, error: Exception) -> VikerError:
    """The error of an image PIL cannot read, in words: PIL names no format it knows by the buffer it read from
    (``cannot identify image file <_io.BytesIO object at 0x...>``)."""
    why = "no image format PIL reads" if isinstance(error, UnidentifiedImageError) else str(error)
    return VikerError(f"{source}: unreadable image ({why})")


def image_bytes(value: dict | None, source: str) -> bytes:
    """The bytes of an image cell (``{bytes, path}``, as the Hugging Face Image feature stores it: the
    bytes, or else the file at ``path``), checked to decode, or a clear error."""
    value = value or {}
    data = value.get("bytes")
    if not data and value.get("path"):
        try:
            data = Path(value["path"]).read_bytes()
        except OSError as e:
            given = value.get("relative_path")  # where it was looked for, and what to store instead
            said = (f" (its relative path {given}, read from the folder of the file listing it); store each "
                    "image's bytes in the file, or its absolute path") if given else ""
            raise VikerError(f"{source}: image stored by path, and {value['path']} cannot be read "
                             f"({e.strerror or e}){said}") from None
    if not data:
        raise VikerError(f"{source}: empty image")
    try:
        with Image.open(BytesIO(data)) as img:
            img.load()  # decoded whole: a JPEG cut short passes verify(), which reads only its headers
            mode = img.mode
    except IMAGE_ERRORS as e:
        raise unreadable(source, e) from None
    if mode == "F":  # no one reading in 8 bits: 0..1 or 0..255? Converting would clip it to black or white
        raise VikerError(f"{source}: a floating-point image (mode F); save it with 8-bit levels (PNG or JPEG)")
    return data


def to_rgb(img: Image.Image) -> Image.Image:
    """An image as the model sees it, in 8-bit RGB: a transparent background on white (as transformers'
    ``convert_to_rgb`` puts it; a bare convert would make it black), 16-bit greyscale (32-bit integers
    beyond 255 read as 16-bit levels) scaled to 8 bits (a bare convert clips it to white), its transparent
    level (a PNG's tRNS) on white too."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
        wide = img.convert("I")
        grey = wide.point(lambda v: v / 257, "I").convert("L")  # 0..65535 -> 0..255
        clear = img.info.get("transparency")
        if isinstance(clear, int):
            import numpy as np

            mask = Image.fromarray(((np.asarray(wide) == clear) * 255).astype(np.uint8), "L")
            grey = Image.composite(Image.new("L", grey.size, 255), grey, mask)
        img = grey
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    return img.convert("RGB")


# EXIF orientations whose picture is turned a quarter: its stored width is its height upright
QUARTER_TURNED = (5, 6, 7, 8)


def decode_image(data: bytes, source: str = "image") -> Image.Image:
    """The image upright (turned as its EXIF orientation says, as ``datasets``' Image feature decodes it: a
    phone photo is stored sideways) in 8-bit RGB."""
    try:
        return to_rgb(ImageOps.exif_transpose(Image.open(BytesIO(data))))
    except IMAGE_ERRORS as e:
        raise unreadable(source, e) from None


def image_size(data: bytes, source: str = "image") -> tuple[int, int]:
    """An image's (width, height) upright, as :func:`decode_image` gives it, read from its header alone."""
    try:
        img = Image.open(BytesIO(data))
        width, height = img.size
        turned = img.getexif().get(0x0112) in QUARTER_TURNED  # 0x0112: the EXIF orientation tag
    except IMAGE_ERRORS as e:
        raise unreadable(source, e) from None
    return (height, width) if turned else (width, height)


def _items(items: list | None, source: str, group: str) -> list[tuple[int, dict]]:
    """``(index, item)`` of a list of question records, each refused unless it is one."""
    for j, item in enumerate(items or []):
        if not isinstance(item, dict):
            raise VikerError(f"{source}: {group} item {j} is {item!r}, not a question record")
    return list(enumerate(items or []))


def _mc_items(items: list[dict] | None, with_image: bool, source: str) -> list[MCQuestion]:
    group = "Image_Textual_Questions" if with_image else "Pure_Text_Questions"
    out = []
    for j, item in _items(items, source, group):
        if not str(item.get("Question") or "").strip():
            raise VikerError(f"{source}: {group}[{j}] lacks a Question (missing or blank)")
        # spaces around an option ("baker ") or doubled inside it are the file's, not the option's: kept, they
        # would keep the option from being found in the model's own answer (the likelihood scoring's frame)
        options = {k: spaced(str(v)) for k, v in (item.get("Options") or {}).items() if v is not None}
        if sorted(options) != list(LETTERS):
            raise VikerError(f"{source}: {group}[{j}] has options {sorted(options)}, expected A-D")
        answer = (item.get("Correct_Answer") or "").strip()
        if answer not in options:
            raise VikerError(f"{source}: {group}[{j}] has answer '{answer}' outside A-D")
        out.append(MCQuestion(item["Question"], options, answer, with_image))
    return out


def _qa_items(items: list[dict] | None, source: str, task: str) -> list[QA]:
    out = []
    for j, item in _items(items, source, task):
        kind = item.get("Type")
        if kind not in (IMAGE_TEXTUAL, PURE_TEXT):
            raise VikerError(f"{source}: {task} item {j} has Type {kind!r}, expected {IMAGE_TEXTUAL} or {PURE_TEXT}")
        if not str(item.get("Question") or "").strip() or not str(item.get("Ground_Truth") or "").strip():
            # a blank answer is in every reply: a cloze would count it right whatever the model said
            raise VikerError(f"{source}: {task} item {j} lacks a Question or Ground_Truth (missing or blank)")
        out.append(QA(item["Question"], item["Ground_Truth"], kind == IMAGE_TEXTUAL))
    return out


# a profile's text no evaluation or unlearning run reads (the tiny model's vocabulary is built from it): a copy of
# one's own may leave these columns out
UNSCORED_COLUMNS = ("Directory", "biography", "question", "answer")


def load_profiles(root: str | Path, config: str) -> list[Profile]:
    """Typed rows of a profile config (Full_Set, forget_*, retain_*, Test_Set, Retain_Set)."""
    if config in ("ft_Data", PRETRAIN_CONFIG):
        raise VikerError(f"{config} holds finetuning pairs, not profiles: use load_finetune")
    profiles = []
    for source, row in read_config(root, config, optional=UNSCORED_COLUMNS):
        cells = row["images"] if config == "Test_Set" else [row["image"]]
        images = tuple(image_bytes(cell, f"{source} image {j}") for j, cell in enumerate(cells or []))
        if not images:
            raise VikerError(f"{source}: no images")
        cls = row["Classification_Task"] or {}
        if row["ID"] is None or not str(row["ID"]).strip():  # rows of one person are matched by it across configs
            raise VikerError(f"{source}: no ID")
        profiles.append(
            Profile(
                id=str(row["ID"]).strip(),  # "P005 " in one config is P005 of the others
                images=images,
                directory=row["Directory"] or "",
                biography=row["biography"] or "",
                question=row["question"] or "",
                answer=row["answer"] or "",
                mc=tuple(
                    _mc_items(cls.get("Image_Textual_Questions"), True, source)
                    + _mc_items(cls.get("Pure_Text_Questions"), False, source)
                ),
                generation=tuple(_qa_items(row["Generation_Task"], source, "Generation_Task")),
                cloze=tuple(_qa_items(row["Mask_Task"], source, "Mask_Task")),
                source=source,
            )
        )
    return _each_once(profiles, config)


TASKS = (("mc", "Classification_Task"), ("generation", "Generation_Task"), ("cloze", "Mask_Task"))
_warned: set[tuple[str, ...]] = set()


def warn_of_unscored(people: list[Profile], config: str,
                     tasks: Sequence[str] = ("generation", "multiple_choice", "cloze")) -> list[Profile]:
    """``people`` (of ``config``, as an evaluation scores ``tasks`` of them), after warning (once a process) of the
    questions its figures leave out or cannot read for what they say: a task some have none of, and the
    multiple-choice questions of ``ODD_QUESTIONS``. Training reads none of these questions, and says nothing of
    them; nor does an evaluation of other tasks."""
    _warn_of_missing_tasks(people, config, ["mc" if task == "multiple_choice" else task for task in tasks])
    if "multiple_choice" in tasks:
        _warn_of_odd_questions(people, config)
    return people


def _warn_of_missing_tasks(people: list[Profile], config: str, fields: Sequence[str]) -> None:
    """Warn (once a process) when people of a config have no questions of a task (every config of the release has
    each task for each person): their row's task is null or empty, and the task's scores are over the other people
    alone, or, where nobody has it, there are none."""
    for field, task in TASKS:
        if field not in fields:
            continue
        without = [p for p in people if not getattr(p, field)]
        said = (config, task, *(p.source for p in without))
        if without and said not in _warned:
            _warned.add(said)
            scored = ("that task is scored over the others alone" if len(without) < len(people) else
                      "no figure of that task is measured on it")
            print(f"warning: {config}: {len(without)} of {len(people)} people have no {task} questions (e.g. "
                  f"{without[0].source}, person {without[0].id}); {scored}", file=sys.stderr)


# multiple-choice questions no scoring reads for what they say: (name, test, what they do (one, several), what
# it means for the figures)
ODD_QUESTIONS = (
    # no scoring tells the two apart (option likelihood gives them one score and picks the first letter)
    ("twins", lambda q: list(q.options.values()).count(q.options[q.answer]) > 1,
     ("lists", "list"), "the correct option's text under another letter too",
     "no scoring tells them apart, so each is right or wrong by the letters' order"),
    # option likelihood gives a blank option no score (counted as forgotten, or as knowledge lost); a letter reply
    # may still name it
    ("blank", lambda q: not q.options[q.answer], ("has", "have"), "a blank correct option",
     "option likelihood never chooses a blank option, so each is wrong whatever the model knows"),
)


def _warn_of_odd_questions(people: list[Profile], config: str) -> None:
    """Warn (once a process) of multiple-choice questions no scoring reads for what they say (``ODD_QUESTIONS``)."""
    for name, odd, does, what, meaning in ODD_QUESTIONS:
        found = [(p, q) for p in people for q in p.mc if odd(q)]
        said = (config, name, *(f"{p.source}:{q.question}" for p, q in found))
        if found and said not in _warned:
            _warned.add(said)
            p, q = found[0]
            several = len(found) > 1
            print(f"warning: {config}: {len(found)} multiple-choice question{'s' * several} {does[several]} {what} "
                  f"(e.g. {p.source}, person {p.id}: {q.question!r}); {meaning}", file=sys.stderr)


def _each_once(profiles: list[Profile], config: str) -> list[Profile]:
    """A config's people, each once: a row repeated as it is (a shard copied twice) is read once, with a warning,
    so that nobody's questions count twice; a person given twice with other content is refused."""
    first: dict[str, Profile] = {}
    repeated = []
    for p in profiles:
        seen = first.setdefault(p.id, p)
        if seen is p:
            continue
        if replace(seen, source=p.source) != p:
            raise VikerError(f"{p.source}: person {p.id} again, with other content than {seen.source}; a person is "
                             f"one row of {config}")
        repeated.append(p)
    if repeated:
        print(f"warning: {config}: {len(repeated)} rows repeat another row as it is (e.g. {repeated[0].source}, "
              f"person {repeated[0].id}); each person is read once", file=sys.stderr)
    return list(first.values())


def retain_profiles(root: str | Path, forget: str, forget_people: list[Profile]) -> list[Profile]:
    """The retain split of ``forget`` (MLLMU-Bench's ``retain_(100−X)``), refused when it shares a person with
    the forget split (:func:`kept_apart`)."""
    retain = RETAIN_OF[forget]
    return kept_apart(root, forget, forget_people, retain, load_profiles(root, retain))


def kept_apart(root: str | Path, forget: str, forget_people: list[Profile], config: str,
               people: list[Profile], by_id: bool = True) -> list[Profile]:
    """``people`` (of ``config``, a set kept and scored as kept), refused when one of them is a forget person: by
    ID (``by_id``: IDs of one numbering, as the splits of Full_Set share), as nobody can be both forgotten and
    retained, nor scored as both; or by image, as an ft_Data pair is a person's by its image's bytes (the pairs of
    one would be unlearned or kept as the other's) and a question about that image cannot tell the two apart."""
    forget_ids = {f.id for f in forget_people}
    shared = [p.id for p in people if p.id in forget_ids] if by_id else []
    if shared:
        raise VikerError(f"{root}: {forget} and {config} share profile IDs {', '.join(sorted(shared)[:5])}; a "
                         "person cannot be both forgotten and retained")
    owners = {f.image: f.id for f in forget_people}
    twins = [(owners[p.image], p.id) for p in people if p.image in owners]
    if twins:
        pairs = ", ".join(f"{a} and {b}" for a, b in twins[:3]) + (", ..." if len(twins) > 3 else "")
        raise VikerError(f"{root}: {len(twins)} {config} {'person has' if len(twins) == 1 else 'people have'} the "
                         f"image of a {forget} person (ID {pairs}): ft_Data pairs are a person's by their image's "
                         "bytes, and a question about the image cannot tell the two apart; give each their own")
    return people


def load_finetune(root: str | Path, config: str = "ft_Data") -> list[FinetuneRecord]:
    """ft_Data rows (or rows of a config in its format): an image and the JSON list of
    {Question, Answer} pairs about it."""
    records = []
    for source, row in read_config(root, config):
        try:
            pairs = json.loads(row["metadata"] or "")
        except (json.JSONDecodeError, TypeError) as e:
            raise VikerError(f"{source}: metadata is not JSON ({e})") from None
        if not isinstance(pairs, list):
            raise VikerError(f"{source}: metadata is a JSON {type(pairs).__name__}, not a list of "
                             "{Question, Answer} objects")
        for j, pair in enumerate(pairs):
            if not (isinstance(pair, dict) and {"Question", "Answer"} <= pair.keys()):
                raise VikerError(f"{source}: metadata item {j} is not a {{Question, Answer}} object: {pair!r:.80}")
        qa = tuple(QA(p["Question"], p["Answer"], True) for p in pairs)
        for j, pair in enumerate(qa):
            if not all(isinstance(text, str) and text.strip() for text in (pair.question, pair.answer)):
                raise VikerError(f"{source}: metadata pair {j} lacks a Question or an Answer (blank or not text)")
        records.append(FinetuneRecord(image_bytes(row["image"], source), qa, source))
    return records
