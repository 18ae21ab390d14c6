"""Tests for viker.eval.metrics against values worked out by hand in the comments."""

import math
import warnings

import pytest

from viker.eval import metrics
from viker.eval.metrics import (
    bleu,
    choose_by_likelihood,
    cloze_correct,
    coherence,
    coherence_mean,
    first_char_choice,
    forget_quality,
    harmonic_mean,
    mean_percent,
    option_prob,
    parse_choice,
    prob_from_loss,
    rouge,
    rougeL_recall,
    truth_ratio,
    truth_ratio_score,
)

approx = pytest.approx

# ------------------------------------------------------------------------------------ ROUGE


def test_rouge_stemming_makes_inflections_match():
    # Porter stemming (words longer than 3 chars): "running" -> "run", "dogs" -> "dog", so both
    # sides become [run, dog]: every n-gram and the LCS match, F = 1 for all three.
    assert rouge("running dogs", "run dog") == approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})


def test_rouge_partial_overlap_hand_values():
    # prediction  [the, cat, on, the, mat]       (5 tokens)
    # reference   [the, cat, is, on, the, mat]   (6 tokens)
    # ROUGE-1: clipped overlap the:2 + cat + on + mat = 5 -> P = 5/5, R = 5/6,
    #          F = 2PR/(P+R) = 2*(5/6)/(11/6) = 10/11.
    # ROUGE-2: prediction bigrams {the cat, cat on, on the, the mat} (4), reference
    #          {the cat, cat is, is on, on the, the mat} (5); common: the cat, on the, the mat = 3
    #          -> P = 3/4, R = 3/5, F = 2*(9/20)/(27/20) = 2/3.
    # ROUGE-L: LCS = "the cat on the mat" = 5 -> P = 1, R = 5/6, F = 10/11.
    scores = rouge("the cat on the mat", "the cat is on the mat")
    assert scores == approx({"rouge1": 10 / 11, "rouge2": 2 / 3, "rougeL": 10 / 11})
    # CLEAR's ROUGE-L recall = LCS / reference length = 5/6.
    assert rougeL_recall("the cat on the mat", "the cat is on the mat") == approx(5 / 6)


def test_rouge_word_order_and_stemming():
    # prediction [the, gunman, kill, police]; reference "police killed the gunman" stems to
    # [police, kill, the, gunman]. ROUGE-1: all 4 words shared -> F = 1.
    # ROUGE-2: prediction {the gunman, gunman kill, kill police}, reference {police kill,
    #          kill the, the gunman}: one common bigram -> P = R = F = 1/3.
    # ROUGE-L: the longest in-order subsequence is "the gunman" (2) -> P = R = F = 2/4.
    scores = rouge("the gunman kill police", "police killed the gunman")
    assert scores == approx({"rouge1": 1.0, "rouge2": 1 / 3, "rougeL": 0.5})
    assert rougeL_recall("the gunman kill police", "police killed the gunman") == approx(0.5)


def test_rouge_is_case_and_punctuation_insensitive_and_bounded():
    assert rouge("Paris.", "paris") == approx({"rouge1": 1.0, "rouge2": 0.0, "rougeL": 1.0})
    assert rouge("", "some reference") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rougeL_recall("", "some reference") == 0.0


def test_rouge_scorer_is_built_once():
    rouge("a b", "a b")
    rouge("c d", "c d")
    rougeL_recall("a", "a")
    rougeL_recall("b", "b")
    info = metrics._rouge_scorer.cache_info()
    assert info.currsize == 2  # one scorer for rouge(), one for rougeL_recall()
    assert info.hits >= 2


# ------------------------------------------------------------------------------------- BLEU


def test_bleu_method1_smoothing_hand_value():
    # prediction "the cat sat on the mat", reference "the cat is on the mat" (both 6 tokens).
    # 1-grams: the:2 cat on mat match, "sat" does not          -> 5/6
    # 2-grams: the cat, on the, the mat of 5                   -> 3/5
    # 3-grams: only "on the mat" of 4                           -> 1/4
    # 4-grams: none of 3 -> method1 replaces 0 by epsilon 0.1   -> 0.1/3 = 1/30
    # Equal lengths, so brevity penalty 1.
    # BLEU = (5/6 * 3/5 * 1/4 * 1/30) ** (1/4) = (1/240) ** 0.25 ~= 0.25407
    assert bleu("the cat sat on the mat", "the cat is on the mat") == approx((1 / 240) ** 0.25)


