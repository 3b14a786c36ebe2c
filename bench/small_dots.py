"""The matmuls of one MiniLM-L6 layer at batch 1, XLA vs PyTorch, side by side (not a test).

At batch 1 x seq 128 a sub-network's matmuls are small (128 rows), and at narrow widths
one of their dimensions is too: 384 x (heads x 32) for each of query, key and value,
(heads x 32) x 384 for the attention output. This script times each of those products
for every width of the grid, as a jitted ``x @ w`` and as ``torch.mm``, alternating in
one process, with the same operands; and, per width, query/key/value as three products
against one product with the three kernels concatenated beforehand.

PyTorch is timed twice: ``torch.mm`` (its default float32 matmul: MKL's sgemm in the
x86 wheels) and an ``nn.Linear`` converted with ``torch.utils.mkldnn.to_mkldnn``
(oneDNN's inner product). On the AMD EPYC (Zen 5) of docs/benchmarks.md, MKL ran at
about half oneDNN's rate (oneDNN reports AVX-512; MKL's rate did not change with
``MKL_ENABLE_INSTRUCTIONS``).

    python bench/small_dots.py                   # both frameworks on all cores
    python bench/small_dots.py --rows 4096       # batch 32 x seq 128

Prints two markdown tables and writes JSON (default runs/bench/small_dots.json).
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

import numpy as np  # noqa: E402

from train_throughput import run_header, write_atomic  # noqa: E402

HIDDEN, FFN, HEAD_DIM, HEADS = 384, 1536, 32, 12   # all-MiniLM-L6-v2
WIDTHS = (1.0, 0.75, 0.5, 0.25)


def median_us(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def side_by_side(fns: dict, rounds: int, calls: int) -> dict:
    """Median microseconds per call of each function, the functions alternating per
    round (``calls`` calls per round; the median of the rounds' medians)."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    per = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            per[k].append(median_us(fn, calls))
    return {k: statistics.median(v) for k, v in per.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=128, help="batch x seq (default 1 x 128)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="PyTorch intra-op threads (XLA uses every core)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--out", default="runs/bench/small_dots.json")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import torch.utils.mkldnn

    torch.set_num_threads(args.threads)
    out, header = run_header(args.out)
    rng = np.random.default_rng(0)
    mm = jax.jit(lambda x, w: x @ w)
    three = jax.jit(lambda x, q, k, v: (x @ q, x @ k, x @ v))
    fused = jax.jit(lambda x, w: jnp.split(x @ w, 3, axis=1))

    def operands(k, n):
        x = rng.standard_normal((args.rows, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        return x, w

    dots, qkv = [], []
    for width in WIDTHS:
        a = int(HEADS * width) * HEAD_DIM
        f = int(FFN * width)
        for name, k, n in (("query / key / value", HIDDEN, a),
                           ("attention output", a, HIDDEN),
                           ("FFN in", HIDDEN, f), ("FFN out", f, HIDDEN)):
            x, w = operands(k, n)
            jx, jw, tx, tw = jnp.asarray(x), jnp.asarray(w), torch.from_numpy(x), \
                torch.from_numpy(w)
            linear = torch.nn.Linear(k, n, bias=False).eval()
            linear.weight.data = tw.t().contiguous()
            onednn = torch.utils.mkldnn.to_mkldnn(linear)   # dense in, dense out
            with torch.inference_mode():
                for got in (torch.mm(tx, tw), onednn(tx)):
                    np.testing.assert_allclose(np.asarray(mm(jx, jw)), got.numpy(),
                                               rtol=1e-4, atol=1e-3)

            def run_onednn():
                with torch.inference_mode():
                    return onednn(tx)

            t = side_by_side({"xla": lambda: mm(jx, jw).block_until_ready(),
                              "torch": lambda: torch.mm(tx, tw),
                              "onednn": run_onednn}, args.rounds, args.calls)
            gflop = 2 * args.rows * k * n / 1e9
            row = dict(width=width, product=name, m=args.rows, k=k, n=n,
                       xla_us=t["xla"], torch_us=t["torch"], torch_onednn_us=t["onednn"],
                       xla_gflops=gflop / t["xla"] * 1e6,
                       torch_gflops=gflop / t["torch"] * 1e6,
                       torch_onednn_gflops=gflop / t["onednn"] * 1e6)
            dots.append(row)
            print(f"{width:5} {name:20} {args.rows}x{k}x{n:<5} xla {t['xla']:8.1f} us "
                  f"({row['xla_gflops']:5.1f} GFLOP/s)  torch {t['torch']:8.1f} us "
                  f"({row['torch_gflops']:5.1f})  oneDNN {t['onednn']:8.1f} us "
                  f"({row['torch_onednn_gflops']:5.1f})", flush=True)

        x = jnp.asarray(rng.standard_normal((args.rows, HIDDEN), dtype=np.float32))
        ws = [jnp.asarray(rng.standard_normal((HIDDEN, a), dtype=np.float32))
              for _ in range(3)]
        wcat = jnp.concatenate(ws, axis=1)
        t = side_by_side({"three": lambda: jax.block_until_ready(three(x, *ws)),
                          "fused": lambda: jax.block_until_ready(fused(x, wcat))},
                         args.rounds, args.calls)
        qkv.append(dict(width=width, n=a, three_us=t["three"], fused_us=t["fused"],
                        fused_over_three=t["fused"] / t["three"]))

    lines = [f"**One MiniLM layer's matmuls, {args.rows} rows, XLA vs PyTorch "
             f"({args.threads} PyTorch threads)**", "",
             "| width | product | k x n | XLA (us) | PyTorch (us) | XLA / PyTorch "
             "| XLA GFLOP/s | PyTorch GFLOP/s | PyTorch oneDNN (us) | XLA / oneDNN "
             "| oneDNN GFLOP/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in dots:
        lines.append(f"| {r['width']:g} | {r['product']} | {r['k']} x {r['n']} | "
                     f"{r['xla_us']:.0f} | {r['torch_us']:.0f} | "
                     f"{r['xla_us'] / r['torch_us']:.2f} | {r['xla_gflops']:.0f} | "
                     f"{r['torch_gflops']:.0f} | {r['torch_onednn_us']:.0f} | "
                     f"{r['xla_us'] / r['torch_onednn_us']:.2f} | "
                     f"{r['torch_onednn_gflops']:.0f} |")
    lines += ["", "**Query, key and value in XLA: three products vs one on the "
              "concatenated kernels**", "",
              "| width | n per product | three (us) | one fused (us) | fused / three |",
              "|---|---|---|---|---|"]
    for r in qkv:
        lines.append(f"| {r['width']:g} | {r['n']} | {r['three_us']:.0f} | "
                     f"{r['fused_us']:.0f} | {r['fused_over_three']:.2f} |")
    print("\n" + "\n".join(lines))
    write_atomic(out, dict(header, rows=args.rows, threads=args.threads,
                           rounds=args.rounds, calls=args.calls, dots=dots, qkv=qkv,
                           markdown="\n".join(lines)))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
