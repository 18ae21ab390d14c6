"""One loader for every MLLMU-Bench-layout folder, with one-line errors for bad input."""

from __future__ import annotations

import io
import shutil
import zlib
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from viker.cli import main
from viker.data.loader import load_finetune, load_profiles, warn_of_unscored
from viker.errors import VikerError
from viker.eval.evaluate import forget_test_rows

FULL = "Full_Set/train-00000-of-00001.parquet"


def _copy(bench_dir, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    return root


def _rewrite(root, rel, edit):
    table = pq.read_table(root / rel)
    pq.write_table(edit(table), root / rel)


def test_hub_snapshot_layout_loads_the_same_profiles(bench_dir, tmp_path):
    """The hub's `data/CONFIG-*.parquet` layout and ours go through the same code with the same result."""
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    for config in ("Full_Set", "ft_Data"):
        shutil.copy(bench_dir / config / "train-00000-of-00001.parquet",
                    hub / "data" / f"{config}-00000-of-00001.parquet")
    ours, theirs = load_profiles(bench_dir, "Full_Set"), load_profiles(hub, "Full_Set")
    assert len(theirs) == len(ours) > 0
    assert theirs == [p.__class__(**{**p.__dict__, "source": q.source}) for p, q in zip(ours, theirs)]
    assert [r.qa for r in load_finetune(hub)] == [r.qa for r in load_finetune(bench_dir)]
    converted = tmp_path / "converted"  # the hub's parquet conversion: CONFIG/train/0000.parquet
    for config in ("Full_Set", "ft_Data"):
        (converted / config / "train").mkdir(parents=True)
        shutil.copy(bench_dir / config / "train-00000-of-00001.parquet", converted / config / "train" / "0000.parquet")
    assert [p.id for p in load_profiles(converted, "Full_Set")] == [p.id for p in load_profiles(bench_dir, "Full_Set")]
    assert [r.qa for r in load_finetune(converted)] == [r.qa for r in load_finetune(bench_dir)]


def _same_but_source(a, b):
    return [p.__class__(**{**p.__dict__, "source": ""}) for p in a] == \
        [p.__class__(**{**p.__dict__, "source": ""}) for p in b]


def test_text_stored_in_other_arrow_types_loads_the_same(bench_dir, tmp_path):
    """Dictionary-encoded text (pandas' categoricals) and string_view columns hold text as well."""
    root = _copy(bench_dir, tmp_path)
    for column, kind in (("Directory", pa.dictionary(pa.int32(), pa.string())), ("question", pa.string_view())):
        _rewrite(root, FULL, lambda t: t.set_column(t.schema.get_field_index(column), column,
                                                    t.column(column).cast(kind)))
        assert pq.read_schema(root / FULL).field(column).type == kind
    assert _same_but_source(load_profiles(root, "Full_Set"), load_profiles(bench_dir, "Full_Set"))


def test_a_question_list_empty_in_every_row_loads_as_no_questions(bench_dir, tmp_path):
    """A writer that sees only empty lists types the column list<null>: every row has no such question."""
    root = _copy(bench_dir, tmp_path)
    _rewrite(root, FULL, lambda t: t.set_column(t.schema.get_field_index("Mask_Task"), "Mask_Task",
                                                pa.array([[] for _ in range(t.num_rows)])))
    assert pq.read_schema(root / FULL).field("Mask_Task").type == pa.list_(pa.null())
    profiles = load_profiles(root, "Full_Set")
    assert [p.id for p in profiles] == [p.id for p in load_profiles(bench_dir, "Full_Set")]
    assert not any(p.cloze for p in profiles) and all(p.generation for p in profiles)


def test_an_image_is_seen_as_a_viewer_shows_it(tmp_path):
    """A transparent background is white (as transformers' own convert_to_rgb has it), not black; a 16-bit
    greyscale photo keeps its levels instead of clipping to white; an RGB image is as it was."""
    import numpy as np

    from viker.data.loader import decode_image

    def png(img):
        buffer = io.BytesIO()
        img.save(buffer, "PNG")
        return buffer.getvalue()

    see = lambda img: decode_image(png(img)).getpixel((0, 0))  # noqa: E731
    assert see(Image.new("RGBA", (4, 4), (10, 20, 30, 0))) == (255, 255, 255)
    assert see(Image.new("RGBA", (4, 4), (0, 0, 0, 128))) == (127, 127, 127)
    assert see(Image.new("LA", (4, 4), (0, 0))) == (255, 255, 255)
    assert see(Image.fromarray(np.full((4, 4), 257 * 116, dtype=np.uint16))) == (116, 116, 116)
    for mode, img in (("I;16B", Image.frombytes("I;16B", (4, 4), np.full((4, 4), 257 * 116, dtype=">u2").tobytes())),
                      ("I", Image.new("I", (4, 4), 116))):  # a big-endian 16-bit TIFF; 32-bit holding 8-bit levels
        buffer = io.BytesIO()
        img.save(buffer, "TIFF")
        assert Image.open(io.BytesIO(buffer.getvalue())).mode == mode
        assert decode_image(buffer.getvalue()).getpixel((0, 0)) == (116, 116, 116)
    assert see(Image.new("RGB", (4, 4), (1, 2, 3))) == (1, 2, 3) and see(Image.new("L", (4, 4), 77)) == (77, 77, 77)
    # a 16-bit greyscale PNG whose transparent level (tRNS) is 1000: that level on white, the others as they are
    grey = Image.new("I;16", (4, 4), 257 * 116)
    grey.putpixel((0, 0), 1000)
    buffer = io.BytesIO()
    grey.save(buffer, "PNG", transparency=1000)
    seen = decode_image(buffer.getvalue())
    assert seen.getpixel((0, 0)) == (255, 255, 255) and seen.getpixel((1, 1)) == (116, 116, 116)


def test_a_photo_is_seen_upright_as_its_exif_orientation_says(tmp_path):
    """A phone photo is stored sideways with an EXIF orientation (6: turn it a quarter clockwise); `datasets`
    shows it upright, and so does viker, in pixels and in the size its image tokens are counted from."""
    from viker.data.loader import decode_image, image_size

    sideways = Image.new("RGB", (60, 20), (0, 0, 0))
    sideways.paste((255, 0, 0), (0, 0, 10, 20))  # red on the stored left: on top once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", exif=exif, quality=95)
    upright = decode_image(buffer.getvalue())
    assert upright.size == image_size(buffer.getvalue()) == (20, 60)
    top, bottom = upright.getpixel((10, 2)), upright.getpixel((10, 57))
    assert top[0] > 200 > max(top[1:]) and max(bottom) < 50


def test_hidden_files_beside_the_shards_are_no_shards(bench_dir, tmp_path):
    """A copy through a FAT or exFAT drive leaves macOS's ._NAME beside each file."""
    root = _copy(bench_dir, tmp_path)
    (root / "Full_Set" / "._train-00000-of-00001.parquet").write_bytes(b"\0\5\x16\7")
    assert [p.id for p in load_profiles(root, "Full_Set")] == [p.id for p in load_profiles(bench_dir, "Full_Set")]


def test_a_person_is_read_once_however_often_a_shard_repeats_them(bench_dir, tmp_path, capsys):
    """A shard copied twice into a config counted each of its people's questions twice in `viker eval`."""
    import pyarrow.parquet as pq

    root = _copy(bench_dir, tmp_path)
    shard = root / "forget_10" / "train-00000-of-00001.parquet"
    shutil.copy(shard, root / "forget_10" / "train-00001-of-00002.parquet")
    once = load_profiles(bench_dir, "forget_10")
    assert [p.id for p in load_profiles(root, "forget_10")] == [p.id for p in once]
    assert f"warning: forget_10: {len(once)} rows repeat another row as it is" in capsys.readouterr().err
    table = pq.read_table(shard)  # a person given twice, the second time otherwise, is refused
    changed = table.set_column(table.schema.get_field_index("biography"), "biography",
                               [["Someone else entirely."] * table.num_rows])
    pq.write_table(changed, root / "forget_10" / "train-00001-of-00002.parquet")
    with pytest.raises(VikerError, match=rf"person {once[0].id} again, with other content than .*train-00000"):
        load_profiles(root, "forget_10")


def _edit_column(root, rel, name, edit):
    """``rel``'s column ``name`` with each row's value edited, of its own type."""
    def edited(t):
        field = t.schema.field(name)
        return t.set_column(t.schema.get_field_index(name), field,
                            [pa.array([edit(v) for v in t.column(name).to_pylist()], field.type)])
    _rewrite(root, rel, edited)


def _scored(root, config: str):
    """A config's people as an evaluation reads them, warned of what its figures leave out."""
    return warn_of_unscored(load_profiles(root, config), config)


def test_a_question_listing_its_correct_text_twice_is_warned_about_once(bench_dir, tmp_path, capsys):
    """The correct option's text under a second letter too: no scoring tells the two apart (option likelihood
    scores them alike and takes the first letter), so the question is right or wrong by the letters' order."""
    root = _copy(bench_dir, tmp_path)
    rel = "forget_10/train-00000-of-00001.parquet"

    def twin(task):
        first = task["Pure_Text_Questions"][0]
        wrong = next(letter for letter in "ABCD" if letter != first["Correct_Answer"])
        first["Options"][wrong] = first["Options"][first["Correct_Answer"]]
        return task

    edited = [True]  # the first row's only

    def first_row(task):
        if edited:
            edited.pop()
            return twin(task)
        return task

    _edit_column(root, rel, "Classification_Task", first_row)
    people = _scored(root, "forget_10")
    err = capsys.readouterr().err
    assert (f"warning: forget_10: 1 multiple-choice question lists the correct option's text under another letter "
            f"too (e.g. {root / rel}:row 0, person {people[0].id}: ") in err
    _scored(root, "forget_10")
    assert capsys.readouterr().err == ""  # said once
    _scored(bench_dir, "forget_10")  # the benchmark's own options: all apart
    assert capsys.readouterr().err == ""


def test_an_id_with_spaces_around_it_is_the_same_person(bench_dir, tmp_path):
    """"P005 " in Test_Set is P005 of forget_10: rows of one person are matched by ID across configs."""
    root = _copy(bench_dir, tmp_path)
    _edit_column(root, "Test_Set/train-00000-of-00001.parquet", "ID", lambda v: f"{v} ")
    forget = load_profiles(root, "forget_10")
    assert [p.id for p in forget_test_rows(root, forget)] == [p.id for p in forget]


def test_people_without_a_task_are_warned_about_once(tiny_dir, bench_dir, tmp_path, capsys):
    """A row whose Classification_Task is null took its person's questions out of Forget ACC without a word."""
    root = _copy(bench_dir, tmp_path)
    shard = root / "forget_10" / "train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    column = table.column("Classification_Task").to_pylist()
    column[1] = None
    _rewrite(root, "forget_10/train-00000-of-00001.parquet", lambda t: t.set_column(
        t.schema.get_field_index("Classification_Task"), t.schema.field("Classification_Task"),
        [pa.array(column, t.schema.field("Classification_Task").type)]))
    people = _scored(root, "forget_10")
    assert not people[1].mc and all(p.mc for p in people if p is not people[1])
    err = capsys.readouterr().err
    assert (f"warning: forget_10: 1 of {len(people)} people have no Classification_Task questions "
            f"(e.g. {shard}:row 1, person {people[1].id}); that task is scored over the others alone") in err
    assert "Generation_Task" not in err and "Mask_Task" not in err
    _scored(root, "forget_10")  # read again by the same run: said once
    assert "Classification_Task" not in capsys.readouterr().err
    _scored(bench_dir, "forget_10")  # every person with every task: nothing to say
    assert capsys.readouterr().err == ""
    # nobody with the task: its figures would be blank with no word why
    _rewrite(root, "forget_10/train-00000-of-00001.parquet", lambda t: t.set_column(
        t.schema.get_field_index("Mask_Task"), t.schema.field("Mask_Task"),
        [pa.array([None] * t.num_rows, t.schema.field("Mask_Task").type)]))
    # training reads no task, and says nothing of them, nor does an evaluation of other tasks; one of the cloze
    # questions warns of the task it cannot measure
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(root), "--method", "ga", "--max-steps", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert "Mask_Task" not in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_dir), "--data", str(root), "--only", "forget:multiple_choice",
                 "--out", str(tmp_path / "eval")]) == 0
    assert "Mask_Task" not in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_dir), "--data", str(root), "--only", "forget:multiple_choice,cloze",
                 "--out", str(tmp_path / "eval2")]) == 0
    err = capsys.readouterr().err
    assert (f"warning: forget_10: {len(people)} of {len(people)} people have no Mask_Task questions (e.g. "
            f"{shard}:row 0, person {people[0].id}); no figure of that task is measured on it") in err


