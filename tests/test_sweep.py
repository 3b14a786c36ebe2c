"""The sweep runner: axes, folder names, resuming, and the summary over seeds."""
import json

import jax
import pytest

import dynabert_jax as dj
from dynabert_jax import sweep

from conftest import REPO


def test_values_split_outside_brackets_and_bad_axes_are_errors():
    assert sweep.split_values("42, 1,2") == ["42", "1", "2"]
    assert sweep.split_values("(1.0,0.5),(1.0,)") == ["(1.0,0.5)", "(1.0,)"]
    for bad, match in [("(1.0,0.5", "unbalanced"), ("1,,2", "empty value")]:
        with pytest.raises(sweep.SweepError, match=match):
            sweep.split_values(bad)
    assert sweep.parse_axes(["config.seed=1,2", "teacher.learning_rate=3e-5"]) == [
        ("seed", ["1", "2"]), ("teacher.learning_rate", ["3e-5"])]
    for bad, match in [(["seed"], "KEY=V1,V2"), (["seed=1", "seed=2"], "twice"),
                       (["seed=1,1"], "repeats")]:
        with pytest.raises(sweep.SweepError, match=match):
            sweep.parse_axes(bad)


def test_points_are_the_product_first_axis_outermost(tmp_path):
    points = sweep.expand(sweep.parse_axes(["seed=42,1", "widths=(1.0,0.5),(1.0,)"]))
    assert [p.name for p in points] == ["seed=42__widths=1.0_0.5", "seed=42__widths=1.0",
                                        "seed=1__widths=1.0_0.5", "seed=1__widths=1.0"]
    assert points[0].group == (("widths", "(1.0,0.5)"),) and points[0].seed == "42"
    cmd = sweep.command(points[0], "configs/glue.py:task=rte", tmp_path, ["--config.x=1"])
    assert cmd[2:] == ["--config=configs/glue.py:task=rte",
                       f"--workdir={tmp_path / 'seed=42__widths=1.0_0.5'}",
                       "--config.seed=42", "--config.widths=(1.0,0.5)", "--config.x=1",
                       f"--config.compilation_cache_dir={tmp_path / 'xla-cache'}"]
    # a cache folder of the user's own, or none
    mine = sweep.command(points[0], "c.py", tmp_path, ["--config.compilation_cache_dir=/c"])
    assert mine[-1] == "--config.compilation_cache_dir=/c" and mine.count(mine[-1]) == 1
    assert sweep.command(points[0], "c.py", tmp_path, shared_cache=False)[-1] == \
        "--config.widths=(1.0,0.5)"
    with pytest.raises(sweep.SweepError, match="share a folder"):
        sweep.expand(sweep.parse_axes(["widths=(1.0,0.5),[1.0,0.5]"]))
    assert sweep.expand([]) == [sweep.Point(())] and sweep.Point(()).name == "base"


def test_a_key_the_config_lacks_is_refused_before_any_run(tmp_path, capsys):
    results_config = f"{REPO}/configs/results.py:task=rte"
    sweep.check_keys(results_config, ["seed", "width_depth.learning_rate"])
    with pytest.raises(sweep.SweepError, match="has no field 'width_depth.learnig_rate'"):
        sweep.check_keys(results_config, ["width_depth.learnig_rate"])
    with pytest.raises(sweep.SweepError, match="no field 'seed.x'"):
        sweep.check_keys(f"{REPO}/configs/default.py", ["seed.x"])
    assert sweep.main(["--config", f"{REPO}/configs/default.py",
                       "--workdir", str(tmp_path / "sw"), "--set", "sede=1,2"]) == 2
    assert "has no field 'sede'" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()


def test_a_point_is_done_when_its_last_record_with_these_flags_succeeded(tmp_path):
    rec = lambda point, rc, extra=(): json.dumps(
        {"point": point, "overrides": {"seed": point[5:]}, "config": "c.py",
         "extra": list(extra), "rc": rc})
    (tmp_path / "sweep.jsonl").write_text("\n".join([
        rec("seed=1", 0), rec("seed=2", 0), rec("seed=2", 1),   # rerun, then failed
        rec("seed=3", 1), rec("seed=3", 0), rec("seed=4", 0, ["--config.x=1"]),
        '{"point": "seed=5", "rc": 0, "conf']) + "\n")        # cut by a crash
    assert sorted(sweep.finished(tmp_path, "c.py", [])) == ["seed=1", "seed=3"]
    assert sorted(sweep.finished(tmp_path, "c.py", ["--config.x=1"])) == ["seed=4"]
    assert sweep.finished(tmp_path, "other.py", []) == {}


def _grid(metric_by_cell, teacher):
    return {"task": "rte", "metric": "acc", "teacher": {"metric": teacher},
            "subnets": [{"width": w, "depth": d, "metric": v}
                        for (w, d), v in metric_by_cell.items()]}


