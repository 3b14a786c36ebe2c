"""Network rewiring: head / FFN-neuron importance on the dev set, and the permutation.

DynaBERT rewires the fine-tuned network once, before training DynaBERT_W, so that every
narrower sub-network (which keeps a *prefix* of the heads and neurons of each layer,
see :mod:`dynabert_jax.subnet`) keeps the most important ones. This module reproduces
``compute_neuron_head_importance`` and ``reorder_neuron_head`` of the official code
(``../shared/spec/dynabert-reference.md`` section 3, checklist item 9.2).

Importance (:func:`importance`)
-------------------------------
The model runs in eval mode (no dropout) at full width and depth over the dev set, in
batches of the caller's size (the official default is ``per_gpu_eval_batch_size = 8``,
read sequentially; for MNLI chain ``dev_matched`` and ``dev_mismatched``: the official
loop does not reset anything between them either). The loss is the task loss with the
dev labels. For one batch ``n`` let

* ``g_n[l, h]  = dL/d head_mask[l, h]`` with ``head_mask`` a ``[L, H]`` array of ones
  that multiplies the post-dropout attention probabilities of head ``h`` of layer ``l``;
* ``a_n[l, j]  = sum_k W1[k, j] * dL/dW1[k, j] + b1[j] * dL/db1[j]`` (fan-in of FFN
  neuron ``j``: ``W1`` is the ``intermediate`` kernel ``[hidden, F]``, ``b1`` its bias);
* ``c_n[l, j]  = sum_r W2[j, r] * dL/dW2[j, r]`` (fan-out: ``W2`` is the ``output``
  kernel ``[F, hidden]``; the output bias is not used).

These are the first-order Taylor terms ``w * dL/dw`` of the paper (Molchanov et al.,
Voita et al.).

**The quirk.** The official loop calls ``loss.backward()`` once per batch and *never
zeroes the gradients* (neither ``model.zero_grad()`` nor ``head_mask.grad.zero_()``), so
after batch ``n`` every ``.grad`` holds the running sum ``sum_{k<=n}`` of the batch
gradients, and the importance it accumulates is a sum of absolute *prefix sums*::

    head_imp[l, h]   = sum_n | sum_{k<=n} g_k[l, h] |
    neuron_imp[l, j] = sum_n ( | sum_{k<=n} a_k[l, j] | + | sum_{k<=n} c_k[l, j] | )

(``accumulate="official"``, the default). Because the weights are fixed during the loop,
``W * (sum_k dL_k/dW)`` summed over a neuron's fan-in equals ``sum_k a_k``, so we keep
running sums of the small per-batch score vectors ``g, a, c`` (``[L, H]``, ``[L, F]``,
``[L, F]``) instead of full gradient accumulators: mathematically identical, much cheaper.
The result therefore depends on the batch size and the order of the dev set. The
textbook variant, ``sum_n |g_n|`` etc., is ``accumulate="per_batch"``; the spec notes that
it changes the top-3 heads of every layer of a real model.

Permutation (:func:`permute`)
-----------------------------
Per layer, independently: ``idx = argsort(importance, descending)`` (stable: ties keep
the lower index first); new slot ``s`` takes old unit ``idx[s]``. Heads move as blocks of
``head_dim`` columns of the Q/K/V kernels (``[hidden, H * d]``) and biases and as blocks
of rows of the ``attention_output`` kernel (``[H * d, hidden]``, bias unchanged); FFN
neurons move as columns of the ``intermediate`` kernel and its bias and as rows of the
``output`` kernel (bias unchanged). At full width the permuted network computes exactly
the same function.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dynabert_jax.losses import task_loss
from dynabert_jax.modeling import DynaBertModel, ModelConfig

log = logging.getLogger(__name__)

#: Ways of accumulating the per-batch importance over the dev set (see module doc).
ACCUMULATE = ("official", "per_batch")

_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_LABEL_KEYS = {
    "classification": ("labels",),
    "regression": ("labels",),
    "span": ("start_positions", "end_positions"),
}


# ----------------------------------------------------------------------------------
# Per-batch scores (jitted once per model, accumulate mode and batch shape)
# ----------------------------------------------------------------------------------


def _layer_names(params) -> Tuple[str, ...]:
    enc = params.get("encoder") if isinstance(params, Mapping) else None
    if not isinstance(enc, Mapping):
        raise ValueError("params has no 'encoder' subtree; pass the model's params tree "
                         "(the value under {'params': ...})")
    names = [k for k in enc if k.startswith("layer_")]
    order = sorted(names, key=lambda k: int(k.split("_", 1)[1]))
    if [int(k.split("_", 1)[1]) for k in order] != list(range(len(order))):
        raise ValueError(f"encoder layers must be layer_0 .. layer_(L-1), got {order}")
    return tuple(order)


def _ffn_weights(params, layers):
    """The FFN weights the neuron scores need gradients for, per layer name:
    ``W1 [hidden, F]``, ``b1 [F]``, ``W2 [F, hidden]``."""
    return {name: {"W1": params["encoder"][name]["intermediate"]["kernel"],
                   "b1": params["encoder"][name]["intermediate"]["bias"],
                   "W2": params["encoder"][name]["output"]["kernel"]}
            for name in layers}


def _with_ffn(params, ffn):
    """``params`` with the FFN weights replaced by ``ffn`` (a new tree)."""
    encoder = dict(params["encoder"])
    for name, w in ffn.items():
        layer = dict(encoder[name])
        layer["intermediate"] = {"kernel": w["W1"], "bias": w["b1"]}
        layer["output"] = dict(layer["output"], kernel=w["W2"])
        encoder[name] = layer
    return dict(params, encoder=encoder)


def _batch_scores(model: DynaBertModel, params, batch):
    """Signed scores of one batch: ``(g [L, H], a [L, F], c [L, F], loss)``."""
    cfg = model.config
    layers = _layer_names(params)
    ffn = _ffn_weights(params, layers)

    def loss_fn(head_mask, ffn):  # differentiated w.r.t. the mask and the FFN only
        out = model.apply({"params": _with_ffn(params, ffn)}, batch["input_ids"],
                          attention_mask=batch["attention_mask"],
                          token_type_ids=batch.get("token_type_ids"),
                          deterministic=True, head_mask=head_mask)
        return task_loss(cfg.head, out.logits, batch)

    ones = jnp.ones((cfg.num_hidden_layers, cfg.num_attention_heads), jnp.float32)
    loss, (g_head, g_ffn) = jax.value_and_grad(loss_fn, argnums=(0, 1))(ones, ffn)
    fan_in = jnp.stack([jnp.sum(ffn[n]["W1"] * g_ffn[n]["W1"], axis=0)
                        + ffn[n]["b1"] * g_ffn[n]["b1"] for n in layers])
    fan_out = jnp.stack([jnp.sum(ffn[n]["W2"] * g_ffn[n]["W2"], axis=1) for n in layers])
    return g_head, fan_in, fan_out, loss


def _accumulate(accumulate: str, carry: Dict[str, jax.Array], g, a, c
                ) -> Dict[str, jax.Array]:
    """Add one batch's scores ``g [L, H]``, ``a [L, F]``, ``c [L, F]`` to the carry.

    ``carry`` holds ``run_head [L, H]``, ``run_in [L, F]``, ``run_out [L, F]`` (the
    running signed sums, i.e. what the official never-zeroed ``.grad`` holds, contracted
    with the weights) and ``head [L, H]``, ``neuron [L, F]`` (the importances).
    """
    if accumulate == "official":   # .grad keeps the sum of all batches so far
        g, a, c = carry["run_head"] + g, carry["run_in"] + a, carry["run_out"] + c
    return dict(run_head=g, run_in=a, run_out=c,
                head=carry["head"] + jnp.abs(g),
                neuron=carry["neuron"] + jnp.abs(a) + jnp.abs(c))


@functools.lru_cache(maxsize=None)
def _jitted(options: Tuple[Tuple[str, Any], ...] = ()):
    """``(scores, accumulate)`` jitted with ``jax.jit``'s ``compiler_options``
    ``dict(options)``; each compiles once per model and batch shape."""
    opts = dict(options) or None
    return (jax.jit(_batch_scores, static_argnames="model", compiler_options=opts),
            jax.jit(_accumulate, static_argnames="accumulate", compiler_options=opts))


# ----------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------


def _prepare(batch: Mapping[str, Any], config: ModelConfig, rows: Optional[int],
             index: int) -> Dict[str, np.ndarray]:
    """Keep the keys the step needs, add ``weight`` (ones by default) and pad a short
    batch to ``rows`` with zero-weight copies of its first row (so nothing recompiles)."""
    label_keys = _LABEL_KEYS[config.head]
    missing = [k for k in ("input_ids", "attention_mask") + label_keys if k not in batch]
    if missing:
        raise ValueError(f"batch {index} lacks {missing}; a {config.head!r} head needs "
                         f"{list(('input_ids', 'attention_mask') + label_keys)} "
                         f"(and optionally token_type_ids, weight); got {sorted(batch)}")
    ids = np.asarray(batch["input_ids"])
    if ids.ndim != 2:
        raise ValueError(f"batch {index}: input_ids must be [batch, seq], got {ids.shape}")
    n = ids.shape[0]
    keys = [k for k in _INPUT_KEYS if k in batch] + list(label_keys)
    out = {k: np.asarray(batch[k]) for k in keys}
    for k in label_keys:
        if out[k].size != n:
            raise ValueError(f"batch {index}: {k} must be [batch] = [{n}], got shape "
                             f"{out[k].shape}")
        out[k] = out[k].reshape(n)
    if config.head == "regression":
        out["labels"] = out["labels"].astype(np.float32)
    else:
        out.update({k: out[k].astype(np.int32) for k in label_keys})
    out["weight"] = (np.asarray(batch["weight"], np.float32) if "weight" in batch
                     else np.ones((n,), np.float32))
    for k, v in out.items():
        if v.shape[0] != n:
            raise ValueError(f"batch {index}: {k} has {v.shape[0]} rows, input_ids {n}")
    if rows is not None and n < rows:
        out = {k: np.concatenate([v, np.repeat(v[:1], rows - n, axis=0)])
               for k, v in out.items()}
        out["weight"][n:] = 0.0
    return out


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------


def importance(model: DynaBertModel, params, batches: Iterable[Mapping[str, Any]],
               accumulate: str = "official", *, disable: bool = False,
               desc: str = "importance",
               compiler_options: Optional[Mapping[str, Any]] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Head and FFN-neuron importance of a fine-tuned model on (dev) batches.

    Args:
      model: a :class:`DynaBertModel` with a task head (``classification``,
        ``regression`` or ``span``); it runs in eval mode at full width and depth.
      params: its full-size parameter tree.
      batches: iterable of dicts of numpy arrays: ``input_ids``, ``attention_mask``,
        ``token_type_ids`` ``[batch, seq]`` int, and ``labels`` ``[batch]`` (int class
        ids, float targets for regression) or ``start_positions`` / ``end_positions``
        ``[batch]`` for a span head; optional ``weight`` ``[batch]`` float (1 = real
        example, 0 = padding row that must not count). Use the official batch size 8 to
        reproduce the official ranking: with ``"official"`` accumulation the result
        depends on batch boundaries and order. A batch smaller than the first is padded
        with zero-weight rows (same loss, no recompilation); an all-padding batch is
        skipped (the official loop never sees it). Other keys are ignored.
      accumulate: ``"official"`` (sum over batches of the absolute running gradient
        sum, the never-zeroed-gradient quirk) or ``"per_batch"`` (sum of absolute
        per-batch gradients). See the module docstring.
      disable: hide the tqdm progress bar.
      desc: the progress bar's label.
      compiler_options: ``jax.jit``'s, for the programs it compiles (the trainer's
        ``dynabert_jax.compile_options``); None: XLA's defaults.

    Returns:
      ``(head_imp [L, H], neuron_imp [L, F])`` float32 numpy arrays.
    """
    if accumulate not in ACCUMULATE:
        raise ValueError(f"unknown accumulate={accumulate!r}; allowed: {ACCUMULATE}")
    cfg = model.config
    if cfg.head is None:
        raise ValueError("importance needs a task loss, but the model has no head "
                         "(config.head is None); load it with head='classification', "
                         "'regression' or 'span'")
    if isinstance(params, flax.core.FrozenDict):
        params = flax.core.unfreeze(params)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    L, H, F = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size
    if len(_layer_names(params)) != L:
        raise ValueError(f"params have {len(_layer_names(params))} encoder layers, the "
                         f"config {L}")
    zeros_h, zeros_f = jnp.zeros((L, H), jnp.float32), jnp.zeros((L, F), jnp.float32)
    carry = dict(run_head=zeros_h, run_in=zeros_f, run_out=zeros_f,
                 head=zeros_h, neuron=zeros_f)

    scores_fn, accumulate_fn = _jitted(tuple(sorted((compiler_options or {}).items())))
    rows, used, loss_sum = None, 0, jnp.zeros((), jnp.float32)
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = tqdm(batches, total=total, desc=desc, unit="batch", disable=disable,
               leave=False)
    for i, raw in enumerate(bar):
        batch = _prepare(raw, cfg, rows, i)
        if rows is None:
            rows = batch["input_ids"].shape[0]
        if not batch["weight"].any():
            continue
        g, a, c, loss = scores_fn(model, params, batch)
        carry = accumulate_fn(accumulate, carry, g, a, c)
        loss_sum, used = loss_sum + loss, used + 1
        if used % 50 == 0:  # syncs with the device, so only now and then
            bar.set_postfix(loss=f"{float(loss_sum) / used:.4f}")
    bar.close()
    if used == 0:
        raise ValueError("importance got no batch with a real (non-zero weight) example")
    log.info("importance (%s) over %d batches: mean loss %.4f", accumulate, used,
             float(loss_sum) / used)
    return np.asarray(carry["head"]), np.asarray(carry["neuron"])


