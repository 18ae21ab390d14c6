"""The paper-style results table and the forgetting/retention trade-off plot."""

from __future__ import annotations

from pathlib import Path

# (metric key, header, lower is better, what it means)
COLUMNS = [
    ("forget_acc", "Forget ACC", True, "image+text multiple-choice accuracy on the forget people (lower = more forgotten)"),
    ("forget_acc_text", "Forget ACC (text)", True, "the same facts asked by name, without the image"),
    ("test_acc", "Gen. ACC", True, "image+text multiple choice on Test_Set images of the forget people (generalisation of forgetting)"),
    ("forget_rougeL", "Forget R-L", True, "ROUGE-L F of generated answers about the forget people"),
    ("forget_cloze", "Forget cloze", True, "fill-in-the-blank accuracy on the forget people"),
    ("retain_acc", "Retain ACC", False, "image+text multiple-choice accuracy on the retained fictitious people"),
    ("retain_rougeL", "Retain R-L", False, "ROUGE-L F on the retained fictitious people"),
    ("retain_bleu", "Retain BLEU", False, "BLEU (NLTK, method-1 smoothing) on the retained fictitious people"),
    ("real_acc", "Real ACC", False, "image+text multiple-choice accuracy on the real-world (Retain_Set) people"),
    ("real_rougeL", "Real R-L", False, "ROUGE-L F on the real-world people"),
    ("real_bleu", "Real BLEU", False, "BLEU on the real-world people"),
    ("coherence", "Coherence", False, "offline coherence of the answers on the forget set (viker.eval.metrics.coherence)"),
    ("gib", "GIB", False, "mean 'clean' probability of the gibberish classifier on the forget-set answers"),
]


def label(run: dict) -> str:
    """How a run is printed: its own ``label``, else its method's title (``klmin`` -> ``KL-Min``)."""
    from viker.methods import title

    return run.get("label") or title(run["method"])


def _columns(runs: list[dict]) -> list[tuple]:
    return [c for c in COLUMNS if any(c[0] in r["metrics"] for r in runs)]


def markdown_table(runs: list[dict]) -> str:
    """One row per run, the best value of each column (vanilla excluded) in bold."""
    cols = _columns(runs)
    header = "| Method | " + " | ".join(f"{h} {'↓' if low else '↑'}" for _, h, low, _ in cols) + " |"
    lines = [header, "|" + " --- |" * (len(cols) + 1)]
    contenders = [r for r in runs if r["method"] != "vanilla"] or runs
    best = {}
    for key, _, low, _ in cols:
        values = [round(r["metrics"][key], 1) for r in contenders if key in r["metrics"]]  # as printed
        best[key] = (min if low else max)(values) if values else None
    for r in runs:
        cells = []
        for key, _, _, _ in cols:
            v = r["metrics"].get(key)
            text = "–" if v is None else f"{v:.1f}"
            cells.append(f"**{text}**" if v is not None and round(v, 1) == best[key] and r in contenders else text)
        lines.append(f"| {label(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def column_glossary(runs: list[dict]) -> str:
    return "\n".join(f"- **{h}** ({'lower' if low else 'higher'} is better): {text}."
                     for _, h, low, text in _columns(runs))


def plain_table(runs: list[dict], keys=("forget_acc", "test_acc", "retain_rougeL", "real_rougeL", "coherence")) -> str:
    """A compact table for the terminal."""
    width = max(len(label(r)) for r in runs) + 2
    lines = ["method".ljust(width) + "".join(k.rjust(15) for k in keys)]
    for r in runs:
        lines.append(label(r).ljust(width) +
                     "".join(f"{r['metrics'].get(k, float('nan')):15.1f}" for k in keys))
    return "\n".join(lines)


def _nearby(points: list[tuple[float, float, float]], within: float = 4.0) -> list[tuple[list[float], float, float]]:
    """Sweep points ``(λ, x, y)`` gathered where they lie within ``within`` (percentage points) of a
    group's first point, so that one label names them all: ``([λ, ...], x, y)`` per group."""
    groups: list[tuple[list[float], float, float]] = []
    for lam, x, y in points:
        near = next((g for g in groups if abs(g[1] - x) ** 2 + abs(g[2] - y) ** 2 <= within ** 2), None)
        if near:
            near[0].append(lam)
        else:
            groups.append(([lam], x, y))
    return groups


def tradeoff_plot(runs: list[dict], sweep: list[dict], path: Path, title: str = "", chance: float | None = None,
                  incoherent_below: float = 50.0) -> None:
    """Forget accuracy (x, lower is better) against retain ROUGE-L (y, higher is better). ``chance``
    draws the accuracy of a model that knows nothing; a run whose coherence is below ``incoherent_below``
    is crossed out (its answers fell apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if chance is not None:
        ax.axvline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:g}%)")
    if sweep:
        pts = sorted(((s["lam"], s["metrics"]["forget_acc"], s["metrics"]["retain_rougeL"]) for s in sweep))
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "-o", color="#1f77b4", alpha=0.6, ms=4,
                label="ViKeR, λ sweep")
        for lams, x, y in _nearby(pts):
            ax.annotate("λ=" + ", ".join(f"{lam:g}" for lam in lams), (x, y), textcoords="offset points",
                        xytext=(0, 8), ha="center", va="bottom", fontsize=7, color="#1f77b4")  # above the markers
    markers = {"vanilla": ("*", "black"), "viker": ("D", "#1f77b4")}
    points = [*(s["metrics"] for s in sweep), *(r["metrics"] for r in runs)]
    for r in sorted(runs, key=lambda r: r["method"] == "vanilla"):  # vanilla last: on top
        m, c = markers.get(r["method"], ("o", None))
        m = r.get("marker", m)
        ax.scatter(r["metrics"]["forget_acc"], r["metrics"]["retain_rougeL"], marker=m, s=80, color=c, zorder=3,
                   label=label(r))
    bad = [m for m in points if m.get("coherence", 100.0) < incoherent_below]
    if bad:
        ax.scatter([m["forget_acc"] for m in bad], [m["retain_rougeL"] for m in bad], marker="x", s=140, color="black",
                   lw=1.2, zorder=4, label=f"coherence < {incoherent_below:g}")
    ax.set_xlabel("Forget ACC (%)  ← better forgetting")
    ax.set_ylabel("Retain ROUGE-L (%)  ↑ better retention")
    ax.set_title(title or "Forgetting vs retention")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
