"""Device time per compiled XLA operation of a jitted function, on CPU or GPU (not a test).

Used by ``bench/profile_forward.py`` (the inference forward, by layer part) and
``bench/train_throughput.py --profile`` (the train step, by kind of work).

`profile_ops` runs a compiled function under ``jax.profiler.trace`` and adds up, per HLO
instruction of its module, the time of the events that name it:

* on GPU, the kernels and copies on the device planes (``/device:GPU:*``), each named
  by its ``hlo_op`` stat (the fusion, custom call or copy that launched it). Kernels run
  from XLA's command buffers (CUDA graphs, on by default) carry no such stat and are
  sorted by their kernel names only: profile with
  ``XLA_FLAGS=--xla_gpu_enable_command_buffer=`` for the attribution by operation
  (openxla/xprof#3070), knowing that it times the step without command buffers;
* on CPU, the thunk events of XLA's executor, named after the instruction. A ``while``,
  ``conditional`` or ``call`` event spans the operations of its body, which have their
  own events, so those are left out (a scan's body is counted once, in its operations).

`step_category` sorts the instructions of a train step into kinds of work, looking
inside fusions: products (a ``dot``, a library matmul call, or a fusion holding one,
with the elementwise work XLA fused into it), random bits, reductions, gathers and
scatters, copies and transposes, collectives, elementwise.
"""
import collections
import functools
import glob
import re
import statistics
import tempfile
import time

CONTROL_FLOW = ("while", "conditional", "call")
STEP_CATEGORIES = ("products", "random bits", "reductions", "gather / scatter",
                   "copies and transposes", "broadcasts", "collectives", "elementwise",
                   "other")
_MATMUL_KERNELS = ("gemm", "xmma", "cutlass", "cublas", "matmul")   # GPU kernel names
_MATMUL_CALLS = _MATMUL_KERNELS + ("onednn", "ynn", "xnn", "triton")  # custom-call targets


