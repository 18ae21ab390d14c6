"""A run folder holds one run: a new run never lands on an old one's files unasked, an evaluation never
lands in another model's run, and a resumed run goes on with the settings it started with."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from viker.cli import main
from viker.data.schema import Example
from viker.errors import VikerError
from viker.train import CHECKPOINT, TrainConfig, train

# what --resume of a run that finished says, whatever else it is given
FINISHED = "holds a finished run (its model is saved): there is nothing to resume"
# where a --resume that passed every check is stopped by these tests: at loading its checkpoint (see _stopped)
PAST = "past every check, at loading the checkpoint"


def _stopped(argv: list[str], monkeypatch) -> None:
    """Run ``argv`` (of two steps or more) stopped as by Ctrl-C once it wrote its first checkpoint; from then on a
    --resume of it is stopped where it would load that checkpoint, saying PAST, so that the checkpoint stays
    for the next one."""
    import viker.train

    save = viker.train.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    def past(*args, **kwargs):
        raise VikerError(PAST)

    with monkeypatch.context() as patched:
        patched.setattr(viker.train, "save_checkpoint", save_then_stop)
        assert main([*argv, "--checkpoint-every", "1"]) == 130
    monkeypatch.setattr(viker.train, "load_checkpoint", past)


def _error(capsys) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def _method(run) -> str:
    return json.loads((run / "config.json").read_text())["method"]["name"]


def test_a_run_folder_is_replaced_only_when_asked(tiny_dir, bench_dir, tmp_path, capsys):
    run = tmp_path / "run"
    unlearn = ["unlearn", "--data", str(bench_dir), "--max-steps", "1", "--out", str(run)]
    assert main([*unlearn, "--model", str(tiny_dir), "--method", "ga"]) == 0
    assert main(["eval", "--model", str(run), "--data", str(bench_dir), "--out", str(run),
                 "--only", "forget:cloze"]) == 0
    capsys.readouterr()

    # another method into the same folder: its report row would have read GA's evaluation as NPO's
    assert main([*unlearn, "--model", str(tiny_dir), "--method", "npo"]) == 2
    assert "holds a `viker unlearn` run already; choose another folder, or --overwrite" in _error(capsys)
    assert _method(run) == "ga" and (run / "metrics.json").is_file()
    # one stopped before its first checkpoint (or killed as it saved its model) is said to be unfinished
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped, ignore=shutil.ignore_patterns("model"))
    assert main([*unlearn[:-1], str(stopped), "--model", str(tiny_dir), "--method", "ga"]) == 2
    assert "holds an unfinished `viker unlearn` run already; choose another folder, or --overwrite to replace it " \
        "(it keeps no checkpoint to --resume from)" in _error(capsys)
    # another model's evaluation into the run's folder
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(run)]) == 2
    assert "the folder of a `viker unlearn` run of another model" in _error(capsys)
    # --overwrite removes nothing for a run that cannot start
    assert main([*unlearn, "--model", str(tiny_dir), "--tuning", "full", "--save", "adapter", "--overwrite"]) == 2
    assert "--tuning full trains no adapter" in _error(capsys) and (run / "metrics.json").is_file()
    # ... nor for one refused once its model is loaded: answers too long, too few reference images
    assert main([*unlearn, "--model", str(tiny_dir), "--max-length", "5", "--overwrite"]) == 2
    assert "--max-length" in _error(capsys) and (run / "metrics.json").is_file()
    assert main([*unlearn, "--model", str(tiny_dir), "--method", "viker", "--k", "500", "--overwrite"]) == 2
    assert "fewer than k=500" in _error(capsys) and _method(run) == "ga" and (run / "metrics.json").is_file()
    assert main(["finetune", "--data", str(bench_dir), "--max-steps", "1", "--out", str(run), "--max-length", "5",
                 "--overwrite"]) == 2
    assert "--max-length" in _error(capsys) and (run / "metrics.json").is_file()
    # --overwrite: the old run goes whole, its evaluation included
    assert main([*unlearn, "--model", str(tiny_dir), "--method", "npo", "--overwrite"]) == 0
    assert _method(run) == "npo" and not (run / "metrics.json").exists()
    # through a link to the run folder: what it holds is replaced, and the link keeps pointing there
    link = tmp_path / "latest"
    link.symlink_to(run, target_is_directory=True)
    assert main([*unlearn[:-1], str(link), "--model", str(tiny_dir), "--method", "ga", "--overwrite"]) == 0
    assert link.is_symlink() and link.resolve() == run.resolve() and _method(run) == "ga"
    # ... but never the model the run reads
    assert main([*unlearn, "--model", str(run), "--method", "ga", "--overwrite"]) == 2
    assert "--overwrite would remove" in _error(capsys) and (run / "model").is_dir()
    # ... nor a run kept inside it (one unlearned from it), which is no part of the run it replaces
    assert main([*unlearn[:-1], str(run / "sub"), "--model", str(run), "--method", "ga"]) == 0
    capsys.readouterr()
    assert main(["finetune", "--data", str(bench_dir), "--max-steps", "1", "--out", str(run), "--overwrite"]) == 2
    assert f"--overwrite would remove {run / 'sub'}, which is no part of the `viker unlearn` run there" in \
        _error(capsys)
    assert (run / "sub" / "config.json").is_file() and _method(run) == "ga"
    # ... nor a copy of its model the user keeps beside it; an evaluation of the run itself goes with it, as one
    # written into the run's folder does
    shutil.rmtree(run / "sub")
    assert main(["eval", "--model", str(run), "--data", str(bench_dir), "--out", str(run / "eval"), "--only",
                 "forget:cloze", "--max-new-tokens", "2"]) == 0
    shutil.copytree(run / "model", run / "model.bak")
    capsys.readouterr()
    assert main([*unlearn, "--model", str(tiny_dir), "--method", "npo", "--overwrite"]) == 2
    assert f"--overwrite would remove {run / 'model.bak'}, which is no part of" in _error(capsys)
    shutil.rmtree(run / "model.bak")
    # ... nor a file of theirs: notes, a key-token page written beside the run
    (run / "notes.txt").write_text("lr 2e-4 forgot too little")
    assert main([*unlearn, "--model", str(tiny_dir), "--method", "npo", "--overwrite"]) == 2
    assert f"--overwrite would remove {run / 'notes.txt'}, which is no part of" in _error(capsys)
    (run / "notes.txt").unlink()
    assert main([*unlearn, "--model", str(tiny_dir), "--method", "npo", "--overwrite"]) == 0
    assert _method(run) == "npo" and not (run / "eval").exists()
    # a model folder is no run folder: finetuning into it would have written over its config.json
    before = (tiny_dir / "config.json").read_text()
    assert main(["finetune", "--data", str(bench_dir), "--max-steps", "1", "--out", str(tiny_dir)]) == 2
    assert "holds files of something other than a run" in _error(capsys)
    assert (tiny_dir / "config.json").read_text() == before
    # a folder with hidden files alone (a file manager's .DS_Store) is an empty one, as `viker eval` takes it
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".DS_Store").write_bytes(b"\0")
    assert main(["unlearn", "--data", str(bench_dir), "--max-steps", "1", "--out", str(hidden), "--model",
                 str(tiny_dir), "--method", "ga"]) == 0
    assert _method(hidden) == "ga"


def test_an_evaluation_writes_only_where_it_belongs(tiny_dir, bench_dir, tmp_path, capsys):
    """`viker eval` never writes into the benchmark (--data and --out swapped), over another model's
    evaluation, or into a folder of other files; it re-evaluates the same model where it was evaluated."""
    bench = tmp_path / "bench"
    shutil.copytree(bench_dir, bench)
    files = sorted(p.relative_to(bench) for p in bench.rglob("*"))
    evaluate = ["eval", "--data", str(bench), "--only", "forget:cloze", "--model"]
    assert main([*evaluate, str(tiny_dir), "--out", str(tmp_path / "e")]) == 0
    assert main([*evaluate, str(tiny_dir), "--out", str(tmp_path / "e")]) == 0  # the same model, again
    capsys.readouterr()
    assert main([*evaluate, str(tiny_dir), "--out", str(bench)]) == 2
    assert "the benchmark folder given as --data" in _error(capsys)
    assert sorted(p.relative_to(bench) for p in bench.rglob("*")) == files
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    assert main([*evaluate, str(other), "--out", str(tmp_path / "e")]) == 2
    assert f"the evaluation of another model ({tiny_dir.resolve()})" in _error(capsys)
    assert json.loads((tmp_path / "e" / "config.json").read_text())["model"] == str(tiny_dir.resolve())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert main([*evaluate, str(tiny_dir), "--out", str(tmp_path / "notes")]) == 2
    assert "a folder of files that no viker evaluation wrote" in _error(capsys)
    assert main([*evaluate, str(other), "--out", str(other)]) == 0  # beside the model it scores
    run = tmp_path / "run"  # a run folder of ours and the model/ in it are one model, whichever is named
    shutil.copytree(tiny_dir, run / "model")
    for first, then in ((run / "model", run), (run, run), (run, run / "model")):
        shutil.rmtree(tmp_path / "r", ignore_errors=True)
        assert main([*evaluate, str(first), "--out", str(tmp_path / "r")]) == 0
        assert main([*evaluate, str(then), "--out", str(tmp_path / "r")]) == 0, (first, then)
    assert main([*evaluate, str(run), "--out", str(run)]) == 0  # into the folder named, as beside a model
    # into a finetune's own folder: its recall figures are kept beside the evaluation's, through a second one
    finetuned = tmp_path / "ft"
    shutil.copytree(tiny_dir, finetuned / "model")
    (finetuned / "config.json").write_text(json.dumps({"command": "finetune"}))
    recall = {"full_image_exact": 40.0, "final_loss": 1.25}
    (finetuned / "metrics.json").write_text(json.dumps(recall))
    for _ in range(2):
        assert main([*evaluate, str(finetuned), "--out", str(finetuned)]) == 0
        assert json.loads((finetuned / "train_metrics.json").read_text()) == recall
        assert "forget_cloze" in json.loads((finetuned / "metrics.json").read_text())
    # an evaluation killed as its files took their places (its metrics.json there, its settings not): the next one
    # copied those figures over the finetune's own
    (finetuned / "eval_config.json").unlink()
    assert main([*evaluate, str(finetuned), "--out", str(finetuned)]) == 0
    assert json.loads((finetuned / "train_metrics.json").read_text()) == recall


def test_overwrite_never_removes_the_base_model_of_an_adapter_it_reads(tiny_dir, bench_dir, tmp_path, capsys):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    common = ["--data", str(bench_dir), "--method", "ga", "--max-steps", "1"]
    assert main(["unlearn", "--model", str(tiny_dir), *common, "--tuning", "full", "--out", str(base)]) == 0
    assert main(["unlearn", "--model", str(base), *common, "--save", "adapter", "--out", str(adapter)]) == 0
    capsys.readouterr()
    # the adapter is merged into the model in `base` when loaded: replacing `base` would take it away
    for command in (["unlearn", *common], ["finetune", "--data", str(bench_dir), "--max-steps", "1"]):
        assert main([*command, "--model", str(adapter), "--out", str(base), "--overwrite"]) == 2
        assert f"--overwrite would remove {(base / 'model').resolve()}, which this run reads" in _error(capsys)
        assert (base / "model" / "config.json").is_file()
        # without --overwrite, the refusal does not point to it
        assert main([*command, "--model", str(adapter), "--out", str(base)]) == 2
        error = _error(capsys)
        assert f"holds a `viker unlearn` run, with {(base / 'model').resolve()}, which this run reads; choose " \
            "another folder" in error and "--overwrite" not in error


def test_a_run_on_a_base_model_is_refused_once_that_model_is_replaced(tiny_dir, bench_dir, tmp_path, capsys,
                                                                       monkeypatch):
    base, adapter, cagul = tmp_path / "base", tmp_path / "adapter", tmp_path / "cagul"
    shutil.copytree(tiny_dir, base)
    common = ["--model", str(base), "--data", str(bench_dir), "--max-steps", "1"]
    assert main(["unlearn", *common, "--method", "ga", "--save", "adapter", "--out", str(adapter)]) == 0
    stopped = ["unlearn", *common[:-1], "2", "--method", "ga", "--save", "adapter", "--out", str(tmp_path / "stopped")]
    _stopped(stopped, monkeypatch)
    assert main(["unlearn", *common, "--method", "cagul", "--k", "2", "--out", str(cagul)]) == 0
    weights = base / "model.safetensors"
    assert json.loads((adapter / "config.json").read_text())["model_files"].keys() == {str(weights.resolve())}
    evaluate = ["eval", "--data", str(bench_dir), "--only", "forget:cloze", "--out"]
    assert main([*evaluate, str(tmp_path / "e1"), "--model", str(adapter)]) == 0
    capsys.readouterr()
    # the base model is replaced by another (finetuned again, say): the adapter and CAGUL's modules were
    # trained on other weights, and a resumed run would go on from other ones
    tensors = load_file(str(weights))
    tensors = {k: v + 1 if i == 0 else v for i, (k, v) in enumerate(tensors.items())}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    for run in (adapter, cagul):
        assert main([*evaluate, str(tmp_path / "e2"), "--model", str(run)]) == 2
        assert f"{weights.resolve()} is not the file {run} was trained on (1 weight file(s) differ" in _error(capsys)
    assert main([*stopped, "--resume"]) == 2
    assert f"--resume: {weights.resolve()} is not the file" in _error(capsys)


def test_a_resumed_run_goes_on_with_the_settings_it_started_with(tiny_dir, bench_dir, tmp_path, capsys,
                                                                 monkeypatch):
    run = tmp_path / "run"
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-steps", "2", "--out", str(run)]
    assert main([*unlearn, "--resume"]) == 2
    assert "holds no unlearn run to continue" in _error(capsys)
    started = [*unlearn, "--method", "ga", "--checkpoint-every", "1"]
    monkeypatch.setattr("sys.argv", ["/usr/bin/viker", *started])  # as the command line runs it
    _stopped([*unlearn, "--method", "ga"], monkeypatch)
    capsys.readouterr()
    assert main([*unlearn, "--method", "npo", "--resume"]) == 2
    error = _error(capsys)
    assert "--resume: --method was ga when the run started and is npo now" in error
    # the message gives the command the run was started with, to repeat with --resume
    assert f"it was started as `viker unlearn --model {tiny_dir} " in error
    assert "--method ga --checkpoint-every 1`" in error
    assert main([*unlearn, "--method", "ga", "--lr", "0.5", "--resume"]) == 2
    assert "--resume: --lr was 0.0002 when the run started and is 0.5 now" in _error(capsys)
    # a method's settings are compared as it reads them: its default given now is the setting it started with
    monkeypatch.setattr("sys.argv", ["/usr/bin/viker", *started, "--average", "sequence", "--resume"])
    assert main([*unlearn, "--method", "ga", "--average", "sequence", "--resume"]) == 2
    assert PAST in _error(capsys)
    assert main([*unlearn, "--method", "ga", "--average", "token", "--resume"]) == 2
    error = _error(capsys)
    assert "--resume: --average was sequence when the run started and is token now" in error
    # once resumed, it was still started as it was, not as its resumed part
    assert "--method ga --checkpoint-every 1`" in error and "--resume`" not in error
    # --save given as what auto chose when the run started (merged, on float32 weights) is the same run
    assert json.loads((run / "config.json").read_text())["saved"] == "merged"
    assert main([*unlearn, "--method", "ga", "--save", "merged", "--resume"]) == 2 and PAST in _error(capsys)
    assert main([*unlearn, "--method", "ga", "--save", "adapter", "--resume"]) == 2
    assert "--resume: --save was auto when the run started and is adapter now" in _error(capsys)
    # --save auto resumes as the run started, and as a run from before auto, which recorded merged, started
    older = json.loads((run / "config.json").read_text())
    older["unlearn"]["lora"]["merge"] = True
    (run / "config.json").write_text(json.dumps(older))
    assert main([*unlearn, "--method", "ga", "--resume"]) == 2 and PAST in _error(capsys)
    older = json.loads((run / "config.json").read_text())
    assert main([*unlearn, "--method", "ga", "--save", "adapter", "--resume"]) == 2
    assert "--resume: --save was merged when the run started and is adapter now" in _error(capsys)
    # it goes on with the examples it started on, as recorded; a run from before they were recorded, with all
    assert older["unlearn"]["train_on"] == "all"
    assert main([*unlearn, "--method", "ga", "--train-on", "ft_Data", "--resume"]) == 2
    assert "--resume: --train-on was all when the run started and is ft_Data now" in _error(capsys)
    del older["unlearn"]["train_on"]
    (run / "config.json").write_text(json.dumps(older))
    assert main([*unlearn, "--method", "ga", "--resume"]) == 2 and PAST in _error(capsys)
    older = json.loads((run / "config.json").read_text())
    del older["unlearn"]["train_on"]
    (run / "config.json").write_text(json.dumps(older))
    assert main([*unlearn, "--method", "ga", "--train-on", "ft_Data", "--resume"]) == 2
    assert "--train-on ft_Data: the run started on all" in _error(capsys)
    # where the results do not depend on it, a setting may change
    assert main([*unlearn, "--method", "ga", "--checkpoint-every", "3", "--resume"]) == 2
    assert PAST in _error(capsys)
    # the folders are compared, not how they were typed
    monkeypatch.chdir(tmp_path)
    relative = ["unlearn", "--model", str(tiny_dir), "--data", os.path.relpath(bench_dir), "--max-steps", "2",
                "--out", "run/", "--method", "ga", "--resume"]
    assert main(relative) == 2 and PAST in _error(capsys)
    recorded = json.loads((run / "config.json").read_text())["unlearn"]
    assert (recorded["data"], recorded["out"]) == (str(bench_dir.resolve()), str(run.resolve()))
    # a run folder moved (or copied to another machine) goes on where it is now
    shutil.move(run, tmp_path / "moved")
    moved = [*unlearn[:-1], str(tmp_path / "moved"), "--method", "ga", "--resume"]
    assert main(moved) == 2 and PAST in _error(capsys)
    # ... and so does one whose benchmark was moved: its files are those it recorded, by hash
    bench = shutil.copytree(bench_dir, tmp_path / "bench")
    elsewhere = [*moved[:4], str(bench), *moved[5:]]
    assert main(elsewhere) == 2 and PAST in _error(capsys)
    parquet = next((bench / "forget_10").glob("*.parquet"))
    pq.write_table(pq.read_table(parquet), parquet, compression="gzip")  # other files there are refused
    assert main(elsewhere) == 2 and "forget_10/train-00000-of-00001.parquet is not the file the run started " \
        "with" in _error(capsys)
    # ... and one whose model was moved: its weight files are those it recorded, by hash
    model = shutil.copytree(tiny_dir, tmp_path / "model")
    from_moved = [*moved[:2], str(model), *moved[3:]]
    assert main(from_moved) == 2 and PAST in _error(capsys)
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["unlearn"]["model"] == str(model)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")  # other weights there are refused
    assert main(from_moved) == 2 and f"--resume: {weights} is not the file" in _error(capsys)
    # ... as is a model elsewhere with other weights
    other = shutil.copytree(model, tmp_path / "other")
    assert main([*moved[:2], str(other), *moved[3:]]) == 2
    assert f"--resume: --model was {model} when the run started and is {other} now" in _error(capsys)


def test_a_resumed_run_goes_on_under_the_autocast_it_trained_under(tiny_dir, bench_dir, tmp_path, capsys,
                                                                    monkeypatch):
    """A run started under its launcher's bf16 (accelerate's config, or ACCELERATE_MIXED_PRECISION) and resumed
    without it went on in float32 without a word; --mixed-precision no, where the run ran under none with none
    given, was refused as another setting."""
    run = tmp_path / "run"
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-steps", "2", "--method", "ga",
               "--out", str(run)]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    _stopped(unlearn, monkeypatch)
    assert json.loads((run / "config.json").read_text())["runtime"]["mixed_precision"] == "bf16"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    capsys.readouterr()
    assert main([*unlearn, "--resume"]) == 2
    assert "--resume: the run trained under mixed precision bf16 (given with --mixed-precision or by its launcher's " \
        "config) and would go on under no; give --mixed-precision bf16 with --resume" in _error(capsys)
    assert main([*unlearn, "--mixed-precision", "bf16", "--resume"]) == 2 and PAST in _error(capsys)
    # the autocast used is compared, not how it was asked for
    plain = tmp_path / "plain"
    _stopped([*unlearn[:-1], str(plain)], monkeypatch)
    capsys.readouterr()
    assert main([*unlearn[:-1], str(plain), "--mixed-precision", "no", "--resume"]) == 2 and PAST in _error(capsys)
    assert main([*unlearn[:-1], str(plain), "--mixed-precision", "bf16", "--resume"]) == 2
    assert "the run trained under mixed precision no" in _error(capsys)


def test_a_run_resumed_without_checkpoint_every_keeps_checkpointing_as_it_started(tiny_dir, bench_dir, tmp_path,
                                                                                   capsys, monkeypatch):
    """Resumed without --checkpoint-every, a run wrote no checkpoint more (and recorded 0): a second interruption
    lost every step since the first."""
    import viker.train

    run = tmp_path / "run"
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-steps", "6", "--method", "ga",
               "--out", str(run)]
    save = viker.train.save_checkpoint
    with monkeypatch.context() as patched:
        patched.setattr(viker.train, "save_checkpoint", lambda *a, **k: (save(*a, **k), _raise(KeyboardInterrupt)))
        assert main([*unlearn, "--checkpoint-every", "2"]) == 130  # stopped at its first checkpoint, step 2
    saved = []
    monkeypatch.setattr(viker.train, "save_checkpoint", lambda *a, **k: saved.append(k.get("step", a[4])))
    assert main([*unlearn, "--resume"]) == 0
    assert saved == [4]  # step 4's checkpoint, as the run started would have written (none at the last step)
    assert json.loads((run / "config.json").read_text())["unlearn"]["train"]["checkpoint_every"] == 2


def _raise(error):
    raise error


def test_an_overwrite_stopped_while_it_removes_the_earlier_run_can_be_given_again(tiny_dir, bench_dir, tmp_path,
                                                                                  monkeypatch):
    """Stopped once the earlier run's config.json was gone but not all else, the folder read as "files of something
    other than a run", which --overwrite refused: it had to be removed by hand."""
    import viker.run_folder

    run = tmp_path / "run"
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--max-steps", "1",
               "--out", str(run)]
    assert main(unlearn) == 0
    entries = len(list(run.iterdir()))
    removed = []
    unlink, rmtree = Path.unlink, shutil.rmtree

    def stop_at_the_last(remove):
        def removing(path, *args, **kwargs):
            if len(removed) == entries - 1:
                raise KeyboardInterrupt
            removed.append(Path(path).name)
            return remove(path, *args, **kwargs)
        return removing

    with monkeypatch.context() as patched:
        patched.setattr(Path, "unlink", stop_at_the_last(unlink))
        patched.setattr(viker.run_folder.shutil, "rmtree", stop_at_the_last(rmtree))
        assert main([*unlearn, "--overwrite"]) == 130
    assert [p.name for p in run.iterdir()] == ["config.json"] and "config.json" not in removed
    assert main([*unlearn, "--overwrite"]) == 0


