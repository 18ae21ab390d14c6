"""The paper-style table, the trade-off plot's labels, and ``viker report`` on evaluated runs."""

import json
import math
import os
import re
import shutil

import pytest

from viker.cli import main
from viker.report import (
    MARKER_AREA,
    _nearby,
    column_glossary,
    markdown_table,
    none_coherent,
    plain_table,
    side_by_side,
    tradeoff_plot,
)


def _runs():
    return [
        {"method": "vanilla", "metrics": {"forget_acc": 100.0, "retain_rougeL": 99.8, "coherence": 99.3}},
        {"method": "ga", "metrics": {"forget_acc": 12.0, "retain_rougeL": 0.0, "coherence": 0.0}},
        {"method": "klmin", "metrics": {"forget_acc": 36.04, "retain_rougeL": 98.1, "coherence": 99.3}},
        {"method": "viker", "label": "ViKeR (λ=10)", "metrics": {"forget_acc": 35.96, "retain_rougeL": 83.6,
                                                                  "coherence": 99.26}},
    ]


def _cells(table: str) -> dict[str, list[str]]:
    """Row label -> cells; a cell ends at a '|' that is not escaped, as Markdown reads it."""
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_table_marks_the_best_unlearning_method_per_column_in_its_direction():
    table = markdown_table(_runs())
    assert table.splitlines()[0] == "| Method | Forget ACC ↓ | Retain R-L ↑ | Coherence ↑ |"
    cells = _cells(table)
    assert list(cells) == ["vanilla", "GA", "KL-Min", "ViKeR (λ=10)"]  # titles, or a run's own label
    # lower is better for Forget ACC, but GA's answers fell apart (coherence 0): its 12.0 is no best forgetting
    assert cells["GA"][0] == "12.0"
    ga = _runs()[1]
    coherent_ga = {**ga, "metrics": {**ga["metrics"], "coherence": 80.0}}
    assert _cells(markdown_table([coherent_ga, *_runs()[2:]]))["GA"][0] == "**12.0**"
    assert cells["KL-Min"][1] == "**98.1**" and cells["vanilla"][1] == "99.8"  # vanilla is not a contender
    # nor is a run whose letter-mode replies mostly named no option, in that set's ACC columns: its 0 says nothing
    silent = {**coherent_ga, "metrics": {**coherent_ga["metrics"], "forget_acc": 0.0, "forget_unparsed": 90.0}}
    forgot = {**_runs()[3], "metrics": {**_runs()[3]["metrics"], "forget_acc": 20.0}}
    marked = _cells(markdown_table([silent, _runs()[2], forgot]))
    assert marked["GA"][0] == "0.0" and marked["ViKeR (λ=10)"][0] == "**20.0**"
    unread = {**silent, "metrics": {"retain_acc": 20.0, "retain_unparsed": 90.0, "coherence": 80.0}}  # nor best kept
    others = [{"method": m, "metrics": {"retain_acc": acc, "coherence": 80.0}} for m, acc in (("npo", 10.0),
                                                                                             ("klmin", 15.0))]
    assert [row[0] for row in _cells(markdown_table([unread, *others])).values()] == ["20.0", "10.0", "**15.0**"]
    assert cells["vanilla"] == ["100.0", "99.8", "99.3"]  # not even where it ties the best (Coherence)
    # ties as printed are all best: 99.3 and 99.26 both print as 99.3
    assert cells["KL-Min"][2] == "**99.3**" and cells["ViKeR (λ=10)"][2] == "**99.3**"
    assert cells["ViKeR (λ=10)"][0] == "36.0" and cells["KL-Min"][0] == "36.0"  # the contenders print alike
    references = [{"method": "retain_model", "metrics": {"forget_acc": 30.0, "retain_rougeL": 90.0, "coherence": 99.0}},
                  _runs()[0]]
    assert "**" not in markdown_table(references)  # with nothing to compare, nothing is the best
    assert "**" not in markdown_table(_runs()[:2])  # nor with one method, best and worst at once
    viker = _runs()[3]
    alike = _cells(markdown_table([_runs()[2], {**viker, "metrics": {**viker["metrics"], "forget_acc": 20.0}}]))
    assert alike["KL-Min"][2] == alike["ViKeR (λ=10)"][2] == "99.3"  # the same everywhere: no best
    assert alike["ViKeR (λ=10)"][0] == "**20.0**" and alike["KL-Min"][1] == "**98.1**"  # but where they differ
    # Forget TR (CLEAR's forget truth ratio) has no better direction: no arrow and nothing in bold
    clear = _cells(markdown_table([{"method": m, "metrics": {"forget_truth_ratio": v}} for m, v in
                                   (("ga", 0.41), ("npo", 0.73))]))
    assert clear == {"GA": ["0.410"], "NPO": ["0.730"]}
    piped = _cells(markdown_table([{**_runs()[1], "label": "GA (runs|a)"}]))  # a '|' stays in its cell
    assert list(piped) == ["GA (runs\\|a)"] and len(piped["GA (runs\\|a)"]) == 3


def test_a_table_where_every_run_fell_apart_says_why_no_forgetting_column_has_a_best():
    runs = _runs()
    assert none_coherent(runs) == ""  # KL-Min and ViKeR answer in sentences
    assert "**" not in markdown_table(runs[:2] + [{**runs[1], "metrics": {**runs[1]["metrics"], "forget_acc": 5.0}}])
    assert none_coherent(runs[:2]) == " Here every unlearning run's coherence is under 50: no column where lower is " \
        "better has a best."
    assert none_coherent(runs[:1]) == ""  # no unlearning run: nothing to say


def test_a_run_whose_coherence_was_not_measured_is_not_best_at_forgetting():
    """Evaluated with --only forget:multiple_choice, a run whose answers fell apart was marked best Forget ACC,
    where the rule keeps such runs out: without coherence nothing tells it from one that forgot."""
    runs = _runs()
    collapsed = {"method": "ga", "label": "GA", "metrics": {"forget_acc": 10.0}}
    held = {**runs[3], "metrics": {**runs[3]["metrics"], "forget_acc": 30.0}}
    cells = _cells(markdown_table([collapsed, runs[2], held]))
    assert cells["GA"][0] == "10.0" and cells["ViKeR (λ=10)"][0] == "**30.0**"
    assert none_coherent([collapsed, held]) == (" GA was evaluated without coherence (no forget-set generation), so "
                                                "nothing tells whether its answers held: not marked best where lower "
                                                "is better either.")
    kept = {"method": "npo", "label": "NPO", "metrics": {"retain_acc": 90.0}}  # higher is better: still a contender
    assert _cells(markdown_table([kept, {**held, "metrics": {"retain_acc": 80.0, "coherence": 99.0}}]))["NPO"] == \
        ["**90.0**", "–"]


def test_every_mllmu_column_points_the_way_the_paper_reads_it():
    """Forgetting columns (the forget people, asked with and without the image, on Test_Set images, in
    generation and cloze) are lower-is-better; retention and fluency columns higher-is-better; the best
    of each is bolded in its own direction."""
    from viker.report import COLUMNS

    low = {"forget_acc", "forget_acc_text", "test_acc", "forget_rougeL", "forget_cloze", "forget_factuality"}
    runs = [{"method": m, "metrics": {c.key: v for c in COLUMNS}} for m, v in (("ga", 60.0), ("npo", 80.0))]
    table = markdown_table(runs)
    assert table.splitlines()[0] == ("| Method | Forget ACC ↓ | Forget ACC (text) ↓ | Gen. ACC ↓ | Forget R-L ↓ | "
                                     "Forget cloze ↓ | Retain ACC ↑ | Retain R-L ↑ | Retain BLEU ↑ | Real ACC ↑ | "
                                     "Real R-L ↑ | Real BLEU ↑ | Coherence ↑ | GIB ↑ | Forget Fact. ↓ | "
                                     "Retain Fact. ↑ |")
    cells = _cells(table)
    for i, c in enumerate(COLUMNS):
        assert (cells["GA"][i], cells["NPO"][i]) == (("**60.0**", "80.0") if c.key in low else ("60.0", "**80.0**"))


def test_a_run_on_the_edge_of_coherence_still_counts_and_reference_rows_keep_their_own_labels():
    """Coherence 50 is not 'under 50': such a run can be best at forgetting. Two vanilla rows (two seeds)
    are told apart by the labels they were given."""
    edge = [{"method": "ga", "metrics": {"forget_acc": 20.0, "coherence": 50.0}},
            {"method": "npo", "metrics": {"forget_acc": 30.0, "coherence": 99.0}}]
    assert _cells(markdown_table(edge))["GA"][0] == "**20.0**"
    below = [{**edge[0], "metrics": {"forget_acc": 20.0, "coherence": 49.9}}, edge[1],
             {"method": "klmin", "metrics": {"forget_acc": 40.0, "coherence": 99.0}}]
    assert _cells(markdown_table(below))["NPO"][0] == "**30.0**"
    printed = [{**edge[0], "metrics": {"forget_acc": 20.0, "coherence": 49.96}}, edge[1]]  # as printed: 50.0
    assert _cells(markdown_table(printed))["GA"] == ["**20.0**", "50.0"]
    vanillas = [{"method": "vanilla", "label": f"vanilla (seed={seed})", "metrics": {"forget_acc": 100.0}}
                for seed in (0, 1)]
    assert list(_cells(markdown_table(vanillas))) == ["vanilla (seed=0)", "vanilla (seed=1)"]


