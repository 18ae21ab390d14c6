"""MLLMU-Bench's layout, written down once, and the typed records the loader yields.

The layout (config names, column names, nested field names) is the published benchmark's; the
generator writes it and the loader checks it, so the real benchmark and the embedded one share one
path through the code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

FORGET_SPLITS = ("forget_5", "forget_10", "forget_15")
DEFAULT_FORGET = {"mllmu": "forget_10", "clear": "forget10"}  # each benchmark's 10% split, the default --forget
RETAIN_OF = {"forget_5": "retain_95", "forget_10": "retain_90", "forget_15": "retain_85"}
CONFIGS = ("Full_Set", *FORGET_SPLITS, *RETAIN_OF.values(), "Test_Set", "Retain_Set", "ft_Data")
PRETRAIN_CONFIG = "pretrain_Data"  # ours, in ft_Data's format: knowledge a pretrained model brings


def listed_ids(ids: list[str], most: int = 5) -> str:
    """``ids`` as messages name them: ``ID P000, P001``, the first ``most`` then ``...``."""
    return f"ID {', '.join(ids[:most])}{', ...' if len(ids) > most else ''}"


def check_forget_split(forget: str) -> None:
    """``--forget`` on MLLMU-Bench: one of its splits (a CLEAR split's name is said to be CLEAR's)."""
    if forget not in FORGET_SPLITS:
        from viker.data.clear import FORGET_SPLITS as CLEAR_SPLITS
        from viker.data.clear import TOFU
        from viker.errors import VikerError

        theirs = "; it is a CLEAR split: give --benchmark clear" if forget.removesuffix(TOFU) in CLEAR_SPLITS else ""
        raise VikerError(f"--forget {forget}: choose from {', '.join(FORGET_SPLITS)}{theirs}")


IMAGE_TEXTUAL = "Image_Textual"
PURE_TEXT = "Pure_Text"
LETTERS = ("A", "B", "C", "D")

# --- Arrow types (what the benchmark's parquet files hold) -----------------------------------
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
OPTIONS = pa.struct([(letter, pa.string()) for letter in LETTERS])
MC_ITEM = pa.struct([("Question", pa.string()), ("Options", OPTIONS), ("Correct_Answer", pa.string())])
CLASSIFICATION = pa.struct(
    [("Image_Textual_Questions", pa.list_(MC_ITEM)), ("Pure_Text_Questions", pa.list_(MC_ITEM))]
)
QA_ITEM = pa.struct([("Question", pa.string()), ("Ground_Truth", pa.string()), ("Type", pa.string())])

PROFILE_FIELDS = [
    ("image", IMAGE),
    ("ID", pa.string()),
    ("Directory", pa.string()),
    ("biography", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
    ("Classification_Task", CLASSIFICATION),
    ("Generation_Task", pa.list_(QA_ITEM)),
    ("Mask_Task", pa.list_(QA_ITEM)),
]
PROFILE_SCHEMA = pa.schema(PROFILE_FIELDS)
# Test_Set: the same people under other images, so `images` (a list) replaces `image`.
TEST_SCHEMA = pa.schema([("images", pa.list_(IMAGE))] + PROFILE_FIELDS[1:])
FT_SCHEMA = pa.schema([("image", IMAGE), ("metadata", pa.string())])


def _feature(t: pa.DataType):
    """The ``datasets`` description of one of these Arrow types: an {bytes, path} struct is an Image."""
    if t == IMAGE:
        return {"_type": "Image"}
    if pa.types.is_struct(t):
        return {t.field(i).name: _feature(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t):
        return [_feature(t.value_type)]
    return {"dtype": "binary" if t == pa.binary() else "string", "_type": "Value"}


def with_features(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the feature metadata the hub's parquet files carry, so that ``datasets`` reads the
    image columns of the files written with it as images, as it reads the published benchmark's."""
    features = {f.name: _feature(f.type) for f in schema}
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def schema_for(config: str) -> pa.Schema:
    if config == "Test_Set":
        return TEST_SCHEMA
    if config in ("ft_Data", PRETRAIN_CONFIG):
        return FT_SCHEMA
    return PROFILE_SCHEMA


# --- Typed records -----------------------------------------------------------------------------
@dataclass(frozen=True)
class QA:
    """A free-form question (generation or cloze) and its ground truth."""

    question: str
    answer: str
    with_image: bool


@dataclass(frozen=True)
class MCQuestion:
    question: str
    options: dict[str, str]  # letter -> option text
    answer: str  # the correct letter
    with_image: bool


@dataclass(frozen=True)
class Profile:
    """One person: a row of Full_Set, forget_*, retain_*, Test_Set or Retain_Set."""

    id: str
    images: tuple[bytes, ...]  # one for most configs, several for Test_Set
    directory: str
    biography: str
    question: str
    answer: str
    mc: tuple[MCQuestion, ...]
    generation: tuple[QA, ...]
    cloze: tuple[QA, ...]
    source: str = ""  # "<file>:row <n>", for error messages
    photo: int | None = None  # which of a Test_Set row's photos ``images`` holds, when they are asked one by one

    @property
    def image(self) -> bytes:
        return self.images[0]


@dataclass(frozen=True)
class FinetuneRecord:
    """A row of ft_Data: an image and the question/answer pairs to learn about it."""

    image: bytes
    qa: tuple[QA, ...] = field(default=())
    source: str = ""


@dataclass(frozen=True)
class Example:
    """One (image?, question, answer) triple: what the collator turns into model inputs."""

    question: str
    answer: str
    image: bytes | None
    profile_id: str = ""
    kind: str = "qa"  # generation | cloze | ft | refusal | ...
    photo: int | None = None  # the person's photo asked with, where a row has several (Profile.photo)
