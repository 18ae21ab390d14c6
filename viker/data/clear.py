"""CLEAR's layout (``therem/CLEAR``), written down once; its typed records and the examples its protocol
needs: the finetune, the unlearning streams and the evaluation items.

CLEAR has 200 fictitious persons (TOFU's authors) with face images; every image has a caption and the
person's name. Its configs:

- ``full``, ``forget01/05/10``, ``retain99/95/90``: ``image``, ``caption``, ``name``;
- the same names with ``+tofu``: those rows, without ``name``, plus TOFU's text questions about the
  same authors (``question``, ``answer``, and no image);
- ``forget01/05/10_perturbed`` and ``retain_perturbed``: the caption rows plus ``paraphrased_caption``,
  ``perturbed_captions`` (wrong captions) and ``perturbed_names`` (wrong names), for the truth ratio;
- ``real_faces`` (``image``, ``answer``: a celebrity's name, ``options``) and ``real_world``
  (``question``, ``answer``, ``image``, ``prompt``, ``options``): what a pretrained model knows.

Files are read with MLLMU-Bench's loader helpers (the same folder layouts, or a hub id through
``datasets``), checked against the schemas below, and every bad row is an error naming file and row.
The one documented skip: an option question whose ``options`` hold nothing but the answer has no wrong
answer to compare with, so it cannot be scored; it is left out and counted. A right answer listed among the
wrong ones (the answer in ``options``, the caption or its paraphrase in ``perturbed_captions``, the name in
``perturbed_names``) is taken out of them, so that it is never counted against itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from viker.data.examples import unique_examples
from viker.data.loader import has_config as holds_config
from viker.data.loader import has_image, image_bytes, read_config, spaced
from viker.data.schema import FORGET_SPLITS as MLLMU_SPLITS
from viker.data.schema import IMAGE, QA, Example
from viker.errors import VikerError
from viker.prompts import CAPTION_QUESTION, NAME_QUESTION, PROMPT_TEXTS
from viker.runs import is_hub_id

FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
TOFU = "+tofu"
PERTURBED = "_perturbed"
RETAIN_PERTURBED = "retain_perturbed"
REAL_FACES, REAL_WORLD = "real_faces", "real_world"
CAPTION_CONFIGS = ("full", *FORGET_SPLITS, *RETAIN_OF.values())
CONFIGS = (*CAPTION_CONFIGS, *(c + TOFU for c in CAPTION_CONFIGS), *(f + PERTURBED for f in FORGET_SPLITS),
           RETAIN_PERTURBED, REAL_FACES, REAL_WORLD)

# --- Arrow types (what CLEAR's parquet files hold; the image is the hub's Image struct) --------------
TEXT = pa.string()
CAPTION_SCHEMA = pa.schema([("image", IMAGE), ("caption", TEXT), ("name", TEXT)])
# a +tofu config's caption rows repeat its plain config's without the person's name (as published)
TOFU_SCHEMA = pa.schema([("image", IMAGE), ("caption", TEXT), ("question", TEXT), ("answer", TEXT)])
PERTURBED_SCHEMA = pa.schema(list(CAPTION_SCHEMA) + [("paraphrased_caption", TEXT),
                                                     ("perturbed_captions", pa.list_(TEXT)),
                                                     ("perturbed_names", pa.list_(TEXT))])
REAL_FACES_SCHEMA = pa.schema([("image", IMAGE), ("answer", TEXT), ("options", pa.list_(TEXT))])
REAL_WORLD_SCHEMA = pa.schema([("question", TEXT), ("answer", TEXT), ("image", IMAGE), ("prompt", TEXT),
                               ("options", pa.list_(TEXT))])


def schema_for(config: str) -> pa.Schema:
    if config not in CONFIGS:
        raise VikerError(f"'{config}' is not a CLEAR config; CLEAR has {', '.join(CONFIGS)}")
    if config.endswith(TOFU):
        return TOFU_SCHEMA
    if config.endswith(PERTURBED):
        return PERTURBED_SCHEMA
    return {REAL_FACES: REAL_FACES_SCHEMA, REAL_WORLD: REAL_WORLD_SCHEMA}.get(config, CAPTION_SCHEMA)


def has_config(root: str | Path, config: str) -> bool:
    """Whether ``root`` holds CLEAR's ``config`` (a hub id holds every config of CLEAR's release)."""
    return holds_config(root, config, CONFIGS)


def is_clear(root: str | Path) -> bool:
    """Whether a local folder holds CLEAR (its ``full`` config) rather than MLLMU-Bench."""
    return not is_hub_id(root) and has_config(root, "full")


def forget_base(forget: str, flag: str = "--forget") -> str:
    """``forget10`` for ``forget10`` or ``forget10+tofu``, checked to be one of CLEAR's forget splits
    (``flag`` names the option it came from in the error)."""
    base = forget.removesuffix(TOFU)
    if base not in FORGET_SPLITS:
        theirs = "; it is an MLLMU-Bench split: leave out --benchmark clear" if forget in MLLMU_SPLITS and \
            flag == "--forget" else ""
        raise VikerError(f"{flag} {forget}: choose from {', '.join(FORGET_SPLITS)} (optionally with {TOFU}){theirs}")
    return base


def is_forget_split(name: str | None) -> bool:
    return name is not None and name.removesuffix(TOFU) in FORGET_SPLITS


# --- Typed records -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Portrait:
    """A caption row: a face image of a person, its caption and the person's name (plus, in the
    ``_perturbed`` configs, a paraphrase of the caption, wrong captions and wrong names)."""

    image: bytes
    caption: str
    name: str
    paraphrased_caption: str = ""
    perturbed_captions: tuple[str, ...] = ()
    perturbed_names: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class OptionQuestion:
    """A row of real_faces or real_world: a question about a picture, its answer and the wrong options."""

    image: bytes
    question: str
    answer: str
    wrong: tuple[str, ...]
    source: str = ""


def _text(row: dict, column: str, source: str) -> str:
    value = row.get(column)
    if value is None or not str(value).strip():
        raise VikerError(f"{source}: empty {column}")
    return str(value)


def _texts(row: dict, column: str, source: str) -> tuple[str, ...]:
    values = row.get(column) or []
    if not values:
        raise VikerError(f"{source}: empty {column} (a list of at least one text is needed)")
    for j, value in enumerate(values):
        if value is None or not str(value).strip():
            raise VikerError(f"{source}: {column}[{j}] is empty")
    return tuple(str(v) for v in values)


def _wrong_texts(row: dict, column: str, source: str, *right: str) -> tuple[str, ...]:
    """``column``'s wrong answers, less any that is one of the ``right`` ones (spacing aside), as an option
    question's answer is taken out of its options: a true answer listed among the wrong ones would be counted
    against itself in Prob. and the truth ratio. Refused where none is left."""
    same = {spaced(text) for text in right}
    wrong = tuple(text for text in _texts(row, column, source) if spaced(text) not in same)
    if not wrong:
        raise VikerError(f"{source}: every text of {column} is the right answer itself (no wrong answer to compare "
                         "it with)")
    return wrong


def _portrait(row: dict, source: str, perturbed: bool) -> Portrait:
    caption, name = _text(row, "caption", source), _text(row, "name", source)
    extra = {}
    if perturbed:
        paraphrase = _text(row, "paraphrased_caption", source)
        extra = {"paraphrased_caption": paraphrase,
                 "perturbed_captions": _wrong_texts(row, "perturbed_captions", source, caption, paraphrase),
                 "perturbed_names": _wrong_texts(row, "perturbed_names", source, name)}
    return Portrait(image_bytes(row["image"], source), caption, name, source=source, **extra)


def load_portraits(root: str | Path, config: str) -> list[Portrait]:
    """The caption rows of ``config``, each needing its image, caption and name (a ``+tofu`` config's
    are read from its plain config, which names their persons: :func:`tofu_questions`)."""
    if config.endswith(TOFU):
        raise ValueError(f"{config}: read its caption rows from {config.removesuffix(TOFU)}")
    perturbed = config.endswith(PERTURBED) or config == RETAIN_PERTURBED
    return [_portrait(row, source, perturbed) for source, row in read_config(root, config, schema_for(config), CONFIGS)]


def tofu_questions(root: str | Path, config: str) -> list[QA]:
    """The text-only TOFU questions of a ``+tofu`` config: its rows without an image, each needing its
    question and answer. A row that has a caption but no image is a caption row that lost its image, an
    error; the caption rows themselves repeat the plain config's and are not read again."""
    questions = []
    for source, row in read_config(root, config, schema_for(config), CONFIGS):
        if has_image(row["image"]):
            continue
        if row.get("caption"):
            raise VikerError(f"{source}: a caption row without an image (a text-only row of {config} must be "
                             "a TOFU question with its question and answer)")
        questions.append(QA(_text(row, "question", source), _text(row, "answer", source), False))
    return questions


