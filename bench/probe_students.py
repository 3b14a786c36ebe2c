"""How closely each student of a DynaBERT run copies its teacher where the task head reads
(not a test).

For a regression run (STS-B), stages 1 and 2 train the students on hidden states alone
(the official code has no logit loss for regression, spec 4.2-4.3), and the pooler and
head keep the teacher's values. This probe reads a run's checkpoints and reports, per
(width, depth) cell, on the dev set and on a sample of the training set:

- the student's Pearson against the labels and against the teacher's predictions, and
  the spread (sd) of its predictions beside the teacher's;
- the CLS mismatch at the last kept layer (mean squared error, and relative to the
  teacher's mean square) and the summed hidden-state MSE that stage 2 minimises (over
  all positions, pads included, as the official loss);
- along g, the mean over dev of d(prediction) / d(CLS) at the teacher's CLS: the sd of
  the teacher's and the student's CLS along g, their correlation, and the share of the
  student's CLS error that lies along g.

The teacher is the one the stage distilled from: DynaBERT_W at full size for
``width_depth`` (the official stage-2 teacher), the fine-tuned teacher for ``width``.
docs/results.md (*Seed 2's smallest STS-B cell, diagnosed*) has what it found.

    python bench/probe_students.py --workdir runs/seeds/stsb-seed2 \\
        --cells 1x1,0.25x0.5,0.5x0.5,1x0.5,0.25x0.75 --out runs/bench/probe.json

Prints a markdown table per split and writes JSON.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from dynabert_jax import data, steps, trainer  # noqa: E402
from dynabert_jax.metrics import pearson  # noqa: E402
from dynabert_jax.subnet import FULL, SubNet, grid  # noqa: E402

TEACHER_OF = {"width_depth": "width", "width": "teacher"}


def parse_cells(text: str):
    cells = []
    for item in text.split(","):
        try:
            w, d = item.lower().split("x")
            cells.append(SubNet(float(w), float(d)))
        except ValueError as e:
            raise SystemExit(f"--cells: {item!r} is not WIDTHxDEPTH (e.g. 0.25x0.5): {e}")
    return cells


def probe(workdir, stage: str, cells, train_examples: int, batch_size: int = 64):
    workdir = pathlib.Path(workdir)
    cfg = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    if cfg.task != "stsb":
        raise SystemExit(f"{workdir} is a {cfg.task!r} run; the probe reads a regression "
                         f"head (stsb)")
    cfg.data.train_size = train_examples     # a sample drawn with the run's seed
    ctx = trainer.Context.create(cfg, workdir)
    student = trainer.load_run(workdir, stage)
    teacher = trainer.load_run(workdir, TEACHER_OF[stage])
    model, mc = student.model, student.model.config
    head_params = teacher.params

    def forward(params, batch, subnet):
        out = model.apply({"params": params}, **batch, subnet=subnet)
        return out.logits[:, 0], jnp.stack(out.hidden_states)
    forward = jax.jit(forward, static_argnums=2)

    def head(cls):   # the pooler and regression head on one CLS vector
        pooled = jnp.tanh(cls @ head_params["pooler"]["kernel"]
                          + head_params["pooler"]["bias"])
        return (pooled @ head_params["classifier"]["kernel"]
                + head_params["classifier"]["bias"])[0]
    head_grad = jax.jit(jax.vmap(jax.grad(head)))

    report, g_hat = {}, None
    for split, arrays in (("dev", ctx.dev["dev"]), ("train", ctx.train)):
        batches = list(data.eval_batches(arrays, batch_size))
        real = np.concatenate([b["weight"] for b in batches]) > 0
        t_pred, t_cls, grads = [], [], []
        per = {c: {"pred": [], "cls": [], "hidden_mse": []} for c in cells}
        for b in batches:
            inputs = {k: b[k] for k in steps.MODEL_INPUTS if k in b}
            pred, hidden = forward(teacher.params, inputs, FULL)
            t_pred.append(np.asarray(pred))
            t_cls.append(np.asarray(hidden[-1, :, 0]))
            if g_hat is None:                 # the head's direction is taken on dev
                grads.append(np.asarray(head_grad(hidden[-1, :, 0])))
            hidden = np.asarray(hidden)
            for c in cells:
                s_pred, s_hidden = forward(student.params, inputs, c)
                s_hidden = np.asarray(s_hidden)
                target = hidden[np.asarray(c.teacher_hidden_indices(mc))]
                per[c]["pred"].append(np.asarray(s_pred))
                per[c]["cls"].append(s_hidden[-1, :, 0])
                per[c]["hidden_mse"].append(((s_hidden - target) ** 2).mean(axis=(2, 3))
                                            .sum(0))
        t_pred, t_cls = np.concatenate(t_pred)[real], np.concatenate(t_cls)[real]
        if g_hat is None:
            g = np.concatenate(grads)[real].mean(0)
            g_hat = g / np.linalg.norm(g)
        t_along = t_cls @ g_hat
        labels = np.asarray(arrays["labels"], np.float64)
        rows = {"teacher": {"pearson_labels": pearson(t_pred, labels),
                            "pred_sd": float(t_pred.std()),
                            "cls_sd_along_g": float(t_along.std()),
                            "cls_sd_per_dim": float(t_cls.std(0).mean())}}
        for c in cells:
            pred = np.concatenate(per[c]["pred"])[real]
            cls = np.concatenate(per[c]["cls"])[real]
            err = cls - t_cls
            along = cls @ g_hat
            rows[f"{c.width}x{c.depth}"] = {
                "pearson_labels": pearson(pred, labels),
                "pearson_teacher": pearson(pred, t_pred),
                "pred_sd": float(pred.std()),
                "cls_mse": float((err ** 2).mean()),
                "cls_rel_err": float((err ** 2).mean() / (t_cls ** 2).mean()),
                "hidden_mse_sum": float(np.concatenate(per[c]["hidden_mse"])[real].mean()),
                "cls_sd_along_g": float(along.std()),
                "corr_along_g": pearson(along, t_along),
                "err_share_along_g": float(((err @ g_hat) ** 2).sum() / (err ** 2).sum()),
            }
        report[split] = rows
    return report


def table(rows) -> str:
    keys = list(next(iter(r for n, r in rows.items() if n != "teacher")).keys())
    lines = ["| cell | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{r[k]:.3f}" if k in r else "" for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a train.py run folder (task stsb)")
    p.add_argument("--stage", default="width_depth", choices=sorted(TEACHER_OF))
    p.add_argument("--cells", default="", help="WIDTHxDEPTH,... (default: the run's grid)")
    p.add_argument("--train-examples", type=int, default=1500)
    p.add_argument("--out", default="runs/bench/probe_students.json")
    a = p.parse_args(argv)
    if a.cells:
        cells = parse_cells(a.cells)
    else:
        cfg = json.loads((pathlib.Path(a.workdir) / "config.json").read_text())
        cells = list(grid(cfg["widths"], cfg["depths"] if a.stage != "width" else (1.0,)))
    report = probe(a.workdir, a.stage, cells, a.train_examples)
    for split, rows in report.items():
        print(f"\n{split}\n\n{table(rows)}")
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workdir": str(a.workdir), "stage": a.stage,
                               "train_examples": a.train_examples, **report}, indent=1))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
