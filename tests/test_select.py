"""Choosing a sub-network under a budget, on a hand-made grid and latency table."""
import json

import pytest

from dynabert_jax import select as sel

SHAPE = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
         "num_attention_heads": 12, "intermediate_size": 1536}

# (width, depth, metric, params, flops, jax_ms, torch_ms)
CELLS = [
    (1.0, 1.0, 0.90, 22.7e6, 1.40e9, 30.0, 33.0),
    (0.75, 1.0, 0.89, 20.0e6, 1.05e9, 24.0, 25.0),
    (0.5, 1.0, 0.88, 17.4e6, 0.70e9, 16.0, 15.0),
    (1.0, 0.5, 0.88, 17.4e6, 0.70e9, 15.0, 17.0),   # ties (0.5, 1.0) on metric and FLOPs
    (0.25, 1.0, 0.85, 14.7e6, 0.35e9, 9.0, 8.0),
    (0.25, 0.5, 0.80, 13.4e6, 0.17e9, 5.0, 4.0),
]


def grid(shape=SHAPE):
    rec = {"task": "sst2", "metric": "acc", "seq_len": 128,
           "subnets": [{"width": w, "depth": d, "metric": m, "metrics": {"acc": m},
                        "params": int(p), "flops": f} for w, d, m, p, f, _, _ in CELLS]}
    if shape is not None:
        rec["model"] = shape
    return rec


def latency(batch_sizes=(1,), shape=SHAPE):
    return {"benchmark": "latency", "device": "test cpu", "tables": [
        {"model": "minilm", "shape": shape, "batch_size": b, "seq_len": 128,
         "dtype": "float32", "backend": "cpu",
         "rows": [{"width": w, "depth": d, "jax_ms": j * b, "torch_ms": t * b}
                  for w, d, _, _, _, j, t in CELLS]} for b in batch_sizes]}


def test_flops_budget_picks_most_accurate_that_fits():
    s = sel.select(grid(), max_flops=1.0e9)
    assert (s.best.width, s.best.depth) == (0.5, 1.0)
    assert sum(c.fits for c in s.candidates) == 4
    text = s.explain()
    assert "chosen: width 0.5, depth 1" in text and "FLOPs 0.700 GFLOPs <= 1.000" in text
    assert "no: FLOPs 1.050 GFLOPs > 1.000 GFLOPs" in text


def test_ties_go_to_the_cheaper_and_budgets_combine():
    s = sel.select(grid(), max_flops=0.8e9, max_params=15e6)
    assert (s.best.width, s.best.depth) == (0.25, 1.0)
    s = sel.select(grid(), max_params=17.4e6)
    assert s.best.metric == 0.88  # both 0.88 cells cost the same: either is right
    assert s.best.flops == 0.70e9


def test_latency_budget_uses_the_measured_table():
    table, desc = sel.latency_table(latency(), grid())
    assert "measured on test cpu" in desc
    s = sel.select(grid(), max_latency_ms=15.5, latency=table)
    assert (s.best.width, s.best.depth) == (1.0, 0.5)   # 15 ms; (0.5, 1.0) takes 16 ms
    s = sel.select(grid(), max_latency_ms=15.5, latency=table, runtime="torch")
    assert (s.best.width, s.best.depth) == (0.5, 1.0)   # PyTorch: 15 ms vs 17 ms


def test_nothing_fits_says_why():
    s = sel.select(grid(), max_flops=0.1e9)
    assert s.best is None
    assert "the smallest FLOPs is 0.170 GFLOPs, over the budget of 0.100 GFLOPs" in \
        s.explain()
    s = sel.select(grid(), max_flops=0.2e9, max_params=14e6)
    assert s.best is not None
    s = sel.select(grid(), max_flops=0.2e9, max_params=13e6)
    assert "parameter count is 13.40 M, over the budget of 13.00 M" in s.explain()


