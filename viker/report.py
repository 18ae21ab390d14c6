"""The paper-style results table and the forgetting/retention trade-off plot."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import textwrap
from collections import Counter
from pathlib import Path
from typing import Iterable, NamedTuple


class Column(NamedTuple):
    key: str  # in metrics.json
    header: str
    lower_is_better: bool | None  # None: neither direction is better (no arrow, nothing in bold)
    meaning: str
    fmt: str = ".1f"
    floor: float | None = None  # a figure below it is no better than it (chance, for an accuracy to bring down)


CHANCE_ACC = 100.0 / 4  # multiple-choice accuracy of a model that knows nothing: every question has 4 options
BELOW_CHANCE = (f"; a figure below chance ({CHANCE_ACC:g}) counts as chance where the best is marked, no more "
                "forgetting than knowing nothing")

COLUMNS = [  # MLLMU-Bench, in percent (factuality: the judge's 1 to 10)
    Column("forget_acc", "Forget ACC", True,
           f"image+text multiple-choice accuracy on the forget people (lower = more forgotten){BELOW_CHANCE}",
           floor=CHANCE_ACC),
    Column("forget_acc_text", "Forget ACC (text)", True,
           f"the same facts asked by name, without the image{BELOW_CHANCE}", floor=CHANCE_ACC),
    Column("test_acc", "Gen. ACC", True, "image+text multiple choice on Test_Set images of the forget people "
           f"(generalisation of forgetting){BELOW_CHANCE}", floor=CHANCE_ACC),
    Column("forget_rougeL", "Forget R-L", True, "ROUGE-L F of generated answers about the forget people, to the "
           "questions asked with the image and by name together (apart: `*_rougeL_image`, `*_rougeL_text`)"),
    Column("forget_cloze", "Forget cloze", True, "fill-in-the-blank accuracy on the forget people"),
    Column("retain_acc", "Retain ACC", False, "image+text multiple-choice accuracy on the retained fictitious people"),
    Column("retain_rougeL", "Retain R-L", False,
           "ROUGE-L F on the retained fictitious people (both kinds of question, as above)"),
    Column("retain_bleu", "Retain BLEU", False, "BLEU (NLTK, method-1 smoothing) on the retained fictitious people"),
    Column("real_acc", "Real ACC", False, "image+text multiple-choice accuracy on the real-world (Retain_Set) people"),
    Column("real_rougeL", "Real R-L", False, "ROUGE-L F on the real-world people"),
    Column("real_bleu", "Real BLEU", False, "BLEU on the real-world people"),
    Column("coherence", "Coherence", False,
           "offline coherence of the answers on the forget set (viker.eval.metrics.coherence)"),
    Column("gib", "GIB", False, "mean 'clean' probability of the gibberish classifier on the forget-set answers"),
    Column("forget_factuality", "Forget Fact.", True,
           "the factuality judge's mean score (1 to 10) of the generated answers about the forget people"),
    Column("retain_factuality", "Retain Fact.", False,
           "the factuality judge's mean score (1 to 10) of the generated answers about the retained people"),
]


CLEAR_SET_NAMES = {"forget": ("Forget", "the forget persons' captions"),  # header, what is asked
                   "forget_names": ("Forget names", "the forget persons' names"),
                   "retain": ("Retain", "the retain persons' captions"),
                   "retain_names": ("Retain names", "the retain persons' names"),
                   "real_faces": ("Real faces", "the celebrities' names"),
                   "real_world": ("Real world", "the real-world questions")}


def _clear_columns() -> list[Column]:
    """CLEAR's measures (viker.eval.clear), in [0, 1] as CLEAR reports them, set by set."""
    from viker.data.clear import EVAL_SETS, FORGET_SETS

    columns = [
        Column("forget_quality", "Forget quality", False, "p-value of the KS test between the forget captions' "
               "truth ratios and those of a model never trained on the forget persons (higher = closer to it)", "#.2g"),
        Column("model_utility", "Model utility", False,
               "harmonic mean of the twelve measures (R-L, Prob. and TR) of the Retain, Retain names, Real faces "
               "and Real world sets", ".3f"),
    ]
    for key, _, _ in EVAL_SETS:
        (name, what), forget = CLEAR_SET_NAMES[key], key in FORGET_SETS
        target = " (what to aim for is a never-trained model's: see Forget quality)" if forget else ""
        columns += [
            Column(f"{key}_rougeL_recall", f"{name} R-L", forget, f"ROUGE-L recall (stemmed) of the replies on {what}",
                   ".3f"),
            Column(f"{key}_prob", f"{name} Prob.", forget, f"probability of the answer on {what}"
                   + (" (exp of minus its mean token loss)" if "caption" in what else
                      " (its share against the wrong options)"), ".3f"),
            Column(f"{key}_truth_ratio", f"{name} TR", None if forget else False,
                   f"truth-ratio score on {what}{target}", ".3f"),
        ]
    return columns + [Column("coherence", "Coherence (%)", False, "offline coherence (0 to 100) of the replies on "
                             "the forget persons' captions (viker.eval.metrics.coherence)", ".1f")]


CLEAR_COLUMNS = _clear_columns()
COLUMNS_OF = {"mllmu": COLUMNS, "clear": CLEAR_COLUMNS}  # a benchmark's columns, in the table's order


# Rows that are references, not unlearning methods: never marked best. A retain model is finetuned
# without the forget split (CLEAR's `viker finetune --without`): what forgetting should come close to.
REFERENCES = {"vanilla": "vanilla", "retain_model": "retain model"}


def label(run: dict) -> str:
    """How a run is printed: its own ``label``, else its method's title (``klmin`` -> ``KL-Min``), as the run
    recorded it (a method of the user's, registered where it ran, reads alike in a report from anywhere)."""
    from viker.methods import title

    return run.get("label") or REFERENCES.get(run["method"]) or run.get("title") or title(run["method"])


def benchmark_of_runs(runs: list[dict]) -> str:
    """The benchmark of the runs a table shows (one report is of one benchmark)."""
    return "clear" if any(benchmark_of(r["metrics"]) == "clear" for r in runs) else "mllmu"


def _columns(runs: list[dict]) -> list[Column]:
    return [c for c in COLUMNS_OF[benchmark_of_runs(runs)] if any(c.key in r["metrics"] for r in runs)]


ARROWS = {True: " ↓", False: " ↑", None: ""}


def columns_text(metrics: dict, asked: dict[str, int] | None = None) -> str:
    """One evaluation's figures in the table's columns, one per line with its name and direction and, where
    ``asked`` (:func:`questions_behind`) knows it, how many questions the figure is over, for the terminal
    (``viker eval``); metrics.json holds every figure."""
    cols = _columns([{"metrics": metrics}])
    width = max((len(c.header + ARROWS[c.lower_is_better]) for c in cols), default=0) + 2
    over = {k: f"  over {n} questions" for k, n in (asked or {}).items()}
    printed = {c.key: _printed(c, metrics.get(c.key)) for c in cols}
    return "\n".join(f"  {(c.header + ARROWS[c.lower_is_better]).ljust(width)}{printed[c.key]:>7}"
                     f"{over.get(c.key, '') if printed[c.key] != '–' else ''}" for c in cols)


def questions_behind(records: Iterable[dict]) -> dict[str, int]:
    """How many questions each of MLLMU-Bench's columns is over, counted from an evaluation's answers
    (generations.jsonl): an ACC is over the multiple-choice questions asked with the image, ACC (text) over
    those asked by name, and the rest over their task's questions of both kinds (coherence, GIB and
    factuality over the generation questions)."""
    count = Counter((r.get("set"), r.get("task"), bool(r.get("image"))) for r in records)
    tasks = {"acc": "multiple_choice", "cloze": "cloze"}  # every other figure is the generation answers'
    kinds = {"acc": (True,), "acc_text": (False,)}  # asked with the image, by name; else both
    asked = {}
    for column in COLUMNS:
        key = f"forget_{column.key}" if column.key in ("coherence", "gib") else column.key
        split, _, figure = key.partition("_")
        n = sum(count[split, tasks.get(figure.split("_")[0], "generation"), image]
                for image in kinds.get(figure, (True, False)))
        if n:
            asked[column.key] = n
    return asked