def test_a_setting_is_named_as_the_command_line_names_it():
    from viker.run_folder import option_of

    assert [option_of(k) for k in ("train.lr", "method_args.retain_weight", "lora.r", "lora.merge", "train_on",
                                   "tiny.family", "train.warmup_ratio")] == [
        "--lr", "--retain-weight", "--lora-r", "--save", "--train-on", "--family", "train.warmup_ratio"]


def test_a_finished_run_is_said_to_be_finished_whatever_else_a_resume_is_given(tiny_dir, bench_dir, tmp_path,
                                                                                capsys):
    """Not advice to give other settings, which would only lead to that; and its record stays as it was."""
    run = tmp_path / "run"
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-steps", "1", "--out", str(run)]
    assert main([*unlearn, "--method", "ga"]) == 0
    config = (run / "config.json").read_text()
    capsys.readouterr()
    for given in (["--method", "ga"], ["--method", "npo"], ["--method", "ga", "--lr", "0.5"]):
        assert main([*unlearn, *given, "--resume"]) == 2
        assert _error(capsys).endswith(f"{run} {FINISHED}")
    assert (run / "config.json").read_text() == config


def test_a_run_records_only_the_settings_it_reads_and_resumes_from_a_record_of_all(tiny_dir, bench_dir, tmp_path,
                                                                                  capsys, monkeypatch):
    """A finetune of a model folder with every weight trained reads neither the tiny model's sizes nor LoRA's
    settings: its config leaves them out, and a run that recorded them still resumes."""
    run = tmp_path / "run"
    finetune = ["finetune", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-steps", "2", "--tuning",
                "full", "--out", str(run)]
    _stopped(finetune, monkeypatch)
    config = json.loads((run / "config.json").read_text())
    assert {"tiny", "lora"}.isdisjoint(config["finetune"]) and config["finetune"]["train"]["max_steps"] == 2
    config["finetune"] |= {"tiny": {"hidden": 64}, "lora": {"r": 16}}
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main([*finetune, "--resume"]) == 2
    assert PAST in _error(capsys)


