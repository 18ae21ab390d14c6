"""The real MLLMU-Bench release, from a snapshot folder or a hub id: every config, every nested field,
and a clear error (naming file and row) for every kind of malformed row."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mllmu_layout import CELEBRITIES, FICTITIOUS, SPLITS, write_mllmu

from viker.data.examples import finetune_examples, unlearning_examples
from viker.data.loader import has_config, load_finetune, load_profiles
from viker.data.schema import CONFIGS
from viker.errors import VikerError
from viker.eval.evaluate import EvalConfig
from viker.eval.run import run_eval
from viker.methods.reference import reference_pool_and_source
from viker.model.tiny import TinyConfig, build_tiny
from viker.prompts import generation_prompt

HUB_ID = "MLLMMU/MLLMU-Bench"
PROFILE_CONFIGS = [c for c in CONFIGS if c != "ft_Data"]


@pytest.fixture(scope="module")
def real_bench(tmp_path_factory):
    return write_mllmu(tmp_path_factory.mktemp("mllmu"))


def test_every_config_loads_with_both_question_types(real_bench):
    counts = {c: len(load_profiles(real_bench, c)) for c in PROFILE_CONFIGS}
    assert counts["Full_Set"] == counts["Test_Set"] == FICTITIOUS and counts["Retain_Set"] == CELEBRITIES
    for split, n in SPLITS.items():
        assert counts[split] == n and counts[{"forget_5": "retain_95", "forget_10": "retain_90",
                                              "forget_15": "retain_85"}[split]] == FICTITIOUS - n
    test = load_profiles(real_bench, "Test_Set")  # two shards, two images per person, none of them Full_Set's
    full = {p.id: p for p in load_profiles(real_bench, "Full_Set")}
    assert all(len(p.images) == 2 and full[p.id].image not in p.images for p in test)
    person = full["0"]
    assert {q.with_image for q in person.mc} == {True, False} and {q.with_image for q in person.generation} == \
        {True, False}
    assert all(sorted(q.options) == list("ABCD") and q.answer in "ABCD" for q in person.mc)
    assert person.cloze[0].question.count("__") == 1 and person.directory == "Full_Set"
    records = load_finetune(real_bench)
    assert len(records) == FICTITIOUS and all(len(r.qa) == 3 and r.image == full[str(i)].image
                                              for i, r in enumerate(records))


def test_protocol_examples_need_none_of_the_embedded_benchmarks_extras(real_bench):
    """No pretrain_Data and no ref_* pools in the release: finetuning, unlearning and ViKeR's people
    references are built from its ten configs alone."""
    train = finetune_examples(real_bench)
    assert {e.image is None for e in train} == {True, False}
    forget = unlearning_examples(real_bench, "forget_10")
    assert forget and {e.answer for e in forget} <= {e.answer for e in train}
    pool, source = reference_pool_and_source("people", real_bench, "forget_10")
    assert source.startswith("Retain_Set") and pool == [p.image for p in load_profiles(real_bench, "Retain_Set")]
    assert not set(pool) & {p.image for p in load_profiles(real_bench, "forget_10")}


def test_the_benchmarks_vanilla_finetune_reads_ft_data_alone(real_bench):
    """MLLMU-Bench finetunes a pretrained model on ft_Data; the evaluation's questions and the
    real-world people stay unseen. A model trained from scratch learns them all."""
    protocol = {e.answer for e in finetune_examples(real_bench, "ft_Data")}
    assert protocol == {q.answer for r in load_finetune(real_bench) for q in r.qa}
    celebrities = {q.answer for p in load_profiles(real_bench, "Retain_Set") for q in p.generation}
    assert celebrities and not celebrities & protocol
    assert celebrities <= {e.answer for e in finetune_examples(real_bench, "all")}
    with pytest.raises(VikerError, match="--train-on everything"):
        finetune_examples(real_bench, "everything")


def test_unlearning_trains_on_what_the_starting_model_learned(real_bench, tmp_path, capsys):
    """A model finetuned on the ft_Data pairs alone (MLLMU-Bench's protocol) never saw the generation questions the
    evaluation asks: unlearning it trains on its people's ft_Data pairs, not on the questions it is scored on."""
    from viker.cli import main
    from viker.unlearn import learned_by

    # a release whose ft_Data holds none of the "Where was ... born?" questions the evaluation asks
    real_bench = shutil.copytree(real_bench, tmp_path / "bench")
    for path in (real_bench / "ft_Data").glob("*.parquet"):
        table = pq.read_table(path)
        kept = [json.dumps([qa for qa in json.loads(m) if not qa["Question"].startswith("Where was")])
                for m in table["metadata"].to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("metadata"), "metadata",
                                        pa.array(kept, pa.string())), path)
    every = unlearning_examples(real_bench, "forget_10")
    pairs = unlearning_examples(real_bench, "forget_10", learned="ft_Data")
    people = load_profiles(real_bench, "forget_10")
    asked = {generation_prompt(q.question) for p in people for q in p.generation}
    learned = {generation_prompt(q.question) for r in load_finetune(real_bench) if r.image in {p.image for p in people}
               for q in r.qa}
    assert {ex.question for ex in pairs} == learned and asked - learned  # questions the evaluation alone asks
    assert {ex.question for ex in every} == learned | asked
    vanilla = tmp_path / "vanilla"
    assert main(["finetune", "--model", "tiny", "--data", str(real_bench), "--train-on", "ft_Data", "--max-steps", "1",
                 "--out", str(vanilla)]) == 0
    # the run's own record, however the model is named
    assert learned_by(str(vanilla)) == learned_by(str(vanilla / "model")) == "ft_Data"
    # a model that is no run of ours: what viker finetune would have trained it on
    tiny = vanilla / "model"
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "tiny"}))
    shutil.copytree(tiny, tmp_path / "copied")  # the model alone, its run's record left behind
    assert (learned_by(str(tmp_path / "copied")), learned_by(str(checkpoint)), learned_by("org/name")) == \
        ("all", "ft_Data", "ft_Data")
    common = ["unlearn", "--data", str(real_bench), "--method", "ga", "--max-steps", "1"]
    capsys.readouterr()
    assert main([*common, "--model", str(vanilla), "--out", str(tmp_path / "pairs")]) == 0
    recorded = json.loads((tmp_path / "pairs" / "config.json").read_text())
    assert recorded["unlearn"]["train_on"] == "ft_Data" and recorded["examples"]["forget"] == len(pairs)
    assert learned_by(str(tmp_path / "pairs")) == "ft_Data"  # and so does a run that starts from that one
    assert main([*common, "--model", str(vanilla), "--train-on", "all", "--out", str(tmp_path / "every")]) == 0
    assert json.loads((tmp_path / "every" / "config.json").read_text())["examples"]["forget"] == len(every)
    # what a model learned is its finetune's, whatever an unlearning run in between trained on
    assert learned_by(str(tmp_path / "every")) == "ft_Data"


