"""Losses of the three DynaBERT stages (spec sections 4.2-4.4).

* :func:`soft_cross_entropy`: ``mean_b -sum_c softmax(z_t)_c log_softmax(z_s)_c``
  (temperature 1, teacher logits constant).
* :func:`hidden_mse`: ``sum_m mean((H_s[m] - H_t[T[m]])^2)``, a *sum* of per-state means
  over every position of ``[batch, seq, hidden]``, padding included (official); with
  ``mask`` only real tokens count (a documented variant).
* :func:`logit_mse`: ``mean_b mean_c (z_s - z_t)^2``, the prediction-layer loss for a
  regression head (TinyBERT's choice; the official DynaBERT has none, a variant here).
* :func:`task_loss`: cross-entropy (classification), MSE on the single logit
  (regression), or Hugging Face's QA loss (span); weighted means so that zero-weight
  padding examples do not count. Training and rewiring's importance both use it.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def _weighted_mean(values: Array, weights: Optional[Array]) -> Array:
    values = values.astype(jnp.float32)
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def soft_cross_entropy(student_logits: Array, teacher_logits: Array,
                       weights: Optional[Array] = None) -> Array:
    """``[batch, ..., classes]`` logits -> scalar; teacher gradients are stopped."""
    target = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), -1)
    per_example = -jnp.sum(target * jax.nn.log_softmax(student_logits.astype(jnp.float32),
                                                       -1), axis=-1)
    if per_example.ndim > 1:  # span logits: [batch, 2] (start, end) -> mean over both
        per_example = jnp.mean(per_example.reshape(per_example.shape[0], -1), axis=-1)
    return _weighted_mean(per_example, weights)


def logit_mse(student_logits: Array, teacher_logits: Array,
              weights: Optional[Array] = None) -> Array:
    """``[batch, outputs]`` -> scalar mean squared error; teacher gradients are stopped."""
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    sq = jnp.square(student_logits.astype(jnp.float32) - t)
    return _weighted_mean(jnp.mean(sq.reshape(sq.shape[0], -1), axis=-1), weights)


def hidden_mse(student_hidden: Sequence[Array], teacher_hidden: Sequence[Array],
               teacher_indices: Sequence[int], mask: Optional[Array] = None,
               weights: Optional[Array] = None) -> Array:
    """Sum over the student's hidden states of the MSE to the aligned teacher state.

    Args:
      student_hidden: ``D + 1`` arrays ``[batch, seq, hidden]`` (embeddings first).
      teacher_hidden: ``L + 1`` arrays of the teacher.
      teacher_indices: ``SubNet.teacher_hidden_indices``: student state ``m`` is matched
        to teacher state ``teacher_indices[m]``.
      mask: optional ``[batch, seq]``; when given, only masked-in positions count.
      weights: optional ``[batch]``; rows of weight 0 (padding examples) do not count.
    """
    if len(student_hidden) != len(teacher_indices):
        raise ValueError(f"{len(student_hidden)} student hidden states but "
                         f"{len(teacher_indices)} teacher indices")
    if weights is not None:   # every position of the weighted rows
        rows = jnp.broadcast_to(weights[:, None], student_hidden[0].shape[:2])
        mask = rows if mask is None else mask * rows
    total = jnp.float32(0.0)
    for s, t_index in zip(student_hidden, teacher_indices):
        t = jax.lax.stop_gradient(teacher_hidden[t_index]).astype(jnp.float32)
        sq = jnp.square(s.astype(jnp.float32) - t)
        if mask is None:
            total = total + jnp.mean(sq)
        else:
            m = mask.astype(jnp.float32)[..., None]
            total = total + jnp.sum(sq * m) / jnp.maximum(jnp.sum(m) * sq.shape[-1], 1.0)
    return total


def task_loss(head: str, logits: Array, batch: Mapping[str, Array]) -> Array:
    """The official task loss of a head, a mean over the real examples of a batch.

    Args:
      head: ``"classification"``, ``"regression"`` or ``"span"``.
      logits: ``[batch, num_labels]`` (classification / regression) or
        ``[batch, seq, 2]`` (span).
      batch: ``"labels"`` ``[batch]`` (int class ids; float targets for regression) or,
        for ``"span"``, ``"start_positions"`` / ``"end_positions"`` ``[batch]``; optional
        ``"weight"`` ``[batch]`` (1 real, 0 padding: padded rows count for nothing).

    Returns:
      A scalar: mean cross-entropy (classification), mean squared error of the single
      logit (regression), or Hugging Face's QA loss ``(CE(start) + CE(end)) / 2`` of
      ``BertForQuestionAnswering``: positions are clamped to ``[0, seq]``, so a negative
      one counts as position 0 (``[CLS]``) and one at or past ``seq`` is ignored.
    """
    weights = batch.get("weight")
    if head == "classification":
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), batch["labels"].astype(jnp.int32))
        return _weighted_mean(ce, weights)
    if head == "regression":
        err = jnp.square(logits[..., 0].astype(jnp.float32)
                         - batch["labels"].astype(jnp.float32))
        return _weighted_mean(err, weights)
    if head == "span":
        logits = logits.astype(jnp.float32)
        seq = logits.shape[1]
        real = (jnp.ones(logits.shape[:1], jnp.float32) if weights is None
                else weights.astype(jnp.float32))
        parts = []
        for i, key in enumerate(("start_positions", "end_positions")):
            pos = jnp.clip(batch[key].astype(jnp.int32), 0, seq)   # seq: ignore_index
            ce = optax.softmax_cross_entropy_with_integer_labels(
                logits[..., i], jnp.minimum(pos, seq - 1))
            parts.append(_weighted_mean(ce, real * (pos != seq)))
        return (parts[0] + parts[1]) / 2.0
    raise ValueError(f"no task loss for head {head!r}")


def span_logits_for_distillation(logits: Array) -> Array:
    """``[batch, seq, 2]`` -> ``[batch, 2, seq]``: a softmax over positions for each of
    start and end, so :func:`soft_cross_entropy` distils both distributions."""
    return jnp.swapaxes(logits, 1, 2)