def test_a_finetune_from_before_seed_seeded_the_tiny_model_resumes_with_its_seed(bench_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    """Such a run recorded the tiny model's initialisation seed as 0 whatever --seed was; a resumed run loads its
    weights from the checkpoint, so that record does not keep it from going on."""
    run = tmp_path / "run"
    finetune = ["finetune", "--model", "tiny", "--data", str(bench_dir), "--max-steps", "2", "--seed", "1",
                "--out", str(run)]
    _stopped(finetune, monkeypatch)
    older = json.loads((run / "config.json").read_text())
    assert older["finetune"]["tiny"]["seed"] == older["finetune"]["train"]["seed"] == 1
    older["finetune"]["tiny"]["seed"] = 0
    (run / "config.json").write_text(json.dumps(older))
    capsys.readouterr()
    assert main([*finetune, "--resume"]) == 2
    assert PAST in _error(capsys)
    older = json.loads((run / "config.json").read_text())  # as that resume recorded it
    older["finetune"]["tiny"]["seed"] = 0
    (run / "config.json").write_text(json.dumps(older))
    assert main([*finetune[:-4], "--seed", "2", "--out", str(run), "--resume"]) == 2  # --seed itself still counts
    assert "--resume: --seed was 1 when the run started and is 2 now" in _error(capsys)


def test_a_checkpoint_rotation_stopped_midway_neither_blocks_the_next_nor_outlives_the_run(tmp_path):
    """Killed between its two renames, a rotation leaves checkpoint.old beside the new checkpoint: the next
    checkpoint is still written, and a finished run keeps no checkpoint that --resume would take up."""
    from viker.runs import checkpoints
    from viker.train import discard_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(tmp_path, model, optimizer, scheduler, 1, [])
    shutil.copytree(tmp_path / CHECKPOINT, tmp_path / f"{CHECKPOINT}.old")
    save_checkpoint(tmp_path, model, optimizer, scheduler, 2, [])
    assert [torch.load(p / "state.pt", weights_only=True)["step"] for p in checkpoints(tmp_path)] == [2]
    shutil.copytree(tmp_path / CHECKPOINT, tmp_path / f"{CHECKPOINT}.old")
    discard_checkpoint(tmp_path)
    assert checkpoints(tmp_path) == []


def test_data_files_in_a_linked_folder_are_recorded_as_the_loader_reads_them(bench_dir, tmp_path):
    """A benchmark folder whose split lives elsewhere behind a link: its files are hashed, so that --resume sees
    them change."""
    from viker.data.loader import config_files
    from viker.runs import file_hashes

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    shutil.copytree(bench_dir, data)
    shutil.move(data / "forget_10", elsewhere)
    (data / "forget_10").symlink_to(elsewhere, target_is_directory=True)
    recorded = file_hashes(data)
    assert {str(p.relative_to(data)) for p in config_files(data, "forget_10")} <= set(recorded)
    assert recorded == file_hashes(bench_dir)  # the same files, wherever they lie


def test_a_resumed_run_reads_the_data_files_it_started_with(tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(bench_dir, data)
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(data), "--method", "ga", "--max-steps", "2",
               "--out", str(run)]
    _stopped([*unlearn, "--dtype", "bfloat16"], monkeypatch)
    runtime = json.loads((run / "config.json").read_text())["runtime"]
    assert runtime["weights_dtype"] == "bfloat16"  # what the run held its weights in, beside the setting
    shutil.copy(data / "Full_Set" / "train-00000-of-00001.parquet", data / "Full_Set" / "train-extra.parquet")
    capsys.readouterr()
    assert main([*unlearn, "--dtype", "bfloat16", "--resume"]) == 2
    assert "Full_Set/train-extra.parquet is not the file the run started with (1 data file(s) differ" in \
        _error(capsys)
    # bf16 is bfloat16 spelt short: the same setting, which goes on to the files; float16 is another
    assert main([*unlearn, "--dtype", "bf16", "--resume"]) == 2 and "train-extra.parquet is not the file" in \
        _error(capsys)
    assert main([*unlearn, "--dtype", "float16", "--resume"]) == 2
    assert "--resume: --dtype was bfloat16 when the run started and is float16 now" in _error(capsys)


def test_a_checkpoint_past_the_end_of_the_run_is_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    examples = [Example(f"q{i}", "a", None) for i in range(8)]

    class Objective:
        streams = ("train",)

        def loss(self, model, batches):
            return (model(batches["train"]["x"]) ** 2).mean(), {}

    def collate(exs):
        return {"x": torch.ones(len(exs), 2)}

    train(model, Objective(), {"train": examples}, collate,
          TrainConfig(max_steps=6, batch_size=2, checkpoint_every=2), progress=False, run_dir=tmp_path)
    assert torch.load(tmp_path / CHECKPOINT / "state.pt", weights_only=True)["step"] == 4
    with pytest.raises(VikerError, match="the checkpoint is at step 4, and this run has 3 steps"):
        train(model, Objective(), {"train": examples}, collate, TrainConfig(max_steps=3, batch_size=2),
              progress=False, run_dir=tmp_path, resume=True)


def test_a_run_stopped_before_its_end_is_named_when_loaded(bench_dir, tmp_path, capsys):
    run = tmp_path / "stopped"
    (run / CHECKPOINT).mkdir(parents=True)
    (run / CHECKPOINT / "state.pt").touch()
    (run / "config.json").write_text(json.dumps({"command": "unlearn"}))
    assert main(["eval", "--model", str(run), "--data", str(bench_dir), "--out", str(tmp_path / "e")]) == 2
    assert "a `viker unlearn` run with no model in it (stopped before its end? --resume continues it)" in \
        _error(capsys)


def test_report_names_what_is_wrong_with_a_folder(tmp_path, capsys):
    def run(name: str, metrics: str):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(metrics)
        return str(tmp_path / name)

    cases = [(str(tmp_path / "absent"), "no such run folder"),
             (run("finetuned", json.dumps({"full_image_exact": 100.0, "final_loss": 0.1})),
              "holds no evaluation's metrics; evaluate it first"),
             (run("cut", '{"forget_acc": 5'), "metrics.json: not JSON"),
             (run("text", json.dumps({"forget_acc": "high"})), "metrics.json: forget_acc is 'high', not a finite "
                                                                  "number"),
             # json writes them, Python reads them; neither is a figure (printed "inf", "1.0")
             (run("infinite", '{"forget_acc": Infinity}'), "metrics.json: forget_acc is inf, not a finite number"),
             (run("boolean", json.dumps({"forget_acc": True})), "metrics.json: forget_acc is True, not a finite"),
             # what the sentence under the table compares with 50 (a traceback)
             (run("share", json.dumps({"forget_acc": 5.0, "forget_unparsed": "lots"})),
              "metrics.json: forget_unparsed is 'lots', not a finite number")]
    for folder, message in cases:
        assert main(["report", folder, "--out", str(tmp_path / "report")]) == 2
        assert message in _error(capsys)
    assert not (tmp_path / "report").exists()
    # answers cut short: their file and line, not a traceback
    ok = run("answers", json.dumps({"forget_acc": 5.0}))
    (tmp_path / "answers" / "generations.jsonl").write_text('{"set": "forget"}\n{"bad\n')
    assert main(["report", ok, "--out", str(tmp_path / "report")]) == 2
    assert f"{ok}/generations.jsonl, line 2: not JSON" in _error(capsys)


def test_a_reference_folder_is_recorded_absolute(bench_dir, monkeypatch):
    from viker.methods.reference import reference_pool_and_source

    monkeypatch.chdir(bench_dir.parent)  # --data typed relative: the record still names the folder from anywhere
    pool, source = reference_pool_and_source("people", bench_dir.name, "forget_10")
    assert pool and source == str((bench_dir / "ref_people").resolve())


def test_a_run_on_a_gpu_machine_records_which_gpu(monkeypatch):
    """The device the arithmetic ran on decides the numbers: config.json names the GPU, not only "cuda:0"."""
    from viker.runs import machine

    assert "gpu" not in machine() or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert machine()["gpu"] == "NVIDIA H100 80GB HBM3" and "cuda" in machine()


def test_a_model_finetuned_on_other_benchmark_files_is_warned_about(tiny_dir, bench_dir, tmp_path, capsys):
    """Unlearning or scoring a vanilla model on a benchmark other than the one it was finetuned on (another
    seed's embedded benchmark, another release) measures people it never met: the commands say so."""
    from viker.runs import file_hashes, other_benchmark

    vanilla, unlearned = tmp_path / "vanilla", tmp_path / "unlearned"
    shutil.copytree(tiny_dir, vanilla / "model")
    hashes = file_hashes(bench_dir)
    other = {name: "0" * 64 for name in hashes}  # what a finetune on other files of the same layout records
    unlearned.mkdir()  # an unlearning run that started from it: the warning follows it back
    (unlearned / "config.json").write_text(json.dumps({"command": "unlearn",
                                                       "unlearn": {"model": str(vanilla / "model")}}))
    for recorded, warned in ((hashes, False), (other, True)):
        (vanilla / "config.json").write_text(json.dumps({"command": "finetune", "finetune": {"data": "elsewhere"},
                                                         "data_files": recorded}))
        for model in (vanilla, vanilla / "model", unlearned):
            warning = other_benchmark(str(model), bench_dir)
            assert (warning is not None) == warned
        assert main(["eval", "--model", str(vanilla), "--data", str(bench_dir), "--only", "forget:cloze",
                     "--out", str(tmp_path / f"eval-{warned}")]) == 0
        said = capsys.readouterr().err
        assert (f"warning: {vanilla} was finetuned on elsewhere, and {bench_dir} is not that benchmark byte for "
                f"byte ({len(hashes)} of its files differ from those" in said) == warned
    assert main(["unlearn", "--model", str(vanilla), "--data", str(bench_dir), "--method", "ga", "--max-steps", "1",
                 "--out", str(tmp_path / "run")]) == 0
    assert f"warning: {vanilla} was finetuned on elsewhere, and {bench_dir} is not" in capsys.readouterr().err
    assert main(["keytokens", "--model", str(vanilla), "--data", str(bench_dir), "--k", "2", "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "page.html")]) == 0  # a page of people it never met
    assert f"warning: {vanilla} was finetuned on elsewhere, and {bench_dir} is not" in capsys.readouterr().err
    assert other_benchmark(str(tiny_dir), bench_dir) is None  # no finetune of ours: nothing to compare
    # a model finetuned on the other benchmark: said in those words, not as another seed or release
    (vanilla / "config.json").write_text(json.dumps({"command": "finetune", "data_files": hashes,
                                                     "finetune": {"data": "clear-data", "benchmark": "clear"}}))
    assert other_benchmark(str(unlearned), bench_dir) == (
        f"{unlearned} was finetuned on CLEAR (clear-data), and is read here as a model of MLLMU-Bench: its people "
        "are not those the model learned, and its figures here mean nothing")
    assert other_benchmark(str(unlearned), bench_dir, "clear") is None
    # the same files in another layout (data/CONFIG/...), a FAT drive's hidden ._ files beside them: the same one
    (vanilla / "config.json").write_text(json.dumps({"command": "finetune", "data_files": hashes,
                                                     "finetune": {"data": "elsewhere"}}))
    relaid = tmp_path / "relaid"
    for name in hashes:
        (relaid / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bench_dir / name, relaid / "data" / name)
        (relaid / "data" / name).with_name("._" + Path(name).name).write_bytes(b"metadata")
    assert other_benchmark(str(vanilla), relaid) is None
    first = sorted(hashes)[0]  # one of its files another benchmark's: no longer the same one
    (relaid / "data" / first).write_bytes(b"another benchmark's file")
    assert "is not that benchmark byte for byte" in other_benchmark(str(vanilla), relaid)


def test_a_data_file_is_hashed_once_while_unchanged_and_again_once_changed(tmp_path, monkeypatch):
    """A run hashes its benchmark to record it and to compare it with its model's finetune: one read of a
    multi-gigabyte release is enough, and a file written since is read again."""
    import hashlib

    import viker.runs
    from viker.runs import file_hashes

    (tmp_path / "Full_Set").mkdir()
    data = tmp_path / "Full_Set" / "train.parquet"
    data.write_bytes(b"people")
    made, sha256 = [], hashlib.sha256
    monkeypatch.setattr(viker.runs.hashlib, "sha256", lambda: made.append(1) or sha256())
    first = file_hashes(tmp_path)
    assert file_hashes(tmp_path) == first and len(made) == 1
    stat = data.stat()
    data.write_bytes(b"others")  # of the same size, and given back its time, as a copy that keeps times does
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_hashes(tmp_path) != first and len(made) == 2


def test_a_staging_folder_a_killed_writer_left_is_removed_a_day_on(tmp_path):
    """SIGKILL (or a lost machine) leaves a hidden .viker-partial-* folder no clean-up ran for: the next write into
    that folder removes one a day old, and leaves a fresh one, another writer's at work, as it is."""
    import os
    import time

    from viker.runs import STALE_SECONDS, written_together

    old, fresh = tmp_path / ".viker-partial-old", tmp_path / ".viker-partial-fresh"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "metrics.json").write_text("{}")
    os.utime(old, (time.time() - STALE_SECONDS - 60,) * 2)
    with written_together(tmp_path) as stage:
        (stage / "a.html").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".viker-partial-fresh", "a.html"]


def test_a_folder_that_takes_no_file_is_named_itself_not_by_a_staging_folder(tmp_path, monkeypatch):
    """/proc looks writable to root and takes no file: `keytokens --out /proc/kt.html` said
    '/proc/.viker-partial-mxxvtazm: No such file or directory', a name the user never gave."""
    import tempfile

    from viker.errors import VikerError
    from viker.runs import written_together

    def refused(prefix, dir):
        raise FileNotFoundError(2, "No such file or directory", str(Path(dir, prefix + "mxxvtazm")))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    with pytest.raises(VikerError, match=f"^{tmp_path}: cannot be written to \\(No such file or directory\\)$"):
        with written_together(tmp_path):
            pass


def test_files_written_together_keep_apart_from_anothers_and_finish_before_a_ctrl_c(tmp_path, monkeypatch):
    """Two writers into one folder each keep their own staging folder (one shared name let the second remove
    what the first had staged); a Ctrl-C while the files take their places waits until all have."""
    import os
    import signal
    from pathlib import Path

    from viker.runs import written_together

    with written_together(tmp_path) as mine:
        (mine / "a.html").write_text("a")
        with written_together(tmp_path) as other:  # another command's, here nested for want of a second process
            (other / "b.html").write_text("b")
        (mine / "a.png").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "a.png", "b.html"]

    replace = Path.replace

    def interrupted(self, target):  # Ctrl-C as the first file takes its place
        if not moved:
            os.kill(os.getpid(), signal.SIGINT)
        moved.append(self.name)
        return replace(self, target)

    moved = []
    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with written_together(tmp_path / "ev") as stage:
            for name in ("config.json", "eval_config.json", "generations.jsonl", "metrics.json", "train_metrics.json"):
                (stage / name).write_text("new")
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "config.json", "eval_config.json", "generations.jsonl", "metrics.json", "train_metrics.json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C stops commands again
    # against a kill no handler hears between two moves: a training run's figures are kept before the metrics that
    # replace them arrive, and the settings that say what the folder holds come last
    assert moved == ["train_metrics.json", "generations.jsonl", "metrics.json", "config.json", "eval_config.json"]
    # a SIGTERM the command line hears (a cluster's time limit) waits as Ctrl-C does, and stops the command alike
    from viker.runs import Terminated, terminate_as_interrupt

    moved.clear()
    monkeypatch.setattr(os, "kill", lambda pid, number, kill=os.kill: kill(pid, signal.SIGTERM))
    with pytest.raises(Terminated), terminate_as_interrupt():
        with written_together(tmp_path / "ev2") as stage:
            for name in ("generations.jsonl", "metrics.json"):
                (stage / name).write_text("new")
    assert sorted(p.name for p in (tmp_path / "ev2").iterdir()) == ["generations.jsonl", "metrics.json"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_second_command_writing_the_same_out_meanwhile_is_refused(tiny_dir, bench_dir, tmp_path, capsys):
    """Two commands writing one --out at once both ended well and left a folder of both: one's config.json beside
    the other's history and model, or a full evaluation replaced by a narrower one."""
    from viker.runs import held_alone

    run = tmp_path / "run"
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--max-steps", "1",
               "--out", str(run)]
    with held_alone(run):  # as the first command holds it while it runs
        assert main(unlearn) == 2
        assert f"--out {run}: another viker command (pid {os.getpid()}) is writing it now" in _error(capsys)
        assert not run.exists()
        assert main(["judge", str(run), "--judge", "my_judges:score"]) == 2  # viker judge writes into its RUN
        assert f"RUN {run}: another viker command" in _error(capsys)
    assert main(unlearn) == 0  # once it has ended
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock left beside it
    # held by another process, as a second command meets it
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from viker.runs import held_alone\n"
                               "with held_alone(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main([*unlearn, "--overwrite"]) == 2
        assert f"--out {run}: another viker command (pid {holder.pid}) is writing it now" in _error(capsys)
    finally:
        holder.kill()
        holder.wait()


