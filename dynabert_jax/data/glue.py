"""Readers for GLUE TSVs and for a user's own TSV/CSV/JSONL files.

Both return a `datasets.Dataset` with the task's text columns (strings, exactly as
in the file), a ``label`` column (`datasets.ClassLabel` ids for classification,
float32 for regression) and an ``idx`` column (0-based data-row number).

GLUE files are parsed here line by line rather than with ``load_dataset("csv")``:

* quoting is disabled (sentences hold unbalanced ``"``), and no value is turned
  into a missing value (a sentence reading ``NA`` or ``null`` stays a string);
* lines are split on ``\\n`` only (a stray ``\\r`` or U+2028 inside a sentence
  does not start a new row); a byte-order mark at the start of the file (the MRPC
  header) is dropped, one inside a row (QNLI dev index 60) is kept;
* every problem is reported as ``<file>:<line>: <what is wrong>`` with 1-based
  line numbers as an editor shows them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from dynabert_jax.data.tasks import GlueTask, get_task

# Split spellings accepted in addition to the registry's own.
_SPLIT_ALIASES = {
    "validation": "dev", "valid": "dev", "eval": "dev",
    "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched",
}


class DataFormatError(ValueError):
    """A data file that cannot be read as the task expects (names file and line)."""


def _where(path, lineno: Optional[int] = None) -> str:
    return f"{path}:{lineno}" if lineno is not None else str(path)


def _read_lines(path) -> Iterator[Tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line of a UTF-8 file.

    Splits on ``\\n`` only, drops one trailing ``\\r`` (CRLF files), strips a
    leading byte-order mark from the first line. Raises `DataFormatError` for an
    empty file or bytes that are not UTF-8.
    """
    with open(path, "rb") as f:
        lineno = 0
        for lineno, raw in enumerate(f, start=1):
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(
                    f"{_where(path, lineno)}: not valid UTF-8 ({e.reason} at byte {e.start})"
                ) from None
            yield lineno, text
        if lineno == 0:
            raise DataFormatError(f"{path}: file is empty")


