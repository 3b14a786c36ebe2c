"""Peak memory of the multi-student train step vs a single-student step (not a test).

Compiles (does not run) the stage-1 step (teacher + 4 widths), the stage-2 step (teacher +
12 width x depth students) and a single-student distillation step of the same shape, and
reads XLA's memory analysis of each executable: peak = arguments + outputs + temporaries
- aliased (donated) buffers. The claim checked: the stage-2 step keeps at most one
student's activations alive, so its peak stays within 2x of one student's.
With ``--accum K`` also the stage-1 step with gradient accumulation (K micro-batches of
``--batch``) against one batch of K x ``--batch``: accumulation should cost about the
memory of one micro-batch.

    python bench/bench_memory.py                     # BERT-base and MiniLM-L6 shapes
    python bench/bench_memory.py --shapes minilm --batch 32 --seq 128 --accum 4

Prints a markdown table and writes JSON (default runs/bench/bench_memory.json).
"""
import argparse
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import dynabert_jax as dj  # noqa: E402
from dynabert_jax import cpu_rng, steps  # noqa: E402

SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
}


def measure(shape: str, batch: int, seq: int, accum: int = 1) -> dict:
    cfg = dj.ModelConfig(head="classification", **SHAPES[shape])
    model = dj.DynaBertModel(cfg)
    params = jax.eval_shape(lambda: dj.init_params(model))

    def batch_of(rows):
        ids = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
        return {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids,
                "labels": jax.ShapeDtypeStruct((rows,), jnp.int32)}

    tx, _ = steps.make_optimizer(2e-5, 1000)
    state = jax.eval_shape(lambda p: steps.init_state(p, tx), params)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    stage1, stage1_spec = dj.grid(depths=(1.0,)), steps.LossSpec("distill", 1.0, 0.1)
    cases = [
        ("single student", (dj.FULL,), steps.LossSpec("distill", 1.0, 1.0), batch, 1),
        ("stage 1 (4 widths)", stage1, stage1_spec, batch, 1),
        ("stage 2 (12 students)", dj.grid(), steps.LossSpec("distill", 1.0, 1.0), batch, 1)]
    if accum > 1:
        cases += [(f"stage 1, {accum} x {batch} accumulated", stage1, stage1_spec,
                   batch * accum, accum),
                  (f"stage 1, one batch of {batch * accum}", stage1, stage1_spec,
                   batch * accum, 1)]
    rows = {}
    for name, students, spec, n, k in cases:
        t0 = time.perf_counter()
        step = steps.make_train_step(model, students, spec, tx, accum_steps=k,
                                     partial_clip_norm=1.0 if k > 1 else None)
        compiled = jax.jit(step, donate_argnums=0).lower(state, params, batch_of(n),
                                                         rng).compile()
        rows[name] = dict(steps.memory_stats(compiled),
                          compile_seconds=round(time.perf_counter() - t0, 1))
    single = rows["single student"]["peak_bytes"]
    for r in rows.values():
        r["ratio_to_single"] = round(r["peak_bytes"] / single, 3)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="bert-base,minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--accum", type=int, default=1,
                    help="> 1: also stage 1 with this many micro-batches of --batch "
                         "accumulated, and as one batch of that size")
    ap.add_argument("--rolled-threefry", action="store_true",
                    help="keep JAX's default (rolled) Threefry lowering on CPU instead of "
                         "the trainer's unrolled one (dynabert_jax/cpu_rng.py)")
    ap.add_argument("--out", default="runs/bench/bench_memory.json")
    args = ap.parse_args()
    if not args.rolled_threefry:  # as the trainer does (config.cpu_unrolled_threefry)
        cpu_rng.unroll_threefry_on_cpu()
    result = {"unrolled_threefry": not args.rolled_threefry,
              "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
              "host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "jax": jax.__version__, "batch": args.batch, "seq": args.seq,
              "accum": args.accum, "command": " ".join(sys.argv), "shapes": {}}
    print("| shape | step | peak (MiB) | temporaries (MiB) | ratio to one student | "
          "compile (s) |\n|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        rows = measure(shape, args.batch, args.seq, args.accum)
        result["shapes"][shape] = rows
        for name, r in rows.items():
            print(f"| {shape} | {name} | {r['peak_bytes'] / 2**20:.0f} | "
                  f"{r['temp_size_in_bytes'] / 2**20:.0f} | "
                  f"{r['ratio_to_single']:.2f} | {r['compile_seconds']} |", flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
