"""The GLUE task registry: one frozen `GlueTask` per task name in `TASKS`.

A task says where its files live in the official GLUE layout
(``<data_dir>/<dir_name>/<split>.tsv``), which file columns hold the text and the
label, the label set, whether it is a regression task, and its metrics (the first
one, ``primary_metric``, is the one DynaBERT uses for checkpoint selection; see
spec section 5.3).

Column names of the loaded `datasets.Dataset` follow the Hugging Face hub's
``nyu-mll/glue`` configs (``sentence``, ``sentence1``/``sentence2``,
``question1``/``question2``, ``premise``/``hypothesis``, ``question``/``sentence``),
so a dataset read from local TSVs and one read from the hub look the same.

Label order (``label_list``) is that of the GLUE processors used by the original
DynaBERT code (``pytorch_transformers`` ``glue_processors``): the label id is the
position of the file's label string in ``label_list``. For MNLI this is
``contradiction, entailment, neutral`` -- not the hub's order -- so classifier
heads converted from the official PyTorch checkpoints line up.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Tuple, Union

# A file column is named by its header name, or by its 0-based index for
# files without a header (CoLA).
FileColumn = Union[str, int]


@dataclasses.dataclass(frozen=True, eq=False)
class GlueTask:
    """Everything the data pipeline and the trainer need to know about one task.

    Attributes:
      name: hub config name, e.g. ``"rte"``.
      dir_name: folder in the official GLUE layout, e.g. ``"RTE"``.
      text_columns: names of the 1 or 2 text columns of the loaded Dataset.
      label_list: label strings as written in the files, in label-id order;
        ``None`` for regression (STS-B).
      is_regression: True for STS-B (float label, one output).
      metric_names: metrics `metrics.glue` returns, primary first.
      split_files: split name -> file name inside ``<data_dir>/<dir_name>/``.
      eval_splits: dev splits evaluated during training (MNLI: matched, mismatched).
      has_header: whether the TSV starts with a header line (CoLA: no).
      file_text_columns: file columns holding the texts (header names or indices).
      file_label_column: file column holding the label.
      hub_text_columns: column names in the hub dataset (same as text_columns).
      hub_splits: our split name -> hub split name.
      label_range: (lo, hi) allowed for a regression label.
    """

    name: str
    dir_name: str
    text_columns: Tuple[str, ...]
    label_list: Optional[Tuple[str, ...]]
    is_regression: bool
    metric_names: Tuple[str, ...]
    split_files: Mapping[str, str]
    eval_splits: Tuple[str, ...]
    has_header: bool
    file_text_columns: Tuple[FileColumn, ...]
    file_label_column: FileColumn
    hub_splits: Mapping[str, str]
    label_range: Optional[Tuple[float, float]] = None

    @property
    def num_labels(self) -> int:
        """Size of the classifier output: 1 for regression, else len(label_list)."""
        return 1 if self.is_regression else len(self.label_list)

    @property
    def primary_metric(self) -> str:
        """The metric used for checkpoint selection (first of `metric_names`)."""
        return self.metric_names[0]

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> Tuple[str, ...]:
        return tuple(self.split_files)

    def split_path(self, data_dir, split: str) -> str:
        """``<data_dir>/<dir_name>/<file>`` for `split` (no existence check)."""
        import os

        return os.path.join(str(data_dir), self.dir_name, self.split_files[split])


_TRAIN_DEV = {"train": "train.tsv", "dev": "dev.tsv"}
_HUB_TRAIN_DEV = {"train": "train", "dev": "validation"}


def _task(**kw) -> GlueTask:
    return GlueTask(**kw)


TASKS: Mapping[str, GlueTask] = {
    t.name: t
    for t in [
        _task(
            name="cola", dir_name="CoLA", text_columns=("sentence",),
            label_list=("0", "1"), is_regression=False, metric_names=("mcc",),
            split_files=_TRAIN_DEV, eval_splits=("dev",), has_header=False,
            # source code, label, original mark, sentence
            file_text_columns=(3,), file_label_column=1, hub_splits=_HUB_TRAIN_DEV),
        _task(
            name="sst2", dir_name="SST-2", text_columns=("sentence",),
            label_list=("0", "1"), is_regression=False, metric_names=("acc",),
            split_files=_TRAIN_DEV, eval_splits=("dev",), has_header=True,
            file_text_columns=("sentence",), file_label_column="label",
            hub_splits=_HUB_TRAIN_DEV),
        _task(
            name="mrpc", dir_name="MRPC", text_columns=("sentence1", "sentence2"),
            label_list=("0", "1"), is_regression=False,
            metric_names=("acc", "f1", "acc_and_f1"),
            split_files=_TRAIN_DEV, eval_splits=("dev",), has_header=True,
            file_text_columns=("#1 String", "#2 String"), file_label_column="Quality",
            hub_splits=_HUB_TRAIN_DEV),
        _task(
            name="stsb", dir_name="STS-B", text_columns=("sentence1", "sentence2"),
            label_list=None, is_regression=True,
            metric_names=("pearson", "spearmanr", "corr"),
            split_files=_TRAIN_DEV, eval_splits=("dev",), has_header=True,
            file_text_columns=("sentence1", "sentence2"), file_label_column="score",
            hub_splits=_HUB_TRAIN_DEV, label_range=(0.0, 5.0)),
        _task(
            name="qqp", dir_name="QQP", text_columns=("question1", "question2"),
            label_list=("0", "1"), is_regression=False,
            metric_names=("acc", "f1", "acc_and_f1"),
            split_files=_TRAIN_DEV, eval_splits=("dev",), has_header=True,
            file_text_columns=("question1", "question2"),
            file_label_column="is_duplicate", hub_splits=_HUB_TRAIN_DEV),
        _task(
            name="mnli", dir_name="MNLI", text_columns=("premise", "hypothesis"),
            label_list=("contradiction", "entailment", "neutral"), is_regression=False,
            metric_names=("acc", "acc_mm"),
            split_files={"train": "train.tsv", "dev_matched": "dev_matched.tsv",
                         "dev_mismatched": "dev_mismatched.tsv"},
            eval_splits=("dev_matched", "dev_mismatched"), has_header=True,
            file_text_columns=("sentence1", "sentence2"),
            file_label_column="gold_label",
            hub_splits={"train": "train", "dev_matched": "validation_matched",
                        "dev_mismatched": "validation_mismatched"}),
        _task(
            name="qnli", dir_name="QNLI", text_columns=("question", "sentence"),
            label_list=("entailment", "not_entailment"), is_regression=False,
            metric_names=("acc",),
            split_files=_TRAIN_DEV, eval_splits=("dev",), has_header=True,
            file_text_columns=("question", "sentence"), file_label_column="label",
            hub_splits=_HUB_TRAIN_DEV),
        _task(
            name="rte", dir_name="RTE", text_columns=("sentence1", "sentence2"),
            label_list=("entailment", "not_entailment"), is_regression=False,
            metric_names=("acc",),
            split_files=_TRAIN_DEV, eval_splits=("dev",), has_header=True,
            file_text_columns=("sentence1", "sentence2"), file_label_column="label",
            hub_splits=_HUB_TRAIN_DEV),
        _task(
            # the official WnliProcessor: label "1" = entailment (the hub's id 1 too)
            name="wnli", dir_name="WNLI", text_columns=("sentence1", "sentence2"),
            label_list=("0", "1"), is_regression=False, metric_names=("acc",),
            split_files=_TRAIN_DEV, eval_splits=("dev",), has_header=True,
            file_text_columns=("sentence1", "sentence2"), file_label_column="label",
            hub_splits=_HUB_TRAIN_DEV),
    ]
}

# Spellings users type that mean the same task.
_ALIASES = {
    "sst-2": "sst2", "sst": "sst2", "sts-b": "stsb", "sts": "stsb",
    "mnli-m": "mnli", "mnli_matched": "mnli",
}


def get_task(name: str) -> GlueTask:
    """Look up a task by hub name (``"sst2"``) or GLUE folder name (``"SST-2"``)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in TASKS:
        return TASKS[key]
    for t in TASKS.values():
        if t.dir_name.lower() == key:
            return t
    raise KeyError(f"unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")