def test_an_accuracy_below_chance_is_no_more_forgetting_than_chance():
    """Picking the true option less often than chance (25% with four options) still tells it apart: such figures
    count as chance, so runs below it tie (12 is no better than 22), and where all are below it none is best."""
    coherent = {"coherence": 99.0}
    runs = [{"method": m, "metrics": {"forget_acc": x, "test_acc": y, **coherent}}
            for m, x, y in (("ga", 12.0, 20.0), ("npo", 22.0, 24.0), ("viker", 30.0, 20.0))]
    cells = _cells(markdown_table(runs))
    assert [cells[m][:2] for m in ("GA", "NPO", "ViKeR")] == [["**12.0**", "20.0"], ["**22.0**", "24.0"],
                                                             ["30.0", "20.0"]]
    assert "a figure below chance (25) counts as chance where the best is marked" in column_glossary(runs)


def test_on_clear_too_a_run_whose_replies_fell_apart_is_not_best_at_forgetting():
    """CLEAR's forgetting columns reach zero when the replies are character soup: such a run is no contender
    there, and the table shows the coherence that says why, after CLEAR's own columns."""
    clear = {"forget_truth_ratio": 0.5, "model_utility": 0.3}
    runs = [{"method": "ga", "metrics": {**clear, "forget_rougeL_recall": 0.0, "coherence": 0.0}},
            {"method": "viker", "metrics": {**clear, "forget_rougeL_recall": 0.2, "coherence": 98.0}},
            {"method": "npo", "metrics": {**clear, "forget_rougeL_recall": 0.4, "coherence": 97.0}}]
    table = markdown_table(runs)
    assert table.splitlines()[0] == "| Method | Model utility ↑ | Forget R-L ↓ | Forget TR | Coherence (%) ↑ |"
    cells = _cells(table)
    assert cells["GA"] == ["0.300", "0.000", "0.500", "0.0"]
    assert cells["ViKeR"] == ["0.300", "**0.200**", "0.500", "**98.0**"]


def test_what_was_not_measured_is_a_dash_and_never_the_best(tmp_path, monkeypatch):
    """An empty split's accuracy is NaN in memory and null in metrics.json; either way its cell is "–", and the
    best of the column is the same whichever order the runs come in."""
    from viker.runs import write_json

    runs = _runs()
    runs[2]["metrics"]["forget_acc"] = float("nan")
    for order in (runs, runs[::-1]):
        cells = _cells(markdown_table(order))
        assert cells["KL-Min"][0] == "–" and cells["ViKeR (λ=10)"][0] == "36.0" and cells["GA"][0] == "12.0"
        assert cells["KL-Min"][1] == "**98.1**"  # the best of a column it was measured in
    write_json(tmp_path / "metrics.json", runs[2]["metrics"])
    assert json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)["forget_acc"] is None
    runs[3]["metrics"]["coherence"] = None  # as metrics.json gives it back: the plot draws, uncrossed
    import matplotlib.figure

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kw: drawn.extend(c.get_label() for c in fig.axes[0].collections))
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png")
    assert drawn == ["GA", "coherence < 50", "KL-Min", "ViKeR (λ=10)", "vanilla"]  # one cross: GA's


def test_a_lambda_label_stays_legible_over_a_run_drawn_where_it_stands(tmp_path, monkeypatch):
    """The sweep's labels sit just above its points, where another run's marker can be: they are drawn over
    every marker and cross, on a ground of their own."""
    import matplotlib.figure

    runs = _runs()
    ga = next(r for r in runs if r["method"] == "ga")
    at = {k: ga["metrics"][k] for k in ("forget_acc", "retain_rougeL", "coherence")}
    sweep = [{"lam": 0.7, "metrics": at}, {"lam": 10, "metrics": {**at, "forget_acc": 30.0, "retain_rougeL": 80.0}}]
    seen = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: seen.update(ax=fig.axes[0]))
    tradeoff_plot(runs, sweep, tmp_path / "tradeoff.png")
    ax = seen["ax"]
    labels = [t for t in ax.texts if t.get_text().startswith("λ=")]
    assert {t.get_text() for t in labels} == {"λ=0.7", "λ=10"}
    top = max(c.get_zorder() for c in ax.collections)
    assert all(t.get_zorder() > top and t.get_bbox_patch() is not None for t in labels)


def test_the_plot_shows_no_negative_tick_on_an_axis_that_is_never_negative(tmp_path, monkeypatch):
    """Every CLEAR run at model utility 0 (all forgotten, or a tiny model): matplotlib centred the column on 0,
    and the x axis read -0.04 as a utility."""
    import matplotlib.figure

    from viker.report import CLEAR_AXES

    runs = [{"method": m, "metrics": {"model_utility": 0.0, "forget_quality": q, "coherence": 90.0}}
            for m, q in (("ga", 1e-5), ("viker", 1e-3), ("vanilla", 1e-8))]
    seen = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: seen.update(ax=fig.axes[0]))
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png", axes=CLEAR_AXES)
    ticks, (lo, hi) = seen["ax"].get_xticks(), seen["ax"].get_xlim()
    assert 0 in ticks and min(ticks) == 0 and lo < 0 < hi  # the runs' column still drawn clear of the frame
    # and model utility is drawn on its whole scale, 0 to 1: a gap of 0.07 between runs is not drawn large
    for r, utility in zip(runs, (0.45, 0.52, 0.5)):
        r["metrics"]["model_utility"] = utility
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png", axes=CLEAR_AXES)
    lo, hi = seen["ax"].get_xlim()
    assert lo < 0 and hi > 1 and min(seen["ax"].get_xticks()) == 0


def test_a_title_or_label_with_dollars_or_of_any_length_is_drawn_as_typed(tmp_path, monkeypatch):
    """matplotlib reads text between two '$' as mathematics: `--title 'GA $\\foo$ run'` stopped the report with a
    traceback, and '$5 vs $10' lost its dollars. A 90-character label squeezed the plot to a strip."""
    import matplotlib.figure

    from viker.report import LABEL_WIDTH

    runs = _runs()
    runs[1]["label"] = "GA $\\alpha$ " + "x" * 80 + " (lr=5e-05)"
    for title in ("GA $\\foo$ run", "cost $5 vs $10_a^b"):
        tradeoff_plot(runs, [], tmp_path / "tradeoff.png", title=title)  # drawn to a file: the text is laid out
        assert (tmp_path / "tradeoff.png").stat().st_size > 0
    seen = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: seen.update(ax=fig.axes[0]))
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png", title="cost $5 vs $10_a^b " + "y " * 60)
    ax = seen["ax"]
    assert ax.title.get_text().startswith(r"cost \$5 vs \$10_a^b") and "\n" in ax.title.get_text()  # shown, wrapped
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png", title="forget_10, tiny LLaVA\n--fast: a quick look")
    assert seen["ax"].title.get_text() == "forget_10, tiny LLaVA\n--fast: a quick look"  # its own breaks kept
    shown = next(t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("GA"))
    assert len(shown.replace("\\$", "$")) == LABEL_WIDTH  # its middle left out: the method and setting kept
    assert shown.startswith(r"GA \$") and shown.endswith("x (lr=5e-05)")
    # two labels shortened alike, where the setting that tells them apart is in the middle: each shown whole
    twins = [f"GA {'x' * 40} lr={lr} {'y' * 40}" for lr in ("1e-4", "2e-4")]
    runs[1]["label"], runs[2]["label"] = twins
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png")
    assert set(twins) <= {t.get_text() for t in seen["ax"].get_legend().get_texts()}


def test_terminal_table_names_runs_and_columns_like_the_report():
    lines = plain_table(_runs()).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["vanilla", "GA", "KL-Min", "ViKeR"]
    assert lines[0].split("  ")[0] == "Method" and "Gen. ACC ↓" in lines[0] and "Retain R-L ↑" in lines[0]


def test_runs_of_one_method_are_named_by_the_training_setting_or_the_folders_that_differ():
    from viker.report import _labels

    def run(path, seed, lr=2e-4):
        return {"method": "ga", "settings": {"epochs": 8}, "training": {"seed": seed, "lr": lr}, "path": path}

    assert _labels([run("s/seed0/ga", 0), run("s/seed1/ga", 1)]) == ["GA (seed=0)", "GA (seed=1)"]
    assert _labels([run("ga-slow", 0, 1e-5), run("ga-fast", 0, 1e-2)]) == ["GA (lr=1e-05)", "GA (lr=0.01)"]
    pairs, every = run("ga-pairs", 0), run("ga-every", 0)  # unlearned on the ft_Data pairs, or on all
    pairs["training"]["train_on"], every["training"]["train_on"] = "ft_Data", "all"
    assert _labels([pairs, every]) == ["GA (train_on=ft_Data)", "GA (train_on=all)"]
    # nothing recorded sets them apart: as much of each folder's path as does
    assert _labels([run("a/seed0/ga", 0), run("b/seed0/ga", 0)]) == ["GA (a/seed0/ga)", "GA (b/seed0/ga)"]
    # method and training settings both differ: both say so (β alone named two runs alike)
    npo = [{**run(f"npo{i}", seed), "method": "npo", "settings": {"beta": beta}}
           for i, (beta, seed) in enumerate(((0.1, 0), (0.1, 1), (0.5, 0)))]
    assert _labels(npo) == ["NPO (β=0.1, seed=0)", "NPO (β=0.1, seed=1)", "NPO (β=0.5, seed=0)"]
    # a setting a variant never read is left out of its record: it sets nothing apart; a budget of another kind does
    viker = [{**run(f"viker-{ablation}", 0), "method": "viker", "settings": {"epochs": 8, **settings}}
             for ablation, settings in (("none", {"lam": 0.05, "k": 5, "refs": "people", "ablation": "none"}),
                                        ("no_vis", {"lam": 0.05, "ablation": "no_vis"}),
                                        ("no_reg", {"ablation": "no_reg"}))]
    assert _labels(viker) == ["ViKeR (ablation=none)", "ViKeR (ablation=no_vis)", "ViKeR (ablation=no_reg)"]
    steps = {**run("ga-steps", 0), "settings": {"max_steps": 10}}
    assert _labels([run("ga-epochs", 0), steps]) == ["GA (epochs=8)", "GA (max_steps=10)"]
    # models that are no run of ours, in folders of one name
    other = [{"method": None, "path": f"F/{x}/model"} for x in "xy"]
    assert _labels(other) == ["x/model", "y/model"]


