"""``viker keytokens``: which answer tokens ViKeR treats as private.

Each forget answer is shown with its tokens shaded by the reference entropy ``H(R̂_i)`` (what the
frozen model is unsure of once the image shows someone else) and key tokens (``H > ε``) outlined; each
token's tooltip also gives R̂_i(y_i), the reference probability of the true token, which decides where
ViKeR with λ > 1 stops (a token with R̂(y) > 1/λ has a resting point). Writes an HTML page and a PNG of
the first answers, e.g. for a README.
"""

from __future__ import annotations

import html
import sys
import textwrap
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from viker.collate import Collator
from viker.data.examples import unlearning_examples, unpaired_warnings
from viker.data.loader import has_config, load_finetune, load_profiles, retain_profiles
from viker.data.schema import RETAIN_OF, Example, check_forget_split
from viker.errors import VikerError, require
from viker.methods.base import FrozenReference
from viker.methods.losses import IGNORE, entropy
from viker.methods.reference import (
    default_cache_dir,
    default_topk,
    given_cache_dir,
    pool_owners,
    reference_distributions,
    reference_pool,
)
from viker.presets import MIXED_PRECISION
from viker.progress import bars_as_asked
from viker.runs import (
    as_recorded,
    check_writable,
    other_benchmark,
    read_json,
    runs_behind,
    write_config,
    written_together,
)


@dataclass
class TokenEntropy:
    question: str
    has_image: bool
    tokens: list[str]
    entropy: list[float]
    ref_prob: list[float]  # R̂_i(y_i): the reference probability of each true answer token


def group_texts(tok, ids: list[int], groups: list[list[int]]) -> list[str]:
    """The text of each group of ``ids`` as it reads in the whole answer. Each group is the difference between
    decoding the answer up to its end and up to its start: decoded alone, a token can lose its leading space
    (SentencePiece tokenizers strip it from the start of a text, so "▁is" alone reads "is")."""
    texts, before = [], ""
    for g in groups:
        upto = tok.decode(ids[:g[-1] + 1])
        texts.append(upto[len(before):] if upto.startswith(before) else tok.decode([ids[j] for j in g]))
        before = upto
    return texts


def characters(tok, ids: list[int]) -> list[list[int]]:
    """``ids`` in groups that each decode to whole characters: a character that byte-level tokens split
    (an accented letter, a CJK character) is one group, not several replacement characters."""
    groups: list[list[int]] = []
    open_ = False  # whether the last group still ends inside a character
    for i, t in enumerate(ids):
        if open_ and len(groups[-1]) < 4:  # a UTF-8 character has at most 4 bytes
            groups[-1].append(i)
        else:
            groups.append([i])
        open_ = tok.decode([ids[j] for j in groups[-1]]).endswith("\ufffd")
    return groups


@dataclass
class ForgetAnswers:
    """What a key-token page reads from the benchmark: the forget answers, and the references drawn for them."""

    examples: list[Example]
    pool: list[bytes]
    owners: dict[bytes, str] | None


def forget_answers(data_dir, forget: str, refs: str = "people", benchmark: str = "mllmu",
                   learned: str = "all") -> ForgetAnswers:
    """The split's answers and reference pool, read (and refused, in the words of ``unlearn``) before any
    model is loaded: the forget examples a ViKeR run on that benchmark trains on, in its order (MLLMU-Bench:
    as ``learned`` says the model was finetuned, :func:`viker.data.examples.unlearning_examples`)."""
    if benchmark == "clear":
        from viker.data.clear import unlearning_data

        examples = unlearning_data(data_dir, forget)[0]["forget"]
    else:
        check_forget_split(forget)
        people, records = load_profiles(data_dir, forget), load_finetune(data_dir)
        if has_config(data_dir, RETAIN_OF[forget]):  # whose pairs are whose, as unlearn refuses it
            retain_profiles(data_dir, forget, people)
        examples = unlearning_examples(data_dir, forget, people, records, learned)
        for warning in unpaired_warnings([(forget, people, "shown")], records, learned):  # as unlearn says it
            print(f"warning: {warning}", file=sys.stderr)
    require(examples, "--forget", forget, f"has no answers in {data_dir}")
    return ForgetAnswers(examples, reference_pool(refs, data_dir, forget), pool_owners(refs, data_dir, forget))


AUTOCAST = tuple(m for m in MIXED_PRECISION if m != "no")  # the autocasts a run's reference pass may run under