def load_option_questions(root: str | Path, config: str) -> tuple[list[OptionQuestion], int]:
    """real_faces or real_world rows, and how many were skipped because no option differs from the
    answer (nothing to compare the answer with). real_faces asks for the pictured person's name; the
    answer is removed from ``options`` when it is listed there, so ``wrong`` holds the wrong ones."""
    if config not in (REAL_FACES, REAL_WORLD):
        raise VikerError(f"{config}: option questions live in {REAL_FACES} and {REAL_WORLD}")
    items, skipped = [], 0
    for source, row in read_config(root, config, schema_for(config), CONFIGS):
        # an answer or option's surrounding or doubled spaces are the file's: kept, they would be scored as tokens
        answer = spaced(_text(row, "answer", source))
        question = NAME_QUESTION if config == REAL_FACES else _text(row, "question", source)
        options = row.get("options")
        if options is None:
            raise VikerError(f"{source}: options is missing")
        wrong = tuple(text for o in options if o is not None and (text := spaced(str(o))) and text != answer)
        image = image_bytes(row["image"], source)
        if not wrong:
            skipped += 1
            continue
        items.append(OptionQuestion(image, question, answer, wrong, source))
    return items, skipped


# --- Examples: what the protocol trains on -----------------------------------------------------------
def caption_example(p: Portrait) -> Example:
    return Example(CAPTION_QUESTION, p.caption, p.image, p.name, "caption")


