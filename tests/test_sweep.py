"""The sweep runner: axes, folder names, lanes, resuming, and the summary over seeds."""
import json
import os
import signal
import sys
import threading
import time

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
    # the fields train.py's own arguments (after --) override, and the file itself
    base = ["--workdir", str(tmp_path / "sw"), "--set", "seed=1,2"]
    assert sweep.main(["--config", f"{REPO}/configs/default.py"] + base
                      + ["--", "--config.width.learnin_rate=1", "--config.seed", "3"]) == 2
    assert ("--config.width.learnin_rate (after --): " in (err := capsys.readouterr().err)
            and "has no field 'width.learnin_rate'" in err)
    assert sweep.main(["--config", f"{REPO}/configs/glu.py:task=sst2"] + base) == 2
    assert "no such file" in capsys.readouterr().err
    assert sweep.main(["--config", f"{REPO}/configs/results.py:task=qnli"] + base) == 2
    assert "does not load: ValueError: size=cpu has settings" in capsys.readouterr().err
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


def test_the_sweeps_of_several_hosts_read_each_others_records(tmp_path, capsys):
    # each host's sweep passes its own process id (and may pass its own paths and
    # reporting flags); those are not compared, so every host skips the same points
    hosts = [["--config.distributed=true", "--config.process_id=0", "--config.seed=1",
              "--config.data.data_dir=/host0/glue"],
             ["--config.distributed=true", "--config.process_id", "1", "--config.seed=1",
              "--config.progress=false"]]
    assert sweep.shared_flags(hosts[1]) == ["--config.distributed=true", "--config.seed=1"]
    assert sweep.shared_flags(hosts[0]) == sweep.shared_flags(hosts[1])
    (tmp_path / "sweep.jsonl").write_text(json.dumps(
        {"point": "seed=1", "overrides": {"seed": "1"}, "config": "c.py",
         "extra": hosts[0], "rc": 0}) + "\n")
    assert list(sweep.finished(tmp_path, "c.py", hosts[1], several_hosts=True)) == ["seed=1"]
    assert sweep.finished(tmp_path, "c.py", hosts[1]) == {}   # one host: flags as given
    # but not another setting that changes the run
    assert sweep.finished(tmp_path, "c.py", hosts[1][:-2] + ["--config.seed=2"], True) == {}
    # whether the points run on several hosts: the file's setting, then the flags
    cfg = {"distributed": False}
    assert not sweep.flag_value(cfg, ["--config.seed=1"], "distributed")
    assert sweep.flag_value(cfg, ["--config.distributed=True"], "distributed")
    assert sweep.flag_value(cfg, ["--config.distributed"], "distributed")   # bare: true
    assert not sweep.flag_value({"distributed": True}, ["--config.distributed=false"],
                                "distributed")
    # each point takes every host, so one at a time
    assert sweep.main(["--config", f"{REPO}/configs/default.py", "--workdir",
                       str(tmp_path / "sw"), "--set", "seed=1,2", "--lanes", "2", "--",
                       "--config.distributed=true"]) == 2
    assert "every point runs on all the hosts together" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()


def _as_train_reads(cfg, extra):
    """The config train.py builds from ``extra`` (ml_collections' own flag parsing)."""
    import copy

    from absl import flags
    from ml_collections import config_flags

    argv, values = ["train.py"] + list(extra), flags.FlagValues()
    holder = config_flags.DEFINE_config_dict("config", copy.deepcopy(cfg),
                                             flag_values=values, sys_argv=argv)
    values(argv)
    return holder.value