def test_bleu_brevity_penalty_hand_value():
    # prediction "the cat on the mat" (5 tokens), reference "the cat is on the mat" (6 tokens).
    # 1-grams 5/5; 2-grams {the cat, on the, the mat} 3/4; 3-grams {on the mat} 1/3;
    # 4-grams 0/2 -> 0.1/2 = 1/20. Geometric mean: (1 * 3/4 * 1/3 * 1/20) ** (1/4) = (1/80) ** 0.25.
    # Shorter than the reference: BP = exp(1 - 6/5) = exp(-0.2).
    expected = math.exp(-0.2) * (1 / 80) ** 0.25  # ~= 0.27376
    assert bleu("the cat on the mat", "the cat is on the mat") == approx(expected)


def test_bleu_single_word_prediction():
    # "cat" vs the 6-token reference: 1-gram 1/1; 2/3/4-gram precisions 0/1 -> 0.1 each.
    # BP = exp(1 - 6/1) = exp(-5). BLEU = exp(-5) * (1 * 0.1**3) ** 0.25.
    assert bleu("cat", "the cat is on the mat") == approx(math.exp(-5) * 0.001**0.25)


def test_bleu_identical_and_empty():
    assert bleu("she works as a pilot", "she works as a pilot") == approx(1.0)
    assert bleu("a b c d", "a b c d") == approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NLTK warning spam
        assert bleu("", "she works as a pilot") == 0.0
        assert bleu("   ", "she works as a pilot") == 0.0
        assert bleu("pilot", "") == 0.0
        assert bleu("x y", "she works as a pilot") == 0.0  # no unigram match at all


def test_bleu_is_case_sensitive_whitespace_tokens_like_the_benchmark():
    # The benchmark splits on whitespace without lower-casing: "Pilot." != "pilot".
    assert bleu("Pilot.", "pilot") == 0.0
    # case decides every n-gram's match: one word's case costs what one wrong word costs
    same = bleu("She flew her plane to Lima today", "She flew her plane to Lima today")
    cased = bleu("she flew her plane to Lima today", "She flew her plane to Lima today")
    wrong = bleu("They flew her plane to Lima today", "She flew her plane to Lima today")
    assert same == approx(1.0) and cased == approx(wrong) and cased < same


# ------------------------------------------------------------------------------------ Cloze


def test_cloze_correct():
    assert cloze_correct("She was born in LISBON, Portugal.", "Lisbon")
    assert cloze_correct("lisbon", "  Lisbon \n")  # ground truth is stripped
    assert not cloze_correct("She was born in Porto.", "Lisbon")
    assert not cloze_correct("", "Lisbon")


def test_cloze_prompt_replaces_every_blank_once():
    from viker.prompts import mark_blanks

    assert mark_blanks("She was born in __ in __.") == "She was born in [Blank] in [Blank]."
    assert mark_blanks("Her job is ___ .") == "Her job is [Blank] ."
    assert mark_blanks("A ______ blank") == "A [Blank] blank"
    assert mark_blanks("snake_case stays") == "snake_case stays"  # a single underscore is no blank


