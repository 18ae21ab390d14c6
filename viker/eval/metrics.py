"""Scoring functions for unlearning evaluation (MLLMU-Bench and CLEAR style).

Everything here is a pure function on strings or numbers: no model, no torch. The text metrics
follow the benchmarks' own evaluation code (``rouge-score`` for ROUGE, ``nltk`` for BLEU, substring
match for cloze), so numbers stay comparable with published results. ``parse_choice`` and
``coherence`` are our own additions and their rules are spelled out in their docstrings.
"""

from __future__ import annotations

import math
import re
import statistics
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize
from scipy.special import logsumexp
from scipy.stats import ks_2samp

__all__ = [
    "rouge",
    "rougeL_recall",
    "bleu",
    "cloze_correct",
    "parse_choice",
    "whole_words",
    "mostly_unread",
    "unread_replies",
    "first_char_choice",
    "choose_by_likelihood",
    "mean_percent",
    "coherence",
    "coherence_mean",
    "prob_from_loss",
    "option_prob",
    "truth_ratio",
    "truth_ratio_score",
    "forget_quality",
    "harmonic_mean",
]

# --------------------------------------------------------------------------------------------
# Generation metrics: ROUGE and BLEU
# --------------------------------------------------------------------------------------------

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=None)
def _rouge_scorer(types: tuple[str, ...]) -> rouge_scorer.RougeScorer:
    # Building a scorer sets up the Porter stemmer; do it once per set of ROUGE types.
    return rouge_scorer.RougeScorer(list(types), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of ``prediction`` against ``reference``, each in [0, 1].

    Uses ``rouge_score`` with Porter stemming, as MLLMU-Bench does: text is lower-cased, split on
    non-alphanumeric characters, and words longer than three characters are stemmed.
    """
    scores = _rouge_scorer(_ROUGE_TYPES).score(reference, prediction)  # (target, prediction)
    return {name: float(scores[name].fmeasure) for name in _ROUGE_TYPES}


def rouge_reads(text: str) -> bool:
    """Whether ``rouge_score`` finds a word in ``text``: it keeps the letters a-z and the digits alone, so an
    answer in another script (Arabic, Chinese) has none, and its ROUGE is 0 whatever the reply."""
    return bool(rouge_tokenize.tokenize(text, None))


def rougeL_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall (LCS length / reference length), the generation score used by CLEAR."""
    return float(_rouge_scorer(("rougeL",)).score(reference, prediction)["rougeL"].recall)


_BLEU_SMOOTHING = SmoothingFunction().method1
_BLEU_WEIGHTS = (0.25, 0.25, 0.25, 0.25)


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 on whitespace tokens, exactly as MLLMU-Bench computes it.

    Uniform 1-4-gram weights and NLTK smoothing ``method1`` (an n-gram order with no matches gets
    0.1 instead of 0 as its numerator), with the usual brevity penalty. An empty prediction or
    reference scores 0.0 directly, since nothing can match and NLTK would only warn about it.
    """
    hypothesis = prediction.split()
    reference_tokens = reference.split()
    if not hypothesis or not reference_tokens:
        return 0.0
    return float(
        sentence_bleu(
            [reference_tokens],
            hypothesis,
            weights=_BLEU_WEIGHTS,
            smoothing_function=_BLEU_SMOOTHING,
        )
    )


# --------------------------------------------------------------------------------------------
# Cloze (fill-in-the-blank) questions
# --------------------------------------------------------------------------------------------


def cloze_correct(reply: str, ground_truth: str) -> bool:
    """True iff the stripped, lower-cased ground truth occurs anywhere in the lower-cased reply."""
    return ground_truth.strip().lower() in reply.lower()


# --------------------------------------------------------------------------------------------
# Multiple-choice questions
# --------------------------------------------------------------------------------------------

def whole_words(phrase: str) -> str:
    """A regular expression for ``phrase`` standing as words of its own, not inside a longer word ('York'
    is not in 'Yorkshire', 'Ana Lo' not in 'Ana Lopez')."""
    return rf"(?<!\w){re.escape(phrase)}(?!\w)"


# A letter opening the reply: "(B)", "[B]", "B", "B:", "B)", "B]", "B. Paris", "B, Paris", "B; Paris", "B!",
# "B?", "B...", "B - Paris", "B" alone on the first line; "b)", "(b)", "b:", "b. Paris" in lower case. ".", ",",
# ";", "!" and "?" must be followed by whitespace or the end so that "A.I.", "U.S." or "e.g." do not count. A
# letter followed by a space and a word ("B is correct"), or by one in brackets ("B (Halifax)"), counts unless it
# is one of the words "A" and "I" ("A cat ...", "I think ..."; "A is correct" and "A because ..." are the letter,
# as with B) or the words say it is not the answer ("B is wrong", "B not C", "B vs C", "B (or C)", "B (C)"). The
# last two forms (groups 4 and 5) count only for a letter among the options: "T cells. The answer is C" is C.
_NEGATION = (r"(?:(?:is|was|would(?:\s+be)?|seems(?:\s+to\s+be)?)\s+(?:not|never|neither|wrong|incorrect|false)"
             r"|isn't|wasn't|wouldn't|not|nor|vs|versus|rather|but|or|and)\b")
# Words that cannot follow the article "A": after them, "A" is the letter ("A is correct", "A because ..."); a
# hyphenated word is a compound the article can precede ("A would-be actor").
_NOT_AFTER_ARTICLE = r"(?:because|since|as|is|was|which|would|seems|fits|matches)(?![\w-])"
_LEADING_RE = re.compile(
    r"^(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?=[ \t\r]*(?:$|\n)|[:)\]]|(?:[.,;]|\.{2,}|…|[!?]+)(?:\s|$)|\s+[-–]\s)"
    rf"|([B-HJ-Z]|A(?=\s+{_NOT_AFTER_ARTICLE}))(?=\s+\(?\w)(?!\s+\(?{_NEGATION}|\s+\([A-Z](?:\s*[),/]|\s+(?:or|and)\b))"
    r"|\(?([a-z])(?=[:)]|\.(?:\s|$)))"
)
_LENIENT_GROUPS = (4, 5)
# lower-case option markers anywhere: "b) Paris, c) Lima" lists options rather than picking one
_LOWER_MARKER_RE = re.compile(r"(?<![\w.])([a-z])(?=[:)]|\.(?:\s|$))")
# an upper-case option marker opening a line: "A: Seville", "(B) Halifax", "C) Lima"
_LINE_MARKER_RE = re.compile(r"[ \t]*\(?([A-Z])(?:[:)\]]|\.(?:\s|$))")
# upper-case option markers followed by an option's words, anywhere on a line: "A: Teacher B: Doctor" lists
# options rather than picking one ("(not A)" and "Type A/B" hold no marker)
_UPPER_MARKER_RE = re.compile(r"(?<![\w.])\(?([A-Z])[:)][ \t]*(?=\w)")
# A letter announced by a keyword anywhere: "Answer: B", "The answer is B", "Option (C)". The words
# "A" and "I" followed by a lower-case word are words: "The answer is A cat", "the answer I believe";
# but a word that cannot follow the article names the letter A, so that an answer A is read as an answer
# B is: "The answer is A because ...", "Answer: A is correct".
_ANNOUNCED_RE = re.compile(
    r"(?i:\b(?:answer|option|choice))\b"
    r"(?:\s+(?i:is|would\s+be|will\s+be))?\s*[:\-]?\s*"
    rf"(?:\(([A-Z])\)|\[([A-Z])\]|(?!I\s+[a-z]|A\s+(?!{_NOT_AFTER_ARTICLE})[a-z])([A-Z])\b)"
)
# A letter in quotes: '"B"', "'B'", "“B”" (quotes taken off before the rules read the reply).
_QUOTED_LETTER_RE = re.compile(r"[\"'`“‘]([A-Za-z])[\"'`”’]")
# Two letters joined as alternatives or a list: "A and B", "A or C", "A, B", "A/B".
_ENUMERATION_RE = re.compile(r"\b([A-Z])\)?\s*(?:,?\s*(?:and|or|&)\b|,|/)\s*\(?([A-Z])\b")


def first_char_choice(reply: str, options: Sequence[str] | Mapping[str, str] = "ABCD") -> str | None:
    """The option letter a multiple-choice reply picks as MLLMU-Bench's evaluation reads it: the reply's first
    character, upper-cased, when it is an option letter, else None. ``"b) Paris"`` is B, but ``"Answer: C"`` is
    A and ``"(B)"`` is nothing, as there; ``parse_choice`` reads such replies as they are meant."""
    first = reply.strip()[:1].upper()
    return first if first and first in {option.strip().upper() for option in options} else None


def parse_choice(reply: str, options: Sequence[str] | Mapping[str, str] = "ABCD") -> str | None:
    """The option letter a multiple-choice reply picks, or None when it does not pick exactly one.

    MLLMU-Bench reads the first character of the reply. This parser accepts more forms but never
    guesses. After stripping whitespace, Markdown emphasis (``*``) and quotes around a letter (``"B"``,
    ``'B' is correct``), the candidate letters are:

    1. the whole reply when it is a single letter, in either case (``"b"`` -> ``"B"``);
    2. a letter opening the reply on its own: ``"B"``, ``"B."``, ``"B!"``, ``"B..."``, ``"B: Paris"``, ``"B) Paris"``,
       ``"B - Paris"``, ``"(B)"``, ``"[B]"``, alone on the first line, or followed by a word
       (``"B is correct"``, ``"A is correct"``), except the words "A" and "I" (``"A cat"``, ``"I think"``),
       a letter that is no option (``"T cells"``) and words that deny it (``"B is wrong"``); in lower case
       followed by ``)``, ``:`` or ``.`` (``"b) Paris"``, ``"(b)"``, ``"c. Rome"``), unless the reply lists several
       such markers (``"b) Paris, c) Lima"``);
    3. an upper-case letter after ``answer``/``option``/``choice`` (optionally ``is``, ``:``)
       anywhere in the reply: ``"Answer: B"``, ``"The answer is B"``,
       ``"The correct option is (C)"``; not the words "A" and "I" followed by a lower-case word
       (``"The answer is A cat"``, ``"the answer I believe"``), unless the word cannot follow the
       article (``"The answer is A because ..."``, ``"Answer: A is correct"`` are A, as with B they are B).

    The reply is ambiguous, and the result None, when these rules give no letter, give different
    letters (``"A. The answer is B"``), the reply is nothing but the letters of several options (``"B C"``,
    ``"A. B. C. D."``, ``"(B)(C)"``, one a line), or the letter they give is, where they found it, listed with
    another option letter as alternatives (``"A, B"``, ``"The answer is C or B"``; ``"Both A and B"``
    gives no letter at all). Letters listed further on do not count, the picked one included
    (``"B. A and C are wrong."`` is B, and so is the option text in ``"B: Type A/B personality"``). A letter that is
    not in ``options`` (``"E"`` when options are ``"ABCD"``) also gives None. A lower-case letter counts
    as the whole reply or with that punctuation, so ``"a"`` and ``"a)"`` are the option A but ``"a dog"``
    is nothing.

    ``options`` may map each letter to its option's text, as the prompt lists them. Then a reply that opens
    with "A" followed by option A's text (``"A Seville"``, ``"A (Seville)"``, or its start where the reply was
    cut) is A, as ``"B Halifax"`` and ``"B (Halifax)"`` are B, unless the words are those of a longer option
    that begins with A's; without the texts such a reply cannot be told from the article. A reply that opens
    by repeating the listed options, its first two lines each opening with a letter
    (``"A: Seville\nB: Halifax"``), or its first line holding several (``"A: Seville B: Halifax"``), picks
    none of them.
    """
    allowed = {option.strip().upper() for option in options}
    text = _QUOTED_LETTER_RE.sub(r"\1", reply.replace("*", "")).strip()
    if not text:
        return None
    words = re.findall(r"[^\W\d_]+", text)
    if all(len(w) == 1 for w in words) and len({w.upper() for w in words} & allowed) > 1:
        return None  # nothing but letters of several options: "B C", "A. B. C. D.", "(B)(C)", one per line
    first_lines = [_LINE_MARKER_RE.match(line) for line in text.splitlines()[:2]]
    if len(first_lines) == 2 and all(first_lines) and len({m.group(1) for m in first_lines} & allowed) == 2:
        return None  # the options listed again, one per line, from the reply's start
    if len({m.group(1) for m in _UPPER_MARKER_RE.finditer(text.splitlines()[0])} & allowed) > 1:
        return None  # or on the first line: "A: Teacher B: Doctor", "B) Doctor or C) Nurse"

    if len(text) == 1:
        candidates = {text.upper()} if text.isalpha() else set()
    else:
        leading = _LEADING_RE.match(text)
        if leading and leading.lastindex in _LENIENT_GROUPS:
            if leading.group(leading.lastindex).upper() not in allowed:
                leading = None  # "T cells", "X marks the spot": a word, not a choice
            elif leading.lastindex == 5 and len({m.group(1).upper() for m in _LOWER_MARKER_RE.finditer(text)}
                                                & allowed) > 1:
                return None  # "b) or c)", "a) Oslo b) Lima": options listed, none picked
        found = [m for m in [leading, *_ANNOUNCED_RE.finditer(text)] if m]
        spans = {_picked(m) for m in found}  # (letter, where it stands)
        if leading is None and isinstance(options, Mapping) and _names_option_a(text, options):
            spans.add(("A", 0))
        candidates = {letter for letter, _ in spans}
        for pair in _ENUMERATION_RE.finditer(text):
            letters = {(pair.group(g), pair.start(g)) for g in (1, 2)}
            if pair.group(1) != pair.group(2) and {pair.group(1), pair.group(2)} <= allowed and letters & spans:
                return None  # the reply offers its letter with another option as an alternative

    if len(candidates) != 1:
        return None
    (letter,) = candidates
    return letter if letter in allowed else None


def _names_option_a(text: str, options: Mapping[str, str]) -> bool:
    """Whether ``text`` is "A" followed by option A's text, or by its start (a reply cut short), on its first
    line: the words of the option rather than of a sentence that opens with the article."""
    option = next((t for letter, t in options.items() if letter.strip().upper() == "A"), None)
    rest = re.match(r"A[ \t]+(\S[^\n]*)", text)
    if not option or not option.strip() or not rest:
        return False
    named = option.strip().casefold()
    longer = [t.strip().casefold() for letter, t in options.items() if letter.strip().upper() != "A"]
    said = rest.group(1).strip().casefold()
    # "A Seville", or "A (Seville)" (unless A's own text opens with the bracket)
    return any(_says_option(words, named, longer) for words in {said, said.removeprefix("(")} if words)


def _says_option(said: str, named: str, longer: list[str]) -> bool:
    """Whether ``said`` is the option text ``named`` (or its start), not one of the ``longer`` options that
    begin with it."""

    def opens(words: str) -> bool:  # said begins with words of their own: "Seville, Spain", not "Sevilleans"
        return said.startswith(words) and re.match(r"\w", said[len(words):]) is None

    if any(len(t) > len(named) and t.startswith(named) and opens(t) for t in longer):
        return False  # "A doctor's assistant" names option B, "Doctor's assistant", not A's "Doctor"
    return opens(named) or named.startswith(said)


def _picked(match: re.Match[str]) -> tuple[str, int]:
    """The letter the one alternative group of ``match`` that captured something holds, and where."""
    group = next(g for g in range(1, len(match.groups()) + 1) if match.group(g) is not None)
    return match.group(group).upper(), match.start(group)


def choose_by_likelihood(
    option_logprobs: Sequence[float], normalize_lengths: Sequence[int] | None = None
) -> int:
    """Index of the most likely option (the first one on ties).

    ``option_logprobs`` are summed log-probabilities of each option's tokens. With
    ``normalize_lengths`` (token counts) the options are compared by per-token mean instead, so
    that long options are not penalised just for having more tokens.
    """
    scores = np.asarray(option_logprobs, dtype=float)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("option_logprobs must be a non-empty sequence of numbers")
    if normalize_lengths is not None:
        lengths = np.asarray(normalize_lengths, dtype=float)
        if lengths.shape != scores.shape:
            raise ValueError(
                f"got {scores.size} log-probabilities but {lengths.size} lengths"
            )
        if np.any(lengths <= 0):
            raise ValueError("option lengths must be positive token counts")
        scores = scores / lengths
    return int(np.argmax(scores))


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


MOSTLY_UNREAD = 50.0  # % of letter-mode replies picking no option beyond which a set's ACC says nothing


def mostly_unread(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """The sets whose letter-mode replies mostly picked no option (``*_unparsed`` above MOSTLY_UNREAD), by key:
    their ACC is that of a model that does not answer with a letter, not of what it knows."""
    return {k: v for k, v in metrics.items() if k.endswith("_unparsed") and v is not None and v > MOSTLY_UNREAD}


def unread_replies(mc_mode: str) -> str:
    """What such replies did, in the words of the reading ``mc_mode`` made of them."""
    return "opened with no option letter" if mc_mode == "first_char" else "named no option"


def mean_percent(values: Iterable[float | bool]) -> float:
    """100 x the mean of ``values`` (booleans count as 0/1); NaN for no values.

    NaN rather than 0.0 for an empty input, so that "nothing was evaluated" cannot be mistaken
    for "everything was wrong"; it is returned quietly, without NumPy's empty-mean warning.
    """
    numbers = [float(value) for value in values]
    if not numbers:
        return float("nan")
    return 100.0 * math.fsum(numbers) / len(numbers)


# --------------------------------------------------------------------------------------------
# Offline coherence
# --------------------------------------------------------------------------------------------

# Punctuation stripped from the ends of a whitespace token before judging it (full-width forms too: "京。"); so is
# every other script's (Unicode category P: the Devanagari danda "।", the Arabic comma "،", the Armenian "։").
_EDGE_PUNCT = "\"'`.,;:!?()[]{}<>«»“”‘’…*_%。，、！？；：（）「」『』【】《》〈〉・"


def _edge_stripped(token: str) -> str:
    """``token`` without the punctuation at its ends (:data:`_EDGE_PUNCT`, and any non-ASCII punctuation)."""
    if token.isascii():
        return token.strip(_EDGE_PUNCT)

    def edge(c: str) -> bool:
        return c in _EDGE_PUNCT or (not c.isascii() and unicodedata.category(c).startswith("P"))

    start, end = 0, len(token)
    while start < end and edge(token[start]):
        start += 1
    while end > start and edge(token[end - 1]):
        end -= 1
    return token[start:end]

# Chinese and Japanese are written without spaces between words: each of their characters counts as a token
# (punctuation after it stays with it), so a sentence is judged by its characters, not as one long word.
_UNSPACED_RE = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])([。，、！？；：）」』】》〉・]*)")
# Lone connector symbols that are normal in fluent text: they neither help nor hurt.
_NEUTRAL_TOKENS = {"-", "–", "—", "&", "/", "+", "=", "%"}
# Letters, possibly joined by apostrophes, hyphens or dots: "don't", "well-known", "e.g".
_ALPHA_WORD_RE = re.compile(r"[^\W\d_]+(?:['’.\-][^\W\d_]+)*")
# Numbers, decades, ordinals, dates and times: "1984", "3.5", "1,000", "1990s", "21st", "12:30".
_NUMBER_RE = re.compile(r"\d+(?:[.,:/\-]\d+)*(?:s|st|nd|rd|th)?")
# Upper-case codes mixing letters and digits: "COVID-19", "F-16", "B737".
_CODE_RE = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*")
# A short unit repeated three or more times: "ofofof", "qqq", "lalala".
_STUTTER_RE = re.compile(r"(.+?)\1{2,}", re.IGNORECASE)
_VOWELS = set("aeiouy")


def _is_word_like(core: str) -> bool:
    """Whether a token (without edge punctuation) looks like a real word, number or code. Combining marks (the
    vowel signs of Devanagari or Thai) belong to the letter they sit on."""
    if not core.isascii():
        core = "".join(c for c in core if not unicodedata.category(c).startswith("M"))
    if _NUMBER_RE.fullmatch(core) or _CODE_RE.fullmatch(core):
        return True
    if not _ALPHA_WORD_RE.fullmatch(core):
        return False  # mixes letters with digits or symbols: "x9q", "ab#c"
    if len(core) >= 3 and _STUTTER_RE.fullmatch(core):
        return False
    if core.isascii() and core.islower():
        # Lower-case character soup: lone letters other than "a"/"i", or vowel-less strings
        # like "zvb". Capitalised tokens are exempt ("Mr", "Dr", "St", initials).
        if len(core) == 1:
            return core in {"a", "i"}
        if not _VOWELS.intersection(core):
            return False
    return True


def coherence(text: str) -> float:
    """A model-free fluency score in [0, 1]; higher means more like coherent prose.

    Meant to flag the degenerate outputs a model produces after over-aggressive unlearning
    (empty strings, loops such as "the the the", punctuation or character soup), not to grade
    style. The score is the product of three interpretable factors, each in [0, 1]:

    * **word-likeness**: the fraction of whitespace tokens that, once surrounding punctuation is
      stripped, are real-looking words, numbers or codes. Not word-like: punctuation-only tokens
      (``",,,"``), stutters of a repeated unit (``"ofofof"``), lower-case strings without a vowel
      (``"zvb"``), lone lower-case letters other than "a" and "i", and letter-digit mixes.
      Lone connectors (``-``, ``&``, ``/``...) are ignored.
    * **non-repetition**: distinct word bigrams / all word bigrams (case and punctuation
      ignored). Normal prose rarely repeats a bigram, while loops like "Lis Lis Lis" or a
      sentence said three times score low. Two-token texts use distinct unigrams instead, and a
      single token cannot repeat (factor 1).
    * **length**: ``1 - 0.5 ** n`` for ``n`` word-like tokens: 0 for no words, 0.5 for one,
      0.75 for two, and above 0.99 from seven words on, so a bare word is neither trusted nor
      condemned.

    Tokens are split at whitespace, except in Chinese and Japanese (each character a token), combining marks
    belong to their letter, and every script's punctuation (the danda "।") is stripped from a token's ends as
    English's is: prose in those scripts, Cyrillic, Arabic or Devanagari scores as English does. Other
    scripts written without spaces (Thai, Khmer, Burmese) read as one long word per run, 0.5 a sentence.

    Example values: "She was born in Lisbon in 1984 and works as a pilot." ~= 1.0;
    "the the the the the the" ~= 0.2; "Lis Lis Lis Lis Lis" ~= 0.24; "" and "xq zvb qqq jk" = 0.
    """
    if not text.isascii():  # "Zoe\u0308" is "Zoë"; Chinese and Japanese are read character by character
        text = _UNSPACED_RE.sub(r" \1\2 ", unicodedata.normalize("NFC", text))
    tokens = [token for token in text.split() if token not in _NEUTRAL_TOKENS]
    cores = [_edge_stripped(token) for token in tokens]
    word_count = sum(1 for core in cores if core and _is_word_like(core))
    if word_count == 0:
        return 0.0
    word_likeness = word_count / len(tokens)

    # Repetition is judged on normalised tokens so "Lisbon." and "lisbon" are the same word.
    normalised = [core.lower() for core in cores if core]
    if len(normalised) >= 3:
        bigrams = list(zip(normalised, normalised[1:]))
        non_repetition = len(set(bigrams)) / len(bigrams)
    elif len(normalised) == 2:
        non_repetition = len(set(normalised)) / 2
    else:
        non_repetition = 1.0

    length = 1.0 - 0.5**word_count
    return word_likeness * non_repetition * length


def coherence_mean(texts: Iterable[str]) -> float:
    """Mean ``coherence`` of ``texts`` in percent (NaN for no texts, like ``mean_percent``)."""
    return mean_percent(coherence(text) for text in texts)


# --------------------------------------------------------------------------------------------
# CLEAR / TOFU-style metrics on per-item losses and log-probabilities
# --------------------------------------------------------------------------------------------


def prob_from_loss(loss: float) -> float:
    """exp(-loss): the probability of an answer whose (mean per-token) NLL is ``loss``."""
    return math.exp(-loss)


def option_prob(true_logprob: float, other_logprobs: Sequence[float]) -> float:
    """P(true) / (P(true) + sum of P(others)), the true option's share of the probability mass.

    Computed as exp(true - logsumexp(all)) so that very negative log-probabilities (long
    answers) do not underflow to 0/0.
    """
    all_logprobs = np.asarray([true_logprob, *other_logprobs], dtype=float)
    return float(np.exp(true_logprob - logsumexp(all_logprobs)))


def truth_ratio(paraphrased_loss: float, perturbed_losses: Sequence[float]) -> float:
    """exp(mean(perturbed_losses) - paraphrased_loss), as in TOFU/CLEAR.

    Losses are mean per-token NLLs, so this is the length-normalised probability of the
    paraphrased (correct) answer over the geometric mean of the perturbed (wrong) answers'
    probabilities: above 1 when the model prefers the truth, about 1 when it cannot tell.
    """
    if len(perturbed_losses) == 0:
        raise ValueError("truth_ratio needs at least one perturbed answer loss")
    # a collapsed model's losses can differ by more than exp() reaches: the ratio is kept within e^±709 (it
    # still scores as 0 or infinity would) rather than raising OverflowError or reaching 0, whose score
    # divides by zero, and stays a number that a JSON file of ratios can hold
    return math.exp(min(max(statistics.fmean(perturbed_losses) - paraphrased_loss, -709.0), 709.0))


def truth_ratio_score(ratios: Iterable[float], forget: bool) -> float:
    """Aggregate truth ratios into a score in [0, 1] (NaN for no ratios).

    On forget data the ideal is indifference (ratio 1), so each item scores min(r, 1/r). On
    retain/real-world data the model should prefer the truth, so each scores max(0, 1 - 1/r).
    """
    values = np.asarray(list(ratios), dtype=float)
    if values.size == 0:
        return float("nan")
    if forget:
        per_item = np.minimum(values, 1.0 / values)
    else:
        per_item = np.maximum(0.0, 1.0 - 1.0 / values)
    return float(per_item.mean())


def forget_quality(
    unlearned_ratios: Sequence[float], retrained_ratios: Sequence[float]
) -> float:
    """p-value of the two-sample Kolmogorov-Smirnov test between the two truth-ratio samples.

    High when the unlearned model's truth ratios on the forget set are indistinguishable from
    those of a model never trained on it. SciPy uses the exact distribution for small samples.
    """
    return float(ks_2samp(unlearned_ratios, retrained_ratios).pvalue)


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean of non-negative values (e.g. model utility); 0.0 if any value is 0.

    Raises ValueError for no values or a negative value.
    """
    return float(statistics.harmonic_mean(list(values)))
