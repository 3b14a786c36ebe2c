"""Training throughput of the multi-student DynaBERT step, ours vs a PyTorch reference
(not a test).

For each shape and stage it times a few steps of

* ours: the real ``dynabert_jax.steps.make_train_step`` (teacher once + every student in
  one jitted step, buffers donated as the trainer does), compiled ahead of time;
* PyTorch: ``bench/torch_reference.py``, the official DynaBERT loop (teacher under
  ``no_grad``, then forward + ``backward()`` per student with runtime weight slicing,
  one AdamW step),

on the same shape, batch and random weights. Stages: ``1`` = DynaBERT_W (teacher + widths
1, .75, .5, .25 at depth 1; lambdas 1 / 0.1), ``2`` = DynaBERT (teacher + the 12
``subnet.grid()`` students; lambdas 1 / 1), ``single`` = teacher + one full student
(the baseline of the memory ratio). Every measurement runs in its own process, so each
max RSS belongs to one framework and one step. Model FLOPs per step are analytic:
``batch x (teacher forward + 3 x sum of student forwards)`` with
``dynabert_jax.flops.encoder_flops`` (linear layers + attention matmuls; embeddings,
softmax, LayerNorm, losses and the optimizer are not counted).

    python bench/train_throughput.py                                   # both shapes
    python bench/train_throughput.py --shapes minilm --stages 1,2 --steps 3
    python bench/train_throughput.py --steps minilm=3,bert-base=2      # per shape
    python bench/train_throughput.py --torch-device cuda --dtype bfloat16 --peak-tflops 989
    python bench/train_throughput.py --frameworks jax --accum 4      # ours, 4 x 32 per update
    python bench/train_throughput.py --frameworks jax --profile 2    # + time per kind of work

``--dtype``: float32, tf32 or bfloat16 in both frameworks, as ``bench/precisions.py``
defines them (weights, gradients and the optimizer stay float32 in both). MFU = model
FLOPs / step time / ``--peak-tflops``: give the device's peak for that precision.
``--accum K``: each step of ours is one update over K accumulated batches of ``--batch``
(``grad_accum_steps``; examples/s counts all K); the PyTorch reference has no
accumulation, so it takes ``--frameworks jax``. ``--cpu-vector-width``: ours on CPU
asks XLA for 512-bit vectors on an AVX-512 CPU, as the trainer does
(``config.cpu_prefer_vector_width``); 0 gives XLA's default 256, as every table recorded
before that option.

Prints a markdown table per shape and writes JSON (default
runs/bench/train_throughput.json, rewritten atomically after every measurement). Ours
also records the page faults of each step (``page_faults_per_step``): fresh memory the
kernel mapped, which on CPU says whether a step reused XLA's scratch or got a new one
(``--host-memory``).
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))   # dynabert_jax, imported where needed
sys.path.insert(0, str(HERE))
from machine import cpu_name  # noqa: E402
from precisions import PRECISIONS  # noqa: E402

SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
}
#: stage -> (depths, lambda_logit, lambda_hidden); widths are ``subnet.WIDTHS``. The
#: lambdas are configs/default.py's (width: 1 / 0.1, width_depth: 1 / 1).
STAGES = {"single": ((1.0,), 1.0, 1.0), "1": ((1.0,), 1.0, 0.1),
          "2": ((1.0, 0.75, 0.5), 1.0, 1.0)}


def random_batch(batch: int, seq: int, vocab: int = 30522, num_labels: int = 2, seed=0):
    """The same numpy batch for both frameworks: random lengths in [seq/4, seq], padded."""
    r = np.random.default_rng(seed)
    lengths = r.integers(max(1, seq // 4), seq + 1, size=batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids = r.integers(1000, vocab, size=(batch, seq)).astype(np.int32) * mask
    types = np.zeros((batch, seq), np.int32)
    labels = r.integers(0, num_labels, size=batch).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
            "labels": labels}


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def minor_faults() -> int:
    """Pages this process has faulted in so far (fresh memory the kernel had to map)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ----------------------------------------------------------------------------------