def answer_token_entropies(model, processor, answers: ForgetAnswers, k: int = 5, seed: int = 0,
                           cache_dir: Path | None = None, progress: bool = True,
                           mixed_precision: str | None = None) -> list[TokenEntropy]:
    """Each forget answer's tokens with their reference entropy H(R̂_i). Uses (and fills) the same
    cache as a ViKeR run with the same model, data, references, k, seed and ``mixed_precision`` (bf16, fp16:
    R̂ computed under that autocast, as such a run computes it; None or "no": without). A character split over
    several tokens is shown as one, with their largest entropy and smallest R̂(y). The end-of-turn token
    that closes every answer is left out: it is no part of what the answer says. A CAGUL model is read
    without its modules, as CAGUL's own training reads it (its model stays frozen)."""
    from viker.model import DTYPES, check_mixed_precision
    from viker.model.cagul import CagulModel

    if isinstance(model, CagulModel):
        model = model.base
    examples = answers.examples
    device_type = next(model.parameters()).device.type
    check_mixed_precision(mixed_precision, device_type)
    precision = mixed_precision if mixed_precision in AUTOCAST else None
    autocast = (lambda: torch.autocast(device_type, dtype=DTYPES[precision])) if precision else nullcontext
    reference = FrozenReference(model, separate=model, autocast=autocast, precision=precision)
    dists, _ = reference_distributions(reference, processor, examples, answers.pool, k, seed, default_topk(model),
                                       cache_dir=cache_dir, progress=progress, owners=answers.owners)
    collate = Collator(processor)
    tok, end = collate.tokenizer, collate.end_of_turn_id()
    out = []
    for i, ex in enumerate(examples):
        # the answer's tokens do not depend on the image, so skip image processing here
        labels = collate([replace(ex, image=None)])["labels"][0]
        ids = labels[labels != IGNORE].tolist()  # the answer tokens, in the order of the cached rows that predict them
        rows = dists.rows([i])
        if rows.shape[0] != len(ids):
            raise VikerError(f"answer {i}: {len(ids)} answer tokens without the image, {rows.shape[0]} reference "
                             "rows with it (the chat template splits the answer otherwise); delete the cache")
        h, p = entropy(rows).tolist(), rows[torch.arange(len(ids)), ids].tolist()
        if ids and ids[-1] == end:
            ids = ids[:-1]
        groups = characters(tok, ids)
        out.append(TokenEntropy(ex.question.split("\n")[0], ex.image is not None, group_texts(tok, ids, groups),
                                *per_character(groups, h, p)))
    return out


def per_character(groups: list[list[int]], entropies: list[float], probs: list[float]) -> tuple[list, list]:
    """Each character's entropy and R̂(y), from those of the tokens it is split over (``groups``: their positions):
    the largest entropy and the smallest R̂(y), so that a character is as uncertain as its most uncertain piece."""
    return [max(entropies[j] for j in g) for g in groups], [min(probs[j] for j in g) for g in groups]


GONE = "#1f4e9e"  # the underline of a token a ViKeR run forgets, on the page and the PNG


def _color(h: float, h_max: float) -> str:
    t = min(1.0, h / h_max) if h_max > 0 else 0.0
    r, g, b = 255, int(255 - 155 * t), int(255 - 205 * t)  # white -> orange-red
    return f"rgb({r},{g},{b})"


def ref_prob_summary(rows: list[TokenEntropy]) -> str:
    """How the answer tokens' reference probabilities R̂(y) fall, in the terms that choose ViKeR's λ."""
    probs = [p for r in rows for p in r.ref_prob]
    if not probs:
        return "No answer tokens."
    low, high = (100.0 * sum(f(p) for p in probs) / len(probs) for f in (lambda p: p < 0.01, lambda p: p > 0.9))
    return (f"Reference probability of the true token, R̂(y): {low:.1f}% of the answer tokens below 1%, "
            f"{high:.1f}% above 90%, {100 - low - high:.1f}% in between. With ViKeR's λ above 1, a token with "
            "R̂(y) > 1/λ has a resting point (it is held) and the others are forgotten: any λ from 1.2 to 100 "
            "holds the tokens above 90% and forgets those below 1%, and only the tokens in between depend on "
            "which.")


def forgotten(p: float, lam: float | None) -> bool:
    """Whether ViKeR at ``lam`` forgets a token whose reference probability is ``p``: above λ = 1 a token
    with λ·R̂(y) ≥ 1 has a resting point its loss holds it at; at λ ≤ 1 none has, and every token is ascended.
    This is ViKeR's default loss (KL regulariser, with the ascent term); other regularisers rest elsewhere,
    and without the ascent term (``--ablation no_ga``) every token rests."""
    return lam is not None and (lam <= 1 or lam * p < 1)


