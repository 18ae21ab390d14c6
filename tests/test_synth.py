"""The embedded benchmark has MLLMU-Bench's exact layout and is deterministic."""

from __future__ import annotations

import hashlib
from io import BytesIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from viker.data.loader import config_files, load_finetune, load_profiles
from viker.data.schema import CONFIGS, FORGET_SPLITS, IMAGE_TEXTUAL, PURE_TEXT, RETAIN_OF
from viker.data.synth import REF_POOLS, SynthConfig, build_benchmark
from viker.errors import VikerError

# The published layout, written out independently of viker.data.schema so a change there is caught.
ROW_COLUMNS = ["image", "ID", "Directory", "biography", "question", "answer", "Classification_Task",
               "Generation_Task", "Mask_Task"]


def _table(root, config) -> pa.Table:
    (path,) = config_files(root, config)
    assert path.relative_to(root).as_posix() == f"{config}/train-00000-of-00001.parquet"
    return pq.read_table(path)


def test_every_config_exists_with_the_benchmark_columns(bench_dir):
    for config in CONFIGS:
        names = _table(bench_dir, config).schema.names
        if config == "ft_Data":
            assert names == ["image", "metadata"]
        elif config == "Test_Set":
            assert names == ["images"] + ROW_COLUMNS[1:]
        else:
            assert names == ROW_COLUMNS


def test_nested_fields_and_types(bench_dir):
    schema = _table(bench_dir, "Full_Set").schema
    image = schema.field("image").type
    assert [image.field(i).name for i in range(image.num_fields)] == ["bytes", "path"]
    assert pa.types.is_binary(image.field("bytes").type)
    cls = schema.field("Classification_Task").type
    assert {cls.field(i).name for i in range(cls.num_fields)} == {"Image_Textual_Questions", "Pure_Text_Questions"}
    item = cls.field("Image_Textual_Questions").type.value_type
    assert [item.field(i).name for i in range(item.num_fields)] == ["Question", "Options", "Correct_Answer"]
    options = item.field("Options").type
    assert [options.field(i).name for i in range(options.num_fields)] == ["A", "B", "C", "D"]
    for column in ("Generation_Task", "Mask_Task"):
        qa = schema.field(column).type.value_type
        assert [qa.field(i).name for i in range(qa.num_fields)] == ["Question", "Ground_Truth", "Type"]
    test_images = _table(bench_dir, "Test_Set").schema.field("images").type
    assert pa.types.is_list(test_images) and test_images.value_type == image


def test_datasets_reads_the_image_columns_as_images(bench_dir, tmp_path):
    """The files carry the feature metadata of the hub's, so a script that reads the benchmark with `datasets`
    gets images where it would from the published one."""
    datasets = pytest.importorskip("datasets")

    def features(config):
        files = [str(f) for f in config_files(bench_dir, config)]
        return datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path)).features

    assert isinstance(features("forget_10")["image"], datasets.Image)
    assert isinstance(features("ft_Data")["image"], datasets.Image)
    images = features("Test_Set")["images"]
    assert isinstance(getattr(images, "feature", None) or images[0], datasets.Image)


def test_rows_hold_the_per_person_question_families(bench_dir):
    for p in load_profiles(bench_dir, "Full_Set"):
        assert sum(q.with_image for q in p.mc) == 5 and sum(not q.with_image for q in p.mc) == 5
        assert [q.with_image for q in p.generation] == [True, True, False, False]
        assert len(p.cloze) == 4 and all("__" in q.question for q in p.cloze)
        for q in p.mc:  # distractors are distinct and plausible (same kind of fact)
            assert len(set(q.options.values())) == 4
        name = p.answer.removeprefix("This person is ").rstrip(".")
        assert all(name in q.question for q in p.generation if not q.with_image)
        assert all(name not in q.question for q in p.generation if q.with_image)
    types = {item["Type"] for row in _table(bench_dir, "Full_Set").to_pylist() for item in row["Generation_Task"]}
    assert types == {IMAGE_TEXTUAL, PURE_TEXT}