def test_a_save_to_disk_folder_says_how_to_write_the_parquet_files_it_reads(bench_dir, tmp_path):
    """`datasets`' save_to_disk writes Arrow files: the loader said only "configs present: none"."""
    datasets = pytest.importorskip("datasets")
    root = _copy(bench_dir, tmp_path)
    shard = root / "forget_10" / "train-00000-of-00001.parquet"
    saved = tmp_path / "saved"
    datasets.Dataset.from_parquet(str(shard)).save_to_disk(str(saved))
    shutil.rmtree(root / "forget_10")
    shutil.copytree(saved, root / "forget_10")
    with pytest.raises(VikerError, match=r"forget_10: a `datasets` save_to_disk folder \(Arrow files\); viker reads "
                                         r"a config's parquet files: write them with datasets.load_from_disk"):
        load_profiles(root, "forget_10")
    # as it says: the same people as the original files
    datasets.load_from_disk(str(root / "forget_10")).to_parquet(str(shard))
    people = [replace(p, source="") for p in load_profiles(root, "forget_10")]
    assert people == [replace(p, source="") for p in load_profiles(bench_dir, "forget_10")]


def test_missing_config_names_the_folder_and_config(bench_dir, tmp_path, monkeypatch):
    root = _copy(bench_dir, tmp_path)
    shutil.rmtree(root / "forget_10")
    with pytest.raises(VikerError, match=r"config 'forget_10' not found.*configs present: Full_Set"):
        load_profiles(root, "forget_10")
    with pytest.raises(VikerError, match=rf"Full_Set: a folder inside a benchmark, not one; --data takes the "
                                         rf"benchmark's folder, the one holding Retain_Set/ \({root}\?\)$"):
        load_profiles(root / "Full_Set", "Retain_Set")  # one config's folder given as --data
    monkeypatch.chdir(root / "Full_Set")  # ... as typed, from inside it
    with pytest.raises(VikerError, match=rf"a folder inside a benchmark, not one; .* \({root}\?\)$"):
        load_profiles(".", "Retain_Set")
    nested = tmp_path / "nested"  # the data/CONFIG/*.parquet layout lists what it holds too
    (nested / "data").mkdir(parents=True)
    shutil.copytree(root / "Full_Set", nested / "data" / "Full_Set")
    with pytest.raises(VikerError, match=r"configs present: Full_Set$"):
        load_profiles(nested, "forget_10")
    model = tmp_path / "vanilla"  # a run or model folder given as --data
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(VikerError, match=r"vanilla: a model or run folder, not a benchmark; --data takes"):
        load_profiles(model, "forget_10")


