"""The evaluator: batched generation equals one-at-a-time, option-likelihood choice, metrics.json keys."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import replace
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from pytest import approx

import viker.eval.evaluate
import viker.eval.generate
import viker.eval.run
from viker.cli import main
from viker.data.examples import generation_examples
from viker.data.loader import load_profiles
from viker.data.schema import Example, MCQuestion
from viker.errors import VikerError
from viker.eval.evaluate import EvalConfig, answer_logprobs, evaluate, mc_by_likelihood, option_frame
from viker.eval.generate import generate
from viker.eval.metrics import coherence_mean
from viker.model import LoraSettings, apply_lora, load_model
from viker.prompts import generation_prompt

PAPER_KEYS = {"forget_acc", "test_acc", "retain_acc", "real_acc", "forget_rougeL", "test_rougeL", "retain_rougeL",
              "retain_bleu", "real_rougeL", "real_bleu", "forget_cloze", "coherence"}


def test_batched_generation_gives_the_same_answers_as_one_at_a_time(tiny, bench_dir, caplog):
    from transformers.utils import logging as hf_logging

    model, processor = tiny
    hf_logging.enable_propagation()  # transformers' warnings reach the test's log
    caplog.set_level(logging.WARNING)
    torch.manual_seed(0)
    with torch.no_grad():  # sharpen the random model so its greedy answers are not all the same token
        model.lm_head.weight.mul_(30)
    try:
        examples = generation_examples(load_profiles(bench_dir, "forget_15"))[:10]
        batched = generate(model, processor, examples, batch_size=8, max_new_tokens=12, progress=False)
        single = [generate(model, processor, [ex], batch_size=1, max_new_tokens=12, progress=False)[0]
                  for ex in examples]
    finally:
        hf_logging.disable_propagation()
        with torch.no_grad():
            model.lm_head.weight.div_(30)
    assert batched == single
    assert len(set(batched)) > 1  # a real comparison, not ten empty strings
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("transformers")]  # nor a word on it


def test_an_answer_is_its_words_without_the_end_and_padding_tokens_or_the_space_before_it(tiny, bench_dir,
                                                                                         monkeypatch):
    """What generation returns is what the metrics read: special tokens would put '</s>' into BLEU and
    ROUGE, and a leading space into every option frame."""
    model, processor = tiny
    tokenizer = processor.tokenizer
    words = tokenizer(" born in Lima", add_special_tokens=False)["input_ids"]
    ends = [[tokenizer.eos_token_id, tokenizer.pad_token_id], [tokenizer.pad_token_id, tokenizer.pad_token_id]]

    def answers_then_stops(input_ids, **kw):  # each prompt's answer: the words, then its end and padding
        tails = [words + ends[i % 2] for i in range(input_ids.shape[0])]
        return torch.cat([input_ids, torch.tensor(tails)], dim=1)

    monkeypatch.setattr(model, "generate", answers_then_stops)
    assert tokenizer.eos_token_id != tokenizer.pad_token_id and tokenizer.decode(words).startswith(" ")
    examples = generation_examples(load_profiles(bench_dir, "forget_10"))[:4]
    assert generate(model, processor, examples, batch_size=4, progress=False) == ["born in Lima"] * 4


def test_answers_are_greedy_whatever_the_checkpoint_generation_config_says(tiny, bench_dir, monkeypatch):
    model, processor = tiny
    shipped = model.generation_config
    steering = copy.deepcopy(shipped)  # as a checkpoint's generation_config.json can say
    steering.repetition_penalty, steering.no_repeat_ngram_size = 1.3, 2
    examples = generation_examples(load_profiles(bench_dir, "forget_15"))[:6]
    answer = partial(generate, model, processor, examples, batch_size=6, max_new_tokens=12, progress=False)
    torch.manual_seed(0)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    try:
        plain = answer()
        # ... and what can keep tokens out of an answer, or an answer from ending
        steering.suppress_tokens = sorted({t for a in plain for t in processor.tokenizer(a, add_special_tokens=False)
                                           .input_ids})
        steering.min_new_tokens = steering.min_length = 12
        model.generation_config = steering
        steered = answer()
        monkeypatch.setattr(viker.eval.generate, "GREEDY", {"do_sample": False})
        followed = answer()  # the shipped settings obeyed
    finally:
        model.generation_config = shipped
        with torch.no_grad():
            model.lm_head.weight.div_(30)
    assert steered == plain
    assert followed != plain  # the settings do change answers, so the check above is a real one
    assert len(set(plain)) > 1


def test_scoring_and_answering_a_training_model_take_no_dropout_and_leave_each_module_as_it_was(tiny_dir, bench_dir):
    model, processor = load_model(tiny_dir, device="cpu")
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    lora = apply_lora(model, LoraSettings(r=2, alpha=4, dropout=0.5)).train()
    lora.get_base_model().model.vision_tower.eval()  # a frozen part, kept in eval mode while the rest trains
    modes = [m.training for m in lora.modules()]
    examples = generation_examples(load_profiles(bench_dir, "forget_10"))[:3]
    assert answer_logprobs(lora, processor, examples, 3) == answer_logprobs(lora, processor, examples, 3)
    answer = partial(generate, lora, processor, examples, batch_size=3, max_new_tokens=6, progress=False)
    assert answer() == answer()
    assert [m.training for m in lora.modules()] == modes and False in modes and True in modes


def test_option_frame_cuts_the_named_option_out_of_the_answer():
    assert option_frame("Kofix Bin was born in Da Nang.", ["Oslo", "Da Nang", "Lima", "Riga"]) == \
        "Kofix Bin was born in {}."
    jobs = ["pilot", "chef", "nurse", "baker"]
    assert option_frame("Kofix Bin works as a pilot.", jobs) == "Kofix Bin works as a {}."
    assert option_frame("no idea", ["pilot", "chef", "nurse", "baker"]) is None
    assert option_frame("likes {braces} and chess", ["chess", "go", "tennis", "golf"]).format("go") == \
        "likes {braces} and go"
    assert option_frame("a piloting job", ["pilot", "chef", "nurse", "baker"]) is None  # whole words only
    cities = ["Oslo", "Lima", "Riga", "Rome"]  # two options named: which one answers is not ours to guess
    assert option_frame("She was born in Lima and lives in Oslo.", cities) is None
    assert option_frame("Born in York, not New York.", ["New York", "York", "Lima", "Oslo"]) is None
    # an option inside another is not named on its own
    assert option_frame("Born in New York.", ["York", "New York", "Lima", "Oslo"]) == "Born in {}."
    assert option_frame("born in lima.", ["Oslo", "Lima", "Riga", "Rome"]) == "born in {}."  # whatever the case



def test_likelihood_choice_picks_the_most_likely_option(monkeypatch, tiny):
    model, processor = tiny
    q = MCQuestion("Where was Kofix Bin born?", {"A": "Oslo", "B": "Lima", "C": "Riga", "D": "Porto"}, "C", False)
    seen = []

    ends = []

    def fake_logprobs(model, processor, examples, batch_size, end_of_turn=True):
        seen.extend(e.answer for e in examples)
        ends.extend(end_of_turn for _ in examples)
        return [(-1.0 if "Riga" in e.answer else -5.0, 4) for e in examples]

    monkeypatch.setattr("viker.eval.evaluate.answer_logprobs", fake_logprobs)
    assert mc_by_likelihood(model, processor, [(q, None)], ["Kofix Bin was born in Oslo."], 8) == ["C"]
    assert seen == ["Kofix Bin was born in Oslo.", "Kofix Bin was born in Lima.", "Kofix Bin was born in Riga.",
                    "Kofix Bin was born in Porto."]
    seen.clear()
    assert mc_by_likelihood(model, processor, [(q, None)], ["???"], 8) == ["C"]
    assert seen == ["Oslo", "Lima", "Riga", "Porto"]  # no frame: bare options, length-normalised
    # a framed answer is a whole answer, its end included; a bare option is scored on its own tokens alone
    assert ends == [True] * 4 + [False] * 4
    # a blank option is not named by every answer, has nothing to score, and is never chosen
    blank = replace(q, options={**q.options, "B": " ", "C": "Paris"})
    seen.clear()
    monkeypatch.setattr("viker.eval.evaluate.answer_logprobs", lambda model, processor, examples, batch_size, **_: [
        (-1.0 if "Porto" in e.answer else -0.5 if "  " in e.answer or not e.answer.strip() else -5.0, 4)
        for e in examples if not seen.append(e.answer)])
    for reply in ("Kofix Bin was born in Oslo.", "???"):
        assert mc_by_likelihood(model, processor, [(blank, None)], [reply], 8) == ["D"]
    assert seen == ["Kofix Bin was born in Oslo.", "Kofix Bin was born in Paris.", "Kofix Bin was born in Porto.",
                    "Oslo", "Paris", "Porto"]
    # bare options are compared per token: Lima's 6 tokens at −1 each beat Oslo's one at −2
    monkeypatch.setattr("viker.eval.evaluate.answer_logprobs", lambda model, processor, examples, batch_size, **_: [
        {"Oslo": (-2.0, 1), "Lima": (-6.0, 6), "Riga": (-3.0, 1), "Porto": (-5.0, 2)}[e.answer] for e in examples])
    assert mc_by_likelihood(model, processor, [(q, None)], ["???"], 8) == ["B"]


def test_a_bare_option_is_scored_on_its_own_tokens_without_the_end_of_turn(tiny):
    """A model that answers in sentences finds any answer ending after one word unlikely, by an amount that
    varies from option to option: that is not what it knows, so a bare option's score leaves the end out."""
    from viker.collate import Collator
    from viker.methods.losses import token_logprobs

    model, processor = tiny
    examples = [Example(generation_prompt("Where was Kofix Bin born?"), option, None)
                for option in ("Oslo", "New York City", "Riga")]
    whole = answer_logprobs(model, processor, examples, batch_size=2)
    own = answer_logprobs(model, processor, examples, batch_size=2, end_of_turn=False)
    collate = Collator(processor)
    for ex, (lp, n), (lp_own, n_own) in zip(examples, whole, own):
        batch = collate([ex])
        with torch.no_grad():
            per_token, mask = token_logprobs(model(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                                             batch["labels"])
        labelled = per_token[mask.bool()]
        assert batch["labels"][0, -1] == collate.end_of_turn_id()  # the answer's labels end with the end of turn
        assert n == len(labelled) and n_own == n - 1
        assert lp == approx(labelled.sum().item(), abs=1e-4) and lp_own == approx(labelled[:-1].sum().item(), abs=1e-4)


def test_a_figure_is_the_mean_of_its_answers_scores_unrounded(tiny, bench_dir, monkeypatch):
    """metrics.json keeps each figure as computed, so that a table rounding it to print it rounds it once (a
    figure stored as 33.35 for 33.3496 would print 33.4)."""
    def two_words(model, processor, examples, **kw):
        return [" ".join(ex.answer.split()[:2]) for ex in examples]

    monkeypatch.setattr(viker.eval.evaluate, "generate", two_words)
    metrics, records = evaluate(*tiny, bench_dir, EvalConfig(forget="forget_10", scope={"forget": ("generation",)}),
                                progress=False)
    scores = [r["rougeL"] for r in records if r["task"] == "generation"]
    assert 0 < metrics["forget_rougeL"] < 100
    assert metrics["forget_rougeL"] == pytest.approx(100 * sum(scores) / len(scores), rel=1e-12)


def test_evaluate_reports_the_paper_columns_and_a_record_of_every_question(tiny, bench_dir):
    model, processor = tiny
    metrics, records = evaluate(model, processor, bench_dir, EvalConfig(forget="forget_10", max_new_tokens=6),
                                progress=False)
    assert PAPER_KEYS <= set(metrics)
    assert all(0.0 <= metrics[k] <= 100.0 for k in PAPER_KEYS)
    sets = {r["set"] for r in records}
    assert sets == {"forget", "test", "retain", "real"}
    forget_ids = {p.id for p in load_profiles(bench_dir, "forget_10")}
    for task in ("generation", "multiple_choice", "cloze"):  # every record says whom it asks about
        assert {r["profile"] for r in records if r["set"] == "test" and r["task"] == task} == forget_ids
    n_mc = sum(len(p.mc) for p in load_profiles(bench_dir, "forget_10"))
    assert sum(r["task"] == "multiple_choice" and r["set"] == "forget" for r in records) == n_mc
    # a multiple-choice record shows the prompt its reply answers, as the others do, and the options
    asked = [r for r in records if r["task"] == "multiple_choice"]
    assert all(r["question"] == generation_prompt(r["question"].split("\n")[0]) for r in asked)
    assert all(r["reference"] == r["options"][r["correct"]] and len(r["options"]) == 4 for r in asked)


def test_a_model_that_knows_every_answer_scores_100_on_every_paper_column(tiny, bench_dir, monkeypatch):
    """Percentages, not fractions: every answer right is 100 in every column of the paper's table."""
    from viker.prompts import mc_prompt

    letters = {mc_prompt(q.question, q.options): q.answer for config in ("Full_Set", "Test_Set", "Retain_Set")
               for p in load_profiles(bench_dir, config) for q in p.mc}

    def knows_everything(model, processor, examples, **kw):  # a multiple-choice prompt has no answer: its letter
        return [ex.answer or letters[ex.question] for ex in examples]

    monkeypatch.setattr(viker.eval.evaluate, "generate", knows_everything)
    metrics, records = evaluate(*tiny, bench_dir, EvalConfig(forget="forget_10", mc_mode="letter", retain_limit=3),
                                progress=False)
    assert {k: metrics[k] for k in PAPER_KEYS - {"coherence"}} == pytest.approx(
        dict.fromkeys(PAPER_KEYS - {"coherence"}, 100.0))
    assert metrics["coherence"] > 90.0
    assert metrics["forget_unparsed"] == metrics["real_unparsed"] == 0.0  # every reply gave its letter
    # each record shows the prompt with its options that its letter answers
    assert all(r["answer"] == letters[r["question"]] for r in records if r["task"] == "multiple_choice")


def _true_options(bench_dir) -> dict:
    """(the question as a generation prompt, its image or None) -> the true option, for every multiple-choice
    question of forget_10."""
    return {(generation_prompt(q.question), p.images[0] if q.with_image else None): q.options[q.answer]
            for p in load_profiles(bench_dir, "forget_10") for q in p.mc}


def test_option_likelihood_frames_do_not_depend_on_the_reply_length_asked_for(tiny, bench_dir, monkeypatch):
    """A short --max-new-tokens would stop the greedy answer before the option it names ('... born in') and
    leave the options to be scored bare: the frames are read in their own 50 new tokens."""

    correct = _true_options(bench_dir)
    asked = []

    def names_the_answer(model, processor, examples, max_new_tokens, **kw):  # one word per new token
        asked.extend(max_new_tokens for ex in examples if (ex.question, ex.image) in correct)
        return [" ".join(f"It is {correct.get((ex.question, ex.image), 'x')} indeed.".split()[:max_new_tokens])
                for ex in examples]

    monkeypatch.setattr(viker.eval.evaluate, "generate", names_the_answer)
    monkeypatch.setattr(viker.eval.evaluate, "answer_logprobs", lambda model, processor, examples, batch_size, **_: [
        (-1.0 if e.answer == f"It is {correct[e.question, e.image]} indeed." else -9.0, 4) for e in examples])
    scope = {"forget": ("multiple_choice",)}
    short, full = (evaluate(*tiny, bench_dir, EvalConfig(forget="forget_10", max_new_tokens=n, scope=scope),
                            progress=False)[0] for n in (2, 50))
    assert set(asked) == {50} and short["forget_acc_all"] == full["forget_acc_all"] == 100.0


def test_each_task_reads_its_replies_in_a_length_of_its_own(tiny, bench_dir, monkeypatch):
    """Generation replies are read in --max-new-tokens (2 here); option frames and cloze replies in 50 new
    tokens and letters in 8, whatever --max-new-tokens is, and a 2-token reply is never reused as the frame
    of the same question. Also: a cloze reply that gives its answer inside a sentence is right, and each generation
    record holds the ROUGE-L that metrics.json averages (not ROUGE-1, which word order does not change)."""
    from viker.prompts import mc_prompt

    correct = _true_options(bench_dir)
    letters = {mc_prompt(q.question, q.options): q.answer for p in load_profiles(bench_dir, "forget_10") for q in p.mc}
    asked = {}

    def replies(model, processor, examples, max_new_tokens, desc, **kw):  # one word per new token
        task = desc.split(": ")[1]
        asked.setdefault(task, set()).add(max_new_tokens)
        if task == "cloze":
            return [f"I think it is {ex.answer} indeed" for ex in examples]
        if examples[0].question in letters:  # letter mode
            return [letters[ex.question] for ex in examples]
        return [" ".join((" ".join(reversed(ex.answer.split())) if ex.answer else  # generation: words reversed
                          f"It is {correct[ex.question, ex.image]} indeed.").split()[:max_new_tokens])
                for ex in examples]

    monkeypatch.setattr(viker.eval.evaluate, "generate", replies)
    monkeypatch.setattr(viker.eval.evaluate, "answer_logprobs", lambda model, processor, examples, batch_size, **_: [
        (-1.0 if e.answer == f"It is {correct[e.question, e.image]} indeed." else -9.0, 4) for e in examples])
    metrics, records = evaluate(*tiny, bench_dir, EvalConfig(forget="forget_10", max_new_tokens=2, scope={
        "forget": ("generation", "multiple_choice", "cloze")}), progress=False)
    assert asked == {"generation": {2}, "multiple choice": {50}, "cloze": {50}}
    assert metrics["forget_acc_all"] == 100.0 and metrics["forget_cloze"] == 100.0
    scores = [r["rougeL"] for r in records if r["task"] == "generation"]
    assert metrics["forget_rougeL"] == pytest.approx(100 * sum(scores) / len(scores), abs=0.01)  # a record's in [0, 1]
    assert 0.0 < metrics["forget_rougeL"] < metrics["forget_rouge1"]
    asked.clear()
    letter, _ = evaluate(*tiny, bench_dir, EvalConfig(forget="forget_10", mc_mode="letter", scope={
        "forget": ("multiple_choice",)}), progress=False)
    assert asked == {"multiple choice": {8}} and letter["forget_acc_all"] == 100.0


def test_generation_and_cloze_are_reported_by_question_type_and_together(tiny, bench_dir, monkeypatch):
    """A model that answers every question asked with the image word for word, and none asked by name."""
    def answer_with_images_only(model, processor, examples, **kw):
        return [ex.answer if ex.image is not None else "no idea" for ex in examples]

    monkeypatch.setattr(viker.eval.evaluate, "generate", answer_with_images_only)
    metrics, records = evaluate(*tiny, bench_dir, EvalConfig(forget="forget_10", scope={
        "forget": ("generation", "cloze")}), progress=False)
    for task, key in (("generation", "forget_rougeL"), ("generation", "forget_rouge1"), ("generation", "forget_rouge2"),
                      ("generation", "forget_bleu"), ("cloze", "forget_cloze")):
        asked = [r["image"] for r in records if r["task"] == task]
        assert True in asked and False in asked
        assert metrics[f"{key}_image"] == 100.0 and metrics[f"{key}_text"] == 0.0
        assert metrics[key] == pytest.approx(100 * sum(asked) / len(asked), abs=0.01)


def test_eval_command_writes_metrics_and_generations(tiny_dir, bench_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out),
                 "--max-new-tokens", "4", "--retain-limit", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert PAPER_KEYS <= set(metrics)
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert all({"question", "reference", "answer", "set", "task"} <= set(r) for r in records)
    assert json.loads((out / "config.json").read_text())["command"] == "eval"

    # every figure is what the recorded answers score: a reader can check metrics.json against them
    def of(set_, task, image=None):
        return [r for r in records if r["set"] == set_ and r["task"] == task and image in (None, r["image"])]

    percent = lambda values: approx(100 * sum(values) / len(values), abs=0.005)  # noqa: E731 (printed to 0.01)
    for set_ in ("forget", "test", "retain", "real"):
        assert metrics[f"{set_}_acc"] == percent([r["hit"] for r in of(set_, "multiple_choice", True)])
        assert metrics[f"{set_}_rougeL"] == percent([r["rougeL"] for r in of(set_, "generation")])
    assert metrics["forget_acc_text"] == percent([r["hit"] for r in of("forget", "multiple_choice", False)])
    assert metrics["forget_cloze"] == percent([r["hit"] for r in of("forget", "cloze")])
    assert metrics["coherence"] == approx(coherence_mean(r["answer"] for r in of("forget", "generation")), abs=0.005)
    assert len({r["profile"] for r in of("retain", "generation")}) == 3  # --retain-limit 3


def test_an_evaluation_that_fails_to_write_leaves_the_earlier_one_whole(tiny_dir, bench_dir, tmp_path, capsys,
                                                                           monkeypatch):
    """Settings, figures and answers were written one after the other: a disk that filled between them left a
    letter-mode config and metrics.json over the earlier evaluation's likelihood answers, which the report read
    as one evaluation."""
    import viker.eval.run

    out = tmp_path / "ev"
    scoped = ["--only", "forget:multiple_choice"]
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out), *scoped]) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def full(path, records):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(viker.eval.run, "write_generations", full)
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out), *scoped,
                 "--mc-mode", "letter"]) == 2
    assert capsys.readouterr().err.endswith("error: No space left on device\n")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # nothing of the failed one, nothing left over
    monkeypatch.undo()
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out), *scoped,
                 "--mc-mode", "letter"]) == 0
    assert json.loads((out / "config.json").read_text())["eval"]["mc_mode"] == "letter"
    assert all("choice" in json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines())


