"""Independent PyTorch references for the parity tests.

A sub-network of the official code equals a stock Hugging Face model whose dropped
heads, FFN neurons and layers are removed (spec, preamble). We build exactly that here,
with transformers' own ``prune_linear_layer`` and layer deletion, without any
dynabert_jax code.
"""
import copy

import numpy as np
import torch
from transformers.pytorch_utils import prune_linear_layer


def kept_sizes(num_heads, ffn, num_layers, width, depth):
    """The official rules, written out again independently of dynabert_jax.subnet."""
    heads = round(num_heads * width)
    f = int(heads / num_heads * ffn)
    d = round(num_layers * depth)
    return heads, f, [int(i / depth) for i in range(d)]


def pruned_copy(model, width, depth):
    """A deep copy of a HF BertModel / RobertaModel (or a model with ``.bert`` /
    ``.roberta``) keeping the first heads and FFN neurons of the kept layers."""
    model = copy.deepcopy(model)
    base = getattr(model, "bert", None) or getattr(model, "roberta", None) or model
    cfg = base.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    heads, f, kept = kept_sizes(cfg.num_attention_heads, cfg.intermediate_size,
                                cfg.num_hidden_layers, width, depth)
    a_idx = torch.arange(heads * head_dim)
    f_idx = torch.arange(f)
    layers = []
    for i in kept:
        layer = base.encoder.layer[i]
        sa = layer.attention.self
        sa.query = prune_linear_layer(sa.query, a_idx, dim=0)
        sa.key = prune_linear_layer(sa.key, a_idx, dim=0)
        sa.value = prune_linear_layer(sa.value, a_idx, dim=0)
        sa.num_attention_heads = heads
        sa.all_head_size = heads * head_dim
        layer.attention.output.dense = prune_linear_layer(
            layer.attention.output.dense, a_idx, dim=1)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, f_idx, dim=0)
        layer.output.dense = prune_linear_layer(layer.output.dense, f_idx, dim=1)
        layers.append(layer)
    base.encoder.layer = torch.nn.ModuleList(layers)
    return model.eval()


def run(model, batch, **kw):
    with torch.no_grad():
        return model(**{k: torch.as_tensor(np.asarray(v)) for k, v in batch.items()},
                     output_hidden_states=True, **kw)