def file_sha256(path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# GLUE


def resolve_split(task: GlueTask, split: str) -> str:
    """Map a user split name (``"validation"``) to one of ``task.splits``."""
    s = _SPLIT_ALIASES.get(split, split)
    if task.name == "mnli" and s == "dev":
        raise KeyError(
            "MNLI has two dev splits: use split='dev_matched' or split='dev_mismatched'")
    if s not in task.split_files:
        raise KeyError(f"task {task.name!r} has no split {split!r}; "
                       f"splits: {', '.join(task.splits)}")
    return s


def _layout_hint(data_dir, task: GlueTask) -> str:
    files = ", ".join(f"<data_dir>/{task.dir_name}/{f}" for f in task.split_files.values())
    return (f"Expected the official GLUE layout <data_dir>/<TASK>/<split>.tsv "
            f"(TASK folders: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI), "
            f"here {files} with <data_dir> = {data_dir}")


def _resolve_columns(path, header: List[str], wanted, what: str) -> List[int]:
    idx = []
    for col in wanted:
        if isinstance(col, int):
            idx.append(col)
        elif col in header:
            idx.append(header.index(col))
        else:
            raise DataFormatError(
                f"{_where(path, 1)}: header has no {what} column {col!r}; "
                f"header columns: {header}")
    return idx


def _parse_label(path, lineno, raw: str, label_list, is_regression, label_range, task_name):
    if is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise DataFormatError(
                f"{_where(path, lineno)}: label {raw!r} is not a number "
                f"(task {task_name} is a regression task)") from None
        if not math.isfinite(value):
            raise DataFormatError(f"{_where(path, lineno)}: label {raw!r} is not finite")
        if label_range is not None and not (label_range[0] <= value <= label_range[1]):
            raise DataFormatError(
                f"{_where(path, lineno)}: label {value} is outside the range "
                f"[{label_range[0]}, {label_range[1]}] of task {task_name}")
        return value
    try:
        return label_list.index(raw)
    except ValueError:
        raise DataFormatError(
            f"{_where(path, lineno)}: label {raw!r} is not in the label set "
            f"{list(label_list)} of task {task_name}") from None


def _parse_augmented_label(path, lineno, raw: str, task: GlueTask):
    """A label of an augmented file: the task's label (TinyBERT's ``train_aug.tsv`` copies
    the original's), or the teacher's logits, space-separated (the official
    ``train_<TASK>_aug_with_logits.tsv``): the class is their numeric argmax (the official
    reader takes ``np.argmax`` of the strings, which orders ``"-0.5"`` above ``"0.3"``);
    for a regression task the one number is the value, with no range check."""
    if task.is_regression:
        return _parse_label(path, lineno, raw, None, True, None, task.name)
    if raw in task.label_list:
        return task.label_list.index(raw)
    try:
        logits = [float(x) for x in raw.split()]
    except ValueError:
        logits = []
    if len(logits) != len(task.label_list) or not all(map(math.isfinite, logits)):
        raise DataFormatError(
            f"{_where(path, lineno)}: label {raw!r} is neither one of the labels "
            f"{list(task.label_list)} of task {task.name} nor {len(task.label_list)} "
            f"space-separated finite teacher logits")
    return max(range(len(logits)), key=logits.__getitem__)   # the first maximum


class TsvRows(NamedTuple):
    """A GLUE TSV's layout and its data rows (see `read_tsv_rows`)."""
    header: Optional[str]                       # the header line as read; None for CoLA
    text_idx: List[int]                         # the task's text columns, in order
    label_idx: int                              # the label column
    rows: Iterator[Tuple[int, List[str]]]       # (1-based line number, fields)


def read_tsv_rows(path, task) -> TsvRows:
    """Open one GLUE TSV: find the task's text and label columns (in the header, or at
    CoLA's fixed places) and yield each data row split on tabs, with its line number.

    The rows are checked lazily: a row whose field count differs from the header's (or
    from 4 for CoLA) raises `DataFormatError` naming the file and line, and so does a
    file with no data row once the rows are exhausted. Labels are not parsed.
    """
    task = get_task(task) if isinstance(task, str) else task
    lines = _read_lines(path)
    if task.has_header:
        try:
            _, head = next(lines)
        except StopIteration:  # pragma: no cover - _read_lines raises first
            raise DataFormatError(f"{path}: file is empty") from None
        header = head.split("\t")
        n_fields = len(header)
        text_idx = _resolve_columns(path, header, task.file_text_columns, "text")
        (label_idx,) = _resolve_columns(path, header, [task.file_label_column], "label")
        fields_hint = "as in the header"
    else:
        head = None
        n_fields = 4  # CoLA: source, label, original mark, sentence
        text_idx = list(task.file_text_columns)
        label_idx = task.file_label_column
        fields_hint = f"a {task.dir_name} file has no header and {n_fields} columns"

    def rows():
        n = 0
        for lineno, line in lines:
            fields = line.split("\t")
            if len(fields) != n_fields:
                raise DataFormatError(
                    f"{_where(path, lineno)}: expected {n_fields} tab-separated fields "
                    f"({fields_hint}), got {len(fields)}")
            n += 1
            yield lineno, fields
        if not n:
            raise DataFormatError(f"{path}: no data rows"
                                  + (" after the header" if task.has_header else ""))

    return TsvRows(head, text_idx, label_idx, rows())


def read_glue_tsv(path, task, teacher_logits: bool = False) -> Dict[str, list]:
    """Parse one GLUE TSV into columns ``{*task.text_columns, "label", "idx"}``.

    Args:
      path: the TSV file.
      task: a `GlueTask` or task name.
      teacher_logits: also accept, in the label column, a teacher's logits as the
        official augmented files hold them (see `load_glue_augmented`).
    Returns:
      dict of equal-length lists: text columns (str), ``label`` (int id or float),
      ``idx`` (0-based data-row number).
    Raises:
      DataFormatError: empty file, header without the expected columns, a row whose
        field count differs from the header's (or from 4 for CoLA), a label outside
        the task's label set; the message names the file and the 1-based line.
    """
    task = get_task(task) if isinstance(task, str) else task
    tsv = read_tsv_rows(path, task)
    cols: Dict[str, list] = {c: [] for c in task.text_columns}
    labels: list = []
    for lineno, fields in tsv.rows:
        for name, i in zip(task.text_columns, tsv.text_idx):
            cols[name].append(fields[i])
        raw = fields[tsv.label_idx]
        if teacher_logits:
            labels.append(_parse_augmented_label(path, lineno, raw, task))
        else:
            labels.append(_parse_label(path, lineno, raw, task.label_list,
                                       task.is_regression, task.label_range, task.name))
    cols["label"] = labels
    cols["idx"] = list(range(len(labels)))
    return cols


def _features(text_columns: Sequence[str], label_list, is_regression):
    import datasets

    feats = {c: datasets.Value("string") for c in text_columns}
    if is_regression:
        feats["label"] = datasets.Value("float32")
    else:
        feats["label"] = datasets.ClassLabel(names=[str(x) for x in label_list])
    feats["idx"] = datasets.Value("int32")
    return datasets.Features(feats)


def load_glue(task, data_dir=None, split: str = "train", source: str = "local"):
    """Load one split of a GLUE task as a `datasets.Dataset`.

    Args:
      task: task name (``"rte"``, ``"sst2"``, ...; folder names like ``"SST-2"``
        work too).
      data_dir: GLUE root in the official layout ``<data_dir>/<TASK>/<split>.tsv``.
        Not used when ``source="hub"``.
      split: ``"train"``, ``"dev"`` (``"validation"`` works too); MNLI has
        ``"dev_matched"`` and ``"dev_mismatched"``.
      source: ``"local"`` (read the TSV) or ``"hub"`` (``load_dataset("nyu-mll/glue",
        task)``; needs network; converted to the same columns and label ids).
    Returns:
      Dataset with columns ``task.text_columns`` (str), ``label`` (ClassLabel ids
      ordered as ``task.label_list``, or float32 for STS-B) and ``idx`` (int32).
      ``ds.info.description`` records the file path and its SHA-256.
    Raises:
      FileNotFoundError: missing split file (message shows the expected layout).
      DataFormatError: malformed file (message names the file and line).
    """
    t = get_task(task) if isinstance(task, str) else task
    split = resolve_split(t, split)
    if source == "hub":
        return _load_glue_hub(t, split)
    if source != "local":
        raise ValueError(f"source must be 'local' or 'hub', got {source!r}")
    if data_dir is None:
        raise ValueError("load_glue(..., source='local') needs data_dir, the GLUE root")
    path = t.split_path(data_dir, split)
    if not os.path.isfile(path):
        missing = path if os.path.isdir(data_dir) else f"{data_dir} (no such directory)"
        raise FileNotFoundError(
            f"GLUE {t.name} {split} file not found: {missing}. {_layout_hint(data_dir, t)}")
    return _tsv_dataset(path, t, split)


def _tsv_dataset(path, t: GlueTask, split: str, teacher_logits: bool = False):
    import datasets

    cols = read_glue_tsv(path, t, teacher_logits=teacher_logits)
    features = _features(t.text_columns, t.label_list, t.is_regression)
    info = datasets.DatasetInfo(
        description=json.dumps({"task": t.name, "split": split, "path": os.path.abspath(path),
                                "sha256": file_sha256(path)}),
        features=features)
    return datasets.Dataset.from_dict(cols, features=features, info=info)


def load_glue_augmented(task, path):
    """Load an augmented training file of a GLUE task (the paper's data augmentation).

    The layout is the task's ``train.tsv`` (the same columns, and a header line unless
    the task is CoLA), as TinyBERT's ``data_augmentation.py`` writes ``train_aug.tsv``:
    every training example followed by its variants. The label column may hold the
    task's label or the teacher's logits, space-separated (the official
    ``train_<TASK>_aug_with_logits.tsv``; the class is their argmax). The distillation
    stages never read these labels; the optional label-loss variant does.

    Returns:
      Dataset with the columns of `load_glue`.
    Raises:
      FileNotFoundError: no such file.
      DataFormatError: malformed file (message names the file and line).
    """
    t = get_task(task) if isinstance(task, str) else task
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"augmented {t.name} training file not found: {path}")
    return _tsv_dataset(path, t, "train_augmented", teacher_logits=True)


