"""Tokens per training epoch with trimmed and length-grouped batches (not a test).

For each GLUE task: the fraction of the tokens of full-length batches (every batch
padded to the task's seq of ``configs/results.py``) that an epoch costs when batches
are cut to a multiple of 16 tokens (``data.pad_to_multiple_of``), without and with
``data.group_by_length``. The same batching code as training, the MiniLM tokenizer,
the whole training sets, seed 42, batch 32. The table is in docs/training.md.

    python bench/padding_tokens.py
    python bench/padding_tokens.py --tasks sst2,cola --multiple 8

Prints a markdown table and writes JSON (default runs/bench/padding_tokens.json).
"""
import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from configs import results as results_config  # noqa: E402
from dynabert_jax import data, trainer  # noqa: E402


def epoch_tokens(arrays, batch_size: int, seed: int, multiple: int, grouped: bool) -> int:
    """Tokens of epoch 0 with batches cut by `data.trim_padding`."""
    lengths = data.row_lengths(arrays["attention_mask"])
    batches = data.train_batches({"attention_mask": arrays["attention_mask"]}, batch_size,
                                 seed, 0, lengths=lengths if grouped else None)
    return sum(data.trim_padding(b, multiple)["attention_mask"].size for b in batches)


def measure(task: str, multiple: int, batch_size: int) -> dict:
    from transformers import AutoTokenizer

    config = results_config.get_config(f"task={task},train_size=0")
    pretrained = trainer.resolve_pretrained(config.model.pretrained)
    tokenizer = AutoTokenizer.from_pretrained(str(pretrained), local_files_only=True)
    seq = config.data.max_seq_length
    ds = data.load_glue(task, trainer.resolve_data_dir(config), split="train")
    cache = str(pathlib.Path("~/.cache/dynabert_jax/tokenized").expanduser())
    arrays = data.tokenize_dataset(ds, tokenizer, task, seq, cache_dir=cache)
    n = data.num_examples(arrays)
    full = data.steps_per_epoch(n, batch_size) * batch_size * seq
    return {"task": task, "examples": n, "seq": seq,
            "median_length": int(np.median(data.row_lengths(arrays["attention_mask"]))),
            "trimmed": epoch_tokens(arrays, batch_size, config.seed, multiple, False) / full,
            "grouped": epoch_tokens(arrays, batch_size, config.seed, multiple, True) / full}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="sst2,cola,stsb,mrpc,rte")
    ap.add_argument("--multiple", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default="runs/bench/padding_tokens.json")
    args = ap.parse_args(argv)
    rows = [measure(t, args.multiple, args.batch_size) for t in args.tasks.split(",") if t]
    print("| task | examples | seq | median length | trimmed | grouped and trimmed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['examples']:,} | {r['seq']} | {r['median_length']} | "
              f"{r['trimmed']:.2f} | {r['grouped']:.2f} |")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"multiple": args.multiple, "batch_size": args.batch_size,
                               "rows": rows}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
