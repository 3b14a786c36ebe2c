"""An XLA option A/B of the DynaBERT training step in one process, ours only (not a test).

The real ``dynabert_jax.steps.make_train_step`` of a shape and stage
(``bench/train_throughput.py``'s) is lowered once and compiled twice: with XLA's
default options and with the ``--compiler-option``s (default: 512-bit vectors, what
``config.cpu_prefer_vector_width`` gives the trainer on an AVX-512 CPU). The two train
from the same state on the same batch, step by step, alternating, so that both see the
same machine at the same time (each goes first every other step); each pair of steps
gives a ratio (options / default). It
reports the median ratio and its range, the medians, both compile times, the pages each
step faulted in (a step that got a fresh XLA scratch instead of reusing one takes up to 2x
its time), and how far apart the two runs' losses and parameters are after the last
step.

    python bench/train_step_options.py --shape minilm --stage 2 --steps 12
    python bench/train_step_options.py --shape bert-base --stage single --steps 8
    python bench/train_step_options.py --compiler-option xla_cpu_prefer_vector_width=128

Prints a markdown row and writes JSON (default runs/bench/train_step_options.json).
"""
import argparse
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ratio_drift import parse_options  # noqa: E402
from train_throughput import (SHAPES, STAGES, make_step, minor_faults,  # noqa: E402
                              run_header, write_atomic)

#: the shapes of train_throughput.py, and one for the tests
BENCH_SHAPES = {**SHAPES, "tiny": dict(hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=128,
                                       vocab_size=2000)}
DEFAULT_OPTION = "xla_cpu_prefer_vector_width=512"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(BENCH_SHAPES), default="minilm")
    ap.add_argument("--stage", choices=sorted(STAGES), default="2",
                    help="single: teacher + 1 full student; 1: DynaBERT_W's 4 widths; "
                         "2: DynaBERT's 12 (width, depth) students")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    ap.add_argument("--host-memory", choices=("keep", "system"), default="keep",
                    help="keep (the default, as train.py): glibc keeps freed memory for "
                         "reuse; system: glibc's defaults")
    ap.add_argument("--compiler-option", action="append", default=None, metavar="KEY=VALUE",
                    help=f"XLA option of the second compile (repeatable; default "
                         f"{DEFAULT_OPTION})")
    ap.add_argument("--out", default="runs/bench/train_step_options.json")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    options = parse_options(args.compiler_option or [DEFAULT_OPTION])
    from dynabert_jax import host_memory

    kept = args.host_memory == "keep" and host_memory.keep_freed_memory()
    import jax
    import numpy as np

    from dynabert_jax import cpu_rng, steps

    cpu_rng.unroll_threefry_on_cpu()   # as the trainer does (config.cpu_unrolled_threefry)
    out, header = run_header(args.out)
    step, params, teacher, tx, batch, students = make_step(
        BENCH_SHAPES[args.shape], args.stage, args.batch, args.seq)
    init = jax.jit(lambda p: steps.init_state(p, tx))
    states = {"default": init(params), "options": init(params)}
    lowered = jax.jit(step, donate_argnums=0).lower(states["default"], teacher, batch,
                                                    steps.dropout_key(0, "threefry2x32"))
    compiled, compile_s = {}, {}
    for name, opts in (("default", None), ("options", options)):
        t0 = time.perf_counter()
        compiled[name] = lowered.compile(compiler_options=opts) if opts else lowered.compile()
        compile_s[name] = round(time.perf_counter() - t0, 2)

    times = {name: [] for name in compiled}
    faults = {name: [] for name in compiled}   # pages faulted in: a fresh scratch
    losses = {name: [] for name in compiled}
    for i in range(args.warmup + args.steps):
        rng = steps.dropout_key(i, "threefry2x32")   # a new dropout key per step
        order = ("default", "options") if i % 2 == 0 else ("options", "default")
        for name in order:   # each goes first every other step
            fn = compiled[name]
            f0, t0 = minor_faults(), time.perf_counter()
            states[name], metrics = fn(states[name], teacher, batch, rng)
            jax.block_until_ready((states[name], metrics))
            dt, df = time.perf_counter() - t0, minor_faults() - f0
            losses[name].append(float(metrics["loss"]))
            if i >= args.warmup:
                times[name].append(dt)
                faults[name].append(df)
        timed = i >= args.warmup
        print(f"step {i}{'' if timed else ' (warm-up)'}: " + ", ".join(
            f"{n} loss {losses[n][-1]:.6f}" + (f" in {times[n][-1]:.3f} s, "
                                               f"{faults[n][-1]} page faults" if timed else "")
            for n in compiled), file=sys.stderr, flush=True)

    ratios = [b / a for a, b in zip(times["default"], times["options"])]
    leaves = [jax.tree_util.tree_leaves(states[n].params) for n in compiled]
    param_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(*leaves))
    loss_diff = max(abs(a - b) for a, b in zip(losses["default"], losses["options"]))
    summary = {
        "median_step_s": {n: statistics.median(t) for n, t in times.items()},
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios), "compile_s": compile_s,
        "max_abs_loss_diff": loss_diff, "max_abs_param_diff": param_diff,
        "losses_identical": losses["default"] == losses["options"],
        "params_identical": param_diff == 0.0}
    row = (f"| {args.shape} | {args.stage} ({len(students)} student"
           f"{'s' if len(students) > 1 else ''}) | "
           f"{summary['median_step_s']['default']:.3f} | "
           f"{summary['median_step_s']['options']:.3f} | {summary['ratio_median']:.3f} "
           f"({summary['ratio_min']:.3f}-{summary['ratio_max']:.3f}) | "
           f"{compile_s['default']:.1f} / {compile_s['options']:.1f} | "
           f"{loss_diff:.2g} / {param_diff:.2g} |")
    markdown = "\n".join([
        f"**training step, batch {args.batch} x {args.seq}, options {options} vs XLA's "
        f"defaults, {args.steps} alternating steps**", "",
        "| shape | stage | default s | options s | options / default: median (range) | "
        "compile s: default / options | max abs diff: loss / params |",
        "|---|---|---|---|---|---|---|", row])
    print("\n" + markdown)
    write_atomic(out, dict(
        header, benchmark="train_step_options", shape=args.shape, stage=args.stage,
        students=len(students), batch=args.batch, seq=args.seq, steps=args.steps,
        warmup=args.warmup, compiler_options=options,
        host_memory="kept (dynabert_jax.host_memory)" if kept else "glibc's defaults",
        statistic="per pair of steps (same step, same input, run one after the other): "
                  "options' time / default's; median and range over the timed pairs",
        step_times_s=times, page_faults_per_step=faults, ratios=ratios, losses=losses,
        summary=summary,
        markdown=markdown))
    print(f"\nwritten {out}")
    return summary


if __name__ == "__main__":
    main()