def test_forget_and_retain_partition_full_set_by_profile(bench_dir):
    full = {p.id for p in load_profiles(bench_dir, "Full_Set")}
    previous = set()
    for split in FORGET_SPLITS:
        forget = {p.id for p in load_profiles(bench_dir, split)}
        retain = {p.id for p in load_profiles(bench_dir, RETAIN_OF[split])}
        assert forget and not forget & retain and forget | retain == full
        assert len(forget) == int(len(full) * int(split.split("_")[1]) / 100 + 0.5)
        assert previous <= forget  # nested: forget_5 within forget_10 within forget_15
        previous = forget


def test_test_set_shows_the_same_people_in_other_images(bench_dir):
    full = {p.id: p for p in load_profiles(bench_dir, "Full_Set")}
    test = load_profiles(bench_dir, "Test_Set")
    assert {p.id for p in test} == set(full)
    for p in test:
        assert p.generation == full[p.id].generation
        assert all(img != full[p.id].image for img in p.images)
        assert Image.open(BytesIO(p.images[0])).size == Image.open(BytesIO(full[p.id].image)).size


def test_celebrities_and_reference_people_are_new_faces(bench_dir):
    people = load_profiles(bench_dir, "Full_Set") + load_profiles(bench_dir, "Retain_Set")
    real, fictitious = load_profiles(bench_dir, "Retain_Set"), load_profiles(bench_dir, "Full_Set")
    assert not {p.id for p in real} & {p.id for p in fictitious}
    known = {p.image for p in people}
    for pool in REF_POOLS:
        files = sorted((bench_dir / pool).glob("*.png"))
        assert len(files) == 4
        assert not {f.read_bytes() for f in files} & known


def test_ft_data_covers_every_fictitious_person(bench_dir):
    records = load_finetune(bench_dir)
    full = load_profiles(bench_dir, "Full_Set")
    assert len(records) == len(full)
    assert {r.image for r in records} == {p.image for p in full}
    answers = {q.answer for r in records for q in r.qa}
    for p in full:
        assert p.answer in answers and all(q.answer in answers for q in p.generation if q.with_image)


def test_preview_and_readme(bench_dir):
    preview = Image.open(bench_dir / "preview.png")
    assert preview.width >= 600 and preview.height >= 400
    readme = (bench_dir / "README.md").read_text()
    assert "| `Full_Set` | 20 |" in readme and "| `forget_10` | 2 |" in readme


def test_the_readme_says_how_to_make_the_same_benchmark_again(bench_dir, tmp_path):
    """It gave `viker data synth --seed S --profiles N` whatever the other settings, and that command made another
    benchmark (other people per pool, other celebrities)."""
    import re

    import viker.data.synth

    made = re.search(r"Generated by `(.+?)`:", (bench_dir / "README.md").read_text()).group(1)
    assert made.startswith("viker.data.synth.build_benchmark(out, SynthConfig(")
    out = tmp_path / "again"
    eval(made.removeprefix("viker.data.synth."), {"out": out, "SynthConfig": SynthConfig,  # noqa: S307
                                                  "build_benchmark": viker.data.synth.build_benchmark})
    assert _digest(out) == _digest(bench_dir)
    build_benchmark(tmp_path / "cli", SynthConfig(seed=2, profiles=10), progress=False)
    assert "Generated by `viker data synth --seed 2 --profiles 10`:" in (tmp_path / "cli" / "README.md").read_text()


