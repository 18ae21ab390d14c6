"""The evaluator: MLLMU-Bench's metrics on the forget split, its Test_Set rows, the retain split and
the real-world (Retain_Set) people, for any model and any MLLMU-Bench-layout folder.

Every generation is computed once and reused: the generation answers feed ROUGE, BLEU and coherence;
the answers to the multiple-choice questions give the frames for option-likelihood scoring.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import re
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

from viker.collate import SPECIAL_READING, Collator, scoring_inputs
from viker.data.examples import cloze_examples, generation_examples
from viker.data.loader import has_config, kept_apart, load_profiles, retain_profiles, warn_of_unscored
from viker.data.schema import RETAIN_OF, Example, MCQuestion, Profile, check_forget_split, listed_ids
from viker.errors import VikerError, check_types, require
from viker.eval import metrics as M
from viker.eval.generate import check_generation_settings, generate
from viker.methods.losses import answer_window, token_logprobs
from viker.model import TOKENIZER_FILES, eval_mode, pretrained, why_not_loaded
from viker.presets import MC_MODES
from viker.progress import progress_bar
from viker.prompts import generation_prompt, has_blank, mc_prompt

SETS = ("forget", "test", "retain", "real")  # the forget split, its Test_Set rows, the retain split, Retain_Set
TASKS = ("generation", "multiple_choice", "cloze")


@dataclass
class EvalConfig:
    forget: str = "forget_10"  # where `viker eval` takes the split the model was unlearned on, this is forget_10
    # likelihood (option likelihood) | letter (a generated letter, zero-shot, read by parse_choice) | first_char
    # (the letter read as MLLMU-Bench's code reads it, by the reply's first character)
    mc_mode: str = "likelihood"
    batch_size: int = 32
    max_new_tokens: int = 50
    # A cloze reply is read in its first 50 new tokens, as MLLMU-Bench's published evaluation reads it
    # (the answer counts wherever it stands in the reply), whatever max_new_tokens the generation questions get.
    cloze_max_new_tokens: int = 50
    # Option likelihood scores the options inside the model's own greedy answer to the question, read in
    # its first 50 new tokens whatever max_new_tokens is: a shorter reply can stop before the option it
    # names ("... born in"), and the options would then be scored bare.
    frame_max_new_tokens: int = 50
    # A letter-mode reply should open with its letter ("B", "B) Paris"): read in its first 8 new tokens.
    letter_max_new_tokens: int = 8
    retain_limit: int | None = None  # evaluate at most this many retain-split people (None: all)
    # The Test_Set photos each forget person's image questions are asked with: the first of them, or all of them
    # (each photo its own view of the person; the questions asked by name are asked once).
    test_images: str = "first"
    gib_model: str | None = None  # a local gibberish classifier (e.g. a copy of the DistilBERT one)
    # MLLMU-Bench's factuality judge, plugged in: "module:function" called with the generation questions, their
    # references and the model's answers (lists of str), giving each answer a score from 1 to 10 (load_judge)
    judge: str | None = None
    # What to evaluate: set -> tasks (generation, multiple_choice, cloze); None: every task on every set.
    # A study that reads a few columns (a λ sweep reads Forget ACC, Retain R-L and coherence) names them
    # here; every metric it does compute is the one the full evaluation gives.
    scope: dict[str, tuple[str, ...]] | None = None

    def __post_init__(self):
        check_types(self)
        check_scope(self.scope)
        require(self.mc_mode in MC_MODES, "--mc-mode", self.mc_mode, f"choose {', '.join(MC_MODES)}")
        require(self.test_images in ("first", "all"), "--test-images", self.test_images, "choose first or all")
        check_forget_split(self.forget)
        check_generation_settings(self)
        require(self.cloze_max_new_tokens >= 1, "cloze_max_new_tokens", self.cloze_max_new_tokens, "must be at least 1")
        require(self.frame_max_new_tokens >= 1, "frame_max_new_tokens", self.frame_max_new_tokens, "must be at least 1")
        require(self.letter_max_new_tokens >= 1, "letter_max_new_tokens", self.letter_max_new_tokens,
                "must be at least 1")
        if self.gib_model and not (folder := Path(self.gib_model).expanduser()).is_dir():
            what = "a file, not a folder" if folder.exists() else "no such folder"
            raise VikerError(f"--gib-model {self.gib_model}: {what} (a local copy of a gibberish classifier)")
        if self.gib_model and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            raise VikerError(f"--gib-model {self.gib_model}: no tokenizer in it (none of "
                             f"{', '.join(TOKENIZER_FILES)}), and without its own the classifier reads nothing; save "
                             "its tokenizer beside it")
        if self.judge is not None:
            check_judge_form(self.judge)


def check_judge_form(spec: str) -> None:
    module, _, function = spec.rpartition(":")
    if re.search(r"\.py$|[/\\]", module):  # a file's path, as a user may type the file they wrote
        file = Path(module).name
        raise VikerError(f"--judge {spec}: name the module, not its file: --judge {file.removesuffix('.py')}:"
                         f"{function}, run in the folder that holds {file} (or with that folder on PYTHONPATH)")
    require(re.fullmatch(r"[\w.]+:\w+", spec) is not None, "--judge", spec,
            "name a function as module:function (e.g. my_judges:gpt_judge)")


@dataclass
class EvalSet:
    name: str  # forget | test | retain | real
    profiles: list[Profile]  # one image each (a person's image questions are asked with it)
    left_out: int = 0  # people of the set that --retain-limit left out


def eval_sets(data_dir: str | Path, cfg: EvalConfig) -> list[EvalSet]:
    """The sets in ``cfg.scope`` (all four when None), read from ``data_dir``; a set out of the scope is not read.
    A set in the scope with nobody in it is refused: its columns would be empty, and the run look like one that
    was scored."""
    check_scope(cfg.scope)
    forget = load_profiles(data_dir, cfg.forget)
    if not forget:
        raise VikerError(f"{data_dir}: {cfg.forget} has no people to evaluate")

    def warned(name: str, people: list[Profile], config: str) -> list[Profile]:  # of the questions it leaves out
        return warn_of_unscored(people, config, TASKS if cfg.scope is None else cfg.scope[name])

    read = {  # each set warned of once it is known to be kept apart
        "forget": lambda: warned("forget", forget, cfg.forget),
        "test": lambda: photo_views(warned("test", forget_test_rows(data_dir, forget), "Test_Set"), cfg.test_images),
        "retain": lambda: warned("retain", retain_profiles(data_dir, cfg.forget, forget), RETAIN_OF[cfg.forget]),
        # the celebrities of Retain_Set are numbered apart from the fictitious people: told apart by image alone
        "real": lambda: warned("real", kept_apart(data_dir, cfg.forget, forget, "Retain_Set",
                                                  load_profiles(data_dir, "Retain_Set"), by_id=False), "Retain_Set"),
    }

    def limited(name: str, people: list[Profile]) -> EvalSet:
        kept = people[: cfg.retain_limit] if name == "retain" else people
        return EvalSet(name, kept, left_out=len(people) - len(kept))

    asked = [name for name in SETS if cfg.scope is None or name in cfg.scope]
    configs = {"test": "Test_Set", "retain": RETAIN_OF[cfg.forget], "real": "Retain_Set"}  # forget's: read above
    sets = []
    for name in asked:
        try:
            sets.append(limited(name, read[name]()))
        except VikerError as e:  # a config the folder lacks: what to do, not only what is missing
            others = [other for other in asked if other != name]
            if has_config(data_dir, configs[name]) or not others:
                raise
            raise VikerError(f"{e}; evaluate without the {name} columns with "
                             f"{' '.join(only_option(other, cfg.scope) for other in others)}") from None
    for s in sets:
        if not s.profiles:
            source = {"retain": f"the retain split of {cfg.forget}", "real": "Retain_Set"}[s.name]
            raise VikerError(f"{data_dir}: {source} has no people to evaluate; leave it out with --only")
    return sets


def check_texts(collate: Collator, sets: list[EvalSet]) -> None:
    """Refuse, before any answer is generated, a question, answer or option of the sets that holds a special token
    of the tokenizer (:meth:`viker.collate.Collator.special_token_in`), naming the person and file."""
    for s in sets:
        for p in s.profiles:
            texts = [t for q in (*p.generation, *p.cloze) for t in (q.question, q.answer)]
            texts += [t for q in p.mc for t in (q.question, *q.options.values())]
            for text in texts:
                if token := collate.special_token_in(text):
                    raise VikerError(f"{p.source}: person {p.id}: {text[:50]!r} holds {token!r}, {SPECIAL_READING}")


def forget_test_rows(data_dir: str | Path, forget: list[Profile]) -> list[Profile]:
    """The Test_Set rows of the forget people, or an error naming who has none (the test columns would
    otherwise score a part of the split, or nothing)."""
    ids = {p.id for p in forget}
    rows = [p for p in load_profiles(data_dir, "Test_Set") if p.id in ids]
    missing = sorted(ids - {p.id for p in rows}, key=[p.id for p in forget].index)
    if missing:
        raise VikerError(f"{data_dir}: Test_Set has no row for {len(missing)} of the {len(forget)} forget people "
                         f"({listed_ids(missing)}); evaluate without "
                         "it with --only forget --only retain --only real")
    return rows


def photo_views(rows: list[Profile], which: str = "first") -> list[Profile]:
    """Test_Set rows as the evaluator asks them, one photo each: the first photo (``first``), or every photo
    (``all``), each asking the person's image questions, the questions asked by name coming with the first only
    (they do not depend on the photo)."""
    if which == "first":
        return [replace(p, images=p.images[:1]) for p in rows]
    return [replace(p, images=(img,), photo=j) if j == 0 else
            replace(p, images=(img,), photo=j, mc=tuple(q for q in p.mc if q.with_image),
                    generation=tuple(q for q in p.generation if q.with_image),
                    cloze=tuple(q for q in p.cloze if q.with_image))
            for p in rows for j, img in enumerate(p.images)]


def only_option(name: str, scope: dict[str, Sequence[str]] | None) -> str:
    """The ``--only`` that asks set ``name`` as ``scope`` does: its tasks where it names some of them."""
    tasks = tuple((scope or {}).get(name) or TASKS)
    return f"--only {name}" if set(tasks) == set(TASKS) else f"--only {name}:{','.join(tasks)}"


def check_scope(scope: dict[str, Sequence[str]] | None) -> None:
    """A one-line error for a scope that names a set or task the evaluator does not have, or no set at all."""
    if scope is not None and not scope:  # an evaluation of nothing would be written as one
        raise VikerError(f"scope {scope!r}: no set to evaluate; name sets ({', '.join(SETS)}), or give None for all")
    for name, tasks in (scope or {}).items():
        if isinstance(tasks, str):  # read letter by letter, it would name tasks 'g', 'e', ...
            raise VikerError(f"scope[{name!r}]: a tuple of tasks, not one string: ({tasks!r},)")
        if name not in SETS:
            raise VikerError(f"--only {name}: unknown set (sets: {', '.join(SETS)})")
        for task in tasks:
            if task not in TASKS:
                raise VikerError(f"--only {name}:{task}: unknown task '{task}' (tasks: {', '.join(TASKS)})")


@torch.no_grad()
def answer_logprobs(model, processor, examples: Sequence[Example], batch_size: int,
                    end_of_turn: bool = True) -> list[tuple[float, int]]:
    """(sum of answer-token log-probs, number of answer tokens) for each example, teacher-forced, in eval mode.
    Only the positions from the batch's earliest answer on reach the output layer. A model that reads
    the answer's labels (CAGUL, so that the answer never steers which visual tokens it rewrites) gets them.

    The labelled tokens end with the end-of-turn token (viker.collate); ``end_of_turn=False`` leaves it out
    of both figures: how likely the answer's own tokens are, not also whether the model would stop there."""
    collate = Collator(processor)
    end = collate.end_of_turn_id()
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size]).items()}
            window = answer_window(batch["labels"])
            logits = model(**scoring_inputs(model, batch), logits_to_keep=window).logits
            targets = batch["labels"][:, -logits.shape[1]:]
            lp, mask = token_logprobs(logits, targets)
            if not end_of_turn and end is not None:
                rows = torch.arange(mask.shape[0], device=mask.device)
                last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # each row's last labelled position
                ends = targets[:, 1:][rows, last] == end
                lp[rows[ends], last[ends]] = 0.0
                mask[rows[ends], last[ends]] = 0.0
            out += list(zip(lp.sum(-1).tolist(), mask.sum(-1).int().tolist()))
    return out