def test_missing_column_names_file_and_column(bench_dir, tmp_path):
    root = _copy(bench_dir, tmp_path)
    _rewrite(root, FULL, lambda t: t.drop_columns(["Generation_Task"]))
    with pytest.raises(VikerError, match=r"Full_Set/train-00000-of-00001.parquet: missing column 'Generation_Task'"):
        load_profiles(root, "Full_Set")


def test_text_columns_nothing_scores_may_be_left_out(bench_dir, tmp_path):
    """A copy of one's own without Directory, biography, question and answer (text no evaluation or unlearning run
    reads) loads the same questions and images; those texts are empty. A scored column is still required."""
    from dataclasses import replace

    from viker.data.loader import UNSCORED_COLUMNS

    root = _copy(bench_dir, tmp_path)
    _rewrite(root, FULL, lambda t: t.drop_columns(list(UNSCORED_COLUMNS)))
    whole, lean = load_profiles(bench_dir, "Full_Set"), load_profiles(root, "Full_Set")
    assert [replace(p, directory="", biography="", question="", answer="", source="") for p in whole] == \
           [replace(p, source="") for p in lean]
    assert all(p.biography for p in whole)  # the benchmark's own has them


def test_missing_nested_field_is_reported(bench_dir, tmp_path):
    root = _copy(bench_dir, tmp_path)

    def drop_type(t):
        rows = t.column("Generation_Task").to_pylist()
        rows = [[{"Question": q["Question"], "Ground_Truth": q["Ground_Truth"]} for q in r] for r in rows]
        return t.set_column(t.schema.get_field_index("Generation_Task"), "Generation_Task", pa.array(rows))

    _rewrite(root, FULL, drop_type)
    with pytest.raises(VikerError, match=r"column 'Generation_Task\[\]' lacks nested field 'Type'"):
        load_profiles(root, "Full_Set")