def test_where_no_lock_can_be_taken_a_command_runs_as_it_is(tmp_path, monkeypatch, capsys):
    """A file system without locks (Lustre without -o flock) failed every command; a link loop as --out showed a
    traceback; and the other ranks of an MPI launch, which set no RANK, were refused as a second command."""
    import errno
    import fcntl

    from viker.runs import held_alone

    def unsupported(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    with monkeypatch.context() as patched:
        patched.setattr(fcntl, "flock", unsupported)
        with held_alone(tmp_path / "out"):
            assert [p.name for p in tmp_path.iterdir()] == []  # no lock file left behind either
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with held_alone(tmp_path / "loop"):
        pass
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "loop")]) == 2
    assert _error(capsys).startswith("error: ")  # the command's own words, no traceback
    with held_alone(tmp_path / "out"):  # the main process of an MPI launch holds it; rank 1 takes no lock
        monkeypatch.setenv("PMI_RANK", "1")
        with held_alone(tmp_path / "out"):
            pass
    monkeypatch.setenv("PMI_RANK", "")  # set but empty: no rank, so the main process
    with held_alone(tmp_path / "out"), pytest.raises(VikerError, match="another viker command"):
        with held_alone(tmp_path / "out"):
            pass
    # a lock file that cannot be looked at (a stale NFS handle) leaves nothing open and nothing behind; one
    # another command made is never removed by a command that could not lock it
    opened = len(os.listdir("/proc/self/fd"))
    with monkeypatch.context() as patched:
        patched.setattr(os, "stat", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ESTALE, "Stale")))
        with held_alone(tmp_path / "out"):
            pass
    assert len(os.listdir("/proc/self/fd")) == opened and not list(tmp_path.glob(".out.viker-lock"))
    (tmp_path / ".out.viker-lock").write_text("4242")
    with monkeypatch.context() as patched:
        patched.setattr(fcntl, "flock", unsupported)
        with held_alone(tmp_path / "out"):
            pass
    assert (tmp_path / ".out.viker-lock").read_text() == "4242"