def test_flags_after_the_double_dash_are_read_as_train_py_reads_them(tmp_path, capsys):
    cfg = sweep.check_keys(f"{REPO}/configs/default.py", [])
    assert not cfg.distributed and cfg.progress and cfg.seed != 3
    # each form ml_collections takes: =value, a separate value (not for a boolean), a bare
    # boolean (true), --noconfig.x for a boolean (false), one dash
    forms = ["--config.seed", "3", "--config.distributed", "--noconfig.progress",
             "-config.log_every=7", "--config.tensorboard", "--config.eval_batch_size=8"]
    assert [(c.key, c.value, c.args) for c in sweep.config_args(forms, cfg)] == [
        ("seed", "3", ("--config.seed", "3")), ("distributed", "true", (forms[2],)),
        ("progress", "false", (forms[3],)), ("log_every", "7", (forms[4],)),
        ("tensorboard", "true", (forms[5],)), ("eval_batch_size", "8", (forms[6],))]
    read = _as_train_reads(cfg, forms)
    assert (read.seed, read.distributed, read.progress, read.log_every, read.tensorboard,
            read.eval_batch_size) == (3, True, False, 7, True, 8)
    # whether the points run on several hosts: as train.py reads it, whatever the form
    for extra in (["--config.distributed"], ["--config.distributed", "--config.seed=1"],
                  ["--config.distributed=true", "--noconfig.distributed"],
                  ["--noconfig.distributed", "-config.distributed=T"],
                  ["--config.distributed", "false"]):   # bare: true, `false` left over
        assert sweep.flag_value(cfg, extra, "distributed") == _as_train_reads(
            cfg, extra).distributed, extra
    with pytest.raises(sweep.SweepError, match="not a boolean"):
        sweep.flag_value(cfg, ["--config.distributed=yes"], "distributed")
    # a bare per-host boolean takes no value: the flag after it is compared, not dropped
    host = ["--config.distributed=true", "--config.tensorboard", "--noconfig.progress",
            "--config.process_id", "1", "--config.log_every", "5",
            "--config.width_depth.learning_rate=1e-3"]
    assert sweep.shared_flags(host, cfg) == ["--config.distributed=true",
                                             "--config.width_depth.learning_rate=1e-3"]
    (tmp_path / "sweep.jsonl").write_text(json.dumps(
        {"point": "seed=1", "overrides": {"seed": "1"}, "config": "c.py", "rc": 0,
         "extra": host[:-1] + ["--config.width_depth.learning_rate=5e-5"]}) + "\n")
    assert sweep.finished(tmp_path, "c.py", host, several_hosts=True, cfg=cfg) == {}
    other_host = ["--config.distributed=true", "--config.process_id=0",
                  "--config.width_depth.learning_rate=5e-5"]
    assert list(sweep.finished(tmp_path, "c.py", other_host, True, cfg)) == ["seed=1"]
    # a bare --config.distributed is several hosts too: --lanes is refused
    base = ["--config", f"{REPO}/configs/default.py", "--workdir", str(tmp_path / "sw"),
            "--set", "seed=1,2"]
    assert sweep.main(base + ["--lanes", "2", "--", "--config.distributed"]) == 2
    assert "every point runs on all the hosts together" in capsys.readouterr().err
    # a boolean's value as the next argument, or a --no form train.py refuses
    for extra, match in [
            (["--config.distributed", "false"], "--config.distributed false (after --): a "
             "boolean field takes its value after '=', --config.distributed=false"),
            (["--noconfig.seed"], "Unknown command line flag 'noconfig.seed'"),
            (["--noconfig.progress=false"], "does not take an argument"),
            (["--config.seed=3", "--config.distributed=yes"], "Non-boolean argument"),
            (["--noconfig.progres"], "has no field 'progres'")]:
        assert sweep.main(base + ["--"] + extra) == 2, extra
        assert match in capsys.readouterr().err, extra
    assert not (tmp_path / "sw").exists()
    assert sweep.main(base + ["--dry-run", "--"] + forms) == 0


def test_a_section_or_a_value_train_py_would_refuse_is_refused_before_any_run(tmp_path,
                                                                            capsys):
    base = ["--config", f"{REPO}/configs/results.py:task=rte", "--workdir",
            str(tmp_path / "sw")]
    for axis, match in [
            ("width=1,2", "--set width: 'width' is a section of"),
            ("seed=1,a", "--set seed=a: train.py would refuse it: flag --config.seed=a: "
                         "invalid literal for int()"),
            ("width_depth.learning_rate=1e-4,fast", "--set width_depth.learning_rate=fast"),
            ("distributed=false,maybe", "Non-boolean argument")]:
        assert sweep.main(base + ["--set", axis]) == 2, axis
        assert match in capsys.readouterr().err, axis
    assert not (tmp_path / "sw").exists()
    cfg = sweep.check_keys(base[1], ["seed", "widths"])
    sweep.check_values(cfg, sweep.parse_axes(
        ["seed=1,2", "widths=(1.0,0.5),(1.0,)", "width_depth.learning_rate=1e-4,5e-5",
         "distributed=false,true"]))
    assert cfg.seed == 42   # checked on a copy