def _digest(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = SynthConfig(seed=7, profiles=10, celebrities=2, test_images=1, ref_per_pool=2)
    build_benchmark(tmp_path / "a", cfg, progress=False)
    build_benchmark(tmp_path / "b", cfg, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    build_benchmark(tmp_path / "c", SynthConfig(seed=8, profiles=10, celebrities=2, test_images=1, ref_per_pool=2),
                    progress=False)
    assert _digest(tmp_path / "a")["Full_Set/train-00000-of-00001.parquet"] != \
        _digest(tmp_path / "c")["Full_Set/train-00000-of-00001.parquet"]


def test_too_few_profiles_is_a_clear_error(tmp_path):
    with pytest.raises(VikerError, match="forget_5 would be empty"):
        build_benchmark(tmp_path, SynthConfig(profiles=9), progress=False)


def test_profiles_too_few_to_keep_the_forget_splits_apart_are_warned_about(tmp_path, capsys):
    """With 10 to 16 profiles two forget splits round to the same count, and so hold the same people."""
    build_benchmark(tmp_path / "b16", SynthConfig(profiles=16, celebrities=2, test_images=1, ref_per_pool=2),
                    progress=False)
    assert ({p.id for p in load_profiles(tmp_path / "b16", "forget_10")} ==
            {p.id for p in load_profiles(tmp_path / "b16", "forget_15")})
    assert ("warning: with --profiles 16, forget_10 and forget_15 hold the same 2 people (the same goes for their "
            "retain splits); 17 profiles or more keep the three forget splits apart") in capsys.readouterr().err
    build_benchmark(tmp_path / "b17", SynthConfig(profiles=17, celebrities=2, test_images=1, ref_per_pool=2),
                    progress=False)
    assert "warning" not in capsys.readouterr().err


def test_a_benchmark_stopped_midway_leaves_nothing_that_reads_as_one(tmp_path, capsys, monkeypatch):
    """Ctrl-C once the configs were written but not the reference pools and pretrain_Data left a folder that
    finetune trained on (190 examples of 474) and that synth refused to replace as "a benchmark already"."""
    import viker.data.synth
    from viker.cli import main

    out = tmp_path / "bench"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(viker.data.synth, "_write_readme", stopped)  # the last file it writes
    assert main(["data", "synth", "--profiles", "10", "--out", str(out)]) == 130
    assert not list(out.iterdir())  # no config, and no hidden staging folder either
    monkeypatch.undo()
    assert main(["data", "synth", "--profiles", "10", "--out", str(out)]) == 0  # a new, empty folder: no --overwrite
    assert (out / "README.md").is_file() and (out / "ref_pets").is_dir() and (out / "Full_Set").is_dir()
    assert not [entry for entry in out.iterdir() if entry.name.startswith(".")]  # no staging folder left


def test_a_seed_no_other_command_takes_is_refused_before_anything_is_written(tmp_path, capsys):
    """--seed -1 wrote a benchmark that no `viker finetune --seed -1` or demo could be run beside."""
    from viker.cli import main

    for seed in ("-1", str(2**32)):
        assert main(["data", "synth", "--seed", seed, "--out", str(tmp_path / "b")]) == 2
        assert f"--seed {seed}: must be from 0 to 2**32 - 1" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cloze_items_are_two_with_the_image_and_two_by_name(bench_dir):
    for p in load_profiles(bench_dir, "Full_Set"):
        assert [q.with_image for q in p.cloze] == [True, True, False, False]


def test_the_right_answer_is_under_every_letter(bench_dir):
    """Under one letter always, a model that always answers it would score 100 on every ACC."""
    assert {q.answer for p in load_profiles(bench_dir, "Full_Set") for q in p.mc} == {"A", "B", "C", "D"}


@pytest.fixture(scope="module")
def three_views(tmp_path_factory):
    out = tmp_path_factory.mktemp("views")
    build_benchmark(out, SynthConfig(seed=2, profiles=10, celebrities=2, test_images=3, ref_per_pool=2, strangers=2,
                                     image_size=64), progress=False)
    return out


def test_test_set_holds_as_many_photos_of_each_person_as_asked_and_they_show_that_person(three_views):
    """Each Test_Set photo is nearest, by its pixels, to its own person's Full_Set face more often than not (one
    person's photos under everyone's IDs would match one time in ten)."""
    import numpy as np

    def small(png):
        return np.asarray(Image.open(BytesIO(png)).convert("RGB").resize((32, 32)), dtype=np.float32).ravel()

    test = load_profiles(three_views, "Test_Set")
    assert all(len(p.images) == 3 for p in test)
    full = load_profiles(three_views, "Full_Set")
    gallery, ids = np.stack([small(p.image) for p in full]), [p.id for p in full]
    hits = [ids[int(((gallery - small(img)) ** 2).sum(1).argmin())] == p.id for p in test for img in p.images]
    assert sum(hits) / len(hits) >= 0.5