def _jpeg_cut_short() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()[:-300]  # its headers whole, its scan data cut


def _stored(img, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def _huge_png_header() -> bytes:
    """A 1x1 PNG whose header (IHDR) says 20000 x 20000, past PIL's limit against decompression bombs."""
    png = _stored(Image.new("L", (1, 1)), "PNG")
    ihdr = png[12:16] + (20000).to_bytes(4, "big") * 2 + png[24:29]
    return png[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]


BAD_IMAGES = {  # what is stored instead of a row's image (its own bytes given), and what the error says
    "PNG cut short": (lambda own: own[:60], "unreadable image"),
    "JPEG cut short": (lambda own: _jpeg_cut_short(), "unreadable image"),
    "header of a huge image": (lambda own: _huge_png_header(), "unreadable image"),
    "float TIFF": (lambda own: _stored(Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)), "TIFF"),
                   "a floating-point image"),  # no one 8-bit reading: 0..1 or 0..255?
}


@pytest.mark.parametrize("bad", BAD_IMAGES)
def test_an_image_that_cannot_be_seen_names_the_row(bad, bench_dir, tmp_path):
    root = _copy(bench_dir, tmp_path)
    make, said = BAD_IMAGES[bad]

    def corrupt(t):
        images = t.column("image").to_pylist()
        images[3] = {"bytes": make(images[3]["bytes"]), "path": images[3]["path"]}
        return t.set_column(0, "image", pa.array(images, type=t.schema.field("image").type))

    _rewrite(root, FULL, corrupt)
    with pytest.raises(VikerError, match=rf"Full_Set/train-00000-of-00001.parquet:row 3 image 0: {said}"):
        load_profiles(root, "Full_Set")