# ---------------------------------------------------------------------------- Multiple choice


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", "B"),
        ("  B \n", "B"),
        ("B.", "B"),
        ("B: Paris", "B"),
        ("B) Paris", "B"),
        ("B. Paris", "B"),
        ("(B)", "B"),
        ("(B) Paris", "B"),
        ("[D]", "D"),
        ("**C**", "C"),
        ("Answer: B", "B"),
        ("answer: B", "B"),
        ("The answer is B", "B"),
        ("The correct option is (C).", "C"),
        ("The answer is B, not A", "B"),
        ("B: A city in France", "B"),  # the article "A" after the chosen letter is no conflict
        ("b", "B"),  # lower case only as the whole reply
        ("d", "D"),
        ("B\nExplanation: she was born in Lima.", "B"),  # alone on the first line
        ("B\n\nThe person in the image", "B"),
        ("B - Lima", "B"),
        ("B. A and C are wrong.", "B"),  # options ruled out further on are no alternatives to B
        ("The answer is B, since A and D are incorrect.", "B"),
        ("C. That is the answer I believe.", "C"),  # "answer I believe": the word I, no second letter
        ("The answer is A because she was born in Lima.", "A"),  # read as the same reply with B is
        ("The answer is B because she was born in Lima.", "B"),
        ("Answer: A is correct", "A"),
        ("C) Vitamins B and C", "C"),  # letters in the option's own text are no alternatives
        ("B: Type A/B personality", "B"),
        ("B\r\nLima", "B"),  # alone on the first line, whatever the line ending
        ("B \nLima", "B"),
        ("b) Paris", "B"),  # lower case with the punctuation of a letter
        ("(b)", "B"),  # or in brackets
        ("(a) Seville", "A"),
        ("c. Rome", "C"),
        ("b.", "B"),
        ("d: Lima", "D"),
        ("B is correct", "B"),  # B, C, D followed by a word are no English words
        ("C Paris", "C"),
        ("D because she was born in Lima.", "D"),
        ("A is correct", "A"),  # "A" before a word that cannot follow the article is the letter, as B is
        ("A because she was born in Lima.", "A"),
        ("A is the answer.", "A"),
        ("T cells. The answer is C", "C"),  # a capital that is no option, followed by a word, is a word
        ("X marks the spot; answer: B", "B"),
        ("c) Lima", "C"),
        ("B (Halifax)", "B"),  # the option's text in brackets, as "B Halifax"
        ("D (Lima).", "D"),
        ("B (J. K. Rowling)", "B"),  # an initial in brackets is no second letter
        ("C (X-ray)", "C"),
        ("B (Sand)", "B"),  # a capital and "and" in one word: a word, no "C and D"
        ("C (Tor)", "C"),
        ("B) Halifax (not A)", "B"),  # a letter in brackets after the choice is no option listed
        ('"B"', "B"),  # in quotes
        ("'B'", "B"),
        ("“B”", "B"),
        ("'C' is correct", "C"),
        ('The answer is "D"', "D"),
        ("B!", "B"),  # or with the punctuation that ends a sentence
        ("B?", "B"),
        ("B;", "B"),
        ("B...", "B"),
        ("B…", "B"),
    ],
)
def test_parse_choice_accepts_clear_letters(reply, expected):
    assert parse_choice(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   ",
        "I don't know",
        "Paris",
        "Both A and B",  # two options named as alternatives
        "A or C",
        "A, B",
        "A/B",
        "A. The answer is B",  # two rules give different letters
        "The answer is A or B",  # its letter, offered with another
        "The answer is C or B",
        "(B) or (C)",
        "The answer is A cat.",  # the article, not the option A
        "Answer: A dog",
        "B, A",
        "A cat sits on the mat",  # "A" followed by a space is a word, not a choice
        "a dog",
        "b c",  # a lower-case letter followed by a word is a word
        "e.g. Paris",
        "I think it is Paris",  # the word I
        "B or C",  # a letter followed by a word, offered with another
        "B is wrong",  # the words say the letter is not the answer
        "A is wrong",
        "A is not the answer",
        "A was wrong",  # however the words deny it
        "B was incorrect",
        "A would not be right",
        "C seems wrong",
        "A is never the answer",
        "A would-be actor from Lima",  # a compound the article precedes
        "The answer is A would-be actor",
        "D is incorrect",
        "C is not the answer",
        "B not C",
        "B vs C",
        "B versus C",
        "B rather than C",
        "B (or C)",  # in brackets the same
        "B (not C)",
        "B (C)",  # two letters
        "B (C, D)",
        "A (very) good question",  # the article
        "b) or c)",  # lower-case markers listing options
        "b) Paris, c) Lima",
        "(b) Paris, (c) Lima",
        "a) Oslo b) Lima c) Riga",
        "E",  # not an option
        "Answer: E",
        "A.I. is everywhere",
        "I",
        "B C",  # nothing but letters of several options: the options listed, none picked
        "C D",
        "B C D",
        "A B C D",
        "A. B. C. D.",
        "B. C.",
        "B) C)",
        "(B) (C)",
        "(B)(C)",
        "(A) (B) (C) (D)",
        "A\nB\nC\nD",
        "A.\nB.\nC.\nD.",
        '"B" "C"',
    ],
)
def test_parse_choice_returns_none_when_unclear(reply):
    assert parse_choice(reply) is None


