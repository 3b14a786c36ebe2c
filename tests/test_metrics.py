"""GLUE metrics against scikit-learn / scipy, and the per-task metric dicts."""
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from dynabert_jax import data, metrics


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    k = 2 if seed < 3 else 3
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.7, y, rng.integers(0, k, n))
    assert metrics.accuracy(p, y) == pytest.approx(sklearn.metrics.accuracy_score(y, p), abs=1e-12)
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(y, p), abs=1e-12)
    if k == 2:
        assert metrics.f1_binary(p, y) == pytest.approx(sklearn.metrics.f1_score(y, p), abs=1e-12)


def test_degenerate_classification_cases_match_sklearn():
    y = np.array([1, 1, 1, 0])
    for p in (np.ones(4, int), np.zeros(4, int), np.array([0, 0, 0, 1])):
        assert metrics.matthews_corrcoef(p, y) == pytest.approx(sklearn.metrics.matthews_corrcoef(y, p))
        assert metrics.f1_binary(p, y) == pytest.approx(
            sklearn.metrics.f1_score(y, p, zero_division=0.0))


@pytest.mark.parametrize("seed", range(6))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 500))
    y = rng.uniform(0, 5, n)
    if seed % 2:      # STS-B-like: many tied scores
        y = np.round(y * 2) / 2
    x = y + rng.normal(0, 1.5, n)
    if seed == 5:
        x = np.round(x)
    assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-10)
    assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-10)
    np.testing.assert_allclose(metrics.rankdata(y), scipy.stats.rankdata(y))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_correlations_of_diverged_predictions_are_nan(bad):
    """A diverged model's NaN or infinite predictions must not score: ranks would make
    Spearman finite, and a custom task selecting on it would keep the diverged step
    (scipy: NaN for a NaN; it ranks an infinity)."""
    x, y = [bad, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]
    assert np.isnan(metrics.pearson(x, y)) and np.isnan(metrics.spearman(x, y))
    assert np.isnan(metrics.spearman(y, x))
    if np.isnan(bad):
        assert np.isnan(scipy.stats.spearmanr(x, y)[0])


def test_glue_dicts_primary_first():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2))
    pred = logits.argmax(-1)
    for task in data.TASKS:
        if task == "stsb":
            continue
        out = metrics.glue(task, logits, y)
        assert list(out)[0] == data.TASKS[task].primary_metric
        assert out == metrics.glue(task, pred, y)       # logits -> argmax
    assert list(metrics.glue("mrpc", pred, y)) == ["acc", "f1", "acc_and_f1"]
    m = metrics.glue("qqp", pred, y)
    assert m["acc_and_f1"] == pytest.approx((m["acc"] + m["f1"]) / 2)
    assert m["f1"] == pytest.approx(sklearn.metrics.f1_score(y, pred))
    assert metrics.glue("cola", pred, y) == {"mcc": pytest.approx(sklearn.metrics.matthews_corrcoef(y, pred))}

    s = rng.uniform(0, 5, 50)
    out = metrics.glue("stsb", (s + rng.normal(size=50))[:, None], s)   # [n, 1] regression head
    assert list(out) == ["pearson", "spearmanr", "corr"]
    assert out["corr"] == pytest.approx((out["pearson"] + out["spearmanr"]) / 2)

    y3 = rng.integers(0, 3, 30)
    p3 = rng.integers(0, 3, 30)
    acc = sklearn.metrics.accuracy_score(y3, p3)
    assert metrics.glue("mnli", p3, y3) == {"acc": pytest.approx(acc)}
    assert metrics.glue("mnli", p3, y3, split="dev_mismatched") == {"acc_mm": pytest.approx(acc)}
    assert metrics.glue("mnli-mm", p3, y3) == {"acc_mm": pytest.approx(acc)}


def test_bad_metric_input():
    with pytest.raises(ValueError, match="equal length"):
        metrics.accuracy([0, 1], [0, 1, 1])
    with pytest.raises(KeyError, match="unknown GLUE task"):
        metrics.glue("wnli3", [0], [0])