def test_a_run_from_before_its_examples_were_recorded_is_read_as_trained_on_all(runs, tmp_path):
    """It trained on every example then: named apart from a run of today only by what truly differs."""
    import shutil

    from viker.report import read_run

    old = shutil.copytree(runs / "npo-a", tmp_path / "npo-a")
    config = json.loads((old / "config.json").read_text())
    del config["unlearn"]["train_on"]
    (old / "config.json").write_text(json.dumps(config))
    assert read_run(old)["training"] == read_run(runs / "npo-a")["training"]
    assert read_run(old)["training"]["train_on"] == "all"


def test_a_run_given_twice_is_refused(tmp_path):
    from viker.errors import VikerError
    from viker.report import run_report

    with pytest.raises(VikerError, match="given twice"):
        run_report([str(tmp_path / "ga"), str(tmp_path / "ga") + "/"], tmp_path / "report")


def test_sweep_points_that_lie_together_share_one_label():
    points = [(0.3, 24.0, 0.1), (0.7, 30.0, 0.1), (2.0, 34.0, 84.6), (10.0, 36.0, 83.6), (50.0, 34.0, 83.7)]
    assert _nearby(points) == [([0.3], 24.0, 0.1), ([0.7], 30.0, 0.1), ([2.0, 10.0, 50.0], 34.0, 84.6)]
    assert len(_nearby(points, within=0.01)) == 4  # 2 and 50 still share a label, 10 is apart
    # apart as the plot shows them: 3.9 points on an axis that spans 4 (--fast's Retain R-L, 96.1 to 100)
    close_in_data = [(0.7, 40.0, 96.1), (10.0, 40.0, 100.0)]
    assert len(_nearby(close_in_data)) == 1 and len(_nearby(close_in_data, spans=(60.0, 3.9))) == 2


def test_points_that_would_cover_each_other_are_set_side_by_side_around_their_place():
    points = [(46.7, 100.0), (20.0, 100.0), (46.7, 100.0), (100.0, 100.0), (46.7, 100.0), (100.0, 100.0)]
    assert side_by_side(points, width=0.5) == pytest.approx([-1.0, 0.0, 0.0, -0.5, 1.0, 0.5])
    # closer than a marker's width is one row; a width apart is two places
    assert side_by_side([(300.0, 40.0), (300.0, 40.3), (200.0, 40.0), (212.0, 40.0)], width=12.0) == \
        pytest.approx([-0.5, 0.5, 0, 0])
    # markers 0.8 of a width apart covered each other: set a width apart, centred on their places
    points = [(100.0, 50.0), (108.0, 50.0)]
    assert [x + slot * 10.0 for (x, _), slot in zip(points, side_by_side(points, width=10.0))] == \
        pytest.approx([99.0, 109.0])
    # a point no marker covers stays, however long a row beside it
    assert side_by_side([(100.0, 50.0)] * 10 + [(160.0, 50.0)], width=12.0)[-1] == 0


def test_no_marker_of_the_plot_hides_another(tmp_path, monkeypatch):
    import matplotlib.figure

    drawn = {}  # legend label -> where its marker is, in display pixels, and the figure's pixels per point

    def look(fig, path, **kwargs):
        ax = fig.axes[0]
        drawn.update({c.get_label(): ax.transData.transform(c.get_offsets())[0] for c in ax.collections})
        drawn["px per pt"] = fig.dpi / 72
        drawn["CAGUL's place"] = ax.transData.transform((20.0, 100.0))
        drawn["x label"] = ax.get_xlabel()

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", look)
    runs = [{"method": m, "metrics": {"forget_acc": x, "retain_rougeL": y, "coherence": 99.2}}
            for m, x, y in (("vanilla", 100.0, 100.0), ("idkpo", 100.0, 100.0), ("graddiff", 46.7, 100.0),
                            ("npo", 46.7, 99.9), ("viker", 46.7, 100.0), ("cagul", 20.0, 100.0), ("ga", 12.0, 0.0))]
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png")
    px, cagul = drawn.pop("px per pt"), drawn.pop("CAGUL's place")
    assert "drawn side by side" in drawn.pop("x label")  # the axis says why a marker is off its figure
    where = drawn
    names = list(where)
    gaps = [math.dist(where[a], where[b]) for i, a in enumerate(names) for b in names[i + 1:]]
    assert min(gaps) >= 0.99 * MARKER_AREA ** 0.5 * px  # at least a marker's width apart
    # moved only across, so that the retention is read as measured
    assert where["NPO"][1] < where["GradDiff"][1] == where["ViKeR"][1] == where["CAGUL"][1]
    # each group is centred on its place: the middle of the three at 46.7 is exactly there
    graddiff, npo, viker = (where[n][0] for n in ("GradDiff", "NPO", "ViKeR"))
    assert graddiff < npo < viker and abs(npo - (graddiff + viker) / 2) < 1e-6
    assert math.dist(where["CAGUL"], cagul) < 1e-6  # a lone point stays where it is
    tradeoff_plot([r for r in runs if r["method"] in ("cagul", "ga")], [], tmp_path / "tradeoff.png")
    assert "side by side" not in drawn["x label"]  # nothing set aside, nothing to say
    # runs near, not at, one another: markers half to one width apart were left to cover each other
    for apart in (0.9, 1.2):  # points of Forget ACC, about 0.65 and 0.85 of a marker's width here
        near = [{"method": m, "metrics": {"forget_acc": x, "retain_rougeL": 86.0, "coherence": 99.2}}
                for m, x in (("vanilla", 100.0), ("ga", 32.0), ("npo", 32.0 + apart))]
        drawn.clear()
        tradeoff_plot(near, [], tmp_path / "tradeoff.png")
        px, where = drawn.pop("px per pt"), {k: v for k, v in drawn.items() if k not in ("CAGUL's place", "x label")}
        assert len(where) == 3 and math.dist(where["GA"], where["NPO"]) >= 0.99 * MARKER_AREA ** 0.5 * px
        assert where["GA"][0] < where["NPO"][0]  # in the order of their places


def test_retain_rouge_l_is_drawn_on_its_whole_scale(tmp_path, monkeypatch):
    """A run 1.6 points below the others is not drawn as far below them as a run that lost everything (--fast's
    plot spanned 98.4 to 100): the y axis shows 0 to 100 whatever the figures."""
    import matplotlib.figure

    seen = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kw: seen.update(y=fig.axes[0].get_ylim()))
    runs = [{"method": m, "metrics": {"forget_acc": x, "retain_rougeL": y, "coherence": 99.2}}
            for m, x, y in (("vanilla", 100.0, 100.0), ("ga", 66.0, 100.0), ("viker", 40.0, 98.4))]
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png")
    low, high = seen["y"]
    assert low <= -5 and high >= 105


def test_the_sweep_labels_end_inside_the_frame(tmp_path, monkeypatch):
    """A λ label sits above its marker, where matplotlib's y range does not look: at the top of the range it
    crossed the frame."""
    import matplotlib.figure

    over = []

    def look(fig, path, **kwargs):
        ax, renderer = fig.axes[0], fig.canvas.get_renderer()
        over.extend(t.get_window_extent(renderer).y1 - ax.get_window_extent(renderer).y1 for t in ax.texts)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", look)
    sweep = [{"lam": lam, "metrics": {"forget_acc": x, "retain_rougeL": y, "coherence": 99.0}}
             for lam, x, y in ((1.0, 60.0, 99.9), (10.0, 36.0, 83.6), (50.0, 20.0, 40.0))]
    tradeoff_plot(_runs()[:2], sweep, tmp_path / "tradeoff.png")
    assert len(over) == 3 and max(over) < 0


def test_sweep_points_within_a_run_marker_stay_in_sight(tmp_path, monkeypatch):
    """--fast's sweep (λ=0.7 at 98.4, λ=10 at 99.2, both at 40) lies within the ViKeR run's marker, of the
    sweep's own colour: drawn under it, the sweep its legend names showed nowhere on the plot."""
    import matplotlib.figure
    import numpy as np

    seen = {}

    def look(fig, path, **kwargs):
        ax = fig.axes[0]
        fig.canvas.draw()
        seen["pixels"] = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
        x, y = ax.transData.transform((40.0, 99.2))
        seen["at"] = (round(x), round(fig.bbox.height - y))  # rows count from the top

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", look)
    runs = [{"method": m, "metrics": {"forget_acc": x, "retain_rougeL": y, "coherence": 99.2}}
            for m, x, y in (("vanilla", 100.0, 100.0), ("viker", 40.0, 99.2))]
    sweep = [{"lam": lam, "metrics": {"forget_acc": 40.0, "retain_rougeL": y, "coherence": 99.2}}
             for lam, y in ((0.7, 98.4), (10.0, 99.2))]
    tradeoff_plot(runs, sweep, tmp_path / "tradeoff.png")
    col, row = seen["at"]
    across = seen["pixels"][row, col - 3:col + 4]  # the λ=10 point, at the middle of the run's marker
    assert (across.min(axis=-1) > 100).any()  # its light ring shows on the solid blue (31, 119, 180) marker