# Our step (runs in a worker process)
# ----------------------------------------------------------------------------------


def students_of(dj, stage: str):
    return (dj.FULL,) if stage == "single" else dj.grid(dj.WIDTHS, STAGES[stage][0])


def make_step(shape: dict, stage: str, batch: int, seq: int, *, dropout: float = 0.1,
              compute: str = "float32", accum: int = 1):
    """Our multi-student train step of ``stage`` at a model ``shape`` (``SHAPES``' kind of
    dict) and what it runs on: ``(step, params, teacher, tx, device batch, students)``.
    Random weights (``PRNGKey(0)``), the teacher a copy of them, the stage's students
    and lambdas, AdamW at 2e-5 over 1000 steps, and ``random_batch`` of
    ``batch x accum`` rows laid out for ``accum`` micro-batches as the trainer does."""
    import jax
    import jax.numpy as jnp

    import dynabert_jax as dj
    from dynabert_jax import steps

    cfg = dj.ModelConfig(head="classification", hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout, **shape)
    model = dj.DynaBertModel(cfg, dtype=getattr(jnp, compute))
    params = dj.init_params(model, jax.random.PRNGKey(0))
    teacher = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
    _, lam_logit, lam_hidden = STAGES[stage]
    students = students_of(dj, stage)
    tx, _ = steps.make_optimizer(2e-5, 1000)
    b = {k: jnp.asarray(v) for k, v in dj.data.interleave_micro_batches(
        random_batch(batch * accum, seq, cfg.vocab_size), accum).items()}
    step = steps.make_train_step(model, students,
                                 steps.LossSpec("distill", lam_logit, lam_hidden), tx,
                                 accum_steps=accum,
                                 partial_clip_norm=1.0 if accum > 1 else None)
    return step, params, teacher, tx, b, students


def jax_worker(shape: str, stage: str, batch: int, seq: int, steps_n: int,
               warmup: int, unroll_threefry: bool = True, dtype: str = "float32",
               dropout: float = 0.1, dropout_prng: str = "threefry2x32",
               accum: int = 1, profile: int = 0, keep_host_memory: bool = True,
               cpu_vector_width: int = 512) -> dict:
    import jax

    from dynabert_jax import compile_options, cpu_rng, host_memory, steps

    # as train.py does (config.keep_host_memory), before JAX's backend starts
    kept = (keep_host_memory and host_memory.jax_runs_on_cpu()
            and host_memory.keep_freed_memory())
    if unroll_threefry:  # as the trainer does (config.cpu_unrolled_threefry)
        cpu_rng.unroll_threefry_on_cpu()
    compute, precision, _, _ = PRECISIONS[dtype]
    if precision:
        jax.config.update("jax_default_matmul_precision", precision)
    step, params, teacher, tx, b, students = make_step(
        SHAPES[shape], stage, batch, seq, dropout=dropout, compute=compute, accum=accum)
    state = jax.jit(lambda p: steps.init_state(p, tx))(params)
    rows = batch * accum   # one update's examples (laid out as the trainer does)
    rng = steps.dropout_key(0, dropout_prng)   # as the trainer (config.dropout_prng)

    t0 = time.perf_counter()
    # as the trainer compiles it (config.cpu_prefer_vector_width)
    options = compile_options.compiler_options(cpu_vector_width, jax.default_backend())
    compiled = jax.jit(step, donate_argnums=0, compiler_options=options).lower(
        state, teacher, b, rng).compile()
    compile_s = time.perf_counter() - t0
    mem = steps.memory_stats(compiled)
    del params

    times, faults, first = [], [], None
    for i in range(warmup + steps_n):
        f0, t0 = minor_faults(), time.perf_counter()
        state, m = compiled(state, teacher, b, rng)
        jax.block_until_ready((state, m))
        dt, df = time.perf_counter() - t0, minor_faults() - f0
        if i == 0:
            first = dt
        if i >= warmup:
            times.append(dt)
            faults.append(df)
        print(f"ours  {shape} stage {stage} step {i} {'(warm-up) ' if i < warmup else ''}"
              f"{dt:.2f} s, {df} page faults", file=sys.stderr, flush=True)
    med = statistics.median(times)
    dev = jax.devices()[0]
    out = {"framework": "jax", "device": f"{dev.device_kind} ({jax.default_backend()})",
           "shape": shape, "stage": stage, "students": len(students), "batch": batch,
           "accum": accum,
           "seq": seq, "dtype": dtype, "jax_matmul_precision": precision,
           "dropout": dropout, "dropout_prng": dropout_prng,
           "unrolled_threefry": unroll_threefry, "host_memory_kept": kept,
           "compiler_options": options,
           "compile_s": round(compile_s, 2), "first_step_s": round(first, 3),
           "step_times_s": [round(t, 4) for t in times], "median_step_s": med,
           "examples_per_s": rows / med, "xla_memory": mem,
           "max_rss_mib": round(max_rss_mib(), 1), "page_faults_per_step": faults,
           "last_losses": [float(x) for x in np.asarray(m["losses"])]}
    if profile:   # after the timing, so the profiler costs the timed steps nothing
        import xla_profile

        holder = [state]

        def one_step():
            holder[0], metrics = compiled(holder[0], teacher, b, rng)
            return holder[0], metrics

        text = compiled.as_text()
        try:
            wall, per_op, _ = xla_profile.profile_ops(one_step, (), profile, text)
        except Exception as e:   # the timing above stands without it
            out["profile_error"] = f"{type(e).__name__}: {e}"
        else:
            comps = xla_profile.hlo_instructions(text)
            out["profile"] = xla_profile.summarise_ops(
                per_op, xla_profile.step_category(comps), wall, comps)
            out["profile"]["steps"] = profile
    try:
        ms = dev.memory_stats()
        if ms and "peak_bytes_in_use" in ms:
            out["peak_device_mib"] = round(ms["peak_bytes_in_use"] / 2**20, 1)
    except Exception:  # CPU has no allocator stats
        pass
    return out