def test_progress_false_silences_the_libraries_bars_too(tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    """From Python, progress=False hid viker's bars while transformers' "Loading weights" still drew its own; in a
    log, its bars of a second each made a quarter of the demo's lines."""
    from transformers.utils import logging as hf_logging

    import viker.progress
    from viker.eval.run import run_eval

    cfg = EvalConfig(forget="forget_10", scope={"forget": ("multiple_choice",)})
    run_eval(str(tiny_dir), str(bench_dir), str(tmp_path / "quiet"), cfg, progress=False)
    assert capsys.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled()  # as it was, for what runs next
    from viker.keytokens import run_keytokens  # and so does every other command's function

    run_keytokens(str(tiny_dir), str(bench_dir), "forget_10", str(tmp_path / "page.html"), k=2,
                  cache_dir=tmp_path / "cache", progress=False)
    assert capsys.readouterr().err == "" and hf_logging.is_progress_bar_enabled()
    run_eval(str(tiny_dir), str(bench_dir), str(tmp_path / "logged"), cfg, progress=True)  # captured: a log
    logged = capsys.readouterr().err
    assert "Loading weights" not in logged and "evaluating (logged)" in logged  # viker's own bars are still there,
    # naming the folder each evaluation writes (the demo's are many, one after each run)
    assert hf_logging.is_progress_bar_enabled()
    monkeypatch.setattr(viker.progress, "live", lambda stream=None: True)  # a terminal shows every bar
    run_eval(str(tiny_dir), str(bench_dir), str(tmp_path / "shown"), cfg, progress=True)
    assert "Loading weights" in capsys.readouterr().err


def test_a_scoped_evaluation_gives_the_full_evaluations_figures_for_what_it_computes(tiny, bench_dir):
    """A study that reads a few columns evaluates only those; each is the figure the full run reports."""
    model, processor = tiny
    cfg = EvalConfig(forget="forget_10", max_new_tokens=6, retain_limit=3)
    full, full_records = evaluate(model, processor, bench_dir, cfg, progress=False)
    scope = {"forget": ("generation", "multiple_choice"), "retain": ("generation",)}
    part, records = evaluate(model, processor, bench_dir, replace(cfg, scope=scope), progress=False)
    assert {"forget_acc", "forget_rougeL", "retain_rougeL", "coherence"} <= set(part)
    assert not any(k.startswith(("test_", "real_", "retain_acc")) or k.endswith("_cloze") for k in part)
    assert part == {k: full[k] for k in part}
    kept = {("forget", "generation"), ("forget", "multiple_choice"), ("retain", "generation")}
    assert {(r["set"], r["task"]) for r in records} == kept
    assert records == [r for r in full_records if (r["set"], r["task"]) in kept]


def test_letter_mode_says_when_replies_name_no_letter(tiny_dir, bench_dir, tmp_path, capsys):
    """An untrained model never answers with a letter: its accuracy of 0 is no forgetting, and eval says so."""
    out = tmp_path / "letters"
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out), "--mc-mode", "letter",
                 "--only", "forget:multiple_choice"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert metrics["forget_unparsed"] == pytest.approx(100 * sum(r["choice"] is None for r in records) / len(records))
    assert metrics["forget_unparsed"] > 50 and "warning: most letter-mode replies named no option" in \
        capsys.readouterr().err