def from_hub_dataset(task, hub_ds):
    """Convert a hub ``nyu-mll/glue`` split to our columns and label ids.

    Hub label ids are mapped by name (the hub orders MNLI labels differently);
    unlabeled rows (test splits, label -1) are rejected.
    """
    import datasets

    t = get_task(task) if isinstance(task, str) else task
    n = len(hub_ds)
    cols = {c: list(hub_ds[c]) for c in t.text_columns}
    raw = list(hub_ds["label"])
    if t.is_regression:
        labels = [float(x) for x in raw]
    else:
        feat = hub_ds.features["label"]
        hub_names = list(getattr(feat, "names", []) or [])
        if hub_names and all(nm in t.label_list for nm in hub_names):
            remap = [t.label_list.index(nm) for nm in hub_names]   # mnli, qnli, rte
        else:
            remap = list(range(len(t.label_list)))                  # 0/1 tasks
        if any(x < 0 or x >= len(remap) for x in raw):
            raise DataFormatError(f"hub {t.name}: labels outside 0..{len(remap) - 1} "
                                  "(a test split has no labels)")
        labels = [remap[x] for x in raw]
    cols["label"] = labels
    cols["idx"] = list(range(n))
    return datasets.Dataset.from_dict(
        cols, features=_features(t.text_columns, t.label_list, t.is_regression))


def _load_glue_hub(t: GlueTask, split: str):  # pragma: no cover - needs network
    import datasets

    hub_ds = datasets.load_dataset("nyu-mll/glue", t.name, split=t.hub_splits[split])
    return from_hub_dataset(t, hub_ds)


# ---------------------------------------------------------------------------
# User files


