"""Pick the most accurate sub-network that fits a budget.

Reads a run's ``grid.json`` (dev metric, params and FLOPs per (width, depth)) and,
for a latency budget, a latency table measured on the target machine by
``bench/latency.py``; prints every candidate with why it fits or not, and the choice::

    python -m dynabert_jax.select --results runs/sst2/grid.json --max-flops 1e9
    python -m dynabert_jax.select --results runs/sst2/grid.json \\
        --latency runs/bench/latency.json --batch-size 1 --max-latency-ms 20

Budgets combine (every one given must hold). Exit status: 0 when a sub-network fits,
1 when none does, 2 for bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dynabert_jax.report import MODEL_SHAPE_KEYS, points_scale

#: The encoder fields a latency table must share with the grid to apply to it.
_SHAPE_MATCH = tuple(k for k in MODEL_SHAPE_KEYS if k != "model_type")
_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


class SelectionError(ValueError):
    """Input that cannot be used for selection (with the reason)."""


@dataclasses.dataclass
class Candidate:
    width: float
    depth: float
    metric: float
    params: int
    flops: float
    latency_ms: Optional[float]
    fits: bool
    met: List[str]              # budgets met, in words
    failed: List[str]           # budgets missed (or not measurable), in words


@dataclasses.dataclass
class Selection:
    best: Optional[Candidate]
    candidates: List[Candidate]
    metric: str
    budgets: Dict[str, float]
    latency_source: Optional[str] = None
    task: str = ""              # the grid's task: how its metric is shown (`points_scale`)

    def explain(self) -> str:
        """Every candidate, and the choice with its reason."""
        lat = any(c.latency_ms is not None for c in self.candidates)
        head = "| width | depth | " + self.metric + " | params (M) | GFLOPs |" + \
            (" latency (ms) |" if lat else "") + " fits |"
        lines = [head, "|---" * (head.count("|") - 1) + "|"]
        order = lambda c: (-c.metric if math.isfinite(c.metric) else math.inf, c.flops)
        for c in sorted(self.candidates, key=order):   # NaN cells last
            row = f"| {c.width:g} | {c.depth:g} | {_fmt_metric(c.metric, self.task)} | " \
                  f"{c.params / 1e6:.2f} | {c.flops / 1e9:.3f} |"
            if lat:
                row += f" {'-' if c.latency_ms is None else f'{c.latency_ms:.2f}'} |"
            row += " yes |" if c.fits else f" no: {'; '.join(c.failed)} |"
            lines.append(row)
        if self.latency_source:
            lines.append(f"\nlatency: {self.latency_source}")
        if self.best is None:
            lines.append("\n" + self._nothing_fits())
        else:
            b = self.best
            fits = sum(c.fits for c in self.candidates)
            lines.append(
                f"\nchosen: width {b.width:g}, depth {b.depth:g}: {self.metric} "
                f"{_fmt_metric(b.metric, self.task)}, the most accurate of the {fits} of "
                f"{len(self.candidates)} sub-networks that fit ({'; '.join(b.met)})")
        return "\n".join(lines)

    def _nothing_fits(self) -> str:
        parts = []
        for key, limit in self.budgets.items():
            values = [getattr(c, _FIELD[key]) for c in self.candidates
                      if getattr(c, _FIELD[key]) is not None]
            if not values:
                parts.append(f"no {_LABEL[key]} was measured for these sub-networks")
            elif min(values) > limit:
                parts.append(f"the smallest {_LABEL[key]} is {_fmt(key, min(values))}, "
                             f"over the budget of {_fmt(key, limit)}")
        # Cells that meet every budget but have no score (NaN) are "within" yet unfit.
        within = [c for c in self.candidates if len(c.met) == len(self.budgets)]
        if not parts and within:
            cells = ", ".join(f"({c.width:g}, {c.depth:g})" for c in within)
            budget = "budget" if len(self.budgets) == 1 else "budgets"
            parts.append(
                (f"the only sub-network within the {budget}, {cells}, has" if len(within) == 1
                 else f"the {len(within)} sub-networks within the {budget}, {cells}, have")
                + f" no finite dev {self.metric} (NaN: e.g. a correlation of constant "
                  f"predictions)")
        if not parts:
            parts.append("each budget alone is met by some sub-network, but none meets "
                         "all of them at once")
        return "nothing fits: " + "; ".join(parts)

    def to_json(self) -> dict:
        return {"metric": self.metric, "budgets": self.budgets,
                "latency_source": self.latency_source,
                "best": None if self.best is None else dataclasses.asdict(self.best),
                "candidates": [dataclasses.asdict(c) for c in self.candidates]}


_FIELD = {"max_latency_ms": "latency_ms", "max_flops": "flops", "max_params": "params"}
_LABEL = {"max_latency_ms": "latency", "max_flops": "FLOPs", "max_params": "parameter count"}


def _fmt(key: str, v: float) -> str:
    if key == "max_latency_ms":
        return f"{v:.2f} ms"
    if key == "max_flops":
        return f"{v / 1e9:.3f} GFLOPs"
    return f"{v / 1e6:.2f} M"


def _fmt_metric(v: float, task: str) -> str:
    """The metric in points, by task (`points_scale`): SQuAD's as it is, ratios x100."""
    return f"{v * points_scale(task):.2f}"


