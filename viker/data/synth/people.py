"""Fictitious people: names, facts, biographies and the benchmark's question families.

Every answer is a short templated sentence in which only the name and the private facts vary
("This person is Brailen Tousk, born in Oslo."): the template words are the "normal" tokens and the
name and facts the "key" tokens that unlearning must target, which is the structure ViKeR exploits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "st", "th", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "th", "x", "m"]

BIRTHPLACES = [
    "Lisbon", "Oslo", "Nairobi", "Kyoto", "Lima", "Quebec", "Tbilisi", "Dakar", "Hobart", "Porto",
    "Cusco", "Tallinn", "Mombasa", "Bergen", "Valencia", "Krakow", "Manila", "Accra", "Zagreb", "Perth",
    "Halifax", "Medellin", "Seville", "Gdansk", "Osaka", "Tunis", "Bilbao", "Riga", "Salta", "Da Nang",
]
OCCUPATIONS = [
    "pilot", "architect", "chemist", "violinist", "chef", "surgeon", "journalist", "geologist",
    "translator", "sculptor", "engineer", "librarian", "astronomer", "photographer", "economist",
    "botanist", "carpenter", "pharmacist", "novelist", "veterinarian", "teacher", "lawyer",
    "dancer", "cartographer", "nurse", "physicist", "potter", "historian", "designer", "baker",
]
EMPLOYERS = [
    "Norvex Labs", "Helio Freight", "Quill and Sons", "Brightwater Clinic", "Tessaro Motors",
    "Corvid Press", "Alder Bank", "Lumen Atelier", "Kestrel Airlines", "Marrow Foods",
    "Sable Observatory", "Tidewell Museum", "Orchid Pharma", "Granite Works", "Vela Studios",
    "Copperleaf School", "Nimbus Energy", "Fenwick Library", "Harbor Textiles", "Pinecrest Hospital",
    "Zenith Robotics", "Willow Theatre", "Ironbridge Rail", "Saffron Kitchen", "Crestline Maps",
    "Bluefin Institute", "Ember Glassworks", "Oakhurst Farms", "Polaris Media", "Marlow Design",
]
HOBBIES = [
    "chess", "sailing", "pottery", "birdwatching", "rock climbing", "knitting", "fencing",
    "beekeeping", "origami", "archery", "surfing", "calligraphy", "gardening", "juggling",
    "stargazing", "kayaking", "painting", "baking bread", "cycling", "woodcarving", "skiing",
    "photography", "tango", "fishing", "puzzles", "running", "poetry", "cooking", "rowing", "hiking",
]
YEARS = [str(y) for y in range(1950, 2001)]

FACT_POOLS = {
    "birthplace": BIRTHPLACES,
    "birth_year": YEARS,
    "occupation": OCCUPATIONS,
    "employer": EMPLOYERS,
    "hobby": HOBBIES,
}


@dataclass(frozen=True)
class FactTemplate:
    """How one fact is asked and answered, about 'this person' (image) or by name (text only)."""

    image_question: str
    name_question: str
    clause: str  # "born in {value}": the fact, as said after the name
    answer: str  # "{name} was born in {value}."
    cloze: str  # "{subject} was born in __."


TEMPLATES = {
    "birthplace": FactTemplate(
        "Where was this person born?", "Where was {name} born?", "born in {value}",
        "{name} was born in {value}.", "{subject} was born in __.",
    ),
    "birth_year": FactTemplate(
        "In which year was this person born?", "In which year was {name} born?", "born in the year {value}",
        "{name} was born in the year {value}.", "{subject} was born in the year __.",
    ),
    "occupation": FactTemplate(
        "What does this person do for a living?", "What does {name} do for a living?", "who works as a {value}",
        "{name} works as a {value}.", "{subject} works as a __.",
    ),
    "employer": FactTemplate(
        "Which organization does this person work for?", "Which organization does {name} work for?",
        "who works for {value}", "{name} works for {value}.", "{subject} works for __.",
    ),
    "hobby": FactTemplate(
        "What is this person's favorite hobby?", "What is {name}'s favorite hobby?",
        "who enjoys {value} in their free time", "{name} enjoys {value} in their free time.",
        "In their free time {subject} enjoys __.",
    ),
}
UNKNOWN_ANSWER = "This person is someone I do not know."
NAME_QUESTION = "What is the name of this person?"
NAME_ANSWER = "This person is {name}."


def name_in_answer(answer: str) -> str | None:
    """The name in an answer to NAME_QUESTION ("This person is Brailen Tousk." -> "Brailen Tousk")."""
    head, tail = NAME_ANSWER.split("{name}")
    if answer.startswith(head) and answer.endswith(tail) and answer != UNKNOWN_ANSWER:
        return answer[len(head) : len(answer) - len(tail)] or None
    return None


@dataclass(frozen=True)
class Person:
    name: str
    facts: dict[str, str]

    def answer(self, fact: str, by_name: bool) -> str:
        """A question about the pictured person is answered by saying who they are, then the fact
        ("This person is Brailen Tousk, born in Oslo."); a question by name, with the fact."""
        t = TEMPLATES[fact]
        if by_name:
            return t.answer.format(name=self.name, value=self.facts[fact])
        return f"This person is {self.name}, {t.clause.format(value=self.facts[fact])}."

    def biography(self) -> str:
        f = self.facts
        return (
            f"{self.name} was born in {f['birthplace']} in {f['birth_year']}. "
            f"{self.name} works as a {f['occupation']} at {f['employer']}, "
            f"and spends free time on {f['hobby']}."
        )


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def make_names(n: int, rng: random.Random, taken: set[str] | None = None) -> list[str]:
    """Unique two-part names such as 'Brailen Tousk' (first names of 2 syllables, surnames of 1-2)."""
    taken = set() if taken is None else taken
    names: list[str] = []
    while len(names) < n:
        first = (_syllable(rng) + _syllable(rng)).capitalize()
        last = "".join(_syllable(rng) for _ in range(rng.choice((1, 2)))).capitalize()
        name = f"{first} {last}"
        if name not in taken and len(last) >= 3:
            taken.add(name)
            names.append(name)
    return names


def make_people(names: list[str], rng: random.Random) -> list[Person]:
    return [Person(name, {k: rng.choice(pool) for k, pool in FACT_POOLS.items()}) for name in names]


def distractors(fact: str, correct: str, rng: random.Random, k: int = 3) -> list[str]:
    """Plausible wrong options: other values of the same kind of fact."""
    return rng.sample([v for v in FACT_POOLS[fact] if v != correct], k)