def _measured(value: float | None) -> bool:
    """Whether a figure was measured: not None (left out), nor NaN (an empty split)."""
    return value is not None and not math.isnan(value)


def _printed(column: Column, value: float | None) -> str:
    """The cell as printed: "–" for what was not measured."""
    return format(value, column.fmt) if _measured(value) else "–"


def _incoherent(metrics: dict, below: float) -> bool:
    """Whether a run's answers fell apart (coherence under ``below`` as the table prints it: 49.96 prints 50.0,
    and is not); unknown coherence (none, or null) is not taken for that."""
    coherence = metrics.get("coherence")
    return _measured(coherence) and float(format(coherence, ".1f")) < below


def _contends_lower(metrics: dict, below: float) -> bool:
    """Whether a run may be marked best where lower is better: its answers measured to hold (coherence at least
    ``below``). Without coherence (evaluated without the forget set's generation) nothing tells a run that forgot
    from one whose answers fell apart."""
    return _measured(metrics.get("coherence")) and not _incoherent(metrics, below)


def cell(text: str) -> str:
    """Text for a Markdown table cell: a '|' in it (a folder's name, say) would end the cell."""
    return str(text).replace("|", "\\|")


INCOHERENT_BELOW = 50.0  # coherence under which a run's answers have fallen apart (crossed out in the plot)
UNMARKED = ("A column has a best only where two of the runs that may be marked print different figures (a forget "
            f"accuracy below chance counts as chance). Runs whose answers fell apart (coherence under "
            f"{INCOHERENT_BELOW:g}) are not marked best where lower is better: an answer that says nothing has not "
            "forgotten a fact, it has lost the language.")


def none_coherent(rows: list[dict]) -> str:
    """A sentence where every unlearning run's answers fell apart, so that no column where lower is better has a
    best; else one naming the unlearning runs without coherence, which are no contenders there either."""
    unlearned = [r for r in rows if r["method"] not in REFERENCES]
    if unlearned and all(_incoherent(r["metrics"], INCOHERENT_BELOW) for r in unlearned):
        return (f" Here every unlearning run's coherence is under {INCOHERENT_BELOW:g}: no column where lower is "
                "better has a best.")
    unknown = [r["label"] for r in unlearned if not _measured(r["metrics"].get("coherence"))]
    if unknown:  # not contenders either (_contends_lower)
        return (f" {', '.join(unknown)} {'was' if len(unknown) == 1 else 'were'} evaluated without coherence (no "
                "forget-set generation), so nothing tells whether "
                f"{'its answers' if len(unknown) == 1 else 'their answers'} held: not marked best where lower is "
                "better either.")
    return ""


def unscored(rows: list[dict]) -> str:
    """A sentence naming the runs without a figure of a column where others have one (its cells print –), so
    that a reader does not take the – for a failure: such a run was evaluated on fewer sets or tasks."""
    columns = _columns(rows)
    gaps = [f"{r['label']} ({', '.join(c.header for c in missing)})" for r in rows
            if (missing := [c for c in columns if not _measured(r["metrics"].get(c.key))])]
    if not gaps:
        return ""
    return (f" A – where other runs have a figure was not scored: {'; '.join(gaps)} "
            "(evaluated on fewer sets or tasks, with viker eval --only, without that judge or classifier, or on a "
            "set with no questions of the task, recorded as NaN).")