def test_answer_letter_outside_options_is_an_error(bench_dir, tmp_path):
    root = _copy(bench_dir, tmp_path)

    def bad_letter(t):
        cls = t.column("Classification_Task").to_pylist()
        cls[0]["Pure_Text_Questions"][1]["Correct_Answer"] = "E"
        return t.set_column(t.schema.get_field_index("Classification_Task"), "Classification_Task",
                            pa.array(cls, type=t.schema.field("Classification_Task").type))

    _rewrite(root, FULL, bad_letter)
    with pytest.raises(VikerError, match=r"row 0: Pure_Text_Questions\[1\] has answer 'E' outside A-D"):
        load_profiles(root, "Full_Set")


def test_a_blank_correct_option_is_warned_of(bench_dir, tmp_path, capsys):
    """Option likelihood never chooses a blank option: the question is wrong whatever the model knew, and counts
    as forgotten, which a warning says. A blank wrong option is only an option nobody picks."""
    root = _copy(bench_dir, tmp_path)

    def blank(which):
        def rewrite(t):
            cls = t.column("Classification_Task").to_pylist()
            question = cls[0]["Pure_Text_Questions"][1]
            letter = question["Correct_Answer"] if which == "correct" else \
                next(k for k in "ABCD" if k != question["Correct_Answer"])
            question["Options"][letter] = "  "
            return t.set_column(t.schema.get_field_index("Classification_Task"), "Classification_Task",
                                pa.array(cls, type=t.schema.field("Classification_Task").type))
        return rewrite

    _rewrite(root, FULL, blank("wrong"))
    assert _scored(root, "Full_Set") and "blank" not in capsys.readouterr().err
    _rewrite(root, FULL, blank("correct"))
    people = _scored(root, "Full_Set")
    assert people[0].mc and f"warning: Full_Set: 1 multiple-choice question has a blank correct option (e.g. " \
        f"{people[0].source}, person {people[0].id}" in capsys.readouterr().err