def _order(imp: np.ndarray) -> np.ndarray:
    """Indices of ``imp [L, n]`` per layer, most important first (stable on ties)."""
    return np.argsort(-imp, axis=-1, kind="stable")


def permute(params, head_imp, neuron_imp, *, config: Optional[ModelConfig] = None):
    """Reorder every layer's heads and FFN neurons by importance, most important first.

    A pure function: returns a new tree (same container type), the input is untouched;
    everything outside ``encoder/layer_*`` (embeddings, pooler, task heads) and the
    attention-output / FFN-output biases and LayerNorms are passed through unchanged.

    Args:
      params: a full-size parameter tree of a :class:`DynaBertModel`.
      head_imp: ``[L, H]`` head importance.
      neuron_imp: ``[L, F]`` FFN neuron importance.
      config: optional; when given, ``H`` and the head size are checked against it too.
        Without it the head size is ``(H * head_dim) / head_imp.shape[1]``.

    Returns:
      The permuted parameter tree.
    """
    frozen = isinstance(params, flax.core.FrozenDict)
    tree = flax.core.unfreeze(params) if frozen else params
    layers = _layer_names(tree)
    head_imp, neuron_imp = np.asarray(head_imp), np.asarray(neuron_imp)
    first = tree["encoder"][layers[0]]
    all_head = first["query"]["kernel"].shape[1]
    ffn = first["intermediate"]["kernel"].shape[1]
    L = len(layers)
    if head_imp.ndim != 2 or head_imp.shape[0] != L or head_imp.shape[1] == 0 \
            or all_head % head_imp.shape[1]:
        raise ValueError(f"head_imp must be [layers, heads] with {L} layers and a head "
                         f"count dividing the attention width {all_head}, got shape "
                         f"{head_imp.shape}")
    if config is not None and head_imp.shape[1] != config.num_attention_heads:
        raise ValueError(f"head_imp has {head_imp.shape[1]} heads per layer, the config "
                         f"{config.num_attention_heads}")
    if config is not None and all_head != config.all_head_size:
        raise ValueError(f"params have attention width {all_head}, the config "
                         f"{config.all_head_size}")
    if neuron_imp.shape != (L, ffn):
        raise ValueError(f"neuron_imp must be [layers, ffn] = {(L, ffn)}, got shape "
                         f"{neuron_imp.shape}")
    for name, imp in (("head_imp", head_imp), ("neuron_imp", neuron_imp)):
        if not np.all(np.isfinite(imp)):
            raise ValueError(f"{name} has non-finite values")
    d = all_head // head_imp.shape[1]
    head_order, neuron_order = _order(head_imp), _order(neuron_imp)

    encoder = dict(tree["encoder"])
    for l, name in enumerate(layers):
        layer = dict(encoder[name])
        cols = (head_order[l][:, None] * d + np.arange(d)[None, :]).reshape(-1)
        for qkv in ("query", "key", "value"):
            layer[qkv] = dict(layer[qkv], kernel=jnp.take(layer[qkv]["kernel"], cols, 1),
                              bias=jnp.take(layer[qkv]["bias"], cols, 0))
        att = layer["attention_output"]
        layer["attention_output"] = dict(att, kernel=jnp.take(att["kernel"], cols, 0))
        j = neuron_order[l]
        inter, out = layer["intermediate"], layer["output"]
        layer["intermediate"] = dict(inter, kernel=jnp.take(inter["kernel"], j, 1),
                                     bias=jnp.take(inter["bias"], j, 0))
        layer["output"] = dict(out, kernel=jnp.take(out["kernel"], j, 0))
        encoder[name] = layer
    new = dict(tree, encoder=encoder)
    return flax.core.freeze(new) if frozen else new


def rewire_network(model: DynaBertModel, params, batches: Iterable[Mapping[str, Any]],
                   accumulate: str = "official", **kw):
    """:func:`importance` then :func:`permute`: ``(params, head_imp, neuron_imp)``.

    ``kw`` goes to :func:`importance` (``disable``, ``desc``, ``compiler_options``).
    """
    head_imp, neuron_imp = importance(model, params, batches, accumulate, **kw)
    return permute(params, head_imp, neuron_imp, config=model.config), head_imp, neuron_imp