def test_first_char_mode_scores_letters_as_mllmu_bench_does(tiny, bench_dir, monkeypatch, tmp_path):
    """--mc-mode first_char asks as letter mode does and reads the reply's first character: "Answer: B" is the
    A of "Answer" there (right only where A is the answer), and B in letter mode."""
    from viker.prompts import mc_prompt

    truth = {mc_prompt(q.question, q.options): q.answer for p in load_profiles(bench_dir, "forget_10") for q in p.mc}

    def answers_in_words(model, processor, examples, **kw):
        return [ex.answer or f"Answer: {truth[ex.question]}" for ex in examples]

    monkeypatch.setattr(viker.eval.evaluate, "generate", answers_in_words)
    only = {"forget": ("multiple_choice",)}
    cfg = EvalConfig(forget="forget_10", scope=only)
    letter, _ = evaluate(*tiny, bench_dir, replace(cfg, mc_mode="letter"), progress=False)
    first, records = evaluate(*tiny, bench_dir, replace(cfg, mc_mode="first_char"), progress=False)
    assert letter["forget_acc_all"] == 100.0 and letter["forget_unparsed"] == 0.0
    assert {r["choice"] for r in records} == {"A"} and first["forget_unparsed"] == 0.0
    assert first["forget_acc_all"] == pytest.approx(100 * sum(a == "A" for a in truth.values()) / len(truth))
    with pytest.raises(VikerError, match="--mc-mode.*likelihood, letter, first_char"):
        EvalConfig(mc_mode="first")


