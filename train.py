r"""Train and evaluate DynaBERT.

    python train.py                                    # the CPU demo, into runs/demo
    python train.py --config configs/glue.py:task=sst2 --workdir runs/sst2
    python train.py --config configs/glue.py:task=rte,stage=width_depth \
        --workdir runs/rte --config.width_depth.learning_rate=1e-5

Stages (``--config.stage``): teacher, rewire, width, width_depth, final, eval, all, and
the baselines direct and no_rewire (docs/training.md). A killed run resumes where it
stopped when started again with the same workdir.
"""
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _bad_override(e: Exception):
    """A misspelt ``--config.x.y=...`` as one line on stderr (exit status 2), not the
    traceback ml_collections raises while the flags are parsed."""
    inner = e.args[0] if e.args else e
    inner = inner.args[0] if isinstance(inner, KeyError) and inner.args else inner
    key, _, hint = str(inner).partition("\n")
    key = key.strip("'\"")
    given = [a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith("--config.")
             and key in a.split("=", 1)[0].split(".")]
    where = f" in {given[0]}" if given else ""
    print(f"train.py: error: the config has no field {key!r}{where}"
          + (f". {hint}" if hint else ""), file=sys.stderr)
    sys.exit(2)


def _flag_error(e: Exception):
    """One line: ml_collections puts the config file's whole traceback in the message;
    its first line says which flag, its last what went wrong."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0].rstrip(':')}: {lines[-1]}"
    print(f"train.py: error: {text}", file=sys.stderr)
    sys.exit(2)


def _or_config_error(fn, *args, **kwargs):
    """``fn(...)``, or a config mistake found while the flags are parsed as one line."""
    try:
        return fn(*args, **kwargs)
    except (AttributeError, KeyError) as e:
        _bad_override(e)
    except flags.Error as e:   # a value of the wrong type, a config file that fails
        _flag_error(e)


def _parse_flags(argv):
    return _or_config_error(flags.FLAGS, argv)


DEMO_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "demo.py")

# Without --config, the default file's overrides are applied here, on import.
_CONFIG = _or_config_error(
    config_flags.DEFINE_config_file, "config", DEMO_CONFIG,
    "Config file (optionally file.py:args); fields override with --config.x=y.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder (default runs/<task>; runs/demo for the demo config).")


def default_workdir(config_file: str, task: str) -> str:
    """``runs/<task>``, but ``runs/demo`` for the demo: its 2,000-example SST-2 run would
    otherwise take the folder of the GLUE SST-2 recipe (and be refused there, or refuse it,
    as a run with other settings)."""
    path = config_file.split(":", 1)[0]
    if os.path.abspath(path) == DEMO_CONFIG:
        return os.path.join("runs", "demo")
    return os.path.join("runs", task)


def main(argv):
    if len(argv) > 1:   # as the flag errors: one line, status 2 (not absl's usage dump)
        _flag_error(ValueError(f"unexpected arguments: {' '.join(argv[1:])} (fields are "
                               f"set as --config.x=y)"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    absl_logging.set_verbosity(absl_logging.WARNING)   # orbax is chatty at INFO
    logging.getLogger("dynabert_jax").setLevel(logging.INFO)
    try:
        config = _CONFIG.value
        config.task   # noqa: B018 - a file that failed to load raises on first use
    except OSError as e:   # the config file did not load (ml_collections defers this)
        _flag_error(OSError(f"--config: {' '.join(str(e).split())}"))
    if config.keep_host_memory:   # before JAX's backend starts, or it is too late
        from dynabert_jax import host_memory

        if host_memory.jax_runs_on_cpu():
            host_memory.keep_freed_memory()
    import jax

    if config.distributed:   # explicit settings where given, else JAX's cluster detection
        try:
            jax.distributed.initialize(
                coordinator_address=config.get("coordinator_address") or None,
                num_processes=config.get("num_processes") or None,
                process_id=None if config.get("process_id", -1) < 0 else config.process_id)
        except ValueError as e:   # settings missing or inconsistent
            _flag_error(ValueError(
                "--config.distributed=true: jax.distributed.initialize() says: "
                f"{str(e).rstrip('.')}. It finds the processes itself on TPU, SLURM, "
                "Open MPI and Kubernetes; elsewhere give "
                "--config.coordinator_address=HOST:PORT, --config.num_processes and "
                "--config.process_id (docs/training.md, Several hosts)"))
    from dynabert_jax import trainer

    from dynabert_jax.checkpoint import CheckpointMismatchError
    from dynabert_jax.convert import CheckpointError
    from dynabert_jax.data import DataFormatError

    workdir = _WORKDIR.value or default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"]), config.task)
    try:
        trainer.train_and_evaluate(config, workdir)
    except (trainer.ConfigError, DataFormatError, CheckpointError, CheckpointMismatchError,
            trainer.NonFiniteLossError, FileNotFoundError) as e:
        # what the user can fix gets one line, not a traceback; checkpoints are kept
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"\ntrain.py: interrupted. The same command resumes from the last checkpoint "
              f"in {workdir} (written every config.checkpoint_every steps).", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
