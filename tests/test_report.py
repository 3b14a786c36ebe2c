"""grid.md tables: the metric in points by task."""
import math

from dynabert_jax import ModelConfig, report
from dynabert_jax.subnet import SubNet


def _record(task, metric, values, teacher):
    cfg = ModelConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=128, head="classification")
    results = {SubNet(w, d): {metric: v} for (w, d), v in values.items()}
    return report.grid_record(task, metric, cfg, 128, results, teacher={metric: teacher})


def test_a_ratio_table_with_a_nan_cell_is_still_in_points():
    """STS-B's Pearson is NaN for constant predictions: that cell shows "-", the others
    (and the teacher) stay x100 rather than the whole table falling back to ratios."""
    table = report.markdown_table(_record(
        "stsb", "pearson", {(1.0, 1.0): 0.85, (0.5, 1.0): math.nan}, teacher=0.88))
    assert "teacher 88.00" in table
    assert "| 1 | 85.00 |" in table and "| 0.5 | - |" in table


def test_squad_points_are_not_scaled_again():
    table = report.markdown_table(_record(
        "squad", "f1", {(1.0, 1.0): 85.5, (0.5, 1.0): 0.5}, teacher=88.0))
    assert "teacher 88.00" in table
    assert "| 1 | 85.50 |" in table and "| 0.5 | 0.50 |" in table
    assert report.points_scale("squad") == 1.0 and report.points_scale("cola") == 100.0
