"""Evaluation metrics: GLUE (spec section 5.3) and SQuAD v1.1 EM/F1.

`glue(task, predictions, labels)` returns the task's metrics in the order of the
original DynaBERT code, the primary metric (used for checkpoint selection) first:

======  ==========================================
cola    mcc
sst2    acc
mrpc    acc, f1, acc_and_f1      (f1 of class 1)
stsb    pearson, spearmanr, corr (corr = their mean)
qqp     acc, f1, acc_and_f1
mnli    acc  (matched);  acc_mm for split="dev_mismatched" or task "mnli-mm"
qnli    acc
rte     acc
======  ==========================================

Values are fractions in [0, 1] (correlations in [-1, 1]), as in the original
code. `squad_v1` follows the official v1.1 evaluation script: answers are
normalised (lower case, punctuation removed, articles a/an/the removed, whitespace
collapsed), EM and token F1 take the max over the ground truths, and the averages
over all questions of the dataset are scaled to 0-100; a question without a
prediction scores 0.

Everything here is plain numpy (no scikit-learn / scipy at run time); the tests
check agreement with scikit-learn and scipy.
"""
from __future__ import annotations

import collections
import json
import re
import string
from typing import Dict, Mapping, Optional

import numpy as np

# task -> metric names, primary first (kept in sync with data.TASKS; a test checks)
GLUE_METRICS = {
    "cola": ("mcc",),
    "sst2": ("acc",),
    "mrpc": ("acc", "f1", "acc_and_f1"),
    "stsb": ("pearson", "spearmanr", "corr"),
    "qqp": ("acc", "f1", "acc_and_f1"),
    "mnli": ("acc",),
    "mnli-mm": ("acc_mm",),
    "qnli": ("acc",),
    "rte": ("acc",),
    "wnli": ("acc",),
}
_TASK_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli_mismatched": "mnli-mm",
                 "mnli-m": "mnli", "mnli_matched": "mnli"}


# ---------------------------------------------------------------------------
# Elementary metrics (1-D arrays of equal length)


