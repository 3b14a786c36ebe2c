"""The attention core two ways, side by side in one process (not a test).

``softmax(s) @ v`` (the model's formulation until 2026-11-23, and Hugging Face's eager
one) against ``exp(s - max) @ v / sum(exp(s - max))``, the normalisation moved after the
product (the model's formulation since). Same function; the second divides a
``[batch, heads, q, head_dim]`` tensor instead of ``[batch, heads, q, k]``. For each
shape, batch size and width (heads kept), both are jitted, checked to agree, and timed
alternately: the forward alone and forward + backward of ``sum(out^2)``. ``--dropout``
puts the same dropout mask on the probabilities (softmax first) or the exponentials
(normalise after), as training does.

    python bench/attention_core.py                 # MiniLM and BERT-base, batch 1 and 32
    python bench/attention_core.py --dropout 0.1   # the same with training's dropout
    python bench/attention_core.py --whole-model afd75ba   # + the whole forward, per shape,
                                                           #   against modeling.py of afd75ba
    python bench/attention_core.py --dtype bfloat16 --batch-sizes 32,128   # on a GPU

With ``--whole-model REV`` the script also loads ``dynabert_jax/modeling.py`` as it was at
git revision ``REV`` (or from a file, ``--whole-model path/to/modeling.py``, for a machine
without the git history) and times the inference forward of the whole model (random
weights, the same parameters) with it and with today's, alternating, for a few (width,
depth). ``--dtype bfloat16`` runs both the same way the model does in bfloat16: products
in bfloat16, softmax and normalisation in float32.

Prints markdown tables and writes JSON (default runs/bench/attention_core.json).
"""
import argparse
import importlib.util
import math
import pathlib
import subprocess
import sys
import tempfile
from functools import partial

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from small_dots import side_by_side  # noqa: E402
from train_throughput import run_header, write_atomic  # noqa: E402

#: heads, head_dim
SHAPES = {"minilm": (12, 32), "bert-base": (12, 64)}
#: hidden, layers, heads, FFN
MODELS = {"minilm": (384, 6, 12, 1536), "bert-base": (768, 12, 12, 3072)}