def option_frame(answer: str, options: Sequence[str]) -> str | None:
    """The model's own answer with the option it names cut out ('This person was born in {}.'), or
    None when it names none of the options, or more than one (which of them answers the question is
    not ours to guess). An option named only inside another ('York' in 'New York') is not named, and
    a blank option is never named."""
    spans = {o: [m.span() for m in re.finditer(M.whole_words(o), answer, flags=re.I)]
             for o in dict.fromkeys(options) if o.strip()}
    within = [(o, a, b) for o, found in spans.items() for a, b in found]

    def inside_another(option: str, span: tuple[int, int]) -> bool:
        return any(o != option and a <= span[0] and span[1] <= b and b - a > span[1] - span[0] for o, a, b in within)

    named = [o for o, found in spans.items() if any(not inside_another(o, span) for span in found)]
    if len(named) != 1:
        return None
    start, end = next(span for span in spans[named[0]] if not inside_another(named[0], span))

    def literal(text: str) -> str:
        return text.replace("{", "{{").replace("}", "}}")

    return literal(answer[:start]) + "{}" + literal(answer[end:])


def mc_by_likelihood(model, processor, questions: list[tuple[MCQuestion, bytes | None]], replies: list[str],
                     batch_size: int) -> list[str]:
    """Option-likelihood choice, sound for small models that never learned a letter format.

    Each option is scored as the answer to the question, inside the frame of the model's own greedy
    answer when that answer names one of the options ('This person was born in {Lisbon|Oslo|...}.'; the
    sentences' summed log-probabilities: the likelihood of each whole answer), else as the bare option
    text (per-token mean log-probability of the option's own tokens, so that neither its length nor
    whether the model would end its answer right after it decides). A blank option has nothing to score
    and is never the likelier."""
    candidates, frames, slots = [], [], []
    for (q, image), reply in zip(questions, replies):
        letters = sorted(q.options)
        frame = option_frame(reply, [q.options[x] for x in letters])
        frames.append(frame)
        slots.append([])
        for x in letters:
            text = frame.format(q.options[x]) if frame else q.options[x]
            slots[-1].append(len(candidates) if q.options[x].strip() else None)
            if q.options[x].strip():
                candidates.append(Example(generation_prompt(q.question), text, image))
    framed = sorted({j for frame, slot in zip(frames, slots) if frame for j in slot if j is not None})
    bare = sorted(set(range(len(candidates))) - set(framed))
    scores = dict(zip(framed, answer_logprobs(model, processor, [candidates[j] for j in framed], batch_size)))
    scores |= dict(zip(bare, answer_logprobs(model, processor, [candidates[j] for j in bare], batch_size,
                                             end_of_turn=False)))
    choices = []
    for (q, _), frame, slot in zip(questions, frames, slots):
        lp = [scores[j][0] if j is not None else -math.inf for j in slot]
        lengths = None if frame else [scores[j][1] if j is not None else 1 for j in slot]
        choices.append(sorted(q.options)[M.choose_by_likelihood(lp, lengths)])
    return choices


