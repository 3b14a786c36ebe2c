"""dynabert_jax.host_memory: XLA:CPU's per-call scratch is faulted in once, not per call.

Each case runs in its own Python process: the setting is process-wide and must come
before JAX's backend starts, which in the test process has long happened.
"""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from dynabert_jax import host_memory

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or host_memory._libc() is None,
    reason="glibc Linux only")

# A jitted call whose temporaries (the cumulative sums, 64 MB each) are over glibc's
# 32 MB mmap limit; the page faults of a later call say whether they were mapped afresh.
_PROBE = """
import json, logging, resource, sys
logging.basicConfig(level=logging.WARNING)
from dynabert_jax import host_memory
if sys.argv[1] == "late":
    import jax
    jax.devices()
applied = host_memory.keep_freed_memory() if sys.argv[1] != "system" else None
again = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
import jax, jax.numpy as jnp

@jax.jit
def f(x):
    y = jnp.cumsum(x, axis=0)
    return jnp.sum(y * y[::-1])

x = jnp.ones((4096, 4096))
for _ in range(15):   # the heap grows for the first few calls (see below)
    f(x).block_until_ready()
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "again": again, "faults": faults}))
"""


def _run(script, mode, **env):
    """Run ``script`` in a fresh Python with ``mode`` as its argument; its last line of
    output (JSON) and its stderr."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), mode], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def _probe(mode, **env):
    return _run(_PROBE, mode, JAX_PLATFORMS="cpu", **env)


def _median(values):
    return sorted(values)[len(values) // 2]


def test_the_scratch_is_faulted_in_once():
    kept, _ = _probe("keep")
    assert kept["applied"] is True and kept["again"] is True
    system, _ = _probe("system")
    # 64 MB is 16,384 pages of 4 KiB: under glibc's defaults every call faults them in
    # (the premise of the module; if XLA:CPU ever pools its scratch, this fails and the
    # module is no longer needed). With the setting most calls fault in next to nothing:
    # the heap grows by a scratch now and then for the first few calls (a call's
    # scratch is freed by a worker thread as the next call starts, and small blocks
    # land in freed ones), up to about 5 scratches, then stays.
    assert min(system["faults"]) > 16_000, system
    assert _median(kept["faults"]) < 1_000, kept


def test_too_late_once_jax_has_started_says_so_and_changes_nothing():
    late, stderr = _probe("late")
    assert late["applied"] is False
    assert "JAX's backend has already started" in stderr and "GLIBC_TUNABLES=" in stderr
    assert min(late["faults"]) > 16_000, late


def test_jax_runs_on_cpu_follows_jax_platforms():
    for chosen, on_cpu in (("cpu", True), ("cpu,cuda", True), ("cuda", False),
                           ("cuda,cpu", False), ("tpu", False)):
        assert host_memory.jax_runs_on_cpu(chosen) is on_cpu, chosen


def test_the_trainer_default_and_the_same_settings_from_outside():
    from configs import default

    assert default.get_config().keep_host_memory is True
    # GLIBC_TUNABLES (what the docs give for any program) does what the call does
    kept, _ = _probe("system", GLIBC_TUNABLES=host_memory.GLIBC_TUNABLES)
    assert _median(kept["faults"]) < 1_000, kept


# A block over 2 GB (the largest positive trim threshold mallopt takes), allocated from
# the heap and freed at once: does the heap's end come back down? Only address space:
# no page of it is touched.
_TOP = """
import ctypes, json, sys
from dynabert_jax import host_memory
libc = host_memory._libc()
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
if sys.argv[1] == "threshold_2gb":   # the same settings with the earlier 2 GB threshold
    ok = all(libc.mallopt(p, 2**31 - 1 if name == "trim_threshold" else v) == 1
             for name, p, v in host_memory._KEEP)
else:
    ok = host_memory.keep_freed_memory()
block = libc.malloc(9 * 2**28)   # 2.25 GiB
end = libc.sbrk(0)
libc.free(block)
print(json.dumps({"ok": ok, "allocated": block is not None,
                  "returned": end - libc.sbrk(0)}))
"""


def test_a_scratch_over_2gb_is_kept_too():
    # BERT-base's training step has a 5-6 GB scratch: a finite trim threshold gave it
    # back on every step (1.37 million page faults a step at 2 GB)
    out = {}
    for mode in ("threshold_2gb", "keep"):
        out[mode], _ = _run(_TOP, mode)
        if not out[mode]["allocated"]:
            pytest.skip("no 2.25 GiB of address space for the heap here")
    assert out["threshold_2gb"]["ok"] and out["keep"]["ok"], out
    assert out["threshold_2gb"]["returned"] > 2**31, out   # the premise: it was trimmed
    assert out["keep"]["returned"] == 0, out


def test_the_docs_give_the_settings_the_library_uses():
    # the line users copy (serving, a program of their own) is the library's own
    for doc in ("docs/deploy.md", "docs/training.md"):
        text = (REPO / doc).read_text()
        given = {w.strip("`.").split("=", 1)[1] for w in text.split()
                 if w.strip("`").startswith("GLIBC_TUNABLES=glibc.")}
        assert given == {host_memory.GLIBC_TUNABLES}, (doc, given)