def test_eval_command_evaluates_only_what_it_is_asked(tiny_dir, bench_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out),
                 "--max-new-tokens", "4", "--only", "forget:multiple_choice", "--only", "real",
                 "--only", "forget:cloze"]) == 0  # a set named twice: the tasks of both
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"forget_acc", "forget_cloze", "real_acc", "real_rougeL", "real_cloze"} <= set(metrics)
    assert not any(k.startswith(("test_", "retain_")) or k in ("forget_rougeL", "coherence") for k in metrics)
    # it prints the table's columns it measured, as the report names them, and where everything went
    printed = capsys.readouterr().out
    # each with how many questions it is over: ACC the image questions, R-L both kinds
    people = {name: load_profiles(bench_dir, name) for name in ("forget_10", "Retain_Set")}
    image_mc = sum(q.with_image for p in people["forget_10"] for q in p.mc)
    real_gen = sum(len(p.generation) for p in people["Retain_Set"])
    assert real_gen > len(people["Retain_Set"])  # questions asked with the image and by name, not one a person
    assert re.search(rf"^  Forget ACC ↓ +{metrics['forget_acc']:.1f}  over {image_mc} questions$", printed, re.M)
    assert re.search(rf"^  Real R-L ↑ +{metrics['real_rougeL']:.1f}  over {real_gen} questions$", printed, re.M)
    assert "Retain R-L" not in printed and "Coherence" not in printed  # not asked, so not shown
    records = (out / "generations.jsonl").read_text().count("\n")
    assert f"wrote {out / 'metrics.json'} ({len(metrics)} figures) and generations.jsonl ({records} answers)" in printed
    # evaluated again into that folder with less, it would replace those figures with fewer: refused
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(out),
                 "--max-new-tokens", "4", "--only", "forget:multiple_choice"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: holds an evaluation with figures this one would not write (forget:cloze, real:cloze, " \
        "real:generation, real:multiple_choice) and would replace" in err
    assert json.loads((out / "metrics.json").read_text()) == metrics  # nothing written
    # a set and task with no column of the table: its own figures are printed instead
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(tmp_path / "cloze"),
                 "--max-new-tokens", "4", "--only", "retain:cloze"]) == 0
    cloze = json.loads((tmp_path / "cloze" / "metrics.json").read_text())["retain_cloze"]
    assert re.search(rf"^  retain_cloze +{cloze:.1f}$", capsys.readouterr().out, re.M)
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(tmp_path / "bad"),
                 "--only", "forget:summaries"]) == 2
    err = capsys.readouterr().err
    assert "error: --only forget:summaries: unknown task 'summaries' (tasks: generation, multiple_choice, cloze)" \
        in err and "Traceback" not in err
    from viker.cli import _scope

    assert _scope(["real:generation, cloze", " forget : cloze"]) == {"real": ("generation", "cloze"),
                                                                     "forget": ("cloze",)}  # spaces as typed
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(tmp_path / "bad"),
                 "--only", "forgt"]) == 2
    assert "error: --only forgt: unknown set (sets: forget, test, retain, real)" in capsys.readouterr().err
    for blank in ("forget:", "forget: , "):  # tasks left out after the colon are no "every task"
        assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--out", str(tmp_path / "bad"),
                     "--only", blank]) == 2
        assert f"error: --only {blank}: name the tasks after ':'" in capsys.readouterr().err
    with pytest.raises(VikerError, match=r"^--only :generation: name a set before ':' \(forget, test, retain, "
                                         r"real\)$"):  # not "--only : unknown set"
        _scope([":generation"])