@pytest.mark.parametrize("reply, read, meant", [
    ("B", "B", "B"), (" b) Paris", "B", "B"), ("C. Rome", "C", "C"),
    ("Answer: C", "A", "C"),  # MLLMU-Bench's code credits the A of "Answer"
    ("The answer is D", None, "D"), ("(B)", None, "B"), ("**B**", None, "B"),
    ("Definitely C", "D", None), ("A and B", "A", None), ("E", None, None), ("", None, None),
])
def test_first_char_choice_reads_a_reply_as_mllmu_bench_does(reply, read, meant):
    assert first_char_choice(reply) == read
    assert parse_choice(reply) == meant


OPTIONS = {"A": "Seville", "B": "Halifax", "C": "Valencia", "D": "Lima"}


@pytest.mark.parametrize("letter", "ABCD")
def test_a_letter_followed_by_its_options_text_is_read_alike_for_every_letter(letter):
    """Given the option texts, "A Seville" is A as "B Halifax" is B: a model that always answers in this form
    would otherwise lose every question whose answer is A. Cut short, the reply still names its option."""
    assert parse_choice(f"{letter} {OPTIONS[letter]}", OPTIONS) == letter
    assert parse_choice(f"{letter} {OPTIONS[letter]}, Spain", OPTIONS) == letter
    assert parse_choice(f"{letter} {OPTIONS[letter][:3]}", OPTIONS) == letter
    assert parse_choice(f"{letter} ({OPTIONS[letter]})", OPTIONS) == letter  # the text in brackets


@pytest.mark.parametrize("reply", [
    "A cat sits on the mat",  # the article: not option A's text
    "A Sevilleans' guide",  # option A's text inside a longer word
    "A Seville. The answer is B",  # two letters
    "A: Seville\nB: Halifax",  # the options repeated, one per line
    "(A) Seville\n(B) Halifax\n(C) Valencia",
    "B: Halifax\nC:",  # cut short while repeating them
    "A: Seville B: Halifax C: Valencia D: Lima",  # on one line
    "(A) Seville, (B) Halifax",
    "B) Halifax or C) Valencia",
])
def test_option_texts_do_not_turn_words_or_a_repeated_list_into_a_choice(reply):
    assert parse_choice(reply, OPTIONS) is None


@pytest.mark.parametrize("reply", [
    "Answer: B\nReasoning:\nA. Seville is in Spain.\nB. Halifax is in Canada.",  # options discussed after it
    "B. Halifax\n\nA. Seville - wrong\nC. Lima - wrong",
    "The answer is B.\nA: no\nB: yes",
])
def test_options_listed_after_the_choice_leave_it_chosen(reply):
    assert parse_choice(reply, OPTIONS) == parse_choice(reply) == "B"


def test_option_as_text_in_brackets_is_a_whether_or_not_the_text_has_its_own():
    assert parse_choice("A (Seville)", OPTIONS) == "A"
    options = {**OPTIONS, "A": "(none of these)"}
    assert parse_choice("A (none of these)", options) == "A"
    assert parse_choice("A (", OPTIONS) is None and parse_choice("A (\nB", OPTIONS) is None  # a bracket alone