def test_a_staging_folder_a_killed_command_left_is_no_data_file(tmp_path):
    """A `viker data synth` killed while staging left .viker-partial-*/ in the benchmark: every later run recorded
    its files as the benchmark's, and a --resume was refused once it was removed."""
    from viker.runs import file_hashes

    (tmp_path / "Full_Set").mkdir()
    (tmp_path / "Full_Set" / "train.parquet").write_bytes(b"people")
    before = file_hashes(tmp_path)
    (tmp_path / ".viker-partial-x1" / "Full_Set").mkdir(parents=True)
    (tmp_path / ".viker-partial-x1" / "Full_Set" / "train.parquet").write_bytes(b"half")
    assert file_hashes(tmp_path) == before == {"Full_Set/train.parquet": before["Full_Set/train.parquet"]}


def test_overwrite_takes_an_evaluation_of_a_snapshot_inside_the_run_as_the_runs_own(tiny_dir, bench_dir, tmp_path,
                                                                                    capsys):
    run = tmp_path / "run"
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--forget",
               "forget_5", "--epochs", "2", "--snapshot-every", "1", "--batch-size", "8", "--out", str(run)]
    assert main(unlearn) == 0
    assert main(["eval", "--model", str(run / "epochs" / "1"), "--data", str(bench_dir), "--forget", "forget_5",
                 "--only", "forget:cloze", "--max-new-tokens", "2", "--out", str(run / "after-one-epoch")]) == 0
    assert main([*unlearn, "--overwrite"]) == 0
    assert not (run / "after-one-epoch").exists() and (run / "epochs" / "1").is_dir()


