"""Our sub-network forward under glibc's defaults and with freed memory kept (not a test).

XLA:CPU gives each call one scratch buffer for its temporaries; over 32 MB, glibc maps
it afresh for every call and the kernel faults it in page by page
(``dynabert_jax/host_memory.py``). This script runs the same jitted forward (the
extracted sub-network, as ``bench/latency.py`` times it) in fresh processes, one under
glibc's defaults (``system``) and one after ``host_memory.keep_freed_memory()``
(``keep``), alternating ``--pairs`` times, and reports per sub-network and batch size:
the median time per call, the median page faults per call (``ru_minflt``) and each
process's peak RSS.

    python bench/host_memory.py                         # MiniLM, batch 1, 8 and 32
    python bench/host_memory.py --shape bert-base --batch-sizes 1,32 --subnets 1x1

Prints a markdown table and writes JSON (default runs/bench/host_memory.json).
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from train_throughput import (max_rss_mib, minor_faults, run_header,  # noqa: E402
                              write_atomic)

MODES = ("system", "keep")


def worker(args) -> dict:
    from dynabert_jax import host_memory

    kept = host_memory.keep_freed_memory() if args.worker == "keep" else False
    import jax
    import numpy as np

    import dynabert_jax as dj
    from latency import load_shape, make_inputs

    model, params = load_shape(args.shape)
    rows = []
    for batch in map(int, args.batch_sizes.split(",")):
        inputs = make_inputs(model.config, batch, args.seq)
        jin = {k: jax.device_put(np.asarray(v, np.int32)) for k, v in inputs.items()}
        for spec in args.subnets.split(","):
            subnet = dj.SubNet(*map(float, spec.split("x")))
            small, small_params = dj.extract_subnetwork(model, params, subnet)
            forward = jax.jit(lambda p, m=small, **kw: m.apply(
                {"params": p}, **kw, deterministic=True).logits)
            for _ in range(args.warmup):
                forward(small_params, **jin).block_until_ready()
            ms, faults = [], []
            for _ in range(args.calls):
                f0 = minor_faults()
                t0 = time.perf_counter()
                forward(small_params, **jin).block_until_ready()
                ms.append((time.perf_counter() - t0) * 1e3)
                faults.append(minor_faults() - f0)
            rows.append({"batch": batch, "width": subnet.width, "depth": subnet.depth,
                         "ms": ms, "faults": faults})
    return {"mode": args.worker, "kept": kept, "rows": rows,
            "max_rss_mib": max_rss_mib()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="minilm", choices=("minilm", "bert-base"))
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--subnets", default="1x1,0.5x0.5,0.25x0.5",
                    help="width x depth, comma-separated")
    ap.add_argument("--warmup", type=int, default=10,
                    help="untimed calls first (the kept heap grows over the first few)")
    ap.add_argument("--calls", type=int, default=20, help="timed calls (median)")
    ap.add_argument("--pairs", type=int, default=2,
                    help="processes per mode, system and keep alternating")
    ap.add_argument("--out", default="runs/bench/host_memory.json")
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    out, header = run_header(args.out)
    result = {**header, "shape": args.shape, "seq": args.seq, "warmup": args.warmup,
              "calls": args.calls, "pairs": args.pairs, "processes": []}
    child = [sys.executable, __file__, "--shape", args.shape, "--batch-sizes",
             args.batch_sizes, "--seq", str(args.seq), "--subnets", args.subnets,
             "--warmup", str(args.warmup), "--calls", str(args.calls)]
    t_start = time.perf_counter()
    for _ in range(args.pairs):
        for mode in MODES:
            p = subprocess.run(child + ["--worker", mode], stdout=subprocess.PIPE,
                               text=True)   # bench/latency.py sets the hub offline
            lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not lines:
                raise SystemExit(f"the {mode} worker failed (exit {p.returncode})")
            result["processes"].append(json.loads(lines[-1][len("RESULT "):]))
            print(f"  {mode}: done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    if not all(p["kept"] == (p["mode"] == "keep") for p in result["processes"]):
        raise SystemExit("a keep worker could not apply the settings (not glibc?)")

    table = []
    first = result["processes"][0]["rows"]
    for i, row in enumerate(first):
        per = {m: [p["rows"][i] for p in result["processes"] if p["mode"] == m]
               for m in MODES}
        ms = {m: [statistics.median(r["ms"]) for r in per[m]] for m in MODES}
        faults = {m: [statistics.median(r["faults"]) for r in per[m]] for m in MODES}
        table.append({"batch": row["batch"], "width": row["width"], "depth": row["depth"],
                      "ms": ms, "faults": faults,
                      "keep_over_system": statistics.median(ms["keep"])
                      / statistics.median(ms["system"])})
    result["table"] = table
    result["max_rss_mib"] = {m: [round(p["max_rss_mib"]) for p in result["processes"]
                                 if p["mode"] == m] for m in MODES}
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    write_atomic(out, result)

    def few(values, spec):
        return " / ".join(format(v, spec) for v in values)

    print(f"\n### {args.shape}, seq {args.seq}: median of {args.calls} calls per process, "
          f"{args.pairs} processes per mode\n")
    print("| batch | width | depth | ms: system | ms: keep | keep / system "
          "| page faults per call: system | keep |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['batch']} | {r['width']:g} | {r['depth']:g} | {few(r['ms']['system'], '.1f')} "
              f"| {few(r['ms']['keep'], '.1f')} | {r['keep_over_system']:.2f} "
              f"| {few(r['faults']['system'], '.0f')} | {few(r['faults']['keep'], '.0f')} |")
    print(f"\npeak RSS (MiB) per process: system {result['max_rss_mib']['system']}, "
          f"keep {result['max_rss_mib']['keep']}")
    print(f"\nwritten {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
