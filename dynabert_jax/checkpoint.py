"""Checkpoints of a training stage, with orbax.

``<dir>/latest``: the full train state (step, parameters, optimizer state) plus a JSON
record (best score so far, config, teacher checksum), written every
``checkpoint_every`` steps; the last two are kept, so a crash while writing one still
leaves the previous. ``<dir>/best``: the parameters of the step with the best dev score
(the stage's output), with the scores that made it best.

orbax writes each step into a temporary folder and renames it when complete, so a run
killed at any moment leaves only whole checkpoints behind, and the resumed run restarts
from the newest one. A Ctrl-C that arrives while a checkpoint is written is held until
the write is done, then raised (see `_hold_ctrl_c`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import signal
import threading
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from dynabert_jax import sharding


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not belong to this run: another model shape, teacher or
    task, or (a training stage's) other training settings."""


def tree_checksum(tree: Any) -> str:
    """sha256 over the paths, shapes, dtypes and bytes of every leaf (host copy)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = sharding.to_host(leaf)   # gathered when other processes hold parts of it
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options)


def _default_sharding() -> jax.sharding.Sharding:
    """Where a restored array goes when the caller names no sharding: this process's
    first device, or with several processes replicated over all devices. Never the
    devices it was saved from, which need not exist here (a run trained on 8 GPUs,
    exported on a laptop)."""
    if jax.process_count() == 1:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return sharding.replicated(sharding.make_mesh())


def _abstract(tree: Any) -> Any:
    default = _default_sharding()

    def leaf(x):
        where = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=where)

    return jax.tree_util.tree_map(leaf, tree)


@contextlib.contextmanager
def _hold_ctrl_c():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block and raise it as
    KeyboardInterrupt once the block is done. Orbax waits for its save threads inside
    ``except BaseException``: a KeyboardInterrupt raised there would be logged, the
    checkpoint dropped and training would carry on. An ignored or custom SIGINT handler
    is left as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


class StageCheckpoints:
    """The ``latest`` and ``best`` checkpoints of one stage, under ``directory``."""

    def __init__(self, directory, record: Optional[dict] = None):
        self.directory = pathlib.Path(directory).absolute()
        self.record = dict(record or {})
        self._latest = _manager(self.directory / "latest", keep=2)
        self._best = _manager(self.directory / "best", keep=1)

    # -- latest: resume ------------------------------------------------------------
    def save_latest(self, step: int, state: Any, extra: Optional[dict] = None) -> None:
        meta = dict(self.record, **(extra or {}), step=int(step))
        with _hold_ctrl_c():
            self._latest.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
            self._latest.wait_until_finished()

    def latest_step(self) -> Optional[int]:
        return self._latest.latest_step()

    def latest_meta(self) -> Optional[dict]:
        """The newest checkpoint's record (its ``step`` among it), checked to belong to
        this run, without reading the state; None if there is none."""
        step = self._latest.latest_step()
        if step is None:
            return None
        meta = self._latest.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        self._check_record(meta, f"{self.directory / 'latest'} step {step}")
        return meta

    def restore_latest(self, like: Any, meta: Optional[dict] = None
                       ) -> Optional[Tuple[Any, dict]]:
        """The newest full state shaped and sharded like ``like``, or None. ``meta``: its
        record as `latest_meta` returned it, so it is not read and checked again."""
        meta = self.latest_meta() if meta is None else meta
        if meta is None:
            return None
        step = int(meta["step"])
        try:
            restored = self._latest.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(like))))["state"]
        except (ValueError, KeyError) as e:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / 'latest'} step {step} does not fit this "
                f"model: {e}") from e
        return restored, meta

    # -- best: the stage's output --------------------------------------------------
    def save_best(self, step: int, params: Any, info: dict) -> None:
        meta = dict(self.record, **info, step=int(step))
        with _hold_ctrl_c():
            for old in self._best.all_steps():  # keep exactly one, even at a lower step
                if old >= step:
                    self._best.delete(old)
            self._best.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
            self._best.wait_until_finished()

    def best_info(self) -> Optional[dict]:
        step = self._best.latest_step()
        if step is None:
            return None
        return self._best.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]

    def restore_best(self, like: Any = None) -> Tuple[Any, dict]:
        step = self._best.latest_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint in {self.directory / 'best'}: has "
                                    f"this stage run?")
        saved = self._saved_shapes(step)
        where = f"checkpoint {self.directory / 'best'} step {step}"
        if like is None:
            like = saved
        else:   # checked before orbax reads anything: one clear error, no read aborted
            _check_shapes(saved, like, where)
        try:
            out = self._best.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(like)),
                meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError) as e:
            raise CheckpointMismatchError(f"{where} does not fit this model: {e}") from e
        return out["params"], out["meta"]

    def _saved_shapes(self, step: int) -> Any:
        """The best parameters' shapes and dtypes, as saved (no sharding)."""
        handlers = {"params": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        manager = ocp.CheckpointManager(self.directory / "best", item_names=tuple(handlers),
                                        item_handlers=handlers)
        try:
            saved = manager.item_metadata(step)["params"]
        finally:
            manager.close()
        return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), saved)

    def _check_record(self, meta: dict, where: str) -> None:
        for key in ("model", "teacher_checksum", "init_checksum", "task"):
            if key in self.record and key in meta and meta[key] != self.record[key]:
                why = ("; it started from other parameters: the output of the stage "
                       "before it (or config.model.pretrained) has changed since"
                       if key == "init_checksum" else "")
                raise CheckpointMismatchError(
                    f"{where} was written with {key}={meta[key]!r}, but this run has "
                    f"{key}={self.record[key]!r}{why}; use a fresh workdir or the "
                    f"original settings")
        # "training": the flat settings that decide what was trained (trainer.py); a
        # checkpoint written before the record is taken as it is.
        old, new = meta.get("training"), self.record.get("training")
        if old is not None and new is not None and old != new:
            diffs = [f"{k}={old.get(k)!r} (now {new.get(k)!r})"
                     for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            raise CheckpointMismatchError(
                f"{where} was trained with other settings: {'; '.join(diffs)}. Use a "
                f"fresh workdir for the new settings, or the original ones to resume")

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def _check_shapes(saved: Any, like: Any, where: str) -> None:
    """`CheckpointMismatchError` naming the parameters that `saved` (shapes as written)
    lacks, has extra or holds in another shape than `like` (the model's)."""
    def shapes(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
                for path, leaf in leaves}
    have, want = shapes(saved), shapes(like)
    diffs = ([f"{k}: missing" for k in want if k not in have]
             + [f"{k}: not in this model" for k in have if k not in want]
             + [f"{k}: {have[k]}, this model {want[k]}" for k in want
                if k in have and have[k] != want[k]])
    if diffs:
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        raise CheckpointMismatchError(f"{where} does not fit this model: "
                                      f"{'; '.join(diffs[:5])}{more}")


def load_params(directory, like: Any = None) -> Tuple[Any, dict]:
    """The ``best`` parameters of a stage folder (``<workdir>/<stage>/checkpoints``)."""
    store = StageCheckpoints(directory)
    try:
        return store.restore_best(like)
    finally:
        store.close()


def best_record(directory) -> Optional[dict]:
    """The record saved with the ``best`` checkpoint of a stage folder
    (``<workdir>/<stage>/checkpoints``): the stage's settings (``config``, the whole
    config it trained with; ``training``), its step and dev scores. The parameters are
    not read. None when the folder holds no best checkpoint."""
    directory = pathlib.Path(directory)
    if not (directory / "best").is_dir():   # the manager would create the folder
        return None
    store = StageCheckpoints(directory)
    try:
        return store.best_info()
    finally:
        store.close()


def write_text_atomic(path, text: str) -> None:
    """Write `text` to `path` so that a crash leaves the old file or the new one, never
    half of either: write a sibling temporary file, fsync it, rename it over `path`.

    The temporary file's name carries the process and thread, so two processes writing
    the same file at once (e.g. two ``stage=direct`` runs split by width over one
    workdir) each rename a whole file into place; the last rename wins."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path, obj) -> None:
    """Write `obj` as JSON to `path` atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