def markdown_table(runs: list[dict], incoherent_below: float = INCOHERENT_BELOW) -> str:
    """One row per run, the best value of each column in bold (among the unlearning runs: not the
    reference rows, vanilla and a retain model). A column where the contenders all print alike (one alone, too) has
    no best. Where lower is better (the forgetting columns), a run whose answers fell apart, or whose coherence was
    not measured, is not a contender (:data:`UNMARKED`, :func:`none_coherent`); nor is one, in any direction, in the
    ACC columns of a set whose letter-mode replies mostly named no option (:func:`reads_no_letter`)."""
    cols = _columns(runs)
    header = "| Method | " + " | ".join(c.header + ARROWS[c.lower_is_better] for c in cols) + " |"
    lines = [header, "|" + " --- |" * (len(cols) + 1)]
    unlearned = [r for r in runs if r["method"] not in REFERENCES]  # none: nothing is marked
    coherent = [r for r in unlearned if _contends_lower(r["metrics"], incoherent_below)]
    best, contenders_of = {}, {}
    def counted(c: Column, text: str) -> float:  # as printed, and no better than the column's floor (chance)
        return float(text) if c.floor is None else max(float(text), c.floor)

    for c in cols:
        contenders = contenders_of[c.key] = [r for r in (coherent if c.lower_is_better else unlearned)
                                             if not reads_no_letter(r, c.key)]
        printed = [_printed(c, r["metrics"].get(c.key)) for r in contenders]
        values = [counted(c, text) for text in printed if text != "–"]
        differ = len(set(values)) > 1
        best[c.key] = (min if c.lower_is_better else max)(values) if differ and c.lower_is_better is not None else None
    for r in runs:
        cells = []
        for c in cols:
            text = _printed(c, r["metrics"].get(c.key))
            marked = text != "–" and counted(c, text) == best[c.key] and r in contenders_of[c.key]
            cells.append(f"**{text}**" if marked else text)
        lines.append(f"| {cell(label(r))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reads_no_letter(run: dict, key: str) -> bool:
    """Whether ``key`` is an ACC of a set whose letter-mode replies mostly named no option, in ``run``: an ACC that
    says nothing of what the model knows (:func:`viker.eval.metrics.mostly_unread`)."""
    from viker.eval.metrics import mostly_unread

    return any(key.startswith(f"{unread.removesuffix('_unparsed')}_acc") for unread in mostly_unread(run["metrics"]))


def items_behind(metrics: dict) -> dict[str, int]:
    """How many items each of CLEAR's columns is over, from an evaluation's counts (``{set}_items``): a set's
    R-L, Prob. and TR over its items, forget quality and coherence over the forget captions."""
    from viker.data.clear import EVAL_SETS

    asked = {f"{key}_{measure}": n for key, _, _ in EVAL_SETS if (n := metrics.get(f"{key}_items"))
             for measure in ("rougeL_recall", "prob", "truth_ratio")}
    if n := metrics.get("forget_items"):
        asked |= {"forget_quality": n, "coherence": n}
    return asked


def column_glossary(runs: list[dict]) -> str:
    """What each column means, and how many questions it is over where every run that measured it was asked
    as many (``asked``: :func:`questions_behind`)."""
    better = {True: "lower is better", False: "higher is better", None: "neither direction is better"}
    unit = "items" if benchmark_of_runs(runs) == "clear" else "questions"  # CLEAR's: a caption or name each
    lines = []
    for c in _columns(runs):
        asked = {r.get("asked", {}).get(c.key) for r in runs if r["metrics"].get(c.key) is not None}
        over = f" Over {asked.pop()} {unit}." if len(asked) == 1 and None not in asked else ""
        lines.append(f"- **{c.header}** ({better[c.lower_is_better]}): {c.meaning}.{over}")
    return "\n".join(lines)


SUMMARY = {"mllmu": ("forget_acc", "test_acc", "retain_rougeL", "real_rougeL", "coherence"),
           "clear": ("forget_quality", "model_utility", "forget_rougeL_recall", "retain_rougeL_recall",
                     "real_faces_prob")}


def benchmark_of(metrics: dict) -> str:
    """Which benchmark a metrics.json is of: CLEAR's has truth ratios, MLLMU-Bench's does not."""
    return "clear" if "forget_truth_ratio" in metrics else "mllmu"


def plain_table(runs: list[dict], keys: tuple[str, ...] | None = None) -> str:
    """A compact table for the terminal: ``keys``, by default a few columns of the runs' benchmark."""
    benchmark = benchmark_of_runs(runs)
    keys = keys or SUMMARY[benchmark]
    columns = {c.key: c for c in COLUMNS_OF[benchmark]}
    headers = [columns[k].header + ARROWS[columns[k].lower_is_better] for k in keys]  # as report.md names them
    widths = [max(12, len(h) + 2) for h in headers]
    width = max(len(label(r)) for r in runs) + 2
    lines = ["Method".ljust(width) + "".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += [label(r).ljust(width) + "".join(_printed(columns[k], r["metrics"].get(k)).rjust(w)
                                              for k, w in zip(keys, widths)) for r in runs]
    return "\n".join(lines)


def _groups(points: list[tuple[float, float]], within: float) -> list[list[int]]:
    """The indices of ``points`` gathered where they lie within ``within`` of a group's first point."""
    groups: list[list[int]] = []
    for i, point in enumerate(points):
        group = next((g for g in groups if math.dist(points[g[0]], point) <= within), None)
        if group:
            group.append(i)
        else:
            groups.append([i])
    return groups


def _nearby(points: list[tuple[float, float, float]], spans: tuple[float, float] = (100.0, 100.0),
            within: float = 0.04) -> list[tuple[list[float], float, float]]:
    """Sweep points ``(λ, x, y)`` gathered where they lie within ``within`` of a group's first point, so that
    one label names them all: ``([λ, ...], x, y)`` per group. Distances are in shares of ``spans``, the data
    ranges the plot shows on each axis: 4 points apart on a 0-100 axis lie together, on a 96-100 one they do
    not."""
    groups = _groups([(x / spans[0], y / spans[1]) for _, x, y in points], within)
    return [([points[i][0] for i in g], points[g[0]][1], points[g[0]][2]) for g in groups]


def _spans(values: list[tuple[float, float]], least: float = 1.0) -> tuple[float, float]:
    """The data range of each axis that ``values`` (x, y) cover (at least ``least``, for a single value)."""
    xs, ys = [x for x, _ in values], [y for _, y in values]
    return max(max(xs) - min(xs), least), max(max(ys) - min(ys), least)


MARKER_AREA = 80  # points², as matplotlib's scatter takes it
SHAPES = ("o", "s", "^", "v", "<", ">", "p", "h")  # the markers of runs beyond the palette's colours
LEGEND_ROWS = 20  # legend entries in a column beside the plot


def side_by_side(points: list[tuple[float, float]], width: float) -> list[float]:
    """Where each of ``points`` goes, in ``width``s (a marker's, in the points' units, on the plot) to the right of
    its place, so that markers that would cover each other do not: points closer than ``width`` to another (and so
    on, one to the next) are set in a row a width apart, in the order of their places (then as given), centred on
    their places' mean. A point no other marker covers stays where it is (0); two at one place go to -0.5 and 0.5,
    three to -1, 0 and 1."""
    groups: list[list[int]] = []
    for i in range(len(points)):
        near = [g for g in groups if any(math.dist(points[i], points[j]) < width for j in g)]
        groups = [g for g in groups if g not in near] + [sum(near, []) + [i]]
    slots = [0.0] * len(points)
    for group in groups:
        centre = sum(points[i][0] for i in group) / len(group)
        for j, i in enumerate(sorted(group, key=lambda i: (points[i][0], i))):
            slots[i] = (centre - points[i][0]) / width + j - (len(group) - 1) / 2
    return slots


class PlotAxes(NamedTuple):
    x: str  # metric keys
    y: str
    xlabel: str
    ylabel: str
    ylog: bool = False
    yspan: tuple[float, float] | None = None  # a scale's whole extent, always shown: no small gap drawn large
    xspan: tuple[float, float] | None = None  # likewise for x


MLLMU_AXES = PlotAxes("forget_acc", "retain_rougeL", "Forget ACC (%)  ← better forgetting",
                      "Retain ROUGE-L (%)  ↑ better retention", yspan=(0.0, 100.0))
CLEAR_AXES = PlotAxes("model_utility", "forget_quality", "Model utility  → better retention",
                      "Forget quality (log)  ↑ closer to never trained", ylog=True,  # as TOFU and CLEAR plot it
                      xspan=(0.0, 1.0))


def _set_side_by_side(ax, dots: list[list], at: list[tuple[float, float]]) -> None:
    """Move the markers of runs that would cover each other on the finished plot side by side, a marker's
    width apart and centred on their place (``dots``: each run's collections, ``at``: its place in data
    units), widening the x range to make room."""
    lo, hi = ax.get_xlim()
    ax.get_ylim()  # both axes scaled to the data, so that the points' places on the plot are final
    marker = MARKER_AREA ** 0.5 * ax.figure.dpi / 72  # a marker's width, in pixels
    slots = side_by_side([tuple(xy) for xy in ax.transData.transform(at)] if at else [], width=marker)
    if not any(slots):
        return
    # the x axis is a measure: say that a marker set aside was measured where its group is centred
    ax.set_xlabel(ax.get_xlabel() + "\n(runs that would cover each other are drawn side by side, centred on their "
                                    "places)")
    share = marker / ax.get_window_extent().width  # a marker's share of the plot's width
    most = max(abs(slot) for slot in slots)
    if 2 * most * share > 0.5:  # a row of markers wider than half the plot: a wider figure makes room
        figure = ax.figure
        figure.set_size_inches(figure.get_size_inches() * (4.4 * most * share, 1.0))
        share = marker / ax.get_window_extent().width
    width = (hi - lo) * share / (1 - 2 * most * share)  # data units, once the x range made room
    for collections, (x, y), slot in zip(dots, at, slots):
        for collection in collections:
            collection.set_offsets([(x + slot * width, y)])
    ax.set_xlim(lo - most * width, hi + most * width)


# where a sweep label goes, first to last: its offset from the point (points), and its alignment
LABEL_PLACES = (((0, 8), "center", "bottom"), ((0, -8), "center", "top"), ((-8, 0), "right", "center"),
                ((8, 0), "left", "center"))


def _clear_of_markers(ax) -> None:
    """Put each of the sweep's labels in the first of :data:`LABEL_PLACES` where it covers no run's marker, no
    point of the sweep and no label already placed, inside the frame (else above its point, as before): a
    label drawn over a run's marker would hide that run."""
    import numpy as np
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    half = MARKER_AREA ** 0.5 * ax.figure.dpi / 72 / 2  # half a run marker's width, in pixels

    def at(points) -> list:  # in pixels, where drawn (a figure not measured is not drawn)
        filled = np.ma.filled(np.ma.asarray(points, dtype=float).reshape(-1, 2), np.nan)
        return [(x, y) for x, y in ax.transData.transform(filled) if math.isfinite(x) and math.isfinite(y)]

    taken = [Bbox.from_bounds(x - half, y - half, 2 * half, 2 * half)
             for c in ax.collections for x, y in at(c.get_offsets())]
    taken += [Bbox.from_bounds(x - 3, y - 3, 6, 6) for line in ax.get_lines() for x, y in at(line.get_xydata())
              if line.get_marker() not in (None, "None", "")]  # the sweep's own points
    frame = ax.get_window_extent(renderer)
    for text in (t for t in ax.texts if t.get_text().startswith("λ=")):
        for offset, ha, va in (*LABEL_PLACES, LABEL_PLACES[0]):  # none free: above, where it was
            text.xyann = offset
            text.set(ha=ha, va=va)
            box = text.get_window_extent(renderer).padded(2)  # with its ground
            if (not any(box.overlaps(other) for other in taken) and frame.x0 <= box.x0 and box.x1 <= frame.x1
                    and frame.y0 <= box.y0):  # the top may grow: _room_above
                break
        taken.append(box)


def _no_negative_ticks(ax) -> None:
    """Leave out the x ticks below 0: both plots' x (an accuracy, a model utility) is never negative, and the room
    drawn left of 0 (a margin, or the span matplotlib gives a column of runs all at 0) is only room."""
    lo, hi = ax.get_xlim()
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t and lo <= t <= hi])
    ax.set_xlim(lo, hi)


