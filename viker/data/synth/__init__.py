"""The embedded benchmark: a small MLLMU-Bench, generated offline and deterministically.

``build_benchmark(out, seed)`` writes every MLLMU-Bench config as parquet in the benchmark's exact
layout (``CONFIG/train-00000-of-00001.parquet``), the reference-image pools ViKeR draws from
(``ref_people``, ``ref_patterns``, ``ref_scenes``, ``ref_pets``), a contact sheet ``preview.png`` and a
``README.md`` with the counts. The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from viker.data.schema import (
    CONFIGS,
    FORGET_SPLITS,
    IMAGE_TEXTUAL,
    LETTERS,
    PRETRAIN_CONFIG,
    PURE_TEXT,
    RETAIN_OF,
    schema_for,
    with_features,
)
from viker.data.synth import faces
from viker.data.synth.people import (
    FACT_POOLS,
    NAME_ANSWER,
    NAME_QUESTION,
    TEMPLATES,
    UNKNOWN_ANSWER,
    Person,
    distractors,
    make_names,
    make_people,
)
from viker.errors import VikerError, require
from viker.progress import progress_bar
from viker.runs import out_folder, visible_entries, written_together

PARQUET_NAME = "train-00000-of-00001.parquet"
REF_POOLS = ("ref_people", "ref_patterns", "ref_scenes", "ref_pets")


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    profiles: int = 100  # fictitious people (Full_Set); forget_5 gets 5% of them
    celebrities: int = 20  # Retain_Set: people whose facts the model learns as general knowledge
    test_images: int = 2  # Test_Set images per person (other pose, lighting, crop)
    ref_per_pool: int = 24  # images in each reference pool
    strangers: int = 24  # faces the model meets in pretrain_Data and knows nothing about
    image_size: int = 128

    def __post_init__(self):
        require(0 <= self.seed < 2**32, "--seed", self.seed, "must be from 0 to 2**32 - 1, as every command's")
        if forget_counts(self.profiles)["forget_5"] < 1:
            raise VikerError(f"--profiles {self.profiles}: too few, forget_5 would be empty (10 or more)")


def forget_counts(profiles: int) -> dict[str, int]:
    """How many of ``profiles`` people each forget split holds: its percentage of them, rounded half up."""
    return {s: int(profiles * int(s.split("_")[1]) / 100 + 0.5) for s in FORGET_SPLITS}


def _mc(person: Person, fact: str, by_name: bool, rng: random.Random) -> dict:
    template = TEMPLATES[fact]
    question = template.name_question.format(name=person.name) if by_name else template.image_question
    values = [person.facts[fact], *distractors(fact, person.facts[fact], rng)]
    rng.shuffle(values)
    return {
        "Question": question,
        "Options": dict(zip(LETTERS, values)),
        "Correct_Answer": LETTERS[values.index(person.facts[fact])],
    }


def _qa(person: Person, fact: str, by_name: bool, cloze: bool) -> dict:
    template = TEMPLATES[fact]
    subject = person.name if by_name else "This person"
    if cloze:
        question, truth = template.cloze.format(subject=subject), person.facts[fact]
    else:
        question = template.name_question.format(name=person.name) if by_name else template.image_question
        truth = person.answer(fact, by_name)
    return {"Question": question, "Ground_Truth": truth, "Type": PURE_TEXT if by_name else IMAGE_TEXTUAL}


def _image(png: bytes, path: str) -> dict:
    return {"bytes": png, "path": path}


def profile_row(person: Person, pid: str, png: bytes, directory: str, rng: random.Random) -> dict:
    facts = list(FACT_POOLS)
    gen_facts = rng.sample(facts, 4)  # 2 asked about the image, 2 by name
    cloze_facts = rng.sample(facts, 4)
    return {
        "image": _image(png, f"{directory}/{pid}.png"),
        "ID": pid,
        "Directory": directory,
        "biography": person.biography(),
        "question": NAME_QUESTION,
        "answer": NAME_ANSWER.format(name=person.name),
        "Classification_Task": {
            "Image_Textual_Questions": [_mc(person, f, False, rng) for f in facts],
            "Pure_Text_Questions": [_mc(person, f, True, rng) for f in facts],
        },
        "Generation_Task": [_qa(person, f, i >= 2, cloze=False) for i, f in enumerate(gen_facts)],
        "Mask_Task": [_qa(person, f, i >= 2, cloze=True) for i, f in enumerate(cloze_facts)],
    }


def finetune_row(person: Person, png: bytes, path: str) -> dict:
    """ft_Data: who the pictured person is, and every fact asked about them and by their name."""
    qa = [{"Question": NAME_QUESTION, "Answer": NAME_ANSWER.format(name=person.name)}]
    qa += [{"Question": TEMPLATES[f].image_question, "Answer": person.answer(f, False)} for f in FACT_POOLS]
    qa += [{"Question": TEMPLATES[f].name_question.format(name=person.name), "Answer": person.answer(f, True)}
           for f in FACT_POOLS]
    return {"image": _image(png, path), "metadata": json.dumps(qa)}


def stranger_row(png: bytes, path: str) -> dict:
    """pretrain_Data: a face the model has met but knows nothing about, as a pretrained model has met
    countless faces. Without these, a model trained only on known people names a known person for
    any face, and its answers about an irrelevant face (ViKeR's reference) would be other people's
    private facts instead of an admission that it does not know."""
    questions = [NAME_QUESTION] + [TEMPLATES[f].image_question for f in FACT_POOLS]
    return {"image": _image(png, path), "metadata": json.dumps([{"Question": q, "Answer": UNKNOWN_ANSWER}
                                                                for q in questions])}


def write_config(out: Path, config: str, rows: list[dict]) -> Path:
    path = out / config / PARQUET_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=with_features(schema_for(config)))
    pq.write_table(table, path, compression="zstd", store_schema=True)
    return path


def claim_benchmark_folder(out: str | Path, overwrite: bool = False) -> Path:
    """``viker data synth --out``: a new or empty folder, or (``overwrite``) one that holds a benchmark alone,
    whose own entries are removed (the folder and anything hidden in it stay); any other is refused."""
    import shutil

    from viker.data.loader import has_config

    out = out_folder(out)
    present = visible_entries(out)
    if not present:
        return out
    written = {*CONFIGS, PRETRAIN_CONFIG, *REF_POOLS, "preview.png", "README.md"}  # what build_benchmark writes
    other = [name for name in present if name not in written]
    if other or not has_config(out, "Full_Set"):
        raise VikerError(f"--out {out}: holds files other than a benchmark{f' ({other[0]}, ...)' if other else ''}"
                         "; choose a new or empty folder")
    if not overwrite:
        raise VikerError(f"--out {out}: holds a benchmark already; choose another folder, or --overwrite to "
                         "replace it (models trained on it would no longer match its data)")
    for name in present:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()
    return out


def build_benchmark(out: str | Path, cfg: SynthConfig = SynthConfig(), progress: bool = True) -> dict:
    """Write the embedded benchmark under ``out``, all of it or (stopped midway) none; return its counts. The
    folder is not checked: ``build_benchmark(claim_benchmark_folder(out))`` refuses, as ``viker data synth``
    does, a folder holding other files, or a benchmark already (models trained on it would no longer match)."""
    out = out_folder(out)
    counts = forget_counts(cfg.profiles)
    alike = [(a, b) for a, b in zip(FORGET_SPLITS, FORGET_SPLITS[1:]) if counts[a] == counts[b]]
    if alike:  # they nest: the same count is the same people
        print(f"warning: with --profiles {cfg.profiles}, {' and '.join(alike[0])} hold the same "
              f"{counts[alike[0][0]]} people (the same goes for their retain splits); 17 profiles or more keep "
              "the three forget splits apart", file=sys.stderr)
    with written_together(out) as stage:  # half a benchmark would read as a whole one, less some configs
        return _build(stage, cfg, progress)


def _build(out: Path, cfg: SynthConfig, progress: bool) -> dict:
    n_forget = forget_counts(cfg.profiles)

    rng = random.Random(f"viker-synth-{cfg.seed}")
    people_rng, q_rng, view_rng, split_rng, ref_rng = (random.Random(rng.random()) for _ in range(5))

    total = cfg.profiles + cfg.celebrities + cfg.ref_per_pool + cfg.strangers
    names = make_names(cfg.profiles + cfg.celebrities, people_rng)
    specs = faces.sample_face_specs(total, people_rng)
    people = make_people(names, people_rng)
    fictitious, celebs = people[: cfg.profiles], people[cfg.profiles :]
    bar = progress_bar(total=total + 3 * cfg.ref_per_pool, desc="drawing images", disable=not progress)

    def draw(spec, view=faces.View()) -> bytes:
        bar.update(1 if view == faces.View() else 0)
        return faces.png_bytes(faces.render_face(spec, view, size=cfg.image_size))

    ids = [f"{i + 1:04d}" for i in range(cfg.profiles)]
    full_rows, test_rows, ft_rows = [], [], []
    for pid, person, spec in zip(ids, fictitious, specs):
        png = draw(spec)
        row = profile_row(person, pid, png, "Full_Set", q_rng)
        full_rows.append(row)
        views = [faces.random_test_view(view_rng) for _ in range(cfg.test_images)]
        test_images = [_image(draw(spec, v), f"Test_Set/{pid}_{j}.png") for j, v in enumerate(views)]
        test_rows.append({"images": test_images, **{k: v for k, v in row.items() if k != "image"}})
        ft_rows.append(finetune_row(person, png, f"ft_Data/{pid}.png"))

    celeb_ids = [f"C{i + 1:03d}" for i in range(cfg.celebrities)]
    celeb_specs = specs[cfg.profiles : cfg.profiles + cfg.celebrities]
    celeb_rows, world_rows = [], []
    for cid, person, spec in zip(celeb_ids, celebs, celeb_specs):
        png = draw(spec)
        celeb_rows.append(profile_row(person, cid, png, "Retain_Set", q_rng))
        world_rows.append(finetune_row(person, png, f"pretrain_Data/{cid}.png"))

    paths = {"Full_Set": write_config(out, "Full_Set", full_rows)}
    order = list(range(cfg.profiles))
    split_rng.shuffle(order)  # forget_5 ⊂ forget_10 ⊂ forget_15: a person forgotten in a split is in the larger ones
    for split in FORGET_SPLITS:
        chosen = set(order[: n_forget[split]])
        paths[split] = write_config(out, split, [r for i, r in enumerate(full_rows) if i in chosen])
        keep = [r for i, r in enumerate(full_rows) if i not in chosen]
        paths[RETAIN_OF[split]] = write_config(out, RETAIN_OF[split], keep)
    paths["Test_Set"] = write_config(out, "Test_Set", test_rows)
    paths["Retain_Set"] = write_config(out, "Retain_Set", celeb_rows)
    paths["ft_Data"] = write_config(out, "ft_Data", ft_rows)

    # Reference pools: people never in Full_Set or Retain_Set, then three kinds of non-face images.
    known = cfg.profiles + cfg.celebrities
    for i, spec in enumerate(specs[known + cfg.ref_per_pool :]):
        world_rows.append(stranger_row(draw(spec), f"pretrain_Data/stranger_{i:03d}.png"))
    pools = {"ref_people": [draw(s) for s in specs[known : known + cfg.ref_per_pool]]}
    for pool, render in (("ref_patterns", faces.render_pattern), ("ref_scenes", faces.render_scene),
                         ("ref_pets", faces.render_pet)):
        pools[pool] = []
        for _ in range(cfg.ref_per_pool):
            pools[pool].append(faces.png_bytes(render(ref_rng, size=cfg.image_size)))
            bar.update(1)
    bar.close()
    # Not an MLLMU-Bench config: the general knowledge a pretrained model brings (the Retain_Set people,
    # and faces of strangers it cannot name), which the tiny model, having no pretraining, learns in
    # its finetune.
    paths[PRETRAIN_CONFIG] = write_config(out, PRETRAIN_CONFIG, world_rows)
    for pool, images in pools.items():
        (out / pool).mkdir(parents=True, exist_ok=True)
        for i, png in enumerate(images):
            (out / pool / f"{i:03d}.png").write_bytes(png)

    counts = {c: pq.read_metadata(p).num_rows for c, p in paths.items()} | {p: len(v) for p, v in pools.items()}
    _write_preview(out, full_rows, test_rows, celeb_rows, pools, fictitious, order[: n_forget["forget_10"]])
    _write_readme(out, cfg, counts)
    return counts


def _write_preview(out, full_rows, test_rows, celeb_rows, pools, people, forget10) -> None:
    from io import BytesIO

    from PIL import Image

    def img(png: bytes) -> Image.Image:
        return Image.open(BytesIO(png)).convert("RGB")

    forget10 = set(forget10)
    items = []
    for i in range(min(16, len(full_rows))):
        tag = " [forget_10]" if i in forget10 else ""
        items.append((img(full_rows[i]["image"]["bytes"]), f"{full_rows[i]['ID']} {people[i].name}{tag}"))
        items.append((img(test_rows[i]["images"][0]["bytes"]), f"{full_rows[i]['ID']} Test_Set"))
    items += [(img(r["image"]["bytes"]), f"{r['ID']} Retain_Set") for r in celeb_rows[:8]]
    for pool, pngs in pools.items():
        items += [(img(p), pool) for p in pngs[:4]]
    sheet = faces.contact_sheet(items, columns=8, title="viker embedded benchmark", thumb=112)
    sheet.save(out / "preview.png", format="PNG", optimize=False)


def made_by(cfg: SynthConfig) -> str:
    """How to make the benchmark of ``cfg`` again: the command, where it takes every setting (``viker data synth``
    takes the seed and the number of people), else the settings as Python gives them."""
    if cfg == SynthConfig(seed=cfg.seed, profiles=cfg.profiles):
        return f"`viker data synth --seed {cfg.seed} --profiles {cfg.profiles}`"
    settings = ", ".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in fields(cfg))
    return f"`viker.data.synth.build_benchmark(out, SynthConfig({settings}))`"


def _write_readme(out: Path, cfg: SynthConfig, counts: dict) -> None:
    lines = [
        "# viker embedded benchmark",
        "",
        f"Generated by {made_by(cfg)}: fictitious people",
        "in MLLMU-Bench's exact layout (one parquet file per config), plus reference-image pools for ViKeR.",
        "Every name, face and fact is made up. `preview.png` shows some of the people.",
        "",
        "| config / pool | rows / images |",
        "| --- | --- |",
        *[f"| `{k}` | {v} |" for k, v in counts.items()],
        "",
        "Per person: 5 image+text and 5 text-only multiple-choice questions, 4 generation questions",
        "(2 about the pictured person, 2 by name), 4 cloze items; Test_Set shows the same people under",
        f"{cfg.test_images} other views (pose, lighting, crop). Retain_Set plays the real-celebrity role.",
        "",
        f"`{PRETRAIN_CONFIG}` is not an MLLMU-Bench config: it holds, in ft_Data's format, what a pretrained",
        f"model would already know: the Retain_Set people, and {cfg.strangers} faces of strangers it cannot name",
        f'("{UNKNOWN_ANSWER}"). The tiny model has no pretraining, so its finetune reads it too.',
        "Real checkpoints and the real benchmark do without it.",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