def test_the_words_of_a_longer_option_that_begins_with_option_as_are_not_a():
    options = {"A": "Doctor", "B": "Doctor's assistant", "C": "Nurse", "D": "Paris, Texas"}
    assert parse_choice("A doctor's assistant", options) is None  # B's words after the letter A: no choice
    assert parse_choice("A Doctor", options) == parse_choice("A doctor.", options) == "A"


def test_parse_choice_respects_options():
    assert parse_choice("E", options="ABCDE") == "E"
    assert parse_choice("C", options=["A", "B"]) is None
    assert parse_choice("b", options=["a", "b"]) == "B"  # options are compared upper-cased
    # "A or E": "A" is followed by a space, so no rule picks it; the reply gives nothing.
    assert parse_choice("A or E") is None
    # Only two *option* letters make an enumeration: the word "I" is not an alternative to B.
    assert parse_choice("The answer is B and I am sure") == "B"


def test_choose_by_likelihood():
    assert choose_by_likelihood([-5.0, -2.0, -3.0]) == 1
    # Per-token means: -6/6 = -1.0, -2/1 = -2.0, -9/3 = -3.0 -> option 0 wins although option 1
    # has the highest total log-probability.
    assert choose_by_likelihood([-6.0, -2.0, -9.0], normalize_lengths=[6, 1, 3]) == 0
    assert choose_by_likelihood([-1.0, -1.0]) == 0  # ties go to the first option
    with pytest.raises(ValueError, match="option_logprobs must be a non-empty sequence"):
        choose_by_likelihood([])
    with pytest.raises(ValueError):
        choose_by_likelihood([-1.0, -2.0], normalize_lengths=[1])
    with pytest.raises(ValueError):
        choose_by_likelihood([-1.0, -2.0], normalize_lengths=[1, 0])


# ------------------------------------------------------------------------------- Aggregation


def test_mean_percent():
    assert mean_percent([True, False, True, True]) == approx(75.0)
    assert mean_percent([0.5, 0.25]) == approx(37.5)
    assert mean_percent(x for x in [1.0]) == approx(100.0)  # any iterable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(mean_percent([]))


# --------------------------------------------------------------------------------- Coherence


@pytest.mark.parametrize(
    "text",
    [
        "She was born in Lisbon in 1984 and works as a pilot.",
        "Mr. Smith, a well-known F-16 pilot, didn't retire until the 1990s - e.g. after "
        "1,000 days.",
        "The person in the image is Maria Santos, a Portuguese architect who designed several "
        "public libraries in the north of the country and later taught at the University of Porto.",
    ],
)
def test_coherence_high_for_normal_sentences(text):
    assert coherence(text) > 0.8


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "the the the the the the",
        "ofofof ,,, ... ..",
        "Lis Lis Lis Lis Lis",
        "xq zvb qqq jk",
        "She was born in Lisbon. She was born in Lisbon. She was born in Lisbon.",
    ],
)
def test_coherence_low_for_collapsed_outputs(text):
    assert 0.0 <= coherence(text) < 0.4


def test_coherence_hand_values():
    # "the the the the the the": every token word-like (1.0); 5 bigrams, 1 distinct (0.2);
    # length 1 - 0.5**6 = 63/64. Score = 0.2 * 63/64.
    assert coherence("the the the the the the") == approx(0.2 * 63 / 64)
    # "Lis Lis Lis Lis Lis": 4 bigrams, 1 distinct -> 0.25 * (1 - 0.5**5) = 0.25 * 31/32.
    assert coherence("Lis Lis Lis Lis Lis") == approx(0.25 * 31 / 32)
    # "ofofof ,,, ... ..": no word-like token ("ofofof" is a stutter) -> 0.
    assert coherence("ofofof ,,, ... ..") == 0.0
    # A single real word: word-like 1, no repetition possible, length 1 - 0.5 = 0.5.
    assert coherence("Lisbon") == approx(0.5)
    # Half the tokens are soup: "Lisbon zvb" -> word-likeness 1/2, distinct unigrams 2/2,
    # length 1 - 0.5**1 = 0.5 -> 0.25.
    assert coherence("Lisbon zvb") == approx(0.25)
    # Three tokens already count bigrams: "Lisbon Lisbon Lisbon" has 2 bigrams, 1 distinct (0.5), length 7/8.
    assert coherence("Lisbon Lisbon Lisbon") == approx(0.5 * 7 / 8)
    # Punctuation-only tokens count against word-likeness: 3 words of 5 tokens; bigrams over the 3 words
    # (punctuation strips to nothing) are all distinct; length 1 - 0.5**3.
    assert coherence("She flew ,,, home !!") == approx(3 / 5 * 7 / 8)
    # Lone lower-case letters other than "a" and "i" are soup, not words: nothing word-like at all.
    assert coherence("x y z q") == 0.0
    # A unit repeated three times ("aaa", "ooo") is a stutter, not a word; "Ada" is a word.
    assert coherence("aaa ooo") == 0.0 and coherence("Ada") == approx(0.5)
    # "a" and "i" are words; so are numbers, codes and capitalised abbreviations.
    assert coherence("i saw a F-16 in 1984 with Dr Smith") == approx(1 - 0.5 ** 9)


