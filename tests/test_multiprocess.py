"""Training over several processes (``--config.distributed=true``), as on several hosts:
two CPU processes of one device each, sharing a workdir, against one process with two
devices, both with FSDP. Same global batches and the same mesh shape, so the results must be the same
bits, also when both processes are killed mid-stage and started again (as a scheduler
restarts a job that lost a host); and the run's files must be written once, and load on
one device."""
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dynabert_jax import checkpoint as ckpt
from dynabert_jax import trainer

from conftest import REPO

pytestmark = pytest.mark.slow

TESTS = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_file(tmp_path, tiny_bert_dir):
    # the trainer tests' tiny setup, with a 2 x 2 grid to keep the compiles few
    path = tmp_path / "tiny_config.py"
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {TESTS!r})\n"
        "from conftest import tiny_train_config\n\n"
        "def get_config():\n"
        f"    c = tiny_train_config({str(tiny_bert_dir)!r}, __import__('pathlib').Path("
        f"{str(tmp_path)!r}), **{{'final.enabled': False}})\n"
        "    c.widths = (1.0, 0.5)\n"
        "    c.depths = (1.0, 0.5)\n"
        "    c.width_depth.max_steps = 8\n"
        "    c.checkpoint_every = 1\n"
        "    return c\n")
    return path


def _train(config, workdir, *flags, devices=1):
    # FSDP: the embeddings are split over the devices (so over the processes), the
    # small arrays replicated: both kinds are gathered for checksums and checkpoints
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), f"--config={config}",
         f"--workdir={workdir}", "--config.mesh.fsdp=true", *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_processes(config, workdir, *flags, second=()):
    """Processes 0 and 1 of one run, with ``flags`` (``second``: for process 1 alone);
    ``workdir``: their folder, or a folder each."""
    port = _free_port()
    dirs = workdir if isinstance(workdir, (list, tuple)) else (workdir, workdir)
    return [_train(config, dirs[i], "--config.distributed=true",
                   f"--config.coordinator_address=127.0.0.1:{port}",
                   "--config.num_processes=2", f"--config.process_id={i}", *flags,
                   *(second if i == 1 else ()))
            for i in range(2)]


def _kill_mid_stage(procs, latest, at_least=3, timeout=600):
    """SIGKILL every process once the stage's latest checkpoint reaches ``at_least``;
    returns that step."""
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in procs):
        done = [int(d.name) for d in latest.glob("*") if d.name.isdigit()] \
            if latest.is_dir() else []
        if done and max(done) >= at_least:
            for p in reversed(procs):   # the second host first, then the coordinator
                p.kill()
            for p in procs:
                p.wait()
            return max(done)
        time.sleep(0.02)
    outs = [p.communicate(timeout=60)[0] if p.poll() is not None else "" for p in procs]
    for p in procs:
        p.kill()
    raise AssertionError("the run was not killed mid-stage:\n" + "\n".join(
        out[-3000:] for out in outs))


def _wait(procs, timeout=900, status=0):
    """The processes' outputs, once each has exited with ``status`` (2: train.py's
    error)."""
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == status, out[-4000:]
    return outs


