"""The paper-style table and the trade-off plot's labels."""

from viker.report import _nearby, markdown_table, plain_table


def _runs():
    return [
        {"method": "vanilla", "metrics": {"forget_acc": 100.0, "retain_rougeL": 99.8, "coherence": 99.3}},
        {"method": "ga", "metrics": {"forget_acc": 12.0, "retain_rougeL": 0.0, "coherence": 0.0}},
        {"method": "klmin", "metrics": {"forget_acc": 36.04, "retain_rougeL": 98.1, "coherence": 99.3}},
        {"method": "viker", "label": "ViKeR (λ=10)", "metrics": {"forget_acc": 35.96, "retain_rougeL": 83.6,
                                                                  "coherence": 99.26}},
    ]


def _cells(table: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_table_marks_the_best_unlearning_method_per_column_in_its_direction():
    table = markdown_table(_runs())
    assert table.splitlines()[0] == "| Method | Forget ACC ↓ | Retain R-L ↑ | Coherence ↑ |"
    cells = _cells(table)
    assert list(cells) == ["vanilla", "GA", "KL-Min", "ViKeR (λ=10)"]  # titles, or a run's own label
    assert cells["GA"][0] == "**12.0**"  # lower is better for Forget ACC
    assert cells["KL-Min"][1] == "**98.1**" and cells["vanilla"][1] == "99.8"  # vanilla is not a contender
    # ties as printed are all best: 99.3 and 99.26 both print as 99.3
    assert cells["KL-Min"][2] == "**99.3**" and cells["ViKeR (λ=10)"][2] == "**99.3**"
    assert cells["ViKeR (λ=10)"][0] == "36.0" and cells["KL-Min"][0] == "36.0"


def test_terminal_table_names_runs_like_the_report():
    lines = plain_table(_runs()).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["vanilla", "GA", "KL-Min", "ViKeR"]


def test_sweep_points_that_lie_together_share_one_label():
    points = [(0.3, 24.0, 0.1), (0.7, 30.0, 0.1), (2.0, 34.0, 84.6), (10.0, 36.0, 83.6), (50.0, 34.0, 83.7)]
    assert _nearby(points) == [([0.3], 24.0, 0.1), ([0.7], 30.0, 0.1), ([2.0, 10.0, 50.0], 34.0, 84.6)]
    assert len(_nearby(points, within=1.0)) == 4  # 2 and 50 still share a label, 10 is apart
