"""CLEAR: every config loads with its full schema (or fails on a bad row with file:row), the protocol runs
end to end (finetune -> unlearn with every method -> eval), and the metrics match hand computation."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import sys
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from viker.cli import main
from viker.data import clear
from viker.errors import VikerError
from viker.eval.clear import (
    UTILITY_KEYS,
    ClearEvalConfig,
    ItemScore,
    check_retain_model,
    clear_eval_sets,
    model_utility,
    other_recipe,
    set_metrics,
)
from viker.eval.metrics import coherence_mean, forget_quality, harmonic_mean
from viker.methods.reference import reference_pool_and_source
from viker.prompts import CAPTION_QUESTION, NAME_QUESTION

# CLEAR's columns as its dataset card describes them, written out here independently of viker's schema module.
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CAPTION_COLUMNS = [("image", IMAGE), ("caption", pa.string()), ("name", pa.string())]
TOFU_COLUMNS = [("image", IMAGE), ("caption", pa.string()), ("question", pa.string()), ("answer", pa.string())]
PERTURBED_COLUMNS = CAPTION_COLUMNS + [("paraphrased_caption", pa.string()),
                                       ("perturbed_captions", pa.list_(pa.string())),
                                       ("perturbed_names", pa.list_(pa.string()))]
REAL_FACES_COLUMNS = [("image", IMAGE), ("answer", pa.string()), ("options", pa.list_(pa.string()))]
REAL_WORLD_COLUMNS = [("question", pa.string()), ("answer", pa.string()), ("image", IMAGE), ("prompt", pa.string()),
                      ("options", pa.list_(pa.string()))]

PERSONS = ["Ava Lind", "Bo Karsk", "Cyr Mott", "Dia Renn"]
JOBS = ["pilot", "baker", "nurse", "chef"]
SPLITS = {"forget01": [0], "forget05": [0, 1], "forget10": [0, 1]}  # persons 2 and 3 are never forgotten
RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def png(seed: int) -> bytes:
    img = Image.new("RGB", (32, 32), ((seed * 67) % 256, (seed * 131) % 256, (seed * 29) % 256))
    ImageDraw.Draw(img).ellipse((6 + seed % 5, 4, 26, 28), fill=((seed * 13) % 256, 90, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def caption_rows(persons):
    return [{"image": {"bytes": png(10 * p + k), "path": f"{p}_{k}.png"},
             "caption": f"{PERSONS[p]} smiles as a {JOBS[p]} in photo {k}.", "name": PERSONS[p]}
            for p in persons for k in range(2)]


def tofu_rows(persons):
    return [{"image": None, "caption": None,
             "question": f"What does {PERSONS[p]} do?", "answer": f"{PERSONS[p]} works as a {JOBS[p]}."}
            for p in persons]


def perturbed_rows(persons):
    rows = caption_rows(persons)
    for row, p in zip(rows, [p for p in persons for _ in range(2)]):
        row |= {"paraphrased_caption": f"A photo of {PERSONS[p]}, a {JOBS[p]}, smiling.",
                "perturbed_captions": [f"{PERSONS[p]} frowns as a {JOBS[(p + 1) % 4]}.",
                                       f"{PERSONS[p]} sleeps as a {JOBS[(p + 2) % 4]}."],
                "perturbed_names": [PERSONS[(p + 1) % 4], PERSONS[(p + 2) % 4]]}
    return rows


def _faces(root, which: str) -> list[bytes]:
    """The forget10 (``which="forget"``) or retain90 persons' face images, each once."""
    return list(dict.fromkeys(p.image for p in clear.load_portraits(root, clear.split_of("forget10", which))))


def write(root, config, rows, columns):
    (root / config).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(columns)),
                   root / config / "train-00000-of-00001.parquet")


def build_clear(root):
    everyone = range(len(PERSONS))
    for config, persons in [("full", everyone)] + [(c, SPLITS[f]) for f, c in [(f, f) for f in SPLITS]] + \
            [(RETAIN[f], [p for p in everyone if p not in SPLITS[f]]) for f in SPLITS]:
        write(root, config, caption_rows(persons), CAPTION_COLUMNS)
        write(root, config + "+tofu", [{"image": r["image"], "caption": r["caption"], "question": None, "answer": None}
                                       for r in caption_rows(persons)] + tofu_rows(persons), TOFU_COLUMNS)
    for forget, persons in SPLITS.items():
        write(root, forget + "_perturbed", perturbed_rows(persons), PERTURBED_COLUMNS)
    write(root, "retain_perturbed", perturbed_rows([2, 3]), PERTURBED_COLUMNS)
    celebrities = ["Mara Quist", "Olof Brun", "Tess Wahl"]
    write(root, "real_faces", [{"image": {"bytes": png(100 + i), "path": None}, "answer": name,
                                "options": [name, *[c for c in celebrities if c != name]]}
                               for i, name in enumerate(celebrities)], REAL_FACES_COLUMNS)
    write(root, "real_world", [{"question": f"Which city is shown here ({i})?", "answer": city, "prompt": "Answer: ",
                                "image": {"bytes": png(200 + i), "path": None},
                                "options": [city, "Oslo" if city != "Oslo" else "Lima", "Riga"]}
                               for i, city in enumerate(["Paris", "Oslo", "Rome"])], REAL_WORLD_COLUMNS)
    return root


@pytest.fixture(scope="module")
def clear_dir(tmp_path_factory):
    return build_clear(tmp_path_factory.mktemp("clear"))


def _copy(clear_dir, tmp_path):
    root = tmp_path / "clear"
    shutil.copytree(clear_dir, root)
    return root


def _edit(root, config, edit):
    path = root / config / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(edit(table.to_pylist(), table.schema), path)


# ------------------------------------------------------------------------------------ loading


def test_every_config_loads_as_typed_records(clear_dir):
    for config in clear.CONFIGS:
        assert clear.has_config(clear_dir, config), config
    full = clear.load_portraits(clear_dir, "full")
    assert len(full) == 8 and {p.name for p in full} == set(PERSONS)
    assert all(Image.open(io.BytesIO(p.image)).size == (32, 32) for p in full)
    questions = clear.tofu_questions(clear_dir, "forget10+tofu")  # its caption rows name no one, as published
    assert [q.question for q in questions] == ["What does Ava Lind do?", "What does Bo Karsk do?"]
    assert not any(q.with_image for q in questions)
    perturbed = clear.load_portraits(clear_dir, "forget01_perturbed")[0]
    assert perturbed.paraphrased_caption.startswith("A photo of Ava Lind")
    assert perturbed.perturbed_names == ("Bo Karsk", "Cyr Mott") and len(perturbed.perturbed_captions) == 2
    faces, skipped = clear.load_option_questions(clear_dir, "real_faces")
    assert skipped == 0 and faces[0].question == NAME_QUESTION
    assert faces[0].answer == "Mara Quist" and faces[0].wrong == ("Olof Brun", "Tess Wahl")  # answer left out
    world, _ = clear.load_option_questions(clear_dir, "real_world")
    assert world[1].answer == "Oslo" and world[1].wrong == ("Lima", "Riga")


