"""Bad input: one clear line naming the file, config or row, exit status 2, and nothing in --out."""

from __future__ import annotations

import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from viker.cli import main
from viker.data.examples import unlearning_examples
from viker.data.loader import load_profiles
from viker.errors import VikerError
from viker.keytokens import forget_answers

FORGET = "forget_10/train-00000-of-00001.parquet"


def _edit(root, rel, edit):
    pq.write_table(edit(pq.read_table(root / rel)), root / rel)


def _truncate_image(t):
    images = t.column("image").to_pylist()
    images[0] = {"bytes": images[0]["bytes"][:50], "path": images[0]["path"]}
    return t.set_column(0, "image", pa.array(images, type=t.schema.field("image").type))


def _text_as_image(t):
    images = t.column("image").to_pylist()
    images[0] = {"bytes": b"a text file saved as .png", "path": images[0]["path"]}
    return t.set_column(0, "image", pa.array(images, type=t.schema.field("image").type))


def _generation_as_text(t):
    i = t.schema.get_field_index("Generation_Task")
    return t.set_column(i, "Generation_Task", pa.array([json.dumps(x) for x in t.column(i).to_pylist()]))


CASES = {
    "corrupt image": (lambda root: _edit(root, FORGET, _truncate_image),
                      "forget_10/train-00000-of-00001.parquet:row 0 image 0: unreadable image"),
    "text as image": (lambda root: _edit(root, FORGET, _text_as_image),  # not PIL's buffer, <_io.BytesIO ...>
                      "forget_10/train-00000-of-00001.parquet:row 0 image 0: unreadable image (no image format PIL "
                      "reads)"),
    "image column as bytes": (lambda root: _edit(root, FORGET, lambda t: t.set_column(0, "image", pa.array(
        [cell["bytes"] for cell in t.column("image").to_pylist()], pa.binary()))),  # as a pandas round trip leaves it
        "column 'image' should be a struct, found binary (an image is {bytes, path}, as the Hugging Face Image "
        "feature stores it)"),
    "missing config": (lambda root: shutil.rmtree(root / "retain_90"), "config 'retain_90' not found"),
    "missing column": (lambda root: _edit(root, FORGET, lambda t: t.drop_columns(["Mask_Task"])),
                       "forget_10/train-00000-of-00001.parquet: missing column 'Mask_Task'"),
    "wrong nested type": (lambda root: _edit(root, FORGET, _generation_as_text),
                          "column 'Generation_Task' should be a list"),
    "empty forget split": (lambda root: _edit(root, FORGET, lambda t: t.slice(0, 0)),
                           "split forget_10 has no people to unlearn (its files hold no rows)"),
    "link to nothing": (lambda root: ((root / FORGET).unlink(), (root / FORGET).symlink_to(root / "gone.parquet")),
                        "forget_10/train-00000-of-00001.parquet: a link to "),  # which is not there: said so
    "link to nothing, unread": (lambda root: (root / "Retain_Set" / "shard-2.parquet").symlink_to("../../blobs/0123"),
                                "Retain_Set/shard-2.parquet: a link to ../../blobs/0123, which is not there (a hub "
                                "snapshot copied or kept without its blobs?)"),
    "text not UTF-8": (lambda root: _edit(root, FORGET, lambda t: t.set_column(
        t.schema.get_field_index("ID"), "ID", pa.array([b"\xff\xfeabc"] * t.num_rows, pa.binary()).view(pa.string()))),
        "forget_10/train-00000-of-00001.parquet: column 'ID' holds text that is not UTF-8 (config forget_10)"),
    "Git LFS pointer": (lambda root: (root / FORGET).write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 7\n"),
        "forget_10/train-00000-of-00001.parquet: a Git LFS pointer, not the file itself"),
}


def _assert_clean_failure(code, err, message, out):
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not out.exists(), "a failed run left output behind"


@pytest.mark.parametrize("case", CASES)
def test_bad_benchmark_files(case, tiny_dir, bench_dir, tmp_path, capsys):
    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    corrupt, message = CASES[case]
    corrupt(root)
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_dir), "--data", str(root), "--method", "ga", "--out", str(out),
                 "--max-steps", "1"])
    _assert_clean_failure(code, capsys.readouterr().err, message, out)


def test_an_empty_forget_split_is_said_to_be_empty_whatever_the_run_trains_on(tiny_dir, bench_dir, tmp_path, capsys):
    """Not taken for a copy whose images were re-encoded, which is what no ft_Data pair of its people means."""
    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    _edit(root, FORGET, lambda t: t.slice(0, 0))
    code = main([*UNLEARN, "--model", str(tiny_dir), "--data", str(root), "--train-on", "ft_Data", "--out",
                 str(tmp_path / "run")])
    _assert_clean_failure(code, capsys.readouterr().err, "split forget_10 has no people to unlearn", tmp_path / "run")


def test_an_empty_retain_split_is_named_where_a_method_trains_on_it(tiny_dir, bench_dir, tmp_path, capsys):
    """'the 'retain' data is empty: nothing to train on', said by the trainer once the model had loaded, named
    neither the split nor the folder."""
    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    _edit(root, "retain_90/train-00000-of-00001.parquet", lambda t: t.slice(0, 0))
    code = main(["unlearn", "--model", str(tiny_dir), "--data", str(root), "--method", "graddiff", "--max-steps", "1",
                 "--out", str(tmp_path / "run")])
    _assert_clean_failure(code, capsys.readouterr().err, f"{root}: the retain split retain_90 has no examples, and "
                          "--method graddiff trains on it", tmp_path / "run")


def test_finetuning_on_no_examples_is_refused_before_a_model_loads(tiny_dir, bench_dir, tmp_path, capsys):
    """ft_Data with no rows, or no pairs: the finetune loaded the model, then failed with an IndexError from the
    tokenizer."""
    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    ft = next((root / "ft_Data").glob("*.parquet")).relative_to(root)
    _edit(root, ft, lambda t: t.slice(0, 0))
    code = main(["finetune", "--model", str(tiny_dir), "--data", str(root), "--max-steps", "1", "--out",
                 str(tmp_path / "run")])
    _assert_clean_failure(code, capsys.readouterr().err, f"{root}: nothing to finetune on (ft_Data's pairs, "
                          "--train-on ft_Data, hold no question)", tmp_path / "run")


def test_keytokens_of_an_empty_forget_split_is_refused(tiny_dir, bench_dir, tmp_path, capsys):
    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    CASES["empty forget split"][0](root)
    out = tmp_path / "kt"
    code = main(["keytokens", "--model", str(tiny_dir), "--data", str(root), "--out", str(out / "keys.html")])
    _assert_clean_failure(code, capsys.readouterr().err, "--forget forget_10: has no answers in", out)


def test_a_refusal_idkpo_would_train_on_that_does_not_fit_max_length_is_refused_before_the_run(
        tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    """IdkPO trains on refusals beside the forget answers: one too long for --max-length stops the run before it
    writes anything, as an answer too long does, rather than at the step that first collates it."""
    out = tmp_path / "run"
    common = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "idkpo", "--max-steps", "1",
              "--max-length", "200"]
    assert main([*common, "--out", str(tmp_path / "fits")]) == 0  # every answer and refusal fits
    monkeypatch.setattr("viker.methods.idkpo.REFUSALS", ("I cannot say. " * 60,))
    _assert_clean_failure(main([*common, "--out", str(out)]), capsys.readouterr().err,
                          "over --max-length 200, which refuses a longer example rather than cut its answer off", out)


