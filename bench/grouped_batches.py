"""Time per training epoch: full-length vs length-grouped, trimmed batches (not a test).

``data.group_by_length`` with ``data.pad_to_multiple_of=16`` makes an epoch cost
0.34-0.64x the tokens of full-length batches on GLUE (``bench/padding_tokens.py``).
This script measures what that buys in time, side by side in one process, with the
real train step of a stage, the MiniLM-L6 shape (random weights: the time does not
depend on them) and a task's real training batches (epoch 0, seed 42, batch 32, the
sequence length of ``configs/results.py``):

* it compiles the step once per batch length met (as the trainer does) and warms each
  one up;
* it takes the same number of evenly spaced batches from each epoch order (adding one
  grouped batch of every length the sample misses), and times them alternately (one
  full-length batch, one grouped);
* the epoch estimate is, per batch length, the mean step time of the timed batches of
  that length x the number of the epoch's batches of that length, summed.

    python bench/grouped_batches.py                                  # CoLA and MRPC, teacher step
    python bench/grouped_batches.py --tasks sst2 --stage 2 --sample 12

Prints a markdown table and writes JSON (default runs/bench/grouped_batches.json).
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from train_throughput import run_header, write_atomic  # noqa: E402

MULTIPLE = 16


def task_arrays(task: str):
    from transformers import AutoTokenizer

    from configs import results as results_config
    from dynabert_jax import data, trainer

    config = results_config.get_config(f"task={task},train_size=0")
    pretrained = trainer.resolve_pretrained(config.model.pretrained)
    tokenizer = AutoTokenizer.from_pretrained(str(pretrained), local_files_only=True)
    ds = data.load_glue(task, trainer.resolve_data_dir(config), split="train")
    cache = str(pathlib.Path("~/.cache/dynabert_jax/tokenized").expanduser())
    arrays = data.tokenize_dataset(ds, tokenizer, task, config.data.max_seq_length,
                                   cache_dir=cache)
    return config, pretrained, arrays


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="cola,mrpc")
    ap.add_argument("--stage", default="teacher", choices=("teacher", "1", "2"),
                    help="teacher: one student on the labels; 1 / 2: DynaBERT_W / "
                         "DynaBERT (teacher + 4 / 12 students)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sample", type=int, default=16,
                    help="evenly spaced batches timed per order (plus one grouped batch "
                         "of each length they miss)")
    ap.add_argument("--out", default="runs/bench/grouped_batches.json")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    import dynabert_jax as dj
    from dynabert_jax import cpu_rng, data, steps
    from dynabert_jax.convert import config_from_hf, read_hf_config
    from dynabert_jax.trainer import head_for

    cpu_rng.unroll_threefry_on_cpu()  # as the trainer does
    out, result = run_header(args.out)
    result.update(stage=args.stage, batch_size=args.batch_size, sample=args.sample,
                  multiple=MULTIPLE, rows=[])
    t_start = time.perf_counter()
    for task in args.tasks.split(","):
        config, pretrained, arrays = task_arrays(task)
        glue = data.TASKS[task]
        seq = config.data.max_seq_length
        model = dj.DynaBertModel(config_from_hf(read_hf_config(pretrained),
                                                head=head_for(glue),
                                                num_labels=glue.num_labels))
        params = dj.init_params(model, jax.random.PRNGKey(0), seq_len=seq)
        if args.stage == "teacher":
            students, spec = (dj.FULL,), steps.LossSpec(kind="task")
        elif args.stage == "1":
            students, spec = dj.grid(dj.WIDTHS, (1.0,)), steps.LossSpec("distill", 1.0, 0.1)
        else:
            students, spec = dj.grid(), steps.LossSpec("distill", 1.0, 1.0)
        tx, _ = steps.make_optimizer(1e-4, 1000)
        step_fn = jax.jit(steps.make_train_step(model, students, spec, tx),
                          donate_argnums=0)
        state = jax.jit(lambda p: steps.init_state(p, tx))(
            jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), params))
        rng = jax.random.PRNGKey(0)

        lengths = data.row_lengths(arrays["attention_mask"])
        n_steps = data.steps_per_epoch(data.num_examples(arrays), args.batch_size)
        full = list(data.train_batches(arrays, args.batch_size, config.seed, 0))
        grouped = [data.trim_padding(b, MULTIPLE) for b in
                   data.train_batches(arrays, args.batch_size, config.seed, 0,
                                      lengths=lengths)]
        epoch_lengths = [b["input_ids"].shape[1] for b in grouped]
        pick = list(np.linspace(0, n_steps - 1, min(args.sample, n_steps)).round().astype(int))
        for L in sorted(set(epoch_lengths) - {epoch_lengths[i] for i in pick}):
            pick.append(epoch_lengths.index(L))  # every length is timed at least once
        sample = {"full": [full[i] for i in pick], "grouped": [grouped[i] for i in pick]}
        tokens = {"full": sum(b["input_ids"].size for b in full),
                  "grouped": sum(b["input_ids"].size for b in grouped)}

        compile_s = {}
        for b in sample["full"][:1] + sample["grouped"]:  # compile + warm every length
            L = b["input_ids"].shape[1]
            if L in compile_s:
                continue
            jb = {k: jnp.asarray(v) for k, v in b.items()}
            t0 = time.perf_counter()
            state, m = step_fn(state, params, jb, rng)
            jax.block_until_ready(m)
            compile_s[L] = time.perf_counter() - t0
            state, m = step_fn(state, params, jb, rng)
            jax.block_until_ready(m)
        times = {"full": [], "grouped": []}
        for i in range(len(pick)):
            for name in ("full", "grouped"):
                jb = {k: jnp.asarray(v) for k, v in sample[name][i].items()}
                t0 = time.perf_counter()
                state, m = step_fn(state, params, jb, rng)
                jax.block_until_ready(m)
                times[name].append(time.perf_counter() - t0)
            print(f"{task} batch {pick[i]}: full {times['full'][-1]:.2f} s, grouped "
                  f"(len {sample['grouped'][i]['input_ids'].shape[1]}) "
                  f"{times['grouped'][-1]:.2f} s", file=sys.stderr, flush=True)
        by_length = {}
        for i, t in zip(pick, times["grouped"]):
            by_length.setdefault(epoch_lengths[i], []).append(t)
        epoch = {"full": statistics.mean(times["full"]) * n_steps,
                 "grouped": sum(statistics.mean(by_length[L]) for L in epoch_lengths)}
        result["rows"].append({
            "task": task, "seq": seq, "steps_per_epoch": n_steps,
            "batches_timed": [int(i) for i in pick],
            "grouped_lengths": [int(epoch_lengths[i]) for i in pick],
            "epoch_batches_per_length": {str(L): epoch_lengths.count(L)
                                         for L in sorted(set(epoch_lengths))},
            "grouped_step_s_per_length": {str(L): statistics.mean(v)
                                          for L, v in sorted(by_length.items())},
            "token_ratio": tokens["grouped"] / tokens["full"],
            "step_times_s": times, "epoch_estimate_s": epoch,
            "time_ratio": epoch["grouped"] / epoch["full"],
            "compile_s_per_length": {str(k): round(v, 2) for k, v in compile_s.items()}})
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        write_atomic(out, result)

    print(f"\nstage {args.stage}, batch {args.batch_size}, {args.sample} batches per order\n")
    print("| task | seq | steps/epoch | tokens grouped / full | epoch s, full | "
          "epoch s, grouped | time grouped / full | lengths compiled |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        e = r["epoch_estimate_s"]
        print(f"| {r['task']} | {r['seq']} | {r['steps_per_epoch']} | "
              f"{r['token_ratio']:.2f} | {e['full']:.0f} | {e['grouped']:.0f} | "
              f"{r['time_ratio']:.2f} | {len(r['compile_s_per_length'])} |")
    print(f"\nwritten {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
