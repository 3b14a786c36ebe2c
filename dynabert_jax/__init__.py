"""dynabert_jax: DynaBERT (Hou et al., NeurIPS 2020) in JAX/Flax.

One BERT or RoBERTa that runs at any width (fraction of heads and FFN neurons kept) and
depth (fraction of layers kept). See README.md for the tour.
"""
from dynabert_jax.subnet import DEPTHS, FULL, WIDTHS, SubNet, grid
from dynabert_jax.flops import count_params, encoder_flops
from dynabert_jax.modeling import (
    DynaBertModel,
    ModelConfig,
    ModelOutput,
    extract_subnetwork,
    init_params,
    subnetwork_config,
)
from dynabert_jax.convert import (
    CheckpointError,
    from_pretrained_pytorch,
    save_pretrained_pytorch,
)
from dynabert_jax import data, metrics, rewire  # noqa: E402  (submodules as namespaces)

__version__ = "0.1.0"

__all__ = [
    "SubNet", "FULL", "WIDTHS", "DEPTHS", "grid",
    "count_params", "encoder_flops",
    "DynaBertModel", "ModelConfig", "ModelOutput", "extract_subnetwork", "init_params",
    "subnetwork_config",
    "CheckpointError", "from_pretrained_pytorch", "save_pretrained_pytorch",
    "data", "metrics", "rewire",
]