def test_a_processor_without_chat_template(tiny_dir, bench_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    for name in ("tokenizer_config.json", "processor_config.json"):
        config = json.loads((model / name).read_text())
        config.pop("chat_template", None)
        (model / name).write_text(json.dumps(config))
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(model), "--data", str(bench_dir), "--method", "ga", "--out", str(out)])
    _assert_clean_failure(code, capsys.readouterr().err, "the processor has no chat template", out)


def test_image_tokens_that_do_not_match_the_image_features(tiny_dir, bench_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    config = json.loads((model / "processor_config.json").read_text())
    config["patch_size"] = config.get("patch_size", 8) * 2  # the processor now writes 4x fewer image tokens
    (model / "processor_config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(model), "--data", str(bench_dir), "--method", "ga", "--out", str(out)])
    _assert_clean_failure(code, capsys.readouterr().err, "image tokens", out)


def test_an_answer_that_does_not_fit_max_length(tiny_dir, bench_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--out", str(out),
                 "--max-length", "20"])
    _assert_clean_failure(code, capsys.readouterr().err, "over --max-length 20", out)


@pytest.mark.parametrize("argv, message", [
    (["--model", "runs/vanila"], "runs/vanila: no such model folder (read as a folder, not a hub id, since a "
                                 "folder runs is here: a mistyped path?)"),
    (["--data", "runs/bench"], "runs/bench: no such benchmark folder"),
    (["--data", "runs/train-00000-of-00001.parquet"], "runs/train-00000-of-00001.parquet: a file; pass the "
                                                        "benchmark's folder, the one holding forget_10/"),
    (["--dtype", "bf17"], "--dtype bf17: choose auto, float32, bfloat16"),
])
def test_a_mistyped_path_or_dtype(argv, message, tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    """`runs/vanila` beside an existing `runs/` folder is a mistyped path, not a hub id to look up."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    given = {"--model": str(tiny_dir), "--data": str(bench_dir)} | dict(zip(argv[::2], argv[1::2]))
    out = tmp_path / "run"
    code = main(["eval", *[x for kv in given.items() for x in kv], "--out", str(out)])
    _assert_clean_failure(code, capsys.readouterr().err, message, out)


def _reencode_images(t, only: set[bytes] | None = None):
    """``t`` with its images saved anew, the same pixels in other bytes (``only``: those whose bytes these are)."""
    from io import BytesIO

    from PIL import Image

    def again(image):
        if only is not None and image["bytes"] not in only:
            return image
        out = BytesIO()
        Image.open(BytesIO(image["bytes"])).convert("RGB").save(out, format="PNG", compress_level=1)
        return {"bytes": out.getvalue(), "path": image["path"]}

    images = [again(image) for image in t.column("image").to_pylist()]
    return t.set_column(0, "image", pa.array(images, type=t.schema.field("image").type))


def test_ft_data_whose_images_match_no_person_is_said_and_recorded(tiny_dir, bench_dir, tmp_path, capsys):
    """ft_Data pairs belong to a person by their image's bytes; a copy whose images were re-encoded matches
    nobody, and the run says so instead of quietly unlearning the generation questions alone."""
    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    argv = ["unlearn", "--model", str(tiny_dir), "--method", "ga", "--max-steps", "1"]
    assert main([*argv, "--data", str(bench_dir), "--out", str(tmp_path / "as-is")]) == 0
    assert "warning" not in capsys.readouterr().err
    pairs = json.loads((tmp_path / "as-is" / "config.json").read_text())["data"]["ft_Data_pairs"]
    # every pair of the split's people, those that are also generation questions (all, here) included
    assert pairs == {"forget": len(unlearning_examples(bench_dir, "forget_10", learned="ft_Data")),
                     "retain": len(unlearning_examples(bench_dir, "retain_90", learned="ft_Data"))}
    assert pairs["forget"] > 0 and pairs["retain"] > 0
    _edit(root, "ft_Data/train-00000-of-00001.parquet", _reencode_images)
    assert main([*argv, "--data", str(root), "--out", str(tmp_path / "re-encoded")]) == 0
    # of the people GA reads (it reads no retain stream)
    assert "warning: no ft_Data pair has the image of a forget_10 person, so only their generation questions are " \
           "unlearned (were the images re-encoded?)" in capsys.readouterr().err
    assert main([*argv, "--method", "graddiff", "--data", str(root), "--out", str(tmp_path / "both")]) == 0
    assert "warning: no ft_Data pair has the image of a forget_10 or retain_90 person, so only their generation " \
           "questions are unlearned and retained" in capsys.readouterr().err
    used = json.loads((tmp_path / "re-encoded" / "config.json").read_text())["data"]
    assert used["ft_Data_pairs"] == {"forget": 0, "retain": 0} and used["ft_Data_size"] > 0


@pytest.mark.parametrize("train_on, said", [("all", "only their generation questions are unlearned"),
                                             ("ft_Data", "nothing of them is unlearned")])
def test_a_forget_person_whose_ft_data_images_match_no_row_is_named(tiny_dir, bench_dir, tmp_path, capsys,
                                                                    train_on, said):
    """One forget person's ft_Data rows re-encoded (the same pixels in other bytes): the others' pairs still
    match, and that person, whose pairs are no longer theirs, is named rather than quietly left out."""
    root = tmp_path / "bench"
    shutil.copytree(bench_dir, root)
    person = load_profiles(bench_dir, "forget_10")[0]
    _edit(root, "ft_Data/train-00000-of-00001.parquet", lambda t: _reencode_images(t, only={person.image}))
    assert main(["unlearn", "--model", str(tiny_dir), "--method", "ga", "--max-steps", "1", "--data", str(root),
                 "--train-on", train_on, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert (f"warning: 1 forget_10 person has no ft_Data pair with their image (ID {person.id}), so {said}"
            in err)
    assert "retain_90" not in err  # every retain person's pairs still match
    used = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert used["ft_Data_unmatched"] == {"forget": 1, "retain": 0} and used["ft_Data_pairs"]["forget"] > 0
    forget_answers(root, "forget_10", learned=train_on)  # the key-token page's answers: said as unlearn says it
    assert f"warning: 1 forget_10 person has no ft_Data pair with their image (ID {person.id}), so " \
           f"{said.replace('unlearned', 'shown')}" in capsys.readouterr().err


# --- property-based: malformed rows never give a silent wrong profile or an unexpected exception ---------

MUTATIONS = st.sampled_from(["drop_type", "bad_type", "bad_letter", "missing_option", "empty_image",
                             "garbage_image", "null_question", "null_item", "null_choice_question", "null_id"])


def _mutate(row: dict, mutation: str, index: int) -> dict:
    row = json.loads(json.dumps(row, default=lambda b: b.hex()))  # deep copy (bytes as hex for a moment)
    row["image"]["bytes"] = bytes.fromhex(row["image"]["bytes"])
    gen = row["Generation_Task"]
    mc = row["Classification_Task"]["Pure_Text_Questions"]
    if mutation == "drop_type":
        gen[index % len(gen)]["Type"] = None
    elif mutation == "bad_type":
        gen[index % len(gen)]["Type"] = "Video"
    elif mutation == "bad_letter":
        mc[index % len(mc)]["Correct_Answer"] = "E"
    elif mutation == "missing_option":
        mc[index % len(mc)]["Options"]["D"] = None
    elif mutation == "empty_image":
        row["image"]["bytes"] = b""
    elif mutation == "garbage_image":
        row["image"]["bytes"] = bytes(range(index % 200 + 10))
    elif mutation == "null_question":
        gen[index % len(gen)]["Question"] = None
    elif mutation == "null_item":
        gen[index % len(gen)] = None
    elif mutation == "null_choice_question":
        mc[index % len(mc)]["Question"] = None
    elif mutation == "null_id":
        row["ID"] = None
    return row


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATIONS, row_index=st.integers(0, 100), index=st.integers(0, 100))
def test_malformed_rows_are_reported_not_loaded(bench_dir, tmp_path_factory, mutation, row_index, index):
    root = tmp_path_factory.mktemp("mut")
    table = pq.read_table(bench_dir / "Full_Set" / "train-00000-of-00001.parquet")
    rows = table.to_pylist()
    bad = row_index % len(rows)
    rows[bad] = _mutate(rows[bad], mutation, index)
    (root / "Full_Set").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), root / "Full_Set" / "t.parquet")
    with pytest.raises(VikerError, match=rf"t.parquet:row {bad}"):
        load_profiles(root, "Full_Set")


UNLEARN = ["unlearn", "--method", "ga", "--max-steps", "1"]


def test_an_infinite_setting_is_refused_from_python_too():
    """The command line refuses inf before a run starts; so do the configurations a script builds."""
    import math

    from viker.methods.viker import ViKeR
    from viker.presets import TrainConfig

    for build, message in ((lambda: ViKeR(lam=math.inf), "--lam inf: must be a finite number"),
                           (lambda: TrainConfig(epochs=math.inf), "--epochs inf: must be a finite number"),
                           (lambda: TrainConfig(lr=-math.inf), "--lr -inf: must be a finite number"),
                           (lambda: TrainConfig(max_grad_norm=math.nan), "max_grad_norm nan: must be above 0"),
                           (lambda: TrainConfig(max_grad_norm=math.inf), "max_grad_norm inf: must be a finite")):
        with pytest.raises(VikerError, match=message):
            build()


@pytest.mark.parametrize("argv, message", [
    ([*UNLEARN, "--max-steps", "0"], "--max-steps 0: must be at least 1"),
    ([*UNLEARN, "--epochs", "0"], "--epochs 0: must be above 0"),
    ([*UNLEARN, "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ([*UNLEARN, "--grad-accum", "0"], "--grad-accum 0: must be at least 1"),
    ([*UNLEARN, "--lr", "-1"], "--lr -1: must be above 0"),
    ([*UNLEARN, "--seed", "-1"], "--seed -1: must be from 0"),
    ([*UNLEARN, "--checkpoint-every", "-1"], "--checkpoint-every -1: must be at least 0"),
    ([*UNLEARN, "--lora-r", "0"], "--lora-r 0: must be at least 1"),
    ([*UNLEARN, "--lora-dropout", "1.5"], "--lora-dropout 1.5: must be from 0 to below 1"),
    ([*UNLEARN, "--method", "npo", "--beta", "0"], "--beta 0: must be above 0"),
    ([*UNLEARN, "--method", "graddiff", "--retain-weight", "-5"], "--retain-weight -5: must be at least 0"),
    ([*UNLEARN, "--beta", "0.2"], "--beta applies to --method cagul / idkpo / npo only"),
    ([*UNLEARN, "--retain-weight", "1"],
     "--retain-weight applies to --method cagul / graddiff / idkpo / klmin / npo only"),
    ([*UNLEARN, "--k", "3"], "--k applies to --method cagul / viker only"),
    ([*UNLEARN, "--method", "viker", "--average", "token"],
     "--average applies to --method ga / graddiff / idkpo / klmin / npo only"),
    ([*UNLEARN, "--method", "npo", "--average", "token"],  # NPO's retain term is off by default
     "--average does not apply at --retain-weight 0, where there is no retain term"),
    ([*UNLEARN, "--method", "viker", "--k", "0"], "--k 0: at least one reference image"),
    # a setting the chosen variant never reads, which its config would record as if it had shaped the run
    ([*UNLEARN, "--method", "viker", "--ablation", "no_vis", "--k", "3"],
     "--k does not apply with --ablation no_vis: the reference is the frozen model on the question's own image"),
    ([*UNLEARN, "--method", "viker", "--ablation", "no_vis", "--refs", "scenes"], "--refs does not apply with"),
    ([*UNLEARN, "--method", "viker", "--ablation", "no_reg", "--lam", "2"],
     "--lam does not apply with --ablation no_reg: plain gradient ascent"),
    ([*UNLEARN, "--method", "viker", "--lam", "0", "--regularizer", "jsd"], "--regularizer does not apply at --lam 0"),
    ([*UNLEARN, "--method", "cagul", "--forget-loss", "npo", "--k", "2"], "--k does not apply with --forget-loss npo"),
    ([*UNLEARN, "--method", "cagul", "--beta", "0.2"], "--beta does not apply with --forget-loss reference"),
    ([*UNLEARN, "--method", "cagul", "--k", "0"], "--k 0: must be at least 1"),
    ([*UNLEARN, "--method", "cagul", "--encoder-width", "0"], "--encoder-width 0: must be at least 1"),
    ([*UNLEARN, "--method", "cagul", "--gradient-checkpointing"],
     "--gradient-checkpointing does not apply to --method cagul"),
    ([*UNLEARN, "--method", "cagul", "--heads", "0,99"], "CAGUL heads [99]: the language model's layers have"),
    ([*UNLEARN, "--method", "finetune"], "--method finetune: that is `viker finetune`; choose from cagul, ga,"),
    ([*UNLEARN, "--method", "gaa"], "--method gaa: unknown method; choose from cagul, ga,"),
    ([*UNLEARN, "--tuning", "full", "--save", "adapter"], "--save adapter: --tuning full trains no adapter"),
    # LoRA's settings where no adapter is trained, which the run would ignore
    ([*UNLEARN, "--tuning", "full", "--lora-dropout", "0.1"],
     "--lora-dropout applies to LoRA tuning only: --tuning full trains every weight"),
    (["finetune", "--max-steps", "1", "--tuning", "full", "--lora-r", "4"], "--lora-r applies to LoRA tuning only"),
    ([*UNLEARN, "--method", "cagul", "--lora-alpha", "8"],
     "--lora-alpha applies to LoRA tuning only: CAGUL trains modules of its own"),
    ([*UNLEARN, "--method", "cagul", "--save", "adapter"], "--save adapter does not apply to --method cagul"),
    ([*UNLEARN, "--method", "cagul", "--tuning", "full"], "--tuning full does not apply to --method cagul"),
    ([*UNLEARN, "--tuning", "full", "--dtype", "float16"], "float16 weights cannot be trained in place (AdamW"),
    # refused before the run's folder is made (its config.json asked for --overwrite), with advice the CPU takes
    (["finetune", "--max-steps", "1", "--tuning", "full", "--dtype", "float16"],
     "float16 weights cannot be trained in place (AdamW's ε is 0 in float16, and its first step gives NaN): load "
     "float32 weights and autocast (--dtype float32 --mixed-precision bf16)"),
    # the CPU's bf16 autocast stopped at the first step with a RuntimeError from inside torch
    ([*UNLEARN, "--dtype", "fp16", "--mixed-precision", "bf16"],
     "--dtype fp16 under bf16 autocast: the CPU's autocast takes no float16 weights; give --dtype bfloat16 or"),
    (["keytokens", "--dtype", "float16", "--mixed-precision", "bf16"], "--dtype float16 under bf16 autocast"),
    ([*UNLEARN, "--device", "gpu"], "--device gpu: not a device"),
    (["eval", "--device", "meta"], "--device meta: choose cpu, cuda, cuda:N or mps"),
    ([*UNLEARN, "--device", "xla"], "--device xla: choose cpu, cuda, cuda:N or mps"),
    (["eval", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["eval", "--forget", "retain_90"], "--forget retain_90: choose from forget_5, forget_10, forget_15"),
    (["eval", "--forget", "forget10"], "--forget forget10: choose from forget_5, forget_10, forget_15; it is a CLEAR "
                                       "split: give --benchmark clear"),
    ([*UNLEARN, "--benchmark", "clear", "--forget", "forget_10"], "--forget forget_10: choose from forget01, forget05, "
                                                                  "forget10 (optionally with +tofu); it is an MLLMU"),
    (["eval", "--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
    (["eval", "--retain-limit", "-1"], "--retain-limit -1: must be at least 1"),
    (["eval", "--gib-model", "no/such/classifier"], "--gib-model no/such/classifier: no such folder"),
    (["eval", "--gib-model", "a-file.png"], "--gib-model a-file.png: a file, not a folder"),
    ([*UNLEARN, "--method", "viker", "--refs", "a-file.png"], "a-file.png: a file, not a folder (choose people"),
    ([*UNLEARN, "--method", "viker", "--cache-dir", "a-file.png"], "--cache-dir a-file.png: "),
    # blank: it fell back on the default cache and recorded "" as the one used
    ([*UNLEARN, "--method", "viker", "--cache-dir", ""], "--cache-dir '': name a folder (leave it out for "),
    (["keytokens", "--cache-dir", " "], "--cache-dir ' ': name a folder"),
    (["keytokens", "--cache-dir", "a-file.png/cache"], "--cache-dir a-file.png/cache: "),
    (["eval", "--benchmark", "clear", "--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
    (["keytokens", "--k", "0"], "--k 0: must be at least 1"),
    (["keytokens", "--seed", "-1"], "--seed -1: must be from 0 to 2**32 - 1, as viker unlearn's"),
    ([*UNLEARN, "--max-length", "0"], "--max-length 0: must be at least 1 (leave it out for no limit)"),
    (["finetune", "--max-steps", "1", "--max-length", "-5"], "--max-length -5: must be at least 1"),
    (["keytokens", "--epsilon", "-1"], "--epsilon -1: must be at least 0"),
    (["keytokens", "--mixed-precision", "fp16"], "--mixed-precision fp16: accelerate autocasts to fp16 on a GPU only"),
])
def test_a_setting_out_of_range_is_refused_in_its_own_words(argv, message, tiny_dir, bench_dir, tmp_path, capsys,
                                                           monkeypatch):
    """A value no run can use (a zero batch, a negative β, a head the model lacks) is one line naming the
    option, never a traceback from deep inside torch or a quietly different run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file.png").write_bytes(b"a picture, where a folder was meant")
    out = tmp_path / ("keys.html" if argv[0] == "keytokens" else "run")
    code = main([*argv, "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out)])
    _assert_clean_failure(code, capsys.readouterr().err, message, out)


def test_lora_settings_for_the_tiny_models_full_finetune_are_refused(bench_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--model", "tiny", "--data", str(bench_dir), "--lora-r", "4", "--out", str(out)]) == 2
    assert "--lora-r applies to LoRA tuning only: --model tiny trains every weight (--tuning auto); give --tuning " \
        "lora for adapters" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("command, settings, message", [
    ("finetune", {"tuning": "full", "lora": {"r": 4}},
     "lora.r=4 (the default is 16) applies to LoRA tuning only: --tuning full trains"),
    ("finetune", {"model": "tiny", "lora": {"target_modules": ["q_proj"]}},
     "lora.target_modules=['q_proj'] (the default is None) applies to LoRA tuning only: --model tiny trains"),
    ("unlearn", {"tuning": "full", "lora": {"alpha": 8}}, "lora.alpha=8 (the default is 32) applies to LoRA tuning"),
    ("unlearn", {"method": "cagul", "lora": {"dropout": 0.1}},
     "lora.dropout=0.1 (the default is 0.0) applies to LoRA tuning only: CAGUL trains modules of its own"),
    ("finetune", {"tuning": "LoRA"}, "--tuning LoRA: choose auto, full or lora"),
    ("unlearn", {"tuning": "auto"}, "--tuning auto: choose lora or full"),
    ("unlearn", {"method": "cagul", "tuning": "full"}, "--tuning full does not apply to --method cagul"),
    ("unlearn", {"method": "cagul", "lora": {"merge": True}}, "--save merged does not apply to --method cagul"),
])
def test_the_python_api_refuses_settings_a_run_never_reads(command, settings, message, tiny_dir, bench_dir,
                                                         tmp_path):
    """As the command line does: LoRA's settings where no adapter is trained, and a choice of how the weights are
    tuned or saved for CAGUL, which trains modules of its own; a run's record would leave them out."""
    from dataclasses import replace

    from viker.finetune import FinetuneConfig, run_finetune
    from viker.unlearn import UnlearnConfig, run_unlearn

    config, run = (FinetuneConfig, run_finetune) if command == "finetune" else (UnlearnConfig, run_unlearn)
    cfg = config(model=str(tiny_dir), data=str(bench_dir), out=str(tmp_path / "run"))
    cfg = replace(cfg, **{k: v for k, v in settings.items() if k != "lora"},
                  lora=replace(cfg.lora, **settings.get("lora", {})))
    with pytest.raises(VikerError, match=re.escape(message)):
        run(cfg, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["finetune", "unlearn"])
def test_going_on_with_a_run_and_replacing_it_are_not_both_taken(command, bench_dir, tmp_path, capsys):
    """--resume and --overwrite ask opposite things of the run in --out: refused before anything else is read
    (here a model that is not there), and from Python too, rather than one of them silently dropped."""
    from viker.finetune import FinetuneConfig, run_finetune
    from viker.unlearn import UnlearnConfig, run_unlearn

    out = tmp_path / "run"
    argv = [command, "--model", str(tmp_path / "no-model"), "--data", str(bench_dir), "--out", str(out)]
    assert main([*argv, "--resume", "--overwrite"]) == 2
    assert "argument --overwrite: not allowed with argument --resume" in capsys.readouterr().err
    config, run = (FinetuneConfig, run_finetune) if command == "finetune" else (UnlearnConfig, run_unlearn)
    with pytest.raises(VikerError, match="--resume goes on with the run in --out, --overwrite replaces it: give one"):
        run(config(model=str(tmp_path / "no-model"), data=str(bench_dir), out=str(out)), progress=False,
            resume=True, overwrite=True)
    assert not out.exists()


def test_a_cagul_run_started_with_save_merged_is_told_to_resume_without_it(tiny_dir, bench_dir, tmp_path, capsys):
    """CAGUL runs once took --save; resumed with it, the refusal says the run goes on without it."""
    common = ["unlearn", "--method", "cagul", "--model", str(tiny_dir), "--data", str(bench_dir), "--out",
              str(tmp_path / "run")]
    refused = "--save merged does not apply to --method cagul: it trains modules of its own, and never the model's " \
        "weights"
    assert main([*common, "--save", "merged", "--resume"]) == 2  # nothing there to resume: no word of one
    assert capsys.readouterr().err == f"error: {refused}\n"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(
        {"command": "unlearn", "unlearn": {"method": "cagul", "lora": {"merge": True}}}))
    assert main([*common, "--save", "merged", "--resume"]) == 2
    assert f"{refused}; a run started with it resumes without it" in capsys.readouterr().err


def test_a_clear_retain_limit_of_zero_names_no_option_clear_refuses(capsys):
    assert main(["eval", "--benchmark", "clear", "--retain-limit", "0", "--model", "m", "--data", "d", "--out",
                 "o"]) == 2
    assert capsys.readouterr().err == "error: --retain-limit 0: must be at least 1\n"  # not "--only leaves a set out"


def test_an_out_that_is_a_file_or_a_folder_for_a_page(tiny_dir, bench_dir, tmp_path, capsys):
    common = ["--model", str(tiny_dir), "--data", str(bench_dir)]
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    for argv in (["unlearn", *common, "--max-steps", "1"], ["eval", *common]):
        assert main([*argv, "--out", str(taken)]) == 2
        assert f"--out {taken}: a file, not a folder" in capsys.readouterr().err
    assert main(["data", "synth", "--profiles", "10", "--out", str(taken)]) == 2
    assert f"--out {taken}: a file, not a folder" in capsys.readouterr().err
    run = tmp_path / "evaluated"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"forget_acc": 50.0, "retain_rougeL": 40.0}))
    assert main(["report", str(run), "--out", str(taken)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --out {taken}: a file, not a folder"]  # in the words of every other command
    assert taken.read_text() == "mine\n"
    # nor into a folder of other files (a benchmark's), which it would leave unable to be generated again
    before = sorted(p.name for p in bench_dir.iterdir())
    assert main(["report", str(run), "--out", str(bench_dir)]) == 2
    assert f"error: --out {bench_dir}: holds more than a report's files (" in capsys.readouterr().err
    assert sorted(p.name for p in bench_dir.iterdir()) == before
    # an earlier report's folder is replaced, as a report is made again
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    page = tmp_path / "pages"
    assert main(["keytokens", *common, "--out", f"{page}/"]) == 2
    assert "name an .html file" in capsys.readouterr().err and not page.exists()
    folder = tmp_path / "pages.html"  # a folder of that name: said to be one
    folder.mkdir()
    assert main(["keytokens", *common, "--out", str(folder)]) == 2
    assert f"--out {folder}: a folder; name an .html file (in it, say)" in capsys.readouterr().err


def test_an_out_that_links_to_nothing_is_one_line(bench_dir, tmp_path, capsys):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    for argv in (["data", "synth", "--profiles", "10"], ["finetune", "--data", str(bench_dir), "--max-steps", "1"]):
        assert main([*argv, "--out", str(link)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: --out {link}: a link to {tmp_path / 'gone'}, which does not exist"


def test_an_out_under_a_file_is_refused_before_the_model_loads(tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    import viker.eval.run
    import viker.finetune
    import viker.unlearn

    def loaded(*args, **kwargs):
        pytest.fail("the model was loaded for a run whose folder cannot be made")

    monkeypatch.setattr(viker.eval.run, "load_model", loaded)
    for module in (viker.finetune, viker.unlearn):
        monkeypatch.setattr(module, "load_for_training", loaded)
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    run = taken / "run"
    common = ["--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(run)]
    for argv in (["eval", *common], ["unlearn", "--method", "ga", *common], ["finetune", *common],
                 ["data", "synth", "--profiles", "10", "--out", str(run)], ["demo", "--fast", "--out", str(run)]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.strip() == f"error: --out {run}: {taken} is a file, not a folder"
    assert taken.read_text() == "mine\n"


@pytest.mark.parametrize("argv, line", [
    (["eval", "--data", "bench"], "viker eval: the following arguments are required: --model, --out"),
    (["evaluate"], "viker: argument command: invalid choice: 'evaluate'"),
    ([], "viker: name a command: data, finetune, unlearn, eval, judge, keytokens, report, demo (see viker --help)"),
    (["data"], "viker data: name a command: synth (see viker data --help)"),
    (["unlearn", "--model", "m", "--data", "d", "--out", "o", "--lambda", "10"],  # the help that lists --lam
     "viker unlearn: unrecognized arguments: --lambda 10 (see viker unlearn --help)"),
    (["unlearn", "--model", "m", "--data", "d", "--out", "o", "--lr", "fast"],
     "viker unlearn: argument --lr: invalid float value: 'fast'"),
    (["unlearn", "--model", "m", "--data", "d", "--out", "o", "--lam", "inf"],  # no setting is infinite
     "viker unlearn: argument --lam: 'inf': expected a finite number"),
    (["unlearn", "--model", "m", "--data", "d", "--out", "o", "--epochs", "nan"],
     "viker unlearn: argument --epochs: 'nan': expected a finite number"),
])
def test_a_command_line_mistake_is_one_line(argv, line, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {line}") and err.count("\n") == 1 and "usage:" not in err, err


def test_an_error_during_a_progress_bar_stands_on_a_line_of_its_own(monkeypatch, capsys):
    """A run that stops (diverged, interrupted) says why below its progress bar, not inside it."""
    from tqdm.auto import tqdm

    import viker.cli

    def diverging(args):
        bar = tqdm(total=10, desc="unlearning")
        bar.update(1)
        raise VikerError("step 1: the loss became nan (diverged)")

    monkeypatch.setattr(viker.cli, "_synth", diverging)
    assert main(["data", "synth", "--out", "x"]) == 2
    err = capsys.readouterr().err
    *bar, error, end = err.split("\n")
    assert (error, end) == ("error: step 1: the loss became nan (diverged)", "") and "unlearning" in bar[-1], err


def test_report_reads_every_run_named_whether_before_or_after_its_options(tmp_path):
    for name, forget_acc in (("a", 50.0), ("b", 30.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"forget_acc": forget_acc, "retain_rougeL": 40.0}))
    for after in ([str(tmp_path / "b")], ["--", str(tmp_path / "b")]):
        shutil.rmtree(tmp_path / "report", ignore_errors=True)
        assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "report"), *after]) == 0
        rows = json.loads((tmp_path / "report" / "results.json").read_text())["runs"]
        assert [(r["label"], r["metrics"]["forget_acc"]) for r in rows] == [("a", 50.0), ("b", 30.0)]


@pytest.mark.parametrize("file, text, message", [
    ("adapter_config.json", "{", "adapter_config.json: not JSON"),
    ("adapter_config.json", "[]", "adapter_config.json names no base model"),
    ("cagul/config.json", "{", "config.json: not JSON"),
    ("cagul/config.json", '{"cagul": {}}', "config.json: lacks base_model, dim; not a CAGUL run's config"),
    # a base model moved or removed since: said as such, with the file that names it
    ("adapter_config.json", '{"base_model_name_or_path": "/no/such/base"}',
     "/no/such/base: no such folder, and RUN/adapter_config.json names it as the base model the adapter was "
     "trained on: put that model back there"),
])
def test_a_damaged_adapter_or_cagul_config_is_one_line(file, text, message, bench_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / file).parent.mkdir(parents=True)
    (run / file).write_text(text)
    if file.startswith("cagul/"):  # a CAGUL run folder holds the run's own config beside its modules
        (run / "config.json").write_text(json.dumps({"command": "unlearn", "method": {"name": "cagul"}}))
    for command in (["eval", "--out", str(tmp_path / "e")], ["unlearn", "--out", str(tmp_path / "u")]):
        assert main([*command, "--model", str(run), "--data", str(bench_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message.replace("RUN", str(run)) in err, err


def test_cagul_modules_whose_base_model_is_gone_say_so(bench_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "cagul").mkdir(parents=True)
    (run / "cagul" / "config.json").write_text(json.dumps({"base_model": "/no/such/base", "cagul": {}, "dim": 8}))
    (run / "config.json").write_text(json.dumps({"command": "unlearn", "method": {"name": "cagul"}}))
    assert main(["eval", "--model", str(run), "--data", str(bench_dir), "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == f"error: /no/such/base: no such folder, and {run}/cagul/config.json names it " \
        "as the base model the CAGUL modules were trained around: put that model back there\n"


def test_a_home_folder_in_a_path_option_is_the_home_folder(tmp_path, monkeypatch):
    """`--out=~/bench` reaches viker with its ~ (the shell leaves it after `=`): it names the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--profiles", "10", "--out", "~/bench"]) == 0
    assert (tmp_path / "home" / "bench" / "README.md").is_file() and not (tmp_path / "~").exists()


def test_clear_refuses_the_options_it_has_no_use_for(tiny_dir, tmp_path, capsys):
    common = ["eval", "--benchmark", "clear", "--model", "m", "--data", "d", "--out", str(tmp_path / "e")]
    for option, value in (("--mc-mode", "letter"), ("--gib-model", "gib"), ("--judge", "my_judges:score"),
                          ("--test-images", "all")):
        assert main([*common, option, value]) == 2
        assert capsys.readouterr().err.strip() == f"error: {option} applies to --benchmark mllmu"
    for command in ("finetune", "unlearn", "keytokens"):  # CLEAR's examples are its own
        out = tmp_path / ("k.html" if command == "keytokens" else command)
        model = "tiny" if command == "finetune" else str(tiny_dir)
        assert main([command, "--benchmark", "clear", "--model", model, "--data", "d", "--out", str(out),
                     "--train-on", "ft_Data"]) == 2
        assert capsys.readouterr().err.strip() == "error: --train-on applies to --benchmark mllmu"


def test_a_dtype_that_names_none_is_the_only_line_said(bench_dir, tmp_path, capsys):
    """Refused before the model is looked at: no warning of it (here, that it recalls nothing) ahead of the error."""
    assert main(["finetune", "--data", str(bench_dir), "--max-steps", "1", "--out", str(tmp_path / "vanilla")]) == 0
    vanilla = ["--model", str(tmp_path / "vanilla"), "--data", str(bench_dir), "--dtype", "fp8"]
    for argv in (["unlearn", *vanilla, "--out", str(tmp_path / "u")], ["eval", *vanilla, "--out", str(tmp_path / "e")],
                 ["keytokens", *vanilla, "--out", str(tmp_path / "k.html")],
                 ["finetune", "--data", str(bench_dir), "--dtype", "fp8", "--out", str(tmp_path / "f")]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --dtype fp8: choose auto, ") and err.count("\n") == 1, (argv[0], err)


def test_the_tiny_model_takes_the_dtype_asked_for(bench_dir, tmp_path, capsys):
    common = ["finetune", "--model", "tiny", "--data", str(bench_dir), "--max-steps", "1"]
    assert main([*common, "--dtype", "foo", "--out", str(tmp_path / "foo")]) == 2
    assert "--dtype foo: choose auto" in capsys.readouterr().err and not (tmp_path / "foo").exists()
    assert main([*common, "--dtype", "bfloat16", "--out", str(tmp_path / "bf16")]) == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["runtime"]["weights_dtype"] == "bfloat16"


def test_a_wrong_benchmark_folder_or_split_is_refused_before_the_model_loads(tiny_dir, bench_dir, tmp_path, capsys,
                                                                            monkeypatch):
    """A 7B model takes minutes to load: `eval` and `keytokens` read --data and --forget first, and
    `keytokens` words a wrong split as `unlearn` and `eval` do."""
    import viker.eval.run
    import viker.model

    def loaded(*args, **kwargs):
        pytest.fail("the model was loaded before the data was read")

    monkeypatch.setattr(viker.eval.run, "load_model", loaded)
    monkeypatch.setattr(viker.model, "load_model", loaded)
    empty = tmp_path / "empty"
    empty.mkdir()
    model = ["--model", str(tiny_dir)]
    page = ["--out", str(tmp_path / "keys.html")]
    for argv in (["eval", *model, "--data", str(empty), "--out", str(tmp_path / "e")],
                 ["eval", "--benchmark", "clear", *model, "--data", str(empty), "--out", str(tmp_path / "e")],
                 ["keytokens", *model, "--data", str(empty), *page]):
        assert main(argv) == 2, argv
        assert str(empty) in capsys.readouterr().err
    splits = "choose from forget_5, forget_10, forget_15"
    for command in (["unlearn", "--method", "ga", "--out", str(tmp_path / "u")], ["eval", "--out", str(tmp_path / "e")],
                    ["keytokens", *page]):
        assert main([*command, *model, "--data", str(bench_dir), "--forget", "forget_7"]) == 2
        assert capsys.readouterr().err.strip() == f"error: --forget forget_7: {splits}", command


def test_an_mllmu_split_given_to_without_gets_no_advice_to_leave_out_benchmark_clear(bench_dir, tmp_path, capsys):
    """--without is CLEAR's alone: leaving out --benchmark clear, as the advice for --forget says, is refused too."""
    assert main(["finetune", "--benchmark", "clear", "--without", "forget_10", "--data", str(bench_dir), "--out",
                 str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "error: --without forget_10: choose from forget01, forget05, forget10 " \
                                      "(optionally with +tofu)\n"


def test_keytokens_refuses_fp16_on_the_cpu_before_the_model_loads(tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    import viker.model

    def loaded(*args, **kwargs):
        pytest.fail("the model was loaded for an autocast no run uses on this device")

    monkeypatch.setattr(viker.model, "load_model", loaded)
    out = tmp_path / "keys.html"
    assert main(["keytokens", "--model", str(tiny_dir), "--data", str(bench_dir), "--device", "cpu",
                 "--mixed-precision", "fp16", "--out", str(out)]) == 2
    assert "--mixed-precision fp16: accelerate autocasts to fp16 on a GPU only" in capsys.readouterr().err
    assert not out.exists()


def test_a_key_token_page_that_cannot_be_written_is_refused_before_the_reference_is_computed(
        tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    import viker.keytokens

    def computed(*args, **kwargs):
        pytest.fail("R̂ was computed for a page that cannot be written")

    monkeypatch.setattr(viker.keytokens, "answer_token_entropies", computed)
    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")
    page = taken / "pages" / "keys.html"
    assert main(["keytokens", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(page)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {page}: {taken} is a file, not a folder"
    assert taken.read_text() == "mine\n"


def test_a_key_token_page_replaces_only_an_earlier_page_and_never_writes_into_the_benchmark(
        tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    """`viker keytokens --out shots/a.html` replaced the picture shots/a.png beside it, and wrote into the benchmark
    (whose files a run's record hashes) when asked."""
    import viker.keytokens

    monkeypatch.setattr(viker.keytokens, "answer_token_entropies", lambda *a, **k: pytest.fail("R̂ was computed"))
    keytokens = ["keytokens", "--model", str(tiny_dir), "--data", str(bench_dir), "--out"]
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "a.png").write_bytes(b"a photo")
    (shots / "notes.html").write_text("<p>mine</p>")
    before = sorted(p.name for p in bench_dir.rglob("*"))
    for out, said in ((shots / "a.html", f"{shots / 'a.png'} is there already, and no key-token page beside it"),
                      (shots / "notes.html", f"{shots / 'notes.html'} is there already, and is no key-token page;"),
                      (bench_dir / "forget_10" / "keys.html", "inside the benchmark folder given as --data")):
        assert main([*keytokens, str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --out {out}: {said}") and err.endswith(
            "write the page elsewhere" if "benchmark" in said else "choose another name, or remove it")
    assert (shots / "a.png").read_bytes() == b"a photo" and (shots / "notes.html").read_text() == "<p>mine</p>"
    assert sorted(p.name for p in bench_dir.rglob("*")) == before
    monkeypatch.undo()
    for _ in range(2):  # an earlier page and its picture are replaced
        assert main([*keytokens, str(shots / "keys.html"), "--forget", "forget_5", "--k", "2"]) == 0
    assert (shots / "keys.png").is_file()


def test_an_evaluations_folder_given_as_a_model_names_the_model_it_scored(tiny_dir, bench_dir, tmp_path, capsys):
    evaluation = tmp_path / "evaluation"
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--only", "forget:cloze",
                 "--max-new-tokens", "2", "--out", str(evaluation)]) == 0
    capsys.readouterr()
    for command in (["eval", "--out", str(tmp_path / "again")], ["unlearn", "--out", str(tmp_path / "run")],
                    ["keytokens", "--out", str(tmp_path / "keys.html")]):
        assert main([*command, "--model", str(evaluation), "--data", str(bench_dir)]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"error: {evaluation}: an evaluation, not a model; give the model it scored, " \
            f"{tiny_dir}", command


def test_an_out_folder_the_system_refuses_is_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / ("x" * 300)  # longer than a file name may be
    assert main(["data", "synth", "--profiles", "10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == f"error: {out}: File name too long"


@pytest.mark.parametrize("command", [["data", "synth", "--profiles", "10"], ["report", "somewhere"]])
def test_an_empty_out_is_refused_not_read_as_the_working_folder(command, tmp_path, capsys, monkeypatch):
    """`viker report --out ""` said the working folder "holds more than a report's files"; synth would write there."""
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--out", ""]) == 2
    assert capsys.readouterr().err.strip() == "error: --out is empty: give the folder to write into"
    assert not list(tmp_path.iterdir())


def test_an_interrupted_run_says_what_it_left_and_how_to_go_on(tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of training: the folder holds an unfinished run, and the line says so and names the
    option that goes on from it; evaluating it says it is unfinished."""
    import viker.unlearn

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(viker.unlearn, "train", stopped)
    out = tmp_path / "run"
    assert main([*UNLEARN, "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == f"interrupted: {out} holds the unfinished run; --overwrite " \
        "starts it again (--checkpoint-every N keeps checkpoints to --resume from)"  # a line of its own
    assert main(["eval", "--model", str(out), "--data", str(bench_dir), "--out", str(tmp_path / "e")]) == 2
    assert ("run with no model in it (unfinished: still running, or stopped before its first checkpoint or while "
            "saving its model; if stopped, run its command again with --overwrite)") in capsys.readouterr().err
    # nor can --resume go on from it, and it says what does
    assert main([*UNLEARN, "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out), "--resume"]) == 2
    assert capsys.readouterr().err.strip().endswith("removes it when it ends); --overwrite starts it again")


@pytest.mark.parametrize("raised, reason", [
    (lambda: __import__("safetensors").SafetensorError(
        'Error while serializing: I/O error: No space left on device (os error 28)'), "No space left on device"),
    (lambda: RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                          "data/2: file write failed"), "torch.save could not write the file (is the disk full?)"),
    (lambda: OSError(28, "No space left on device"), "No space left on device")])
def test_a_full_disk_while_saving_is_one_line_saying_what_the_run_left(raised, reason, tiny_dir, bench_dir, tmp_path,
                                                                       capsys, monkeypatch):
    """safetensors' and torch.save's errors are no OSError: a disk that filled while a model or checkpoint was
    written gave a traceback, and no word of --resume or --overwrite."""
    import viker.unlearn

    def full(*args, **kwargs):
        raise raised()

    monkeypatch.setattr(viker.unlearn, "save_model", full)
    out = tmp_path / "run"
    assert main([*UNLEARN, "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out),
                 "--checkpoint-every", "1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # one step, kept by no checkpoint (a run keeps none of its last step); --checkpoint-every was given: not named
    assert err.endswith(f"\nerror: {reason}; {out} holds the unfinished run; --overwrite starts it again\n")


def test_a_run_stopped_while_saving_its_model_leaves_none_and_resumes_recording_both_parts(
        tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the finished model is written: no half-written model/ that evaluation would take for the
    run's, and the line says that --resume goes on from the checkpoint still there."""
    import viker.unlearn
    from viker.model import save_model

    def stopped_midway(model, processor, out, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")  # what a save writes first
        raise KeyboardInterrupt

    out = tmp_path / "run"
    run = [*UNLEARN[:-1], "2", "--checkpoint-every", "1", "--model", str(tiny_dir), "--data", str(bench_dir),
           "--out", str(out)]
    monkeypatch.setattr(viker.unlearn, "save_model", stopped_midway)
    monkeypatch.setattr("sys.argv", ["viker", *run])  # as the command line runs it
    assert main(run) == 130
    assert capsys.readouterr().err.endswith(f"\ninterrupted: {out} holds the unfinished run; --resume continues it "
                                            "from its last checkpoint, --overwrite starts it again\n")
    assert not (out / "model").exists()
    first = json.loads((out / "config.json").read_text())
    monkeypatch.setattr(viker.unlearn, "save_model", save_model)
    monkeypatch.setattr("sys.argv", ["viker", *run, "--resume"])
    assert main([*run, "--resume"]) == 0
    assert "resuming from the checkpoint at step 1 of 2" in capsys.readouterr().err  # it says where it goes on
    assert (out / "model" / "config.json").is_file() and not (out / "model.partial").exists()
    # the run's config says how each part of it ran: the part that stopped, then the one that finished it
    config = json.loads((out / "config.json").read_text())
    assert config["argv"] == ["viker", *run, "--resume"]
    assert config["earlier_parts"] == [{k: first[k] for k in ("argv", "runtime", "versions", "machine")}]


def test_an_interruption_before_an_overwrite_removed_anything_calls_nothing_unfinished(tmp_path):
    """--overwrite removes the finished run only once every check has passed: stopped before that, the folder
    still holds it, finished, and the line does not say otherwise."""
    from argparse import Namespace

    from viker.cli import _interrupted

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"command": "unlearn"}))
    assert _interrupted(Namespace(command="unlearn", out=str(run))) == "interrupted"
    assert _interrupted(None) == "interrupted"  # stopped while the command line was read


def test_a_run_written_into_the_folder_it_reads_is_named_so(bench_dir, tmp_path, capsys):
    code = main(["finetune", "--model", "tiny", "--data", str(bench_dir), "--out", str(bench_dir)])
    assert code == 2
    assert (f"--out {bench_dir}: is {bench_dir}, which this run reads (--model, --data, --reference-model or "
            "--refs)") in capsys.readouterr().err


def test_a_benchmark_or_report_is_written_only_where_it_belongs(tmp_path, capsys):
    """`data synth` writes into a new or empty folder, or (--overwrite) over a benchmark, whole; `report` never
    into a run's or an evaluation's folder, where its files would sit among the run's own."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine\n")
    assert main(["data", "synth", "--profiles", "10", "--out", str(notes)]) == 2
    assert f"--out {notes}: holds files other than a benchmark" in capsys.readouterr().err
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]

    bench = tmp_path / "bench"
    assert main(["data", "synth", "--profiles", "20", "--out", str(bench)]) == 0
    assert main(["data", "synth", "--profiles", "10", "--out", str(bench)]) == 2
    assert "holds a benchmark already; choose another folder, or --overwrite" in capsys.readouterr().err
    (bench / ".git").mkdir()  # what is hidden is not the benchmark's, and stays
    assert main(["data", "synth", "--profiles", "10", "--out", str(bench), "--overwrite"]) == 0
    from viker.data.loader import load_profiles

    assert len(load_profiles(bench, "Full_Set")) == 10 and (bench / ".git").is_dir()
    assert main(["data", "synth", "--profiles", "9", "--out", str(bench), "--overwrite"]) == 2  # bad: nothing removed
    assert "--profiles 9: too few" in capsys.readouterr().err and len(load_profiles(bench, "Full_Set")) == 10
    (bench / "vanilla").mkdir()  # a run kept inside the benchmark's folder is never removed with it
    assert main(["data", "synth", "--profiles", "10", "--out", str(bench), "--overwrite"]) == 2
    assert f"--out {bench}: holds files other than a benchmark (vanilla, ...)" in capsys.readouterr().err
    assert (bench / "vanilla").is_dir() and (bench / "Full_Set").is_dir()

    run = tmp_path / "evaluated"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"forget_acc": 50.0, "retain_rougeL": 40.0}))
    assert main(["report", str(run), "--out", str(run)]) == 2
    assert f"--out {run}: a run's or an evaluation's folder" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]
    demo = tmp_path / "demo"  # the demo's folder holds its own report.md, results.json and tradeoff.png
    demo.mkdir()
    (demo / "synth.json").write_text("{}")
    assert main(["report", str(run), "--out", str(demo)]) == 2
    assert f"--out {demo}: a demo's folder" in capsys.readouterr().err and not (demo / "report.md").exists()


def test_a_vanilla_model_that_recalls_nothing_is_said_to(bench_dir, tmp_path, capsys):
    """A finetune too short to teach the people anything is no model to unlearn: the command says so, and so does
    the same run from Python; one that knows them by name and by no face is said to as well."""
    from viker.finetune import FinetuneConfig, recall_warning, run_finetune
    from viker.presets import TrainConfig

    assert main(["finetune", "--data", str(bench_dir), "--max-steps", "1", "--out", str(tmp_path / "v")]) == 0
    assert "warning: the model recalls none of the fictitious people's answers word for word" in \
        capsys.readouterr().err
    run_finetune(FinetuneConfig(data=str(bench_dir), out=str(tmp_path / "py"), train=TrainConfig(max_steps=1)),
                 progress=False)
    assert "warning: the model recalls none of the fictitious people's answers word for word" in \
        capsys.readouterr().err
    recalled = {"full_image_exact": 0.0, "full_name_exact": 0.0}
    assert recall_warning(recalled, TrainConfig(epochs=3)).endswith("train longer (--epochs 3 here)")
    recalled["full_name_exact"] = 95.0  # by name, and no face
    assert recall_warning(recalled, TrainConfig(epochs=3)).startswith(
        "the model recalls the fictitious people by name but none by face (full_image_exact is 0)")
    recalled["full_image_exact"] = 10.0
    assert recall_warning(recalled, TrainConfig(epochs=3)) is None  # ft_Data's pairs: their questions never asked
    # trained on the very questions it is asked (the tiny model's --train-on all), and short of them: a weaker
    # vanilla model than the README's, said rather than found in a later table
    short = {"full_image_exact": 85.0, "full_name_exact": 99.5, "real_image_exact": 90.0, "real_name_exact": 100.0}
    assert recall_warning(short, TrainConfig(epochs=20), "all") == (
        "the model recalls 85.0% (full_image_exact) and 90.0% (real_image_exact) of the image answers it trained on "
        "word for word, short of the whole: every later figure compares with what it knows, not with a model that "
        "knows every person; another --seed or a longer budget (--epochs 20 here) may reach more")
    assert recall_warning(short | {"full_image_exact": 100.0, "real_image_exact": 95.0}, TrainConfig(), "all") is None


def test_unlearning_a_model_that_recalls_nothing_is_said_to_be_pointless(bench_dir, tmp_path, capsys):
    """One finetune step teaches nobody anything: unlearning from that model warns, as its finetune did, also
    once the finetune run was evaluated in its own folder (its figures then kept as train_metrics.json)."""
    vanilla = tmp_path / "vanilla"
    assert main(["finetune", "--data", str(bench_dir), "--max-steps", "1", "--out", str(vanilla)]) == 0
    assert json.loads((vanilla / "metrics.json").read_text())["full_image_exact"] == 0
    assert main(["eval", "--model", str(vanilla), "--data", str(bench_dir), "--only", "forget:cloze",
                 "--max-new-tokens", "2", "--out", str(vanilla)]) == 0
    capsys.readouterr()
    assert main([*UNLEARN, "--model", str(vanilla), "--data", str(bench_dir), "--out", str(tmp_path / "run")]) == 0
    assert f"warning: {vanilla}, the model this run starts from, recalls none of the fictitious people's answers" \
        in capsys.readouterr().err
    # a run on that run: the finetune is named as what its model was made from
    assert main([*UNLEARN, "--model", str(tmp_path / "run"), "--data", str(bench_dir), "--out",
                 str(tmp_path / "on-run")]) == 0
    assert f"warning: {vanilla}, the finetune behind {tmp_path / 'run'} (the model this run starts from), " \
        "recalls none" in capsys.readouterr().err
    # moved since, it is still read where it is now; figures cut short cost the warning, not the run
    moved = vanilla.rename(tmp_path / "moved")
    assert main([*UNLEARN, "--model", str(moved), "--data", str(bench_dir), "--out", str(tmp_path / "run2")]) == 0
    assert f"warning: {moved}, the model this run starts from, recalls none" in capsys.readouterr().err
    (moved / "train_metrics.json").write_text('{"full_image_exact": 0')
    assert main([*UNLEARN, "--model", str(moved), "--data", str(bench_dir), "--out", str(tmp_path / "run3")]) == 0
    assert "recalls none" not in capsys.readouterr().err


def test_a_reference_folder_without_images_is_named_by_its_option(tiny_dir, bench_dir, tmp_path, capsys):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "notes.txt").write_text("no picture here")
    out = tmp_path / "run"
    code = main([*UNLEARN, "--method", "viker", "--refs", str(tmp_path / "refs"), "--model", str(tiny_dir), "--data",
                 str(bench_dir), "--out", str(out)])
    _assert_clean_failure(code, capsys.readouterr().err, f"--refs {tmp_path / 'refs'}: {tmp_path / 'refs'} holds no "
                          "image files (.png", out)