def test_two_processes_train_as_one_with_two_devices(tmp_path, tiny_bert_dir, glue_dir):
    config = _config_file(tmp_path, tiny_bert_dir)
    shared = tmp_path / "two_processes"
    # killed in the last stage, after the first three ran whole; the same command resumes
    killed_at = _kill_mid_stage(_two_processes(config, shared),
                                shared / "width_depth" / "checkpoints" / "latest")
    assert killed_at < 8
    outs = _wait(_two_processes(config, shared))
    assert "width_depth: resuming at step" in outs[0], outs[0][-3000:]
    single = tmp_path / "one_process"
    _wait([_train(config, single, devices=2)])

    stages = ("teacher", "rewire", "width", "width_depth")
    assert json.loads((shared / "grid.json").read_text()) == \
        json.loads((single / "grid.json").read_text())
    for stage in stages:
        # written on 2 devices, loaded here on 1 (the saved devices need not exist)
        two, one = trainer.load_run(shared, stage), trainer.load_run(single, stage)
        for a, b in zip(jax.tree_util.tree_leaves(two.params),
                        jax.tree_util.tree_leaves(one.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=stage)
    # with no target given, at the shapes it was saved with
    saved, _ = ckpt.load_params(shared / "width_depth" / "checkpoints")
    jax.tree_util.tree_map(np.testing.assert_array_equal, saved, two.params)
    # the logs are the first process's alone: one row per step, as in one process, and
    # the rows the killed run logged after its last checkpoint are not there twice
    for stage, n in (("teacher", 2), ("width", 2), ("width_depth", 8)):
        rows = (shared / stage / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(r)["step"] for r in rows if "loss" in json.loads(r)]
        assert steps == list(range(1, n + 1)), stage
    # one row per stage and call: the killed call finished three, the second all four
    lines = (shared / "stages.jsonl").read_text().splitlines()
    assert [json.loads(x)["stage"] for x in lines] == list(stages[:3] + stages)


def test_separate_workdirs_stop_with_an_error_not_a_hang(tmp_path, tiny_bert_dir):
    # each process its own folder, as on hosts without a shared file system: orbax's
    # first checkpoint would wait forever for the other process's files
    config = _config_file(tmp_path, tiny_bert_dir)
    outs = _wait(_two_processes(config, [tmp_path / "host0", tmp_path / "host1"],
                                "--config.shared_workdir_timeout=1"), status=2)
    for out in outs:
        assert "is not one folder shared by every process: process(es) 1 did not see" in out
    assert not list((tmp_path / "host0").glob(".shared-workdir-check-*"))
    assert not (tmp_path / "host0" / "config.json").exists()   # stopped before writing


def test_processes_with_other_flags_or_data_stop_with_an_error(tmp_path, tiny_bert_dir,
                                                               tiny_teacher_dir, glue_dir):
    config = _config_file(tmp_path, tiny_bert_dir)
    # process 1's copy of SST-2 has every training label flipped; process 0 reads the
    # real files. Then the same files, but process 1 another learning rate.
    other = tmp_path / "glue"
    (other / "SST-2").mkdir(parents=True)
    (other / "SST-2" / "dev.tsv").write_bytes((glue_dir / "SST-2" / "dev.tsv").read_bytes())
    head, *rows = (glue_dir / "SST-2" / "train.tsv").read_text().splitlines()
    flipped = [r[:-1] + str(1 - int(r[-1])) for r in rows]
    (other / "SST-2" / "train.tsv").write_text("\n".join([head, *flipped]) + "\n")
    for extra, expected in (
            ((f"--config.data.data_dir={other}",
              "--config.data.cache_dir=" + str(tmp_path / "cache1")),
             "on this process (process 1) the training data."),
            (("--config.width.learning_rate=0.001",),
             "config.width.learning_rate = 0.001 where process 0 has 2e-05"),
            # the same architecture, other weights: found when the teacher stage loads them
            (("--config.model.pretrained=" + str(tiny_teacher_dir), "--config.progress=true",
              "--config.log_every=5"),
             "on this process (process 1) the weights of config.model.pretrained.")):
        shared = tmp_path / f"run{len(extra)}"
        outs = _wait(_two_processes(config, shared, second=extra), status=2)
        for out in outs:
            assert "process(es) 1 run other settings or data than process 0" in out, out[-3000:]
        assert expected in outs[1], outs[1][-3000:]
        assert "see their errors" in outs[0]
        # the config and data are checked before anything is written
        assert (shared / "config.json").exists() == ("pretrained" in extra[0]), extra


def test_two_processes_rewire_a_teacher_checkpoint(tmp_path, tiny_bert_dir, tiny_teacher_dir):
    # the teacher read from a Hugging Face folder by every process (not restored from the
    # teacher stage): the rewired network is saved by all of them, as in one process
    config = _config_file(tmp_path, tiny_bert_dir)
    flags = ("--config.stage=rewire", f"--config.teacher_checkpoint={tiny_teacher_dir}")
    shared = tmp_path / "two_processes"
    _wait(_two_processes(config, shared, *flags))
    single = tmp_path / "one_process"
    _wait([_train(config, single, *flags, devices=2)])
    two, _ = ckpt.load_params(shared / "rewire" / "checkpoints")
    one, _ = ckpt.load_params(single / "rewire" / "checkpoints")
    jax.tree_util.tree_map(np.testing.assert_array_equal, two, one)
    np.testing.assert_array_equal(np.load(shared / "rewire" / "importance.npz")["head"],
                                  np.load(single / "rewire" / "importance.npz")["head"])


def test_two_processes_trim_and_group_batches_as_one(tmp_path, tiny_bert_dir):
    # batches grouped by length and trimmed: every process must cut the same global
    # batch to the same length before taking its rows, or their shapes would differ
    config = _config_file(tmp_path, tiny_bert_dir)
    flags = ("--config.stage=teacher", "--config.teacher.max_steps=4",
             "--config.data.max_seq_length=64", "--config.data.group_by_length=true",
             "--config.data.pad_to_multiple_of=32")
    shared, single = tmp_path / "two_processes", tmp_path / "one_process"
    _wait(_two_processes(config, shared, *flags))
    _wait([_train(config, single, *flags, devices=2)])
    logged = [[json.loads(r) for r in (run / "teacher" / "metrics.jsonl").read_text()
               .splitlines() if "loss" in json.loads(r)] for run in (shared, single)]
    assert [r["seq_len"] for r in logged[0]] == [32] * 4   # trimmed from 64
    assert [r["loss"] for r in logged[0]] == [r["loss"] for r in logged[1]]
    two, one = trainer.load_run(shared, "teacher"), trainer.load_run(single, "teacher")
    jax.tree_util.tree_map(np.testing.assert_array_equal, two.params, one.params)


def test_a_sweep_started_on_two_hosts_trains_each_point_once(tmp_path, tiny_bert_dir):
    # the same sweep command on each host, with that host's process id after `--`: every
    # point is one run over both processes, and the hosts skip the same finished points
    config = _config_file(tmp_path, tiny_bert_dir)
    folder, port = tmp_path / "sweep", _free_port()

    def sweeps():
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=1")
        return [subprocess.Popen(
            [sys.executable, "-m", "dynabert_jax.sweep", "--config", str(config),
             "--workdir", str(folder), "--set", "seed=1,2", "--",
             "--config.mesh.fsdp=true", "--config.width_depth.max_steps=2",
             "--config.distributed=true", f"--config.coordinator_address=127.0.0.1:{port}",
             "--config.num_processes=2", f"--config.process_id={i}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]

    _wait(sweeps())
    records = [json.loads(x) for x in (folder / "sweep.jsonl").read_text().splitlines()]
    assert sorted((r["point"], r["rc"]) for r in records) == [
        ("seed=1", 0), ("seed=1", 0), ("seed=2", 0), ("seed=2", 0)]
    # both seeds in the summary, each cell of the 2 x 2 grid with two values
    (group,) = json.loads((folder / "summary.json").read_text())["groups"]
    assert group["seeds"] == ["1", "2"]
    assert sorted((c["width"], c["depth"], c["n"]) for c in group["methods"]["dynabert"]) \
        == [(0.5, 0.5, 2), (0.5, 1.0, 2), (1.0, 0.5, 2), (1.0, 1.0, 2)]
    for seed in ("1", "2"):
        assert json.loads((folder / f"seed={seed}" / "config.json").read_text())["seed"] \
            == int(seed)
    # host 1 lost before it recorded anything: both hosts still skip both points (had
    # host 1 run seed=1 again alone, it would have waited for a process 0 that never came)
    (folder / "sweep.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in records if "--config.process_id=0" in r["extra"]))
    outs = _wait(sweeps(), timeout=300)
    for out in outs:
        assert out.count("done before, skipped") == 2, out[-3000:]
