"""Batch iterators over tokenized arrays (numpy only; jax is imported lazily).

``arrays`` is a dict of equal-length numpy arrays, e.g. the output of
`tokenize_dataset`: ``input_ids``/``attention_mask``/``token_type_ids`` int32
``[n, seq]`` and ``labels`` ``[n]``. A batch is a dict with the same keys and
leading dimension ``batch``.

Guarantees:

* **Training order is a pure function of (seed, epoch).** The permutation of epoch
  ``e`` is ``np.random.default_rng([seed, e]).permutation(n)``; batch ``s`` of that
  epoch holds rows ``perm[s*B:(s+1)*B]``. A run resumed at (epoch, step) with
  ``start_step`` sees exactly the batches an uninterrupted run would have seen.
* **Static shapes.** Training drops the last partial batch by default, or
  (``pad_remainder``, as the official loader keeps it) pads it, like evaluation, to
  ``batch_size`` with copies of a real row that carry ``weight == 0``.
* **Optional length grouping and dynamic padding** (a speed option, off by default;
  the official code pads every batch to the maximum length): `train_batches` with
  ``lengths`` sorts rows of similar length into the same batch (within random groups
  of ``group_batches`` batches, then shuffles the batch order), and `trim_padding`
  cuts a batch to a multiple of ``m`` tokens that holds its longest row, so a batch
  of short sentences costs a short sequence. A few distinct lengths, so a few
  compiled steps.
* **Every eval example counts exactly once**: over `eval_batches`, ``weight`` sums
  to n and the rows with ``weight == 1``, in order, are the dataset rows 0..n-1.
* **Global batches.** All processes build the same global batch (same seed);
  `process_slice` cuts out this process's rows for a data-parallel mesh axis. With
  gradient accumulation a step's batch is ``k`` consecutive batches, laid out by
  `interleave_micro_batches`.
* `prefetch` runs any batch iterator in a background thread with a bounded queue.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np

Batch = Dict[str, np.ndarray]


def num_examples(arrays: Dict[str, np.ndarray]) -> int:
    """Number of rows; checks that all arrays agree."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if not lengths:
        raise ValueError("arrays is empty")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"arrays have different lengths: {lengths}")
    return next(iter(lengths.values()))


def steps_per_epoch(num_rows: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Training steps in one epoch: ``n // B`` (drop_remainder) or ``ceil(n / B)``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return num_rows // batch_size if drop_remainder else -(-num_rows // batch_size)


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of `epoch`: int64 ``[n]``, a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_rows)


def resume_position(global_step: int, steps_in_epoch: int) -> Tuple[int, int]:
    """(epoch, step within epoch) of the next batch after `global_step` steps."""
    if steps_in_epoch <= 0:
        raise ValueError("an epoch must have at least one step")
    return divmod(int(global_step), steps_in_epoch)


def row_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Per row, one past the last non-zero position of ``attention_mask`` ``[n, seq]``
    (the row's length under right padding; 0 for an all-zero row)."""
    mask = np.asarray(attention_mask) != 0
    seq = mask.shape[1]
    last = seq - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 0).astype(np.int64)