# ----------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------


def run_child(cmd, env=None) -> dict:
    """Run a worker; stream its stderr, return the JSON of its ``RESULT`` line."""
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), file=sys.stderr, flush=True)
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                       env=env)
    result = None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
        else:
            print(line, flush=True)
    if p.returncode or result is None:
        raise RuntimeError(f"worker failed (exit {p.returncode}): {cmd}")
    return result


def run_header(out_arg: str):
    """``(out path, header)`` shared by the single-process benchmarks: the resolved
    ``--out`` and the command, date, device, XLA flags and library versions."""
    import jax

    out = pathlib.Path(out_arg)
    out = out if out.is_absolute() else ROOT / out
    return out, {
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}): "
                  f"{cpu_name()}, {os.cpu_count()} cores",
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "versions": versions()}


def write_atomic(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def per_shape(spec: str, shapes, cast=int) -> dict:
    """``"3"`` -> every shape 3; ``"minilm=3,bert-base=2"`` -> per shape."""
    if "=" not in spec:
        return {s: cast(spec) for s in shapes}
    out = dict(kv.split("=") for kv in spec.split(","))
    missing = [s for s in shapes if s not in out]
    if missing:
        raise SystemExit(f"--steps gives no value for {missing}")
    return {s: cast(out[s]) for s in shapes}


def model_flops(shape: str, stage: str, batch: int, seq: int) -> int:
    import dynabert_jax as dj

    cfg = dj.ModelConfig(head="classification", **SHAPES[shape])
    fwd = lambda s: dj.encoder_flops(cfg, s, seq_len=seq)  # noqa: E731
    return batch * (fwd(dj.FULL) + 3 * sum(fwd(s) for s in students_of(dj, stage)))


def summarise(row_ours, row_torch, flops, peak_tflops):
    r = {}
    for name, row in (("ours", row_ours), ("torch", row_torch)):
        if row is None:
            continue
        gflops = flops / row["median_step_s"] / 1e9
        r[f"{name}_examples_per_s"] = round(row["examples_per_s"], 3)
        r[f"{name}_gflops_per_s"] = round(gflops, 1)
        r[f"{name}_mfu"] = (round(gflops / (peak_tflops * 1e3), 4) if peak_tflops
                            else None)
        r[f"{name}_max_rss_mib"] = row["max_rss_mib"]
        r[f"{name}_peak_device_mib"] = row.get("peak_device_mib")  # GPU allocators
    if row_ours and row_torch:
        r["ours_over_torch"] = round(row_ours["examples_per_s"]
                                     / row_torch["examples_per_s"], 3)
    if row_ours:
        r["compile_s"] = row_ours["compile_s"]
        mem = row_ours.get("xla_memory")
        r["ours_xla_peak_mib"] = round(mem["peak_bytes"] / 2**20, 1) if mem else None
    return r


def fmt(x, spec="{:.2f}"):
    return "-" if x is None else spec.format(x)


def print_table(shape, rows, peak_tflops):
    gpu = any(r["summary"].get("ours_peak_device_mib") is not None for r in rows)
    mem_head = ("peak device MiB: ours / PyTorch" if gpu
                else "peak MiB: ours XLA / ours RSS / PyTorch RSS")
    print(f"\n### {shape}\n")
    print("| stage | students | ours ex/s | PyTorch ex/s | ours/PyTorch | compile s | "
          f"{mem_head} | GFLOP/s ours / PyTorch | MFU ours / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    def mem(s):
        if gpu:
            return (f"{fmt(s.get('ours_peak_device_mib'), '{:.0f}')} / "
                    f"{fmt(s.get('torch_peak_device_mib'), '{:.0f}')}")
        return (f"{fmt(s.get('ours_xla_peak_mib'), '{:.0f}')} / "
                f"{fmt(s.get('ours_max_rss_mib'), '{:.0f}')} / "
                f"{fmt(s.get('torch_max_rss_mib'), '{:.0f}')}")

    for r in rows:
        s = r["summary"]
        mfu = (f"{fmt(s.get('ours_mfu'), '{:.1%}')} / {fmt(s.get('torch_mfu'), '{:.1%}')}"
               if peak_tflops else "-")
        print(f"| {r['stage']} | {r['students']} | {fmt(s.get('ours_examples_per_s'))} | "
              f"{fmt(s.get('torch_examples_per_s'))} | "
              f"{fmt(s.get('ours_over_torch'))} | {fmt(s.get('compile_s'), '{:.1f}')} | "
              f"{mem(s)} | "
              f"{fmt(s.get('ours_gflops_per_s'), '{:.1f}')} / "
              f"{fmt(s.get('torch_gflops_per_s'), '{:.1f}')} | {mfu} |", flush=True)


def print_profiles(shape, rows):
    """Device time per kind of work in one step of ours (rows run with --profile)."""
    rows = [r for r in rows if (r.get("ours") or {}).get("profile")]
    if not rows:
        return
    cats = list(dict.fromkeys(c for r in rows for c in r["ours"]["profile"]["categories"]))
    print(f"\n**{shape}: ms per step of ours, by kind of work (share of the operations' "
          f"time)**\n")
    print("| stage | " + " | ".join(cats) + " | operations | step (profiled) |")
    print("|---" * (len(cats) + 3) + "|")
    for r in rows:
        p = r["ours"]["profile"]
        cells = [f"{p['categories'].get(c, 0):.1f} ({p['categories'].get(c, 0) / p['ops_ms']:.0%})"
                 for c in cats]
        print(f"| {r['stage']} | " + " | ".join(cells)
              + f" | {p['ops_ms']:.1f} | {p['wall_ms']:.1f} |")


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="minilm,bert-base")
    ap.add_argument("--stages", default="single,1,2",
                    help="comma list of single, 1 (DynaBERT_W), 2 (DynaBERT)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--accum", type=int, default=1,
                    help="ours only: K accumulated batches of --batch per update")
    ap.add_argument("--steps", default="3",
                    help="timed steps: N, or per shape as minilm=3,bert-base=2")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="PyTorch intra-op threads (JAX's CPU client uses every core)")
    ap.add_argument("--frameworks", default="jax,torch")
    ap.add_argument("--torch-device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(PRECISIONS),
                    help="compute precision of both frameworks (see the docstring)")
    ap.add_argument("--dropout", type=float, default=0.1,
                    help="hidden and attention dropout of both (0: no random bits are "
                         "drawn; to measure dropout's share of a step)")
    ap.add_argument("--dropout-prng", default="threefry2x32",
                    choices=("threefry2x32", "rbg", "unsafe_rbg"),
                    help="how our step draws dropout's bits (config.dropout_prng); "
                         "PyTorch keeps its own generator")
    ap.add_argument("--parity", default="all", choices=("all", "first", "none"),
                    help="check the PyTorch reference against ours on all / the first "
                         "/ no shape")
    ap.add_argument("--parity-batch", type=int, default=4)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak (TFLOP/s) for MFU; leave unset on CPU")
    ap.add_argument("--rolled-threefry", action="store_true",
                    help="keep JAX's default (rolled) Threefry lowering on CPU instead of "
                         "the trainer's unrolled one (dynabert_jax/cpu_rng.py)")
    ap.add_argument("--host-memory", choices=("keep", "system"), default="keep",
                    help="keep (the default, as train.py): glibc keeps freed memory for "
                         "reuse in both frameworks' processes on CPU (ours: "
                         "dynabert_jax.host_memory, as the trainer; the PyTorch "
                         "reference: the same settings as GLIBC_TUNABLES); system: "
                         "glibc's defaults (the tables before 2026-12-06's last ones)")
    ap.add_argument("--cpu-vector-width", type=int, default=512, choices=(0, 128, 256, 512),
                    help="ours on CPU: the vector width XLA asks LLVM for, as the trainer's "
                         "config.cpu_prefer_vector_width (512 only on an AVX-512 CPU); 0: "
                         "XLA's default, 256, as in every table recorded before the option "
                         "(docs/benchmarks.md)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N more steps of ours (after the timed ones) and "
                         "report device time per kind of work (bench/xla_profile.py)")
    ap.add_argument("--out", default="runs/bench/train_throughput.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows and parity results of --out for the shapes and "
                         "stages this run does not measure (re-measure a part)")
    # internal: one measurement of ours in this process
    ap.add_argument("--worker", choices=("jax",), help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        res = jax_worker(args.shape, args.stage, args.batch, args.seq, int(args.steps),
                         args.warmup, unroll_threefry=not args.rolled_threefry,
                         dtype=args.dtype, dropout=args.dropout,
                         dropout_prng=args.dropout_prng, accum=args.accum,
                         profile=args.profile,
                         keep_host_memory=args.host_memory == "keep",
                         cpu_vector_width=args.cpu_vector_width)
        print("RESULT " + json.dumps(res), flush=True)
        return

    shapes = args.shapes.split(",")
    stages = args.stages.split(",")
    frameworks = args.frameworks.split(",")
    for s in shapes:
        if s not in SHAPES:
            raise SystemExit(f"unknown shape {s!r}; choose from {sorted(SHAPES)}")
    for s in stages:
        if s not in STAGES:
            raise SystemExit(f"unknown stage {s!r}; choose from {sorted(STAGES)}")
    if args.accum > 1 and frameworks != ["jax"]:
        raise SystemExit("--accum needs --frameworks jax: the PyTorch reference does "
                         "not accumulate")
    steps_of = per_shape(args.steps, shapes)
    out = ROOT / args.out if not os.path.isabs(args.out) else pathlib.Path(args.out)
    t_start = time.perf_counter()
    result = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": None, "host_cpu": cpu_name(), "cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "versions": versions(),
        "batch": args.batch, "accum": args.accum, "seq": args.seq,
        "steps": steps_of, "warmup": args.warmup, "torch_threads": args.threads,
        "dtype": args.dtype, "torch_device": args.torch_device, "dropout": args.dropout,
        "dropout_prng": args.dropout_prng, "peak_tflops": args.peak_tflops, "unrolled_threefry": not args.rolled_threefry,
        "host_memory": args.host_memory, "cpu_vector_width": args.cpu_vector_width,
        "parity": {}, "rows": [], "complete": False}
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        redo = {(s, t) for s in shapes for t in stages}
        result["rows"] = [r for r in old.get("rows", [])
                          if (r["shape"], r["stage"]) not in redo]
        result["parity"] = {k: v for k, v in old.get("parity", {}).items()
                            if k not in shapes or args.parity == "none"}
        result["device"] = old.get("device")
        result["steps"] = {**old.get("steps", {}), **steps_of}
        result["merged_from"] = old.get("merged_from", []) + [
            {k: old.get(k) for k in ("command", "date", "steps", "wall_s")}]
    py = sys.executable
    common = ["--batch", args.batch, "--seq", args.seq, "--warmup", args.warmup,
              "--dtype", args.dtype, "--dropout", args.dropout]
    jax_flags = (["--rolled-threefry"] if args.rolled_threefry else []) + [
        "--dropout-prng", args.dropout_prng, "--accum", args.accum,
        "--profile", args.profile, "--host-memory", args.host_memory,
        "--cpu-vector-width", args.cpu_vector_width]
    torch_env = None   # the reference's process: the same glibc settings as ours
    if args.host_memory == "keep" and args.torch_device == "cpu":
        from dynabert_jax.host_memory import GLIBC_TUNABLES

        torch_env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES)
    for i, shape in enumerate(shapes):
        if "torch" in frameworks and (args.parity == "all"
                                      or (args.parity == "first" and i == 0)):
            p = run_child([py, HERE / "torch_reference.py", "--parity", "--shape", shape,
                           "--batch", args.parity_batch, "--seq", args.seq,
                           "--threads", args.threads])
            result["parity"][shape] = p
            write_atomic(out, result)
        rows = []
        for stage in stages:
            n = steps_of[shape]
            res = {}
            if "jax" in frameworks:
                res["jax"] = run_child([py, __file__, "--worker", "jax", "--shape", shape,
                                        "--stage", stage, "--steps", n] + common
                                       + jax_flags)
                result["device"] = (f"{res['jax']['device']}: {cpu_name()}, "
                                    f"{os.cpu_count()} cores")
            if "torch" in frameworks:
                res["torch"] = run_child([py, HERE / "torch_reference.py", "--shape", shape,
                                          "--stage", stage, "--steps", n, "--threads",
                                          args.threads, "--device", args.torch_device]
                                         + common, env=torch_env)
            flops = model_flops(shape, stage, args.batch * args.accum, args.seq)
            row = {"shape": shape, "stage": stage,
                   "students": (res.get("jax") or res.get("torch"))["students"],
                   "steps": n, "warmup": args.warmup,
                   "model_flops_per_step": flops,
                   "summary": summarise(res.get("jax"), res.get("torch"), flops,
                                        args.peak_tflops),
                   "ours": res.get("jax"), "torch": res.get("torch")}
            rows.append(row)
            result["rows"].append(row)
            result["wall_s"] = round(time.perf_counter() - t_start, 1)
            write_atomic(out, result)
        print_table(shape, rows, args.peak_tflops)
        print_profiles(shape, rows)
    if result.get("merged_from"):
        print("\nAll rows (merged with the earlier results in --out):")
        for shape in dict.fromkeys(r["shape"] for r in result["rows"]):
            rows = sorted((r for r in result["rows"] if r["shape"] == shape),
                          key=lambda r: list(STAGES).index(r["stage"]))
            print_table(shape, rows, args.peak_tflops)
    result["complete"] = True
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_atomic(out, result)
    print(f"\nwritten {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