def test_a_sweep_label_stands_where_it_hides_no_run(tmp_path, monkeypatch):
    """Above its point a λ label would cover a run drawn just above it (the demo's "ViKeR, 5 epochs" was
    lost under one): it goes beside or below instead, and the runs it would have covered stay in sight."""
    import matplotlib.figure

    seen = {}

    def look(fig, path, **kwargs):
        ax, renderer = fig.axes[0], fig.canvas.get_renderer()
        fig.canvas.draw()
        half = MARKER_AREA ** 0.5 * fig.dpi / 72 / 2
        seen["markers"] = [(c.get_label(), ax.transData.transform(c.get_offsets())[0]) for c in ax.collections]
        seen["labels"] = [(t.get_text(), t.get_bbox_patch().get_window_extent(renderer)) for t in ax.texts]
        seen["half"] = half

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", look)
    runs = [{"method": "viker", "label": "ViKeR (λ=10)",
             "metrics": {"forget_acc": 34.0, "retain_rougeL": 73.7, "coherence": 99.2}},
            {"method": "viker_5ep", "label": "ViKeR, 5 epochs", "marker": "X",
             "metrics": {"forget_acc": 34.0, "retain_rougeL": 80.0, "coherence": 99.2}},
            {"method": "ga", "metrics": {"forget_acc": 24.0, "retain_rougeL": 0.0, "coherence": 0.0}}]
    sweep = [{"lam": lam, "metrics": {"forget_acc": 34.0, "retain_rougeL": y, "coherence": 99.2}}
             for lam, y in ((2.0, 76.8), (10.0, 73.7))]
    tradeoff_plot(runs, sweep, tmp_path / "tradeoff.png", chance=25.0)
    (text, box), = seen["labels"]
    assert text == "λ=2, 10"
    h = seen["half"]
    for name, (x, y) in seen["markers"]:
        assert not (box.x0 < x + h and x - h < box.x1 and box.y0 < y + h and y - h < box.y1), name


@pytest.mark.parametrize("others", [2, 8, 12])
def test_no_other_run_is_drawn_in_vikers_colour(others, tmp_path, monkeypatch):
    """ViKeR, its λ sweep and GA were all the same blue: the one comparison the plot is for. The eighth run was the
    retain model's grey."""
    import matplotlib.colors
    import matplotlib.figure

    seen = {}

    def look(fig, path, **kwargs):
        ax = fig.axes[0]
        seen["dots"] = {c.get_label(): matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in ax.collections}
        seen["lines"] = [matplotlib.colors.to_hex(line.get_color()) for line in ax.get_lines()]

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", look)
    runs = _runs() + [{"method": None, "label": f"run {i}", "metrics": {"forget_acc": 9.0 * i, "retain_rougeL": 50.0}}
                      for i in range(others - 2)]
    sweep = [{"lam": lam, "metrics": {"forget_acc": x, "retain_rougeL": 80.0, "coherence": 99.0}}
             for lam, x in ((1.0, 60.0), (10.0, 36.0))]
    runs.append({"method": "retain_model", "metrics": {"forget_acc": 25.0, "retain_rougeL": 90.0}})
    tradeoff_plot(runs, sweep, tmp_path / "tradeoff.png")
    vikers = seen["dots"].pop("ViKeR (λ=10)")
    assert set(seen["lines"]) == {vikers}  # the sweep (its line, and its points drawn over the runs) is ViKeR's
    assert vikers not in seen["dots"].values()
    seen["dots"].pop("retain model")  # nor the greys, the retain model's
    assert not {"#7f7f7f", "#c7c7c7"} & set(seen["dots"].values())