def test_finetune_and_unlearning_examples(clear_dir):
    examples = clear.finetune_examples(clear_dir)
    captions = [e for e in examples if e.kind == "caption"]
    texts = [e for e in examples if e.kind == "tofu"]
    assert len(captions) == 8 and all(e.image and e.question == CAPTION_QUESTION for e in captions)
    assert len(texts) == 4 and all(e.image is None for e in texts)  # full+tofu's questions, text only
    # The reference for forget quality never sees a forget person, in captions or in text questions.
    without = clear.finetune_examples(clear_dir, without="forget10")
    assert {e.profile_id for e in without if e.kind == "caption"} == {"Cyr Mott", "Dia Renn"}
    assert not any("Ava Lind" in e.answer or "Bo Karsk" in e.answer for e in without)
    data, used = clear.unlearning_data(clear_dir, "forget05")
    assert used == {"benchmark": "clear", "forget_config": "forget05", "retain_config": "retain95"}
    assert {e.kind for e in data["forget"]} == {"caption"} and len(data["retain"]) == 4
    data, used = clear.unlearning_data(clear_dir, "forget05+tofu")
    assert used["retain_config"] == "retain95+tofu"
    assert sum(e.image is None for e in data["forget"]) == 2 and len(data["retain"]) == 6
    sets, skipped = clear.eval_items(clear_dir, "forget10")
    assert {k: len(v) for k, v in sets.items()} == {"forget": 4, "forget_names": 4, "retain": 4,
                                                    "retain_names": 4, "real_faces": 3, "real_world": 3}
    assert skipped == {"real_faces": 0, "real_world": 0}


def test_the_retain_model_learns_the_vanilla_models_recipe_or_is_refused(clear_dir, tmp_path):
    """Forget quality compares a model with one never trained on the forget persons, by the same recipe: a
    copy with full+tofu and without retain90+tofu cannot give that model TOFU's questions, so it is refused."""
    without = {e.kind for e in clear.finetune_examples(clear_dir, without="forget10")}
    assert without == {e.kind for e in clear.finetune_examples(clear_dir)} == {"caption", "tofu"}
    root = _copy(clear_dir, tmp_path)
    shutil.rmtree(root / "retain90+tofu")
    with pytest.raises(VikerError, match=r"has full\+tofu and not retain90\+tofu: a model finetuned --without "
                                         r"forget10 would learn captions alone"):
        clear.finetune_examples(root, without="forget10")
    shutil.rmtree(root / "full+tofu")  # neither: captions alone, for both
    assert {e.kind for e in clear.finetune_examples(root, without="forget10")} == {"caption"}


def test_images_stored_as_files_load_in_every_config_with_tofu_too(clear_dir, tmp_path):
    # The Hugging Face Image feature may store {bytes: None, path}; in a +tofu config such a row is
    # still a caption row with its image, not a text-only TOFU question.
    root = _copy(clear_dir, tmp_path)
    for config in ("full", "full+tofu", "forget10", "forget10+tofu"):
        def to_files(rows, schema, config=config):
            for i, row in enumerate(rows):
                if row["image"] and row["image"]["bytes"]:
                    (root / config / f"img{i}.png").write_bytes(row["image"]["bytes"])
                    row["image"] = {"bytes": None, "path": f"img{i}.png"}
            return pa.Table.from_pylist(rows, schema=schema)
        _edit(root, config, to_files)
    assert len(clear.tofu_questions(root, "forget10+tofu")) == 2  # the caption rows by path are not questions
    assert clear.finetune_examples(root) == clear.finetune_examples(clear_dir)


def test_a_bad_without_split_is_named_by_its_own_flag(clear_dir):
    with pytest.raises(VikerError, match=r"^--without forget_10: choose from forget01"):
        clear.finetune_examples(clear_dir, without="forget_10")


def test_one_benchmark_folder_given_as_the_other_is_named_with_the_flag_that_reads_it(clear_dir, bench_dir):
    from viker.data.loader import load_profiles

    with pytest.raises(VikerError, match=r": an MLLMU-Bench folder \(configs Full_Set, .* --benchmark mllmu$"):
        clear.finetune_examples(bench_dir)
    with pytest.raises(VikerError, match=r": a CLEAR folder \(configs full, .*read it with --benchmark clear$"):
        load_profiles(clear_dir, "forget_10")


def test_people_references_on_clear_are_its_real_faces(clear_dir):
    # CLEAR has no image pools: the real people of real_faces play the part of MLLMU-Bench's Retain_Set
    pool, source = reference_pool_and_source("people", clear_dir, "forget10")
    faces, _ = clear.load_option_questions(clear_dir, "real_faces")
    assert pool == [f.image for f in faces] and source.startswith("CLEAR real_faces")
    assert not set(pool) & set(_faces(clear_dir, "forget"))