def test_cli(tmp_path, capsys):
    (tmp_path / "grid.json").write_text(json.dumps(grid()))
    (tmp_path / "lat.json").write_text(json.dumps(latency(batch_sizes=(1, 32))))
    args = ["--results", str(tmp_path / "grid.json")]
    assert sel.main(args + ["--max-flops", "1G"]) == 0
    assert "chosen: width 0.5, depth 1" in capsys.readouterr().out
    assert sel.main(args + ["--max-flops", "50M"]) == 1
    assert "nothing fits" in capsys.readouterr().out
    lat = ["--latency", str(tmp_path / "lat.json")]
    assert sel.main(args + lat + ["--max-latency-ms", "20"]) == 2
    assert "choose one with --batch-size" in capsys.readouterr().err
    assert sel.main(args + lat + ["--batch-size", "32", "--max-latency-ms", "300",
                                  "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["best"]["width"], out["best"]["depth"]) == (0.25, 1.0)  # 9 x 32 = 288 ms
    assert out["best"]["latency_ms"] == 288.0


def test_bad_input_is_explained(tmp_path, capsys):
    with pytest.raises(sel.SelectionError, match="needs a latency table"):
        sel.select(grid(), max_latency_ms=10)
    with pytest.raises(sel.SelectionError, match="no latency table for this model's shape"):
        sel.latency_table(latency(shape=dict(SHAPE, hidden_size=768)), grid())
    with pytest.raises(sel.SelectionError, match="--latency-model"):
        sel.latency_table(latency(), grid(shape=None))
    table, _ = sel.latency_table(latency(), grid(shape=None), model="minilm")
    assert table["batch_size"] == 1
    with pytest.raises(sel.SelectionError, match="no latency table with batch_size=8"):
        sel.latency_table(latency(), grid(), batch_size=8)
    with pytest.raises(sel.SelectionError, match="not a grid.json"):
        sel.select({"task": "x"}, max_flops=1)
    with pytest.raises(sel.SelectionError, match="not an amount"):
        sel.parse_amount("ten")
    assert sel.parse_amount("1.5G") == 1.5e9 and sel.parse_amount("20M") == 20e6
    (tmp_path / "bad.json").write_text("{")
    assert sel.main(["--results", str(tmp_path / "bad.json"), "--max-flops", "1G"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # no budget at all: argparse usage error
        sel.main(["--results", str(tmp_path / "bad.json")])


def test_real_grid_from_training_has_the_model_shape():
    """grid.json written by the trainer records the shape latency tables match on."""
    from dynabert_jax import ModelConfig, report

    cfg = ModelConfig(**{k: v for k, v in SHAPE.items()}, head="classification")
    from dynabert_jax.subnet import grid as subnet_grid

    rec = report.grid_record("sst2", "acc", cfg, 128,
                             {s: {"acc": 0.5} for s in subnet_grid()})
    assert rec["model"] == SHAPE
    table, _ = sel.latency_table(latency(), rec)
    assert sel.select(rec, max_latency_ms=10, latency=table).best is not None


def test_a_cell_without_a_score_is_never_chosen():
    # A correlation of constant predictions is NaN in grid.json; max() keeps a NaN that
    # comes first, so the full network's NaN would have been "the most accurate".
    rec = grid()
    rec["subnets"][0]["metric"] = float("nan")
    s = sel.select(rec, max_flops=2e9)
    assert (s.best.width, s.best.depth) == (0.75, 1.0)
    text = s.explain()
    assert "no: no dev acc (NaN" in text
    assert text.splitlines()[-3].startswith("| 1 | 1 |")   # listed last


def test_cli_takes_the_workdir_for_its_grid(tmp_path, capsys):
    (tmp_path / "grid.json").write_text(json.dumps(grid()))
    assert sel.main(["--results", str(tmp_path), "--max-flops", "1G"]) == 0
    assert "chosen: width 0.5, depth 1" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert sel.main(["--results", str(tmp_path / "empty"), "--max-flops", "1G"]) == 2
    assert "is a folder without a grid.json" in capsys.readouterr().err


def test_metric_points_go_by_task_not_by_value():
    # SQuAD's F1 is in points already (88.0, or 0.9 for a model that learned nothing);
    # a ratio is x100 whatever its value.
    squad = grid()
    squad.update(task="squad", metric="f1")
    for c, f1 in zip(squad["subnets"], (88.0, 86.0, 84.0, 84.0, 80.0, 0.9)):
        c["metric"] = f1
    text = sel.select(squad, max_flops=2e9).explain()
    assert "| 1 | 1 | 88.00 |" in text and "| 0.25 | 0.5 | 0.90 |" in text
    assert "chosen: width 1, depth 1: f1 88.00," in text and "8800" not in text
    text = sel.select(grid(), max_flops=2e9).explain()
    assert "| 1 | 1 | 90.00 |" in text and "f1" not in text


def test_malformed_grid_is_bad_input(tmp_path, capsys):
    (tmp_path / "bin.json").write_bytes(b"\x80\x04\x95\xff\x00binary")
    assert sel.main(["--results", str(tmp_path / "bin.json"), "--max-flops", "1G"]) == 2
    err = capsys.readouterr().err
    assert "bin.json is not a JSON text file" in err and len(err.strip().splitlines()) == 1
    for name, rec in (("ints.json", {"subnets": [1]}),
                      ("strs.json", {"subnets": [dict(grid()["subnets"][0], flops="x")]}),
                      ("nulls.json", {"subnets": [dict(grid()["subnets"][0], params=None)]})):
        (tmp_path / name).write_text(json.dumps(rec))
        assert sel.main(["--results", str(tmp_path / name), "--max-flops", "1G"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: results file {tmp_path / name}") and \
            len(err.strip().splitlines()) == 1
    with pytest.raises(sel.SelectionError, match="is not a mapping"):
        sel.select({"subnets": [1]}, max_flops=1)
    (tmp_path / "grid.json").write_text(json.dumps(grid()))
    (tmp_path / "lat.json").write_text(json.dumps({"tables": [1]}))
    assert sel.main(["--results", str(tmp_path / "grid.json"), "--latency",
                     str(tmp_path / "lat.json"), "--max-latency-ms", "10"]) == 2
    assert "lat.json is not a JSON written by bench/latency.py" in capsys.readouterr().err


def test_nothing_fits_names_cells_without_a_score():
    rec = grid()
    for c in rec["subnets"][-2:]:   # (0.25, 1) and (0.25, 0.5): constant predictions
        c["metric"] = float("nan")
    s = sel.select(rec, max_flops=0.4e9)
    assert s.best is None
    text = s.explain()
    assert ("nothing fits: the 2 sub-networks within the budget, (0.25, 1), (0.25, 0.5), "
            "have no finite dev acc (NaN") in text
    assert "none meets all of them at once" not in text
    s = sel.select(rec, max_flops=0.2e9, max_params=14e6)
    assert "the only sub-network within the budgets, (0.25, 0.5), has no finite dev acc" \
        in s.explain()
    # Each budget met by a cell, none by one cell: not about the scores.
    rec["subnets"] = [dict(rec["subnets"][0], flops=0.1e9, params=30e6, metric=0.9),
                      dict(rec["subnets"][1], flops=2e9, params=10e6, metric=0.8)]
    text = sel.select(rec, max_flops=1e9, max_params=20e6).explain()
    assert "each budget alone is met by some sub-network, but none meets all" in text