def tofu_example(q: QA) -> Example:
    return Example(q.question, q.answer, None, "", "tofu")


def _examples(root: str | Path, config: str, with_tofu: bool, portraits: list[Portrait] | None = None) -> list[Example]:
    """Caption examples of ``config`` (pass ``portraits`` when they are loaded already), plus the TOFU
    questions of ``config+tofu`` when asked for."""
    portraits = load_portraits(root, config) if portraits is None else portraits
    if not portraits:  # TOFU's text alone would train (or unlearn) no image at all
        raise VikerError(f"{root}: {config} has no caption rows (an image, its caption and its person's name each)")
    questions = tofu_questions(root, config + TOFU) if with_tofu else []
    return unique_examples([caption_example(p) for p in portraits] + [tofu_example(q) for q in questions])


def finetune_examples(root: str | Path, without: str | None = None) -> list[Example]:
    """What the vanilla model learns: every caption of ``full``, each as the answer to a fixed
    captioning question with its image, and (when the folder has ``full+tofu``) TOFU's text questions.
    ``without`` (a forget split) trains the reference for forget quality instead: the same recipe on
    the complementary retain split, so the model never sees the forget persons."""
    config = "full" if without is None else RETAIN_OF[forget_base(without, "--without")]
    with_tofu = has_config(root, "full" + TOFU)  # the vanilla model's recipe decides, for the retain model too
    if with_tofu and not has_config(root, config + TOFU):
        raise VikerError(f"{root}: has full{TOFU} and not {config}{TOFU}: a model finetuned --without {without} "
                         "would learn captions alone, where the vanilla model learns TOFU's questions too, and "
                         "forget quality would compare two recipes")
    return _examples(root, config, with_tofu)


def check_apart(root: str | Path, forget: str, forget_rows: list[Portrait], retain: str,
                retain_rows: list[Portrait]) -> None:
    """Refuse a forget and a retain config that share a person: by name, spacing aside (a name with a space after
    it is the same person), or by a photo (the same bytes under another name: the face would be both forgotten and
    retained, and a question about it could not tell the two apart)."""
    shared = {spaced(p.name) for p in forget_rows} & {spaced(p.name) for p in retain_rows}
    if shared:
        raise VikerError(f"{root}: {forget} and {retain} share persons {', '.join(sorted(shared)[:5])}; a person "
                         "cannot be both forgotten and retained")
    owners = {p.image: p.name for p in forget_rows}
    twins = list(dict.fromkeys((owners[p.image], p.name) for p in retain_rows if p.image in owners))
    if twins:
        pairs = ", ".join(f"{a} and {b}" for a, b in twins[:3]) + (", ..." if len(twins) > 3 else "")
        raise VikerError(f"{root}: {forget} and {retain} share {len(twins)} photo{'s' * (len(twins) > 1)} under two "
                         f"names ({pairs}); a face cannot be both forgotten and retained: give each their own")


