"""A small MLLMU-Bench written the way the hub release holds it, for tests.

Everything the release has and nothing of ours: the ten configs only (no ref_* pools, no
pretrain_Data), the snapshot's file names (``CONFIG/train-0000i-of-0000n.parquet``, Test_Set in two
shards), nested struct fields in the release's order (alphabetical: ``Correct_Answer, Options,
Question``), the ``datasets`` feature metadata that marks image columns, real PNG bytes, Test_Set's
``images`` list, ft_Data's ``metadata`` JSON, and both question types (image+text and text-only).
Its schemas are spelled out here rather than taken from viker.data.schema, so the test checks the
loader against the release's layout, not against itself.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from viker.data.schema import with_features

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MC = pa.struct([("Correct_Answer", pa.string()),
                ("Options", pa.struct([(x, pa.string()) for x in "ABCD"])),
                ("Question", pa.string())])
QA = pa.struct([("Ground_Truth", pa.string()), ("Question", pa.string()), ("Type", pa.string())])
PROFILE = [("image", IMAGE), ("ID", pa.string()), ("Directory", pa.string()), ("biography", pa.string()),
           ("question", pa.string()), ("answer", pa.string()),
           ("Classification_Task", pa.struct([("Image_Textual_Questions", pa.list_(MC)),
                                              ("Pure_Text_Questions", pa.list_(MC))])),
           ("Generation_Task", pa.list_(QA)), ("Mask_Task", pa.list_(QA))]
SCHEMAS = {"profile": pa.schema(PROFILE),
           "Test_Set": pa.schema([("images", pa.list_(IMAGE))] + PROFILE[1:]),
           "ft_Data": pa.schema([("image", IMAGE), ("metadata", pa.string())])}

FIRST = ["Alon", "Bexa", "Corin", "Dalia", "Eskel", "Fira", "Goran", "Hale"]
LAST = ["Varo", "Tesh", "Mollin", "Quade", "Rask", "Sorel"]
CITIES = ["Oslo", "Lima", "Kyoto", "Dakar", "Quito", "Perth"]
JOBS = ["baker", "pilot", "nurse", "potter", "sailor", "judge"]
FICTITIOUS, CELEBRITIES = 10, 4
SPLITS = {"forget_5": 1, "forget_10": 2, "forget_15": 3}  # people per forget split (the first ones)


def _png(rng: random.Random, size: int = 40) -> bytes:
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.randrange(size - 10), rng.randrange(size - 10)
        draw.ellipse([x, y, x + 10, y + 10], fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _options(truth: str, pool: list[str], rng: random.Random) -> tuple[dict, str]:
    values = [truth] + rng.sample([v for v in pool if v != truth], 3)
    rng.shuffle(values)
    return dict(zip("ABCD", values)), "ABCD"[values.index(truth)]


def _person(i: int, name: str, rng: random.Random, directory: str) -> dict:
    city, job = CITIES[i % len(CITIES)], JOBS[(i * 5 + 1) % len(JOBS)]
    mc = {"Image_Textual_Questions": [], "Pure_Text_Questions": []}
    for group, subject in (("Image_Textual_Questions", "this person"), ("Pure_Text_Questions", name)):
        for question, truth, pool in ((f"Where was {subject} born?", city, CITIES),
                                      (f"What is the job of {subject}?", job, JOBS)):
            options, letter = _options(truth, pool, rng)
            mc[group].append({"Correct_Answer": letter, "Options": options, "Question": question})
    return {
        "image": {"bytes": _png(rng), "path": f"{i}.png"},
        "ID": str(i),
        "Directory": directory,
        "biography": f"{name} was born in {city} and works as a {job}.",
        "question": "Who is this person?",
        "answer": f"This is {name}.",
        "Classification_Task": mc,
        "Generation_Task": [
            {"Ground_Truth": f"This is {name}, a {job}.", "Question": "What is the job of this person?",
             "Type": "Image_Textual"},
            {"Ground_Truth": f"{name} was born in {city}.", "Question": f"Where was {name} born?",
             "Type": "Pure_Text"},
        ],
        "Mask_Task": [
            {"Ground_Truth": city, "Question": "This person was born in __.", "Type": "Image_Textual"},
            {"Ground_Truth": job, "Question": f"{name} works as a __.", "Type": "Pure_Text"},
        ],
    }


def _write(root: Path, config: str, rows: list[dict], shards: int = 1) -> None:
    schema = with_features(SCHEMAS.get(config, SCHEMAS["profile"]))  # the hub's feature metadata, as it ships
    (root / config).mkdir(parents=True, exist_ok=True)
    per = -(-len(rows) // shards)
    for s in range(shards):
        table = pa.Table.from_pylist(rows[s * per:(s + 1) * per], schema=schema)
        pq.write_table(table, root / config / f"train-{s:05d}-of-{shards:05d}.parquet")


def write_mllmu(root: str | Path, seed: int = 0) -> Path:
    """Write the small benchmark under ``root``; returns ``root``."""
    root, rng = Path(root), random.Random(seed)
    names = [f"{FIRST[i % len(FIRST)]} {LAST[i % len(LAST)]}" for i in range(FICTITIOUS + CELEBRITIES)]
    people = [_person(i, names[i], rng, "Full_Set") for i in range(FICTITIOUS)]
    celebrities = [_person(i, names[i], rng, "Retain_Set") for i in range(FICTITIOUS, FICTITIOUS + CELEBRITIES)]
    _write(root, "Full_Set", people)
    _write(root, "Retain_Set", celebrities)
    retain = {"forget_5": "retain_95", "forget_10": "retain_90", "forget_15": "retain_85"}
    for split, n in SPLITS.items():
        _write(root, split, people[:n])
        _write(root, retain[split], people[n:])
    tests = [{**{k: v for k, v in p.items() if k != "image"},
              "images": [{"bytes": _png(rng), "path": f"test/{p['ID']}_{j}.png"} for j in range(2)]}
             for p in people]
    _write(root, "Test_Set", tests, shards=2)
    ft = []
    for p in people:
        pairs = [{"Question": "Who is this person?", "Answer": p["answer"]}] + \
                [{"Question": q["Question"], "Answer": q["Ground_Truth"]} for q in p["Generation_Task"]]
        ft.append({"image": p["image"], "metadata": json.dumps(pairs)})
    _write(root, "ft_Data", ft)
    return root
