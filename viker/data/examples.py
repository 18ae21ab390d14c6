"""From benchmark rows to (image?, prompt, answer) examples: the collator's input."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from viker.data.loader import has_config, load_finetune, load_profiles
from viker.data.schema import PRETRAIN_CONFIG, Example, FinetuneRecord, Profile, listed_ids
from viker.errors import VikerError
from viker.prompts import cloze_prompt, generation_prompt


def generation_examples(profiles: Iterable[Profile]) -> list[Example]:
    """The generation questions, each with the person's image when its Type is Image_Textual."""
    return [
        Example(generation_prompt(q.question), q.answer, p.image if q.with_image else None, p.id, "generation",
                p.photo if q.with_image else None)
        for p in profiles
        for q in p.generation
    ]


def cloze_examples(profiles: Iterable[Profile]) -> list[Example]:
    return [
        Example(cloze_prompt(q.question), q.answer, p.image if q.with_image else None, p.id, "cloze",
                p.photo if q.with_image else None)
        for p in profiles
        for q in p.cloze
    ]


def pure_text_questions(profiles: Iterable[Profile]) -> dict[bytes, set[str]]:
    """For each person's image, the questions the benchmark asks about them without an image."""
    asked: dict[bytes, set[str]] = {}
    for p in profiles:
        texts = {q.question for q in (*p.generation, *p.mc) if not q.with_image}
        asked.setdefault(p.image, set()).update(texts)
    return asked


def pair_examples(records: Iterable[FinetuneRecord], text_only: dict[bytes, set[str]]) -> list[Example]:
    """ft_Data-style pairs as examples. A pair is learned with its row's image, except a question the
    benchmark itself asks as Pure_Text about that person: that one is learned as it is asked, text only."""
    return [
        Example(generation_prompt(q.question), q.answer,
                None if q.question in text_only.get(record.image, ()) else record.image, "", "ft")
        for record in records
        for q in record.qa
    ]


FINETUNE_SETS = ("all", "ft_Data")


def finetune_examples(data_dir: str | Path, sets: str = "all") -> list[Example]:
    """What the vanilla model learns. ``all``: the benchmark's ft_Data pairs, the generation questions
    of every fictitious and every Retain_Set person (with or without the image as their Type says),
    and, when the folder has one, the pretrain_Data pairs (what a pretrained model would know of the
    Retain_Set people): a model trained from scratch needs all of it. ``ft_Data``: MLLMU-Bench's own
    vanilla finetune, the ft_Data pairs alone (a pretrained model already knows the Retain_Set people,
    and the evaluation's questions stay unseen). Duplicates are kept once."""
    if sets not in FINETUNE_SETS:
        raise VikerError(f"--train-on {sets}: choose from {', '.join(FINETUNE_SETS)}")
    profiles = load_profiles(data_dir, "Full_Set") + load_profiles(data_dir, "Retain_Set")
    records = load_finetune(data_dir)
    if sets == "ft_Data":
        return unique_examples(pair_examples(records, pure_text_questions(profiles)))
    if has_config(data_dir, PRETRAIN_CONFIG):
        records += load_finetune(data_dir, PRETRAIN_CONFIG)
    return unique_examples(pair_examples(records, pure_text_questions(profiles)) + generation_examples(profiles))


def unlearning_examples(data_dir: str | Path, split: str, profiles: list[Profile] | None = None,
                        records: list[FinetuneRecord] | None = None, learned: str = "all") -> list[Example]:
    """What the vanilla model learned about the people of ``split`` (a forget_* or retain_* config), as
    ``learned`` says it was finetuned (:func:`finetune_examples`): ``all``, their generation questions and the
    ft_Data pairs whose image is one of theirs; ``ft_Data``, those pairs alone (MLLMU-Bench's protocol: the
    generation questions are what the evaluation asks, never trained on). Pass ``profiles`` and ``records``
    when they are already loaded."""
    if learned not in FINETUNE_SETS:
        raise VikerError(f"--train-on {learned}: choose from {', '.join(FINETUNE_SETS)}")
    profiles = load_profiles(data_dir, split) if profiles is None else profiles
    pairs = ft_pairs(profiles, load_finetune(data_dir) if records is None else records)
    return pairs if learned == "ft_Data" else unique_examples(generation_examples(profiles) + pairs)


def ft_pairs(profiles: list[Profile], records: list[FinetuneRecord]) -> list[Example]:
    """The ft_Data pairs of ``profiles``' people (a record is a person's by its image), each once."""
    images = {p.image for p in profiles}
    return unique_examples(pair_examples([r for r in records if r.image in images], pure_text_questions(profiles)))


def without_pairs(profiles: list[Profile], records: list[FinetuneRecord]) -> list[str]:
    """The IDs of ``profiles``' people no ft_Data record belongs to (by its image's bytes): a copy whose images
    were re-encoded (the same pixels saved anew) matches nobody."""
    images = {r.image for r in records}
    return [p.id for p in profiles if p.image not in images]


def unpaired_warnings(groups: list[tuple[str, list[Profile], str]], records: list[FinetuneRecord],
                      learned: str) -> list[str]:
    """What to say of the people no ft_Data pair belongs to, for each group ``(config, people, what is done to
    their examples: unlearned, retained, shown)`` whose examples are those ``learned`` says
    (:func:`unlearning_examples`): one sentence where no pair belongs to anyone (every image re-encoded), else
    one per group naming its people. Nothing where ft_Data has no pairs."""
    if not records:
        return []
    unpaired = [(config, without_pairs(people, records), people, done) for config, people, done in groups]
    what = "nothing of them is" if learned == "ft_Data" else "only their generation questions are"
    if all(len(ids) == len(people) for _, ids, people, _ in unpaired):
        return [f"no ft_Data pair has the image of a {' or '.join(c for c, *_ in unpaired)} person, so {what} "
                f"{' and '.join(done for *_, done in unpaired)} (were the images re-encoded?)"]
    return [f"{len(ids)} {config} {'person has' if len(ids) == 1 else 'people have'} no ft_Data pair with their "
            f"image ({listed_ids(ids)}), so {what} {done}: a pair is a person's by its image's bytes (were those "
            "images re-encoded?)" for config, ids, _, done in unpaired if ids]


def unique_examples(examples: list[Example]) -> list[Example]:
    seen, unique = set(), []
    for ex in examples:
        key = (ex.question, ex.answer, ex.image)
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    return unique