def test_lanes_split_the_cores_or_the_gpus(monkeypatch):
    assert sweep.split_evenly([0, 1, 2, 3, 4], 2) == [(0, 1, 2), (3, 4)]
    assert sweep.split_evenly([0, 1], 2) == [(0,), (1,)]
    # GPUs: CUDA_VISIBLE_DEVICES if set (nvidia-smi otherwise), split between the lanes
    lanes = sweep.make_lanes(2, "cuda", {"CUDA_VISIBLE_DEVICES": "0,1,4,5"})
    assert [dict(ln.env) for ln in lanes] == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                              {"CUDA_VISIBLE_DEVICES": "4,5"}]
    assert lanes[1].cpus is None and "CUDA_VISIBLE_DEVICES=4,5" in lanes[1].describe()
    with pytest.raises(sweep.SweepError, match="needs 3 GPUs; found 2"):
        sweep.make_lanes(3, "cuda", {"CUDA_VISIBLE_DEVICES": "0,1"})
    # cores: this process's affinity, split; a one-core lane also gets one XLA thread
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: {4, 2, 3})
    wide, narrow = sweep.make_lanes(2, "cpu", {"XLA_FLAGS": "--xla_dump_to=/d"})
    assert (wide.cpus, wide.env) == ((2, 3), ())
    assert narrow.cpus == (4,) and dict(narrow.env)["XLA_FLAGS"] == (
        "--xla_dump_to=/d " + sweep.XLA_ONE_THREAD)
    assert narrow.describe() == "lane 1 (cpus 4)"
    with pytest.raises(sweep.SweepError, match="needs 4 cores; this process may use 3"):
        sweep.make_lanes(4, "cpu", {})
    # auto: GPUs where there are any, else cores; one lane pins nothing
    monkeypatch.setattr(sweep, "cuda_devices", lambda env: [])
    assert [ln.cpus for ln in sweep.make_lanes(2, "auto", {})] == [(2, 3), (4,)]
    assert sweep.make_lanes(1, "auto", {}) == [sweep.Lane(0)]
    monkeypatch.setattr(sweep, "cuda_devices", lambda env: ["0", "1"])
    assert dict(sweep.make_lanes(2, "auto", {})[0].env) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert sweep.make_lanes(3, "none", {}) == [sweep.Lane(i) for i in range(3)]
    for bad, match in [((0, "cpu"), "at least 1"), ((2, "tpu"), "--pin must be")]:
        with pytest.raises(sweep.SweepError, match=match):
            sweep.make_lanes(*bad, {})


_JOB = """
import json, os, sys, time
out = sys.argv[1]
t0 = time.time()
try:
    open(out + '.ready', 'w').close()
    time.sleep(float(sys.argv[2]))
except KeyboardInterrupt:
    open(out + '.sigint', 'w').close()
    sys.exit(130)
print('job output')
json.dump({'cpus': sorted(os.sched_getaffinity(0)), 'lane': os.environ.get('LANE'),
           't0': t0, 't1': time.time()}, open(out, 'w'))
sys.exit(int(sys.argv[3]))
"""


def _lanes_for_test():
    cpus = sorted(os.sched_getaffinity(0))
    pins = [(cpus[0],), (cpus[1],)] if len(cpus) >= 2 else [None, None]
    return [sweep.Lane(i, (("LANE", str(i)),), pins[i]) for i in range(2)]


def test_jobs_run_side_by_side_one_per_lane_pinned_and_logged(tmp_path):
    lanes = _lanes_for_test()
    jobs = [(f"j{i}", [sys.executable, "-c", _JOB, str(tmp_path / f"j{i}"), "1.5", rc])
            for i, rc in enumerate(["0", "3", "0"])]
    started = []
    records = sweep.run_jobs(jobs, lanes, dict(os.environ), tmp_path / "logs",
                             on_start=lambda name, lane: started.append((name, lane.index)),
                             poll=0.05)
    assert started[:2] == [("j0", 0), ("j1", 1)] and started[2][0] == "j2"
    by_name = {r["name"]: r for r in records}
    assert {n: r["rc"] for n, r in by_name.items()} == {"j0": 0, "j1": 3, "j2": 0}
    runs = {n: json.loads((tmp_path / n).read_text()) for n in by_name}
    for name, run in runs.items():
        lane = lanes[by_name[name]["lane"]]
        assert run["lane"] == str(lane.index)                 # the lane's environment
        if lane.cpus is not None:
            assert run["cpus"] == list(lane.cpus)             # pinned to the lane's core
        assert (tmp_path / "logs" / f"{name}.log").read_text() == "job output\n"
    assert runs["j1"]["t0"] < runs["j0"]["t1"] and runs["j0"]["t0"] < runs["j1"]["t1"]
    assert runs["j2"]["t0"] >= min(runs["j0"]["t1"], runs["j1"]["t1"])   # a lane freed


