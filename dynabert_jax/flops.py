"""Analytic parameter counts and encoder FLOPs of a sub-network.

Conventions follow ``../shared/spec/dynabert-reference.md`` section 6.3, which
reproduces the x-axes of the paper's Figure 3:

* parameters count the embeddings (word, position, token type, LayerNorm), the kept
  layers at their kept width, and the pooler when the model has one; the task head
  (classifier / span output) is counted only with ``include_head=True``;
* FLOPs are 2 x multiply-accumulates of one sequence through the encoder's linear layers
  plus ``Q K^T`` and ``A V``; embeddings, softmax, LayerNorm and the heads are ignored.
  Per layer: ``8 n h a + 4 n h f + 4 n^2 a`` (n tokens, h hidden, a kept heads x head
  size, f kept FFN neurons). BERT-base at n = 128: 22.35 GFLOP.
"""
from __future__ import annotations

from dynabert_jax.subnet import FULL, SubNet


def layer_params(config, subnet: SubNet = FULL) -> int:
    """Parameters of one encoder layer at the sub-network's width."""
    h = config.hidden_size
    a = subnet.num_heads(config) * config.head_dim
    f = subnet.ffn_size(config)
    qkv = 3 * (h * a + a)
    attn_out = a * h + h
    ffn = (h * f + f) + (f * h + h)
    layer_norms = 2 * 2 * h
    return qkv + attn_out + ffn + layer_norms


def embedding_params(config) -> int:
    h = config.hidden_size
    return (
        config.vocab_size * h
        + config.max_position_embeddings * h
        + config.type_vocab_size * h
        + 2 * h  # LayerNorm
    )


def head_params(config) -> int:
    """Parameters of the task head (0 for an encoder without one)."""
    h = config.hidden_size
    if config.head is None:
        return 0
    if config.head == "span":
        return h * 2 + 2
    n = config.num_labels
    if config.model_type == "roberta":  # dense + tanh + out_proj
        return (h * h + h) + (h * n + n)
    return h * n + n


def count_params(config, subnet: SubNet = FULL, include_head: bool = False) -> int:
    """Parameters a sub-network of *this* model uses (what an export of it stores).

    Counted: the embeddings (word, position, token type, LayerNorm); the kept layers at
    their kept width; the pooler (``h * h + h``) only when ``config.has_pooler``; the task
    head (:func:`head_params`) only with ``include_head=True``.

    The spec's table (section 6.3, the x-axis of the paper's Figure 3) always counts a
    pooler and never a head. So for BERT with a classification head (or no head) and
    ``include_head=False`` this matches the table (109.5 M at (1, 1)); a model without a
    pooler, i.e. any span model and a RoBERTa classifier, counts ``h * h + h`` fewer
    (BERT span 108.9 M, RoBERTa classifier 124.1 M against the table's 124.6 M). Those
    are the true counts of the model built here, so they are not padded to the table;
    add ``h * h + h`` to compare with it.
    """
    n = embedding_params(config) + subnet.num_layers(config) * layer_params(config, subnet)
    if config.has_pooler:
        n += config.hidden_size * config.hidden_size + config.hidden_size
    if include_head:
        n += head_params(config)
    return n


def encoder_flops(config, subnet: SubNet = FULL, seq_len: int = 128) -> int:
    """FLOPs (2 x MACs) of one sequence of ``seq_len`` tokens through the encoder."""
    n, h = seq_len, config.hidden_size
    a = subnet.num_heads(config) * config.head_dim
    f = subnet.ffn_size(config)
    per_layer = 8 * n * h * a + 4 * n * h * f + 4 * n * n * a
    return subnet.num_layers(config) * per_layer
