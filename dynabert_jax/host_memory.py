"""Faster XLA:CPU calls: keep freed host memory in the process instead of unmapping it.

XLA:CPU gives each call of a compiled program one scratch buffer for all its
temporaries (158 MB for the MiniLM-L6 forward at batch 32 x seq 128; more for a
training step) and frees it when the call ends. glibc's ``malloc`` serves any
block over 32 MB with a fresh ``mmap`` and returns it with ``munmap`` on free, so every
call faults the whole scratch in again, page by page, and the kernel zeroes each page:
40,000 page faults per MiniLM forward at batch 32, 25-40 ms of its 300-320. PyTorch's
tensors are each under 32 MB there, so glibc recycles them and PyTorch pays none of
this. (At batch 1 and 8 the scratch is under 32 MB and nothing changes.)

:func:`keep_freed_memory` tells glibc (``mallopt``) to serve every block from its heap
(no ``mmap``), to use that one heap for all threads (a thread's own heap is capped at
64 MB and falls back to ``mmap`` for more) and never to trim freed memory off the top
of the heap (``M_TRIM_THRESHOLD`` -1: a finite threshold gives back, at every call, a
scratch larger than itself, as 2 GB, the largest positive ``int``, did with BERT-base's
5-6 GB training scratch). The scratch is then faulted in once and reused by later
calls: the MiniLM forward at batch 32 takes 0.74-0.91x the time, a BERT-base training
step 0.67-0.83x (docs/benchmarks.md, *XLA:CPU's scratch and glibc*, *Scratches over 2
GB: never trim*). The price: the heap grows by a scratch now and then, mostly over the
first calls (a call that cannot reuse a freed scratch, part of which a smaller block
took or which a worker thread has not freed yet, gets a new one), and the process
keeps its peak until it exits; all threads share one malloc arena. Training processes
peaked at one to three scratches more RSS: up to 2.9 GB more for MiniLM, 4.8-5.3 GB more
for BERT-base.

It must run before JAX starts its CPU backend (the first ``jax.devices()``, array or
compiled call): the threads that free the scratch pick their heap at their first
``malloc``. Importing jax or torch first is fine. The same settings, from outside the
process, for any program: ``GLIBC_TUNABLES=`` followed by :data:`GLIBC_TUNABLES`.
``train.py`` calls it when ``config.keep_host_memory`` is true (the default) and JAX
will run on the CPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import logging
import os
import platform

_log = logging.getLogger(__name__)

# (glibc tunable, mallopt parameter from glibc's malloc.h, value); a trim threshold of
# -1 never trims (mallopt(3))
_KEEP = (("arena_max", -8, 1), ("mmap_max", -4, 0), ("trim_threshold", -1, -1))

#: The same settings for a whole program, set before it starts: ``GLIBC_TUNABLES=...``
#: (tunables are size_t: -1 is written as SIZE_MAX).
GLIBC_TUNABLES = ":".join(f"glibc.malloc.{name}={value % 2**64}" for name, _, value in _KEEP)

_applied = False


def _jax_backend_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:   # jax not installed
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else False


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring). Returns whether
    the settings are in force: False, with a warning, when the process is not on glibc or
    JAX's backend has already started (then it changes nothing); True if already done."""
    global _applied
    if _applied:
        return True
    libc = _libc()
    if libc is None:
        _log.warning("keep_freed_memory: not glibc Linux (%s); memory settings unchanged",
                     platform.platform())
        return False
    if _jax_backend_started():
        _log.warning(
            "keep_freed_memory: JAX's backend has already started, so its threads keep "
            "their own heaps; call it before the first JAX array or compiled call, or "
            "start Python with GLIBC_TUNABLES=%s", GLIBC_TUNABLES)
        return False
    if not all(libc.mallopt(param, value) == 1 for _, param, value in _KEEP):
        _log.warning("keep_freed_memory: mallopt refused a setting; memory settings may "
                     "be partly changed")
        return False
    _applied = True
    return True


def jax_runs_on_cpu(platforms: str | None = None) -> bool:
    """Whether JAX will run on the CPU, decided without starting its backend: by
    ``platforms`` if given, else JAX's ``jax_platforms`` setting (``JAX_PLATFORMS``),
    else by whether no GPU or TPU plugin is installed."""
    if platforms is None:
        try:
            import jax

            platforms = jax.config.jax_platforms
        except (ImportError, AttributeError):
            pass
        platforms = platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    # JAX's GPU plugins register "jax_plugins" entry points in the namespace package
    # jax_plugins; TPUs come with libtpu
    if any(importlib.util.find_spec(name) is not None for name in ("libtpu", "jax_plugins")):
        return False
    return not any(True for _ in importlib.metadata.entry_points(group="jax_plugins"))