@pytest.mark.parametrize("signum,ignored", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                            (signal.SIGTERM, True)])
def test_ctrl_c_or_sigterm_passes_one_sigint_to_each_running_job_and_waits(tmp_path, signum,
                                                                           ignored, ctrl_c):
    # SIGINT ignored, as in a sweep started with `&` from a script: it stays ignored by
    # the sweep, and the points, which would inherit that, still stop on the SIGINT the
    # sweep passes on when a SIGTERM reaches it
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # ctrl_c restores it after
    _interrupt_two_running_jobs(tmp_path, signum)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # handlers restored
    assert signal.getsignal(signal.SIGINT) is (signal.SIG_IGN if ignored else
                                               signal.default_int_handler)


def _interrupt_two_running_jobs(tmp_path, signum):
    jobs = [(f"j{i}", [sys.executable, "-c", _JOB, str(tmp_path / f"j{i}"), "60", "0"])
            for i in range(3)]
    done = []

    def press_ctrl_c():   # once both lanes' jobs run: Ctrl-C at a terminal, or a kill
        deadline = time.time() + 60
        while not all((tmp_path / f"j{i}.ready").exists() for i in range(2)):
            if time.time() > deadline:
                return
            time.sleep(0.05)
        signal.raise_signal(signum)   # handled in this (the main) thread

    t0 = time.time()
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sweep.run_jobs(jobs, _lanes_for_test(), dict(os.environ), tmp_path / "logs",
                       on_done=done.append, poll=0.05)
    assert time.time() - t0 < 50
    assert sorted((r["name"], r["rc"]) for r in done) == [("j0", 130), ("j1", 130)]
    assert (tmp_path / "j0.sigint").exists() and (tmp_path / "j1.sigint").exists()
    assert not (tmp_path / "j2.ready").exists()   # never started