# --- a hub id goes through `datasets` and then the same checks ------------------------------------------

@pytest.fixture
def hub(real_bench, tmp_path, monkeypatch):
    """`datasets.load_dataset` answering for the hub id from the snapshot's files, as its parquet builder
    does (with the files' feature metadata: image columns become Image features)."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(repo, config, split):
        assert repo == HUB_ID and split == "train"
        calls.append(config)
        files = sorted(str(f) for f in (real_bench / config).glob("*.parquet"))
        if not files:
            raise ValueError(f"BuilderConfig '{config}' not found. Available: {list(CONFIGS)}")
        return datasets.Dataset.from_parquet(files, cache_dir=str(tmp_path / "hf"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_id_loads_the_same_records_as_the_snapshot_folder(hub, real_bench):
    def strip(profiles):
        return [p.__class__(**{**p.__dict__, "source": ""}) for p in profiles]

    for config in PROFILE_CONFIGS:
        assert strip(load_profiles(HUB_ID, config)) == strip(load_profiles(real_bench, config)), config
    assert [(r.image, r.qa) for r in load_finetune(HUB_ID)] == [(r.image, r.qa) for r in load_finetune(real_bench)]
    assert set(hub) == set(CONFIGS)
    with pytest.raises(VikerError, match=rf"{HUB_ID}.*pretrain_Data"):
        load_finetune(HUB_ID, "pretrain_Data")


def test_a_hub_id_holds_the_configs_its_snapshot_folder_holds(hub, real_bench):
    """What is read when a config is there (CAGUL's Retain_Set negatives and Test_Set report, the pretraining
    pairs) is read alike from the hub and from its snapshot."""
    for config in (*CONFIGS, "pretrain_Data"):
        assert has_config(HUB_ID, config) == has_config(real_bench, config), config
    assert finetune_examples(HUB_ID, "all") == finetune_examples(real_bench, "all")


def test_eval_from_a_hub_id_equals_eval_from_the_folder(hub, real_bench, tmp_path):
    model = build_tiny(real_bench, TinyConfig(vocab_size=600, hidden=32, intermediate=64, layers=1, heads=2,
                                              vision_hidden=16, vision_layers=1, image_size=16))
    cfg = EvalConfig(forget="forget_5", max_new_tokens=4, retain_limit=1)
    local = run_eval("tiny", str(real_bench), str(tmp_path / "local"), cfg, progress=False, model_and_processor=model)
    remote = run_eval("tiny", HUB_ID, str(tmp_path / "hub"), cfg, progress=False, model_and_processor=model)
    assert local == remote
    generations = [(tmp_path / run / "generations.jsonl").read_text() for run in ("local", "hub")]
    assert generations[0] == generations[1]
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["data"] == HUB_ID


def test_test_images_all_asks_each_photo_the_image_questions_and_the_name_questions_once(real_bench, tmp_path):
    """MLLMU-Bench's Test_Set holds several photos of each person. --test-images first asks with the first;
    all asks the image questions with every photo (each its own view of the person) and the questions asked
    by name once, since no photo changes them; the first photo's answers are those of first, and each record of
    all says which photo it asked with."""
    from viker.eval.evaluate import forget_test_rows, photo_views

    rows = forget_test_rows(real_bench, load_profiles(real_bench, "forget_5"))
    views = photo_views(rows, "all")
    assert [v.images for v in views] == [(img,) for p in rows for img in p.images]
    assert all(len(p.images) == 2 for p in rows)
    for p, first, second in zip(rows, views[::2], views[1::2]):
        assert (first.id, first.mc, first.generation, first.cloze) == (p.id, p.mc, p.generation, p.cloze)
        assert second.mc == tuple(q for q in p.mc if q.with_image) and any(not q.with_image for q in p.mc)
        assert all(q.with_image for q in (*second.generation, *second.cloze))
    assert photo_views(rows) == [replace(p, images=p.images[:1]) for p in rows]

    model = build_tiny(real_bench, TinyConfig(vocab_size=600, hidden=32, intermediate=64, layers=1, heads=2,
                                              vision_hidden=16, vision_layers=1, image_size=16))
    records = {}
    for which in ("first", "all"):
        cfg = EvalConfig(forget="forget_5", max_new_tokens=4, test_images=which, scope={"test": ("multiple_choice",)})
        run_eval("tiny", str(real_bench), str(tmp_path / which), cfg, progress=False, model_and_processor=model)
        lines = (tmp_path / which / "generations.jsonl").read_text().splitlines()
        records[which] = [json.loads(line) for line in lines]
        metrics = json.loads((tmp_path / which / "metrics.json").read_text())
        hits = [r["hit"] for r in records[which] if r["image"]]
        assert metrics["test_acc"] == pytest.approx(100 * sum(hits) / len(hits), abs=0.01)
    first, every = records["first"], records["all"]
    assert sum(r["image"] for r in every) == 2 * sum(r["image"] for r in first)
    assert sum(not r["image"] for r in every) == sum(not r["image"] for r in first)
    for person in {r["profile"] for r in first}:  # per person: the first photo's records, then the second's
        mine = [r for r in every if r["profile"] == person]
        theirs = [r for r in first if r["profile"] == person]
        # each record asked with a photo says which (the first asks with one alone: nothing to say)
        assert all("photo" not in r for r in theirs)
        photos = [0 if r["image"] else None for r in theirs] + [1] * (len(mine) - len(theirs))
        assert [r.get("photo") for r in mine] == photos
        assert [{k: v for k, v in r.items() if k != "photo"} for r in mine[:len(theirs)]] == theirs
        assert all(r["image"] for r in mine[len(theirs):])


def test_without_datasets_a_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(VikerError, match=rf"{HUB_ID}: .*`datasets`.*pip install \"viker\[hub\]\""):
        load_profiles(HUB_ID, "forget_10")
    # a mistyped local path of the same form is read as a hub id too: the message says no such folder is here
    with pytest.raises(VikerError, match=r"there is no local folder downloads/mllmu either"):
        load_profiles("downloads/mllmu", "forget_10")


def test_a_hub_id_the_hub_does_not_serve_says_no_such_folder_is_here_either(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(repo, config, split):
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(VikerError, match=r"downloads/mllmu: cannot load config 'forget_10' from the hub "
                                         r"\(Couldn't reach 'downloads/mllmu' on the Hub\); there is no local folder "
                                         r"downloads/mllmu either"):
        load_profiles("downloads/mllmu", "forget_10")


# --- malformed rows: an error naming the file and row, never a silent wrong score ------------------------

def _rows_edit(config, shard, edit):
    """Rewrite one file of ``config``: ``edit(rows)`` returns the new rows (schema inferred again when
    the edit changes a nested type)."""
    def apply(root):
        path = sorted((root / config).glob("*.parquet"))[shard]
        table = pq.read_table(path)
        rows, keep_schema = edit(table.to_pylist())
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema if keep_schema else None), path)
        return path.relative_to(root)
    return apply


def _mc(rows, change, keep_schema=True):
    change(rows[1]["Classification_Task"]["Image_Textual_Questions"][0])
    return rows, keep_schema


def _every_mc(rows, change):
    for row in rows:
        for questions in row["Classification_Task"].values():
            for q in questions:
                change(q)
    return rows, False


MALFORMED = {
    "fifth option": (_rows_edit("forget_10", 0, lambda rows: _mc(rows, lambda q: q["Options"].update(E="Rome"),
                                                                 keep_schema=False)),
                     "forget_10", r":row 1: Image_Textual_Questions\[0\] has options \['A', 'B', 'C', 'D', 'E'\]"),
    "option missing from the schema": (
        _rows_edit("forget_10", 0, lambda rows: _every_mc(rows, lambda q: q["Options"].pop("D"))),
        "forget_10", r": column 'Classification_Task.Image_Textual_Questions\[\].Options' lacks nested field 'D'"),
    "empty option": (_rows_edit("forget_10", 0, lambda rows: _mc(rows, lambda q: q["Options"].update(B=None))),
                     "forget_10", r":row 1: Image_Textual_Questions\[0\] has options \['A', 'C', 'D'\], expected A-D"),
    "answer letter outside the options": (
        _rows_edit("forget_10", 0, lambda rows: _mc(rows, lambda q: q.update(Correct_Answer="F"))),
        "forget_10", r":row 1: Image_Textual_Questions\[0\] has answer 'F' outside A-D"),
    "no answer letter": (_rows_edit("forget_10", 0, lambda rows: _mc(rows, lambda q: q.update(Correct_Answer=None))),
                         "forget_10", r":row 1: Image_Textual_Questions\[0\] has answer '' outside A-D"),
    "answer field missing": (
        _rows_edit("forget_10", 0, lambda rows: _every_mc(rows, lambda q: q.pop("Correct_Answer"))),
        "forget_10", r"lacks nested field 'Correct_Answer'"),
    "empty Test_Set image": (
        _rows_edit("Test_Set", 1, lambda rows: (rows[:1] + [{**rows[1], "images": [rows[1]["images"][0],
                                                                                   {"bytes": b"", "path": None}]}],
                                                True)),
        "Test_Set", r"Test_Set/train-00001-of-00002.parquet:row 1 image 1: empty image"),
    "Test_Set row without images": (
        _rows_edit("Test_Set", 0, lambda rows: ([{**rows[0], "images": []}] + rows[1:], True)),
        "Test_Set", r"Test_Set/train-00000-of-00002.parquet:row 0: no images"),
    "empty ft_Data image": (_rows_edit("ft_Data", 0, lambda rows: (
        rows[:2] + [{**rows[2], "image": {"bytes": None, "path": None}}] + rows[3:], True)),
        "ft_Data", r"ft_Data/train-00000-of-00001.parquet:row 2: empty image"),
    "ft_Data image stored by a path that is not there": (_rows_edit("ft_Data", 0, lambda rows: (
        rows[:2] + [{**rows[2], "image": {"bytes": None, "path": "2.png"}}] + rows[3:], True)),
        "ft_Data", r"ft_Data/train-00000-of-00001.parquet:row 2: image stored by path, and \S*ft_Data/2.png cannot"),
    "ft_Data metadata not JSON": (_rows_edit("ft_Data", 0, lambda rows: (
        rows[:3] + [{**rows[3], "metadata": "Question: who?"}] + rows[4:], True)),
        "ft_Data", r"ft_Data/train-00000-of-00001.parquet:row 3: metadata is not JSON"),
    "ft_Data pair without an answer": (_rows_edit("ft_Data", 0, lambda rows: (
        rows[:3] + [{**rows[3], "metadata": json.dumps([{"Question": "Who is this person?"}])}] + rows[4:], True)),
        "ft_Data", r"ft_Data/train-00000-of-00001.parquet:row 3: metadata item 0 is not a \{Question, Answer\} object"),
    "ft_Data metadata one object, not a list": (_rows_edit("ft_Data", 0, lambda rows: (
        rows[:3] + [{**rows[3], "metadata": json.dumps({"Question": "Who?", "Answer": "Ava."})}] + rows[4:], True)),
        "ft_Data", r"ft_Data/train-00000-of-00001.parquet:row 3: metadata is a JSON dict, not a list of "
                   r"\{Question, Answer\} objects"),
    **{f"ft_Data pair with a {what}": (_rows_edit("ft_Data", 0, lambda rows, pair=pair: (
        rows[:3] + [{**rows[3], "metadata": json.dumps([{"Question": "Who?", "Answer": "Ava."}, pair])}] + rows[4:],
        True)), "ft_Data", r"ft_Data/train-00000-of-00001.parquet:row 3: metadata pair 1 lacks a Question or an Answer")
       for what, pair in {"null answer": {"Question": "Who?", "Answer": None},
                          "blank answer": {"Question": "Who?", "Answer": "  "},
                          "null question": {"Question": None, "Answer": "Ava."}}.items()},
    "a null question record": (_rows_edit("forget_10", 0, lambda rows: (
        rows[:1] + [{**rows[1], "Generation_Task": [None, *rows[1]["Generation_Task"]]}] + rows[2:], True)),
        "forget_10", r":row 1: Generation_Task item 0 is None, not a question record"),
    "a blank multiple-choice question": (_rows_edit("forget_10", 0, lambda rows: _mc(rows, lambda q: q.update(
        Question=" "))), "forget_10", r":row 1: Image_Textual_Questions\[0\] lacks a Question"),
    "no ID": (_rows_edit("forget_10", 0, lambda rows: (rows[:1] + [{**rows[1], "ID": None}] + rows[2:], True)),
              "forget_10", r":row 1: no ID"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_rows_are_errors_naming_file_and_row(case, real_bench, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(real_bench, root)
    corrupt, config, message = MALFORMED[case]
    corrupt(root)
    load = load_finetune if config == "ft_Data" else load_profiles
    with pytest.raises(VikerError, match=message):
        load(root, config)


def test_images_stored_by_path_load_as_their_bytes(real_bench, tmp_path):
    """The Hugging Face Image feature stores an image given as a file as ``{bytes: None, path}``; a copy
    of the benchmark rebuilt that way (paths relative to the parquet file, columns written untyped where
    they hold no value) loads the same images."""
    root = tmp_path / "bench"
    shutil.copytree(real_bench, root)
    for config, column in [("Full_Set", "image"), ("Test_Set", "images"), ("ft_Data", "image")]:
        for n, path in enumerate(sorted((root / config).glob("*.parquet"))):
            rows = pq.read_table(path).to_pylist()
            for i, row in enumerate(rows):
                cells = row[column] if isinstance(row[column], list) else [row[column]]
                for j, cell in enumerate(cells):
                    file = path.parent / "images" / f"{n}-{i}-{j}.png"
                    file.parent.mkdir(exist_ok=True)
                    file.write_bytes(cell["bytes"])
                    cell.update(bytes=None, path=str(file.relative_to(path.parent)))
            table = pa.Table.from_pylist(rows)  # no schema given: the all-None bytes become Arrow's null type
            assert pa.types.is_null(table.schema.field(column).type.value_type.field("bytes").type
                                    if column == "images" else table.schema.field(column).type.field("bytes").type)
            pq.write_table(table, path)
    for config in ("Full_Set", "Test_Set"):
        assert [p.images for p in load_profiles(root, config)] == [p.images for p in load_profiles(real_bench, config)]
    assert [r.image for r in load_finetune(root)] == [r.image for r in load_finetune(real_bench)]
    # a relative path is read from the folder of the file listing it (datasets writes them from its working
    # folder): where none is there, the error says where it looked and what to store instead
    (root / "Full_Set" / "images" / "0-0-0.png").unlink()
    with pytest.raises(VikerError, match=r"image stored by path, and .*Full_Set/images/0-0-0.png cannot be read "
                       r"\(.*\) \(its relative path images/0-0-0.png, read from the folder of the file listing it\); "
                       "store each image's bytes in the file, or its absolute path"):
        load_profiles(root, "Full_Set")


def test_spaces_around_or_doubled_in_an_option_are_the_files_not_the_options(real_bench, tmp_path):
    """An option stored as "baker " or "rock  climbing" is the option "baker" or "rock climbing": with the spaces
    kept, the likelihood scoring could not find it in the model's own answer, and its accuracy would quietly drop."""
    root = tmp_path / "bench"
    shutil.copytree(real_bench, root)
    _rows_edit("forget_10", 0, lambda rows: _every_mc(rows, lambda q: q["Options"].update(
        {k: f" {v.replace(' ', '  ')} " for k, v in q["Options"].items()})))(root)
    clean = [q.options for p in load_profiles(real_bench, "forget_10") for q in p.mc]
    assert [q.options for p in load_profiles(root, "forget_10") for q in p.mc] == clean