def unlearning_data(root: str | Path, forget: str) -> tuple[dict[str, list[Example]], dict]:
    """The forget and retain streams for ``forget`` (``forget10``, or ``forget10+tofu`` to forget and
    retain the TOFU questions too, from the ``+tofu`` configs), and what was used, for the run's config.
    Refuses splits that share a person."""
    base = forget_base(forget)
    with_tofu = forget.endswith(TOFU)
    retain = RETAIN_OF[base]
    forget_rows, retain_rows = load_portraits(root, base), load_portraits(root, retain)
    check_apart(root, base, forget_rows, retain, retain_rows)
    data = {"forget": _examples(root, base, with_tofu, forget_rows),
            "retain": _examples(root, retain, with_tofu, retain_rows)}
    info = {"benchmark": "clear", "forget_config": base + TOFU * with_tofu,
            "retain_config": retain + TOFU * with_tofu}
    return data, info


def split_of(forget: str, which: str) -> str:
    """The caption config of a forget split (``which="forget"``) or of its retain split."""
    base = forget_base(forget)
    return base if which == "forget" else RETAIN_OF[base]


def real_face_images(root: str | Path) -> list[bytes]:
    """The ``real_faces`` images: real people, never in a forget split (``--refs people`` on CLEAR, which
    has no image pools, as the Retain_Set's real-world people on MLLMU-Bench)."""
    return list(dict.fromkeys(image_bytes(row["image"], source) for source, row in
                              read_config(root, REAL_FACES, schema_for(REAL_FACES), CONFIGS)))


# --- Evaluation items ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalItem:
    """One scored question: ``answer`` is what the greedy reply is compared with (ROUGE-L recall) and
    whose loss gives Prob.; ``paraphrase`` against ``perturbed`` gives the truth ratio."""

    question: str
    image: bytes
    answer: str
    paraphrase: str
    perturbed: tuple[str, ...]
    person: str = ""


# The evaluation sets, in report order: (name, task, whether Prob. is the option share).
EVAL_SETS = (("forget", "caption", False), ("forget_names", "name", True), ("retain", "caption", False),
             ("retain_names", "name", True), ("real_faces", "name", True), ("real_world", "qa", True))
FORGET_SETS = ("forget", "forget_names")


def _portrait_items(portraits: list[Portrait]) -> tuple[list[EvalItem], list[EvalItem]]:
    captions = [EvalItem(CAPTION_QUESTION, p.image, p.caption, p.paraphrased_caption, p.perturbed_captions, p.name)
                for p in portraits]
    names = [EvalItem(NAME_QUESTION, p.image, p.name, p.name, p.perturbed_names, p.name) for p in portraits]
    return captions, names


def eval_items(root: str | Path, forget: str) -> tuple[dict[str, list[EvalItem]], dict[str, int]]:
    """The items of every evaluation set (see ``EVAL_SETS``) and the skipped counts: the forget split's
    ``_perturbed`` config (captions and names), ``retain_perturbed`` (the same), real_faces and
    real_world. Refuses a retain set that shares a person with the forget split."""
    base = forget_base(forget)
    forget_rows, retain_rows = load_portraits(root, base + PERTURBED), load_portraits(root, RETAIN_PERTURBED)
    check_apart(root, base + PERTURBED, forget_rows, RETAIN_PERTURBED, retain_rows)
    sets, skipped = {}, {}
    sets["forget"], sets["forget_names"] = _portrait_items(forget_rows)
    sets["retain"], sets["retain_names"] = _portrait_items(retain_rows)
    for config in (REAL_FACES, REAL_WORLD):
        questions, skipped[config] = load_option_questions(root, config)
        sets[config] = [EvalItem(q.question, q.image, q.answer, q.answer, q.wrong) for q in questions]
    return sets, skipped


def benchmark_texts(root: str | Path):
    """All text a model of this benchmark reads or writes (a tiny model's tokenizer corpus)."""
    for config in ("full", RETAIN_PERTURBED, *(f + PERTURBED for f in FORGET_SPLITS)):
        if has_config(root, config):
            for p in load_portraits(root, config):
                yield from (p.caption, p.name, p.paraphrased_caption, *p.perturbed_captions, *p.perturbed_names)
    if has_config(root, "full" + TOFU):
        for q in tofu_questions(root, "full" + TOFU):
            yield from (q.question, q.answer)
    for config in (REAL_FACES, REAL_WORLD):
        if has_config(root, config):
            for q in load_option_questions(root, config)[0]:
                yield from (q.question, q.answer, *q.wrong)
    yield from (CAPTION_QUESTION, NAME_QUESTION, *PROMPT_TEXTS)