def _grid(metric_by_cell, teacher, task="rte", metric="acc"):
    return {"task": task, "metric": metric, "teacher": {"metric": teacher},
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
    assert cells[(1.0, 1.0)]["mean"] == pytest.approx(62.0)
    assert cells[(1.0, 1.0)]["sd"] == pytest.approx(2.828427)
    assert cells[(0.25, 0.5)]["values"] == pytest.approx([50.0, 54.0])
    assert cells[(0.25, 0.5)]["n"] == 2
    assert g1["teacher"]["mean"] == pytest.approx(71.0)
    assert g1["methods"]["direct"][0]["n"] == 1
    assert g2["missing"] == ["lr=3e-5__seed=2"] and g2["methods"]["dynabert"][0]["n"] == 1
    assert md.startswith("dev acc x100; mean ± sd over seeds")
    assert "| 1 | 1 | 62.0 ± 2.8 (n=2) | 58.0 |" in md
    assert "| 0.25 | 0.5 | 52.0 ± 2.8 (n=2) | 56.0 |" in md
    assert "| mean | | 57.0 (2 cells) | 57.0 (2 cells) |" in md
    assert "no results yet: lr=3e-5__seed=2" in md
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(
        json.dumps(summary))


def test_summary_table_rounds_once(tmp_path):
    # 671 of 872 right is 76.9495: the table must show 76.9. Rounding the statistics to
    # two decimals first (76.95) and then to one printed 77.0.
    points = sweep.expand(sweep.parse_axes(["seed=1,2"]))
    for p, v in zip(points, (671 / 872, 639 / 872)):   # mean 655/872 = 75.1147
        (tmp_path / p.name / "width_depth").mkdir(parents=True)
        (tmp_path / p.name / "width_depth" / "grid.json").write_text(
            json.dumps(_grid({(1.0, 1.0): v, (0.5, 1.0): 671 / 872}, 671 / 872)))
    summary, md = sweep.write_summary(points, tmp_path)
    assert "| teacher | 76.9 ± 0.0 (n=2) |" in md
    assert "| 0.5 | 1 | 76.9 ± 0.0 (n=2) |" in md
    assert "| 1 | 1 | 75.1 ± 2.6 (n=2) |" in md
    (group,) = summary["groups"]
    assert group["teacher"]["values"] == [100 * 671 / 872] * 2


def test_summary_is_in_points_for_squad_as_for_ratio_metrics(tmp_path):
    # SQuAD's EM and F1 are points already (x100 showed a teacher F1 of 88 as 8800.0);
    # GLUE's ratios are scaled. By task (report.points_scale), point by point.
    points = sweep.expand(sweep.parse_axes(["seed=1,2"]))
    for p, f1 in zip(points, (85.0, 86.0)):
        (tmp_path / "squad" / p.name / "width_depth").mkdir(parents=True)
        (tmp_path / "squad" / p.name / "width_depth" / "grid.json").write_text(json.dumps(
            _grid({(1.0, 1.0): f1, (0.5, 1.0): 80.0}, 88.0, "squad", "f1")))
    summary, md = sweep.write_summary(points, tmp_path / "squad")
    assert summary["tasks"] == ["squad"]
    assert md.splitlines()[0].startswith("dev f1 in points, as SQuAD gives them;")
    assert "| teacher | 88.0 ± 0.0 (n=2) |" in md
    assert "| 1 | 1 | 85.5 ± 0.7 (n=2) |" in md and "| 0.5 | 1 | 80.0 ± 0.0 (n=2) |" in md
    assert summary["groups"][0]["teacher"]["values"] == [88.0, 88.0]
    # a sweep over tasks: each point scaled by its own
    points = sweep.expand(sweep.parse_axes(["task=squad,rte"]))
    for p, (grid, task) in zip(points, [((85.0, 88.0), "squad"), ((0.7, 0.75), "rte")]):
        (tmp_path / "tasks" / p.name / "width_depth").mkdir(parents=True)
        (tmp_path / "tasks" / p.name / "width_depth" / "grid.json").write_text(json.dumps(
            _grid({(1.0, 1.0): grid[0]}, grid[1], task, "f1" if task == "squad" else "acc")))
    summary, md = sweep.write_summary(points, tmp_path / "tasks")
    assert summary["tasks"] == ["rte", "squad"]
    assert "in points (x100, SQuAD's as given)" in md.splitlines()[0]
    assert "| teacher | 88.0 | 75.0 |" in md and "| 1 | 1 | 85.0 | 70.0 |" in md


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
def test_sweep_trains_seeds_in_two_lanes_then_skips_them_on_rerun(tiny_bert_dir, tmp_path,
                                                                   capsys):
    teacher = dj.save_pretrained_pytorch(*dj.from_pretrained_pytorch(
        tiny_bert_dir, head="classification", num_labels=2, rng=jax.random.PRNGKey(3)),
        tmp_path / "teacher")
    args = ["--config", f"{REPO}/configs/default.py", "--workdir", str(tmp_path / "sw"),
            "--set", "seed=0,1", "--"] + _flags(tiny_bert_dir, tmp_path, teacher)
    # two lanes: both seeds train at once, each on its share of the cores, logged apart
    i = args.index("--")
    assert sweep.main(args[:i] + ["--lanes", "2"] + args[i:]) == 0
    out = capsys.readouterr().out
    assert out.count("[sweep] 2 point(s) on 2 lanes") == 1
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
        assert 100 * cell["metric"] in s["values"]
    assert "**DynaBERT**" in out
    log = [json.loads(line) for line in (tmp_path / "sw" / "sweep.jsonl").read_text()
           .splitlines()]
    assert sorted((r["point"], r["rc"], r["lane"]) for r in log) == [("seed=0", 0, 0),
                                                                      ("seed=1", 0, 1)]
    for r in log:
        assert "width_depth" in (tmp_path / "sw" / "logs" / f"{r['point']}.log").read_text()
    assert any((tmp_path / "sw" / "xla-cache").iterdir())   # the points' shared cache
    # run again: both points are recorded as done and skipped, the summary is the same
    assert sweep.main(args) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 2
    assert json.loads((tmp_path / "sw" / "summary.json").read_text()) == summary
    # other extra flags are another sweep: not skipped (here: a bad one, which fails)
    assert sweep.main(args[:-len(_flags(tiny_bert_dir, tmp_path, teacher))] +
                      ["--config.stage=widht"]) == 1
    assert "failed points" in capsys.readouterr().err