NEGATIONS = {"no", "not", "non", "un"}  # words that turn a label's "clean" into its opposite ("non_clean")


def clean_label(id2label: dict) -> int | None:
    """The class of a gibberish classifier that means coherent: the label named "clean", else the one label with
    "clean" as a word of its name and no negation ("LABEL_clean", not "unclean" or "non_clean"); None where none
    or several are ("clean_a", "clean_b")."""
    words = {i: re.findall(r"[a-z]+", str(name).lower()) for i, name in id2label.items()}
    exact = [i for i, w in words.items() if w == ["clean"]]
    named = [i for i, w in words.items() if "clean" in w and not NEGATIONS & set(w)]
    found = exact or named
    return found[0] if len(found) == 1 else None


def gibberish_scorer(path: str, device, batch_size: int = 32):
    """Probability of the 'clean' class (:func:`clean_label`) of a local text classifier, per text (higher =
    more coherent). A classifier without one such label is refused: which class means coherent is not ours to
    guess. It scores a text once when loaded, so that one it cannot run on fails before any answer is
    generated."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = str(Path(path).expanduser())  # a local folder, never a hub id ('~/gib' is no repository)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        clf = pretrained(AutoModelForSequenceClassification, folder).to(device).eval()
    except (OSError, ValueError) as e:
        raise VikerError(f"--gib-model {path}: cannot load a text classifier ({why_not_loaded(e, folder)})") from None
    clean = clean_label(clf.config.id2label)
    if clean is None:
        raise VikerError(f"--gib-model {path}: no one label names the clean class (labels: "
                         f"{', '.join(map(str, clf.config.id2label.values()))})")
    if tokenizer.pad_token is None:  # a decoder's tokenizer (GPT-2's, Llama's) has none: its end of text pads
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if clf.config.pad_token_id is None:  # where a decoder classifier reads the last real token
        clf.config.pad_token_id = tokenizer.pad_token_id
    # a tokenizer saved without its model's length: the position embeddings bound it, less the two that RoBERTa's
    # kind keeps for its padding offset
    longest = min(tokenizer.model_max_length, (getattr(clf.config, "max_position_embeddings", None) or 10**9) - 2)

    @torch.no_grad()
    def score(texts: Sequence[str]) -> list[float]:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True,
                            truncation=True, max_length=longest).to(device)
            out += clf(**enc).logits.softmax(-1)[:, clean].tolist()
        return out

    try:
        score(["A short sentence to check that the classifier runs.", "Two texts, so that one is padded."])
    except Exception as e:  # no padding token at all, a shape it cannot take: said now, not after generation
        raise VikerError(f"--gib-model {path}: the classifier cannot score a batch of texts ({type(e).__name__}: "
                         f"{e})") from None
    return score


def load_judge(spec: str):
    """The factuality judge ``spec`` names (``module:function``, the module importable from the working folder
    too), checked to be callable: ``function(questions, references, answers)`` returns one score from 1 to 10
    per answer, as MLLMU-Bench's LLM judge rates factuality (any model or service can stand behind it)."""
    check_judge_form(spec)
    module_name, name = spec.split(":")
    if "" not in sys.path and os.getcwd() not in sys.path:  # `viker` as a console script does not look here
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # not found, or its own code failed (a key read from the environment, a syntax error)
        raise VikerError(f"--judge {spec}: cannot import {module_name} ({type(e).__name__}: {e})") from None
    judge = getattr(module, name, None)
    if not callable(judge):  # which file: a module of the same name found first (the standard library's) says why
        where = f" ({module.__file__})" if getattr(module, "__file__", None) else ""
        raise VikerError(f"--judge {spec}: {module_name}{where} has no function {name}")
    return judge