def test_overwrite_keeps_an_evaluation_of_a_hub_model_kept_inside_the_run(tiny_dir, bench_dir, tmp_path, capsys,
                                                                         monkeypatch):
    """A hub id is recorded as it is: run from inside the run's folder, it read as a folder inside the run, and
    --overwrite removed an evaluation of a model from elsewhere."""
    run = tmp_path / "run"
    unlearn = ["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--max-steps", "1"]
    assert main([*unlearn, "--out", str(run)]) == 0
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--only", "forget:cloze",
                 "--max-new-tokens", "2", "--out", str(run / "hub-model-eval")]) == 0
    recorded = json.loads((run / "hub-model-eval" / "config.json").read_text())
    (run / "hub-model-eval" / "config.json").write_text(json.dumps(recorded | {"model": "some-org/some-model"}))
    monkeypatch.chdir(run)
    capsys.readouterr()
    assert main([*unlearn, "--out", ".", "--overwrite"]) == 2
    assert "--overwrite would remove hub-model-eval, which is no part of" in _error(capsys)
    assert (run / "hub-model-eval" / "config.json").is_file()


def test_saved_weights_are_as_readable_as_the_umask_makes_any_file(bench_dir, tmp_path):
    """safetensors writes its files readable by their owner alone: a model, checkpoint or reference cache saved
    into a team's folder would be read by nobody else. They get the mode any new file gets (here 0640)."""
    import os

    from viker.train import save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    old = os.umask(0o027)
    try:
        assert main(["finetune", "--data", str(bench_dir), "--max-steps", "1", "--out", str(tmp_path / "run")]) == 0
        save_checkpoint(tmp_path, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), 1, [])
    finally:
        os.umask(old)
    weights = [f for f in tmp_path.rglob("*") if f.suffix in (".safetensors", ".pt")]
    assert {f.parent.name for f in weights} == {"model", CHECKPOINT}
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in weights} == {f.name: "0o640" for f in weights}


