"""Run one training config over a grid of overrides (seeds, learning rates, ...) and
summarise the dev metrics of every (width, depth) cell across the points.

    python -m dynabert_jax.sweep --config configs/results.py:task=mrpc,train_size=0 \\
        --workdir runs/sweeps/mrpc --set seed=42,1,2 --set width_depth.learning_rate=1e-4,5e-5

Each ``--set KEY=V1,V2,...`` is one axis (a ``--config.KEY`` override of ``train.py``,
values split on commas outside brackets, so ``--set 'widths=(1.0,0.5),(1.0,)'`` has two);
the points are the axes' cartesian product, the first axis outermost. Every point trains
with ``train.py`` in a process of its own, in ``<workdir>/<KEY=V__KEY=V>``; arguments after
``--`` go to every run. The points share a compilation cache, ``<workdir>/xla-cache``
(unless a cache folder is given or ``--no-shared-cache``), so a program is compiled once
per sweep, not once per point. ``--lanes N`` trains N points at once, each lane pinned
to its share of the cores (``--pin cpu``) or GPUs (``--pin cuda``), with each point's
output in ``<workdir>/logs/<point>.log``. A sweep is resumable like a run: start the
same command again and finished points are skipped (``<workdir>/sweep.jsonl`` records
them), an interrupted one resumes from its checkpoints, and a failed one is tried again.
On several hosts, the same sweep runs on each with ``-- --config.distributed=true ...``:
every point is one run over all of them, and they skip the same finished points.

The summary (``<workdir>/summary.json`` and ``summary.md``, also printed) reads each
point's grids (DynaBERT, DynaBERT_W, direct fine-tuning, no rewiring, final fine-tuning:
whichever it trained) and its teacher. Points that differ only in ``seed`` form one group
whose cells give the mean, standard deviation (n - 1), min and max over the seeds; every
other point is a group of its own. ``--summary-only`` rewrites the summary from what is
on disk.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dynabert_jax.checkpoint import write_json_atomic, write_text_atomic
from dynabert_jax.results import METHODS, grid_cells, read_jsonl

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED_KEY = "seed"


class SweepError(ValueError):
    """A malformed ``--set`` or a sweep folder that cannot be summarised."""


# ---------------------------------------------------------------------------------------
# Points


def split_values(text: str) -> List[str]:
    """``"1,2"`` -> ``["1", "2"]``; commas inside ``()``/``[]``/``{}`` do not split."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise SweepError(f"unbalanced brackets in {text!r}")
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise SweepError(f"unbalanced brackets in {text!r}")
    out.append("".join(cur).strip())
    if any(not v for v in out):
        raise SweepError(f"an empty value in {text!r}")
    return out