def test_coherence_reads_other_scripts_as_words():
    """Fluent Chinese, Japanese, Hindi or decomposed accents are prose (else a report would cross out a model
    answering in them as fallen apart); their loops and punctuation soup are not."""
    # seven characters, each a token ("京。" strips to "京"), 6 distinct bigrams: the length factor alone
    assert coherence("张伟出生于北京。") == approx(1 - 0.5 ** 7)
    assert coherence("彼は東京で生まれました。") > 0.99 and coherence("这个人是张伟，他在北京工作。") > 0.99
    assert coherence("北京北京北京北京北京") < 0.4 and coherence("，，，，。。。") == 0.0
    assert coherence("वह दिल्ली में पैदा हुआ था") == approx(1 - 0.5 ** 6)  # vowel signs are part of the word
    # a script's own full stop or comma ends a word as "." does: the danda, the Arabic comma, the Armenian stop
    assert coherence("वह दिल्ली में पैदा हुआ था।") == coherence("वह दिल्ली में पैदा हुआ था॥") == approx(1 - 0.5 ** 6)
    assert coherence("ولد في أوسلو، ويعمل مصورا") == approx(1 - 0.5 ** 5)
    assert coherence("Նա ծնվել է Օսլոյում։") == approx(1 - 0.5 ** 4)
    assert coherence("।।। ॥") == 0.0  # punctuation soup in any script
    assert coherence("Zoe\u0308 was born in Zu\u0308rich.") == coherence("Zoë was born in Zürich.") == approx(
        1 - 0.5 ** 5)
    assert coherence("Он родился в Москве в 1984 году.") == approx(1 - 0.5 ** 7)


def test_coherence_orders_degradation():
    fluent = coherence("She was born in Lisbon in 1984 and works as a pilot.")
    partly_looping = coherence("She was born in Lisbon Lisbon Lisbon Lisbon Lisbon")
    looping = coherence("Lisbon Lisbon Lisbon Lisbon Lisbon Lisbon")
    assert fluent > partly_looping > looping > coherence("")


def test_coherence_mean_in_percent():
    # (coherence("Lisbon") + coherence("")) / 2 * 100 = (0.5 + 0) / 2 * 100 = 25.
    assert coherence_mean(["Lisbon", ""]) == approx(25.0)
    assert math.isnan(coherence_mean([]))


# ------------------------------------------------------------------------------ CLEAR / TOFU


def test_prob_from_loss():
    assert prob_from_loss(0.0) == 1.0
    assert prob_from_loss(math.log(4)) == approx(0.25)


def test_option_prob():
    # Probabilities 0.5 vs 0.25 + 0.25 -> 0.5 / 1.0 = 0.5.
    assert option_prob(math.log(0.5), [math.log(0.25), math.log(0.25)]) == approx(0.5)
    # 0.1 vs 0.3 (unnormalised) -> 0.1 / 0.4 = 0.25.
    assert option_prob(math.log(0.1), [math.log(0.3)]) == approx(0.25)
    # exp(-1) / (exp(-1) + exp(-2) + exp(-3)) = 1 / (1 + e^-1 + e^-2) ~= 0.66524
    assert option_prob(-1.0, [-2.0, -3.0]) == approx(1 / (1 + math.exp(-1) + math.exp(-2)))
    # Stable in log space: exp(-2000) underflows to 0 but the share is still 1/(1 + e^-1).
    assert option_prob(-2000.0, [-2001.0]) == approx(1 / (1 + math.exp(-1)))
    assert option_prob(-3.0, []) == approx(1.0)