# A user's own task (train.py's ``task=custom``): the metrics it can report, by kind.
CUSTOM_METRICS = {
    "classification": ("acc", "mcc", "f1", "acc_and_f1"),   # f1: 2 labels only
    "regression": ("pearson", "spearmanr", "corr"),
}


def custom_task(text_columns: Sequence[str], label_list: Optional[Sequence] = None,
                is_regression: bool = False, metric: str = "",
                label_column: str = "label") -> GlueTask:
    """A `GlueTask` named ``"custom"`` for a user's own files (`load_custom` reads them).

    Args:
      text_columns: 1 or 2 column names holding the texts.
      label_list: classification labels in id order (at least two), compared as strings;
        ``None`` / empty for regression.
      is_regression: one float output (as STS-B) instead of classes.
      metric: the primary metric, used to select checkpoints: ``acc`` (default), ``mcc``,
        ``f1`` or ``acc_and_f1`` (binary) for classification; ``pearson`` (default),
        ``spearmanr`` or ``corr`` for regression. The others are reported beside it.
      label_column: the column holding the label.
    Raises ValueError on anything else.
    """
    cols = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if not 1 <= len(cols) <= 2 or not all(isinstance(c, str) and c for c in cols):
        raise ValueError(f"text_columns must name 1 or 2 columns, got {text_columns!r}")
    labels = tuple(str(x) for x in (label_list or ()))
    if is_regression:
        if labels:
            raise ValueError("a regression task has no label_list")
        names = CUSTOM_METRICS["regression"]
    else:
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"a classification task needs label_list: two or more "
                             f"distinct labels in id order, got {tuple(label_list or ())}")
        names = CUSTOM_METRICS["classification"]
        if len(labels) != 2:
            names = names[:2]   # f1 of the positive class is for two labels
    primary = metric or names[0]
    if primary not in names:
        raise ValueError(f"metric {metric!r} is not one of {names} for this "
                         f"{'regression' if is_regression else f'{len(labels)}-label'} task")
    return GlueTask(
        name="custom", dir_name="", text_columns=cols,
        label_list=None if is_regression else labels, is_regression=bool(is_regression),
        metric_names=(primary,) + tuple(n for n in names if n != primary),
        split_files={}, eval_splits=("dev",), has_header=True, file_text_columns=cols,
        file_label_column=label_column, hub_splits={})