def test_a_run_in_a_lighter_shade_of_anothers_colour_has_another_shape(tmp_path, monkeypatch):
    """Nine runs took tab20, whose colours come in pairs of one hue: GA orange and GradDiff light orange, both
    circles, side by side where both collapsed. Past eight, a run's shade is a lighter one only with another shape."""
    import matplotlib.colors
    import matplotlib.figure

    seen = {}

    def look(fig, path, **kwargs):
        seen["dots"] = [(matplotlib.colors.to_hex(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes())
                        for c in fig.axes[0].collections]

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", look)
    runs = [{"method": None, "label": f"run {i}", "metrics": {"forget_acc": 5.0 * i, "retain_rougeL": 50.0}}
            for i in range(9)]
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png")
    colours, shapes = zip(*seen["dots"])
    assert len(set(colours)) == 9 and colours[:2] == ("#ff7f0e", "#2ca02c")  # tab10's, less its blue and grey
    assert colours[8] == "#ffbb78" and shapes[8] != shapes[0]  # light orange, beside orange: not a circle
    assert len(set(shapes[:8])) == 1


def test_forty_runs_in_one_place_each_keep_a_look_and_a_place_of_their_own(tmp_path, monkeypatch):
    import matplotlib.figure

    seen = {}

    def look(fig, path, **kwargs):
        ax = fig.axes[0]
        seen["dots"] = [(tuple(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes(),
                         ax.transData.transform(c.get_offsets())[0]) for c in ax.collections]
        seen["px per pt"] = fig.dpi / 72

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", look)
    runs = [{"method": None, "label": f"run {i}", "metrics": {"forget_acc": 30.0, "retain_rougeL": 50.0}}
            for i in range(41)]
    tradeoff_plot(runs, [], tmp_path / "tradeoff.png")
    dots = seen["dots"]
    assert len({(colour, shape) for colour, shape, _ in dots}) == 41  # no two legend entries look alike
    gaps = [math.dist(a[2], b[2]) for i, a in enumerate(dots) for b in dots[i + 1:]]
    assert min(gaps) >= 0.99 * MARKER_AREA ** 0.5 * seen["px per pt"]


# --------------------------------------------------------------------------------------------------
# viker report, on runs made and evaluated by the commands themselves
# --------------------------------------------------------------------------------------------------
DATA = ["--forget", "forget_10"]
EVAL = ["--max-new-tokens", "4", "--retain-limit", "2"]


@pytest.fixture(scope="module")
def runs(tiny_dir, bench_dir, tmp_path_factory):
    """A vanilla finetune, GA evaluated in a folder of its own, two NPO runs evaluated in theirs, and a
    model folder that is no run of viker's, all evaluated on forget_10."""
    root = tmp_path_factory.mktemp("runs")
    data = ["--data", str(bench_dir), *DATA]
    assert main(["finetune", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-steps", "1",
                 "--out", str(root / "vanilla")]) == 0
    for name, method in (("ga", ["--method", "ga"]), ("npo-a", ["--method", "npo", "--beta", "0.1"]),
                         ("npo-b", ["--method", "npo", "--beta", "0.5"])):
        assert main(["unlearn", "--model", str(tiny_dir), *data, *method, "--max-steps", "1",
                     "--out", str(root / name)]) == 0
    for model, out in (("vanilla", "vanilla"), ("npo-a", "npo-a"), ("npo-b", "npo-b")):
        assert main(["eval", "--model", str(root / model), *data, *EVAL, "--out", str(root / out)]) == 0
    here = os.getcwd()
    os.chdir(root)  # GA evaluated by relative paths: the report, made from elsewhere, still finds its run
    try:
        assert main(["eval", "--model", "ga", *data, *EVAL, "--out", "ga-eval"]) == 0
    finally:
        os.chdir(here)
    assert main(["eval", "--model", str(tiny_dir), *data, *EVAL, "--out", str(root / "base")]) == 0
    return root


def test_an_evaluation_whose_settings_are_not_recorded_is_not_compared_with_others(runs, tmp_path, capsys):
    """metrics.json copied without its config files: a forget_5 evaluation, or a letter-mode one, sat in a
    forget_10 likelihood table, marked best, the text under the table naming the others' settings."""
    bare = tmp_path / "copied"
    bare.mkdir()
    for name in ("metrics.json", "generations.jsonl"):
        shutil.copy(runs / "ga-eval" / name, bare / name)
    assert main(["report", str(runs / "vanilla"), str(bare), "--out", str(tmp_path / "mixed")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {bare}: how it was evaluated is not recorded (no eval_config.json, nor an evaluation's config.json), "
        "so nothing tells whether its figures were measured as the others' (the forget split, the multiple-choice "
        "mode, the benchmark's files); evaluate it again with viker eval, which records them")
    assert main(["report", str(bare), "--out", str(tmp_path / "alone")]) == 0  # alone, it is compared with nothing
    written = shutil.copytree(bare, tmp_path / "by-hand")  # nor with figures that record no settings either
    assert main(["report", str(bare), str(written), "--out", str(tmp_path / "unrecorded")]) == 0


def test_an_evaluation_beside_a_run_records_its_settings_and_keeps_the_runs(runs):
    config = json.loads((runs / "npo-a" / "config.json").read_text())
    assert config["command"] == "unlearn" and config["method"]["beta"] == 0.1  # still the unlearning run's
    evaluation = json.loads((runs / "npo-a" / "eval_config.json").read_text())
    assert evaluation["command"] == "eval" and evaluation["eval"]["forget"] == "forget_10"
    assert evaluation["eval"]["retain_limit"] == 2 and evaluation["model"] == str(runs / "npo-a")
    # a folder of its own holds the evaluation's config.json, as before
    assert json.loads((runs / "ga-eval" / "config.json").read_text())["command"] == "eval"
    assert not (runs / "ga-eval" / "eval_config.json").exists()


def test_a_report_stopped_midway_leaves_the_earlier_one_as_it_was(runs, tmp_path, capsys, monkeypatch):
    """results.json was written first, the plot and report.md after: Ctrl-C between them left the new results
    beside the earlier report and plot."""
    import viker.report

    assert main(["report", str(runs / "vanilla"), "--out", str(tmp_path)]) == 0
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(viker.report, "tradeoff_plot", stopped)
    assert main(["report", str(runs / "vanilla"), str(runs / "npo-a"), "--out", str(tmp_path)]) == 130
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before


def test_a_clear_run_of_forget_quality_0_is_said_to_be_off_the_log_axis(tmp_path, monkeypatch):
    """The KS test's p-value underflows to 0.0 on large splits: the log axis drew no point for the run, and the
    report, which printed 0.0 in its table, said nothing of it."""
    import matplotlib.figure

    from viker.report import run_report

    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kw: drawn.extend(c.get_label() for c in fig.axes[0].collections))
    for name, quality in (("gone", 0.0), ("kept", 0.02)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"forget_truth_ratio": 0.6, "forget_quality": quality, "model_utility": 0.5}))
    run_report([str(tmp_path / "gone"), str(tmp_path / "kept")], tmp_path / "report")
    report = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "gone: `forget_quality` 0, which the plot's log axis cannot show, so left off it." in report
    assert drawn == ["kept"]
    run_report([str(tmp_path / "gone")], tmp_path / "alone")  # no other run: no plot, and no false reason for it
    alone = (tmp_path / "alone" / "report.md").read_text()
    assert "no run has both" not in alone and "cannot show, so left off it" in alone
    assert not (tmp_path / "alone" / "tradeoff.png").exists()
    (tmp_path / "unscored").mkdir()  # beside it, a run without forget quality: named too
    (tmp_path / "unscored" / "metrics.json").write_text(json.dumps(
        {"forget_truth_ratio": 0.6, "forget_quality": None, "model_utility": 0.5}))
    run_report([str(tmp_path / "gone"), str(tmp_path / "unscored")], tmp_path / "neither")
    assert "Not on the plot, having no `model_utility` or no `forget_quality`: unscored." in \
        " ".join((tmp_path / "neither" / "report.md").read_text().split())
    # alone, it has no plot, for CLEAR's reason (MLLMU-Bench's, --only, is no option of a CLEAR evaluation)
    run_report([str(tmp_path / "unscored")], tmp_path / "none")
    assert "No trade-off plot: no run has both `model_utility` and `forget_quality` (evaluated without " \
        "`--retain-model`, which forget quality is measured against)." in \
        " ".join((tmp_path / "none" / "report.md").read_text().split())


def test_report_tabulates_evaluated_runs_by_what_they_are(runs, bench_dir, tmp_path, capsys, monkeypatch):
    folders = [runs / name for name in ("base", "ga-eval", "vanilla", "npo-a", "npo-b")]
    import viker.report

    plotted = {}
    draw = viker.report.tradeoff_plot
    monkeypatch.setattr(viker.report, "tradeoff_plot", lambda *a, **kw: plotted.update(kw) or draw(*a, **kw))
    assert main(["report", *map(str, folders), "--out", str(tmp_path)]) == 0
    # the plot draws chance, where the table counts a Forget ACC below it as chance
    assert plotted["chance"] == viker.report.CHANCE_ACC
    assert "wrote report.md, results.json, tradeoff.png" in capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    table = report.split("\n\n")[1]
    cells = _cells(table)
    # the finetune is the vanilla row, first as in the papers; GA is named from the run its model came from;
    # the two NPO runs by the setting that tells them apart; the model that is no run of viker's by its folder
    assert list(cells) == ["vanilla", "base", "GA", "NPO (β=0.1)", "NPO (β=0.5)"]
    metrics = {f.name: json.loads((f / "metrics.json").read_text()) for f in folders}
    assert cells["GA"][0].strip("*") == f"{metrics['ga-eval']['forget_acc']:.1f}"
    assert not any(c.startswith("**") for c in cells["vanilla"])  # the model before unlearning is not compared
    assert "A column has a best only where two of the runs that may be marked print different figures" in report
    from viker.data.loader import load_profiles

    n = sum(q.with_image for p in load_profiles(bench_dir, "forget_10") for q in p.mc)
    assert "Evaluated on forget_10, multiple choice by likelihood. Greedy replies of at most 4 new tokens. Forget " \
        f"ACC is over {n} image questions, one question {100 / n:.1f} points: figures a few questions apart " \
        "cannot be told apart. Retain figures over 2 retain people." in " ".join(report.split())
    assert "no more forgetting than knowing nothing. Over {n} questions.".format(n=n) in report  # its count, below
    # the Runs table says what each setting chose, not the code it is recorded as (None: the starting model)
    npo = next(line for line in report.splitlines() if line.startswith("| NPO (β=0.1) | `"))
    assert "reference_model=the starting model" in npo and "None" not in npo
    # and how it was trained: what a label may name a run by (its lr, its tuning) is there to check it against
    assert re.search(r"lr=[0-9.e-]+, batch_size=\d+, .*tuning=\w+", npo), npo
    assert "mixed_precision=no" in npo  # as it ran: left to the launcher, which set none
    from viker.report import setting_text

    assert setting_text("mixed_precision", None) == "mixed_precision=the launcher's"  # a record without how it ran
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in results["runs"]] == ["vanilla", None, "ga", "npo", "npo"]
    assert [r["training"].get("train_on") for r in results["runs"]] == [None, None, "all", "all", "all"]
    assert [r["metrics"] for r in results["runs"]] == [metrics[name] for name in ("vanilla", "base", "ga-eval",
                                                                               "npo-a", "npo-b")]
    assert (tmp_path / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_report_without_figures_for_its_plot_says_why_and_claims_no_retain_people(tiny_dir, bench_dir, tmp_path,
                                                                                    capsys):
    evaluated = tmp_path / "forget-only"
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), *DATA, *EVAL,
                 "--only", "forget:multiple_choice", "--out", str(evaluated)]) == 0
    capsys.readouterr()
    assert main(["report", str(evaluated), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "wrote report.md, results.json in" in printed and "(no plot: no run has both of its figures" in printed
    report = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "No trade-off plot: no run has both `forget_acc` and `retain_rougeL`" in report
    assert "Retain figures" not in report and not (tmp_path / "report" / "tradeoff.png").exists()
    generated = tmp_path / "generation-only"  # no multiple choice asked: no mode of it is named
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), *DATA, *EVAL,
                 "--only", "forget:generation", "--out", str(generated)]) == 0
    assert main(["report", str(generated), "--out", str(tmp_path / "generated")]) == 0
    report = " ".join((tmp_path / "generated" / "report.md").read_text().split())
    assert "Evaluated on forget_10." in report and "multiple choice by" not in report
    assert "was not scored" not in report  # every column it has, it scored


def test_a_run_scored_on_fewer_sets_is_said_to_be_so_where_its_cells_are_blank(runs, tmp_path):
    """A run evaluated with --only beside fully evaluated ones: its – cells are said to be figures not scored, so
    that a reader does not take them for a failure or a zero."""
    import shutil

    ga = tmp_path / "ga"
    shutil.copytree(runs / "ga-eval", ga)
    metrics = json.loads((ga / "metrics.json").read_text())
    (ga / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if not k.startswith("real_")}))
    assert main(["report", str(runs / "vanilla"), str(ga), "--out", str(tmp_path / "report")]) == 0
    said = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "A – where other runs have a figure was not scored: GA (Real ACC, Real R-L, Real BLEU) (evaluated on " \
           "fewer sets or tasks, with viker eval --only, without that judge or classifier, or on a set with no " \
           "questions of the task, recorded as NaN)." in said
    assert said.count("was not scored") == 1  # the vanilla row has every figure


def test_a_nan_in_a_metrics_file_is_not_measured_in_the_table_and_the_plot(runs, tmp_path, monkeypatch):
    """viker writes null for what it did not measure; a metrics.json from elsewhere may hold NaN: the same."""
    import shutil

    import matplotlib.figure

    ga = tmp_path / "ga"
    shutil.copytree(runs / "ga-eval", ga)
    text = (ga / "metrics.json").read_text()
    (ga / "metrics.json").write_text(re.sub(r'"forget_acc": [^,}]+', '"forget_acc": NaN', text))
    drawn = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kw: drawn.extend(c.get_label() for c in fig.axes[0].collections))
    assert main(["report", str(runs / "vanilla"), str(ga), "--out", str(tmp_path / "report")]) == 0
    cells = _cells((tmp_path / "report" / "report.md").read_text().split("\n\n")[1])
    assert cells["GA"][0] == "–" and "vanilla" in drawn and "GA" not in drawn  # not plotted without Forget ACC
    said = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "Not on the plot, having no `forget_acc` or no `retain_rougeL`: GA." in said  # and said so
    assert "A – where other runs have a figure was not scored: GA (Forget ACC)" in said  # a NaN is not a failure
    assert json.loads((tmp_path / "report" / "results.json").read_text())["runs"][1]["metrics"]["forget_acc"] is None