def accuracy(predictions, labels) -> float:
    """Fraction of equal entries."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1_binary(predictions, labels, positive=1) -> float:
    """F1 of the positive class (scikit-learn ``f1_score`` binary; 0 if no true
    positives)."""
    p, y = _pair(predictions, labels)
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    if tp == 0:
        return 0.0
    return 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation, multiclass form (as scikit-learn; 0 when undefined)."""
    p, y = _pair(predictions, labels)
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    yi, pi = inv[:len(y)], inv[len(y):]
    cm = np.zeros((k, k), np.float64)
    np.add.at(cm, (yi, pi), 1)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n_correct, n = np.trace(cm), cm.sum()
    cov_ytyp = n_correct * n - t_sum @ p_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def pearson(x, y) -> float:
    """Pearson correlation (scipy ``pearsonr``); NaN if an input is constant."""
    x, y = _pair(x, y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
    if den == 0:
        return float("nan")
    return float(np.clip(np.sum(xc * yc) / den, -1.0, 1.0))


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy ``rankdata``)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values
    new = np.concatenate([[True], xs[1:] != xs[:-1]])
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [len(x)]])
    avg = (starts + ends + 1) / 2.0            # mean of ranks start+1 .. end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (scipy ``spearmanr``): Pearson of average ranks; NaN
    if an input is constant or holds a NaN or an infinity (a diverged model's
    predictions would otherwise get ranks, and a score, like numbers)."""
    x, y = _pair(x, y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    return pearson(rankdata(x), rankdata(y))


def _pair(a, b, dtype=None):
    a, b = np.asarray(a), np.asarray(b)
    if dtype is not None:
        a, b = a.astype(dtype), b.astype(dtype)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if b.ndim == 2 and b.shape[1] == 1:
        b = b[:, 0]
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"predictions {a.shape} and labels {b.shape} must be 1-D "
                         "and of equal length")
    if len(a) == 0:
        raise ValueError("no examples")
    return a, b


# ---------------------------------------------------------------------------
# GLUE


def glue(task: str, predictions, labels, split: Optional[str] = None) -> Dict[str, float]:
    """Metrics of a GLUE task, the primary metric first.

    Args:
      task: task name (``"rte"``; ``"mnli-mm"`` for MNLI mismatched).
      predictions: class ids ``[n]`` or logits ``[n, num_labels]`` (argmax taken);
        for stsb, scores ``[n]`` or ``[n, 1]``.
      labels: ``[n]`` int class ids, or float scores for stsb.
      split: for mnli, ``"dev_mismatched"`` reports ``acc_mm`` instead of ``acc``.
    Returns:
      dict metric name -> float, in `GLUE_METRICS` order.
    """
    key = str(task).lower()
    key = _TASK_ALIASES.get(key, key)
    if key == "mnli" and split in ("dev_mismatched", "validation_mismatched"):
        key = "mnli-mm"
    if key not in GLUE_METRICS:
        raise KeyError(f"unknown GLUE task {task!r}; known: {', '.join(GLUE_METRICS)}")
    if key == "mnli-mm":
        return {"acc_mm": named(("acc",), predictions, labels)["acc"]}
    return named(GLUE_METRICS[key], predictions, labels)


def named(names, predictions, labels) -> Dict[str, float]:
    """The metrics ``names`` (``acc``, ``mcc``, ``f1``, ``acc_and_f1``, ``pearson``,
    ``spearmanr``, ``corr``) of predictions against labels, in that order: those of a
    GLUE task (`glue`) or of a user's own task (`data.custom_task`). Logits ``[n, k]`` are argmax-ed for the classification
    metrics; regression takes scores ``[n]`` or ``[n, 1]``."""
    regression = {"pearson", "spearmanr", "corr"}
    if not (set(names) <= regression
            or set(names) <= {"acc", "mcc", "f1", "acc_and_f1"}):
        raise KeyError(f"unknown metric(s) in {tuple(names)}, or a mix of classification "
                       f"and regression ones; choose from acc, mcc, f1, acc_and_f1 or "
                       f"pearson, spearmanr, corr")
    preds = np.asarray(predictions)
    labels = np.asarray(labels)
    if set(names) <= regression:
        preds = preds.reshape(-1) if preds.ndim == 2 and preds.shape[1] == 1 else preds
        p, s = pearson(preds, labels), spearman(preds, labels)
        values = {"pearson": p, "spearmanr": s, "corr": (p + s) / 2}
    else:
        preds = preds.argmax(axis=-1) if preds.ndim == 2 else preds
        acc = accuracy(preds, labels)
        values = {"acc": acc, "mcc": matthews_corrcoef(preds, labels)}
        if {"f1", "acc_and_f1"} & set(names):
            f1 = f1_binary(preds, labels)
            values.update(f1=f1, acc_and_f1=(acc + f1) / 2)
    return {n: values[n] for n in names}


# ---------------------------------------------------------------------------
# SQuAD v1.1 (official evaluation script definitions)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop articles a/an/the, collapse whitespace."""
    s = s.lower()
    exclude = set(string.punctuation)
    s = "".join(ch for ch in s if ch not in exclude)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_exact_match(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def squad_f1(prediction: str, ground_truth: str) -> float:
    """Token-level F1 of normalised answers (0 when nothing overlaps)."""
    pred_tokens = normalize_answer(prediction).split()
    gt_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gt_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gt_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_v1(predictions: Mapping[str, str], dataset) -> Dict[str, float]:
    """SQuAD v1.1 exact match and F1, 0-100, over every question of `dataset`.

    Args:
      predictions: ``{question id: answer text}``; a missing id scores 0.
      dataset: path of a SQuAD v1.1 JSON file, its parsed dict, or its ``data`` list.
    Returns:
      ``{"exact_match": float, "f1": float}``.
    """
    if isinstance(dataset, (str, bytes)) or hasattr(dataset, "__fspath__"):
        with open(dataset, encoding="utf-8") as f:
            dataset = json.load(f)
    articles = dataset["data"] if isinstance(dataset, dict) else dataset
    em = f1 = 0.0
    total = 0
    for article in articles:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                truths = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                em += max(float(squad_exact_match(pred, t)) for t in truths)
                f1 += max(squad_f1(pred, t) for t in truths)
    if total == 0:
        raise ValueError("the SQuAD dataset has no questions")
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}