def _room_above(ax, pad_pt: float = 3.0) -> None:
    """Raise the top of the y range until the labels above the sweep's markers (which do not count when
    matplotlib sets the range) end inside the frame, ``pad_pt`` below it."""
    renderer = ax.figure.canvas.get_renderer()
    for _ in range(3):  # a label moves down by less than its overflow when its marker is below the top
        top = ax.get_window_extent(renderer).y1
        over = max((t.get_window_extent(renderer).y1 for t in ax.texts), default=-math.inf) - top
        over += pad_pt * ax.figure.dpi / 72
        if over <= 0:
            return
        # the frame keeps its size, so the data shrink toward its bottom: a point at the top comes down by `over`
        bottom, y_top = ax.transData.transform([(0, ax.get_ylim()[0]), (0, ax.get_ylim()[1])])[:, 1]
        height = y_top - bottom
        ax.set_ylim(top=ax.transData.inverted().transform((0, y_top + over * height / (height - over)))[1])


VIKER_COLOUR = "#1f77b4"  # ViKeR's runs and its λ sweep
TITLE_WIDTH, LABEL_WIDTH = 70, 48  # characters of a plot's title a line, and of a legend entry (the table says all)


def _literal(text: str) -> str:
    """``text`` drawn as typed: matplotlib reads what lies between two '$' as mathematics (a title "$5 vs $10"
    lost its dollars, and one with a backslash between them stopped the plot)."""
    return text.replace("$", r"\$")


