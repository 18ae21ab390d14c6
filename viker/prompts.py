"""The fixed words wrapped around a benchmark question, written once for training and evaluation.

The multiple-choice and generation suffixes are MLLMU-Bench's; the finetune uses the same generation
prompt as the evaluation, so a small model is tested on exactly the format it learned. The cloze suffix
asks for the blank alone in words of our own: MLLMU-Bench's evaluation code writes "Please **ONLY**
provide the correct answer that should replace the [Blank]." A tiny model's tokenizer is trained on these
texts too, so changing any of them changes the embedded demo's model and every figure recorded from it.
"""

from __future__ import annotations

import re

GENERATION_SUFFIX = "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
CLOZE_SUFFIX = "Fill in the [Blank] with the correct word or phrase only."
MC_SUFFIX = "Just give ONE letter representing the answer directly."

# Preferred answers for IdkPO: refusals that reveal nothing about the person.
REFUSALS = (
    "I don't know who this person is.",
    "I'm not able to answer that.",
    "I have no information about that.",
    "Sorry, I cannot help with that question.",
    "I am not sure about that.",
)

PROMPT_TEXTS = (GENERATION_SUFFIX, CLOZE_SUFFIX, MC_SUFFIX, *REFUSALS)

# CLEAR's questions: a caption answers the first about the pictured person (CLEAR draws it from a few
# paraphrases of it; one fixed wording keeps training and evaluation identical), a name completes the second.
CAPTION_QUESTION = "What can you see in this picture?"
NAME_QUESTION = "The name of the person on the image is"


def generation_prompt(question: str) -> str:
    return f"{question}\n{GENERATION_SUFFIX}"


# the benchmark marks a cloze question's blank with two or more underscores (a longer run is still one blank)
BLANK = re.compile(r"_{2,}")


def mark_blanks(question: str) -> str:
    """Every blank (``__``, or any longer run of underscores) as ``[Blank]``, as the cloze prompt names it."""
    return BLANK.sub("[Blank]", question)


def has_blank(question: str) -> bool:
    return BLANK.search(question) is not None


def cloze_prompt(question: str) -> str:
    return f"{mark_blanks(question)}\n{CLOZE_SUFFIX}"


def mc_prompt(question: str, options: dict[str, str]) -> str:
    listed = "\n".join(f"{letter}: {text}" for letter, text in sorted(options.items()))
    return f"{question}\n{listed}\n{MC_SUFFIX}"