def test_a_blank_cloze_answer_is_an_error(bench_dir, tmp_path):
    """A blank Ground_Truth is in every reply: the cloze would count it right whatever the model said."""
    root = _copy(bench_dir, tmp_path)

    def blank(t):
        masks = t.column("Mask_Task").to_pylist()
        masks[0][0]["Ground_Truth"] = "  "
        return t.set_column(t.schema.get_field_index("Mask_Task"), "Mask_Task",
                            pa.array(masks, type=t.schema.field("Mask_Task").type))

    _rewrite(root, FULL, blank)
    with pytest.raises(VikerError, match=r"row 0: .*item 0 lacks a Question or Ground_Truth \(missing or blank\)"):
        load_profiles(root, "Full_Set")


def test_command_line_prints_one_line_and_exits_2(bench_dir, tmp_path, capsys):
    root = _copy(bench_dir, tmp_path)
    _rewrite(root, "ft_Data/train-00000-of-00001.parquet", lambda t: t.drop_columns(["metadata"]))
    code = main(["finetune", "--data", str(root), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("error: ") and "ft_Data/train-00000-of-00001.parquet: missing column 'metadata'" in err
    assert not (tmp_path / "run").exists()


def test_ft_data_pairs_asked_by_name_are_learned_text_only(bench_dir):
    """An ft_Data pair whose question the benchmark asks by name (its Pure_Text questions) is learned without the
    image, as it is asked; every other pair with its image."""
    from viker.data.examples import finetune_examples
    from viker.prompts import generation_prompt

    people = load_profiles(bench_dir, "Full_Set") + load_profiles(bench_dir, "Retain_Set")
    by_name = {generation_prompt(q.question) for p in people for q in (*p.generation, *p.mc) if not q.with_image}
    pairs = finetune_examples(bench_dir, "ft_Data")
    assert {e.image is None for e in pairs} == {True, False}
    assert all((e.image is None) == (e.question in by_name) for e in pairs)


def test_pairs_that_differ_by_their_image_alone_are_all_learned(bench_dir):
    """Duplicates are the same question, answer and image: every stranger's "someone I do not know" is learned,
    so that the tiny model names no known person for a face it has not seen."""
    from viker.data.examples import finetune_examples
    from viker.data.synth import SynthConfig
    from viker.data.synth.people import NAME_QUESTION, UNKNOWN_ANSWER
    from viker.prompts import generation_prompt

    strangers = [e for e in finetune_examples(bench_dir) if e.question == generation_prompt(NAME_QUESTION)
                 and e.answer == UNKNOWN_ANSWER]
    assert len(strangers) == SynthConfig().strangers == len({e.image for e in strangers})


def test_doubled_spaces_inside_an_option_are_the_files_not_the_options(bench_dir, tmp_path):
    """ "rock  climbing" in a file is the option "rock climbing": a stray space is no token of the answer."""
    from viker.data.schema import schema_for, with_features

    root = shutil.copytree(bench_dir, tmp_path / "bench")
    (path,) = sorted((root / "forget_10").glob("*.parquet"))
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        for group in row["Classification_Task"].values():
            for q in group:
                q["Options"] = {k: f" {v.replace(' ', '  ')} " for k, v in q["Options"].items()}
    pq.write_table(pa.Table.from_pylist(rows, schema=with_features(schema_for("forget_10"))), path)
    clean = [q.options for p in load_profiles(bench_dir, "forget_10") for q in p.mc]
    assert any(" " in v for o in clean for v in o.values())  # some options hold a space to double
    assert [q.options for p in load_profiles(root, "forget_10") for q in p.mc] == clean
