"""Faster dropout on CPU: JAX's Threefry hash lowered with its rounds unrolled.

JAX lowers the Threefry-2x32 hash behind ``jax.random`` as a rolled 5-iteration
``while`` loop on CPU (to keep compile times short) and unrolled everywhere else. On
XLA:CPU the rolled loop is slow: a ``[32, 12, 128, 128]`` dropout mask (one attention
layer of a MiniLM student at batch 32) took 169 ms rolled and 24 ms unrolled on one
core, with identical bits. Dropout draws ~9.4 M random numbers per layer per student;
unrolled, a MiniLM train step runs 1.03-1.09x faster (``bench/dropout_rng.py``,
docs/benchmarks.md).

:func:`unroll_threefry_on_cpu` registers JAX's own unrolled lowering for the CPU
platform. It changes no random number: the same function of the same key and counter,
in straight-line code. The price is compile time (the unrolled hash is inlined at every
dropout site). It affects programs traced after the call, in the whole process; the
trainer calls it when ``config.cpu_unrolled_threefry`` is true (the default).
"""
from __future__ import annotations

import functools
import logging

_log = logging.getLogger(__name__)
_done = False


def _register_cpu_lowering(rolled: bool, failed: str) -> bool:
    """Register JAX's own Threefry lowering, rolled or unrolled, for the CPU platform;
    on a JAX version without these internals, log ``failed`` and return False."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        rule = mlir.lower_fun(
            functools.partial(tf._threefry2x32_lowering, use_rolled_loops=rolled),
            multiple_results=True)
        mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")
    except (ImportError, AttributeError, TypeError) as e:  # a JAX version without them
        _log.warning("%s (%s: %s)", failed, type(e).__name__, e)
        return False
    return True


def unroll_threefry_on_cpu() -> bool:
    """Lower ``threefry2x32`` unrolled on CPU from now on. Returns whether it applied.

    Uses JAX internals (``jax._src.random.threefry2x32``); when a JAX version moves
    them, it logs a warning and leaves the default lowering (correct, only slower).
    """
    global _done
    if not _done:
        _done = _register_cpu_lowering(
            False, "could not unroll the Threefry lowering on CPU; dropout keeps JAX's "
                   "default, slower CPU lowering")
    return _done


def restore_default_on_cpu() -> bool:
    """Undo `unroll_threefry_on_cpu`: programs traced from now on get JAX's default,
    rolled CPU lowering again (the same bits). Returns whether it was unrolled.

    For a process that goes on to compile other, small programs after training (the
    test suite does): at a few hundred values per tensor XLA:CPU fuses the unrolled
    hash into many consumers and compiles such programs several times more slowly."""
    global _done
    if not _done:
        return False
    if not _register_cpu_lowering(True, "could not restore JAX's default Threefry "
                                        "lowering on CPU; it stays unrolled (same bits)"):
        return False
    _done = False
    return True