def test_report_refuses_runs_it_cannot_compare(runs, bench_dir, tiny_dir, tmp_path, capsys):
    other = tmp_path / "forget5"
    assert main(["eval", "--model", str(tiny_dir), "--data", str(bench_dir), "--forget", "forget_5", *EVAL,
                 "--only", "forget:multiple_choice", "--out", str(other)]) == 0
    # alone it makes a table of what it was scored on, and no plot: it has no Retain ROUGE-L
    assert main(["report", str(other), "--out", str(tmp_path / "partial")]) == 0
    assert (tmp_path / "partial" / "report.md").read_text().count("| Forget ACC ↓ |") == 1
    assert not (tmp_path / "partial" / "tradeoff.png").exists()
    capsys.readouterr()
    assert main(["report", str(runs / "ga-eval"), str(other), "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err
    assert "different forget splits" in err and "forget_5" in err and "forget_10" in err
    longer = tmp_path / "longer"  # the same run, its answers given more tokens
    assert main(["eval", "--model", str(runs / "ga"), "--data", str(bench_dir), *DATA, "--max-new-tokens", "6",
                 "--retain-limit", "2", "--only", "forget:generation", "--out", str(longer)]) == 0
    capsys.readouterr()
    assert main(["report", str(runs / "ga-eval"), str(longer), "--out", str(tmp_path / "mixed")]) == 2
    assert "different --max-new-tokens" in capsys.readouterr().err
    assert main(["report", str(runs / "vanilla" / "model"), "--out", str(tmp_path / "none")]) == 2
    assert f"no metrics.json; its run folder, {runs / 'vanilla'}, holds the evaluation" in capsys.readouterr().err
    assert main(["report", str(bench_dir), "--out", str(tmp_path / "none")]) == 2  # no advice to evaluate the data
    assert capsys.readouterr().err.strip().endswith("no metrics.json, and neither a run nor a model; give the folders "
                                                    "viker eval wrote into")
    assert main(["report", str(runs), "--out", str(tmp_path / "none")]) == 2  # a folder of evaluated runs
    held = sorted(f for f in runs.iterdir() if (f / "metrics.json").is_file())
    assert capsys.readouterr().err.strip().endswith(f"neither a run nor a model; give the folders viker eval wrote "
                                                    f"into (the evaluations in it: {' '.join(map(str, held[:4]))} ...)")
    assert main(["report", str(runs / "ga"), "--out", str(tmp_path / "none")]) == 2  # a run not yet evaluated
    assert f"no metrics.json; evaluate it first (viker eval --model {runs / 'ga'}" in capsys.readouterr().err
    # the model of a run not yet evaluated (a finetune's folder has its training figures, no evaluation's; a
    # CAGUL run's modules are no model to evaluate): the run is what to evaluate
    fresh = shutil.copytree(runs / "vanilla", tmp_path / "fresh")
    for name in ("eval_config.json", "generations.jsonl"):
        (fresh / name).unlink()
    (fresh / "train_metrics.json").replace(fresh / "metrics.json")
    (tmp_path / "cagul-run" / "cagul").mkdir(parents=True)
    (tmp_path / "cagul-run" / "config.json").write_text(json.dumps({"command": "unlearn", "method": {"name": "cagul"}}))
    for model in (fresh / "model", runs / "ga" / "model", tmp_path / "cagul-run" / "cagul"):
        assert main(["report", str(model), "--out", str(tmp_path / "none")]) == 2
        assert f"no metrics.json; it is the model of the run in {model.parent}: evaluate that first (viker eval " \
               f"--model {model.parent} ... --out {model.parent})" in capsys.readouterr().err
    mix = tmp_path / "mix"  # a folder holding an unevaluated finetune (its own figures) beside an evaluation
    shutil.copytree(fresh, mix / "fresh")
    shutil.copytree(runs / "ga-eval", mix / "ga-eval")
    assert main(["report", str(mix), "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"(the evaluations in it: {mix / 'ga-eval'})")
    # a finetune evaluated in place whose settings file never took its place (stopped as it did) is one, by its
    # figures; a config that is not text at all is one line too
    shutil.copytree(runs / "vanilla", mix / "killed")
    (mix / "killed" / "eval_config.json").unlink()
    (mix / "killed" / "train_metrics.json").unlink()
    assert main(["report", str(mix), "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"(the evaluations in it: {mix / 'ga-eval'} {mix / 'killed'})")
    (mix / "ga-eval" / "config.json").write_bytes(b'{"command": "ev\xff')
    assert main(["report", str(mix / "ga-eval"), "--out", str(tmp_path / "none")]) == 2
    assert "config.json: not JSON" in capsys.readouterr().err
    every = tmp_path / "every"  # scored on every retain person, not on 2
    assert main(["eval", "--model", str(runs / "ga"), "--data", str(bench_dir), *DATA, "--max-new-tokens", "4",
                 "--only", "retain:multiple_choice", "--out", str(every)]) == 0
    capsys.readouterr()
    assert main(["report", str(runs / "ga-eval"), str(every), "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err  # and what to do about it
    assert "different --retain-limit" in err and err.strip().endswith("evaluate them again (viker eval) with one "
                                                                       "--retain-limit")
    limit = tmp_path / "limit"  # a limit above the retain split's size leaves nobody out: it is no limit
    assert main(["eval", "--model", str(runs / "npo-a"), "--data", str(bench_dir), *DATA, "--max-new-tokens", "4",
                 "--retain-limit", "1000", "--only", "retain:multiple_choice", "--out", str(limit)]) == 0
    assert json.loads((limit / "config.json").read_text())["eval"]["retain_limit"] is None
    assert main(["report", str(every), str(limit), "--out", str(tmp_path / "unlimited")]) == 0
    config = json.loads((limit / "config.json").read_text())  # as recorded before a limit was read so
    config["eval"]["retain_limit"] = 1000
    (limit / "config.json").write_text(json.dumps(config))
    assert main(["report", str(every), str(limit), "--out", str(tmp_path / "unlimited")]) == 0
    photos = tmp_path / "photos"  # Gen. ACC over every Test_Set photo, not the first
    assert main(["eval", "--model", str(runs / "ga"), "--data", str(bench_dir), *DATA, "--max-new-tokens", "4",
                 "--retain-limit", "2", "--test-images", "all", "--only", "test:multiple_choice",
                 "--out", str(photos)]) == 0
    capsys.readouterr()
    assert main(["report", str(runs / "ga-eval"), str(photos), "--out", str(tmp_path / "mixed")]) == 2
    assert "different --test-images" in capsys.readouterr().err
    assert not (tmp_path / "mixed").exists()  # nothing written
    assert main(["report", str(photos), "--out", str(tmp_path / "photos-report")]) == 0
    assert "Gen. ACC asks each image question with every Test_Set photo" in \
        " ".join((tmp_path / "photos-report" / "report.md").read_text().split())


def test_a_run_is_scored_and_reported_on_the_split_it_was_made_for(runs, bench_dir, tiny_dir, tmp_path, capsys):
    """A run unlearned on forget_5 and scored on forget_10 would have half its forget people never forgotten,
    and in its retain set people it was asked to forget: evaluation takes its own split unless told otherwise
    (and then says so), and a report refuses it beside forget_10's runs."""
    five = tmp_path / "ga5"
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), "--forget", "forget_5", "--method",
                 "ga", "--max-steps", "1", "--out", str(five)]) == 0
    scope = ["--only", "forget:multiple_choice"]
    assert main(["eval", "--model", str(five), "--data", str(bench_dir), *EVAL, *scope, "--out", str(five)]) == 0
    assert f"{five} on forget_5:" in capsys.readouterr().out
    assert json.loads((five / "eval_config.json").read_text())["eval"]["forget"] == "forget_5"
    elsewhere = tmp_path / "ga5-on-10"
    assert main(["eval", "--model", str(five), "--data", str(bench_dir), *DATA, *EVAL, *scope, "--out",
                 str(elsewhere)]) == 0
    assert f"warning: {five} was unlearned on forget_5, and is evaluated on forget_10" in capsys.readouterr().err
    assert main(["report", str(runs / "ga-eval"), str(elsewhere), "--out", str(tmp_path / "mixed")]) == 2
    assert f"{elsewhere} was unlearned on forget_5 and evaluated on forget_10" in capsys.readouterr().err


def test_a_model_made_for_a_split_of_the_other_benchmark_is_not_held_to_it(runs, tmp_path):
    """A CLEAR retain model (finetuned without forget05) scored on MLLMU-Bench: forget05 is no split there."""
    from viker.report import read_run

    assert read_run(runs / "vanilla")["made_for"] is None
    config = json.loads((runs / "vanilla" / "config.json").read_text())
    retain_model = shutil.copytree(runs / "vanilla", tmp_path / "clear-retain-model")
    config["finetune"]["without"] = "forget05"
    (retain_model / "config.json").write_text(json.dumps(config))
    assert read_run(retain_model)["made_for"] is None


def test_an_evaluation_in_a_runs_model_folder_is_the_runs(runs, bench_dir, tiny_dir, tmp_path):
    """`viker eval --out RUN/model`: the folder's config.json is the model's, and the row is still the run's."""
    from viker.errors import VikerError
    from viker.report import read_run

    vanilla = tmp_path / "vanilla"
    shutil.copytree(runs / "vanilla", vanilla)
    assert main(["eval", "--model", str(vanilla), "--data", str(bench_dir), *DATA, *EVAL, "--only",
                 "forget:multiple_choice", "--out", str(vanilla / "model")]) == 0
    assert read_run(vanilla / "model")["method"] == "vanilla"
    # evaluated there alone, the run points to it (a finetune's folder holding its own training figures too)
    for run in (shutil.copytree(runs / "ga", tmp_path / "ga"), vanilla):
        if run.name == "vanilla":
            for name in ("eval_config.json", "generations.jsonl"):
                (run / name).unlink()
            (run / "train_metrics.json").replace(run / "metrics.json")
        else:
            assert main(["eval", "--model", str(run), "--data", str(bench_dir), *DATA, *EVAL, "--only",
                         "forget:multiple_choice", "--out", str(run / "model")]) == 0
        with pytest.raises(VikerError, match=re.escape(f"its model folder, {run / 'model'}, holds the evaluation")):
            read_run(run)
    # a folder named model/ of no run is no run's model
    (tmp_path / "downloads").mkdir()
    stray = shutil.copytree(tiny_dir, tmp_path / "downloads" / "model")
    with pytest.raises(VikerError, match="no metrics.json; evaluate it first"):
        read_run(stray)


def test_an_evaluation_that_measured_no_column_says_so(runs, bench_dir, tmp_path, capsys):
    scoped = tmp_path / "real-cloze"
    assert main(["eval", "--model", str(runs / "ga"), "--data", str(bench_dir), *DATA, *EVAL, "--only",
                 "real:cloze", "--out", str(scoped)]) == 0
    capsys.readouterr()
    assert main(["report", str(scoped), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert "holds none of the table's columns: its evaluation (--only real:cloze) measured none of them" in err
    assert "viker eval --model" not in err  # it was evaluated: no advice to evaluate it


def test_a_setting_that_changed_none_of_a_runs_figures_does_not_keep_it_out_of_the_table(runs, bench_dir, tmp_path,
                                                                                         capsys):
    """Scored on the forget split's multiple choice alone, a run's answer length, retain people and Test_Set photos
    changed none of its figures: it shares a table with a run scored on everything under other such settings."""
    mc = tmp_path / "mc"
    assert main(["eval", "--model", str(runs / "npo-a"), "--data", str(bench_dir), *DATA, "--max-new-tokens", "6",
                 "--test-images", "all", "--only", "forget:multiple_choice", "--out", str(mc)]) == 0
    capsys.readouterr()
    assert main(["report", str(runs / "ga-eval"), str(mc), "--out", str(tmp_path / "report")]) == 0
    rows = json.loads((tmp_path / "report" / "results.json").read_text())["runs"]
    assert [(r["max_new_tokens"], r["retain_limit"], r["test_images"]) for r in rows] == [(4, 2, "first"),
                                                                                        (None, None, None)]
    assert rows[0]["mc_mode"] == rows[1]["mc_mode"] == "likelihood"  # the one setting its figures depend on
    # under the table, the settings are those of the run whose figures they changed
    report = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "at most 4 new tokens" in report and "every Test_Set photo" not in report


def test_the_report_says_how_first_char_read_the_letters_and_keeps_it_apart_from_likelihood(runs, bench_dir,
                                                                                          tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["eval", "--model", str(runs / "npo-a"), "--data", str(bench_dir), *DATA, "--mc-mode", "first_char",
                 "--only", "forget:multiple_choice", "--out", str(first)]) == 0
    assert main(["report", str(first), "--out", str(tmp_path / "report")]) == 0
    report = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert ("multiple choice by first_char (a generated letter, read by the reply's first character as MLLMU-Bench "
            "reads it).") in report
    assert "no option" not in report  # a reply opening with no letter is counted, and here they did not
    # a model that answers in sentences opens with no letter: its ACC of 0 is said to be no forgetting
    metrics = json.loads((first / "metrics.json").read_text())
    (first / "metrics.json").write_text(json.dumps(metrics | {"forget_acc": 0.0, "forget_unparsed": 96.0}))
    assert main(["report", str(first), "--out", str(tmp_path / "report")]) == 0
    said = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "Most multiple-choice replies opened with no option letter, and count as wrong, for NPO (forget 96%): " \
        "their ACC figures say nothing of what they know" in said
    # nor does the plot draw that ACC of 0 as the most forgetting: the run is left off it, and said to be
    (first / "metrics.json").write_text(json.dumps(metrics | {"forget_acc": 0.0, "forget_unparsed": 96.0,
                                                              "retain_rougeL": 50.0}))
    assert main(["report", str(first), "--out", str(tmp_path / "report")]) == 0
    said = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "NPO: `forget_acc` of letter replies that mostly named no option, which says nothing of what the model " \
        "knows, so left off it." in said
    assert "No trade-off plot" not in said and not (tmp_path / "report" / "tradeoff.png").exists()
    capsys.readouterr()
    assert main(["report", str(runs / "ga-eval"), str(first), "--out", str(tmp_path / "mixed")]) == 2
    assert "--mc-mode" in capsys.readouterr().err


def test_runs_evaluated_on_other_files_under_the_same_split_names_are_not_one_table(runs, bench_dir, tmp_path,
                                                                                      capsys):
    """Another benchmark (another seed, a real copy) has a forget_10 too, of other people: its figures are no row
    of this table."""
    import shutil

    import pyarrow.parquet as pq

    other = tmp_path / "other-bench"
    shutil.copytree(bench_dir, other)
    for path in (other / "forget_10").glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.slice(0, table.num_rows - 1), path)  # one person fewer
    elsewhere = tmp_path / "elsewhere"
    assert main(["eval", "--model", str(runs / "ga"), "--data", str(other), *DATA, *EVAL,
                 "--only", "forget:multiple_choice", "--out", str(elsewhere)]) == 0
    capsys.readouterr()
    assert main(["report", str(runs / "ga-eval"), str(elsewhere), "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err
    assert "evaluated on different benchmark files" in err and f"on {other}" in err
    assert not (tmp_path / "mixed").exists()
    # the same files in another layout (the hub's parquet conversion names them CONFIG/train/0000.parquet): one table
    converted = shutil.copytree(elsewhere, tmp_path / "converted")
    config = json.loads((converted / "config.json").read_text())
    files = json.loads((runs / "ga-eval" / "config.json").read_text())["data_files"]
    config["data_files"] = {f"{name.split('/')[0]}/train/{i:04d}.parquet": digest
                            for i, (name, digest) in enumerate(sorted(files.items()))}
    (converted / "config.json").write_text(json.dumps(config | {"model": str(runs / "npo-a")}))
    assert main(["report", str(runs / "ga-eval"), str(converted), "--out", str(tmp_path / "converted-report")]) == 0
    # read by hub id, a benchmark has a name and no hashes: two names are two benchmarks, and a local snapshot
    # (whose hashes the name cannot be checked against) may stand beside either
    hub = {}
    for repo in ("MLLMMU/MLLMU-Bench", "someone/another-bench"):
        hub[repo] = shutil.copytree(runs / "ga-eval", tmp_path / repo.replace("/", "-"))
        config = json.loads((hub[repo] / "config.json").read_text())
        del config["data_files"]
        (hub[repo] / "config.json").write_text(json.dumps(config | {"data": repo, "model": f"{repo}-tuned"}))
    assert main(["report", *map(str, hub.values()), "--out", str(tmp_path / "hubs")]) == 2
    assert "evaluated on different benchmark files" in capsys.readouterr().err
    assert main(["report", str(runs / "ga-eval"), str(hub["MLLMMU/MLLMU-Bench"]), "--out", str(tmp_path / "one")]) == 0


def test_one_model_evaluated_in_two_folders_is_one_row(runs, bench_dir, tmp_path, capsys):
    """A run evaluated in place and again into a folder of its own is refused as two rows; a run moved aside and
    made again in its folder is another model, though the moved one's record names that folder."""
    import shutil

    again = tmp_path / "ga-again"
    assert main(["eval", "--model", str(runs / "ga" / "model"), "--data", str(bench_dir), *DATA, *EVAL,
                 "--out", str(again)]) == 0
    capsys.readouterr()
    assert main(["report", str(runs / "ga-eval"), str(again), "--out", str(tmp_path / "twice")]) == 2
    assert f"{runs / 'ga-eval'} and {again} are evaluations of one model ({runs / 'ga' / 'model'}): give one of " \
        "them" in capsys.readouterr().err and not (tmp_path / "twice").exists()
    moved = shutil.copytree(runs / "npo-a", tmp_path / "npo-a-first")  # its records still name runs/npo-a
    assert main(["report", str(runs / "npo-a"), str(moved), "--out", str(tmp_path / "report")]) == 0
    # an evaluation of the model that was at runs/ga before it was made again there (weights written since)
    earlier = shutil.copytree(runs / "ga-eval", tmp_path / "ga-earlier")
    os.utime(earlier / "metrics.json", (0, 0))
    assert main(["report", str(earlier), str(again), "--out", str(tmp_path / "report")]) == 0


def test_an_evaluation_is_named_by_the_run_it_scored_though_another_is_made_in_its_folder(runs, bench_dir,
                                                                                           tiny_dir, tmp_path):
    """An evaluation in a folder of its own records the run whose model it scored: a run made again in that run's
    folder (--overwrite), or the folder moved away, leaves its row named by the method and settings it scored."""
    import shutil

    from viker.report import read_run

    run = shutil.copytree(runs / "npo-a", tmp_path / "npo")
    assert main(["eval", "--model", str(run), "--data", str(bench_dir), *DATA, *EVAL,
                 "--out", str(tmp_path / "npo-eval")]) == 0
    assert main(["unlearn", "--model", str(tiny_dir), "--data", str(bench_dir), *DATA, "--method", "ga",
                 "--max-steps", "1", "--out", str(run), "--overwrite"]) == 0
    row = read_run(tmp_path / "npo-eval")
    assert row["method"] == "npo" and row["settings"]["beta"] == 0.1
    shutil.rmtree(run)
    assert read_run(tmp_path / "npo-eval")["method"] == "npo"
    assert read_run(runs / "base")["method"] is None  # a model that is no run of ours, as before


def test_report_writes_its_symbols_whatever_the_locale(runs, tmp_path):
    """↓, λ and – in report.md; a C locale without Python's UTF-8 mode would write them as ASCII."""
    import subprocess
    import sys

    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-m", "viker", "report", str(runs / "npo-a"), str(runs / "npo-b"),
                           "--out", str(tmp_path / "report")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| Forget ACC ↓ |" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")


def test_the_runs_table_says_what_a_coded_setting_chose(runs, tmp_path):
    """topk=auto, CAGUL's layers and heads at None: a reader is told what they stand for."""
    import shutil

    from viker.methods.reference import AUTO_TOPK, FULL_VOCAB_LIMIT
    from viker.report import setting_text

    viker = shutil.copytree(runs / "npo-a", tmp_path / "viker-run")
    config = json.loads((viker / "config.json").read_text())
    config["method"] = {"name": "viker", "lam": 10.0, "k": 5, "refs": "people", "regularizer": "kl",
                        "ablation": "none", "topk": -1}
    (viker / "config.json").write_text(json.dumps(config))
    assert main(["report", str(runs / "npo-a"), str(viker), "--out", str(tmp_path / "report")]) == 0
    runs_section = (tmp_path / "report" / "report.md").read_text().split("## Runs")[1]
    assert "topk=auto" in runs_section
    assert (f"topk=auto: ViKeR's reference distributions R̂ are kept whole for a vocabulary of up to "
            f"{FULL_VOCAB_LIMIT} tokens, else as each answer token's {AUTO_TOPK} most likely tokens.") in runs_section
    assert [setting_text("layers", None), setting_text("heads", None)] == ["layers=middle", "heads=all"]
    assert setting_text("layers", [1, 2]) == "layers=[1, 2]"


def test_runs_of_one_method_trained_on_lora_or_every_weight_are_named_by_it(runs, tmp_path):
    import shutil

    full = shutil.copytree(runs / "npo-a", tmp_path / "npo-full")
    config = json.loads((full / "config.json").read_text())
    config["unlearn"]["tuning"] = "full"
    (full / "config.json").write_text(json.dumps(config))
    assert main(["report", str(runs / "npo-a"), str(full), "--out", str(tmp_path / "report")]) == 0
    assert list(_cells((tmp_path / "report" / "report.md").read_text().split("\n\n")[1])) == [
        "NPO (tuning=lora)", "NPO (tuning=full)"]


def test_runs_of_one_method_with_other_adapters_are_named_by_them(runs, tmp_path):
    """--lora-r 8 beside the default was labelled by folder (GA (ga), GA (ga_r8)): nothing said how they differ.
    (--max-length, which only refuses longer examples and never cuts them, changes no run: it names none.)"""
    import shutil

    copies = []
    for name, edit in (("npo-r8", lambda u: u["lora"].update(r=8)), ("npo-a2", lambda u: u.update(max_length=512))):
        copy = shutil.copytree(runs / "npo-a", tmp_path / name)
        config = json.loads((copy / "config.json").read_text())
        edit(config["unlearn"])
        (copy / "config.json").write_text(json.dumps(config))
        copies.append(str(copy))
    assert main(["report", str(runs / "npo-a"), *copies, "--out", str(tmp_path / "report")]) == 0
    assert list(_cells((tmp_path / "report" / "report.md").read_text().split("\n\n")[1])) == [
        "NPO (lora_r=16) (npo-a)", "NPO (lora_r=8)", "NPO (lora_r=16) (npo-a2)"]


def test_runs_trained_in_another_dtype_are_named_by_it_and_evaluations_in_another_are_refused(runs, tmp_path,
                                                                                               capsys):
    """Two runs of one method in float32 and bfloat16 were labelled by folder with the same settings; an
    evaluation in bfloat16 beside one in float32 (other figures for the same model) shared the table unsaid."""
    import shutil

    half = shutil.copytree(runs / "npo-a", tmp_path / "npo-bf16")
    config = json.loads((half / "config.json").read_text())
    config["runtime"]["weights_dtype"] = "bfloat16"
    (half / "config.json").write_text(json.dumps(config))
    assert main(["report", str(runs / "npo-a"), str(half), "--out", str(tmp_path / "report")]) == 0
    assert list(_cells((tmp_path / "report" / "report.md").read_text().split("\n\n")[1])) == [
        "NPO (dtype=float32)", "NPO (dtype=bfloat16)"]
    scored = shutil.copytree(runs / "npo-b", tmp_path / "npo-b-bf16")
    evaluation = json.loads((scored / "eval_config.json").read_text())
    (scored / "eval_config.json").write_text(json.dumps(evaluation | {"weights_dtype": "bfloat16"}))
    capsys.readouterr()
    assert main(["report", str(runs / "npo-a"), str(scored), "--out", str(tmp_path / "refused")]) == 2
    assert "these runs were evaluated with different --dtype, so one table cannot compare them: " \
        f"{runs / 'npo-a'} (float32), {scored} (bfloat16)" in capsys.readouterr().err


def test_runs_that_start_from_other_models_than_one_another_or_the_vanilla_row_are_said_to(runs, tiny_dir, bench_dir,
                                                                                          tmp_path):
    """The vanilla row stands for the model every unlearning run starts from: where they start from others (another
    family, or an unlearning run), the report says which run starts from which model."""
    import shutil

    on_run = shutil.copytree(runs / "npo-b", tmp_path / "on-npo-a")  # as if unlearned from npo-a's model
    config = json.loads((on_run / "config.json").read_text())
    config["unlearn"]["model"] = str(runs / "npo-a")
    (on_run / "config.json").write_text(json.dumps(config))
    assert main(["report", str(runs / "npo-a"), str(runs / "npo-b"), "--out", str(tmp_path / "alike")]) == 0
    assert "start from different models" not in (tmp_path / "alike" / "report.md").read_text()
    assert main(["report", str(runs / "vanilla"), str(runs / "npo-a"), str(on_run), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    first, second = f"NPO (β=0.1, from={tiny_dir.name})", "NPO (β=0.5, from=npo-a)"
    assert list(_cells(report.split("\n\n")[1]))[1:] == [first, second]
    said = " ".join(report.split())
    assert (f"The unlearning runs start from different models than one another or the vanilla row: "
            f"`{tiny_dir.resolve()}` ({first}); `{(runs / 'npo-a' / 'model').resolve()}` ({second}); "
            f"the vanilla row is `{(runs / 'vanilla' / 'model').resolve()}`, which none starts from.") in said
    # two vanilla rows, one of them the model the first run starts from: only the other is said to start none
    base_row = shutil.copytree(runs / "vanilla", tmp_path / "vanilla-of-base")
    evaluation = json.loads((base_row / "eval_config.json").read_text())
    (base_row / "eval_config.json").write_text(json.dumps(evaluation | {"model": str(tiny_dir)}))
    assert main(["report", str(runs / "vanilla"), str(base_row), str(runs / "npo-a"), str(on_run),
                 "--out", str(tmp_path / "two")]) == 0
    said = " ".join((tmp_path / "two" / "report.md").read_text().split())
    assert (f"({second}); none starts from `{(runs / 'vanilla' / 'model').resolve()}` (the model of a vanilla row)."
            in said) and "the vanilla row is" not in said


def test_drawing_a_plot_leaves_the_callers_matplotlib_backend_as_it_was(tmp_path):
    """The plots switched matplotlib to Agg: in a notebook, the user's later plots stopped showing."""
    import matplotlib

    from viker.keytokens import TokenEntropy, write_png

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        run = {"method": "ga", "label": "GA", "metrics": {"forget_acc": 30.0, "retain_rougeL": 60.0, "coherence": 90.0}}
        tradeoff_plot([run], [], tmp_path / "tradeoff.png")
        write_png([TokenEntropy("Where?", True, [" Oslo"], [2.0], [0.1])], tmp_path / "keys.png", 0.5)
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "tradeoff.png").read_bytes()[:4] == b"\x89PNG" == (tmp_path / "keys.png").read_bytes()[:4]
    finally:
        matplotlib.use(before)


def test_runs_that_start_from_a_vanilla_model_made_again_since_its_evaluation_are_said_to(tiny_dir, bench_dir,
                                                                                          tmp_path):
    """The vanilla row scored one model; the unlearning run started from another, finetuned again at the same
    path: the table compared them as if one had come from the other."""
    data = ["--data", str(bench_dir), *DATA]
    vanilla = str(tmp_path / "vanilla")
    finetune = ["finetune", "--model", str(tiny_dir), "--data", str(bench_dir), "--max-steps", "1", "--out", vanilla]
    evaluate = ["eval", *data, *EVAL, "--only", "forget:multiple_choice", "--out"]
    assert main(finetune) == 0 and main([*evaluate, str(tmp_path / "scored"), "--model", vanilla]) == 0
    unlearn = ["unlearn", "--model", vanilla, *data, "--method", "ga", "--max-steps", "1", "--out"]
    assert main([*unlearn, str(tmp_path / "ga")]) == 0 and main([*evaluate, str(tmp_path / "ga"), "--model",
                                                                  str(tmp_path / "ga")]) == 0
    assert main(["report", str(tmp_path / "scored"), str(tmp_path / "ga"), "--out", str(tmp_path / "same")]) == 0
    assert "started from other weights" not in (tmp_path / "same" / "report.md").read_text()
    assert main([*finetune, "--seed", "1", "--overwrite"]) == 0  # made again, after its evaluation
    assert main([*unlearn, str(tmp_path / "ga"), "--overwrite"]) == 0
    assert main([*evaluate, str(tmp_path / "ga"), "--model", str(tmp_path / "ga")]) == 0
    assert main(["report", str(tmp_path / "scored"), str(tmp_path / "ga"), "--out", str(tmp_path / "remade")]) == 0
    said = " ".join((tmp_path / "remade" / "report.md").read_text().split())
    assert f"GA started from other weights in `{vanilla}/model` than the vanilla row scored there (made again " \
        "between them, by the weights' hashes)" in said


def test_a_run_trained_for_max_steps_is_read_with_that_budget(runs):
    """Runs of one method for other --max-steps are told apart by it (GA (max_steps=10)), not by folder."""
    from viker.report import read_run

    row = read_run(runs / "ga-eval")
    assert row["method"] == "ga" and row["settings"].get("max_steps") == 1 and "epochs" not in row["settings"]