def judged(judge, spec: str, questions: list[str], references: list[str], replies: list[str]) -> list[float]:
    """The judge's scores of ``replies``, refused unless there is one number from 1 to 10 for each."""
    def failed(e: Exception) -> VikerError:  # the judge's own failure (a service down, a bug): say whose
        return VikerError(f"--judge {spec} failed: {type(e).__name__}: {e}")

    try:
        scores = judge(list(questions), list(references), list(replies))
    except Exception as e:
        raise failed(e) from e
    if isinstance(scores, (str, bytes, Mapping)) or not isinstance(scores, Iterable):
        raise VikerError(f"--judge {spec}: returned {type(scores).__name__}, not a list of scores")
    try:
        scores = list(scores)  # a generator runs here
    except Exception as e:
        raise failed(e) from e
    if len(scores) != len(replies):
        raise VikerError(f"--judge {spec}: gave {len(scores)} scores for {len(replies)} answers")
    for x in scores:
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not 1 <= x <= 10:  # NaN is refused too
            raise VikerError(f"--judge {spec}: a score must be a number from 1 to 10, got {x!r}")
    return [float(x) for x in scores]


Answers = Callable[..., list[str]]  # greedy answers to examples, each computed once per evaluation


def _generation(s: EvalSet, answers: Answers, gib: Callable | None) -> tuple[dict, list[dict]]:
    """The generation questions: ROUGE, BLEU and coherence (and GIB where a classifier is given)."""
    metrics = {}
    gens = generation_examples(s.profiles)
    unread = sum(not M.rouge_reads(ex.answer) for ex in gens)
    if unread:  # said before the figure is read as forgetting
        print(f"warning: {s.name}: {unread} of {len(gens)} generation answers have no word ROUGE reads (it keeps "
              "the letters a-z and the digits, as MLLMU-Bench's scoring does): their ROUGE is 0 whatever the model "
              "says; BLEU and coherence read them", file=sys.stderr)
    replies = answers(gens, f"{s.name}: generation")
    rouge = [M.rouge(a, ex.answer) for a, ex in zip(replies, gens)]
    bleu = [M.bleu(a, ex.answer) for a, ex in zip(replies, gens)]
    # each also apart by question type, as MLLMU-Bench's own evaluation reports them
    for key, values in (*((k, [r[k] for r in rouge]) for k in ("rouge1", "rouge2", "rougeL")), ("bleu", bleu)):
        metrics[f"{s.name}_{key}"] = M.mean_percent(values)
        metrics.update(_by_question_type(f"{s.name}_{key}", values, gens))
    metrics[f"{s.name}_coherence"] = M.coherence_mean(replies)
    if gib is not None:
        metrics[f"{s.name}_gib"] = M.mean_percent(gib(replies))
    return metrics, [_record(s.name, "generation", ex, a, rougeL=r["rougeL"]) for ex, a, r in zip(gens, replies, rouge)]


