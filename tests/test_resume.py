"""A run killed at any point (SIGKILL, then Ctrl-C) resumes where it was, and ends
bit-identical on CPU."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import dynabert_jax as dj
from dynabert_jax import checkpoint as ckpt

from conftest import REPO


def _cmd(tiny_bert_dir, tmp_path, workdir, teacher):
    flags = {
        "model.pretrained": tiny_bert_dir, "teacher_checkpoint": teacher,
        "data.cache_dir": tmp_path / "cache", "data.max_seq_length": 32,
        "data.train_size": 96, "data.dev_size": 32, "width_depth.max_steps": 12,
        "width_depth.batch_size": 8, "width_depth.eval_every": 4, "width.max_steps": 2,
        "width.batch_size": 8, "checkpoint_every": 1, "eval_batch_size": 16,
        "progress": False, "report_memory": False, "rewire.batch_size": 8,
        "widths": "(1.0,0.5)", "depths": "(1.0,0.5)",   # 4 students: quick to compile
    }
    return [sys.executable, str(REPO / "train.py"), f"--workdir={workdir}"] + [
        f"--config.{k}={v}" for k, v in flags.items()]


def _latest_state(workdir):
    store = ckpt.StageCheckpoints(pathlib.Path(workdir) / "width_depth" / "checkpoints")
    try:
        step = store.latest_step()
        # Restore without a template: the raw arrays, exactly as saved.
        import orbax.checkpoint as ocp

        state = store._latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]
        return step, state
    finally:
        store.close()


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(tiny_bert_dir, tmp_path, ctrl_c):
    # (ctrl_c: the train.py started here stops on SIGINT even where the suite inherited
    # it ignored, since exec resets a handled signal and keeps an ignored one)
    teacher = dj.save_pretrained_pytorch(*dj.from_pretrained_pytorch(
        tiny_bert_dir, head="classification", num_labels=2, rng=jax.random.PRNGKey(3)),
        tmp_path / "teacher")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    ref = tmp_path / "ref"
    subprocess.run(_cmd(tiny_bert_dir, tmp_path, ref, teacher), check=True, env=env,
                   cwd=REPO, capture_output=True)

    run = tmp_path / "run"
    latest = run / "width_depth" / "checkpoints" / "latest"
    proc = subprocess.Popen(_cmd(tiny_bert_dir, tmp_path, run, teacher), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        steps_done = [int(p.name) for p in latest.glob("*") if p.name.isdigit()] \
            if latest.is_dir() else []
        if steps_done and max(steps_done) >= 5:
            proc.send_signal(signal.SIGKILL)
            killed_at = max(steps_done)
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None and killed_at < 12, "the run was not killed mid-stage"

    # resumed, then interrupted as Ctrl-C does: a one-line hint and exit status 130
    log = tmp_path / "interrupted.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(_cmd(tiny_bert_dir, tmp_path, run, teacher), env=env,
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        interrupted_at = None
        while time.time() < deadline and proc.poll() is None:
            steps_done = [int(p.name) for p in latest.glob("*") if p.name.isdigit()]
            if max(steps_done) > killed_at:
                proc.send_signal(signal.SIGINT)
                interrupted_at = max(steps_done)
                break
            time.sleep(0.02)
        proc.wait(timeout=120)
    text = log.read_text()
    assert interrupted_at is not None and interrupted_at < 12, "not interrupted mid-stage"
    assert proc.returncode == 130, text[-3000:]
    assert "train.py: interrupted. The same command resumes" in text

    subprocess.run(_cmd(tiny_bert_dir, tmp_path, run, teacher), check=True, env=env,
                   cwd=REPO, capture_output=True)
    step_a, a = _latest_state(ref)
    step_b, b = _latest_state(run)
    assert step_a == step_b == 12
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The best-on-dev selection saw the same evaluations.
    assert (ckpt.StageCheckpoints(ref / "width_depth" / "checkpoints").best_info()["score"]
            == ckpt.StageCheckpoints(run / "width_depth" / "checkpoints").best_info()["score"])


@pytest.mark.parametrize("which", ["latest", "best"])
def test_ctrl_c_while_a_checkpoint_is_written_is_held_then_raised(tmp_path, monkeypatch,
                                                                 which, ctrl_c):
    """Orbax waits for its save threads inside ``except BaseException``, so a Ctrl-C
    landing there would be swallowed and training would go on: the store holds it until
    the checkpoint is written, then raises it."""
    store = ckpt.StageCheckpoints(tmp_path / "c")
    manager = store._latest if which == "latest" else store._best
    real_wait = manager.wait_until_finished

    def wait_as_orbax_does():
        try:
            os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C while the save finishes
            time.sleep(0.2)
            real_wait()
        except BaseException:  # noqa: B036 - what orbax does around its thread joins
            pass

    monkeypatch.setattr(manager, "wait_until_finished", wait_as_orbax_does)
    tree = {"w": np.arange(3, dtype=np.float32)}
    with pytest.raises(KeyboardInterrupt):
        if which == "latest":
            store.save_latest(4, tree)
        else:
            store.save_best(4, tree, {"score": 1.0})
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert (store.latest_step() if which == "latest" else store.best_info()["step"]) == 4
    store.close()


def test_atomic_json_writes_from_two_writers_at_once(tmp_path):
    """Two runs split by width over one workdir write the same JSON files at once (a
    race the old shared ``<file>.tmp`` name lost: one writer's rename found no file).
    Every write must land whole, and no temporary file may be left behind."""
    path = tmp_path / "data.json"
    errors = []

    def writer(k):
        try:
            for i in range(300):
                ckpt.write_json_atomic(path, {"writer": k, "i": i, "pad": "x" * 4096})
        except Exception as e:   # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    last = json.loads(path.read_text())
    assert last["i"] == 299 and last["writer"] in (0, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask)


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "grid.json"
    ckpt.write_json_atomic(path, {"old": 1})

    def no_rename(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk gone"):
        ckpt.write_text_atomic(path, "new")
    monkeypatch.undo()
    assert path.read_text() == '{\n  "old": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json"]