def test_the_reference_cache_is_recorded_where_it_is_and_a_blank_variable_is_no_folder(tiny_dir, bench_dir, tmp_path,
                                                                                      monkeypatch):
    """--cache-dir relc was recorded as typed (the record names folders absolute); VIKER_CACHE set but blank
    cached into the working folder."""
    from viker.methods.reference import default_cache_dir

    monkeypatch.chdir(tmp_path)
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--max-steps", "1",
                 "--cache-dir", "relc", "--out", "run"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["unlearn"]["cache_dir"] == \
        str(tmp_path / "relc")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VIKER_CACHE", "")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "viker"


def test_the_machine_is_named_in_a_sentence_that_counts_its_threads():
    from viker.runs import machine_words

    one = {"cpu": "Intel Xeon", "cpu_kernels": "AVX512", "threads": "1"}
    assert machine_words(one) == "Intel Xeon (AVX512 kernels, 1 PyTorch thread)"
    assert machine_words(one | {"threads": "2", "gpu": "H100", "cuda": "12.4"}) == \
        "Intel Xeon (AVX512 kernels, 2 PyTorch threads); GPU H100 (CUDA 12.4)"


def test_a_record_holds_one_element_tensors_as_their_numbers_and_refuses_what_json_cannot_hold(tmp_path):
    import numpy as np

    from viker.runs import write_json

    path = write_json(tmp_path / "r.json", {"a": torch.tensor(3.0), "b": np.int64(4), "c": [torch.tensor([2])]})
    assert json.loads(path.read_text()) == {"a": 3.0, "b": 4, "c": [2]}
    with pytest.raises(VikerError, match=r"r2\.json: cannot be written: Object of type Tensor is not JSON"):
        write_json(tmp_path / "r2.json", {"t": torch.ones(3)})
    assert not (tmp_path / "r2.json").exists()


