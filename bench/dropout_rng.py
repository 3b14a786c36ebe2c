"""JAX's rolled vs unrolled Threefry lowering on CPU, inside the real train step
(not a test).

``dynabert_jax.cpu_rng.unroll_threefry_on_cpu`` makes dropout's random bits come from
straight-line code instead of a rolled ``while`` loop (same bits). This script compiles
the real ``steps.make_train_step`` twice in one process, first with JAX's default CPU
lowering, then after the switch, checks that one step from the same state gives the
same losses and parameters, then times the two executables alternately (medians) and
reports compile times. It also times the dropout mask of one attention layer alone.

    python bench/dropout_rng.py                                   # MiniLM, stages single,1,2
    python bench/dropout_rng.py --shapes minilm,bert-base --steps 3

Writes JSON (default runs/bench/dropout_rng.json).
"""
import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from train_throughput import (SHAPES, STAGES, random_batch, run_header,  # noqa: E402
                              students_of, write_atomic)

VARIANTS = ("rolled", "unrolled")


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    import jax
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="minilm")
    ap.add_argument("--stages", default="single,1,2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--out", default="runs/bench/dropout_rng.json")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    import dynabert_jax as dj
    from dynabert_jax import cpu_rng, steps

    out, result = run_header(args.out)
    result.update(batch=args.batch, seq=args.seq, steps=args.steps, mask={}, rows=[])
    t_start = time.perf_counter()

    # Everything is compiled rolled first, then unrolled: the switch is process-wide.
    mask_shape = (args.batch, 12, args.seq, args.seq)
    mask_fn, compiled, states, compile_s, setups = {}, {}, {}, {}, []
    for shape in args.shapes.split(","):
        cfg = dj.ModelConfig(head="classification", **SHAPES[shape])
        model = dj.DynaBertModel(cfg)
        params = dj.init_params(model, jax.random.PRNGKey(0))
        batch = {k: jnp.asarray(v) for k, v in
                 random_batch(args.batch, args.seq, cfg.vocab_size).items()}
        for stage in args.stages.split(","):
            _, lam_logit, lam_hidden = STAGES[stage]
            setups.append((shape, stage, model, params, batch,
                           students_of(dj, stage),
                           steps.LossSpec("distill", lam_logit, lam_hidden)))
    rng = jax.random.PRNGKey(0)
    tx, _ = steps.make_optimizer(2e-5, 1000)
    for variant in VARIANTS:
        if variant == "unrolled" and not cpu_rng.unroll_threefry_on_cpu():
            raise SystemExit("this JAX version has no unrolled Threefry lowering to switch to")
        mask_fn[variant] = jax.jit(
            lambda k: jax.random.bernoulli(k, 0.9, mask_shape)).lower(rng).compile()
        for shape, stage, model, params, batch, students, spec in setups:
            key = (shape, stage, variant)
            fresh = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params)
            states[key] = jax.jit(lambda p: steps.init_state(p, tx))(fresh)
            t0 = time.perf_counter()
            compiled[key] = jax.jit(steps.make_train_step(model, students, spec, tx),
                                    donate_argnums=0).lower(states[key], params, batch,
                                                            rng).compile()
            compile_s[key] = time.perf_counter() - t0
            print(f"compiled {shape} stage {stage} {variant} in {compile_s[key]:.1f} s",
                  file=sys.stderr, flush=True)

    masks = {v: np.asarray(mask_fn[v](rng)) for v in VARIANTS}
    mt = {v: [] for v in VARIANTS}
    for _ in range(5):
        for v in VARIANTS:
            mt[v].append(timed(mask_fn[v], rng)[1])
    result["mask"] = {"shape": list(mask_shape), "identical": bool(
        (masks["rolled"] == masks["unrolled"]).all()),
        "median_ms": {v: 1e3 * statistics.median(t) for v, t in mt.items()}}

    for shape, stage, model, params, batch, students, spec in setups:
        first = {}
        for v in VARIANTS:
            key = (shape, stage, v)
            states[key], m = compiled[key](states[key], params, batch, rng)
            first[v] = (np.asarray(m["losses"]),
                        [np.asarray(x) for x in jax.tree_util.tree_leaves(states[key].params)])
        loss_diff = float(np.max(np.abs(first["rolled"][0] - first["unrolled"][0])))
        param_diff = max(float(np.max(np.abs(a - b))) for a, b in
                         zip(first["rolled"][1], first["unrolled"][1]))
        times = {v: [] for v in VARIANTS}
        for i in range(args.steps):
            for v in VARIANTS:
                key = (shape, stage, v)
                (states[key], _), dt = timed(compiled[key], states[key], params, batch, rng)
                times[v].append(dt)
                print(f"{shape} stage {stage} {v:8s} step {i} {dt:.2f} s", file=sys.stderr,
                      flush=True)
        med = {v: statistics.median(t) for v, t in times.items()}
        result["rows"].append({
            "shape": shape, "stage": stage, "students": len(students),
            "median_step_s": med, "step_times_s": times,
            "examples_per_s": {v: args.batch / med[v] for v in VARIANTS},
            "speedup": med["rolled"] / med["unrolled"],
            "compile_s": {v: compile_s[(shape, stage, v)] for v in VARIANTS},
            "first_step_max_loss_diff": loss_diff,
            "first_step_max_param_diff": param_diff})
        for v in VARIANTS:
            del compiled[(shape, stage, v)], states[(shape, stage, v)]
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        write_atomic(out, result)

    m = result["mask"]
    print(f"\ndropout mask {m['shape']}: rolled {m['median_ms']['rolled']:.1f} ms, unrolled "
          f"{m['median_ms']['unrolled']:.1f} ms, identical bits: {m['identical']}\n")
    print("| shape | stage | students | rolled ex/s | unrolled ex/s | speedup | "
          "compile s rolled / unrolled | max loss / param diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        e, c = r["examples_per_s"], r["compile_s"]
        print(f"| {r['shape']} | {r['stage']} | {r['students']} | {e['rolled']:.2f} | "
              f"{e['unrolled']:.2f} | {r['speedup']:.2f} | {c['rolled']:.1f} / "
              f"{c['unrolled']:.1f} | {r['first_step_max_loss_diff']:.1e} / "
              f"{r['first_step_max_param_diff']:.1e} |")
    print(f"\nwritten {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