@functools.lru_cache(maxsize=2)   # a caller and profile_ops parse the same module
def hlo_instructions(hlo_text: str):
    """``{computation: [(name, opcode, op_name, called computation)]}`` of a compiled
    module's text; ``"__entry__"`` is the entry computation."""
    comps, current = {}, None
    head = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
    instr = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\(")
    for line in hlo_text.splitlines():
        m = head.match(line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                comps["__entry__"] = comps[current]
            continue
        m = instr.match(line)
        if m and current is not None:
            op_name = re.search(r'op_name="([^"]*)"', line)
            calls = re.search(r"(?:calls|body|to_apply)=%([\w.\-]+)", line)
            target = re.search(r'custom_call_target="([^"]*)"', line)
            comps[current].append((m.group(1), m.group(2),
                                   (op_name.group(1) if op_name else "")
                                   + (f" [{target.group(1)}]" if target else ""),
                                   calls.group(1) if calls else None))
    return comps


def all_instructions(comps):
    """``{name: (name, opcode, op_name, called)}`` over every computation."""
    return {i[0]: i for name, instrs in comps.items() if name != "__entry__"
            for i in instrs}


def _inside(comps, called, seen=None):
    """Every instruction of ``called`` and of the computations it calls, recursively."""
    seen = set() if seen is None else seen
    if not called or called in seen:
        return []
    seen.add(called)
    out = []
    for i in comps.get(called, []):
        out.append(i)
        out.extend(_inside(comps, i[3], seen))
    return out


def step_category(comps):
    """``category(instruction name)`` for a train step's operations (`STEP_CATEGORIES`)."""
    table = all_instructions(comps)

    def category(name: str) -> str:
        if name not in table:   # a GPU kernel no instruction claims: by its name
            low = name.lower()
            if any(m in low for m in _MATMUL_KERNELS):
                return "products"
            if "nccl" in low:
                return "collectives"
            if "memcpy" in low or "memset" in low:
                return "copies and transposes"
            return "other"
        _, opcode, op_name, called = table[name]
        inner = [(i[1], i[2]) for i in _inside(comps, called)]
        # a fusion is what it computes; other callers (a reduce's to_apply) count too
        ops = inner if opcode == "fusion" and inner else [(opcode, op_name)] + inner
        codes = {o for o, _ in ops}
        names = " ".join(n.lower() for _, n in ops)
        if "dot" in codes or "convolution" in codes or (
                "custom-call" in codes and any(m in names for m in _MATMUL_CALLS)):
            return "products"
        if "rng-bit-generator" in codes or "threefry" in names or "random_bits" in names:
            return "random bits"
        if codes & {"all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                    "collective-permute", "all-reduce-start", "all-gather-start",
                    "collective-permute-start"}:
            return "collectives"
        if codes & {"gather", "scatter", "dynamic-slice", "dynamic-update-slice"}:
            return "gather / scatter"
        if "reduce" in codes or "reduce-window" in codes:
            return "reductions"
        if codes <= {"copy", "transpose", "bitcast", "parameter", "copy-start",
                     "copy-done"}:
            return "copies and transposes"
        if codes <= {"broadcast", "constant", "parameter", "bitcast", "reshape"}:
            return "broadcasts"   # a value written out at full size
        if opcode == "fusion" or codes & {"add", "multiply", "select", "convert",
                                          "exponential", "divide", "subtract", "maximum",
                                          "compare", "negate", "tanh", "erf"}:
            return "elementwise"
        return "other"

    return category


def _kernel_op(name: str, table):
    """The instruction an event without an ``hlo_op`` stat names: on CPU the event's
    name; on GPU a kernel of a fusion is named after it with ``_`` for ``.``
    (``loop_add_fusion_1`` for ``loop_add_fusion.1``); else the event's own name."""
    if name in table:
        return name
    dotted = re.sub(r"_(\d+)$", r".\1", name)
    return dotted if dotted in table else name


def profile_ops(fn, args, calls: int, hlo_text: str):
    """Run ``fn(*args)`` ``calls`` times under the profiler (after two untimed calls).

    Returns ``(wall ms per call, {instruction: device ms per call}, device)`` where
    device is ``"gpu"`` when the trace has GPU device planes, else ``"cpu"``. Only
    events of ``fn``'s module (the ``hlo_module`` stat, when events carry one) count.
    """
    import jax

    for _ in range(2):
        jax.block_until_ready(fn(*args))
    comps = hlo_instructions(hlo_text)
    table = all_instructions(comps)
    module = re.match(r"HloModule ([\w.\-]+)", hlo_text)
    module = module.group(1) if module else None
    walls = []
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                walls.append(time.perf_counter() - t0)
        (path,) = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    planes = list(data.planes)
    gpu = [p for p in planes if p.name.startswith("/device:GPU")]
    if jax.default_backend() == "gpu" and not gpu:
        raise RuntimeError("the trace has no GPU device events (is CUPTI available?)")
    per_op = collections.Counter()
    for plane in gpu or planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                if module and stats.get("hlo_module", module) != module:
                    continue
                op = stats.get("hlo_op") or _kernel_op(ev.name, table)
                if op not in table:
                    if gpu:   # a kernel of the module that names no instruction
                        per_op[f"(unnamed) {ev.name[:60]}"] += ev.duration_ns / 1e6 / calls
                    continue
                if table[op][1] in CONTROL_FLOW and not gpu:
                    continue
                per_op[op] += ev.duration_ns / 1e6 / calls
    return 1e3 * statistics.mean(walls), dict(per_op), "gpu" if gpu else "cpu"


def summarise_ops(per_op, category, wall_ms, comps=None, top: int = 15):
    """``{"wall_ms", "ops_ms", "categories": {category: ms}, "top_ops": [...]}``: the
    device time of each category per call, and the ``top`` operations as ``(ms, name,
    category, JAX op_name)`` (the op_name from ``comps``, `hlo_instructions` of the
    module). On GPU, ``wall_ms - ops_ms`` is the time the device sat idle between
    operations (launches, host work); on CPU operations run on several threads at once,
    so ``ops_ms`` can exceed ``wall_ms``."""
    table = all_instructions(comps) if comps else {}
    cats = collections.Counter()
    for op, ms in per_op.items():
        cats[category(op)] += ms
    ops_ms = sum(per_op.values())
    return {"wall_ms": round(wall_ms, 3), "ops_ms": round(ops_ms, 3),
            "categories": {c: round(cats.get(c, 0.0), 3) for c in STEP_CATEGORIES
                           if cats.get(c)},
            "top_ops": [(round(ms, 3), op, category(op), table.get(op, ("",) * 3)[2][-120:])
                        for op, ms in
                        sorted(per_op.items(), key=lambda kv: -kv[1])[:top]]}
