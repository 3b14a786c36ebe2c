"""Device mesh and shardings: data parallelism, optionally FSDP, one code path for 1 CPU,
a GPU box or a TPU slice (and several hosts through ``jax.distributed``).

The mesh has one axis, ``"data"``. Batches are split over it. Parameters and optimizer
state are replicated, or with ``fsdp=True`` each large array is split along one of its
dimensions that the axis divides (XLA gathers it where it is used: ZeRO-3 style). The
rule depends only on an array's shape, so parameters and their Adam moments always get
the same sharding.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(num_devices: Optional[int] = None, devices=None) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all by default).

    Built with ``jax.sharding.Mesh`` directly, so its axis is of the ``Auto`` type that
    ``jit`` with ``in_shardings`` expects (``jax.make_mesh`` defaults to ``Explicit``).
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is not None and num_devices < 0:
        raise ValueError(f"num_devices must be positive (or None: all), got {num_devices}")
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"asked for {num_devices} devices, only {len(devices)} exist")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, P(DATA))


def array_sharding(shape, mesh: Mesh, fsdp: bool, min_size: int = 1 << 14) -> NamedSharding:
    """Sharding of one parameter-like array: replicated, or split along its largest
    dimension that the mesh divides when ``fsdp`` and the array is large enough."""
    n = mesh.shape[DATA]
    if not fsdp or n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return replicated(mesh)
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % n == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA
            return NamedSharding(mesh, P(*spec))
    return replicated(mesh)


def tree_shardings(tree: Any, mesh: Mesh, fsdp: bool = False, min_size: int = 1 << 14) -> Any:
    """Shardings for every leaf of a tree of arrays (or ``ShapeDtypeStruct``); with
    ``fsdp``, arrays of fewer than ``min_size`` elements stay replicated."""
    return jax.tree_util.tree_map(
        lambda x: array_sharding(np.shape(x), mesh, fsdp, min_size), tree)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    n = mesh.shape[DATA]
    if batch_size % n:
        raise ValueError(f"{what} {batch_size} is not divisible by the {n} devices of the "
                         f"mesh; use a multiple of {n}")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """Put a host batch on the mesh, split over the data axis.

    Single process: ``batch`` is the global batch. Several processes: each passes its own
    slice (``data.process_slice``) and the global array is assembled from them.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def to_host(x) -> np.ndarray:
    """A global array as a NumPy array on every process: a plain copy where this process
    holds all of it (one process, or replicated), else gathered from the processes."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
