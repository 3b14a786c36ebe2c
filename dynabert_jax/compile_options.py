"""XLA compiler options the trainer compiles its programs with: 512-bit vectors on CPUs
with AVX-512.

XLA:CPU asks LLVM for 256-bit vectors by default (``xla_cpu_prefer_vector_width``),
also on CPUs whose registers hold 512 bits. On the 2-core AVX-512 CPU of
docs/benchmarks.md, 512 made a MiniLM DynaBERT training step 0.95x the time (every
stage), a BERT-base one 0.97x (single student; stage 1 unchanged, 0.997x), and forwards
0.96-0.99x at batch 32 (0.91-0.98x at batch 1), compiled both ways and timed
alternately in one process (``bench/train_step_options.py``,
``bench/ratio_drift.py --compiler-option``); compiling takes 1.1-1.2x as long.

The numbers it computes are the same up to the order of a few float sums: at most one
float32 ULP in a loss, none in the parameters after the steps we compared. A run
resumed with another setting goes on from its checkpoint like any run, but is not
bit-identical to one that kept the first setting.

:func:`compiler_options` turns ``config.cpu_prefer_vector_width`` into the
``compiler_options`` of ``jax.jit``: on the CPU backend only (GPU and TPU compilers do
not read it), and 512 only where the CPU has AVX-512 (elsewhere XLA keeps its default).
"""
from __future__ import annotations

import functools
import logging
import platform
from typing import Dict, Optional

_log = logging.getLogger(__name__)

#: ``config.cpu_prefer_vector_width`` values: 0 = XLA's default (256), or bits.
VECTOR_WIDTHS = (0, 128, 256, 512)


def on_x86() -> bool:
    """Whether this machine is a 64-bit x86 (Linux says x86_64, Windows AMD64)."""
    return platform.machine().lower() in ("x86_64", "amd64")


@functools.lru_cache(maxsize=None)
def cpu_has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine is an x86 CPU with AVX-512F (the first ``flags`` line of
    Linux's ``cpuinfo``; False where it cannot tell)."""
    if not on_x86():
        return False
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def check_vector_width(prefer_vector_width) -> int:
    """``prefer_vector_width`` as an int, or ValueError naming the allowed values."""
    if isinstance(prefer_vector_width, bool) or prefer_vector_width not in VECTOR_WIDTHS:
        raise ValueError(f"cpu_prefer_vector_width={prefer_vector_width!r}: choose one of "
                         f"{VECTOR_WIDTHS} (bits; 0 = XLA's default, 256)")
    return int(prefer_vector_width)


def compiler_options(prefer_vector_width, backend: str) -> Optional[Dict[str, int]]:
    """``jax.jit``'s ``compiler_options`` for programs compiled for ``backend``
    (``"cpu"``, ``"gpu"``, ``"tpu"``...): ``{"xla_cpu_prefer_vector_width": w}`` on
    CPU, None (XLA's defaults) elsewhere, for 0, and for 512 on a CPU without
    AVX-512."""
    width = check_vector_width(prefer_vector_width)
    if backend != "cpu" or width == 0:
        return None
    if width > 256 and not cpu_has_avx512():
        _log.info("cpu_prefer_vector_width=%d: this CPU has no AVX-512; XLA keeps its "
                  "default vector width", width)
        return None
    return {"xla_cpu_prefer_vector_width": width}
