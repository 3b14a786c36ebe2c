"""Tokenization of text datasets into static-shape numpy arrays, with a disk cache.

`tokenize_dataset` turns a Dataset (from `load_glue` / `load_custom`) into::

    {"input_ids":      int32 [n, max_seq_length],
     "attention_mask": int32 [n, max_seq_length],   # 1 real token, 0 padding
     "token_type_ids": int32 [n, max_seq_length],   # 0 first segment, 1 second; all 0
                                                    # for tokenizers without them (RoBERTa)
     "labels":         int32 [n] (classification) or float32 [n] (regression)}

The ids are those of the official code's ``convert_examples_to_features``
(transformers 2.1.1): each text stripped of surrounding whitespace, a single sentence
cut to its first ``L - 2`` tokens, a pair cut by ``_truncate_seq_pair`` (one token at a
time from the longer text, from the second on a tie; see `truncate_pair`), special
tokens and segment ids as the tokenizer adds them, right padding. With a slow (Python)
tokenizer pairs are cut by the tokenizer's own ``longest_first`` instead.

Cache: ``<cache_dir>/<key>/{input_ids,attention_mask,token_type_ids,labels}.npy``
plus ``meta.json``. The key hashes (1) the tokenizer (its backend JSON: vocab,
normalizer, pre-tokenizer, post-processor -- minus the per-call truncation/padding
state -- plus class, padding/truncation side), (2) ``max_seq_length``, and (3) a
SHA-256 of the exact input: the text columns and the labels. (3) changes exactly
when the source file's content changes, and also covers datasets that do not come
from a file (subsets, hub data). Writes are atomic (temp dir + rename), so
concurrent processes never read a half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Dict, Optional, Sequence, Union

import numpy as np

from dynabert_jax.data.tasks import GlueTask, get_task

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 3   # 3: the official pair truncation, stripped texts
ARRAY_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def tokenizer_fingerprint(tokenizer) -> str:
    """Hex digest identifying what a tokenizer does to text.

    Fast tokenizers: the backend JSON (vocab, merges, normalizer, special tokens,
    post-processor), without the ``truncation``/``padding`` entries that every call
    overwrites. Slow tokenizers: the vocabulary and init kwargs.
    """
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    for attr in ("padding_side", "truncation_side"):
        h.update(f"|{attr}={getattr(tokenizer, attr, None)}".encode())
    h.update(f"|inputs={list(getattr(tokenizer, 'model_input_names', []))}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    else:
        vocab = sorted(tokenizer.get_vocab().items())
        h.update(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
        h.update(repr(sorted((k, repr(v)) for k, v in
                             getattr(tokenizer, "init_kwargs", {}).items())).encode())
    return h.hexdigest()


def content_fingerprint(text_columns: Sequence[Sequence[str]], labels=None) -> str:
    """Hex SHA-256 of the texts (unambiguous: lengths + joined text) and labels."""
    h = hashlib.sha256()
    for col in text_columns:
        h.update(np.asarray([len(s) for s in col], dtype=np.int64).tobytes())
        h.update("".join(col).encode("utf-8", "surrogatepass"))
    if labels is not None:
        arr = np.asarray(labels)
        h.update(str(arr.dtype).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def truncate_pair(len_a: int, len_b: int, room: int):
    """The lengths the official ``_truncate_seq_pair`` keeps of two texts of ``len_a`` and
    ``len_b`` tokens in ``room``: it drops the last token of the longer one, of the
    second on a tie, until they fit. (The Rust tokenizers' ``longest_first`` gives the
    odd token to the second text instead.)"""
    excess = len_a + len_b - room
    if excess <= 0:
        return len_a, len_b
    cut = min(abs(len_a - len_b), excess)   # the longer one down to the shorter
    if len_a > len_b:
        len_a -= cut
    else:
        len_b -= cut
    excess -= cut                           # then both in turn, the second first
    return len_a - excess // 2, len_b - (excess + 1) // 2


def _pairs_official(tokenizer, a, b, max_seq_length, out, lo):
    """Rows ``lo..`` of ``out``: pairs encoded whole, then cut by `truncate_pair`."""
    enc = tokenizer(a, b, truncation=False, padding=False, verbose=False)
    types = enc.get("token_type_ids")
    for i in range(len(a)):
        ids = np.asarray(enc["input_ids"][i], np.int64)
        seq = np.asarray([-1 if s is None else s for s in enc.encodings[i].sequence_ids])
        in_a, in_b = seq == 0, seq == 1
        room = max_seq_length - int(np.sum(seq == -1))
        if room < 0:
            raise ValueError(f"max_seq_length={max_seq_length} leaves no room for text "
                             f"beside the special tokens")
        keep_a, keep_b = truncate_pair(int(in_a.sum()), int(in_b.sum()), room)
        keep = ((seq == -1) | (in_a & (np.cumsum(in_a) <= keep_a))
                | (in_b & (np.cumsum(in_b) <= keep_b)))
        n = int(keep.sum())
        out["input_ids"][lo + i, :n] = ids[keep]
        out["attention_mask"][lo + i, :n] = 1
        out["input_ids"][lo + i, n:] = tokenizer.pad_token_id or 0
        if types is not None:
            out["token_type_ids"][lo + i, :n] = np.asarray(types[i])[keep]


def tokenize_texts(tokenizer, texts_a: Sequence[str], texts_b: Optional[Sequence[str]] = None,
                   max_seq_length: int = 128, chunk_size: int = 8192) -> Dict[str, np.ndarray]:
    """Tokenize single sentences or pairs to static-length int32 arrays.

    Args:
      tokenizer: a Hugging Face tokenizer (fast: BERT WordPiece, RoBERTa BPE, ...).
      texts_a: first segments, length n.
      texts_b: second segments (length n) for pair tasks, else None.
      max_seq_length: padded/truncated length L.
      chunk_size: rows per tokenizer call (bounds peak memory).
    Returns:
      ``input_ids``, ``attention_mask``, ``token_type_ids``: int32 ``[n, L]``.
    """
    n = len(texts_a)
    if texts_b is not None and len(texts_b) != n:
        raise ValueError(f"texts_a has {n} rows but texts_b has {len(texts_b)}")
    # batching (row lengths, trimmed padding) and the pair path assume right padding
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError(f"tokenize_texts expects a right-padding tokenizer, got "
                         f"padding_side={tokenizer.padding_side!r} (set "
                         f"tokenizer.padding_side = 'right')")
    out = {k: np.zeros((n, max_seq_length), np.int32)
           for k in ("input_ids", "attention_mask", "token_type_ids")}
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        a = [s.strip() for s in texts_a[lo:hi]]   # as the official tokenize() does
        b = [s.strip() for s in texts_b[lo:hi]] if texts_b is not None else None
        if b is not None and getattr(tokenizer, "is_fast", False):
            _pairs_official(tokenizer, a, b, max_seq_length, out, lo)
            continue
        enc = tokenizer(a, b, padding="max_length", truncation=True,
                        max_length=max_seq_length, return_tensors="np")
        for k in out:
            if k in enc:
                v = np.asarray(enc[k])
                if v.shape != (hi - lo, max_seq_length):
                    raise RuntimeError(f"tokenizer returned {k} of shape {v.shape}, "
                                       f"expected {(hi - lo, max_seq_length)}")
                out[k][lo:hi] = v
    return out


def _column(ds, name: str) -> list:
    """A column as a Python list (fast path through Arrow for `datasets.Dataset`,
    which honours ``select``/``shuffle`` index mappings)."""
    with_format = getattr(ds, "with_format", None)
    if with_format is not None:
        col = with_format("arrow")[name]
        return col.to_pylist()
    return list(ds[name])


def _columns_and_labels(ds, task_or_columns, label_column: str):
    """Resolve text column names and label dtype from a task or explicit names."""
    if isinstance(task_or_columns, GlueTask):
        task = task_or_columns
    elif isinstance(task_or_columns, str):
        task = get_task(task_or_columns)
    else:
        task = None
    if task is not None:
        cols = task.text_columns
        regression = task.is_regression
    else:
        cols = tuple(task_or_columns)
        regression = None
    if not 1 <= len(cols) <= 2:
        raise ValueError(f"need 1 or 2 text columns, got {cols}")
    names = list(getattr(ds, "column_names", None) or ds.keys())
    for c in cols:
        if c not in names:
            raise KeyError(f"dataset has no text column {c!r}; columns: {names}")
    labels = None
    if label_column in names:
        raw = _column(ds, label_column)
        if regression is None:
            feat = (getattr(ds, "features", None) or {}).get(label_column)
            dtype = getattr(feat, "dtype", None)  # "int64" for ClassLabel, "float32"
            regression = (dtype is not None and "float" in str(dtype)) or (
                dtype is None and any(isinstance(x, float) for x in raw))
        labels = np.asarray(raw, dtype=np.float32 if regression else np.int32)
    return cols, labels


def tokenize_dataset(ds, tokenizer, task_or_columns: Union[str, GlueTask, Sequence[str]],
                     max_seq_length: int = 128, cache_dir=None,
                     label_column: str = "label", verbose: bool = False) -> Dict[str, np.ndarray]:
    """Tokenize a text dataset to static-shape arrays, cached on disk.

    Args:
      ds: a `datasets.Dataset` (or a dict of lists) with the text columns and,
        optionally, a label column.
      tokenizer: Hugging Face tokenizer of the model.
      task_or_columns: a task name / `GlueTask` (its ``text_columns`` and label
        type), or a tuple of 1-2 text column names.
      max_seq_length: L, the static sequence length.
      cache_dir: folder for the cache; None disables caching.
      label_column: name of the label column (omitted from the output if absent).
    Returns:
      dict: ``input_ids``, ``attention_mask``, ``token_type_ids`` int32 ``[n, L]``;
      ``labels`` int32 or float32 ``[n]`` if the dataset has labels.
    """
    cols, labels = _columns_and_labels(ds, task_or_columns, label_column)
    texts = [_column(ds, c) for c in cols]

    key = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps({
            "version": CACHE_FORMAT_VERSION,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "max_seq_length": int(max_seq_length),
            "columns": list(cols),
            "content": content_fingerprint(texts, labels),
        }, sort_keys=True).encode()).hexdigest()[:32]
        cached = _load_cache(os.path.join(os.fspath(cache_dir), key), len(texts[0]))
        if cached is not None:
            if verbose:
                print(f"tokenize_dataset: loaded cache {key}")
            return cached

    t0 = time.perf_counter()
    log.info("tokenizing %d examples at seq %d%s...", len(texts[0]), max_seq_length,
             "" if key is None else " (cached afterwards)")
    arrays = tokenize_texts(tokenizer, texts[0], texts[1] if len(texts) == 2 else None,
                            max_seq_length)
    log.info("tokenized %d examples in %.1f s", len(texts[0]), time.perf_counter() - t0)
    if labels is not None:
        arrays["labels"] = labels
    if key is not None:
        _save_cache(os.fspath(cache_dir), key, arrays, {
            "columns": list(cols), "max_seq_length": int(max_seq_length),
            "num_rows": len(texts[0]), "tokenizer_class": type(tokenizer).__name__,
            "source": getattr(getattr(ds, "info", None), "description", None) or None,
            "seconds": round(time.perf_counter() - t0, 3)})
    return arrays


def _load_cache(path: str, num_rows: int) -> Optional[Dict[str, np.ndarray]]:
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        out = {}
        for k in meta["keys"]:
            arr = np.load(os.path.join(path, f"{k}.npy"))
            out[k] = arr.astype(meta["dtypes"][k], copy=False)  # int8 on disk -> int32
    except (OSError, ValueError, KeyError):
        return None  # unreadable entry: recompute (and overwrite below)
    if any(len(v) != num_rows for v in out.values()) or meta.get("num_rows") != num_rows:
        return None
    return out


def _save_cache(cache_dir: str, key: str, arrays: Dict[str, np.ndarray], meta: dict) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    final = os.path.join(cache_dir, key)
    tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir)
    try:
        for k, v in arrays.items():
            # 0/1 masks and segment ids are stored as int8 (a quarter of the disk)
            small = v.dtype == np.int32 and k != "input_ids" and v.size and \
                0 <= v.min() and v.max() <= 127
            np.save(os.path.join(tmp, f"{k}.npy"), v.astype(np.int8) if small else v)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({**meta, "keys": list(arrays),
                       "dtypes": {k: str(v.dtype) for k, v in arrays.items()}}, f, indent=1)
        if os.path.isfile(os.path.join(final, "meta.json")):
            return  # another process finished the same entry first
        if os.path.isdir(final):
            shutil.rmtree(final, ignore_errors=True)  # unreadable leftover
        os.rename(tmp, final)
    except OSError:
        if not os.path.isfile(os.path.join(final, "meta.json")):
            raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