def _short(text: str, width: int = LABEL_WIDTH) -> str:
    """``text`` in at most ``width`` characters, its middle left out where it is longer: a label's start names
    the method and its end the setting that tells it apart, and a legend entry no wider keeps the plot wide."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def figure(size: tuple[float, float]):
    """A figure and its axes drawn by Agg, without pyplot: the caller's backend (a notebook's) is left as it is."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def tradeoff_plot(runs: list[dict], sweep: list[dict], path: Path, title: str = "", chance: float | None = None,
                  incoherent_below: float = INCOHERENT_BELOW, axes: PlotAxes = MLLMU_AXES) -> None:
    """Forgetting against retention, a point per run: by default forget accuracy (x, lower is better)
    against retain ROUGE-L (y, higher is better). ``chance`` draws the accuracy of a model that knows
    nothing; a run whose coherence is below ``incoherent_below`` is crossed out (its answers fell apart).
    Runs whose markers would cover each other are set side by side, centred on their places."""
    import matplotlib

    fig, ax = figure((8.4, 4.8))
    if chance is not None:
        ax.axvline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:g}%)")
    drawn = sorted(runs, key=lambda r: r["method"] in REFERENCES)  # references last: on top
    at = [(r["metrics"][axes.x], r["metrics"][axes.y]) for r in drawn]
    if sweep:
        pts = sorted(((s["lam"], s["metrics"][axes.x], s["metrics"][axes.y]) for s in sweep))
        xs, ys, style = [p[1] for p in pts], [p[2] for p in pts], dict(color=VIKER_COLOUR, alpha=0.6, ms=4)
        ax.plot(xs, ys, "-o", **style, label="ViKeR, λ sweep")
        # its points again over the runs' markers, ringed in white: a sweep point at a ViKeR run's place (--fast's
        # two lie within its marker) is not lost under a marker of its own colour
        ax.plot(xs, ys, "o", **style, mec="white", mew=0.8, zorder=3.5)
        spans = _spans([(x, y) for _, x, y in pts] + at)
        if axes.yspan:  # the y range drawn: points close on it share a label
            spans = (spans[0], max(spans[1], axes.yspan[1] - axes.yspan[0]))
        for lams, x, y in _nearby(pts, spans):
            # above the sweep's point (else beside or below it, where no marker is: _clear_of_markers), drawn over
            # any run's marker it still meets, on a ground of its own to stay legible
            ax.annotate("λ=" + ", ".join(f"{lam:g}" for lam in lams), (x, y), textcoords="offset points",
                        xytext=(0, 8), ha="center", va="bottom", fontsize=7, color=VIKER_COLOUR, zorder=6,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    markers = {"vanilla": ("*", "black"), "retain_model": ("P", "grey"), "viker": ("D", VIKER_COLOUR)}
    crossed = f"coherence < {incoherent_below:g}"

    def cross(x, y):  # over a run whose answers fell apart; named once in the legend
        named = crossed not in ax.get_legend_handles_labels()[1]
        return ax.scatter(x, y, marker="x", s=140, color="black", lw=1.2, zorder=4, label=crossed if named else None)

    styles = []
    for r in drawn:
        m, c = markers.get(r["method"], ("o", None))
        if sum(other["method"] == r["method"] for other in runs) > 1:
            c = None  # several runs of one method: a colour each
        styles.append((r.get("marker", m), c))
    coloured = sum(c is None for _, c in styles)
    # the cycle's colours, less ViKeR's blues (tab10's first, tab20's first two) and the greys (the retain model's):
    # no other run looks like ViKeR, its sweep or a reference. tab10's eight, then tab20's lighter shade of each;
    # past the eighth run each round of eight takes another shape, so that no run has the shape of the run whose
    # colour its own is a lighter shade of (light orange beside orange)
    excluded = (VIKER_COLOUR, "#aec7e8", "#7f7f7f", "#c7c7c7")
    dark, light = ([c for c in colours if matplotlib.colors.to_hex(c) not in excluded]
                   for colours in (matplotlib.colormaps["tab10"].colors, matplotlib.colormaps["tab20"].colors[1::2]))
    palette = dark + light
    ax.set_prop_cycle(color=[palette[i % len(palette)] for i in range(max(coloured, 1))])
    if coloured > len(dark):
        nth = 0  # the n-th run drawn in a colour of the cycle
        for j, (m, c) in enumerate(styles):
            if c is None:
                styles[j] = (SHAPES[nth // len(dark) % len(SHAPES)] if m == "o" else m, c)
                nth += 1
    names = [label(r) for r in drawn]
    shown = [_short(name) for name in names]
    if len(set(shown)) < len(set(names)):  # shortened alike where they differ: each whole
        shown = names
    dots = []
    for r, (x, y), (m, c), name in zip(drawn, at, styles, shown):
        dots.append([ax.scatter(x, y, marker=m, s=MARKER_AREA, color=c, zorder=3, label=_literal(name))])
        if _incoherent(r["metrics"], incoherent_below):
            dots[-1].append(cross(x, y))
    for m in (s["metrics"] for s in sweep):
        if _incoherent(m, incoherent_below) and (m[axes.x], m[axes.y]) not in at:
            cross(m[axes.x], m[axes.y])
    ax.set_xlabel(axes.xlabel)
    ax.set_ylabel(axes.ylabel)
    if axes.ylog:
        ax.set_yscale("log")
    for span, get, set_ in ((axes.xspan, ax.get_xlim, ax.set_xlim), (axes.yspan, ax.get_ylim, ax.set_ylim)):
        if span:  # with matplotlib's own margin of 5% on each side
            (low, high), margin = get(), 0.05 * (span[1] - span[0])
            set_(min(low, span[0] - margin), max(high, span[1] + margin))
    lines = (title or "Forgetting vs retention").splitlines()  # a title's own line breaks kept, long lines wrapped
    ax.set_title(_literal("\n".join(textwrap.fill(line, TITLE_WIDTH) for line in lines)))
    ax.grid(alpha=0.3)
    entries = sorted(zip(*ax.get_legend_handles_labels()), key=lambda entry: entry[1] == crossed)  # crossed: last
    ax.legend(*zip(*entries), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              ncols=math.ceil(len(entries) / LEGEND_ROWS))  # beside, no taller than the plot
    fig.tight_layout()
    _set_side_by_side(ax, dots, at)
    _clear_of_markers(ax)
    _room_above(ax)
    _no_negative_ticks(ax)
    fig.savefig(path, dpi=130, bbox_inches="tight")


# --------------------------------------------------------------------------------------------------
# ``viker report``: the table and the plot of any evaluated runs
# --------------------------------------------------------------------------------------------------
SETTING_NAMES = {"lam": "λ", "beta": "β", "unlearned_on": "unlearned on"}
LORA_SETTINGS = ("r", "alpha", "dropout")  # of an unlearning run's LoRA adapter, as labels name them (lora_r=8)
# an unlearning run's training settings that change its result (not its logging or checkpoints)
TRAINING_SETTINGS = ("lr", "batch_size", "grad_accum", "weight_decay", "warmup_ratio", "scheduler", "max_grad_norm",
                     "seed", "mixed_precision")


def _what_was_evaluated(config: dict, evaluation: dict | None) -> dict:
    """The config of the run whose model an evaluation scored: the folder's own, or, for an evaluation
    in a folder of its own or in a run's model/ (whose config.json is the model's), that of the run folder its
    model came from, as the evaluation recorded it (that run may have been made again since, or moved), else as
    it is now (empty when it is no run of ours)."""
    from viker.runs import TRAINING_COMMANDS, runs_behind

    if config.get("command") in TRAINING_COMMANDS or not evaluation:
        return config
    if "model_run" in evaluation:
        return evaluation["model_run"] or {}
    model = evaluation.get("model")
    return next(runs_behind(str(model)), {}) if model else {}


def holds_columns(metrics) -> bool:
    """Whether a metrics.json's figures include any of the table's columns (an evaluation's, not a finetune's own)."""
    return isinstance(metrics, dict) and any(c.key in metrics for c in COLUMNS + CLEAR_COLUMNS)


def _evaluated_here(folder: Path) -> bool:
    """Whether ``folder`` holds an evaluation: a metrics.json, but not a finetune's own figures alone (an evaluation
    in place keeps those as train_metrics.json; one from before evaluations recorded their settings, or stopped
    before they took their place, is known by its figures)."""
    from viker.errors import VikerError
    from viker.runs import TRAINING_METRICS, read_configs, read_json

    if not (folder / "metrics.json").is_file():
        return False
    try:
        config, evaluation = read_configs(folder)
        if evaluation is not None or config.get("command") != "finetune" or (folder / TRAINING_METRICS).is_file():
            return True
        metrics = read_json(folder / "metrics.json")
    except VikerError:  # damaged: named as an evaluation, read_run says what is wrong with it
        return True
    return holds_columns(metrics)


def _unevaluated_hints(run: Path) -> tuple[str, str]:
    """What to do with ``run`` where it holds no evaluation: evaluate it, or give its model folder, which holds one."""
    return (f"evaluate it first (viker eval --model {run} ... --out {run})",
            f"{run}: no evaluation here; its model folder, {run / 'model'}, holds the evaluation: give that")


def _refuse_unevaluated(run: Path) -> None:
    """Refuse a folder with no metrics.json, saying which folder holds the evaluation, or how to make one."""
    from viker.errors import VikerError
    from viker.runs import TRAINING_COMMANDS, read_configs

    evaluate, in_model = _unevaluated_hints(run)
    if not run.is_dir():
        raise VikerError(f"{run}: {'not a folder' if run.exists() else 'no such run folder'}")
    parent, parent_evaluation = read_configs(run.parent) if run.name in ("model", "cagul") else ({}, None)
    if parent.get("command") in TRAINING_COMMANDS:  # a training run's model
        if (run.parent / "metrics.json").is_file() and parent_evaluation is not None:
            raise VikerError(f"{run}: no metrics.json; its run folder, {run.parent}, holds the evaluation: give that")
        raise VikerError(f"{run}: no metrics.json; it is the model of the run in {run.parent}: evaluate that "
                         f"first (viker eval --model {run.parent} ... --out {run.parent})")
    if (run / "model" / "metrics.json").is_file():  # evaluated into its model folder
        raise VikerError(in_model)
    if not any((run / name).is_file() for name in ("config.json", "adapter_config.json")):
        inside = sorted(f for f in run.iterdir() if _evaluated_here(f))
        listed = " ".join(shlex.quote(str(f)) for f in inside[:4]) + " ..." * (len(inside) > 4)
        held = f" (the evaluations in it: {listed})" if inside else ""
        raise VikerError(f"{run}: no metrics.json, and neither a run nor a model; give the folders viker eval "
                         f"wrote into{held}")
    raise VikerError(f"{run}: no metrics.json; {evaluate}")


def read_run(path: str | Path) -> dict:
    """An evaluated run folder as a row: ``method`` (``vanilla`` for a ``viker finetune`` model,
    ``retain_model`` for one finetuned ``--without`` the forget split, None for a model that is no run
    of ours), ``settings`` (the method's, and an unlearning run's budget), the benchmark, the forget split
    and multiple-choice mode it was evaluated with (None when not recorded), the forget split the model was made
    for and how (``made_for``: :func:`viker.runs.split_made_for`; None for a vanilla model), ``metrics`` and
    ``path``."""
    from viker.errors import VikerError
    from viker.runs import (
        is_hub_id,
        model_named,
        read_configs,
        read_json,
        read_records,
        scored_split,
        split_made_for,
    )

    run = Path(path)
    evaluate, in_model = _unevaluated_hints(run)
    if not (run / "metrics.json").is_file():
        _refuse_unevaluated(run)
    config, evaluation = read_configs(run)
    metrics = read_json(run / "metrics.json")
    if isinstance(metrics, dict):  # NaN (a file not written by viker, which writes null) is "not measured" too
        metrics = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    if not holds_columns(metrics):
        scope = ((evaluation or {}).get("eval") or {}).get("scope")
        if isinstance(metrics, dict) and scope:  # an evaluation that measured something else
            from viker.eval.evaluate import only_option

            only = " ".join(only_option(name, scope) for name in scope)
            raise VikerError(f"{run}/metrics.json holds none of the table's columns: its evaluation ({only}) measured "
                             "none of them; they come from the forget set's tasks, the test set's multiple choice, "
                             "and the retain and real sets' multiple choice and generation")
        if (run / "model" / "metrics.json").is_file():  # a finetune's own figures here, its evaluation there
            raise VikerError(in_model)
        raise VikerError(f"{run}/metrics.json holds no evaluation's metrics; {evaluate}")
    # the columns, and the letter-mode shares the sentences under the table read: finite numbers (true is no figure)
    read = [c.key for c in COLUMNS + CLEAR_COLUMNS] + [k for k in metrics if k.endswith("_unparsed")]
    bad = [k for k in read if metrics.get(k) is not None and (isinstance(metrics[k], bool) or not isinstance(
        metrics[k], (int, float)) or not math.isfinite(metrics[k]))]
    if bad:
        raise VikerError(f"{run}/metrics.json: {bad[0]} is {metrics[bad[0]]!r}, not a finite number")
    source = _what_was_evaluated(config, evaluation)
    vanilla = "retain_model" if source.get("finetune", {}).get("without") else "vanilla"
    method = {"finetune": vanilla, "unlearn": source.get("method", {}).get("name")}.get(source.get("command"))
    settings = {k: v for k, v in source.get("method", {}).items()
                if k not in ("name", "title", "forget_split", "retain_split")}
    train = source.get("unlearn", {}).get("train", {})
    if train:  # the budget: what tells apart snapshots of one run, or runs of one method for different lengths
        settings |= {"max_steps": train["max_steps"]} if train.get("max_steps") else {"epochs": train["epochs"]}
    training = {k: train[k] for k in TRAINING_SETTINGS if k in train}
    if "mixed_precision" in training and training["mixed_precision"] is None:  # the launcher's: as it ran
        training["mixed_precision"] = source.get("runtime", {}).get("mixed_precision")
    if train and source.get("runtime", {}).get("weights_dtype"):  # what it trained in (--dtype auto resolved)
        training["dtype"] = source["runtime"]["weights_dtype"]
    if train and source.get("saved"):  # merged or the adapter alone: a merge into 16-bit weights rounds the update
        training["saved"] = source["saved"]
    unlearned = source.get("unlearn", {})
    if source.get("command") == "unlearn" and unlearned.get("tuning") and method != "cagul":
        training["tuning"] = unlearned["tuning"]  # LoRA or every weight (CAGUL trains modules of its own)
        if unlearned["tuning"] == "lora":  # the adapter's shape and dropout
            training |= {f"lora_{k}": v for k, v in (unlearned.get("lora") or {}).items() if k in LORA_SETTINGS}
    started = unlearned.get("model") if source.get("command") == "unlearn" else None
    starts_from = model_named(started) if started else None
    if starts_from:  # named by its run's folder, where runs of one method start from different models
        folder = Path(starts_from)
        training["from"] = folder.parent.name if folder.name == "model" else folder.name
    if unlearned.get("benchmark", "mllmu") == "mllmu" and source.get("command") == "unlearn":
        training["train_on"] = unlearned.get("train_on", "all")  # what it trained on; all before it was recorded
    elif source.get("command") == "unlearn" and unlearned.get("forget"):  # CLEAR's forget10 or forget10+tofu: scored
        training["unlearned_on"] = unlearned["forget"]  # alike (scored_split), trained on other data
    evaluated = (evaluation or {}).get("eval", {})
    benchmark = benchmark_of(metrics)
    answers = read_records(run / "generations.jsonl") if benchmark == "mllmu" and \
        (run / "generations.jsonl").is_file() else []
    retain_limit = evaluated.get("retain_limit")
    if retain_limit is None and "retain_limit" in evaluated:
        retain_limit = "all"  # every retain person (a recorded null): a setting, unlike one never recorded
    if isinstance(retain_limit, int) and answers and \
            len({r.get("profile") for r in answers if r.get("set") == "retain"}) < retain_limit:
        retain_limit = "all"  # a limit that left nobody out, as an evaluation recorded it before it said so
    scored = {"mc_mode": evaluated.get("mc_mode"), "retain_limit": retain_limit, "judge": evaluated.get("judge"),
              "gib_model": evaluated.get("gib_model"),
              # an MLLMU-Bench evaluation recorded before --test-images asked with the first photo
              "test_images": evaluated.get("test_images", "first") if evaluated and benchmark == "mllmu" else None,
              "max_new_tokens": evaluated.get("max_new_tokens"),
              "eval_dtype": (evaluation or {}).get("weights_dtype")}  # what the model was scored in (--dtype)
    if benchmark == "mllmu":  # a setting that changed none of the figures measured is no part of what they mean
        measured = [k for k, v in metrics.items() if v is not None]
        scored = {k: v if any(SETTING_CHANGES[k].search(m) for m in measured) else None for k, v in scored.items()}
    # the questions each column is over, as the evaluation's answers record them (CLEAR: as its figures count them)
    asked = questions_behind(answers) if benchmark == "mllmu" else items_behind(metrics)
    # the benchmark's files by their contents, hashed when it was evaluated (the same files in another layout are
    # the same benchmark); a benchmark read by hub id, its name
    files, data = (evaluation or {}).get("data_files"), (evaluation or {}).get("data")
    fingerprint = ("files:" + hashlib.sha256(json.dumps(sorted(files.values())).encode()).hexdigest()[:16] if files
                   else f"hub:{data}" if data and is_hub_id(data) else None)
    return {"method": method, "title": source.get("method", {}).get("title"), "settings": settings,
            "training": training, "benchmark": benchmark,
            "forget_split": scored_split(evaluated.get("forget"), benchmark),
            "made_for": split_made_for(source, benchmark), **scored,
            "data": data, "asked": asked, "model": (evaluation or {}).get("model"), "starts_from": starts_from,
            # the weights scored, and those an unlearning run started from (hashes): a model made again at one path
            "scored_files": (evaluation or {}).get("model_files"),
            "start_files": source.get("model_files") if source.get("command") == "unlearn" else None,
            "forget_quality_reference": (evaluation or {}).get("forget_quality_reference"),
            "data_files": fingerprint, "recorded": evaluation is not None,
            "metrics": metrics, "path": str(run)}


# The MLLMU-Bench figures each evaluation setting changes, by key: runs evaluated only on figures a setting does
# not change may differ in it and share a table. (A CLEAR evaluation scores every set together.)
SETTING_CHANGES = {
    "mc_mode": re.compile(r"_(acc|unparsed)(_|$)"),
    "test_images": re.compile(r"^test_"),
    "retain_limit": re.compile(r"^retain_"),
    "max_new_tokens": re.compile(r"rouge|bleu|coherence|gib|factuality"),
    "judge": re.compile(r"factuality"),
    "gib_model": re.compile(r"(^|_)gib$"),
    "eval_dtype": re.compile(""),  # every figure
}


# settings whose recorded value is a code for a choice: what the choice is
SETTING_VALUES = {"topk": {-1: "auto", None: "full"}, "reference_model": {None: "the starting model"},
                  "layers": {None: "middle"}, "heads": {None: "all"}, "mixed_precision": {None: "the launcher's"}}


def setting_text(key: str, value) -> str:
    """A setting as a label shows it: ``λ=10``, ``β=0.1``, ``k=5``, ``topk=auto``."""
    value = SETTING_VALUES.get(key, {}).get(value, value) if isinstance(value, (int, type(None))) else value
    return f"{SETTING_NAMES.get(key, key)}={value:g}" if isinstance(value, float) else \
        f"{SETTING_NAMES.get(key, key)}={value}"


BUDGET = ("epochs", "max_steps")  # a run records one of them: the other's absence is a budget of another kind


def _differ(row: dict, twins: list[dict], group: str) -> str:
    """The settings of ``group`` in which ``row`` differs from one of its twins, as a label shows them. A setting
    a twin's record leaves out (one its variant of the method never read) sets nothing apart."""
    mine = row.get(group, {})
    return ", ".join(setting_text(k, v) for k, v in mine.items()
                     if any((k in r.get(group, {}) or k in BUDGET) and r.get(group, {}).get(k) != v for r in twins))


def _folder_name(path: str, others: list[str]) -> str:
    """The last parts of ``path``, as few as tell it from ``others`` (``seed1/ga`` beside ``seed0/ga``)."""
    parts = Path(path).parts
    for n in range(1, len(parts) + 1):
        if sum(Path(o).parts[-n:] == parts[-n:] for o in others) <= 1:
            return str(Path(*parts[-n:]))
    return path


def _labels(rows: list[dict]) -> list[str]:
    """Each row's name in the table: its method's title; where several rows share a method, what sets
    them apart (the method and training settings that differ, else as much of the folder's path as tells
    them apart); a model that is no run of ours, by its folder's name. Rows whose names would still be
    alike get as much of their folders' paths as tells them apart."""
    names = []
    for row in rows:
        if row["method"] is None:
            names.append(_folder_name(row["path"], [r["path"] for r in rows if r["method"] is None]))
            continue
        twins = [r for r in rows if r["method"] == row["method"]]
        apart = ", ".join(filter(None, (_differ(row, twins, group) for group in ("settings", "training")))) or \
            _folder_name(row["path"], [r["path"] for r in twins])
        names.append(label(row) + (f" ({apart})" if len(twins) > 1 else ""))
    alike = [[r["path"] for r, other in zip(rows, names) if other == name] for name in names]
    return [name if len(same) == 1 else f"{name} ({_folder_name(row['path'], same)})"
            for row, name, same in zip(rows, names, alike)]


def starting_models(rows: list[dict]) -> str:
    """A sentence under the table where the unlearning runs do not all start from the vanilla row's model: each
    model they start from, with its runs (an empty string where they all start from one, the vanilla row's, with
    the weights that row scored: :func:`other_weights`)."""
    from viker.runs import model_named

    starts: dict[str, list[str]] = {}
    for row in rows:
        if row.get("starts_from"):
            starts.setdefault(row["starts_from"], []).append(row["label"])
    vanilla = [model_named(r["model"]) for r in rows if r["method"] == "vanilla" and r.get("model")]
    if not starts or (len(starts) == 1 and set(vanilla) <= set(starts)):
        return other_weights(rows)
    listed = "; ".join(f"`{model}` ({', '.join(labels)})" for model, labels in starts.items())
    other = list(dict.fromkeys(cell(m) for m in vanilla if m not in starts))
    if len(vanilla) == 1:
        unused = f"; the vanilla row is `{other[0]}`, which none starts from" if other else ""
    else:  # several vanilla rows: those some run starts from are no news
        unused = f"; none starts from `{'` or `'.join(other)}` (the model of a vanilla row)" if other else ""
    return (f" The unlearning runs start from different models than one another or the vanilla row: {listed}{unused}."
            + other_weights(rows))


def other_weights(rows: list[dict]) -> str:
    """A sentence naming the unlearning runs that start from the folder of a vanilla row's model, but from other
    weights than the ones that row scored (by the hashes both recorded): that model was made again between them."""
    from viker.model import same_weights
    from viker.runs import model_named

    scored = {model_named(r["model"]): r["scored_files"] for r in rows
              if r["method"] == "vanilla" and r.get("model") and r.get("scored_files")}
    remade = [r for r in rows if r.get("start_files") and r.get("starts_from") in scored
              and not same_weights(r["start_files"], scored[r["starts_from"]])]
    if not remade:
        return ""
    folders = "` or `".join(dict.fromkeys(cell(r["starts_from"]) for r in remade))
    return (f" {', '.join(r['label'] for r in remade)} started from other weights in `{folders}` than the vanilla "
            "row scored there (made again between them, by the weights' hashes): that row is not the model "
            f"{'it' if len(remade) == 1 else 'they'} unlearned from.")


def _one_value(rows: list[dict], key: str, what: str, option: str | None = None) -> str | None:
    """The value of ``key`` that every row shares (rows that did not record it aside), or an error (naming the
    ``option`` of `viker eval` that sets it, where one does)."""
    from viker.errors import VikerError

    values = {r[key] for r in rows if r[key] is not None}
    if len(values) > 1:
        listed = ", ".join(f"{r['path']} ({r[key]})" for r in rows if r[key] is not None)
        again = f"; evaluate them again (viker eval) with one {option}" if option else ""
        raise VikerError(f"these runs were evaluated with different {what}, so one table cannot compare them: "
                         f"{listed}{again}")
    return next(iter(values), None)


def check_one_row_per_model(rows: list[dict]) -> None:
    """One model evaluated into two folders (``viker eval --out RUN`` and ``--out RUN-eval``) is one row: two
    would be bolded together, as if two runs agreed. A run or model folder evaluated in place is the model there
    now (a run moved aside and made again is another model); an evaluation in a folder of its own, the model it
    recorded, unless the weights there were written after it (made again since: not the model it evaluated)."""
    from viker.errors import VikerError
    from viker.model import WEIGHT_FILES
    from viker.runs import model_folder, read_configs

    def model_of(path: Path) -> Path:  # a run folder of ours by its model/, a CAGUL run by its modules
        return (path / "cagul").resolve() if (path / "cagul").is_dir() else model_folder(path)

    def written(folder: Path) -> float:
        return max((f.stat().st_mtime for pattern in WEIGHT_FILES for f in folder.glob(pattern)), default=0.0)

    seen = {}
    for row in rows:
        here = Path(row["path"])
        if read_configs(here)[0].get("command") != "eval":
            model = str(model_of(here))
        elif row["model"] and Path(row["model"]).exists():
            folder = model_of(Path(row["model"]))
            if written(folder) > (here / "metrics.json").stat().st_mtime:
                continue
            model = str(folder)
        elif row["model"]:
            model = row["model"]  # a hub id, or a folder no longer there
        else:
            continue
        if model in seen:
            raise VikerError(f"{seen[model]} and {row['path']} are evaluations of one model ({model}): give one of "
                             "them")
        seen[model] = row["path"]


REPORT_FILES = ("report.md", "results.json", "tradeoff.png")  # what `viker report` writes into its --out


def _report_folder(out: str | Path) -> Path:
    """``--out`` of a report: new or empty, or an earlier report's (which this one replaces); never a run's, an
    evaluation's, a demo's or another folder of files."""
    from viker.errors import VikerError
    from viker.runs import out_folder, visible_entries

    folder = out_folder(out)
    if any((folder / name).is_file() for name in ("config.json", "metrics.json")):
        raise VikerError(f"--out {out}: a run's or an evaluation's folder; write the report into a folder of its own")
    if (folder / "synth.json").is_file():  # `viker demo` writes it beside its own report
        raise VikerError(f"--out {out}: a demo's folder, whose report this would replace; write the report into a "
                         "folder of its own")
    others = [name for name in visible_entries(folder) if name not in REPORT_FILES]
    if others:  # a benchmark's folder, say
        raise VikerError(f"--out {out}: holds more than a report's files ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); write the report into a folder of its own")
    return folder


def _comparable_rows(paths: list[str]) -> tuple[list[dict], dict]:
    """The rows of ``paths``, the references first, and the settings they share (``shared``), refused where the
    runs cannot share one table: other benchmarks, benchmark files or forget splits, a run made for another split,
    evaluations read otherwise or not recorded, one model twice."""
    from viker.errors import VikerError
    from viker.runs import EVAL_CONFIG

    seen = {}
    for p in paths:  # one row per run: a run given twice would be bolded twice, as if two agreed
        if (where := Path(p).resolve()) in seen:
            raise VikerError(f"{p}: the same folder as {seen[where]}, given twice")
        seen[where] = p
    # the references (vanilla, retain model) first, as papers list them; the runs in the order given
    rows = sorted((read_run(p) for p in paths), key=lambda r: r["method"] not in REFERENCES)
    shared = {"benchmark": _one_value(rows, "benchmark", "benchmarks")}
    # the benchmark is told by the figures themselves; what the checks below read is recorded with each evaluation:
    # one that records none (its metrics.json copied alone) beside those that do cannot be checked against them
    # (figures written by hand, all alike, are the writer's to compare)
    for row in rows if any(r["recorded"] for r in rows) else []:
        if not row["recorded"]:
            raise VikerError(f"{row['path']}: how it was evaluated is not recorded (no {EVAL_CONFIG}, nor an "
                             "evaluation's config.json), so nothing tells whether its figures were measured as the "
                             "others' (the forget split, the multiple-choice mode, the benchmark's files); evaluate "
                             "it again with viker eval, which records them")
    # same split names, other people: no one table. Hashes and a hub id cannot be compared (a local snapshot of
    # the hub's benchmark is the same one), so each is compared with its kind.
    if any(len({f for r in rows if (f := r["data_files"]) and f.startswith(kind)}) > 1 for kind in ("files:", "hub:")):
        listed = ", ".join(f"{r['path']} (on {r['data']})" for r in rows if r["data_files"])
        raise VikerError(f"these runs were evaluated on different benchmark files, so one table cannot compare "
                         f"them: {listed}")
    forget = shared["forget"] = _one_value(rows, "forget_split", "forget splits")
    for row in rows:  # a run made for another split: its forget and retain sets mix whom it forgot and whom not
        if forget and row["made_for"] and row["made_for"][0] != forget:
            split, how = row["made_for"]
            raise VikerError(f"{row['path']} was {how} {split} and evaluated on {forget}, so its figures are not "
                             f"those of a model made for {forget}; evaluate it with --forget {split}, and report it "
                             f"with runs made for {split}")
    # how the evaluations read multiple choice and Test_Set; the retain figures' people, the answers' length (said
    # under the table, as they change what it means); one judge's scores are no other's, nor one classifier's
    for key, option in (("mc_mode", "--mc-mode"), ("test_images", "--test-images"),
                        ("retain_limit", "--retain-limit"), ("max_new_tokens", "--max-new-tokens"),
                        ("judge", "--judge"), ("gib_model", "--gib-model"), ("eval_dtype", "--dtype")):
        shared[key] = _one_value(rows, key, option, option)
    # CLEAR's forget quality is a closeness to one model: to another one, another measure
    shared["reference"] = _one_value(rows, "forget_quality_reference",
                                     "--retain-model (the model forget quality compares with)")
    check_one_row_per_model(rows)  # evaluated alike, in two folders
    return rows, shared


def _evaluation_notes(rows: list[dict], shared: dict) -> str:
    """What the table's figures are, as the evaluations read them: the scales, the split and the modes, and what
    changes what a figure means (the questions behind Forget ACC, the retain people, the starting models)."""
    from viker.eval.metrics import mostly_unread, unread_replies

    benchmark, mc_mode, reference = shared["benchmark"], shared["mc_mode"], shared["reference"]
    split = shared["forget"] or "a forget split not recorded"
    judged = any(r["metrics"].get(key) is not None for r in rows for key in ("forget_factuality", "retain_factuality"))
    by = f", by `{shared['judge']}`" if shared["judge"] else ""
    scales = "All numbers are percentages" + (f" but the factuality judge's scores (1 to 10{by})" if judged else "")
    if benchmark == "clear":
        coherent = any(r["metrics"].get("coherence") is not None for r in rows)
        evaluated = (f"All numbers are in [0, 1], as CLEAR reports them{' but coherence, a percentage' * coherent}. "
                     f"Evaluated on {split}.")
        if reference:  # as the evaluations that recorded theirs say: one written before they did, not a word
            silent = [cell(r["path"]) for r in rows
                      if r["metrics"].get("forget_quality") is not None and not r["forget_quality_reference"]]
            evaluated += f" Forget quality compares with the model in `{reference}`" + (
                f" (the evaluations in {', '.join(silent)} do not record theirs)" if silent else "") + "."
        unmeasured = [r["label"] for r in rows if r["method"] not in REFERENCES
                      and r["metrics"].get("forget_quality") is None]
        if unmeasured:  # a dash that is no score of theirs
            evaluated += (f" {', '.join(unmeasured)} {'was' if len(unmeasured) == 1 else 'were'} evaluated without "
                          "--retain-model, so without forget quality.")
    else:
        read = " (a generated letter, read by the reply's first character as MLLMU-Bench reads it)" * (
            mc_mode == "first_char")
        chosen = any("_acc" in k and v is not None for r in rows for k, v in r["metrics"].items())
        mode = f", multiple choice by {mc_mode or 'a mode not recorded'}{read}" if mc_mode or chosen else ""
        evaluated = f"{scales}. Evaluated on {split}{mode}."
    if shared["max_new_tokens"] is not None:
        evaluated += f" Greedy replies of at most {shared['max_new_tokens']} new tokens."
    if shared["gib_model"] and any(r["metrics"].get("gib") is not None for r in rows):
        evaluated += f" GIB by the gibberish classifier in `{shared['gib_model']}`."
    if shared["test_images"] == "all" and any(r["metrics"].get("test_acc") is not None for r in rows):
        evaluated += " Gen. ACC asks each image question with every Test_Set photo of the person."
    asked = {r["asked"].get("forget_acc") for r in rows if r["metrics"].get("forget_acc") is not None} - {None}
    if len(asked) == 1 and (n := asked.pop()):  # how far apart two Forget ACCs must be to tell them apart
        evaluated += (f" Forget ACC is over {n} image questions, one question {100 / n:.1f} points: figures a few "
                      "questions apart cannot be told apart.")
    has_retain = any(k.startswith("retain_") and v is not None for r in rows for k, v in r["metrics"].items())
    if (retain_limit := shared["retain_limit"]) is not None and has_retain:
        if benchmark == "clear":  # CLEAR's --retain-limit counts items (an image each), not persons
            people = ("every retain item" if retain_limit == "all" else
                      f"the first {retain_limit} retain items (rows of retain_perturbed, an image each)")
        else:
            people = "every retain person" if retain_limit == "all" else f"{retain_limit} retain people"
        evaluated += f" Retain figures over {people}."
    evaluated += starting_models(rows)
    unread = [f"{r['label']} ({', '.join(f'{k[:-9]} {v:.0f}%' for k, v in shares.items())})" for r in rows
              if (shares := mostly_unread(r["metrics"]))]
    if unread:  # an ACC of 0 there is no forgetting: a model that does not answer with a letter
        evaluated += (f" Most multiple-choice replies {unread_replies(mc_mode)}, and count as wrong, for "
                      f"{'; '.join(unread)}: "
                      "their ACC figures say nothing of what they know, and are not marked best (--mc-mode "
                      "likelihood scores such models).")
    return evaluated


def run_report(paths: list[str] | str, out: str | Path, title: str | None = None) -> list[dict]:
    """``viker report``: the paper-style table of evaluated runs (report.md, results.json) and their
    forgetting/retention plot (tradeoff.png), in ``out``. Returns the rows."""
    from viker.errors import VikerError
    from viker.runs import write_json, written_together

    if isinstance(paths, (str, Path)):  # one folder, given alone (a string is no list of folders to iterate)
        paths = [paths]
    if not paths:
        raise VikerError("give at least one evaluated run folder")
    out = _report_folder(out)
    rows, shared = _comparable_rows(paths)
    forget = shared["forget"]
    for row, name in zip(rows, _labels(rows)):
        row["label"] = name
    out.mkdir(parents=True, exist_ok=True)
    axes = CLEAR_AXES if shared["benchmark"] == "clear" else MLLMU_AXES
    plotted = [r for r in rows if all(_measured(r["metrics"].get(key)) for key in (axes.x, axes.y))]
    # a log axis has no place for 0 (CLEAR's forget quality, where the KS test's p-value underflows), and an ACC of
    # letter replies that mostly named no option says nothing (the table marks no best by it): said, not lost
    off_axis = [r for r in plotted if axes.ylog and r["metrics"][axes.y] <= 0]
    unread = [r for r in plotted if reads_no_letter(r, axes.x)]
    plotted = [r for r in plotted if r not in off_axis and r not in unread]
    why = ("evaluated without `--retain-model`, which forget quality is measured against" if axes is CLEAR_AXES
           else "evaluated with `--only`, or on fewer sets")
    unplotted = "" if plotted or off_axis or unread else (
        f"\nNo trade-off plot: no run has both `{axes.x}` and `{axes.y}` ({why}).\n")

    def settings_text(r: dict) -> str:  # the method's settings, then the training's: those a label names a run by
        return ", ".join(setting_text(k, v) for k, v in (r["settings"] | r["training"]).items()) or "–"

    listing = "\n".join(f"| {cell(r['label'])} | `{cell(r['path'])}` | {r['method'] or 'not a viker run'} | "
                        f"{cell(settings_text(r))} |" for r in rows)
    if any(r["settings"].get("topk") == -1 for r in rows):  # a code the table alone would not explain
        from viker.methods.reference import AUTO_TOPK, FULL_VOCAB_LIMIT

        listing += (f"\n\ntopk=auto: ViKeR's reference distributions R̂ are kept whole for a vocabulary of up to "
                    f"{FULL_VOCAB_LIMIT} tokens, else as each answer token's {AUTO_TOPK} most likely tokens.")
    plot = "\n![trade-off](tradeoff.png)\n" if plotted else unplotted
    if off_axis:
        plot += (f"\n{', '.join(cell(r['label']) for r in off_axis)}: `{axes.y}` 0, which the plot's log axis cannot "
                 "show, so left off it.\n")
    if unread:
        plot += (f"\n{', '.join(cell(r['label']) for r in unread)}: `{axes.x}` of letter replies that mostly named no "
                 "option, which says nothing of what the model knows, so left off it.\n")
    if (plotted or off_axis or unread) and (partial := [r for r in rows if r not in plotted + off_axis + unread]):
        plot += (f"\nNot on the plot, having no `{axes.x}` or no `{axes.y}`: "
                 f"{', '.join(cell(r['label']) for r in partial)}.\n")
    evaluated = _evaluation_notes(rows, shared) + unscored(rows)
    text = f"""# {title or f"Unlearning {forget or ''}".strip()}

{markdown_table(rows)}

Best value of each column among the unlearning methods in bold (the vanilla model, before unlearning, and a
retain model, never trained on the forget split, are references and not compared). {UNMARKED}{none_coherent(rows)} \
{evaluated}
{plot}
## Columns

{column_glossary(rows)}

## Runs

| row | folder | method | settings |
| --- | --- | --- | --- |
{listing}
"""
    # all or none: a report stopped midway left new results beside an earlier report and plot
    with written_together(out) as stage:
        write_json(stage / "results.json", {"runs": rows})
        if plotted:
            # the x column's floor (chance, for Forget ACC), drawn as the table counts it
            chance = next((c.floor for c in COLUMNS_OF[shared["benchmark"]] if c.key == axes.x), None)
            tradeoff_plot(plotted, [], stage / "tradeoff.png",
                          title or f"{forget or 'runs'}: forgetting vs retention", chance=chance, axes=axes)
        (stage / "report.md").write_text(text, encoding="utf-8")
    if not plotted:  # none of these runs was scored on both axes: no plot, and none left from an earlier report
        (out / "tradeoff.png").unlink(missing_ok=True)
    return rows