def test_a_test_set_without_some_forget_people_is_named_not_scored_in_part(tiny_dir, bench_dir, tmp_path, capsys):
    data = tmp_path / "bench"
    shutil.copytree(bench_dir, data)
    forget = load_profiles(bench_dir, "forget_10")
    for path in (data / "Test_Set").glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.filter(pc.invert(pc.is_in(table["ID"], pa.array([forget[1].id])))), path)
    common = ["eval", "--model", str(tiny_dir), "--data", str(data), "--max-new-tokens", "4"]
    assert main([*common, "--out", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err
    assert f"Test_Set has no row for 1 of the {len(forget)} forget people (ID {forget[1].id})" in err
    assert main([*common, "--out", str(tmp_path / "without"), "--only", "forget:multiple_choice"]) == 0


@pytest.mark.parametrize("config, columns", [("Test_Set", "test"), ("retain_90", "retain"), ("Retain_Set", "real")])
def test_a_config_the_folder_lacks_says_how_to_evaluate_without_it(tiny_dir, bench_dir, tmp_path, capsys,
                                                                   config, columns):
    """A copy without one of the configs an evaluation reads: the error says which columns read it, and the --only
    that evaluates the rest, which works."""
    data = tmp_path / "bench"
    shutil.copytree(bench_dir, data)
    shutil.rmtree(data / config)
    common = ["eval", "--model", str(tiny_dir), "--data", str(data), "--max-new-tokens", "2"]
    assert main([*common, "--out", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err
    others = [s for s in ("forget", "test", "retain", "real") if s != columns]
    said = " ".join(f"--only {s}" for s in others)
    assert f"config '{config}' not found" in err and f"; evaluate without the {columns} columns with {said}" in err
    assert main([*common, "--out", str(tmp_path / "rest"), "--retain-limit", "1",
                 *said.replace("--only forget", "--only forget:cloze").split()]) == 0
    if columns == "test":  # the tasks asked of the other sets are kept in what it says to give
        assert main([*common, "--out", str(tmp_path / "asked"), "--only", "forget:cloze,generation", "--only",
                     "test"]) == 2
        assert "; evaluate without the test columns with --only forget:cloze,generation" in capsys.readouterr().err


def test_a_set_with_nobody_in_it_is_refused_not_scored_as_nothing(tiny_dir, bench_dir, tmp_path, capsys):
    """An emptied split (a wrong filter, a wrong folder) would otherwise give a row of blank columns and exit 0."""
    data = tmp_path / "bench"
    common = ["eval", "--model", str(tiny_dir), "--data", str(data), "--max-new-tokens", "4"]
    for split in ("forget_10", "Retain_Set"):
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(bench_dir, data)
        for path in (data / split).glob("*.parquet"):
            pq.write_table(pq.read_table(path).slice(0, 0), path)
        assert main([*common, "--out", str(tmp_path / f"all-{split}")]) == 2
        err = capsys.readouterr().err
        assert f"{split} has no people to evaluate" in err and "Traceback" not in err
        assert not (tmp_path / f"all-{split}" / "metrics.json").exists()
    # the sets that do have people are scored
    assert main([*common, "--out", str(tmp_path / "without"), "--only", "forget:multiple_choice"]) == 0


def _tiny_classifier(path):
    """A two-label DistilBERT-architecture text classifier, built offline, whose 'clean' class wins
    exactly when the text contains the word 'fine'."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "fine": 4, "s": 5, "the": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    config = DistilBertConfig(vocab_size=len(vocab), dim=8, hidden_dim=16, n_layers=1, n_heads=2,
                              max_position_embeddings=32, num_labels=2,
                              id2label={0: "noise", 1: "clean"}, label2id={"noise": 0, "clean": 1})
    model = DistilBertForSequenceClassification(config)
    with torch.no_grad():  # make the verdict depend on the word 'fine' only
        for p in model.parameters():
            p.zero_()
        model.distilbert.embeddings.word_embeddings.weight[4, 0] = 1.0
        model.distilbert.embeddings.LayerNorm.weight.fill_(1.0)
        for layer in model.distilbert.transformer.layer:
            layer.sa_layer_norm.weight.fill_(1.0)
            layer.output_layer_norm.weight.fill_(1.0)
        model.pre_classifier.weight[0, 0] = 1.0
        model.classifier.weight[1, 0] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_gibberish_classifier_loads_from_a_local_folder(tmp_path, monkeypatch):
    from viker.eval.evaluate import gibberish_scorer

    _tiny_classifier(tmp_path / "gib")
    monkeypatch.setenv("HOME", str(tmp_path))  # '~/gib' as `--gib-model=~/gib` passes it, unexpanded
    score = gibberish_scorer("~/gib", "cpu")
    clean, noise = score(["fine fine", "s s s the"])
    assert clean > 0.9 and noise == pytest.approx(0.5, abs=0.05)  # 'clean' is the label named clean
    config = json.loads((tmp_path / "gib" / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "LABEL_0", "1": "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    (tmp_path / "gib" / "config.json").write_text(json.dumps(config))
    with pytest.raises(VikerError, match="no one label names the clean class .labels: LABEL_0, LABEL_1"):
        gibberish_scorer(str(tmp_path / "gib"), "cpu")


def test_the_clean_class_is_the_label_named_clean_not_one_that_holds_the_word():
    from viker.eval.evaluate import clean_label

    assert clean_label({0: "unclean", 1: "clean"}) == 1  # "unclean" holds "clean", and means the opposite
    assert clean_label({0: "noise", 1: "Clean"}) == 1
    assert clean_label({0: "LABEL_clean", 1: "LABEL_noise"}) == 0
    assert clean_label({0: "not_clean", 1: "noise"}) is clean_label({0: "non_clean", 1: "noise"}) is None
    assert clean_label({0: "LABEL_unclean", 1: "noise"}) is None
    assert clean_label({0: "clean_a", 1: "clean_b"}) is None  # two candidates: not ours to pick


def test_a_decoder_classifier_without_a_padding_token_scores_batches_of_any_length(tmp_path):
    """A GPT-2-style classifier's tokenizer has no padding token, and it may be saved without its model's length:
    its end-of-text token pads, the position embeddings bound the length, and a classifier that cannot score a
    batch at all is refused when it loads, before any answer is generated."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    from viker.eval.evaluate import gibberish_scorer

    vocab = {"<eos>": 0, "<unk>": 1, "fine": 2, "s": 3, "the": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    config = GPT2Config(vocab_size=len(vocab), n_embd=8, n_layer=1, n_head=2, n_positions=8, num_labels=2,
                        id2label={0: "unclean", 1: "clean"}, label2id={"unclean": 0, "clean": 1})
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "gpt2")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>").save_pretrained(
        tmp_path / "gpt2")
    score = gibberish_scorer(str(tmp_path / "gpt2"), "cpu")
    texts = ["fine", "the s " * 20]  # the second, longer than the 8 positions
    together = score(texts)
    assert together == pytest.approx([score([t])[0] for t in texts], abs=1e-5) and all(0 < p < 1 for p in together)
    # RoBERTa's kind numbers positions from its padding index on: two of its positions hold no token
    from transformers import RobertaConfig, RobertaForSequenceClassification

    RobertaForSequenceClassification(RobertaConfig(
        vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=10, pad_token_id=0, num_labels=2, id2label={0: "noise", 1: "clean"},
        label2id={"noise": 0, "clean": 1})).save_pretrained(tmp_path / "roberta")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<eos>", unk_token="<unk>").save_pretrained(
        tmp_path / "roberta")
    assert len(gibberish_scorer(str(tmp_path / "roberta"), "cpu")(texts)) == 2
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path / "gpt2")  # nothing to pad with
    with pytest.raises(VikerError, match=r"--gib-model \S+: the classifier cannot score a batch of texts"):
        gibberish_scorer(str(tmp_path / "gpt2"), "cpu")


def test_gib_column_when_a_classifier_is_given(tiny, bench_dir, tmp_path, monkeypatch):
    """The classifier's 'clean' probability of the answers, in percent: the tiny classifier calls 'fine fine'
    clean (above 0.9) and anything without 'fine' a coin toss (0.5)."""
    from viker.eval.evaluate import gibberish_scorer

    _tiny_classifier(tmp_path / "gib")
    replies = {}

    def half_fine(model, processor, examples, **kw):  # every other generation answer is 'fine fine'
        return [replies.setdefault((ex.question, ex.image), "fine fine" if len(replies) % 2 else "s s the")
                for ex in examples]

    monkeypatch.setattr(viker.eval.evaluate, "generate", half_fine)
    model, processor = tiny
    metrics, records = evaluate(model, processor, bench_dir,
                                EvalConfig(forget="forget_10", max_new_tokens=4, gib_model=str(tmp_path / "gib"),
                                           scope={"forget": ("generation",)}), progress=False)
    answers = [r["answer"] for r in records if r["task"] == "generation"]
    assert "fine fine" in answers and "s s the" in answers
    expected = 100 * sum(gibberish_scorer(str(tmp_path / "gib"), "cpu")(answers)) / len(answers)
    assert metrics["gib"] == metrics["forget_gib"] == pytest.approx(expected)
    share = answers.count("fine fine") / len(answers)
    assert metrics["gib"] > 100 * (0.9 * share + 0.45 * (1 - share))  # the clean class's probability, not noise's



def test_a_report_compares_gib_scores_of_one_classifier(tiny_dir, bench_dir, tmp_path, capsys, monkeypatch):
    """Two classifiers' 'clean' probabilities are two scales: a report names the one its GIB column is by, and
    refuses runs scored by different ones, however the folder was typed."""
    _tiny_classifier(tmp_path / "gib")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-new-tokens", "4",
                 "--only", "forget:generation", "--gib-model", "gib", "--out", "run"]) == 0
    evaluation = json.loads((tmp_path / "run" / "config.json").read_text())
    assert evaluation["eval"]["gib_model"] == str(tmp_path / "gib")  # recorded absolute, as typed from anywhere
    assert main(["report", "run", "--out", "one"]) == 0
    assert f"GIB by the gibberish classifier in `{tmp_path / 'gib'}`." in " ".join(
        (tmp_path / "one" / "report.md").read_text().split())
    other = tmp_path / "other-gib"
    shutil.copytree(tmp_path / "run", other)
    evaluation["eval"]["gib_model"] = str(tmp_path / "another-gib")
    (other / "config.json").write_text(json.dumps(evaluation))
    capsys.readouterr()
    assert main(["report", "run", str(other), "--out", "mixed"]) == 2
    assert "evaluated with different --gib-model" in capsys.readouterr().err
    # another classifier's scores replace the folder's with a word; one asked to score no generation answer, and
    # one without its tokenizer (transformers would make one up), are refused before any model loads
    shutil.copytree(tmp_path / "gib", tmp_path / "gib-2")
    assert main(["eval", "--model", str(tiny_dir), "--data", str(tmp_path / "no-such-bench"), "--max-new-tokens",
                 "4", "--only", "forget:generation", "--gib-model", "gib-2", "--out", "run"]) == 2
    assert "no such benchmark folder" in (err := capsys.readouterr().err) and "replaced by" not in err  # refused
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-new-tokens", "4",
                 "--only", "forget:generation", "--gib-model", "gib-2", "--out", "run"]) == 0
    assert f"warning: --out run was scored by --gib-model {tmp_path / 'gib'}; its scores are replaced by " \
        f"{tmp_path / 'gib-2'}'s" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--only", "forget:cloze",
                 "--gib-model", "gib", "--out", "run"]) == 2  # refused, as it would lose forget:generation
    assert "would not write (forget:generation" in (err := capsys.readouterr().err) and "replaced by" not in err
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--only", "forget:multiple_choice",
                 "--gib-model", "gib", "--out", "no-generation"]) == 2
    assert "--gib-model gib: the classifier scores generation answers, and --only asks none" in \
        capsys.readouterr().err
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "gib-2" / name).unlink(missing_ok=True)
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--only", "forget:generation",
                 "--gib-model", "gib-2", "--out", "untokenized"]) == 2
    assert "--gib-model gib-2: no tokenizer in it (none of tokenizer.json" in capsys.readouterr().err
    assert not (tmp_path / "no-generation").exists() and not (tmp_path / "untokenized").exists()