def _lam_sentence(rows: list[TokenEntropy], lam: float | None) -> str:
    if lam is None:
        return ("Which of them a ViKeR run forgets depends on its λ as well (below; --lam underlines them).")
    n = sum(forgotten(p, lam) for r in rows for p in r.ref_prob)
    if lam == 0:
        return "At λ = 0 ViKeR is plain gradient ascent: it ascends every answer token alike, so all are underlined."
    if lam <= 1:
        return (f"At λ = {lam:g} no token has a resting point: ViKeR ascends every answer token, the key tokens "
                "hardest, so all are underlined.")
    return (f"<u>Underlined</u>: the {n} tokens a ViKeR run at λ = {lam:g} forgets (R̂(y) &lt; 1/λ = {1 / lam:.3g}); "
            "it holds each of the others at a resting point (with its default KL regulariser and ascent term).")


def largest_entropy(rows: list[TokenEntropy]) -> float:
    """The entropy shaded darkest, the same on the page and on the PNG (which shows only the first answers)."""
    return max((max(r.entropy) for r in rows if r.entropy), default=1.0)


def key_counts(rows: list[TokenEntropy], epsilon: float) -> tuple[int, int]:
    """The key tokens (H > ``epsilon``) of ``rows``' answers, and all their tokens."""
    return sum(h > epsilon for r in rows for h in r.entropy), sum(len(r.entropy) for r in rows)


def image_key_counts(rows: list[TokenEntropy], epsilon: float) -> tuple[int, int] | None:
    """:func:`key_counts` of the answers to image questions alone, whose shading is R̂ proper (a question asked by
    name has no image to replace); None where they are all the answers, or none of them (nothing to count apart)."""
    pictured = [r for r in rows if r.has_image]
    return key_counts(pictured, epsilon) if pictured and len(pictured) < len(rows) else None


PAGE_MARK = "<p>Each answer token is shaded by the entropy H(R̂)"  # in every page write_html writes