def padded_length(longest: int, multiple: int, max_length: int) -> int:
    """The smallest multiple of `multiple` that holds `longest` tokens, at most
    `max_length` (and at least `multiple`, or `max_length` if that is shorter)."""
    if multiple <= 0:
        raise ValueError(f"pad_to_multiple_of must be positive, got {multiple}")
    return int(min(max_length, max(multiple, -(-int(longest) // multiple) * multiple)))


def cut_sequence(batch: Batch, length: int, mask_key: str = "attention_mask") -> Batch:
    """The first `length` positions of a batch: every array whose second axis has the
    length of ``batch[mask_key]``'s is cut; all other arrays (labels, weights) are kept."""
    seq = batch[mask_key].shape[1]
    if length == seq:
        return batch
    return {k: (v[:, :length] if v.ndim >= 2 and v.shape[1] == seq else v)
            for k, v in batch.items()}


def trim_padding(batch: Batch, multiple: int, mask_key: str = "attention_mask") -> Batch:
    """`cut_sequence` to `padded_length` of the batch's longest row.

    Only positions past every row's last real token are removed, so a model whose real
    tokens do not attend to padding gives the same outputs on them.
    """
    mask = batch[mask_key]
    length = padded_length(row_lengths(mask).max(initial=0), multiple, mask.shape[1])
    return cut_sequence(batch, length, mask_key)


def _grouped_order(order: np.ndarray, lengths: np.ndarray, batch_size: int,
                   group_batches: int, rng: np.random.Generator) -> np.ndarray:
    """Reorder `order` (whole batches only) so that each batch holds rows of similar
    length: sort each consecutive group of ``group_batches`` batches by length
    (longest first, stable), then shuffle the order of the batches."""
    steps = len(order) // batch_size
    if steps == 0:   # fewer rows than one batch: nothing to group
        return order
    chunk = max(1, int(group_batches)) * batch_size
    parts = []
    for lo in range(0, len(order), chunk):
        rows = order[lo:lo + chunk]
        parts.append(rows[np.argsort(-lengths[rows], kind="stable")])
    batches = np.concatenate(parts).reshape(steps, batch_size)
    return batches[rng.permutation(steps)].reshape(-1)


def _take(arrays: Dict[str, np.ndarray], idx: np.ndarray, keys: Optional[Sequence[str]]) -> Batch:
    return {k: arrays[k][idx] for k in (keys or arrays)}


def _take_padded(arrays: Dict[str, np.ndarray], idx: np.ndarray, batch_size: int,
                 keys: Optional[Sequence[str]]) -> Batch:
    """The rows ``idx`` filled up to ``batch_size`` with copies of the last one, and
    ``weight``: float32 ``[batch_size]``, 1 for a row of ``idx``, 0 for a copy."""
    real = len(idx)
    batch = _take(arrays, np.concatenate([idx, np.repeat(idx[-1:], batch_size - real)]), keys)
    batch["weight"] = (np.arange(batch_size) < real).astype(np.float32)
    return batch


def train_batches(arrays: Dict[str, np.ndarray], batch_size: int, seed: int, epoch: int,
                  start_step: int = 0, drop_remainder: bool = True, shuffle: bool = True,
                  keys: Optional[Sequence[str]] = None,
                  lengths: Optional[np.ndarray] = None,
                  group_batches: int = 50, pad_remainder: bool = False) -> Iterator[Batch]:
    """Yield the training batches of one epoch, from batch `start_step` on.

    Args:
      arrays: dict of ``[n, ...]`` arrays.
      batch_size: global batch size B.
      seed, epoch: determine the order (see module docstring).
      start_step: index of the first batch to yield (resume mid-epoch).
      drop_remainder: drop the last ``n % B`` rows (static shapes); if False the
        last batch is smaller, or padded (``pad_remainder``).
      shuffle: False keeps file order (for debugging).
      keys: subset of keys to put in the batches (default all).
      lengths: ``[n]`` row lengths (`row_lengths`): group rows of similar length
        into the same batch. The epoch keeps the same rows as without grouping (the
        same ``n % B`` are dropped); only their split into batches changes. Needs
        ``drop_remainder``.
      group_batches: rows are sorted by length within random groups of this many
        batches (Hugging Face's ``group_by_length`` uses 50).
      pad_remainder: with ``drop_remainder=False``, the last ``n % B`` rows are the
        epoch's last batch, filled up to ``B`` with copies of its last row, and every
        batch has ``weight``: float32 ``[B]``, 1 for a real row, 0 for a copy. With
        ``lengths`` the full batches are grouped and this one stays last.
    Yields:
      dicts of ``[B, ...]`` arrays.
    """
    n = num_examples(arrays)
    steps = steps_per_epoch(n, batch_size, drop_remainder)
    if steps == 0:
        raise ValueError(f"{n} examples make no full batch of {batch_size}")
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step {start_step} outside [0, {steps}]")
    if pad_remainder and drop_remainder:
        raise ValueError("pad_remainder pads the last partial batch: it needs "
                         "drop_remainder=False")
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    if lengths is not None:
        if not (drop_remainder or pad_remainder):
            raise ValueError("grouping by length needs whole batches: drop_remainder=True "
                             "or pad_remainder=True")
        lengths = np.asarray(lengths)
        if lengths.shape != (n,):
            raise ValueError(f"lengths has shape {lengths.shape}, want ({n},)")
        full = (n // batch_size) * batch_size   # the remainder, if kept, stays last
        order = np.concatenate([
            _grouped_order(order[:full], lengths, batch_size, group_batches,
                           np.random.default_rng([int(seed), int(epoch), 1])),
            order[full:]])
    for s in range(start_step, steps):
        idx = order[s * batch_size:(s + 1) * batch_size]
        yield (_take_padded(arrays, idx, batch_size, keys) if pad_remainder
               else _take(arrays, idx, keys))


def train_stream(arrays: Dict[str, np.ndarray], batch_size: int, seed: int,
                 start_global_step: int = 0, num_steps: Optional[int] = None,
                 keys: Optional[Sequence[str]] = None,
                 lengths: Optional[np.ndarray] = None,
                 pad_remainder: bool = False) -> Iterator[Batch]:
    """Batches over consecutive epochs, starting after `start_global_step` steps.

    Equivalent to concatenating ``train_batches(..., epoch=e)`` for e = 0, 1, ...
    and skipping the first `start_global_step` batches (without computing them).
    Stops after `num_steps` batches (None: never). ``lengths``: group by length;
    ``pad_remainder``: keep each epoch's last partial batch, padded (see
    `train_batches`).
    """
    n = num_examples(arrays)
    spe = steps_per_epoch(n, batch_size, drop_remainder=not pad_remainder)
    epoch, step = resume_position(start_global_step, spe)
    done = 0
    while num_steps is None or done < num_steps:
        for batch in train_batches(arrays, batch_size, seed, epoch, start_step=step, keys=keys,
                                   lengths=lengths, drop_remainder=not pad_remainder,
                                   pad_remainder=pad_remainder):
            if num_steps is not None and done >= num_steps:
                return
            yield batch
            done += 1
        epoch, step = epoch + 1, 0


def num_eval_batches(num_rows: int, batch_size: int) -> int:
    return -(-num_rows // batch_size)


def eval_batches(arrays: Dict[str, np.ndarray], batch_size: int,
                 keys: Optional[Sequence[str]] = None) -> Iterator[Batch]:
    """Yield evaluation batches in dataset order, all of size `batch_size`.

    The last partial batch is filled with copies of its last real row, marked
    ``weight == 0``.

    Yields:
      dicts of ``[B, ...]`` arrays plus ``weight``: float32 ``[B]``, 1 for a real
      example, 0 for padding.
    """
    n = num_examples(arrays)
    if n == 0:
        return
    for lo in range(0, n, batch_size):
        yield _take_padded(arrays, np.arange(lo, min(n, lo + batch_size)), batch_size, keys)


def unpad(values, weight) -> np.ndarray:
    """Keep the rows of `values` (``[N, ...]``) whose `weight` (``[N]``) is non-zero.

    Use on outputs concatenated over `eval_batches` to get one row per example.
    """
    values = np.asarray(values)
    weight = np.asarray(weight)
    if len(values) != len(weight):
        raise ValueError(f"{len(values)} values but {len(weight)} weights")
    return values[weight > 0]


def process_slice(batch: Batch, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> Batch:
    """This process's contiguous share of a global batch.

    With P processes, process i gets rows ``[i*B/P, (i+1)*B/P)`` of every array,
    matching a batch sharded over the data axis of a device mesh in process order
    (e.g. `jax.make_array_from_process_local_data`). Defaults to
    ``jax.process_index()`` / ``jax.process_count()``.
    """
    if process_index is None or process_count is None:
        import jax  # lazily: the rest of this module is numpy-only

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    b = num_examples(batch)
    if b % process_count:
        raise ValueError(f"global batch {b} is not divisible by {process_count} processes")
    per = b // process_count
    lo = process_index * per
    return {k: v[lo:lo + per] for k, v in batch.items()}


def interleave_micro_batches(batch: Batch, accum_steps: int) -> Batch:
    """A batch of ``k = accum_steps`` consecutive micro-batches (micro-batch ``j`` is
    rows ``[j*B, (j+1)*B)``), reordered so that row ``b*k + j`` is row ``b`` of
    micro-batch ``j``: every device's (and process's) contiguous share of the rows then
    holds an equal share of every micro-batch, and the train step's
    `steps.micro_batches` takes them apart without moving data between devices.
    """
    k = int(accum_steps)
    if k == 1:
        return batch
    n = num_examples(batch)
    if k < 1 or n % k:
        raise ValueError(f"a batch of {n} rows does not split into {accum_steps} micro-batches")
    return {key: v.reshape(k, n // k, *v.shape[1:]).swapaxes(0, 1).reshape(v.shape)
            for key, v in batch.items()}


_END = object()


class prefetch:  # noqa: N801 - used like a function: ``for b in prefetch(it): ...``
    """Run `iterator` in a background thread, `buffer_size` items ahead.

    Args:
      iterator: any iterable of batches.
      buffer_size: bound of the queue (items produced but not consumed).
      transform: optional function applied in the background thread to each item
        (e.g. ``jax.device_put`` with a sharding) so the host never stalls the device.

    Exceptions raised by the producer are re-raised in the consumer. Use as a
    context manager, or call `close()`, to stop the thread early.
    """

    def __init__(self, iterator: Iterable, buffer_size: int = 2,
                 transform: Optional[Callable] = None):
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        self._queue: "queue.Queue" = queue.Queue(maxsize=buffer_size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(iter(iterator), transform),
                                        name="prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it, transform):
        try:
            for item in it:
                if transform is not None:
                    item = transform(item)
                if not self._put((True, item)):
                    return
        except BaseException as e:  # forwarded to the consumer
            self._put((False, e))
            return
        self._put((True, _END))

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        ok, item = self._queue.get()
        if not ok:
            self._done = True
            raise item
        if item is _END:
            self._done = True
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the producer thread and drop buffered items."""
        self._done = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._stop.set()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