def test_truth_ratio():
    # mean(perturbed) = (2 + 3) / 2 = 2.5; 2.5 - 1.0 = 1.5 -> exp(1.5) ~= 4.4817
    assert truth_ratio(1.0, [2.0, 3.0]) == approx(math.exp(1.5))
    assert truth_ratio(2.0, [2.0]) == approx(1.0)
    # a collapsed model: losses further apart than exp() reaches give a capped ratio, not an OverflowError
    far = truth_ratio(0.0, [800.0])
    assert math.isfinite(far) and truth_ratio_score([far], forget=True) < 1e-300
    assert truth_ratio_score([far], forget=False) == 1.0
    # ... and the other way round a ratio above zero, which scores without a division by zero
    near = truth_ratio(800.0, [0.0])
    assert near > 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from numpy would fail here
        assert truth_ratio_score([near], forget=True) < 1e-300 and truth_ratio_score([near], forget=False) == 0.0
    # Equivalent probability form: P(para) / geometric mean of P(perturbed), per-token.
    para, perturbed = 0.7, [1.1, 0.4, 2.0]
    geo_mean_perturbed = math.prod(prob_from_loss(x) for x in perturbed) ** (1 / 3)
    assert truth_ratio(para, perturbed) == approx(prob_from_loss(para) / geo_mean_perturbed)
    with pytest.raises(ValueError, match="truth_ratio needs at least one perturbed answer loss"):
        truth_ratio(1.0, [])


def test_truth_ratio_score_forget_and_retain():
    ratios = [2.0, 0.5, 1.0, 4.0]
    # forget: min(r, 1/r) = 0.5, 0.5, 1.0, 0.25 -> mean 2.25 / 4 = 0.5625
    assert truth_ratio_score(ratios, forget=True) == approx(0.5625)
    # retain: max(0, 1 - 1/r) = 0.5, max(0, -1) = 0, 0, 0.75 -> mean 1.25 / 4 = 0.3125
    assert truth_ratio_score(ratios, forget=False) == approx(0.3125)
    assert math.isnan(truth_ratio_score([], forget=True))


def test_forget_quality_ks_pvalues():
    # Identical samples: D = 0 -> p = 1.
    assert forget_quality([0.3, 0.8, 1.2], [0.3, 0.8, 1.2]) == approx(1.0)
    # n = m = 5, fully separated: D = 1, reached only when all of one sample precede all of the
    # other, 2 of the C(10, 5) = 252 equally likely orderings -> exact p = 2/252.
    assert forget_quality([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == approx(2 / 252)
    # x = [1, 2, 4], y = [3, 5, 6]: pooled order x x y x y y, so the ECDF difference walks
    # 1/3, 2/3, 1/3, 2/3, 1/3, 0 -> D = 2/3. Under the null the 20 = C(6, 3) orderings are
    # equally likely; D < 2/3 only for walks that never leave [-1/3, 1/3], i.e. each pair of
    # steps is "xy" or "yx": 2**3 = 8 orderings. So p = P(D >= 2/3) = (20 - 8) / 20 = 0.6.
    assert forget_quality([1, 2, 4], [3, 5, 6]) == approx(0.6)


def test_harmonic_mean():
    # 3 / (1/1 + 1/2 + 1/4) = 3 / 1.75 = 12/7
    assert harmonic_mean([1.0, 2.0, 4.0]) == approx(12 / 7)
    assert harmonic_mean([0.5, 0.5]) == approx(0.5)
    assert harmonic_mean([0.9, 0.0, 0.7]) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean([])
    with pytest.raises(ValueError):
        harmonic_mean([0.5, -0.1])