def write_html(rows: list[TokenEntropy], path: Path, epsilon: float, title: str, lam: float | None = None,
               topk: int | None = None, settings: str = "", model: str = "the frozen model") -> None:
    """``topk``: the reference distributions were stored as their ``topk`` largest probabilities, the rest
    spread evenly over the other tokens (a large vocabulary); H is then a little above the frozen model's.
    ``settings``: what made the page (:func:`page_settings`), said under its title. ``model``: whose
    distributions they are, as the page names it (an unlearning run's own, where one is given)."""
    h_max = largest_entropy(rows)
    stored = "" if topk is None else (
        f" R̂ is stored as its {topk} largest probabilities with the rest spread evenly, so H is slightly above "
        "that of the full distribution.")
    n_key, n_all = key_counts(rows, epsilon)
    apart = image_key_counts(rows, epsilon)
    by_image = f" ({apart[0]} of {apart[1]} in the answers to image questions)" if apart else ""
    lines = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".q{color:#555;font-size:.85em;margin-top:1em}.a span{font-family:monospace;padding:2px 1px;"
        f"white-space:pre-wrap}}.key{{outline:2px solid #b30000}}.named .key{{outline-style:dashed}}"
        f".gone{{text-decoration:underline 3px {GONE};"
        "text-underline-offset:4px}</style>",
        f"<h1>{html.escape(title)}</h1>",
        *([f"<p class='q'>{html.escape(settings)}</p>"] if settings else []),
        f"{PAGE_MARK} of {model}'s distribution averaged over "
        f"the reference images that replace the person's own (darker = less certain without the true image); "
        f"a question asked by name has no image to replace, so its tokens show {model}'s own entropy on "
        f"it. Outlined tokens are "
        f"<b>key tokens</b> (H &gt; ε = {epsilon}), the paper's private tokens: {n_key} of {n_all} answer tokens"
        f"{by_image}; outlined dashed in the answers to questions by name, where H is {model}'s own "
        f"uncertainty rather than what the image told it. "
        f"{_lam_sentence(rows, lam)} Max H = {h_max:.2f} nats.{stored} The answer's end-of-turn token, where its "
        "chat template has one, is left out.</p>",
        f"<p>{html.escape(ref_prob_summary(rows))}</p>",
    ]
    for r in rows:
        spans = "".join(
            f"<span class='{' '.join(c for c, on in (('key', h > epsilon), ('gone', forgotten(p, lam))) if on)}' "
            f"style='background:{_color(h, h_max)}' "
            f"title='H = {h:.3f}, R̂(y) = {p:.4g}'>{html.escape(t)}</span>"
            for t, h, p in zip(r.tokens, r.entropy, r.ref_prob)
        )
        lines.append(f"<div class='q'>{'[image] ' if r.has_image else ''}{html.escape(r.question)}</div>"
                     f"<div class='a{'' if r.has_image else ' named'}'>{spans}</div>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


CHAR = 0.75  # x units per character of the PNG's 9-point DejaVu Sans Mono; a line is 100 units (about 10.7 in)
GAP = 0.45  # x units between two words' boxes: their padding (0.35 together) and a hairline between them
QUESTION_WIDTH = 160  # characters of a question's line (7-point text, about 0.56 units a character)
QUESTION_LINE = 0.45  # rows a question's further line takes


def layout(tokens: list[str], width: float = 100.0) -> list[tuple[float, int, str]]:
    """Where each token of an answer goes in the PNG: (x, line, text shown), wrapped between words so that
    no line is wider than ``width`` (a long answer takes more lines, never a smaller font), and inside a word
    only where it is wider than a line: a name split over several tokens stays on one line. A token's
    leading space is a gap before its box, not part of it, so the boxes read as the words do."""
    pieces = []  # (space before, text shown, box width, whether a word starts here)
    for i, t in enumerate(tokens):
        shown = t.replace("\n", " ")
        space = CHAR if shown.startswith(" ") and shown.strip() else 0.0
        shown = shown[1:] if space else shown
        pieces.append((space, shown, CHAR * max(1, len(shown)), i == 0 or bool(space) or not shown.strip()))
    placed, x, line = [], 0.0, 0
    for i, (space, shown, box, starts) in enumerate(pieces):
        end = next((j for j in range(i + 1, len(pieces)) if pieces[j][3]), len(pieces))
        word = sum(b for _, _, b, _ in pieces[i:end]) + GAP * (end - i - 1)
        if x > 0 and (x + space + box > width or (starts and x + space + word > width and word <= width)):
            x, line, space = 0.0, line + 1, 0.0
        placed.append((x + space, line, shown))
        x += space + box + GAP
    return placed


PNG_ANSWERS = 12  # the answers the PNG shows (the page shows them all)


def write_png(rows: list[TokenEntropy], path: Path, epsilon: float, limit: int = PNG_ANSWERS,
              lam: float | None = None, settings: str = "", heading: str = "", model: str = "the frozen model") -> None:
    """The first ``limit`` answers as on the page: shaded by H(R̂), outlined where H > ``epsilon`` and, given
    a ViKeR run's ``lam``, underlined where that run forgets the token; ``heading`` (the page's, naming the
    split) and ``settings`` (:func:`page_settings`) in its title, as on the page, and ``model`` as the page
    names it."""
    from viker.report import figure

    h_max = largest_entropy(rows)
    # what the picture leaves out, and what its shading is where no image was replaced
    which = (f"\nThe first {limit} of {len(rows)} forget answers (the page shows them all)." if len(rows) > limit
             else "")
    by_name = (f"\nQuestions without [image] name the person: with no image to replace, their shading is {model}'s "
               "own entropy,\nand their key tokens are outlined dashed."
               if any(not r.has_image for r in rows[:limit]) else "")
    rows = rows[:limit]
    placed = [layout(r.tokens) for r in rows]
    asked = [textwrap.wrap(("[image] " if r.has_image else "") + r.question, QUESTION_WIDTH) or [""] for r in rows]
    drop = [QUESTION_LINE * (len(lines) - 1) for lines in asked]  # a long question's further lines push its answer down
    # the question, then the answer's lines
    heights = [2 + d + max((line for _, line, _ in p), default=0) for p, d in zip(placed, drop)]
    gone = "" if lam is None else f"; underlined: forgotten by ViKeR at λ = {lam:g}"
    title = f"{heading}\n" * bool(heading) + \
        f"Answer tokens shaded by reference entropy H(R̂); outlined: key tokens (H > {epsilon}){gone}"
    title += (f"\nShading from white (H = 0) to the darkest orange-red (H = {h_max:.2f} nats, the largest over all the "
              "answers, as on the page).")
    title += which + by_name
    title += "".join(f"\n{line}" for line in textwrap.wrap(settings, 150))
    # the answers' rows, and the title's lines (10-point text, 1.6 apart: some 0.22 in each) above them
    fig, ax = figure((11, 0.31 * sum(heights) + 0.9 + 0.22 * title.count("\n")))
    ax.set_axis_off()
    ax.set_xlim(0, 100)
    ax.set_ylim(sum(heights) + 1, 0)
    top = 0.0
    for r, p, height, lines, d in zip(rows, placed, heights, asked, drop):
        for i, text in enumerate(lines):  # the benchmark's text as it is: a '$' is no formula
            ax.text(0, top + 0.45 + QUESTION_LINE * i, text, fontsize=7, color="#555", parse_math=False)
        for (x, line, shown), h, prob in zip(p, r.entropy, r.ref_prob):
            rgb = [int(c) / 255 for c in _color(h, h_max)[4:-1].split(",")]
            y = top + 1.35 + d + line
            ax.text(x, y, shown, family="monospace", fontsize=9, va="center", parse_math=False,
                    bbox=dict(boxstyle="square,pad=0.15", fc=rgb, ec="#b30000" if h > epsilon else rgb,
                              lw=1.2 if h > epsilon else 0, ls="-" if r.has_image else "--"))
            if forgotten(prob, lam):
                ax.plot([x, x + CHAR * max(1, len(shown))], [y + 0.42] * 2, color=GONE, lw=2.2,
                        solid_capstyle="butt")
        top += height
    ax.set_title(title, fontsize=10, loc="left", linespacing=1.6, parse_math=False)  # a '$' in a path is no formula
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def _command_of(record: Path) -> str | None:
    """The command a JSON record of ours says wrote it (None: no record of ours)."""
    try:
        config = read_json(record)
    except (OSError, VikerError):
        return None
    return config.get("command") if isinstance(config, dict) else None


def check_page_out(out: Path, data: str) -> None:
    """A page and its picture go beside the benchmark, not into it (whose folder holds the benchmark's files alone,
    as `viker data synth --overwrite` expects), and replace only an earlier page and its picture, never other
    files of those names."""
    here, bench = out.parent.expanduser().resolve(), Path(data).expanduser().resolve()
    if bench.is_dir() and bench in (here, *here.parents):
        raise VikerError(f"--out {out}: inside the benchmark folder given as --data; write the page elsewhere")
    earlier = out.is_file() and PAGE_MARK in out.read_text(encoding="utf-8", errors="replace")
    taken = [f for f in (out, out.with_suffix(".png")) if f.exists()] if not earlier else []
    if taken:
        what = "is no key-token page" if taken[0] == out else "no key-token page beside it says it is its picture"
        raise VikerError(f"--out {out}: {taken[0]} is there already, and {what}; choose another name, or remove it")
    record = out.with_suffix(".json")
    if record.exists() and _command_of(record) != "keytokens":
        raise VikerError(f"--out {out}: {record} is there already, and is no key-token page's record of what made "
                         "it; choose another name, or remove it")


def page_settings(model: str, k: int, refs: str, seed: int, train_on: str | None, mixed_precision: str | None,
                  dtype: str = "auto", benchmark: str = "mllmu") -> str:
    """What made a key-token page, in the command line's words: pages of other settings (the paper's ablation of
    the reference images, say) then tell themselves apart once saved."""
    parts = [f"--model {model}", f"R̂ over --k {k} reference images each (--refs {refs}, --seed {seed})"]
    parts += [f"--benchmark {benchmark}"] if benchmark != "mllmu" else []
    parts += [f"--train-on {train_on}"] if train_on else []
    parts += [f"--dtype {dtype}"] if dtype != "auto" else []
    parts += [f"--mixed-precision {mixed_precision}"] if mixed_precision not in (None, "no") else []
    return "Settings: " + "; ".join(parts)


@bars_as_asked
def run_keytokens(model_path: str, data: str, forget: str, out: str, k: int = 5, refs: str = "people",
                  epsilon: float = 0.5, cache_dir=None, device=None, progress=True, model_and_processor=None,
                  dtype: str = "auto", trust_remote_code: bool = False, seed: int = 0, lam: float | None = None,
                  benchmark: str = "mllmu", train_on: str = "auto", mixed_precision: str | None = None):
    """Write ``out`` (an .html page), the PNG beside it and, beside both, a JSON record of the settings and counts
    (``.json``, as any run's config records them); returns the rows shown. The reference
    distributions come from (or go to) ViKeR's cache, ``cache_dir`` or its default. ``train_on``: the forget
    examples, as ``viker unlearn --train-on`` picks them (auto: by what ``model_path`` learned)."""
    from viker.model import (
        check_cpu_autocast,
        check_dtype,
        check_mixed_precision,
        given_model,
        how_loaded,
        is_tiny_built,
        load_model,
        pick_device,
    )
    from viker.unlearn import UnlearnConfig, resolve_train_on

    check_dtype(dtype)
    if model_and_processor is not None:
        model_and_processor = given_model(model_and_processor, dtype, device)
    require(k >= 1, "--k", k, "must be at least 1")
    require(0 <= seed < 2**32, "--seed", seed, "must be from 0 to 2**32 - 1, as viker unlearn's")
    require(epsilon >= 0, "--epsilon", epsilon, "must be at least 0 (nats)")
    require(lam is None or lam >= 0, "--lam", lam, "must be at least 0, as ViKeR's")
    require(not Path(out).is_dir(), "--out", out, "a folder; name an .html file (in it, say), and the PNG is written "
            "beside it")
    require(Path(out).suffix in (".html", ".htm"), "--out", out, "name an .html file (the PNG is written beside it)")
    check_writable("--out", out, Path(out).parent)
    check_page_out(Path(out), data)
    cache_dir = given_cache_dir(cache_dir)
    run = next(runs_behind(model_path), {})
    whose, unlearned = "the frozen model", ""  # whose distributions the page shows, as it names them
    if run.get("command") == "unlearn" and run.get("method", {}).get("name") != "cagul":  # CAGUL's model is frozen
        started, split = run.get("unlearn", {}).get("model"), run.get("unlearn", {}).get("forget")
        whose = "the unlearned model"
        unlearned = (f"; the model is an unlearning run: R̂ is its own, not that of the model it started from "
                     f"(--model {started}), which ViKeR trains against")
        on = f" --forget {split}" if split else ""  # the split it unlearned, which that model is not tied to
        print(f"warning: {model_path} is an unlearning run: the page shows its own R̂, not the one it trained against, "
              f"which the model it started from gives (--model {started}{on})", file=sys.stderr)
    learned = resolve_train_on(UnlearnConfig(model=model_path, benchmark=benchmark, train_on=train_on),
                               tiny=model_and_processor and is_tiny_built(model_and_processor[0]))
    answers = forget_answers(data, forget, refs, benchmark, learned.train_on)  # a folder read otherwise: refused
    if warning := other_benchmark(model_path, data, benchmark):  # the page would show other people's answers
        print(f"warning: {warning}", file=sys.stderr)
    if model_and_processor is None:  # refused before minutes of loading a large model
        check_mixed_precision(mixed_precision, pick_device(device).type)
        check_cpu_autocast(dtype, mixed_precision, pick_device(device).type)
    model, processor = model_and_processor or load_model(model_path, device, dtype, trust_remote_code)
    with torch.no_grad():
        rows = answer_token_entropies(model, processor, answers, k, seed,
                                      Path(cache_dir) if cache_dir else default_cache_dir(), progress, mixed_precision)
    out = Path(out)
    settings = page_settings(model_path, k, refs, seed, learned.train_on, mixed_precision, dtype, benchmark) + \
        unlearned
    keys, tokens = key_counts(rows, epsilon)
    pictured = image_key_counts(rows, epsilon)
    record = {"model": as_recorded(model_path), **how_loaded(model), "data": as_recorded(data),
              "benchmark": benchmark, "forget": forget, "train_on": learned.train_on, "k": k, "refs": refs,
              "seed": seed, "epsilon": epsilon, "lam": lam, "mixed_precision": mixed_precision,
              "topk": default_topk(model), "answers": len(rows), "tokens": tokens, "key_tokens": keys,
              **({"image_answer_tokens": pictured[1], "image_key_tokens": pictured[0]} if pictured else {}),
              **({"forgotten": sum(forgotten(p, lam) for r in rows for p in r.ref_prob)} if lam is not None else {})}
    with written_together(out.parent) as stage:  # the page, its picture and what made them, all or none
        heading = f"Key tokens of {forget}"
        write_html(rows, stage / out.name, epsilon, heading, lam, default_topk(model), settings, model=whose)
        write_png(rows, stage / out.with_suffix(".png").name, epsilon, lam=lam, settings=settings, heading=heading,
                  model=whose)
        write_config(stage, "keytokens", record, data, name=out.with_suffix(".json").name)
    return rows
