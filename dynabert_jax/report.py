"""What a run leaves behind: JSON-lines metrics, ``grid.json``, a markdown table, a plot.

``grid.json``::

    {"task": "sst2", "metric": "acc", "stage": "width_depth",
     "teacher": {"metric": 0.91, "metrics": {...}, "params": ..., "flops": ...},
     "subnets": [{"width": 1.0, "depth": 1.0, "metric": 0.91, "metrics": {...},
                  "params": 22713216, "flops": 2.9e9}, ...]}

``params`` counts embeddings, kept layers and pooler (spec 6.3); ``flops`` are encoder
FLOPs of one sequence at the run's ``max_seq_length``.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Dict, Mapping, Optional, Sequence

from dynabert_jax.checkpoint import write_text_atomic
from dynabert_jax.flops import count_params, encoder_flops
from dynabert_jax.subnet import FULL, SubNet


def tensorboard_writer():
    """TensorBoard's ``SummaryWriter`` class, or an ImportError saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # optional dependency
        raise ImportError("config.tensorboard needs the 'tensorboard' package: "
                          "pip install tensorboard") from e
    return SummaryWriter


def is_primary() -> bool:
    """Whether this process writes a run's logs and tables: in a run over several
    processes (``jax.distributed``) only process 0 does, since every process computes
    the same rows and they share the workdir; checkpoints are orbax's, written by all."""
    import jax

    return jax.process_index() == 0


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl row; infinite for a row cut off by a crash mid-write
    (so `MetricWriter.drop_after` drops it: its step is logged again)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


class MetricWriter:
    """Appends one JSON object per line to ``path``; optionally mirrors scalars to
    TensorBoard (needs the ``tensorboard`` package). Writes nothing on processes other
    than the first (`is_primary`)."""

    def __init__(self, path, tensorboard_dir: Optional[str] = None):
        self.path = pathlib.Path(path)
        self._enabled = is_primary()
        if self._enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = (tensorboard_writer()(tensorboard_dir)
                    if tensorboard_dir and self._enabled else None)

    def write(self, step: int, **values) -> None:
        if not self._enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for key, value in _flatten(values).items():
                self._tb.add_scalar(key, value, step)

    def drop_after(self, step: int) -> None:
        """Remove the rows of steps after ``step`` (a run resumed from the checkpoint
        at ``step`` trains and logs them again)."""
        if not self._enabled or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        keep = [line for line in lines if not line.strip() or _step_of(line) <= step]
        if len(keep) != len(lines):
            write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(d: Mapping, prefix: str = "") -> Dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


#: The fields of a model config that name its shape (grid.json and latency tables).
MODEL_SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers",
                    "num_attention_heads", "intermediate_size")


def grid_record(task: str, metric: str, model_config, seq_len: int,
                results: Mapping[SubNet, Mapping[str, float]],
                teacher: Optional[Mapping[str, float]] = None,
                stage: Optional[str] = None) -> dict:
    """The ``grid.json`` object for per-sub-network ``results`` (metric dicts)."""
    def cell(subnet: SubNet, metrics: Mapping[str, float]) -> dict:
        return {"width": subnet.width, "depth": subnet.depth,
                "metric": float(metrics[metric]), "metrics": dict(metrics),
                "params": count_params(model_config, subnet),
                "flops": encoder_flops(model_config, subnet, seq_len)}

    record = {"task": task, "metric": metric, "stage": stage, "seq_len": seq_len,
              "model": {k: getattr(model_config, k) for k in MODEL_SHAPE_KEYS}}
    if teacher is not None:
        t = cell(FULL, teacher)
        record["teacher"] = {k: t[k] for k in ("metric", "metrics", "params", "flops")}
    record["subnets"] = [cell(s, m) for s, m in
                         sorted(results.items(), key=lambda kv: (-kv[0].width, -kv[0].depth))]
    return record


def points_scale(task: str) -> float:
    """The factor that puts a task's dev metric in points (0-100), as tables show it:
    SQuAD's exact match and F1 are points already; every other metric (accuracy, F1,
    MCC, correlations, of GLUE or a custom task) is a ratio. By task, not by value: a
    ratio table with one NaN cell, or a SQuAD F1 under 1, is still scaled rightly."""
    return 1.0 if str(task).lower() == "squad" else 100.0


def markdown_table(record: Mapping) -> str:
    """Rows: widths; columns: depths; cells: the metric in points (`points_scale`)."""
    cells = {(c["width"], c["depth"]): c for c in record["subnets"]}
    widths = sorted({w for w, _ in cells}, reverse=True)
    depths = sorted({d for _, d in cells}, reverse=True)
    scale = points_scale(record["task"])
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) \
        else f"{v * scale:.2f}"  # noqa: E731
    metric = record["metric"]
    lines = [f"{record['task']} dev {metric}" + (f" (stage {record['stage']})"
                                                if record.get("stage") else "")]
    if "teacher" in record:
        lines[0] += f"; teacher {fmt(record['teacher']['metric'])}"
    lines.append("")
    lines.append("| width \\ depth | " + " | ".join(f"{d:g}" for d in depths) + " |")
    lines.append("|---" * (len(depths) + 1) + "|")
    for w in widths:
        row = [fmt(cells[(w, d)]["metric"]) if (w, d) in cells else "" for d in depths]
        lines.append(f"| {w:g} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append("| width | depth | " + metric + " | params (M) | GFLOPs |")
    lines.append("|---|---|---|---|---|")
    for (w, d), c in sorted(cells.items(), key=lambda kv: (-kv[0][0], -kv[0][1])):
        lines.append(f"| {w:g} | {d:g} | {fmt(c['metric'])} | {c['params'] / 1e6:.1f} | "
                     f"{c['flops'] / 1e9:.2f} |")
    return "\n".join(lines)


def plot_grid(record: Mapping, path) -> pathlib.Path:
    """Metric vs GFLOPs, one line per depth, the teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    depths = sorted({c["depth"] for c in record["subnets"]}, reverse=True)
    for d in depths:
        pts = sorted((c["flops"] / 1e9, c["metric"]) for c in record["subnets"]
                     if c["depth"] == d)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"depth {d:g}")
    if "teacher" in record:
        ax.axhline(record["teacher"]["metric"], color="gray", ls="--", label="teacher")
    ax.set_xlabel(f"encoder GFLOPs per sequence (seq {record.get('seq_len', '?')})")
    ax.set_ylabel(f"dev {record['metric']}")
    ax.set_title(f"{record['task']}: DynaBERT sub-networks")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_grid(record: Mapping, directory, stem: str = "grid") -> Sequence[pathlib.Path]:
    """``<directory>/<stem>.json``, ``.md`` and ``.png``; returns their paths (written by
    the first process only, `is_primary`)."""
    directory = pathlib.Path(directory)
    js, md, png = (directory / f"{stem}.{ext}" for ext in ("json", "md", "png"))
    if is_primary():
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(js, json.dumps(record, indent=2) + "\n")
        write_text_atomic(md, markdown_table(record) + "\n")
        plot_grid(record, png)
    return js, md, png