def test_an_evaluation_of_a_run_made_again_while_it_scored_is_refused(tiny_dir, bench_dir, tmp_path, capsys,
                                                                      monkeypatch):
    """A run made again with --overwrite while another command evaluated it: the figures were the earlier model's,
    and the evaluation's config named the new run's settings."""
    import viker.eval.run

    run = tmp_path / "run"
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--max-steps", "1",
                 "--out", str(run)]) == 0
    scored = viker.eval.run.evaluate

    def remade_meanwhile(*args, **kwargs):
        figures = scored(*args, **kwargs)
        config = json.loads((run / "config.json").read_text())
        config["unlearn"]["train"]["seed"] = 1  # as `viker unlearn --seed 1 --overwrite` would leave it
        (run / "config.json").write_text(json.dumps(config))
        return figures

    monkeypatch.setattr(viker.eval.run, "evaluate", remade_meanwhile)
    capsys.readouterr()
    evaluate = ["eval", "--model", str(run), "--data", str(bench_dir), "--only", "forget:cloze", "--out"]
    assert main([*evaluate, str(tmp_path / "ev")]) == 2
    assert f"{run}: its run was made again while this evaluation scored it" in _error(capsys)
    assert not (tmp_path / "ev" / "metrics.json").exists()
    monkeypatch.setattr(viker.eval.run, "evaluate", scored)
    assert main([*evaluate, str(tmp_path / "ev")]) == 0  # scored again, it is the run there now
    assert json.loads((tmp_path / "ev" / "config.json").read_text())["model_run"]["unlearn"]["train"]["seed"] == 1