def test_forget_references_on_clear_are_never_the_same_persons_other_photos(tiny_dir, clear_dir, tmp_path, capsys):
    """A CLEAR person has several photos: `--refs forget` draws another forget person's, never their own."""
    import random

    from viker.methods.reference import choose_reference_images, pool_owners

    pool = _faces(clear_dir, "forget")  # Ava Lind's two photos and Bo Karsk's two
    owners = pool_owners("forget", clear_dir, "forget10")
    assert sorted(set(owners.values())) == ["Ava Lind", "Bo Karsk"] and set(owners) == set(pool)
    for example in clear.unlearning_data(clear_dir, "forget10")[0]["forget"]:
        others = {img for img in pool if owners[img] != example.profile_id}
        assert set(choose_reference_images(example, pool, 2, random.Random(0), owners)) == others
    # through a run: two usable images per example, so k=3 is refused
    code = main(["unlearn", "--benchmark", "clear", "--model", str(tiny_dir), "--data", str(clear_dir),
                 "--forget", "forget10", "--method", "viker", "--refs", "forget", "--k", "3", "--max-steps", "1",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")])
    assert code == 2 and ("the reference pool (--refs) has 2 usable images (not this person's), fewer than k=3; "
                          "lower --k or choose --refs with more images") in capsys.readouterr().err
    alone = [img for img in pool if owners[img] == example.profile_id]  # only the person's own: no --k helps
    with pytest.raises(VikerError, match=r"has 0 usable images \(not this person's\), fewer than k=1; choose --refs "):
        choose_reference_images(example, alone, 1, random.Random(0), owners)


def test_keytokens_on_clear_shows_the_forget_captions_a_viker_run_trained_on(tiny_dir, clear_dir, tmp_path,
                                                                            monkeypatch):
    """The key-token page of a CLEAR split: the same answers, references and cached R̂ as its ViKeR run."""
    monkeypatch.setenv("VIKER_CACHE", str(tmp_path / "cache"))
    common = ["--model", str(tiny_dir), "--data", str(clear_dir), "--benchmark", "clear", "--k", "2"]
    assert main(["unlearn", *common, "--method", "viker", "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
    cached = sorted((tmp_path / "cache").iterdir())
    page = tmp_path / "keys.html"
    assert main(["keytokens", *common, "--out", str(page)]) == 0
    assert sorted((tmp_path / "cache").iterdir()) == cached  # its R̂, not one computed again
    answers = clear.unlearning_data(clear_dir, "forget10")[0]["forget"]
    assert page.read_text().count("<div class='a'>") == len(answers) > 0


def test_a_clear_folder_read_as_mllmu_bench_is_one_error_with_no_warning_before_it(clear_dir, tmp_path, capsys):
    """A CLEAR model's key-token page asked without --benchmark clear: the folder is refused for what it is, with
    no warning of figures from a run that never happens ahead of it."""
    assert main(["finetune", "--data", str(clear_dir), "--benchmark", "clear", "--max-steps", "1",
                 "--out", str(tmp_path / "vanilla")]) == 0
    capsys.readouterr()
    assert main(["keytokens", "--model", str(tmp_path / "vanilla"), "--data", str(clear_dir),
                 "--out", str(tmp_path / "keys.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--benchmark clear" in err and "warning" not in err


def test_a_hub_id_loads_through_datasets(clear_dir, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from datasets.table import InMemoryTable

    asked = []

    def load_dataset(repo, config, split):
        asked.append((repo, config, split))
        return datasets.Dataset(InMemoryTable(pq.read_table(clear_dir / config / "train-00000-of-00001.parquet")))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    hub = clear.load_portraits("therem/CLEAR", "forget10_perturbed")
    assert asked == [("therem/CLEAR", "forget10_perturbed", "train")]
    local = clear.load_portraits(clear_dir, "forget10_perturbed")
    assert [p.__class__(**{**p.__dict__, "source": ""}) for p in hub] == \
        [p.__class__(**{**p.__dict__, "source": ""}) for p in local]
    assert hub[1].source == "therem/CLEAR[forget10_perturbed]:row 1"
    # a hub id holds CLEAR's configs (with TOFU's too), not MLLMU-Bench's
    assert clear.has_config("therem/CLEAR", "forget10+tofu") and not clear.has_config("therem/CLEAR", "Retain_Set")


def test_a_tiny_model_is_built_for_clear_read_from_a_hub_id(clear_dir, tmp_path, monkeypatch):
    """A hub id shows no configs to tell its layout by: --benchmark says it, and the tiny model's tokenizer is
    trained on CLEAR's text (as from the local folder), not looked for in MLLMU-Bench's configs."""
    datasets = pytest.importorskip("datasets")
    from datasets.table import InMemoryTable

    def load_dataset(repo, config, split):
        assert repo == "therem/CLEAR"
        return datasets.Dataset(InMemoryTable(pq.read_table(next((clear_dir / config).glob("*.parquet")))))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    common = ["finetune", "--benchmark", "clear", "--model", "tiny", "--max-steps", "1"]
    assert main([*common, "--data", "therem/CLEAR", "--out", str(tmp_path / "hub")]) == 0
    assert main([*common, "--data", str(clear_dir), "--out", str(tmp_path / "local")]) == 0
    vocabulary = [json.loads((tmp_path / run / "model" / "tokenizer.json").read_text())["model"]["vocab"]
                  for run in ("hub", "local")]
    assert vocabulary[0] == vocabulary[1]


def test_a_hub_id_without_datasets_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(VikerError, match=r"therem/CLEAR: reading a benchmark from the hub needs the `datasets`"):
        clear.load_portraits("therem/CLEAR", "full")


def _set(rows, schema, column, value, row=0):
    rows[row][column] = value
    return pa.Table.from_pylist(rows, schema=schema)


def _drop_image_path(rows, schema):
    images = [{"bytes": r["image"]["bytes"]} for r in rows]
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.set_column(0, "image", pa.array(images, type=pa.struct([("bytes", pa.binary())])))


def _captions_as_text(rows, schema):
    table = pa.Table.from_pylist(rows, schema=schema)
    i = schema.get_field_index("perturbed_captions")
    return table.set_column(i, "perturbed_captions", pa.array([json.dumps(r["perturbed_captions"]) for r in rows]))


MALFORMED = {
    "missing nested field": ("forget10", _drop_image_path, "column 'image' lacks nested field 'path'"),
    "missing column": ("forget10_perturbed", lambda r, s: pa.Table.from_pylist(r, schema=s).drop_columns(
        ["paraphrased_caption"]), "forget10_perturbed/train-00000-of-00001.parquet: missing column "
                                  "'paraphrased_caption'"),
    "list as text": ("forget10_perturbed", _captions_as_text, "column 'perturbed_captions' should be a list"),
    "empty image": ("forget10", lambda r, s: _set(r, s, "image", {"bytes": b"", "path": None}, 1),
                    "forget10/train-00000-of-00001.parquet:row 1: empty image"),
    "corrupt image": ("forget10", lambda r, s: _set(r, s, "image", {"bytes": r[0]["image"]["bytes"][:40],
                                                                     "path": None}),
                      "forget10/train-00000-of-00001.parquet:row 0: unreadable image"),
    "caption row without image": ("forget10+tofu", lambda r, s: _set(r, s, "image", None, 2),
                                  "forget10+tofu/train-00000-of-00001.parquet:row 2: a caption row without an image"),
    "text row without answer": ("forget10+tofu", lambda r, s: _set(r, s, "answer", "", 4),
                                "forget10+tofu/train-00000-of-00001.parquet:row 4: empty answer"),
    "empty wrong names": ("forget10_perturbed", lambda r, s: _set(r, s, "perturbed_names", []),
                          "forget10_perturbed/train-00000-of-00001.parquet:row 0: empty perturbed_names"),
    "empty caption": ("forget10", lambda r, s: _set(r, s, "caption", None),
                      "forget10/train-00000-of-00001.parquet:row 0: empty caption"),
    "only the right name": ("forget10_perturbed", lambda r, s: _set(r, s, "perturbed_names", [r[0]["name"]]),
                            "forget10_perturbed/train-00000-of-00001.parquet:row 0: every text of perturbed_names is "
                            "the right answer itself"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_rows_are_one_line_errors_naming_file_and_row(case, clear_dir, tmp_path):
    config, edit, message = MALFORMED[case]
    root = _copy(clear_dir, tmp_path)
    _edit(root, config, edit)
    with pytest.raises(VikerError) as err:
        clear.tofu_questions(root, config) if config.endswith("+tofu") else clear.load_portraits(root, config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_right_answer_listed_among_the_wrong_ones_is_not_counted_against_itself(clear_dir, tmp_path):
    """The name in perturbed_names, the caption or its paraphrase in perturbed_captions, lowered Prob. and the
    truth ratio as if the model preferred a wrong answer, while real_faces' options already had the answer taken
    out."""
    root = _copy(clear_dir, tmp_path)
    row = clear.load_portraits(clear_dir, "forget10_perturbed")[0]
    _edit(root, "forget10_perturbed", lambda r, s: _set(r, s, "perturbed_names", [f" {r[0]['name']}",
                                                                                    *r[0]["perturbed_names"]]))
    _edit(root, "forget10_perturbed", lambda r, s: _set(r, s, "perturbed_captions", [
        r[0]["caption"], *r[0]["perturbed_captions"], r[0]["paraphrased_caption"].replace(" ", "  ")]))
    edited = clear.load_portraits(root, "forget10_perturbed")[0]
    assert (edited.perturbed_names, edited.perturbed_captions) == (row.perturbed_names, row.perturbed_captions)


def test_a_person_in_both_the_forget_and_the_retain_split_is_refused_however_spaced(clear_dir, tmp_path):
    """A forget person's row copied into the retain split with a space after the name was both forgotten and
    retained, in unlearning and in evaluation, where the same name exactly was refused."""
    root = _copy(clear_dir, tmp_path)
    for forget, retain in (("forget10", "retain90"), ("forget10_perturbed", "retain_perturbed")):
        row = pq.read_table(root / forget / "train-00000-of-00001.parquet").to_pylist()[0]
        _edit(root, retain, lambda rows, schema: pa.Table.from_pylist(
            rows + [row | {"name": f" {row['name']}  "}], schema=schema))
        read = partial(clear.unlearning_data, root, "forget10") if forget == "forget10" else \
            partial(clear.eval_items, root, "forget10")
        with pytest.raises(VikerError, match=re.escape(f"{forget} and {retain} share persons {row['name']}; a person "
                                                       "cannot be both forgotten and retained")):
            read()


def test_a_photo_in_both_the_forget_and_the_retain_split_under_another_name_is_refused(clear_dir, tmp_path):
    root = _copy(clear_dir, tmp_path)
    for forget, retain in (("forget10", "retain90"), ("forget10_perturbed", "retain_perturbed")):
        photo = pq.read_table(root / forget / "train-00000-of-00001.parquet").to_pylist()[0]
        _edit(root, retain, lambda rows, schema: pa.Table.from_pylist(
            [rows[0] | {"image": photo["image"]}, *rows[1:]], schema=schema))
        other = pq.read_table(root / retain / "train-00000-of-00001.parquet").to_pylist()[0]["name"]
        read = partial(clear.unlearning_data, root, "forget10") if forget == "forget10" else \
            partial(clear.eval_items, root, "forget10")
        with pytest.raises(VikerError, match=re.escape(f"{forget} and {retain} share 1 photo under two names "
                                                       f"({photo['name']} and {other})")):
            read()


def test_a_saved_truth_ratio_that_is_no_number_is_refused(clear_dir, tmp_path):
    """A reference whose losses overflowed wrote NaN ratios, and forget quality came out unmeasured without a word;
    a negative ratio, which exp never gives, was compared as it was."""
    from viker.eval.clear import read_truth_ratios

    saved = tmp_path / "forget_truth_ratios.json"
    for ratios, said in (([float("nan"), 1.0], "forget truth ratio 0 is nan"),
                         ([1.0, -1.0], "forget truth ratio 1 is -1.0")):
        saved.write_text(json.dumps({"forget_split": "forget10", "truth_ratios": {
            "forget": ratios, "forget_names": [1.0, 1.0]}}))
        with pytest.raises(VikerError, match=re.escape(f"{saved}: {said}, which no truth ratio")):
            read_truth_ratios(saved, "forget10", clear_dir)
    saved.write_text(json.dumps({"forget_split": "forget10", "truth_ratios": {  # an overflow and an underflow: kept
        "forget": [float("inf"), 0.0], "forget_names": [1.0, 1.0]}}))
    assert read_truth_ratios(saved, "forget10", clear_dir)["forget"] == [float("inf"), 0.0]


def test_a_caption_config_with_no_rows_is_refused_not_trained_as_text_alone(clear_dir, tmp_path):
    """An empty full finetuned the vanilla model on full+tofu's text questions alone, and an empty forget10 unlearned
    forget10+tofu's, without a word: no image was ever seen."""
    root = _copy(clear_dir, tmp_path)
    for config in ("full", "forget10"):
        _edit(root, config, lambda rows, schema: pa.Table.from_pylist([], schema=schema))
    with pytest.raises(VikerError, match=re.escape(f"{root}: full has no caption rows")):
        clear.finetune_examples(root)
    with pytest.raises(VikerError, match=re.escape(f"{root}: forget10 has no caption rows")):
        clear.unlearning_data(root, "forget10+tofu")


def test_option_rows_without_a_wrong_option_are_skipped_and_counted(clear_dir, tmp_path, capsys):
    root = _copy(clear_dir, tmp_path)
    _edit(root, "real_faces", lambda r, s: _set(r, s, "options", [r[0]["answer"]]))
    sets, skipped = clear.eval_items(root, "forget10")
    assert skipped == {"real_faces": 1, "real_world": 0}
    clear_eval_sets(root, ClearEvalConfig())  # and said, not only counted in metrics.json
    assert capsys.readouterr().err == (f"warning: {root}: 1 real_faces row skipped, no option of its differing from "
                                       "the answer (real_faces_skipped in metrics.json)\n")
    assert [item.answer for item in sets["real_faces"]] == ["Olof Brun", "Tess Wahl"]
    # every row skipped: the set is refused, saying why, not only that it has nothing
    _edit(root, "real_world", lambda rows, schema: pa.Table.from_pylist(
        [r | {"options": [r["answer"]]} for r in rows], schema=schema))
    with pytest.raises(VikerError, match=r"the real_world set has no items to evaluate \(its 3 rows were skipped: no "
                                         r"option of theirs differs from the answer\)$"):
        clear_eval_sets(root, ClearEvalConfig())


def test_spaces_around_or_doubled_in_an_option_or_answer_are_the_files(clear_dir, tmp_path):
    """An option's or answer's stray spaces would be scored as tokens of it, and the answer found among the
    options no longer: they are dropped as the rows are read."""
    root = _copy(clear_dir, tmp_path)
    padded = lambda text: f" {text.replace(' ', '  ')} "  # noqa: E731
    _edit(root, "real_faces", lambda rows, schema: pa.Table.from_pylist(
        [r | {"answer": padded(r["answer"]), "options": [padded(o) for o in r["options"]]} for r in rows],
        schema=schema))
    read = [[(q.question, q.answer, q.wrong) for q in clear.load_option_questions(folder, "real_faces")[0]]
            for folder in (root, clear_dir)]
    assert read[0] == read[1] and read[0]


def test_cli_reports_a_bad_row_and_writes_nothing(tiny_dir, clear_dir, tmp_path, capsys):
    root = _copy(clear_dir, tmp_path)
    _edit(root, "forget10_perturbed", lambda r, s: _set(r, s, "image", None, 3))
    out = tmp_path / "eval"
    code = main(["eval", "--benchmark", "clear", "--model", str(tiny_dir), "--data", str(root), "--out", str(out),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == \
        [f"error: {root}/forget10_perturbed/train-00000-of-00001.parquet:row 3: empty image"]
    assert not out.exists()


# ------------------------------------------------------------------------------------ metrics


def test_set_metrics_match_hand_computation():
    # Item A: answer loss ln 2 (P = 1/2), paraphrase loss 1, perturbed losses 2 and 3:
    #   tr = exp((2 + 3)/2 - 1) = e^1.5.
    # Item B: answer loss ln 4 (P = 1/4), paraphrase loss 2, perturbed loss 1: tr = exp(1 - 2) = e^-1.
    a = ItemScore(math.log(2), 1.0, (2.0, 3.0), rougeL_recall=1.0)
    b = ItemScore(math.log(4), 2.0, (1.0,), rougeL_recall=0.5)
    caption = set_metrics([a, b], forget=True, option_share=False)
    assert caption["prob"] == pytest.approx((1 / 2 + 1 / 4) / 2)  # exp(-loss) averaged
    assert caption["rougeL_recall"] == pytest.approx(0.75)
    # forget: mean(min(tr, 1/tr)) = (e^-1.5 + e^-1) / 2
    assert caption["truth_ratio"] == pytest.approx((math.exp(-1.5) + math.exp(-1)) / 2)
    option = set_metrics([a, b], forget=False, option_share=True)
    # share of the answer among per-token probabilities: A 0.5 / (0.5 + e^-2 + e^-3), B 0.25 / (0.25 + e^-1)
    share_a = 0.5 / (0.5 + math.exp(-2) + math.exp(-3))
    share_b = 0.25 / (0.25 + math.exp(-1))
    assert option["prob"] == pytest.approx((share_a + share_b) / 2)
    # elsewhere: mean(max(0, 1 - 1/tr)) = ((1 - e^-1.5) + max(0, 1 - e)) / 2 = (1 - e^-1.5) / 2
    assert option["truth_ratio"] == pytest.approx((1 - math.exp(-1.5)) / 2)


def test_model_utility_is_the_harmonic_mean_of_the_twelve_non_forget_metrics():
    assert len(UTILITY_KEYS) == 12 and not any(k.startswith("forget") for k in UTILITY_KEYS)
    metrics = {k: 0.5 for k in UTILITY_KEYS} | {"retain_prob": 0.25, "forget_prob": 0.0}
    # 12 / (11 / 0.5 + 1 / 0.25) = 12 / 26; the forget metrics do not count
    assert model_utility(metrics) == pytest.approx(12 / 26)
    assert model_utility(metrics | {"real_world_rougeL_recall": 0.0}) == 0.0


def test_forget_quality_ks_pvalue_with_unequal_samples():
    # x = [1, 3], y = [2, 4, 5]: pooled order x y x y y, ECDF gaps 1/2, 1/6, 2/3, 1/3, 0 -> D = 2/3.
    # Of the C(5, 2) = 10 equally likely placements of the two x's, D >= 2/3 for
    # xxyyy, xyxyy, yxxyy, yyxxy, yyxyx, yyyxx (6 of them): exact p = 6/10.
    assert forget_quality([1, 3], [2, 4, 5]) == pytest.approx(0.6)
    assert forget_quality([1, 2], [3, 4, 5]) == pytest.approx(0.2)  # fully separated: 2 of 10 placements


# ------------------------------------------------------------------------------------ protocol


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_the_reference_model_is_scored_and_let_go_before_the_evaluated_model_loads(tiny_dir, clear_dir, tmp_path,
                                                                                   monkeypatch):
    # Two 7B models need not fit on the device at once.
    import gc
    import weakref

    import viker.eval.clear as ec
    import viker.model

    loaded, held = [], []
    load, score = viker.model.load_model, ec.forget_truth_ratios

    def tracked_load(*args, **kwargs):
        model, processor = load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, processor

    def counted_score(*args, **kwargs):
        gc.collect()
        held.append(sum(ref() is not None for ref in loaded))
        return score(*args, **kwargs)

    monkeypatch.setattr(viker.model, "load_model", tracked_load)
    monkeypatch.setattr(ec, "forget_truth_ratios", counted_score)
    ec.run_clear_eval(str(tiny_dir), str(clear_dir), str(tmp_path / "eval"),
                      ec.ClearEvalConfig(max_new_tokens=2, retain_model=str(tiny_dir)), device="cpu", progress=False)
    assert held == [1] and len(loaded) == 2


def test_a_model_passed_in_scores_as_the_same_model_loaded_from_its_folder(tiny_dir, clear_dir, tmp_path):
    import viker.eval.clear as ec
    from viker.model import load_model

    cfg = ec.ClearEvalConfig(max_new_tokens=4)
    loaded = ec.run_clear_eval(str(tiny_dir), str(clear_dir), str(tmp_path / "loaded"), cfg, device="cpu",
                               progress=False)
    given = ec.run_clear_eval(str(tiny_dir), str(clear_dir), str(tmp_path / "given"), cfg, progress=False,
                              model_and_processor=load_model(tiny_dir, device="cpu"))
    assert given == loaded and loaded["forget_truth_ratio"] is not None
    generations = [(tmp_path / run / "generations.jsonl").read_text() for run in ("given", "loaded")]
    assert generations[0] == generations[1]


def test_each_text_of_an_item_is_scored_by_its_mean_token_loss(monkeypatch):
    """The answer, the paraphrase and each wrong answer by the mean of their own tokens' losses: the truth ratio
    and Prob. read these, so a sum (longer texts less likely) or a text scored as another moves every figure."""
    import viker.eval.clear as ec
    from viker.data.clear import EvalItem

    logprobs = {"answer": (-2.0, 2), "paraphrase": (-6.0, 3), "wrong one": (-4.0, 1), "wrong two": (-9.0, 3)}
    monkeypatch.setattr(ec, "answer_logprobs", lambda model, processor, examples, batch_size: [
        logprobs[ex.answer] for ex in examples])
    item = EvalItem("Who is this?", b"image", "answer", "paraphrase", ("wrong one", "wrong two"))
    assert ec.item_losses(None, None, [item], 8) == [(1.0, 2.0, (4.0, 3.0))]


def test_forget_sets_score_truth_ratios_by_their_rule_and_the_others_by_theirs(tiny_dir, clear_dir, tmp_path):
    """A forget set's truth ratio counts min(r, 1/r) (a model that forgot finds the right and wrong answers alike),
    every other set's max(0, 1 - 1/r) (a model that knows prefers the right one), each over its own items."""
    import viker.eval.clear as ec
    from viker.eval.metrics import truth_ratio_score

    metrics = ec.run_clear_eval(str(tiny_dir), str(clear_dir), str(tmp_path / "eval"),
                                ec.ClearEvalConfig(max_new_tokens=2), device="cpu", progress=False)
    records = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    for name, _, _ in ec.EVAL_SETS:
        ratios = [r["truth_ratio"] for r in records if r["set"] == name]
        assert ratios and metrics[f"{name}_truth_ratio"] == pytest.approx(
            truth_ratio_score(ratios, forget=name in ec.FORGET_SETS))
        assert truth_ratio_score(ratios, forget=True) != pytest.approx(truth_ratio_score(ratios, forget=False))


def test_a_clear_run_from_python_takes_clears_default_split(tiny_dir, clear_dir, tmp_path):
    """UnlearnConfig(benchmark="clear") without forget= took MLLMU-Bench's forget_10, and was refused."""
    from viker.presets import TrainConfig
    from viker.unlearn import UnlearnConfig, run_unlearn

    run_unlearn(UnlearnConfig(model=str(tiny_dir), data=str(clear_dir), benchmark="clear", method="ga",
                              train=TrainConfig(max_steps=1, batch_size=2), out=str(tmp_path / "run")), progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["unlearn"]["forget"] == "forget10"


def test_a_retain_model_is_compared_with_the_vanilla_run_by_what_changes_training(tmp_path):
    """Its recipe as the run read it: --epochs under --max-steps, --max-length (it refuses, never cuts), how it was
    saved and where its base model's copy is change nothing; another hub model, budget or precision does."""
    def run(name, model="llava-hf/llava-1.5-7b-hf", files=None, train=None, runtime=None, **more):
        (tmp_path / name).mkdir()
        finetune = {"model": model, "tuning": "lora", "lora": {"r": 16, "merge": True}, "train": {
            "epochs": 3, "max_steps": 100, "batch_size": 8, "grad_accum": 1, "lr": 1e-4} | (train or {})} | more
        (tmp_path / name / "config.json").write_text(json.dumps({
            "command": "finetune", "finetune": finetune, "runtime": {"mixed_precision": "no"} | (runtime or {}),
            **({"model_files": files} if files is not None else {})}))
        return str(tmp_path / name)

    vanilla = run("vanilla", files={"/data/a/model.safetensors": "abc"}, model="/data/a")
    alike = run("alike", files={"/scratch/b/model.safetensors": "abc"}, model="/scratch/b", without="forget10",
                train={"epochs": 5, "batch_size": 4, "grad_accum": 2}, max_length=2048, lora={"r": 16, "merge": False})
    assert other_recipe(alike, vanilla) is None
    hub = run("hub", model="Qwen/Qwen2-VL-7B-Instruct", files={}, without="forget10")
    assert other_recipe(hub, run("hub-vanilla", files={})) == (
        f"--retain-model {hub} was finetuned otherwise than {tmp_path / 'hub-vanilla'}, the vanilla run: --model "
        "Qwen/Qwen2-VL-7B-Instruct, not llava-hf/llava-1.5-7b-hf. Forget quality then measures that difference too; "
        "finetune the retain model with the vanilla run's settings and --without")
    other = run("other", files={"/data/a/model.safetensors": "abc"}, model="/data/a", without="forget10",
                train={"max_steps": 0, "epochs": 3}, runtime={"mixed_precision": "bf16"})
    assert other_recipe(other, vanilla).split(": ", 1)[1].startswith(
        "--epochs 3, not --max-steps 100; mixed precision bf16, not no.")


def test_clear_protocol_end_to_end(tiny_dir, clear_dir, tmp_path, capsys, monkeypatch):
    common = ["--data", str(clear_dir), "--benchmark", "clear", "--device", "cpu"]
    train = ["--batch-size", "8", "--grad-accum", "1", "--lr", "3e-3", "--tuning", "full"]
    assert main(["finetune", "--model", str(tiny_dir), "--out", str(tmp_path / "vanilla"), "--max-steps", "6",
                 *train, *common]) == 0
    assert main(["finetune", "--model", str(tiny_dir), "--out", str(tmp_path / "retain"), "--max-steps", "6",
                 "--without", "forget10", *train, *common]) == 0
    vanilla_config = json.loads((tmp_path / "vanilla" / "config.json").read_text())
    assert vanilla_config["examples"] == 12 and vanilla_config["finetune"]["benchmark"] == "clear"
    assert vanilla_config["finetune"].get("train_on") is None  # MLLMU-Bench's choice, which CLEAR refuses
    assert json.loads((tmp_path / "retain" / "config.json").read_text())["examples"] == 6

    evaluate = ["eval", "--max-new-tokens", "6", "--batch-size", "16", *common]
    assert main([*evaluate, "--model", str(tiny_dir), "--out", str(tmp_path / "untrained")]) == 0
    assert main([*evaluate, "--model", str(tmp_path / "retain"), "--out", str(tmp_path / "retain-eval")]) == 0
    # the reference evaluated here (a model folder) and read back from its truth-ratio file agree
    assert main([*evaluate, "--model", str(tmp_path / "vanilla"), "--out", str(tmp_path / "vanilla-eval"),
                 "--retain-model", str(tmp_path / "retain")]) == 0
    assert main([*evaluate, "--model", str(tmp_path / "vanilla"), "--out", str(tmp_path / "vanilla-eval2"),
                 "--retain-model", str(tmp_path / "retain-eval" / "metrics.json")]) == 0
    vanilla = _metrics(tmp_path / "vanilla-eval")
    assert vanilla == pytest.approx(_metrics(tmp_path / "vanilla-eval2"))
    printed, warned = capsys.readouterr()  # CLEAR's columns, in [0, 1] as it reports them
    assert re.search(rf"^  Forget quality ↑ +{format(vanilla['forget_quality'], '#.2g')}$", printed, re.M), printed
    assert "finetuned otherwise" not in warned  # the retain model is the vanilla model's recipe, without forget10
    assert re.search(rf"^  Model utility ↑ +{vanilla['model_utility']:.3f}$", printed, re.M), printed
    # a retain model trained otherwise: forget quality would measure that difference too
    assert main(["finetune", "--model", str(tiny_dir), "--out", str(tmp_path / "retain-other"), "--max-steps", "1",
                 "--without", "forget10", *train[:-3], "1e-3", "--tuning", "full", *common]) == 0
    capsys.readouterr()
    assert main([*evaluate, "--model", str(tmp_path / "vanilla"), "--out", str(tmp_path / "other-recipe"),
                 "--retain-model", str(tmp_path / "retain-other")]) == 0
    assert f"warning: --retain-model {tmp_path / 'retain-other'} was finetuned otherwise than {tmp_path / 'vanilla'}" \
        ", the vanilla run: --lr 0.001, not 0.003; --max-steps 1, not --max-steps 6." in capsys.readouterr().err
    # one step in two micro-batches is the same step: no warning, and of a run unlearned from the vanilla run, the
    # vanilla run is named as the one it comes from
    assert main(["finetune", "--model", str(tiny_dir), "--out", str(tmp_path / "retain-accumulated"), "--max-steps",
                 "6", "--without", "forget10", "--batch-size", "4", "--grad-accum", "2", *train[4:], *common]) == 0
    capsys.readouterr()
    assert other_recipe(tmp_path / "retain-accumulated", str(tmp_path / "vanilla")) is None
    unlearned = tmp_path / "unlearned-config"
    unlearned.mkdir()
    (unlearned / "config.json").write_text(json.dumps({"command": "unlearn", "unlearn": {
        "model": str(tmp_path / "vanilla" / "model")}}))
    assert other_recipe(tmp_path / "retain-other", str(unlearned)).startswith(
        f"--retain-model {tmp_path / 'retain-other'} was finetuned otherwise than the vanilla run "
        f"{tmp_path / 'vanilla'} that {unlearned} comes from: --lr 0.001")
    # a reference that its run shows has seen the forget persons is refused: the vanilla run, its
    # evaluation's truth ratios, a run finetuned without another split
    assert main(["finetune", "--model", str(tiny_dir), "--out", str(tmp_path / "retain01"), "--max-steps", "1",
                 "--without", "forget01", *train, *common]) == 0
    # and one finetuned without them, but from the vanilla run, which saw them
    assert main(["finetune", "--model", str(tmp_path / "vanilla"), "--out", str(tmp_path / "retain-late"),
                 "--max-steps", "1", "--without", "forget10", *train, *common]) == 0
    capsys.readouterr()
    for seen in ("vanilla", "vanilla-eval/forget_truth_ratios.json", "retain01/model", "retain-late"):
        assert main([*evaluate, "--model", str(tmp_path / "retain"), "--out", str(tmp_path / "refused"),
                     "--retain-model", str(tmp_path / seen)]) == 2, seen
    errors = capsys.readouterr().err.splitlines()
    assert [e.split(": ")[-1].split(",")[0] for e in errors[:3]] == ["finetuned on every person"] * 2 + \
        ["finetuned without forget01's persons"]
    assert f"--retain-model {tmp_path / 'retain-late'}: finetuned without forget10's persons, but from " \
           f"{tmp_path / 'vanilla'}, finetuned on every person: not a model that never saw" in errors[3]
    assert not (tmp_path / "refused" / "metrics.json").exists()
    figures = tmp_path / "figures-alone" / "metrics.json"  # an evaluation's figures without its truth ratios
    figures.parent.mkdir()
    shutil.copy(tmp_path / "retain-eval" / "metrics.json", figures)
    assert main([*evaluate, "--model", str(tmp_path / "retain"), "--out", str(tmp_path / "refused"),
                 "--retain-model", str(figures)]) == 2
    assert f"--retain-model {figures}: no forget_truth_ratios.json beside it (a CLEAR evaluation writes one)" in \
        capsys.readouterr().err
    typo = tmp_path / "retian-eval" / "forget_truth_ratios.json"  # a file's name mistyped: not read as a hub id
    assert main([*evaluate, "--model", str(tmp_path / "retain"), "--out", str(tmp_path / "refused"),
                 "--retain-model", str(typo)]) == 2
    assert f"--retain-model {typo}: no such file (a truth-ratio file is the forget_truth_ratios.json that viker " \
           "eval wrote in the retain model's evaluation folder)" in capsys.readouterr().err
    # the retain model's ratios saved in the vanilla model's evaluation are the retain model's
    check_retain_model(tmp_path / "vanilla-eval" / "retain_model_truth_ratios.json", "forget10")
    # a copy of the vanilla model taken elsewhere is no run of ours, but holds the weights a run was unlearned from:
    # its forget quality was that of a model that forgot nothing (a copy of the retain model is taken)
    from viker.model import weight_hashes

    copied = shutil.copytree(tmp_path / "vanilla" / "model", tmp_path / "elsewhere" / "vanilla")
    hashed = tmp_path / "unlearned-hashed"
    hashed.mkdir()
    (hashed / "config.json").write_text(json.dumps({"command": "unlearn", "unlearn": {
        "model": str(tmp_path / "vanilla" / "model")}, "model_files": weight_hashes(tmp_path / "vanilla" / "model")}))
    with pytest.raises(VikerError, match=re.escape(
            f"--retain-model {copied}: the same weights as {tmp_path / 'vanilla' / 'model'}, which {hashed} was "
            "unlearned from and which saw forget10's persons: not a model that never saw them")):
        check_retain_model(copied, "forget10", str(hashed))
    check_retain_model(shutil.copytree(tmp_path / "retain" / "model", tmp_path / "elsewhere" / "retain"), "forget10",
                    str(hashed))
    untrained = _metrics(tmp_path / "untrained")
    assert untrained["forget_quality"] is None  # no reference model given
    assert vanilla["forget_prob"] > untrained["forget_prob"] and vanilla["retain_prob"] > untrained["retain_prob"]
    retain_saved = json.loads((tmp_path / "vanilla-eval" / "retain_model_truth_ratios.json").read_text())
    retain_ratios = json.loads((tmp_path / "retain-eval" / "forget_truth_ratios.json").read_text())["truth_ratios"]
    for name in ("forget", "forget_names"):  # equal up to float noise from other batch paddings
        assert retain_saved["truth_ratios"][name] == pytest.approx(retain_ratios[name], rel=1e-5)

    # metrics.json: every documented key, in [0, 1], utility = harmonic mean of the non-forget metrics
    for name, _, _ in clear.EVAL_SETS:
        for metric in ("rougeL_recall", "prob", "truth_ratio"):
            assert 0.0 <= vanilla[f"{name}_{metric}"] <= 1.0
    assert vanilla["forget_items"] == 4 and vanilla["real_world_items"] == 3 and vanilla["real_faces_skipped"] == 0
    assert vanilla["model_utility"] == pytest.approx(harmonic_mean(vanilla[k] for k in UTILITY_KEYS))
    assert 0.0 < vanilla["forget_quality"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "vanilla-eval" / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 22 and {r["set"] for r in records} == {name for name, _, _ in clear.EVAL_SETS}
    # coherence, in percent as on MLLMU-Bench: of each set's replies, and the column's of the forget captions'
    for name, _, _ in clear.EVAL_SETS:
        assert vanilla[f"{name}_coherence"] == pytest.approx(coherence_mean(r["answer"] for r in records
                                                                            if r["set"] == name))
    assert vanilla["coherence"] == vanilla["forget_coherence"]
    # A model compared with itself cannot be told apart: the KS p-value is 1.
    assert main([*evaluate, "--model", str(tmp_path / "retain"), "--out", str(tmp_path / "self"),
                 "--retain-model", str(tmp_path / "retain-eval"), "--retain-limit", "1"]) == 0
    itself = _metrics(tmp_path / "self")
    assert itself["forget_quality"] == pytest.approx(1.0)
    assert itself["retain_items"] == itself["retain_names_items"] == 1 and itself["forget_items"] == 4

    for method in ("ga", "graddiff", "klmin", "npo", "idkpo", "viker"):
        run = tmp_path / method
        extra = ["--k", "2"] if method == "viker" else []
        assert main(["unlearn", "--model", str(tmp_path / "vanilla"), "--method", method, "--out", str(run),
                     "--max-steps", "2", "--lr", "5e-2", "--batch-size", "4", "--cache-dir", str(tmp_path / "cache"),
                     *extra, *common]) == 0, method
        config = json.loads((run / "config.json").read_text())
        assert config["data"] == {"benchmark": "clear", "forget_config": "forget10", "retain_config": "retain90"}
        assert config["examples"]["forget"] == 4
        if method == "viker":  # references: real people's faces, never a fictitious forget or retain person's
            assert config["method"]["refs"] == "people"
            assert config["setup"]["reference_pool"] == {
                "refs": "people", "source": "CLEAR real_faces (real people; CLEAR has no ref_people pool)", "images": 3}
        assert main([*evaluate, "--model", str(run), "--out", str(run),
                     "--retain-model", str(tmp_path / "retain-eval")]) == 0
        metrics = _metrics(run)
        assert 0.0 <= metrics["forget_quality"] <= 1.0
        if method == "ga":  # gradient ascent lowers the probability of the forget captions
            assert metrics["forget_prob"] < vanilla["forget_prob"]
            assert main([*evaluate, "--model", str(tmp_path / "retain"), "--out", str(tmp_path / "refused"),
                         "--retain-model", str(run)]) == 2  # an unlearned model is no reference

    # the table of these runs: CLEAR's measures in [0, 1], a row per run named from its config
    capsys.readouterr()
    assert main(["report", str(tmp_path / "vanilla-eval"), str(tmp_path / "retain-eval"),
                 *(str(tmp_path / m) for m in ("ga", "npo", "viker")), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out.splitlines()  # the terminal's summary has CLEAR's own columns
    assert [h.strip() for h in printed[0].split("  ") if h.strip()] == [
        "Method", "Forget quality ↑", "Model utility ↑", "Forget R-L ↓", "Retain R-L ↑", "Real faces Prob. ↑"]
    report = (tmp_path / "report" / "report.md").read_text()
    header, _, *rows = report.split("\n\n")[1].splitlines()
    assert header.startswith("| Method | Forget quality ↑ | Model utility ↑ | Forget R-L ↓ | Forget Prob. ↓ | "
                             "Forget TR |")  # the forget truth ratio's target is the retain model's: no direction
    # the vanilla model and the model never trained on the forget split are references, not contenders
    assert [row.split(" | ")[0] for row in rows] == ["| vanilla", "| retain model", "| GA", "| NPO", "| ViKeR"]
    assert "**" not in rows[0] + rows[1]
    assert f"| {_metrics(tmp_path / 'ga')['forget_quality']:#.2g}" in rows[2].replace("**", "")
    assert "All numbers are in [0, 1], as CLEAR reports them but coherence, a percentage. Evaluated on forget10." \
        in " ".join(report.split())
    assert (tmp_path / "report" / "tradeoff.png").is_file()  # model utility against forget quality
    # what each column is over, as the evaluations counted their items
    counted = _metrics(tmp_path / "ga")
    for header, n in (("Forget quality", counted["forget_items"]), ("Forget R-L", counted["forget_items"]),
                      ("Real world TR", counted["real_world_items"])):
        assert re.search(rf"- \*\*{header}\*\* \([^)]*\): .* Over {n} items\.\n", report), header
    # evaluated as forget10+tofu, a run is scored on forget10's items (the image sets): it shares their table
    capsys.readouterr()
    assert main([*evaluate, "--model", str(tmp_path / "npo"), "--forget", "forget10+tofu",
                 "--out", str(tmp_path / "npo-tofu")]) == 0
    assert "warning: no --retain-model, so no forget quality, CLEAR's measure of forgetting (give the model " \
        "finetuned --without forget10" in capsys.readouterr().err
    assert _metrics(tmp_path / "npo-tofu") == _metrics(tmp_path / "npo") | {"forget_quality": None}
    assert main(["report", str(tmp_path / "retain-eval"), str(tmp_path / "npo-tofu"), "--out",
                 str(tmp_path / "tofu-report")]) == 0
    assert "NPO was evaluated without --retain-model, so without forget quality." in \
        " ".join((tmp_path / "tofu-report" / "report.md").read_text().split())  # its dash is no score of its own
    # a run unlearned on forget10+tofu is scored as forget10's runs are, and its row says what it trained on
    assert main(["unlearn", "--model", str(tmp_path / "vanilla"), "--method", "npo", "--forget", "forget10+tofu",
                 "--out", str(tmp_path / "npo+tofu"), "--max-steps", "2", "--lr", "5e-2", "--batch-size", "4",
                 *common]) == 0
    assert main([*evaluate, "--model", str(tmp_path / "npo+tofu"), "--out", str(tmp_path / "npo+tofu"),
                 "--retain-model", str(tmp_path / "retain-eval")]) == 0
    assert main(["report", str(tmp_path / "npo"), str(tmp_path / "npo+tofu"), "--out",
                 str(tmp_path / "tofu-rows")]) == 0
    rows = json.loads((tmp_path / "tofu-rows" / "results.json").read_text())["runs"]
    assert [r["label"] for r in rows] == ["NPO (unlearned on=forget10)", "NPO (unlearned on=forget10+tofu)"]
    # forget quality is closeness to one model, however --retain-model named it (its folder, its run's folder,
    # its evaluation's truth ratios); against another model it is another measure, which no table mixes
    config = json.loads((tmp_path / "vanilla-eval" / "config.json").read_text())
    assert config["forget_quality_reference"] == str((tmp_path / "retain" / "model").resolve())
    assert {json.loads((tmp_path / f / "eval_config.json").read_text())["forget_quality_reference"]
            for f in ("ga", "npo", "viker")} == {config["forget_quality_reference"]}
    (tmp_path / "retain" / "model").rename(tmp_path / "retain-weights")  # its truth ratios still name it
    assert main([*evaluate, "--model", str(tmp_path / "npo"), "--out", str(tmp_path / "npo-later"),
                 "--retain-model", str(tmp_path / "retain-eval")]) == 0
    assert json.loads((tmp_path / "npo-later" / "config.json").read_text())["forget_quality_reference"] == \
        config["forget_quality_reference"]
    (tmp_path / "retain-weights").rename(tmp_path / "retain" / "model")
    older = json.loads((tmp_path / "npo-later" / "config.json").read_text())  # as written before it was recorded
    del older["forget_quality_reference"]
    (tmp_path / "npo-later" / "config.json").write_text(json.dumps(older))
    assert main(["report", str(tmp_path / "viker"), str(tmp_path / "npo-later"), "--out", str(tmp_path / "rep")]) == 0
    said = " ".join((tmp_path / "rep" / "report.md").read_text().split())
    assert f"Forget quality compares with the model in `{config['forget_quality_reference']}` (the evaluations in " \
        f"{tmp_path / 'npo-later'} do not record theirs)." in said
    monkeypatch.chdir(tmp_path)  # a reference typed relative to the working folder is recorded absolute
    assert main([*evaluate, "--model", "npo", "--out", "npo-other", "--retain-model", str(tiny_dir)]) == 0
    assert json.loads((tmp_path / "npo-other" / "config.json").read_text())["eval"]["retain_model"] == \
        str(tiny_dir.resolve())
    capsys.readouterr()
    assert main(["report", "viker", "npo-other", "--out", "refused-report"]) == 2
    assert "evaluated with different --retain-model (the model forget quality compares with)" in \
        capsys.readouterr().err
    # truth ratios scored on other files than the data evaluated now are refused
    edited = _copy(clear_dir, tmp_path / "edited")
    _edit(edited, "forget10_perturbed", lambda rows, schema: pa.Table.from_pylist(
        [r | {"paraphrased_caption": r["paraphrased_caption"] + " Again."} for r in rows], schema=schema))
    assert main([*evaluate, "--data", str(edited), "--model", "npo", "--out", "npo-edited", "--retain-model",
                 "retain-eval"]) == 2
    assert "forget_truth_ratios.json: truth ratios scored on other files than" in capsys.readouterr().err
    # CLEAR's --retain-limit counts retain items (an image each), not persons
    assert main(["report", str(tmp_path / "self"), "--out", str(tmp_path / "limited")]) == 0
    assert "Retain figures over the first 1 retain items (rows of retain_perturbed, an image each)." in " ".join(
        (tmp_path / "limited" / "report.md").read_text().split())
    mllmu = tmp_path / "mllmu"  # an MLLMU-Bench evaluation cannot share CLEAR's table
    mllmu.mkdir()
    (mllmu / "metrics.json").write_text(json.dumps({"forget_acc": 30.0, "retain_rougeL": 80.0}))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "ga"), str(mllmu), "--out", str(tmp_path / "mixed")]) == 2
    assert "different benchmarks" in capsys.readouterr().err


def test_a_clear_finetune_that_recorded_mllmu_benchmarks_train_on_resumes(tiny_dir, clear_dir, tmp_path, capsys,
                                                                        monkeypatch):
    """CLEAR finetunes once recorded MLLMU-Bench's --train-on (ft_Data), which CLEAR refuses to be given: such a
    run resumes with its record as it is, rather than being refused with no way to match it."""
    from test_run_folders import PAST, _stopped

    run = tmp_path / "run"
    argv = ["finetune", "--model", str(tiny_dir), "--data", str(clear_dir), "--benchmark", "clear", "--max-steps",
            "2", "--batch-size", "4", "--tuning", "full", "--out", str(run)]
    _stopped(argv, monkeypatch)
    config = json.loads((run / "config.json").read_text())
    assert config["finetune"]["train_on"] is None
    config["finetune"]["train_on"] = "ft_Data"
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2 and PAST in capsys.readouterr().err


def test_cagul_unlearns_on_clear_with_real_faces_as_references(tiny_dir, clear_dir, tmp_path):
    """CLEAR has no image pools: CAGUL's reference answers come from its real_faces, as ViKeR's, not from the
    retain persons, whose faces as references would teach the model to take forget persons for them."""
    from viker.model import load_model
    from viker.model.cagul import CagulModel
    from viker.train import TrainConfig
    from viker.unlearn import UnlearnConfig, run_unlearn

    run = tmp_path / "cagul"
    run_unlearn(UnlearnConfig(model=str(tiny_dir), data=str(clear_dir), benchmark="clear", forget="forget10",
                              method="cagul", method_args={"k": 2, "disc_steps": 20}, out=str(run),
                              train=TrainConfig(max_steps=1, batch_size=4), cache_dir=str(tmp_path / "cache")),
                progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["method"]["refs"] == "people" and config["examples"]["forget"] == 4
    assert config["setup"]["reference_pool"]["source"].startswith("CLEAR real_faces")
    # real people's faces: never a fictitious person's, forgotten or retained
    pool, _ = reference_pool_and_source("people", clear_dir, "forget10")
    assert pool == clear.real_face_images(clear_dir) and len(pool) == 3
    fictitious = [img for which in ("forget", "retain") for img in _faces(clear_dir, which)]
    assert not set(pool) & set(fictitious)
    model, _ = load_model(run, device="cpu")
    assert isinstance(model, CagulModel)


def test_an_evaluation_is_not_replaced_by_one_that_would_lose_its_figures(tiny_dir, clear_dir, bench_dir, tmp_path,
                                                                           capsys):
    """Into the folder of an earlier evaluation: refused where the new one would drop its forget quality, or
    is of the other benchmark (which would replace every figure, a judge's paid scores included)."""
    clear_eval = ["eval", "--benchmark", "clear", "--data", str(clear_dir), "--model", str(tiny_dir),
                  "--max-new-tokens", "2", "--retain-limit", "1"]
    mllmu_eval = ["eval", "--data", str(bench_dir), "--model", str(tiny_dir), "--max-new-tokens", "2",
                  "--only", "forget:multiple_choice"]
    out, mllmu = tmp_path / "clear", tmp_path / "mllmu"
    assert main([*clear_eval, "--out", str(out), "--retain-model", str(tiny_dir)]) == 0
    assert main([*mllmu_eval, "--out", str(mllmu)]) == 0
    before = {folder: (folder / "metrics.json").read_text() for folder in (out, mllmu)}
    capsys.readouterr()
    assert main([*clear_eval, "--out", str(out)]) == 2  # no --retain-model: no forget quality
    assert main([*mllmu_eval, "--out", str(out)]) == 2
    assert main([*clear_eval, "--out", str(mllmu)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert [e.split("would not write (")[1].split(")")[0] for e in errors] == [
        f"forget quality against --retain-model {tiny_dir}", "its CLEAR figures", "its MLLMU-Bench figures"]
    assert {folder: (folder / "metrics.json").read_text() for folder in (out, mllmu)} == before
    assert main([*clear_eval, "--out", str(out), "--retain-model", str(tiny_dir), "--retain-limit", "2"]) == 0
    # a limit above the retain items' number leaves none out: it is recorded as none, as the report reads it
    assert main([*clear_eval[:-2], "--retain-limit", "10000", "--out", str(tmp_path / "every")]) == 0
    assert [json.loads((folder / "config.json").read_text())["eval"]["retain_limit"]
            for folder in (out, tmp_path / "every")] == [2, None]