def parse_amount(text) -> float:
    """``"1.5e9"``, ``"1.5G"``, ``"20M"`` or ``"300k"`` as a number."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMgGtT]?)\s*", str(text))
    try:
        value = float(m.group(1)) * _SUFFIXES[m.group(2).lower()]
    except (AttributeError, ValueError):
        raise SelectionError(f"not an amount: {text!r} (use e.g. 1.5e9, 1.5G, 20M)")
    if not math.isfinite(value) or value <= 0:
        raise SelectionError(f"a budget must be a positive number, got {text!r}")
    return value


def load_json(path, what: str) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise SelectionError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SelectionError(f"{what} {path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:   # a binary file (a checkpoint, an archive)
        raise SelectionError(f"{what} {path} is not a JSON text file ({e.reason} at "
                             f"byte {e.start})") from e


def check_grid_json(record: Mapping, where: str = "the results file") -> None:
    """A SelectionError naming ``where`` unless ``record`` is a grid.json whose every
    cell has numbers for width, depth, metric (NaN allowed), params and flops."""
    if not isinstance(record, Mapping) or not isinstance(record.get("subnets"), list) \
            or not record["subnets"]:
        raise SelectionError(f"{where} is not a grid.json written by train.py "
                             f"(no 'subnets' list)")
    for c in record["subnets"]:
        if not isinstance(c, Mapping):
            raise SelectionError(f"{where} is not a grid.json written by train.py: cell "
                                 f"{c!r} is not a mapping of width, depth, metric, params "
                                 f"and flops")
        missing = [k for k in ("width", "depth", "metric", "params", "flops") if k not in c]
        if missing:
            raise SelectionError(f"{where}: grid.json cell {c} lacks {missing}")
        for k in ("width", "depth", "metric", "params", "flops"):
            try:
                value = float(c[k])
                if k != "metric":
                    int(value)   # params as an int; NaN or inf only for the metric
            except (TypeError, ValueError, OverflowError):
                raise SelectionError(f"{where}: grid.json cell {c} has a {k} that is not "
                                     f"a number: {c[k]!r}") from None


def latency_table(latency: Mapping, record: Mapping, *, batch_size: Optional[int] = None,
                  seq_len: Optional[int] = None, model: Optional[str] = None,
                  dtype: Optional[str] = None) -> Tuple[Mapping, str]:
    """The table of a ``bench/latency.py`` JSON that applies to ``record``'s model.

    Tables are matched on the encoder shape recorded in grid.json (or by ``model``
    name), then on batch size, sequence length and dtype when given; a choice that is
    left open must be unique. Returns the table and a one-line description.
    """
    tables = latency.get("tables") if isinstance(latency, Mapping) else None
    if not tables:
        raise SelectionError("the latency file has no 'tables' (is it the JSON written "
                             "by bench/latency.py?)")
    shape = record.get("model")
    if model is not None:
        found = [t for t in tables if t.get("model") == model]
        if not found:
            raise SelectionError(f"no latency table for model {model!r}; the file has "
                                 f"{sorted({t.get('model') for t in tables})}")
    elif shape is not None:
        found = [t for t in tables
                 if all(t.get("shape", {}).get(k) == shape.get(k) for k in _SHAPE_MATCH)]
        if not found:
            raise SelectionError(
                f"no latency table for this model's shape "
                f"{ {k: shape.get(k) for k in _SHAPE_MATCH} }; the file has "
                f"{[t.get('model') for t in tables]} (measure this model with "
                f"bench/latency.py, or name a table with --latency-model)")
    else:
        raise SelectionError("this grid.json does not record its model shape (written by "
                             "an older version): name the latency table with "
                             "--latency-model")
    for key, want in (("batch_size", batch_size), ("seq_len", seq_len), ("dtype", dtype)):
        if want is not None:
            options = sorted({t.get(key) for t in found}, key=str)
            found = [t for t in found if t.get(key) == want]
            if not found:
                raise SelectionError(f"no latency table with {key}={want}; available: "
                                     f"{options}")
    for key in ("batch_size", "seq_len", "dtype"):
        options = sorted({t.get(key) for t in found}, key=str)
        if len(options) > 1:
            flag = "--" + key.replace("_", "-")
            raise SelectionError(f"the latency file has tables for {key} {options}: choose "
                                 f"one with {flag}")
    t = found[0]
    desc = (f"{t.get('model')} batch {t.get('batch_size')} x seq {t.get('seq_len')}, "
            f"{t.get('dtype')}, measured on {latency.get('device', 'an unnamed device')}")
    if record.get("seq_len") not in (None, t.get("seq_len")):
        desc += (f" (the grid's FLOPs are per sequence of {record['seq_len']} tokens, "
                 f"the latencies per sequence of {t.get('seq_len')})")
    return t, desc


def select(record: Mapping, *, max_latency_ms: Optional[float] = None,
           max_flops: Optional[float] = None, max_params: Optional[float] = None,
           latency: Optional[Mapping] = None, runtime: str = "jax",
           latency_source: Optional[str] = None) -> Selection:
    """The most accurate cell of ``record`` (a grid.json) within every budget given.

    ``latency`` is one table of a latency benchmark (see :func:`latency_table`); its
    ``<runtime>_ms`` column is the latency of each (width, depth). Ties on the metric go
    to the cheaper sub-network (fewer FLOPs).
    """
    check_grid_json(record)
    if max_latency_ms is not None and latency is None:
        raise SelectionError("a latency budget needs a latency table measured on the "
                             "target machine (--latency, from bench/latency.py); without "
                             "one, budget FLOPs or parameters instead")
    budgets = {k: float(v) for k, v in (("max_latency_ms", max_latency_ms),
                                        ("max_flops", max_flops),
                                        ("max_params", max_params)) if v is not None}
    lat: Dict[Tuple[float, float], float] = {}
    if latency is not None:
        column = f"{runtime}_ms"
        for row in latency.get("rows", []):
            if column not in row:
                raise SelectionError(f"the latency table has no {column!r} column "
                                     f"(runtimes: {sorted(k[:-3] for k in row if k.endswith('_ms'))})")
            try:
                lat[(float(row["width"]), float(row["depth"]))] = float(row[column])
            except (KeyError, TypeError, ValueError):
                raise SelectionError(f"the latency table's row {row} lacks a numeric width, "
                                     f"depth or {column!r}") from None
    candidates = []
    for c in record["subnets"]:
        key = (float(c["width"]), float(c["depth"]))
        ms = lat.get(key)
        met, failed = [], []
        if not math.isfinite(float(c["metric"])):
            failed.append(f"no dev {record.get('metric', 'metric')} (NaN: e.g. a "
                          f"correlation of constant predictions)")
        for name, limit in budgets.items():
            value = ms if name == "max_latency_ms" else float(c[_FIELD[name]])
            if value is None:
                failed.append("no latency measured")
            elif value <= limit:
                met.append(f"{_LABEL[name]} {_fmt(name, value)} <= {_fmt(name, limit)}")
            else:
                failed.append(f"{_LABEL[name]} {_fmt(name, value)} > {_fmt(name, limit)}")
        candidates.append(Candidate(key[0], key[1], float(c["metric"]), int(c["params"]),
                                    float(c["flops"]), ms, not failed, met, failed))
    fitting = [c for c in candidates if c.fits]
    best = max(fitting, key=lambda c: (c.metric, -c.flops)) if fitting else None
    return Selection(best, candidates, str(record.get("metric", "metric")), budgets,
                     latency_source, str(record.get("task", "")))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dynabert_jax.select",
        description="Pick the most accurate DynaBERT sub-network within a latency, FLOPs "
                    "or parameter budget.")
    p.add_argument("--results", required=True,
                   help="grid.json of a training run (or its workdir)")
    p.add_argument("--max-latency-ms", type=float, default=None)
    p.add_argument("--max-flops", default=None, help="encoder FLOPs per sequence, e.g. 2G")
    p.add_argument("--max-params", default=None, help="encoder parameters, e.g. 15M")
    p.add_argument("--latency", default=None,
                   help="latency JSON from bench/latency.py, measured on the target machine")
    p.add_argument("--latency-model", default=None,
                   help="name of the latency table's model (default: match the shape)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--runtime", default="jax", choices=("jax", "torch"),
                   help="whose latency column to use (default jax)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if args.max_latency_ms is None and args.max_flops is None and args.max_params is None:
        p.error("give at least one budget: --max-latency-ms, --max-flops or --max-params")
    try:
        results = pathlib.Path(args.results)
        if results.is_dir():   # a workdir: the grid.json in it
            if not (results / "grid.json").is_file():
                raise SelectionError(f"{results} is a folder without a grid.json: give a "
                                     f"run's grid.json (train.py writes it into --workdir "
                                     f"once DynaBERT_W or DynaBERT is evaluated)")
            results = results / "grid.json"
        record = load_json(results, "results file")
        check_grid_json(record, f"results file {results}")   # every malformed cell: one line
        table, source = None, None
        if args.latency:
            lat_json = load_json(args.latency, "latency file")
            try:
                table, source = latency_table(lat_json, record,
                                              batch_size=args.batch_size,
                                              seq_len=args.seq_len,
                                              model=args.latency_model, dtype=args.dtype)
            except SelectionError:
                raise
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                raise SelectionError(f"latency file {args.latency} is not a JSON written "
                                     f"by bench/latency.py ({type(e).__name__}: {e})") from e
        if args.max_latency_ms is not None and args.max_latency_ms <= 0:
            raise SelectionError("--max-latency-ms must be positive")
        sel = select(record,
                     max_latency_ms=args.max_latency_ms,
                     max_flops=None if args.max_flops is None else parse_amount(args.max_flops),
                     max_params=None if args.max_params is None
                     else parse_amount(args.max_params),
                     latency=table, runtime=args.runtime, latency_source=source)
    except SelectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(sel.to_json(), indent=2))
    else:
        print(f"{record.get('task', '?')} ({args.results}), dev {sel.metric}\n")
        print(sel.explain())
    return 0 if sel.best is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