def _multiple_choice(s: EvalSet, answers: Answers, model, processor, cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """The multiple-choice questions, read from a generated letter or scored by option likelihood."""
    metrics = {}
    questions = [(q, p.image if q.with_image else None) for p in s.profiles for q in p.mc]
    if cfg.mc_mode in ("letter", "first_char"):
        prompts = [Example(mc_prompt(q.question, q.options), "", img) for q, img in questions]
        replies = answers(prompts, f"{s.name}: multiple choice", max_new_tokens=cfg.letter_max_new_tokens)
        read = M.parse_choice if cfg.mc_mode == "letter" else M.first_char_choice
        choices = [read(r, q.options) for r, (q, _) in zip(replies, questions)]
        # a reply with no letter in it counts as wrong: say how many, so that 0 is not read as forgetting
        metrics[f"{s.name}_unparsed"] = M.mean_percent(c is None for c in choices)
    else:
        prompts = [Example(generation_prompt(q.question), "", img) for q, img in questions]
        # the generation questions' answers are reused when they have the same length
        replies = answers(prompts, f"{s.name}: multiple choice", max_new_tokens=cfg.frame_max_new_tokens)
        choices = mc_by_likelihood(model, processor, questions, replies, cfg.batch_size)
    hits = [c == q.answer for c, (q, _) in zip(choices, questions)]
    # `_acc` is the image+text (VQA) accuracy, what ViKeR's table reports: the model is asked about
    # the pictured person. Text-only (asked by name) and both together are reported beside it.
    metrics[f"{s.name}_acc"] = M.mean_percent(h for h, (q, _) in zip(hits, questions) if q.with_image)
    metrics[f"{s.name}_acc_text"] = M.mean_percent(h for h, (q, _) in zip(hits, questions) if not q.with_image)
    metrics[f"{s.name}_acc_all"] = M.mean_percent(hits)
    owners = [(p.id, p.photo if q.with_image else None) for p in s.profiles for q in p.mc]
    # the prompt the reply answers (letter mode: the question with its options; likelihood: the question
    # as a generation prompt, whose reply frames the options), and the options themselves
    records = [_record(s.name, "multiple_choice",
                       Example(asked.question, q.options[q.answer], img, profile_id=who, photo=photo),
                       reply, options=dict(q.options), choice=choice, correct=q.answer, hit=hit)
               for (q, img), asked, (who, photo), reply, choice, hit
               in zip(questions, prompts, owners, replies, choices, hits)]
    return metrics, records


def _cloze(s: EvalSet, answers: Answers, cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """The cloze questions: whether the reply holds the blank's answer."""
    clozes = cloze_examples(s.profiles)
    blankless = sum(not has_blank(q.question) for p in s.profiles for q in p.cloze)
    if blankless:  # asked to fill a blank it is not shown: said, as the figure reads such replies too
        print(f"warning: {s.name}: {blankless} of {len(clozes)} cloze questions (Mask_Task) have no blank "
              "(__); they are asked as they are, with the instruction to fill the blank", file=sys.stderr)
    replies = answers(clozes, f"{s.name}: cloze", max_new_tokens=cfg.cloze_max_new_tokens)
    hits = [M.cloze_correct(r, ex.answer) for r, ex in zip(replies, clozes)]
    metrics = {f"{s.name}_cloze": M.mean_percent(hits), **_by_question_type(f"{s.name}_cloze", hits, clozes)}
    return metrics, [_record(s.name, "cloze", ex, r, hit=hit) for ex, r, hit in zip(clozes, replies, hits)]


def evaluate(model, processor, data_dir: str | Path, cfg: EvalConfig | None = None, progress: bool = True,
             sets: list[EvalSet] | None = None, desc: str = "evaluating"):
    """Returns (metrics in percent, one record per prompt with the reference and the model's answer).
    ``sets``: :func:`eval_sets` already read (a command reads them before loading the model); ``desc``: its
    progress bar's name."""
    cfg = cfg or EvalConfig()
    records: list[dict] = []
    metrics: dict[str, float] = {}
    gen_kw = dict(batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, progress=progress, inner=True)
    answered: dict[tuple, str] = {}  # (prompt, image, max_new_tokens) -> greedy answer, computed once

    def answers(examples: list[Example], desc: str, **kw) -> list[str]:
        keys = [(ex.question, ex.image, kw.get("max_new_tokens", cfg.max_new_tokens)) for ex in examples]
        todo = {key: ex for key, ex in zip(keys, examples) if key not in answered}
        fresh = generate(model, processor, list(todo.values()), desc=desc, **{**gen_kw, **kw})
        answered.update(zip(todo, fresh))
        return [answered[key] for key in keys]

    gib = gibberish_scorer(cfg.gib_model, next(model.parameters()).device) if cfg.gib_model else None
    judge = load_judge(cfg.judge) if cfg.judge else None
    to_judge: list[tuple[str, list[str], int]] = []  # the generation answers, judged once all are in
    sets = eval_sets(data_dir, cfg) if sets is None else sets
    check_texts(Collator(processor), sets)
    for s in progress_bar(sets, desc=desc, disable=not progress):
        tasks = TASKS if cfg.scope is None else cfg.scope[s.name]
        scored = []
        if "generation" in tasks:
            to_judge.append((s.name, [q.question for p in s.profiles for q in p.generation], len(records)))
            scored.append(_generation(s, answers, gib))
        if "multiple_choice" in tasks:
            scored.append(_multiple_choice(s, answers, model, processor, cfg))
        if "cloze" in tasks:
            scored.append(_cloze(s, answers, cfg))
        for figures, answered_here in scored:
            metrics.update(figures)
            records += answered_here

    if "forget_coherence" in metrics:  # the paper's coherence column: answers on the forget set
        metrics["coherence"] = metrics["forget_coherence"]
    if "forget_gib" in metrics:
        metrics["gib"] = metrics["forget_gib"]
    if judge is not None:  # last, once every answer is in: a judge that fails costs no generation
        try:
            factuality = judge_answers(judge, cfg.judge, to_judge, records)
        except VikerError as e:
            raise JudgeFailed(str(e), metrics, records) from e
        metrics.update(factuality)
    # unrounded: a table rounds each figure once, as it prints it (33.3496 stored as 33.35 would print 33.4)
    return metrics, records


class JudgeFailed(VikerError):
    """The factuality judge failed after every answer was generated and scored otherwise: ``metrics`` and
    ``records`` are the evaluation without factuality, for the caller to keep."""

    def __init__(self, message: str, metrics: dict[str, float], records: list[dict]):
        super().__init__(message)
        self.metrics, self.records = metrics, records


def judge_answers(judge, spec: str, to_judge: list[tuple[str, list[str], int]], records: list[dict]) -> dict:
    """Each set's mean factuality, on the judge's own scale (1 to 10, as MLLMU-Bench reports it), and each
    generation record's score. ``to_judge``: (set name, the questions as the benchmark words them, the index of
    the set's first generation record). All sets are judged before any record is changed: all or nothing."""
    scored = []
    for name, questions, start in to_judge:
        rows = records[start : start + len(questions)]
        scored.append((name, rows, judged(judge, spec, questions, [r["reference"] for r in rows],
                                          [r["answer"] for r in rows])))
    for _, rows, scores in scored:
        for row, x in zip(rows, scores):
            row["factuality"] = x
    return {f"{name}_factuality": statistics.fmean(scores) if scores else math.nan for name, _, scores in scored}


def _by_question_type(name: str, values: list, examples: list[Example]) -> dict[str, float]:
    """``name`` over the questions asked with the image (``_image``) and by name alone (``_text``), which
    MLLMU-Bench's own evaluation reports apart; ``name`` itself pools both."""
    return {f"{name}_image": M.mean_percent(v for v, ex in zip(values, examples) if ex.image is not None),
            f"{name}_text": M.mean_percent(v for v, ex in zip(values, examples) if ex.image is None)}


def _record(set_name: str, task: str, ex: Example, answer: str, **extra) -> dict:
    photo = {} if ex.photo is None else {"photo": ex.photo}  # --test-images all: which of the person's photos
    return {"set": set_name, "task": task, "profile": ex.profile_id, "image": ex.image is not None, **photo,
            "question": ex.question, "reference": ex.answer, "answer": answer, **extra}