def test_summary_averages_seeds_within_a_group(tmp_path):
    points = sweep.expand(sweep.parse_axes(["lr=1e-4,3e-5", "seed=1,2"]))
    values = {"lr=1e-4__seed=1": (0.60, 0.50, 0.70), "lr=1e-4__seed=2": (0.64, 0.54, 0.72),
              "lr=3e-5__seed=1": (0.58, 0.56, 0.71)}        # lr=3e-5, seed=2 never ran
    for name, (a, b, t) in values.items():
        (tmp_path / name / "width_depth").mkdir(parents=True)
        (tmp_path / name / "width_depth" / "grid.json").write_text(
            json.dumps(_grid({(1.0, 1.0): a, (0.25, 0.5): b}, t)))
    (tmp_path / "lr=1e-4__seed=1" / "direct").mkdir()
    (tmp_path / "lr=1e-4__seed=1" / "direct" / "grid.json").write_text(
        json.dumps(_grid({(1.0, 1.0): 0.55}, 0.70)))
    summary, md = sweep.write_summary(points, tmp_path)
    assert summary["metric"] == "acc"
    g1, g2 = summary["groups"]
    assert g1["overrides"] == {"lr": "1e-4"} and g1["seeds"] == ["1", "2"]
    cells = {(c["width"], c["depth"]): c for c in g1["methods"]["dynabert"]}
    assert cells[(1.0, 1.0)]["mean"] == 62.0 and cells[(1.0, 1.0)]["sd"] == 2.83
    assert cells[(0.25, 0.5)]["values"] == [50.0, 54.0] and cells[(0.25, 0.5)]["n"] == 2
    assert g1["teacher"]["mean"] == 71.0
    assert g1["methods"]["direct"][0]["n"] == 1
    assert g2["missing"] == ["lr=3e-5__seed=2"] and g2["methods"]["dynabert"][0]["n"] == 1
    assert "| 1 | 1 | 62.0 ± 2.8 (n=2) | 58.0 |" in md
    assert "| 0.25 | 0.5 | 52.0 ± 2.8 (n=2) | 56.0 |" in md
    assert "| mean | | 57.0 (2 cells) | 57.0 (2 cells) |" in md
    assert "no results yet: lr=3e-5__seed=2" in md
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(
        json.dumps(summary))


def _flags(tiny_bert_dir, tmp_path, teacher):
    flags = {
        "model.pretrained": tiny_bert_dir, "teacher_checkpoint": teacher,
        "rewire.enabled": False, "final.enabled": False,
        "data.cache_dir": tmp_path / "cache", "data.max_seq_length": 32,
        "data.train_size": 32, "data.dev_size": 16, "width.max_steps": 1,
        "width_depth.max_steps": 1, "width.batch_size": 8, "width_depth.batch_size": 8,
        "eval_batch_size": 16, "progress": False, "report_memory": False,
        "widths": "(1.0,0.5)", "depths": "(1.0,0.5)",
    }
    return [f"--config.{k}={v}" for k, v in flags.items()]


@pytest.mark.slow
def test_sweep_trains_each_seed_then_skips_them_on_rerun(tiny_bert_dir, tmp_path, capsys):
    teacher = dj.save_pretrained_pytorch(*dj.from_pretrained_pytorch(
        tiny_bert_dir, head="classification", num_labels=2, rng=jax.random.PRNGKey(3)),
        tmp_path / "teacher")
    args = ["--config", f"{REPO}/configs/default.py", "--workdir", str(tmp_path / "sw"),
            "--set", "seed=0,1", "--"] + _flags(tiny_bert_dir, tmp_path, teacher)
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "sw" / "summary.json").read_text())
    (group,) = summary["groups"]
    assert group["seeds"] == ["0", "1"] and not group["missing"]
    for method in ("dynabert", "dynabert_w"):
        assert all(c["n"] == 2 for c in group["methods"][method])
    assert len(group["methods"]["dynabert"]) == 4 and len(group["methods"]["dynabert_w"]) == 2
    # the two seeds trained their own students: the metric of each run is its own grid's
    for seed in ("0", "1"):
        grid = json.loads((tmp_path / "sw" / f"seed={seed}" / "width_depth" /
                           "grid.json").read_text())
        cell = next(c for c in grid["subnets"] if (c["width"], c["depth"]) == (0.5, 0.5))
        s = next(c for c in group["methods"]["dynabert"]
                 if (c["width"], c["depth"]) == (0.5, 0.5))
        assert round(100 * cell["metric"], 2) in s["values"]
    assert "**DynaBERT**" in out
    log = [json.loads(line) for line in (tmp_path / "sw" / "sweep.jsonl").read_text()
           .splitlines()]
    assert [(r["point"], r["rc"]) for r in log] == [("seed=0", 0), ("seed=1", 0)]
    assert any((tmp_path / "sw" / "xla-cache").iterdir())   # the points' shared cache
    # run again: both points are recorded as done and skipped, the summary is the same
    assert sweep.main(args) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 2
    assert json.loads((tmp_path / "sw" / "summary.json").read_text()) == summary
    # other extra flags are another sweep: not skipped (here: a bad one, which fails)
    assert sweep.main(args[:-len(_flags(tiny_bert_dir, tmp_path, teacher))] +
                      ["--config.stage=widht"]) == 1
    assert "failed points" in capsys.readouterr().err