def dropout(x, rate: float):
    """Inverted dropout with a fixed key (as flax's ``nn.Dropout``); identity at rate 0."""
    import jax
    import jax.numpy as jnp

    if rate == 0.0:
        return x
    keep = jax.random.bernoulli(jax.random.PRNGKey(0), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _scores(q, k, mask_bias):
    """float32 scores from products in the inputs' dtype, as the model computes them."""
    import jax.numpy as jnp

    s = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    return s / math.sqrt(q.shape[-1]) + mask_bias


def softmax_first(q, k, v, mask_bias, rate=0.0):
    import jax
    import jax.numpy as jnp

    p = dropout(jax.nn.softmax(_scores(q, k, mask_bias), axis=-1), rate)
    return jnp.einsum("bhqk,bhkd->bqhd", p.astype(v.dtype), v)


def normalise_after(q, k, v, mask_bias, rate=0.0):
    import jax
    import jax.numpy as jnp

    s = _scores(q, k, mask_bias)
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
    ctx = jnp.einsum("bhqk,bhkd->bhqd", dropout(e, rate).astype(v.dtype), v)
    ctx = (ctx.astype(jnp.float32) / jnp.sum(e, axis=-1)[..., None]).astype(v.dtype)
    return ctx.transpose(0, 2, 1, 3)


def _tolerance(dtype: str) -> float:
    """Largest difference accepted between the two forms' outputs."""
    return 1e-4 if dtype == "float32" else 5e-2


def modeling_at(rev: str):
    """``dynabert_jax/modeling.py`` as it was at git revision ``rev`` (or the file at
    path ``rev``), as a module."""
    if pathlib.Path(rev).is_file():
        src = pathlib.Path(rev).read_text()
    else:
        src = subprocess.run(["git", "show", f"{rev}:dynabert_jax/modeling.py"], check=True,
                             capture_output=True, text=True, cwd=HERE.parent).stdout
    path = pathlib.Path(tempfile.mkdtemp()) / "modeling_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("modeling_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def whole_model(rev, shapes, batch_sizes, seq, rounds, calls, rng, dtype="float32"):
    """The inference forward with ``modeling.py`` at ``rev`` and today's, alternating."""
    import jax
    import jax.numpy as jnp

    import dynabert_jax as dj
    from dynabert_jax import modeling
    from dynabert_jax.subnet import SubNet

    before = modeling_at(rev)
    rows = []
    for shape in shapes:
        hidden, layers, heads, ffn = MODELS[shape]
        kw = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=ffn, head="classification")
        now_model = modeling.DynaBertModel(modeling.ModelConfig(**kw), dtype=dtype)
        old_model = before.DynaBertModel(before.ModelConfig(**kw), dtype=dtype)
        params = dj.init_params(now_model)
        for batch in batch_sizes:
            ids = jnp.asarray(rng.integers(1000, 30000, (batch, seq)), jnp.int32)
            mask = jnp.ones((batch, seq), jnp.int32).at[: max(batch // 4, 1), seq // 2:].set(0)
            for width, depth in ((1.0, 1.0), (0.5, 1.0), (0.25, 0.5)):
                fns = {name: jax.jit(lambda p, m=m, sn=SubNet(width, depth): m.apply(
                    {"params": p}, ids, attention_mask=mask, subnet=sn,
                    deterministic=True).logits)
                    for name, m in (("before", old_model), ("now", now_model))}
                diff = float(jnp.max(jnp.abs(fns["before"](params) - fns["now"](params))))
                assert diff < _tolerance(dtype), diff
                t = side_by_side({k: lambda f=f: f(params).block_until_ready()
                                  for k, f in fns.items()}, rounds, calls)
                rows.append(dict(shape=shape, batch=batch, width=width, depth=depth,
                                 before_ms=t["before"] / 1e3, now_ms=t["now"] / 1e3,
                                 max_abs_diff=diff))
                print(f"{shape} batch {batch} ({width:g}, {depth:g}): forward "
                      f"{t['before'] / 1e3:.1f} -> {t['now'] / 1e3:.1f} ms", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="minilm,bert-base")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--widths", default="1,0.5,0.25")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="dropout on the attention probabilities, as in training (the "
                         "same mask for both forms; the trainer's unrolled Threefry)")
    ap.add_argument("--whole-model", metavar="REV", default="",
                    help="also time the whole forward against modeling.py at this git revision")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="dtype of the products (softmax and normalisation stay float32)")
    ap.add_argument("--out", default="runs/bench/attention_core.json")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from dynabert_jax.cpu_rng import unroll_threefry_on_cpu

    unroll_threefry_on_cpu()   # as the trainer does
    out, header = run_header(args.out)
    rng = np.random.default_rng(0)
    rows = []
    for shape in args.shapes.split(","):
        heads_full, d = SHAPES[shape]
        for batch in map(int, args.batch_sizes.split(",")):
            for width in map(float, args.widths.split(",")):
                heads = int(heads_full * width)
                q, k, v = (jnp.asarray(rng.standard_normal((batch, heads, args.seq, d)),
                                       args.dtype) for _ in range(3))
                # a quarter of the sequences padded from the middle on, as in a batch
                mask = np.ones((batch, args.seq), np.float32)
                mask[: max(batch // 4, 1), args.seq // 2:] = 0
                mask_bias = jnp.asarray((1.0 - mask) * -1e4)[:, None, None, :]
                fns = {}
                for name, f in (("softmax_first", softmax_first),
                                ("normalise_after", normalise_after)):
                    fns[name] = jax.jit(partial(f, rate=args.dropout))
                    fns[name + "_grad"] = jax.jit(jax.grad(
                        lambda q, k, v, f=f: jnp.sum(f(q, k, v, mask_bias, args.dropout) ** 2),
                        argnums=(0, 1, 2)))
                a = fns["softmax_first"](q, k, v, mask_bias)
                b = fns["normalise_after"](q, k, v, mask_bias)
                diff = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
                assert diff < _tolerance(args.dtype), diff
                ga = fns["softmax_first_grad"](q, k, v)
                gb = fns["normalise_after_grad"](q, k, v)
                gdiff = max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y)) /
                                  jnp.max(jnp.abs(x.astype(jnp.float32))))
                            for x, y in zip(ga, gb))
                t = side_by_side({
                    "fwd_first": lambda: fns["softmax_first"](q, k, v, mask_bias)
                    .block_until_ready(),
                    "fwd_after": lambda: fns["normalise_after"](q, k, v, mask_bias)
                    .block_until_ready(),
                    "bwd_first": lambda: jax.block_until_ready(
                        fns["softmax_first_grad"](q, k, v)),
                    "bwd_after": lambda: jax.block_until_ready(
                        fns["normalise_after_grad"](q, k, v)),
                }, args.rounds, args.calls)
                row = dict(shape=shape, batch=batch, width=width, heads=heads, dtype=args.dtype,
                           head_dim=d, seq=args.seq, max_abs_diff=diff,
                           grad_max_rel_diff=gdiff,
                           **{k + "_us": val for k, val in t.items()})
                rows.append(row)
                print(f"{shape} batch {batch} width {width}: forward "
                      f"{t['fwd_first'] / 1e3:.2f} -> {t['fwd_after'] / 1e3:.2f} ms, "
                      f"forward+backward {t['bwd_first'] / 1e3:.2f} -> "
                      f"{t['bwd_after'] / 1e3:.2f} ms", flush=True)

    lines = [f"**The attention core (one layer, seq {args.seq}, {args.dtype}, attention "
             f"dropout {args.dropout:g}, {jax.devices()[0].device_kind}): softmax first vs "
             f"normalise after the product**", "",
             "| shape | batch | width | forward: softmax first / normalise after (ms) "
             "| ratio | forward + backward (ms) | ratio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['width']:g} | "
            f"{r['fwd_first_us'] / 1e3:.2f} / {r['fwd_after_us'] / 1e3:.2f} | "
            f"{r['fwd_after_us'] / r['fwd_first_us']:.2f} | "
            f"{r['bwd_first_us'] / 1e3:.2f} / {r['bwd_after_us'] / 1e3:.2f} | "
            f"{r['bwd_after_us'] / r['bwd_first_us']:.2f} |")
    models = []
    if args.whole_model:
        models = whole_model(args.whole_model, args.shapes.split(","),
                             list(map(int, args.batch_sizes.split(","))), args.seq,
                             args.rounds, args.calls, rng, args.dtype)
        lines += ["", f"**The whole inference forward ({args.dtype}): modeling.py at "
                  f"{args.whole_model} vs today's**", "",
                  "| shape | batch | width | depth | before (ms) | now (ms) | now / before |",
                  "|---|---|---|---|---|---|---|"]
        for r in models:
            lines.append(f"| {r['shape']} | {r['batch']} | {r['width']:g} | {r['depth']:g} "
                         f"| {r['before_ms']:.1f} | {r['now_ms']:.1f} | "
                         f"{r['now_ms'] / r['before_ms']:.2f} |")
    print("\n" + "\n".join(lines))
    write_atomic(out, dict(header, rounds=args.rounds, calls=args.calls,
                           dropout=args.dropout, dtype=args.dtype, rows=rows,
                           whole_model=models, whole_model_rev=args.whole_model,
                           markdown="\n".join(lines)))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
