"""A sub-network's speedup over the full network, block by block, ours only (not a test).

``bench/latency.py`` times the full network first and each sub-network after it, so a
speedup there divides medians taken up to minutes apart. This script times the full
network and the chosen sub-networks call by call, alternating, in blocks of ``--calls``
calls, and reports for every block each network's median, the speedup measured inside
the block, speedup / (1 / FLOPs ratio) (the target in docs/benchmarks.md is >= 0.9), and
what XLA:CPU's threads did per call of each network: voluntary context switches (a thread going to
sleep) and CPU time, from ``/proc/self/task`` (Linux; left out elsewhere).

It was written for MiniLM's (0.25, 0.5) at batch 32, whose time moves between two
levels in runs of seconds while the full network's moves less
(docs/benchmarks.md, "A sub-network's speedup, block by block"):

    python bench/ratio_drift.py --shape minilm --subnets 0.25x0.5 --batch 32 --blocks 12
    # on one core: XLA's pool and the dispatching thread share it
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        taskset -c 0 python bench/ratio_drift.py --shape minilm --subnets 0.25x0.5 --batch 32
    # an XLA option A/B in one process: each network compiled both ways, timed alternating
    python bench/ratio_drift.py --subnets 0.25x0.5 --compiler-option \
        xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT

Prints a markdown table and writes JSON (default runs/bench/ratio_drift.json).
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from train_throughput import run_header, write_atomic  # noqa: E402

TASKS = pathlib.Path("/proc/self/task")


def thread_counters() -> dict | None:
    """``{tid: (name, cpu ticks, voluntary switches)}`` of this process's threads, or
    None where ``/proc`` has no per-thread stats."""
    if not TASKS.is_dir():
        return None
    out = {}
    for tid in os.listdir(TASKS):
        try:
            name = (TASKS / tid / "comm").read_text().strip()
            stat = (TASKS / tid / "stat").read_text().rsplit(")", 1)[1].split()
            with open(TASKS / tid / "status") as status:
                vol = next(int(line.split()[1]) for line in status
                           if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration):   # the thread ended meanwhile
            continue
        out[tid] = (name, int(stat[11]) + int(stat[12]), vol)   # utime + stime
    return out


def add_delta(acc: dict, before: dict | None, after: dict | None) -> None:
    """Adds after - before per thread name (threads alive at both reads) into ``acc``:
    ``{name: [cpu ticks, voluntary switches]}``."""
    if before is None or after is None:
        return
    for tid, (name, ticks, vol) in after.items():
        if tid in before:
            a = acc.setdefault(name, [0, 0])
            a[0] += ticks - before[tid][1]
            a[1] += vol - before[tid][2]


def parse_options(pairs) -> dict:
    """``["key=value", ...]`` -> ``{key: value}`` for ``Lowered.compile(compiler_options=)``;
    true / false become booleans and numbers numbers, as XLA's option fields want."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--compiler-option wants KEY=VALUE, got {pair!r}")
        if value.lower() in ("true", "false"):
            out[key] = value.lower() == "true"
            continue
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                pass
        else:
            out[key] = value
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("minilm", "bert-base"), default="minilm")
    ap.add_argument("--subnets", default="0.25x0.5",
                    help="width x depth, comma-separated; the full network is always "
                         "timed beside them")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--calls", type=int, default=10, help="calls of each network per block")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls of each after compiling")
    ap.add_argument("--host-memory", choices=("keep", "system"), default="keep",
                    help="keep (the default, as train.py and bench/latency.py): glibc keeps "
                         "freed memory for reuse; system: glibc's defaults")
    ap.add_argument("--compiler-option", action="append", default=[], metavar="KEY=VALUE",
                    help="also time every network compiled with this XLA option, beside "
                         "the default compile in the same process (repeatable), e.g. "
                         "xla_cpu_experimental_ynn_fusion_type="
                         "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT; process-wide XLA_FLAGS "
                         "cannot be compared side by side")
    ap.add_argument("--out", default="runs/bench/ratio_drift.json")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from dynabert_jax import host_memory

    kept = args.host_memory == "keep" and host_memory.keep_freed_memory()  # before JAX
    import jax
    import numpy as np

    import dynabert_jax as dj
    from dynabert_jax.export import forward_fn
    from latency import load_shape, make_inputs

    out, header = run_header(args.out)
    model, params = load_shape(args.shape)
    cfg = model.config
    subnets = [dj.FULL] + [dj.SubNet(*map(float, s.split("x")))
                           for s in args.subnets.split(",")]
    if len(set(subnets)) != len(subnets):
        raise SystemExit(f"--subnets repeats a sub-network or names the full one: "
                         f"{args.subnets}")
    inputs = {k: jax.device_put(np.asarray(v, np.int32))
              for k, v in make_inputs(cfg, args.batch, args.seq).items()}
    options = parse_options(args.compiler_option)
    variants = {"": None} if not options else {"": None, "+options": options}
    full_flops = dj.encoder_flops(cfg, dj.FULL, args.seq)
    flops_ratio = {s.name: dj.encoder_flops(cfg, s, args.seq) / full_flops for s in subnets}
    nets = {}   # name -> (sub-network, variant, compiled forward, params)
    for s in subnets:
        small_model, small_params = dj.extract_subnetwork(model, params, s)
        lowered = jax.jit(forward_fn(small_model)).lower(small_params, **inputs)
        for variant, opts in variants.items():
            fn = lowered.compile(compiler_options=opts) if opts else lowered.compile()
            for _ in range(1 + args.warmup):
                fn(small_params, **inputs).block_until_ready()
            nets[s.name + variant] = (s, variant, fn, small_params)
    tick_ms = 1e3 / os.sysconf("SC_CLK_TCK")

    blocks = []
    for b in range(args.blocks):
        ms = {k: [] for k in nets}
        threads = {k: {} for k in nets}
        for _ in range(args.calls):
            for k, (_, _, fn, p) in nets.items():
                before = thread_counters()
                t0 = time.perf_counter()
                fn(p, **inputs).block_until_ready()
                ms[k].append((time.perf_counter() - t0) * 1e3)
                add_delta(threads[k], before, thread_counters())
        row = {"block": b, "nets": {}}
        for k, (s, variant, _, _) in nets.items():
            med = statistics.median(ms[k])
            full_ms = statistics.median(ms[dj.FULL.name + variant])
            ratio = flops_ratio[s.name]
            row["nets"][k] = {
                "ms": round(med, 3), "ms_all": [round(x, 3) for x in ms[k]],
                "speedup": round(full_ms / med, 4), "flops_ratio": round(ratio, 4),
                "speedup_over_flops_ratio": round(full_ms / med * ratio, 4),
                "threads_per_call": {n: {"cpu_ms": round(t * tick_ms / args.calls, 1),
                                         "voluntary_switches": round(v / args.calls, 1)}
                                     for n, (t, v) in sorted(threads[k].items())
                                     if t or v}}
            if variant:
                row["nets"][k]["over_default"] = round(med / statistics.median(ms[s.name]), 4)
        blocks.append(row)
        print(f"block {b}: " + ", ".join(
            f"{k} {r['ms']:.1f} ms" + ("" if k.startswith(dj.FULL.name) else
                                       f" (x{r['speedup_over_flops_ratio']:.2f})")
            for k, r in row["nets"].items()), file=sys.stderr, flush=True)

    summary = {}
    lines = [f"**{args.shape}, batch {args.batch} x {args.seq}: speedup / (1 / FLOPs ratio) "
             f"per block of {args.calls} calls, each block beside the full network**"
             + (f" (+options: {options})" if options else ""), "",
             "| sub-network | FLOPs ratio | ms: min / median / max | speedup / FLOPs-ratio: "
             "min / median / max | blocks >= 0.9 | time / default's: median (range) |",
             "|---|---|---|---|---|---|"]
    for k, (s, variant, _, _) in nets.items():
        def spread(field):   # [min, median, max] of a field over the blocks
            xs = [row["nets"][k][field] for row in blocks]
            return [min(xs), statistics.median(xs), max(xs)]

        t = summary.setdefault(k, {})["ms"] = spread("ms")
        cells = ["", "", ""]
        if s != dj.FULL:
            r = summary[k]["speedup_over_flops_ratio"] = spread("speedup_over_flops_ratio")
            n = summary[k]["blocks_at_or_over_0_9"] = sum(
                row["nets"][k]["speedup_over_flops_ratio"] >= 0.9 for row in blocks)
            cells[:2] = ["{:.2f} / {:.2f} / {:.2f}".format(*r), f"{n} of {len(blocks)}"]
        if variant:
            o = summary[k]["over_default"] = spread("over_default")
            cells[2] = f"{o[1]:.3f} ({o[0]:.3f}-{o[2]:.3f})"
        lines.append(f"| ({s.width:g}, {s.depth:g}){variant} | {flops_ratio[s.name]:.4g} | "
                     "{:.1f} / {:.1f} / {:.1f} | ".format(*t) + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    write_atomic(out, dict(
        header, benchmark="ratio_drift", shape=args.shape, batch=args.batch, seq=args.seq,
        calls=args.calls, warmup=args.warmup, compiler_options=options,
        host_memory="kept (dynabert_jax.host_memory)" if kept else "glibc's defaults",
        statistic="median of each network's calls in a block; the networks alternate call "
                  "by call; thread counters read around each call, outside its timing",
        blocks=blocks, summary=summary, markdown="\n".join(lines)))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