JUDGE = '''
CALLS = []


def by_reference(questions, references, answers):
    """10 when the answer holds the reference's last word, else 1; a score it is told to give otherwise."""
    CALLS.append(list(questions))
    return [10 if ref.split()[-1].strip(".").lower() in ans.lower() else 1 for ref, ans in zip(references, answers)]


def out_of_scale(questions, references, answers):
    return [11 for _ in answers]


def middling(questions, references, answers):
    return [5 for _ in answers]


def down_after_one(questions, references, answers, calls=[]):
    """Scores the first set, then the service is down."""
    calls.append(1)
    if len(calls) > 1:
        raise ConnectionError("rate limited")
    return [5 for _ in answers]
'''


def test_a_plugged_in_judge_scores_each_generated_answer_on_its_own_scale(tiny_dir, bench_dir, tmp_path, capsys,
                                                                         monkeypatch):
    """MLLMU-Bench's factuality judge is an outside model: any function given as --judge module:function scores
    each generation answer from 1 to 10, and the set's figure is the mean of those scores."""
    import sys

    monkeypatch.chdir(tmp_path)  # a judge in a file of the working folder, as a user writes one
    (tmp_path / "my_judges.py").write_text(JUDGE)
    monkeypatch.delitem(sys.modules, "my_judges", raising=False)
    common = ["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-new-tokens", "6",
              "--retain-limit", "2", "--only", "forget:generation", "--only", "retain:generation"]
    assert main([*common, "--judge", "my_judges:by_reference", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    for name in ("forget", "retain"):
        mine = [r for r in records if r["set"] == name]
        hand = [10 if r["reference"].split()[-1].strip(".").lower() in r["answer"].lower() else 1 for r in mine]
        assert [r["factuality"] for r in mine] == hand
        assert metrics[f"{name}_factuality"] == approx(sum(hand) / len(hand), abs=0.005)
    # the judge reads the questions as the benchmark words them, without the prompt's instruction
    forget = load_profiles(bench_dir, "forget_10")
    assert sys.modules["my_judges"].CALLS[0] == [q.question for p in forget for q in p.generation]
    assert "Forget Fact." in capsys.readouterr().out
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Forget Fact. ↓" in report
    assert "but the factuality judge's scores (1 to 10, by `my_judges:by_reference`)" in " ".join(report.split())
    # another judge's scores are no column of the same table
    evaluation = json.loads((tmp_path / "run" / "config.json").read_text())
    other = tmp_path / "other-judge"
    shutil.copytree(tmp_path / "run", other)
    evaluation["eval"]["judge"] = "my_judges:out_of_scale"
    (other / "config.json").write_text(json.dumps(evaluation))
    assert main(["report", str(tmp_path / "run"), str(other), "--out", str(tmp_path / "mixed")]) == 2
    assert "evaluated with different --judge" in capsys.readouterr().err
    # a judge that cannot be imported is refused before the model loads; one off its scale, when it answers
    with monkeypatch.context() as patched:
        patched.setattr(viker.eval.run, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
        assert main([*common, "--judge", "no_such_judges:score", "--out", str(tmp_path / "missing")]) == 2
    assert "--judge no_such_judges:score: cannot import no_such_judges" in capsys.readouterr().err
    # a judge whose own code fails as it is imported (a key it reads from the environment) is one line too,
    # and a module without the function says which file it is (one of the same name may come first)
    (tmp_path / "keyed_judges.py").write_text("import os\nKEY = os.environ['NO_SUCH_JUDGE_KEY']\n")
    assert main([*common, "--judge", "keyed_judges:score", "--out", str(tmp_path / "keyed")]) == 2
    assert "--judge keyed_judges:score: cannot import keyed_judges (KeyError: 'NO_SUCH_JUDGE_KEY')" in \
        capsys.readouterr().err
    assert main([*common, "--judge", "my_judges:no_such_function", "--out", str(tmp_path / "nofunction")]) == 2
    assert f"--judge my_judges:no_such_function: my_judges ({tmp_path / 'my_judges.py'}) has no function " \
        "no_such_function" in capsys.readouterr().err
    assert main([*common, "--judge", "my_judges:out_of_scale", "--out", str(tmp_path / "scale")]) == 2
    assert "a score must be a number from 1 to 10, got 11" in capsys.readouterr().err
    # into a folder another judge scored: a judge that fails replaces no scores by its own, and says none
    shutil.copytree(tmp_path / "run", tmp_path / "judged")
    assert main([*common, "--judge", "my_judges:out_of_scale", "--out", str(tmp_path / "judged")]) == 2
    err = capsys.readouterr().err
    assert "a score must be a number from 1 to 10, got 11" in err and "replaced by" not in err
    assert main([*common, "--judge", "my_judges", "--out", str(tmp_path / "form")]) == 2
    assert "--judge my_judges: name a function as module:function" in capsys.readouterr().err
    for typed in ("my_judges.py:by_reference", "./my_judges.py:by_reference"):  # the file, as a user may type it
        assert main([*common, "--judge", typed, "--out", str(tmp_path / "form")]) == 2
        assert f"--judge {typed}: name the module, not its file: --judge my_judges:by_reference, run in the " \
               "folder that holds my_judges.py" in capsys.readouterr().err
    # a judge where --only asks no generation question would judge nothing, yet be recorded
    assert main([*common[:-4], "--only", "forget:cloze", "--judge", "my_judges:by_reference", "--out",
                 str(tmp_path / "cloze")]) == 2
    assert "--judge my_judges:by_reference: the judge scores generation answers, and --only asks none" in \
        capsys.readouterr().err
    # a judge that fails on a later set costs none of the answers: they and every other figure are written,
    # as an evaluation without a judge, and no set keeps a factuality score of a judging left half done
    down = tmp_path / "down"
    assert main([*common, "--judge", "my_judges:down_after_one", "--out", str(down)]) == 2
    err = capsys.readouterr().err
    assert "--judge my_judges:down_after_one failed: ConnectionError: rate limited" in err
    assert f"every answer are written to {down}, without factuality, which `viker judge {down} --judge " \
        "my_judges:down_after_one` adds once the judge works" in err
    kept = json.loads((down / "metrics.json").read_text())
    assert kept == {k: v for k, v in metrics.items() if not k.endswith("_factuality")}
    answers = [json.loads(line) for line in (down / "generations.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in answers] == [r["answer"] for r in records]
    assert not any("factuality" in r for r in answers)
    assert json.loads((down / "config.json").read_text())["eval"]["judge"] is None
    # `viker judge` scores those answers afterwards, without generating them again: the figures and scores a
    # judge that had not failed would have given, and the evaluation's settings name it
    with monkeypatch.context() as patched:
        patched.setattr(viker.eval.evaluate, "generate", lambda *a, **k: pytest.fail("an answer was generated"))
        assert main(["judge", str(down), "--judge", "my_judges:by_reference"]) == 0
    judged = capsys.readouterr()
    assert "forget_factuality" in judged.out and "warning" not in judged.err  # it had no judge's scores
    assert json.loads((down / "metrics.json").read_text()) == metrics
    assert [json.loads(line) for line in (down / "generations.jsonl").read_text().splitlines()] == records
    assert json.loads((down / "config.json").read_text())["eval"]["judge"] == "my_judges:by_reference"
    # judged again by another judge, the scores it replaces are said to be another's
    assert main(["judge", str(down), "--judge", "my_judges:middling"]) == 0
    assert f"warning: {down} was judged by my_judges:by_reference; its factuality scores are replaced by " \
        "my_judges:middling's" in capsys.readouterr().err
    assert json.loads((down / "metrics.json").read_text())["forget_factuality"] == 5.0
    assert main(["judge", str(down), "--judge", "my_judges:out_of_scale"]) == 2  # a judge that fails replaces nothing
    assert "warning" not in capsys.readouterr().err
    assert json.loads((down / "metrics.json").read_text())["forget_factuality"] == 5.0
    assert main(["judge", str(tmp_path / "missing"), "--judge", "my_judges:by_reference"]) == 2  # refused: none
    assert "no evaluation of viker's here" in capsys.readouterr().err
    # a damaged evaluation is refused before the judge is called (a paid service, in real use)
    calls = len(sys.modules["my_judges"].CALLS)
    damaged = tmp_path / "damaged"
    shutil.copytree(down, damaged)
    (damaged / "metrics.json").write_text("[]")
    assert main(["judge", str(damaged), "--judge", "my_judges:by_reference"]) == 2
    assert f"{damaged / 'metrics.json'}: holds no evaluation's figures" in capsys.readouterr().err
    shutil.copy(down / "metrics.json", damaged / "metrics.json")
    (damaged / "generations.jsonl").write_text("")
    assert main(["judge", str(damaged), "--judge", "my_judges:by_reference"]) == 2
    assert f"{damaged / 'generations.jsonl'}: holds no answers (cut short?)" in capsys.readouterr().err
    assert len(sys.modules["my_judges"].CALLS) == calls


def test_a_judge_that_fails_or_returns_no_scores_is_named_in_one_line():
    """A judge is the user's own code or an outside service: when it fails, the error says it was the judge."""
    from viker.eval.evaluate import judged

    def down(questions, references, answers):
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(VikerError, match=r"^--judge j:down failed: ConnectionRefusedError: .*Connection refused"):
        judged(down, "j:down", ["q"], ["r"], ["a"])
    for returned, kind in ((None, "NoneType"), ("10", "str"), (7, "int"), ({"a": 5}, "dict")):
        with pytest.raises(VikerError, match=f"^--judge j:f: returned {kind}, not a list of scores"):
            judged(lambda q, r, a, returned=returned: returned, "j:f", ["q"], ["r"], ["a"])
    assert judged(lambda q, r, a: (s for s in [3, 7.5]), "j:f", ["q"] * 2, ["r"] * 2, ["a", "b"]) == [3.0, 7.5]

    def streaming(questions, references, answers):  # fails while its scores are read
        yield 5
        raise RuntimeError("service down")

    with pytest.raises(VikerError, match=r"^--judge j:s failed: RuntimeError: service down"):
        judged(streaming, "j:s", ["q"] * 2, ["r"] * 2, ["a", "b"])

    def loading(questions, references, answers):  # viker's own error, raised inside the judge: still the judge's
        raise VikerError("judge-model: no such model folder")

    with pytest.raises(VikerError, match=r"^--judge j:l failed: VikerError: judge-model: no such model folder"):
        judged(loading, "j:l", ["q"], ["r"], ["a"])


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_is_live_on_a_terminal_and_a_line_now_and_then_in_a_log(terminal, tiny, bench_dir, capsys,
                                                                          monkeypatch):
    """A log (a cluster job's, `viker demo > log`) gets no line per redraw and no nested bar's empty lines."""
    import time

    from viker.progress import progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    model, processor = tiny
    examples = generation_examples(load_profiles(bench_dir, "forget_15"))[:3]
    for _ in progress_bar(range(5), desc="outer"):
        generate(model, processor, examples, batch_size=1, max_new_tokens=2, desc="inner", inner=True)
        time.sleep(0.15)  # longer than a terminal's bar waits between two redraws
    generate(model, processor, examples, batch_size=1, max_new_tokens=2, desc="alone")  # no other bar shows it
    err = capsys.readouterr().err
    outer = err.count("outer:")
    assert "alone: 100%" in err
    if terminal:
        assert outer >= 5 and "inner:" in err, err
    else:
        assert outer == 2 and "inner" not in err and "\x1b[A" not in err, err  # its start and its end


def test_a_bar_in_a_log_keeps_its_pace_when_the_work_slows_down(capsys, monkeypatch):
    """tqdm counted the steps between two looks at the clock by the early pace: once a step took longer (a
    finetune's later, longer batches), a log went quiet for minutes, then its monitor wrote two lines at once."""
    import time

    from viker.progress import progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("TQDM_MININTERVAL", "0.2")
    for i in progress_bar(range(210), desc="steps"):
        time.sleep(0.001 if i < 200 else 0.1)  # a second of slow steps at the end
    counts = [int(m) for m in re.findall(r"steps:.*?\| (\d+)/210", capsys.readouterr().err)]
    assert len([n for n in counts if 200 < n < 210]) >= 2, counts  # updated during the slow steps too


@pytest.mark.parametrize("stream", ["closed", None])
def test_a_bar_with_no_stream_to_write_to_is_off(stream, monkeypatch):
    """Standard error closed, or none (Python started without one): the work goes on without a bar."""
    import io

    from viker.progress import progress_bar

    if stream == "closed":
        stream = io.StringIO()
        stream.close()
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress_bar(range(3))) == [0, 1, 2]


def test_tqdm_disable_hides_every_bar():
    import subprocess

    code = "from viker.progress import progress_bar\nfor _ in progress_bar(range(3), desc='steps'): pass"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    hidden = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    assert "steps" in shown.stderr and hidden.stderr == ""


def test_each_column_is_over_the_questions_its_answers_record():
    """The counts a reader needs to know how far apart two figures must be: from the answers themselves."""
    from viker.report import questions_behind

    def records(set_, task, with_image, by_name):
        return [{"set": set_, "task": task, "image": True}] * with_image + [{"set": set_, "task": task,
                                                                             "image": False}] * by_name

    answers = (records("forget", "multiple_choice", 5, 7) + records("forget", "generation", 2, 3)
               + records("forget", "cloze", 4, 1) + records("test", "multiple_choice", 10, 5)  # two photos each
               + records("retain", "generation", 6, 6))
    assert questions_behind(answers) == {"forget_acc": 5, "forget_acc_text": 7, "test_acc": 10, "forget_rougeL": 5,
                                         "forget_cloze": 5, "retain_rougeL": 12, "retain_bleu": 12, "coherence": 5,
                                         "gib": 5, "forget_factuality": 5, "retain_factuality": 12}


def test_a_cloze_question_without_a_blank_is_said_to_have_none(tiny, bench_dir, capsys):
    """A Mask_Task question with no ``__`` is asked to fill a blank it does not show; the evaluation says how many
    of a set's cloze questions are such, and scores them all."""
    from viker.eval.evaluate import EvalSet

    people = load_profiles(bench_dir, "forget_10")
    cfg = EvalConfig(forget="forget_10", scope={"forget": ["cloze"]}, cloze_max_new_tokens=2)
    evaluate(*tiny, bench_dir, cfg, progress=False, sets=[EvalSet("forget", people)])
    assert "warning" not in capsys.readouterr().err  # the embedded benchmark's every cloze question has its blank
    first = people[0]
    unblanked = replace(first.cloze[0], question=first.cloze[0].question.replace("__", "something"))
    people[0] = replace(first, cloze=(unblanked, *first.cloze[1:]))
    _, records = evaluate(*tiny, bench_dir, cfg, progress=False, sets=[EvalSet("forget", people)])
    assert capsys.readouterr().err == f"warning: forget: 1 of {len(records)} cloze questions (Mask_Task) have no " \
        "blank (__); they are asked as they are, with the instruction to fill the blank\n"


def test_answers_rouge_cannot_read_are_said_to_score_0(tiny, bench_dir, capsys):
    """rouge_score keeps a-z and digits alone (as MLLMU-Bench scores): an answer in Arabic or Chinese has no word
    it reads, and scores 0 whoever answers; the evaluation says so rather than let the 0 read as forgetting."""
    from viker.eval.evaluate import EvalSet
    from viker.eval.metrics import rouge, rouge_reads

    assert rouge("张伟出生于北京", "张伟出生于北京")["rougeL"] == 0.0 and not rouge_reads("محمد ولد في القاهرة")
    assert rouge_reads("José Müller") and rouge_reads("1984")
    people = load_profiles(bench_dir, "forget_10")[:1]
    cfg = EvalConfig(forget="forget_10", scope={"forget": ["generation"]}, max_new_tokens=2)
    evaluate(*tiny, bench_dir, cfg, progress=False, sets=[EvalSet("forget", people)])
    assert "warning" not in capsys.readouterr().err
    first = people[0]
    people[0] = replace(first, generation=(replace(first.generation[0], answer="张伟出生于北京。"),
                                           *first.generation[1:]))
    evaluate(*tiny, bench_dir, cfg, progress=False, sets=[EvalSet("forget", people)])
    assert capsys.readouterr().err.startswith(f"warning: forget: 1 of {len(first.generation)} generation answers "
                                              "have no word ROUGE reads")


def test_a_special_token_in_any_set_is_refused_before_any_answer_is_generated(tiny, bench_dir, monkeypatch):
    """``</s>`` in a Retain_Set question stopped an evaluation at its last set, its answers thrown away; it is
    named, with its person and file, before the first answer."""
    import viker.eval.evaluate as evaluate_module
    from viker.errors import VikerError
    from viker.eval.evaluate import EvalSet

    forget, real = load_profiles(bench_dir, "forget_10")[:1], load_profiles(bench_dir, "Retain_Set")[:2]
    last = real[-1]
    real[-1] = replace(last, mc=(replace(last.mc[0], question=last.mc[0].question + "</s>"), *last.mc[1:]))
    monkeypatch.setattr(evaluate_module, "generate", lambda *a, **kw: pytest.fail("answered before the check"))
    cfg = EvalConfig(forget="forget_10", scope={"forget": ["generation"], "real": ["multiple_choice"]})
    with pytest.raises(VikerError, match=rf"^{re.escape(last.source)}: person {last.id}: .* holds '</s>', which the "
                                         "tokenizer reads as a special token"):
        evaluate(*tiny, bench_dir, cfg, progress=False, sets=[EvalSet("forget", forget), EvalSet("real", real)])


def test_retain_limit_cuts_the_retain_split_alone_and_leaves_the_real_world_people_whole(bench_dir):
    from viker.eval.evaluate import eval_sets

    sets = {s.name: s for s in eval_sets(bench_dir, EvalConfig(forget="forget_10", retain_limit=1))}
    real = load_profiles(bench_dir, "Retain_Set")
    assert len(real) > 1 and [p.id for p in sets["real"].profiles] == [p.id for p in real]
    assert sets["real"].left_out == 0
    assert len(sets["retain"].profiles) == 1
    assert sets["retain"].left_out == len(load_profiles(bench_dir, "retain_90")) - 1