def parse_axes(specs: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``["seed=1,2", "teacher.learning_rate=2e-5"]`` -> ``[(key, values), ...]``."""
    axes, seen = [], set()
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if key.startswith("config."):
            key = key[len("config."):]
        if not sep or not key or not values.strip():
            raise SweepError(f"--set {spec!r}: write KEY=V1,V2,... (a config field and its "
                             f"values)")
        if key in seen:
            raise SweepError(f"--set names {key!r} twice: give all its values in one --set")
        seen.add(key)
        vals = split_values(values)
        if len(set(vals)) != len(vals):
            raise SweepError(f"--set {spec!r} repeats a value")
        axes.append((key, vals))
    return axes


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the sweep: its overrides, in axis order."""

    overrides: Tuple[Tuple[str, str], ...]

    @property
    def name(self) -> str:
        """The point's folder name, ``KEY=V__KEY=V``; in values, characters other than
        letters, digits, ``.``, ``-`` and ``+`` become ``_`` (``(1.0,0.5)`` -> ``1.0_0.5``)."""
        if not self.overrides:
            return "base"
        safe = lambda v: re.sub(r"[^A-Za-z0-9.+-]+", "_", v).strip("_") or "_"
        return "__".join(f"{k}={safe(v)}" for k, v in self.overrides)

    @property
    def group(self) -> Tuple[Tuple[str, str], ...]:
        """The overrides other than the seed: the points a summary averages over."""
        return tuple((k, v) for k, v in self.overrides if k != SEED_KEY)

    @property
    def seed(self) -> Optional[str]:
        return dict(self.overrides).get(SEED_KEY)


def expand(axes: Sequence[Tuple[str, Sequence[str]]]) -> List[Point]:
    """The cartesian product of the axes, the first one outermost."""
    keys = [k for k, _ in axes]
    points = [Point(tuple(zip(keys, combo)))
              for combo in itertools.product(*(vals for _, vals in axes))]
    names = [p.name for p in points]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise SweepError(f"values that differ only in punctuation share a folder: {clash}")
    return points


_CONFIG_ARG = re.compile(r"--?(no)?config\.([^=]*)(=.*)?$", re.S)


@dataclasses.dataclass(frozen=True)
class ConfigArg:
    """One flag of train.py's command line as its parser reads it: ``key`` the config
    field (None for an argument that is not a ``--config.x`` flag), ``value`` the text
    it sets (``"true"``/``"false"`` for a bare or ``--no`` boolean; None where train.py
    finds none: it refuses the flag), ``args`` the arguments it spans, ``boolean``
    whether the field is one of ml_collections' boolean-style flags."""

    key: Optional[str]
    value: Optional[str]
    args: Tuple[str, ...]
    boolean: bool = False


def _field_type(cfg, key: str):
    """ml_collections' type of config field ``key`` (what picks the parser of its
    ``--config.key`` flag), or None where there is no config or it lacks the field."""
    if cfg is None:
        return None
    from ml_collections.config_flags import config_path

    try:
        return config_path.get_type(key, cfg)
    except (KeyError, AttributeError, IndexError, ValueError, TypeError):
        return None


def config_args(extra: Sequence[str], cfg=None) -> List[ConfigArg]:
    """``extra`` split as train.py's parser (absl, with ml_collections' ``--config.x``
    flags) splits it, so that a flag and its value are found, compared or dropped
    together: ``--config.x=v``; ``--config.x v``, unless ``x`` is a boolean field
    (type ``bool``, or ``object``: ml_collections lets both be bare), for which a bare
    ``--config.x`` is true and ``--noconfig.x`` false, and the next argument is not its
    value (train.py refuses it as an unexpected argument); one dash works as two. The
    field's type comes from ``cfg``, the loaded config; without it, or for a field it
    lacks (train.py refuses that flag anyway), a bare flag takes the next argument as
    its value unless that starts with ``-``."""
    out, i = [], 0
    while i < len(extra):
        a = extra[i]
        i += 1
        m = _CONFIG_ARG.match(a)
        if not m or not m.group(2):
            out.append(ConfigArg(None, None, (a,)))
            continue
        negated, key, eq = m.group(1) is not None, m.group(2), m.group(3)
        ftype = _field_type(cfg, key)
        boolean = ftype is bool or ftype is object or (ftype is None and negated)
        if negated:   # absl: only a boolean flag has a --no form, and it takes no value
            out.append(ConfigArg(key, "false" if boolean and eq is None else None, (a,),
                                 boolean))
        elif eq is not None:
            out.append(ConfigArg(key, eq[1:], (a,), boolean))
        elif boolean:
            out.append(ConfigArg(key, "true", (a,), True))
        elif i < len(extra) and (ftype is not None or not extra[i].startswith("-")):
            out.append(ConfigArg(key, extra[i], (a, extra[i])))
            i += 1
        else:
            out.append(ConfigArg(key, None, (a,)))
    return out


def extra_keys(extra: Sequence[str], cfg=None) -> List[str]:
    """The config fields that arguments for train.py (after ``--``) override:
    ``--config.width.learning_rate=1e-4``, ``--config.seed 3``, ``--noconfig.progress``
    (see `config_args`)."""
    return [c.key for c in config_args(extra, cfg) if c.key is not None]


def check_keys(config: str, keys: Sequence[str], extra: Sequence[str] = ()):
    """`SweepError` if the config file does not load, or a swept key or a field that
    ``extra`` overrides is not in it: a typo would otherwise fail every point, each
    after starting its own process. The file is loaded as train.py loads it; returns
    the loaded config."""
    import importlib.util

    path, _, arg = config.partition(":")
    if not pathlib.Path(path).is_file():
        raise SweepError(f"--config {config}: no such file {path}")
    added = [str(REPO_ROOT)] if str(REPO_ROOT) not in sys.path else []
    sys.path[:0] = added
    try:
        spec = importlib.util.spec_from_file_location("_dynabert_sweep_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cfg = module.get_config(arg) if arg else module.get_config()
    except Exception as e:   # noqa: BLE001 - whatever it is, every point would fail on it
        raise SweepError(f"--config {config} does not load: {type(e).__name__}: {e}"
                         ) from None
    finally:
        for p in added:
            sys.path.remove(p)
    for key, where in [(k, f"--set {k}") for k in keys] + [
            (k, f"--config.{k} (after --)") for k in extra_keys(extra, cfg)]:
        node = cfg
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node.keys():
                raise SweepError(f"{where}: {path} has no field {key!r}")
            node = node[part]
        if where.startswith("--set") and hasattr(node, "keys"):
            # train.py would take only a dict literal for it: every point would fail
            field = f"{key}.{next(iter(node.keys()), 'x')}"
            raise SweepError(f"{where}: {key!r} is a section of {path}, not a field; sweep "
                             f"a field of it (--set {field}=V1,V2)")
    return cfg


def _parse_like_train(cfg, args: Sequence[str], where: str) -> None:
    """`SweepError` if ``--config.x`` flags ``args`` do not parse over ``cfg`` as
    train.py parses them (its ``DEFINE_config_file`` is ml_collections' config flag too:
    the field type's parser, a boolean's forms, the order of overrides). On a copy,
    with flags of its own: nothing here changes ``cfg`` or absl's global flags."""
    import copy

    from absl import flags
    from ml_collections import config_flags

    argv = ["train.py"] + list(args)
    values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict("config", copy.deepcopy(cfg), flag_values=values,
                                        sys_argv=argv)
        values(argv)
    except Exception as e:   # noqa: BLE001 - whatever it is, train.py fails on it too
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise SweepError(f"{where}: train.py would refuse it: "
                         f"{lines[-1] if lines else type(e).__name__}") from None


def check_values(cfg, axes: Sequence[Tuple[str, Sequence[str]]],
                 extra: Sequence[str] = ()) -> None:
    """`SweepError` if a swept value, or a ``--config.x`` flag after ``--``, would not
    parse in train.py (``--set seed=a``, ``--config.distributed=yes``), or a boolean
    field is given its value as the next argument (``--config.distributed false`` is
    true, and leaves ``false`` over for train.py to refuse): every point would fail on
    it, each after starting its own process. ``cfg``: what `check_keys` loaded; a value
    is checked as the points pass it, ``--config.KEY=VALUE``."""
    for key, values in axes:
        for v in values:
            _parse_like_train(cfg, [f"--config.{key}={v}"], f"--set {key}={v}")
    items = config_args(extra, cfg)
    for prev, item in zip(items, items[1:]):
        if (prev.boolean and prev.key is not None and "=" not in prev.args[0]
                and item.key is None and not item.args[0].startswith("-")):
            raise SweepError(
                f"{prev.args[0]} {item.args[0]} (after --): a boolean field takes its "
                f"value after '=', --config.{prev.key}={item.args[0]}; as two arguments "
                f"train.py reads {prev.args[0]} alone and refuses {item.args[0]!r}")
    flags_ = [a for c in items if c.key is not None for a in c.args]
    if flags_:
        _parse_like_train(cfg, flags_, "the --config flags after --")


CACHE_KEY = "compilation_cache_dir"


def command(point: Point, config: str, workdir: pathlib.Path,
            extra: Sequence[str] = (), shared_cache: bool = True) -> List[str]:
    """The ``train.py`` command line of one point. With ``shared_cache`` (and no cache
    folder named in the overrides or `extra`), every point compiles into and loads from
    ``<workdir>/xla-cache``: points that differ only in values (seeds, rates) build the
    same programs, so only the first point compiles them."""
    cmd = ([sys.executable, str(REPO_ROOT / "train.py"), f"--config={config}",
            f"--workdir={workdir / point.name}"]
           + [f"--config.{k}={v}" for k, v in point.overrides] + list(extra))
    named = any(k == CACHE_KEY for k, _ in point.overrides) or \
        any(a.startswith(f"--config.{CACHE_KEY}") for a in extra)
    if shared_cache and not named:
        cmd.append(f"--config.{CACHE_KEY}={workdir / 'xla-cache'}")
    return cmd


# ---------------------------------------------------------------------------------------
# Lanes: points trained side by side, each on its own cores or GPUs

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@dataclasses.dataclass(frozen=True)
class Lane:
    """Where one lane's points run: extra environment variables and, for CPU lanes, the
    cores its processes are pinned to (``os.sched_setaffinity``)."""

    index: int
    env: Tuple[Tuple[str, str], ...] = ()
    cpus: Optional[Tuple[int, ...]] = None

    def describe(self) -> str:
        where = [f"cpus {','.join(map(str, self.cpus))}"] if self.cpus is not None else []
        where += [f"{k}={v}" for k, v in self.env if k == "CUDA_VISIBLE_DEVICES"]
        return f"lane {self.index}" + (f" ({'; '.join(where)})" if where else "")


def split_evenly(items: Sequence, n: int) -> List[Tuple]:
    """``n`` contiguous chunks whose sizes differ by at most one, larger first."""
    size, rest = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < rest)
        out.append(tuple(items[start:end]))
        start = end
    return out


def cuda_devices(env: Mapping[str, str]) -> List[str]:
    """The GPUs a sweep may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else the ones
    ``nvidia-smi -L`` lists (JAX is not imported: it would claim GPU memory here)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines()
                                            if l.startswith("GPU "))]


def make_lanes(lanes: int, pin: str, env: Mapping[str, str]) -> List[Lane]:
    """``lanes`` lanes. ``pin``: ``cpu`` splits this process's cores between them (a
    one-core lane also gets XLA's one-thread flags), ``cuda`` splits the GPUs
    (``CUDA_VISIBLE_DEVICES``), ``none`` runs them side by side unpinned, ``auto`` is
    ``cuda`` where GPUs are found, else ``cpu``; with one lane ``auto`` pins nothing."""
    if lanes < 1:
        raise SweepError(f"--lanes must be at least 1, got {lanes}")
    if pin not in ("auto", "cpu", "cuda", "none"):
        raise SweepError(f"--pin must be auto, cpu, cuda or none, got {pin!r}")
    if pin == "auto":
        pin = "none" if lanes == 1 else ("cuda" if cuda_devices(env) else "cpu")
    if pin == "none":
        return [Lane(i) for i in range(lanes)]
    if pin == "cpu":
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < lanes:
            raise SweepError(f"--lanes {lanes} with --pin cpu needs {lanes} cores; this "
                             f"process may use {len(cpus)}")
        out = []
        for i, chunk in enumerate(split_evenly(cpus, lanes)):
            extra = ()
            if len(chunk) == 1:
                flags = (env.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
                extra = (("XLA_FLAGS", flags),)
            out.append(Lane(i, extra, chunk))
        return out
    gpus = cuda_devices(env)
    if len(gpus) < lanes:
        raise SweepError(f"--lanes {lanes} with --pin cuda needs {lanes} GPUs; found "
                         f"{len(gpus)} (CUDA_VISIBLE_DEVICES or nvidia-smi -L)")
    return [Lane(i, (("CUDA_VISIBLE_DEVICES", ",".join(chunk)),))
            for i, chunk in enumerate(split_evenly(gpus, lanes))]


# ---------------------------------------------------------------------------------------
# Running


def shared_flags(extra: Sequence[str], cfg=None) -> List[str]:
    """``extra`` less the flags that may differ between the hosts of one run (their
    process id, their own paths and reporting: ``trainer.PER_PROCESS``), so that the
    sweeps started on several hosts recognise each other's records. A flag goes with
    the value it spans as train.py reads it (`config_args`, with ``cfg``'s field types):
    a bare boolean such as ``--config.tensorboard`` takes no value, so the next flag,
    which may set what changes a run, stays."""
    from dynabert_jax.trainer import PER_PROCESS

    return [a for c in config_args(extra, cfg) if c.key not in PER_PROCESS for a in c.args]


def flag_value(cfg, extra: Sequence[str], key: str) -> bool:
    """The value of top-level boolean config field ``key`` once ``extra`` overrides it
    (the last flag that sets it, in any of the forms train.py takes: ``=true``, a bare
    ``--config.key``, ``--noconfig.key``), for the fields the sweep itself must know
    (``distributed``)."""
    from absl import flags

    value = cfg.get(key) if cfg is not None else None
    for c in config_args(extra, cfg):
        if c.key == key and c.value is not None:
            value = c.value
    if isinstance(value, str):
        try:
            return flags.BooleanParser().parse(value)
        except ValueError:
            raise SweepError(f"--config.{key}={value}: not a boolean (true or false)"
                             ) from None
    return bool(value)


def finished(workdir: pathlib.Path, config: str, extra: Sequence[str],
             several_hosts: bool = False, cfg=None) -> Dict[str, dict]:
    """Points whose last record says done (exit status 0) with this config and these
    extra flags. ``several_hosts``: flags that may differ between the hosts are not
    compared, so every host reads every host's records and all skip the same points
    (``cfg``, the loaded config, tells which flags take a value: `shared_flags`)."""
    same = (lambda e: shared_flags(e, cfg)) if several_hosts else list
    done = {}
    for rec in read_jsonl(workdir / "sweep.jsonl"):
        if rec.get("config") != config or same(rec.get("extra", [])) != same(extra):
            continue
        if rec.get("rc") == 0:
            done[rec["point"]] = rec
        else:
            done.pop(rec.get("point"), None)
    return done


#: How a point's process starts: SIGINT back to its default (so the one the sweep
#: passes on stops it cleanly, even where the sweep itself ignores SIGINT), the lane's
#: cores if it has any, then the point's command in its place. (A ``preexec_fn`` would
#: run Python between fork and exec in a multithreaded parent.)
_START = "\n".join([
    "import os, signal, sys",
    "signal.signal(signal.SIGINT, signal.SIG_DFL)",
    "if {cpus}:",
    "    os.sched_setaffinity(0, {cpus})",
    "os.execvp(sys.argv[1], sys.argv[1:])"])


@dataclasses.dataclass
class _Job:
    name: str
    lane: Lane
    proc: subprocess.Popen
    start: float
    log: Optional[pathlib.Path]


def run_jobs(jobs: Sequence[Tuple[str, List[str]]], lanes: Sequence[Lane],
             env: Mapping[str, str], log_dir: Optional[pathlib.Path] = None,
             on_start=None, on_done=None, poll: float = 0.5) -> List[dict]:
    """Run the ``(name, command)`` jobs in order, at most one per lane at a time; returns
    ``{"name", "rc", "seconds", "lane", "log"}`` per job in the order they end; calls
    ``on_start(name, lane)`` as each starts and ``on_done(record)`` as each ends. With
    ``log_dir`` each job's output goes to ``<log_dir>/<name>.log`` (else it shares this
    terminal). A job runs in a session of its own, so Ctrl-C reaches the sweep only; on
    it (or SIGTERM, or SIGHUP when the terminal closes; a signal this process ignores
    stays ignored) the sweep passes one SIGINT to every running job, waits for them to
    stop and raises KeyboardInterrupt. No job is left running unwatched, to clash with
    a rerun of its point."""
    pending = list(jobs)
    free = list(lanes)
    running: List[_Job] = []
    records: List[dict] = []

    def start(name: str, cmd: List[str], lane: Lane) -> _Job:
        log = None
        out = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            log = log_dir / f"{name}.log"
            out = open(log, "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _START.format(cpus=list(lane.cpus or []))] + list(cmd),
                env={**env, **dict(lane.env)}, stdout=out,
                stderr=subprocess.STDOUT if out else None, start_new_session=True)
        finally:
            if out is not None:
                out.close()
        return _Job(name, lane, proc, time.time(), log)

    def end(job: _Job, rc: int) -> None:
        running.remove(job)
        free.append(job.lane)
        free.sort(key=lambda ln: ln.index)
        rec = {"name": job.name, "rc": rc, "seconds": round(time.time() - job.start, 1),
               "lane": job.lane.index, "log": str(job.log) if job.log else None}
        records.append(rec)
        if on_done is not None:
            on_done(rec)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # A signal this process ignores stays ignored (``nohup`` ignores SIGHUP, a script's
    # ``cmd &`` SIGINT): the sweep goes on, as whoever started it asked.
    restore = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                restore[sig] = signal.signal(sig, interrupt)
    try:
        while pending or running:
            while pending and free:
                name, cmd = pending.pop(0)
                lane = free.pop(0)
                if on_start is not None:
                    on_start(name, lane)
                running.append(start(name, cmd, lane))
            for job in list(running):
                rc = job.proc.poll()
                if rc is not None:
                    end(job, rc)
            if running:
                time.sleep(poll)
    except KeyboardInterrupt:
        for job in running:
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGINT)
        deadline = time.time() + 120
        for job in list(running):
            try:
                rc = job.proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                job.proc.kill()
                rc = job.proc.wait()
            end(job, rc)
        raise
    finally:
        for job in running:   # only after an unexpected error: leave no orphans
            if job.proc.poll() is None:
                job.proc.kill()
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    return records


def run_sweep(points: Sequence[Point], config: str, workdir, extra: Sequence[str] = (),
              rerun: bool = False, env: Optional[Mapping[str, str]] = None,
              shared_cache: bool = True, lanes: int = 1, pin: str = "auto",
              several_hosts: bool = False, cfg=None) -> List[dict]:
    """Train every point not finished yet, one process each, ``lanes`` at a time (see
    `make_lanes`); returns one record per point (``point``, ``rc``, ``seconds``;
    ``skipped`` for points already done). With more than one lane each point's output
    goes to ``<workdir>/logs/<point>.log``. ``several_hosts``: this sweep is one of the
    same sweeps started on every host of a ``distributed`` run (see `finished`; ``cfg``
    the loaded config, for the flags' types)."""
    workdir = pathlib.Path(workdir)
    env = dict(env or os.environ)
    if several_hosts and lanes > 1:
        raise SweepError(f"--lanes {lanes} with --config.distributed=true: every point "
                         "runs on all the hosts together, so they train one point at a "
                         "time; leave out --lanes")
    lane_list = make_lanes(lanes, pin, env)
    workdir.mkdir(parents=True, exist_ok=True)
    done = {} if rerun else finished(workdir, config, extra, several_hosts, cfg)
    records, jobs, number = [], [], {}
    for i, p in enumerate(points, 1):
        number[p.name] = i
        if p.name in done and done[p.name].get("overrides") == dict(p.overrides):
            print(f"[sweep {i}/{len(points)}] {p.name}: done before, skipped", flush=True)
            records.append({**done[p.name], "skipped": True})
        else:
            jobs.append((p.name, command(p, config, workdir, extra, shared_cache)))
    by_name = {p.name: p for p in points}
    log_dir = workdir / "logs" if len(lane_list) > 1 else None
    if jobs and len(lane_list) > 1:
        print(f"[sweep] {len(jobs)} point(s) on {len(lane_list)} lanes: "
              f"{'; '.join(ln.describe() for ln in lane_list)}; logs in {log_dir}", flush=True)

    def on_done(r: dict) -> None:
        p = by_name[r["name"]]
        rec = {"point": p.name, "overrides": dict(p.overrides), "config": config,
               "extra": list(extra), "rc": r["rc"], "seconds": r["seconds"],
               "time": round(time.time(), 1)}
        if log_dir is not None:
            rec.update(lane=r["lane"], log=r["log"])
        with open(workdir / "sweep.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        tag = f"[sweep {number[p.name]}/{len(points)}] {p.name}"
        if r["rc"] == 0:
            print(f"{tag}: done in {r['seconds']:.0f} s", flush=True)
        elif r["rc"] in (130, -signal.SIGINT):
            print(f"{tag}: interrupted (exit {r['rc']}); it resumes from its checkpoints",
                  flush=True)
        else:
            print(f"{tag}: failed (exit {r['rc']}); going on", flush=True)
            if r["log"]:
                tail = pathlib.Path(r["log"]).read_text(errors="replace").splitlines()[-5:]
                print("\n".join(f"    {line}" for line in tail), flush=True)
        records.append(rec)

    commands = dict(jobs)

    def on_start(name: str, lane: Lane) -> None:
        where = f" on {lane.describe()}" if log_dir is not None else ""
        print(f"[sweep {number[name]}/{len(points)}] {name}{where}: "
              f"{' '.join(commands[name][1:])}", flush=True)

    run_jobs(jobs, lane_list, env, log_dir, on_start, on_done)
    return records


# ---------------------------------------------------------------------------------------
# Summary


def read_point(path: pathlib.Path) -> dict:
    """A point's task, teacher metric and its grids' primary metric per cell (absent
    grids left out), as the grids hold them (ratios, SQuAD's points):
    ``{"task", "metric", "teacher", "methods": {method: {(w, d): value}}}``."""
    out = {"task": None, "metric": None, "teacher": None, "methods": {}}
    for method, (rel, _) in METHODS.items():
        f = path / rel
        if f.is_file():
            grid = json.loads(f.read_text())
            out["methods"][method] = {k: c["metric"] for k, c in grid_cells(grid).items()}
            out["metric"] = grid.get("metric", out["metric"])
            out["task"] = out["task"] or grid.get("task")
            if grid.get("teacher") and out["teacher"] is None:
                out["teacher"] = grid["teacher"]["metric"]
    teacher_eval = path / "teacher" / "eval.json"
    if out["teacher"] is None and teacher_eval.is_file() and (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        out["task"] = out["task"] or cfg.get("task")
        if cfg.get("task") != "squad":
            import ml_collections

            from dynabert_jax.trainer import task_from_config

            metric = task_from_config(ml_collections.ConfigDict(cfg)).primary_metric
            out["teacher"] = json.loads(teacher_eval.read_text())["metrics"].get(metric)
            out["metric"] = out["metric"] or metric
    return out


def _stats(values: Sequence[float]) -> dict:
    """Mean, sd, min, max and the values (in points already: `summarize`), unrounded:
    rounding here and again when printing would show 671/872 = 76.9495 as 76.95, then
    as 77.0 instead of 76.9."""
    vals = list(values)
    return {"mean": statistics.mean(vals),
            "sd": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}


def summarize(points: Sequence[Point], workdir) -> dict:
    """Group the points by their non-seed overrides; per group, per method and cell, the
    statistics of the dev metric in points over the group's points that have it: each
    point's values times `report.points_scale` of its task (x100 for ratios; SQuAD's EM
    and F1 are points already, and x100 showed an F1 of 88 as 8800). ``tasks``: the
    tasks the points' grids name (one, unless the sweep sweeps ``task``)."""
    from dynabert_jax.report import points_scale

    workdir = pathlib.Path(workdir)
    groups: Dict[Tuple, List[Point]] = {}
    for p in points:
        groups.setdefault(p.group, []).append(p)
    out_groups, metric, tasks = [], None, set()
    for key, members in groups.items():
        read = {p.name: read_point(workdir / p.name) for p in members}
        metric = metric or next((r["metric"] for r in read.values() if r["metric"]), None)
        for r in read.values():
            scale = points_scale(r["task"] or "")
            r["teacher"] = None if r["teacher"] is None else scale * r["teacher"]
            r["methods"] = {m: {c: scale * v for c, v in cells.items()}
                            for m, cells in r["methods"].items()}
            tasks.update([r["task"]] if r["task"] else [])
        g = {"overrides": dict(key), "points": [p.name for p in members],
             "seeds": [p.seed for p in members if p.seed is not None],
             "missing": [n for n, r in read.items()
                         if not r["methods"] and r["teacher"] is None]}
        teachers = [r["teacher"] for r in read.values() if r["teacher"] is not None]
        g["teacher"] = _stats(teachers) if teachers else None
        g["methods"] = {}
        for method in METHODS:
            per_cell: Dict[Tuple[float, float], List[float]] = {}
            for r in read.values():
                for cell, v in r["methods"].get(method, {}).items():
                    per_cell.setdefault(cell, []).append(v)
            if per_cell:
                g["methods"][method] = [{"width": w, "depth": d, **_stats(vs)}
                                        for (w, d), vs in per_cell.items()]
        out_groups.append(g)
    return {"metric": metric, "tasks": sorted(tasks), "groups": out_groups}


def _fmt(s: Optional[dict]) -> str:
    if s is None:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.1f}"
    return f"{s['mean']:.1f} ± {s['sd']:.1f} (n={s['n']})"


def to_markdown(summary: dict) -> str:
    """One table per method: a row per (width, depth), a column per group; the header
    says how the metric was scaled (`summarize`)."""
    from dynabert_jax.report import points_scale

    groups = summary["groups"]
    heads = [", ".join(f"{k}={v}" for k, v in g["overrides"].items()) or "all" for g in groups]
    scales = {points_scale(t) for t in summary.get("tasks") or [""]}
    unit = ("x100" if scales == {100.0} else "in points, as SQuAD gives them"
            if scales == {1.0} else "in points (x100, SQuAD's as given)")
    lines = [f"dev {summary['metric'] or 'metric'} {unit}; mean ± sd over seeds where a "
             f"group has several"]
    lines += ["", "| | " + " | ".join(heads) + " |", "|---|" + "---|" * len(groups),
              "| teacher | " + " | ".join(_fmt(g["teacher"]) for g in groups) + " |"]
    for method, (_, label) in METHODS.items():
        cells = {}
        for gi, g in enumerate(groups):
            for c in g["methods"].get(method, []):
                cells.setdefault((c["width"], c["depth"]), {})[gi] = c
        if not cells:
            continue
        lines += ["", f"**{label}**", "",
                  "| width | depth | " + " | ".join(heads) + " |",
                  "|---|---|" + "---|" * len(groups)]
        for w, d in sorted(cells, key=lambda wd: (-wd[0], -wd[1])):   # as docs/results.md
            lines.append(f"| {w:g} | {d:g} | "
                         + " | ".join(_fmt(cells[(w, d)].get(gi)) for gi in range(len(groups)))
                         + " |")
        means = []
        for gi in range(len(groups)):
            vals = [c[gi]["mean"] for c in cells.values() if gi in c]
            means.append(f"{statistics.mean(vals):.1f} ({len(vals)} cells)" if vals else "-")
        lines.append("| mean | | " + " | ".join(means) + " |")
    missing = [n for g in groups for n in g["missing"]]
    if missing:
        lines += ["", f"no results yet: {', '.join(missing)}"]
    return "\n".join(lines) + "\n"


def write_summary(points: Sequence[Point], workdir) -> Tuple[dict, str]:
    workdir = pathlib.Path(workdir)
    summary = summarize(points, workdir)
    md = to_markdown(summary)
    write_json_atomic(workdir / "summary.json", summary)
    write_text_atomic(workdir / "summary.md", md)
    return summary, md


# ---------------------------------------------------------------------------------------
# CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python -m dynabert_jax.sweep",
                                 description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--config", required=True,
                    help="train.py's --config (a config file, optionally file.py:args)")
    ap.add_argument("--workdir", required=True, help="the sweep's folder (one per point)")
    ap.add_argument("--set", dest="axes", action="append", default=[], metavar="KEY=V1,V2",
                    help="one axis of the sweep: a config field and its values (repeatable)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--summary-only", action="store_true",
                    help="train nothing; summarise what the points' folders hold")
    ap.add_argument("--no-shared-cache", action="store_true",
                    help="do not share compiled programs between the points through "
                         "<workdir>/xla-cache")
    ap.add_argument("--lanes", type=int, default=1,
                    help="train this many points at once (default 1); with more than one, "
                         "each point's output goes to <workdir>/logs/<point>.log")
    ap.add_argument("--pin", default="auto", choices=("auto", "cpu", "cuda", "none"),
                    help="how lanes share the machine: cpu splits the cores, cuda the GPUs "
                         "(CUDA_VISIBLE_DEVICES), none runs them unpinned; auto (default) "
                         "is cuda where nvidia-smi lists GPUs, else cpu")
    ap.add_argument("--rerun", action="store_true",
                    help="run points recorded as done again (each resumes or re-evaluates "
                         "from its own folder)")
    args = ap.parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    try:
        axes = parse_axes(args.axes)
        cfg = check_keys(args.config, [k for k, _ in axes], extra)
        check_values(cfg, axes, extra)
        several_hosts = flag_value(cfg, extra, "distributed")
        points = expand(axes)
        if args.dry_run:
            for p in points:
                print(" ".join(command(p, args.config, workdir, extra,
                                       not args.no_shared_cache)))
            return 0
        failed = []
        if not args.summary_only:
            env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
            records = run_sweep(points, args.config, workdir, extra, rerun=args.rerun,
                                env=env, shared_cache=not args.no_shared_cache,
                                lanes=args.lanes, pin=args.pin,
                                several_hosts=several_hosts, cfg=cfg)
            failed = [r["point"] for r in records if r["rc"] != 0]
        summary, md = write_summary(points, workdir)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the same command resumes the sweep (finished points are "
              "skipped, interrupted ones resume from their checkpoints)", file=sys.stderr)
        return 130
    print(md, end="")
    print(f"wrote {workdir / 'summary.json'} and {workdir / 'summary.md'}")
    if failed:
        where = (f"in {workdir / 'logs'}" if args.lanes > 1 else "above")
        print(f"failed points (exit status != 0): {', '.join(failed)}; their logs are {where}, "
              f"and the same command runs them again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
