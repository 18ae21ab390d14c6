"""The command line documents itself: every option says what it is for, and what it defaults to."""

import argparse

import pytest

from viker.cli import parser


def _commands(ap: argparse.ArgumentParser, path=("viker",)):
    """(name, parser) of every command that takes options, subcommands included."""
    subs = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), ap
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _commands(child, (*path, name))


COMMANDS = dict(_commands(parser()))


def test_every_command_is_reachable():
    assert set(COMMANDS) == {"viker data synth", "viker finetune", "viker unlearn", "viker eval", "viker judge",
                             "viker keytokens", "viker report", "viker demo"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default(command):
    ap = COMMANDS[command]
    assert ap.description and ap.description[0].isupper(), f"{command}: no description for its --help"
    text = ap.format_help()
    for action in ap._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        option = max(action.option_strings, key=len)
        assert action.help, f"{command} {option}: no help"
        if action.default is not None and action.default is not False and not isinstance(action, argparse._HelpAction):
            # in --help as a user reads it: the value itself, by the formatter or in the help's own words
            shown = " ".join(text.split())
            said = (f"(default: {action.default})", f"default {action.default}", f"default: {action.default}")
            assert any(s in shown for s in said) or "auto:" in action.help, f"{command} {option}: default not shown"
    assert text.startswith("usage: " + command)


def test_method_options_state_the_defaults_the_methods_have():
    """The method options default to None (a method's own default applies): their help states those defaults by
    hand, so each is read back and compared with the method's."""
    import re

    from viker.methods import get_method

    helps = {max(a.option_strings, key=len): a.help for a in COMMANDS["viker unlearn"]._actions if a.option_strings}

    def stated(option):
        return re.search(r"\(default ([^;)]+)", helps[option]).group(1)

    viker = get_method("viker")()
    for option, field in (("--lam", "lam"), ("--k", "k"), ("--refs", "refs"), ("--regularizer", "regularizer"),
                          ("--ablation", "ablation")):
        assert stated(option) == format(getattr(viker, field), "g" if field == "lam" else ""), option
    assert float(stated("--beta")) == get_method("npo")().beta == get_method("idkpo")().beta
    assert float(stated("--retain-weight")) == get_method("graddiff")().retain_weight == \
        get_method("klmin")().retain_weight == get_method("idkpo")().retain_weight
    for method, weight in re.findall(r"; (CAGUL|NPO) ([\d.]+)", helps["--retain-weight"]):
        assert get_method(method.lower())().retain_weight == float(weight), method


def test_a_zero_default_is_shown():
    assert "(default: 0)" in COMMANDS["viker demo"].format_help()


def test_an_option_whose_help_explains_auto_says_auto_is_its_default():
    for command, option in (("viker unlearn", "--save"), ("viker unlearn", "--train-on"),
                            ("viker finetune", "--tuning"), ("viker finetune", "--train-on")):
        text = " ".join(COMMANDS[command].format_help().split(f"  {option} ")[1].split("\n  --")[0].split())
        assert "(auto: " in text or "; auto: " in text, (command, option)
        assert text.endswith("(default: auto)"), (command, option, text)


@pytest.mark.parametrize("command, tiny, real, names", [
    ("viker finetune", "TINY_TRAIN", "REAL_TRAIN", ("--model tiny", "a model folder")),  # a saved tiny one too
    ("viker unlearn", "TINY_UNLEARN", "REAL_UNLEARN", ("a tiny model", "a checkpoint")),
])
def test_training_options_show_the_preset_a_run_takes_when_they_are_unset(command, tiny, real, names):
    import viker.presets

    tiny, real = getattr(viker.presets, tiny), getattr(viker.presets, real)
    actions = {a.dest: a for a in COMMANDS[command]._actions}
    for name in ("epochs", "lr", "batch_size", "grad_accum", "seed"):
        a, b = getattr(tiny, name), getattr(real, name)
        shown = f"(default: {a})" if a == b else f"(default: {a:g} for {names[0]}, {b:g} for {names[1]})"
        assert actions[name].help.endswith(shown), (command, name, actions[name].help)


def test_every_module_imports_without_running_anything(capsys):
    """Importing viker.__main__ ran the command line and exited: a walk over the package (pydoc, autodoc) stopped
    there. `python -m viker` still runs it."""
    import importlib
    import pkgutil
    import subprocess
    import sys

    import viker

    for module in pkgutil.walk_packages(viker.__path__, "viker."):
        importlib.import_module(module.name)
    assert capsys.readouterr() == ("", "")
    shown = subprocess.run([sys.executable, "-m", "viker", "--version"], capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.strip().endswith(viker.__version__)


def test_version_is_the_installed_package_version(capsys):
    """`viker --version` says which release a bug report is about: the one pip installed, not a second copy."""
    from importlib.metadata import version

    from viker.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"viker {version('viker')}"


def test_finetune_seed_seeds_the_tiny_models_initialisation_as_its_help_says(monkeypatch, tmp_path):
    """A study over --seed must vary the tiny model's initial weights, not only the data order."""
    import viker.finetune
    from viker.cli import main

    seen = []

    def run_finetune(cfg, **kwargs):
        seen.append(cfg)
        return {}

    monkeypatch.setattr(viker.finetune, "run_finetune", run_finetune)
    assert "initialisation" in {a.dest: a for a in COMMANDS["viker finetune"]._actions}["seed"].help
    main(["finetune", "--model", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--seed", "7"])
    assert seen[0].train.seed == 7 and seen[0].tiny.seed == 7


def test_the_loss_an_unlearning_run_ends_on_says_over_which_steps_it_is_a_mean(tiny_dir, bench_dir, tmp_path, capsys):
    """A logged loss is the mean over the steps since the row before it, not the last step's loss: the line a run
    ends with says which steps."""
    import json

    from viker.cli import main

    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--method", "ga", "--max-steps",
                 "3", "--out", str(tmp_path / "run")]) == 0
    (row,) = json.loads((tmp_path / "run" / "history.json").read_text())
    assert f"(loss {row['loss']:.4f} (the mean over steps 1–3); every logged step in history.json)" in \
        capsys.readouterr().out
    from viker.train import last_logged_loss

    assert last_logged_loss([{"step": 5, "loss": 0.3}, {"step": 6, "loss": 0.192}]) == "loss 0.1920 (step 6's)"


def test_the_lora_a_command_line_run_takes_unset_is_the_python_apis():
    """A run from the command line and one from Python, neither giving --lora-*, train the same adapters (the
    command's help shows those defaults)."""
    from viker.cli import _lora
    from viker.finetune import FinetuneConfig
    from viker.unlearn import UnlearnConfig

    for argv, api in ((["finetune", "--data", "d", "--out", "o"], FinetuneConfig().lora),
                      (["unlearn", "--model", "m", "--data", "d", "--out", "o"], UnlearnConfig().lora)):
        args = parser().parse_args(argv)
        assert _lora(args, None, merge=api.merge) == api, argv[0]
        helps = {max(a.option_strings, key=len): a.help for a in COMMANDS[f"viker {argv[0]}"]._actions}
        assert helps["--lora-alpha"].endswith(f"(default: {api.alpha})"), argv[0]
        assert helps["--lora-r"].endswith(f"(default: {api.r})") and \
            helps["--lora-dropout"].endswith(f"(default: {api.dropout:g})")


@pytest.mark.parametrize("command", [["eval", "--model", "m", "--data", "d", "--out", "o"],
                                     ["keytokens", "--model", "m", "--data", "d", "--out", "o.html"],
                                     ["data", "synth", "--out", "o"], ["report", "r", "--out", "o"]])
def test_a_command_that_runs_in_one_process_is_refused_under_a_launcher(command, tmp_path, capsys, monkeypatch):
    """Under torchrun every process ran the whole evaluation, wrote the same files at once and called a paid LLM
    judge once a process: only finetune and unlearn split their work across processes."""
    from viker.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    assert f"error: viker {command[0]} runs in one process: under a launcher of 2 processes each would do all of " \
        "it and write the same files; run it without the launcher" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing made
    monkeypatch.setenv("WORLD_SIZE", "")  # set blank: no launcher, and no traceback
    main(command)
    assert "runs in one process" not in capsys.readouterr().err