def _custom_rows(path, fmt: str, column_names) -> Iterator[Tuple[int, Dict[str, object]]]:
    """Yield ``(line_number, {column: value})`` rows of a TSV/CSV/JSONL file."""
    if fmt == "jsonl":
        seen = False
        for lineno, line in _read_lines(path):
            if not line.strip():
                continue
            seen = True
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{_where(path, lineno)}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{_where(path, lineno)}: expected a JSON object per line")
            yield lineno, obj
        if not seen:
            raise DataFormatError(f"{path}: no data rows")
        return

    if fmt == "tsv":
        lines = _read_lines(path)
        split_line = lambda s: s.split("\t")  # noqa: E731 - quoting disabled, GLUE style
        records = ((n, split_line(s)) for n, s in lines)
    else:  # csv with standard quoting; line numbers follow the reader
        with open(path, "rb") as fb:
            data = fb.read()
        if not data:
            raise DataFormatError(f"{path}: file is empty")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataFormatError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        reader = csv.reader(io.StringIO(text, newline=""))

        def _records():
            start = 1
            for rec in reader:
                yield start, rec
                start = reader.line_num + 1
        records = _records()

    if column_names is None:
        try:
            _, header = next(records)
        except StopIteration:
            raise DataFormatError(f"{path}: file is empty") from None
    else:
        header = list(column_names)
    seen = False
    for lineno, fields in records:
        if fields == [""] or fields == []:
            continue  # blank line (e.g. trailing)
        seen = True
        if len(fields) != len(header):
            raise DataFormatError(
                f"{_where(path, lineno)}: expected {len(header)} fields (columns {header}), "
                f"got {len(fields)}")
        yield lineno, dict(zip(header, fields))
    if not seen:
        raise DataFormatError(f"{path}: no data rows")


CUSTOM_FORMATS = ("tsv", "csv", "jsonl")


def custom_format(path, format: Optional[str] = None) -> str:
    """``format``, or else the file's extension, checked to be one `load_custom` reads;
    a `ValueError` otherwise."""
    fmt = (format or os.path.splitext(os.fspath(path))[1].lstrip(".")).lower()
    if fmt not in CUSTOM_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use .tsv, .csv or .jsonl")
    return fmt


def load_custom(path, text_columns: Sequence[str], label_column: str = "label",
                label_list: Optional[Sequence] = None, is_regression: bool = False,
                column_names: Optional[Sequence[str]] = None, format: Optional[str] = None):
    """Load a user's own task from a TSV, CSV or JSONL file.

    Args:
      path: ``.tsv`` (tab-separated, no quoting, GLUE style), ``.csv`` (standard CSV
        quoting) or ``.jsonl`` (one JSON object per line) file.
      text_columns: 1 or 2 column names holding the texts.
      label_column: column holding the label.
      label_list: classification labels in id order, compared as strings
        (``["neg", "pos"]``). ``None``: the sorted set of labels in this file --
        pass it explicitly so train and dev agree.
      is_regression: float labels instead of classes.
      column_names: names of the columns of a TSV/CSV without a header line.
      format: ``"tsv"``, ``"csv"`` or ``"jsonl"``; default from the extension.
    Returns:
      Dataset with the text columns, ``label`` (ClassLabel ids or float32), ``idx``.
    """
    import datasets

    path = os.fspath(path)
    text_columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"text_columns must name 1 or 2 columns, got {text_columns}")
    try:
        fmt = custom_format(path, format)
    except ValueError as e:
        raise ValueError(f"{path}: {e} (or pass format=)") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")

    texts: Dict[str, list] = {c: [] for c in text_columns}
    raw_labels, linenos = [], []
    for lineno, row in _custom_rows(path, fmt, column_names):
        for c in (*text_columns, label_column):
            if c not in row:
                raise DataFormatError(f"{_where(path, lineno)}: no column {c!r}; "
                                      f"columns: {list(row)}")
        for c in text_columns:
            v = row[c]
            if not isinstance(v, str):
                raise DataFormatError(f"{_where(path, lineno)}: column {c!r} is not a string: {v!r}")
            texts[c].append(v)
        raw_labels.append(row[label_column])
        linenos.append(lineno)

    if is_regression:
        labels = [_parse_label(path, n, str(x), None, True, None, "custom")
                  for n, x in zip(linenos, raw_labels)]
        label_list = None
    else:
        as_str = [x if isinstance(x, str) else json.dumps(x) for x in raw_labels]
        if label_list is None:
            label_list = sorted(set(as_str))
        label_list = tuple(str(x) for x in label_list)
        labels = [_parse_label(path, n, x, label_list, False, None, "custom")
                  for n, x in zip(linenos, as_str)]
    texts["label"] = labels
    texts["idx"] = list(range(len(labels)))
    features = _features(text_columns, label_list, is_regression)
    info = datasets.DatasetInfo(description=json.dumps(
        {"path": os.path.abspath(path), "sha256": file_sha256(path)}), features=features)
    return datasets.Dataset.from_dict(texts, features=features, info=info)
