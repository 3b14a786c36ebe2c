"""The jitted pieces of training: train state, optimizer, the multi-student step, eval.

One ``train_step(state, teacher_params, batch, rng)`` serves every stage (spec 4.1):

1. the frozen teacher runs once on the batch (eval mode, ``stop_gradient``; with
   ``width_matched_teacher`` once per distinct student width);
2. every student sub-network runs on the same batch in train mode with its own dropout
   key, and its gradient is added to a running sum. The students run as iterations of a
   ``lax.scan`` whose body ``lax.switch``-es to the student's own statically shaped
   code, so at most one student's activations are alive at a time (peak memory ~ one
   student, not twelve);
3. the summed gradient is clipped to global norm 1.0 and one AdamW step is taken
   (eps 1e-8, no weight decay, linear decay with optional warmup). The ``[PAD]``
   embedding row (and RoBERTa's padding position row) gets no gradient, as with
   PyTorch's ``padding_idx``.

With gradient accumulation (``accum_steps = k > 1``, the official
``--gradient_accumulation_steps``) the batch holds k micro-batches, laid out by
`data.interleave_micro_batches`; steps 1 and 2 run on each in turn (a ``lax.scan``, so
one micro-batch's activations are alive at a time), each adds its summed gradient / k
to a running sum, and the official code clips that running sum after every micro-batch
(``partial_clip_norm``), then 3 follows once.

Teacher parameters are an argument, never part of the state: they are neither optimised
nor checkpointed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from dynabert_jax import losses
from dynabert_jax.modeling import DynaBertModel
from dynabert_jax.subnet import FULL, SubNet

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# How dropout's random bits are made (``config.dropout_prng``). ``threefry2x32`` is
# JAX's default counter-based hash: the same bits on every backend and sharding, and
# what every run so far used. ``rbg`` and ``unsafe_rbg`` draw the bits with XLA's
# RngBitGenerator, a hardware-friendly generator that is cheaper on GPU and TPU; their
# bits depend on the backend and may change between JAX/XLA versions (a run resumes
# exactly on the same machine and versions only), and ``unsafe_rbg`` also derives keys
# with it (split/fold_in not empirically tested). See ``jax.random``'s docs.
DROPOUT_PRNGS = ("threefry2x32", "rbg", "unsafe_rbg")


def dropout_key(seed: int, impl: str = "threefry2x32") -> jax.Array:
    """The root key for dropout. ``threefry2x32``: a raw ``uint32[2]`` key, as before;
    otherwise a typed key of ``impl`` (``split``/``fold_in`` keep its implementation)."""
    if impl not in DROPOUT_PRNGS:
        raise ValueError(f"unknown dropout PRNG {impl!r} (config.dropout_prng); choose "
                         f"one of {DROPOUT_PRNGS}")
    if impl == "threefry2x32":
        return jax.random.PRNGKey(seed)
    return jax.random.key(seed, impl=impl)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What each student minimises (static).

    kind: ``"task"`` (labels only: teacher fine-tuning and final fine-tuning) or
      ``"distill"`` (DynaBERT_W and DynaBERT).
    lambda_logit, lambda_hidden: weights of the soft cross-entropy on logits and of the
      summed hidden-state MSEs (stage 1: 1.0 / 0.1, stage 2: 1.0 / 1.0). Regression heads
      get no logit term, as in the official code, unless ``regression_logit_mse``.
    label_loss: also add the task loss while distilling (variant).
    mask_padding: hidden-state MSE over real tokens only (variant; official: all).
    width_matched_teacher: the teacher runs at the student's width (the paper's
      wording) instead of full width (the official code).
    regression_logit_mse: for a regression head, a logit term ``lambda_logit * MSE(z_s,
      z_t)`` (variant, as TinyBERT): the official code has none, so the pooler and the
      head never train before final fine-tuning.
    """

    kind: str = "distill"
    lambda_logit: float = 1.0
    lambda_hidden: float = 0.1
    label_loss: bool = False
    mask_padding: bool = False
    width_matched_teacher: bool = False
    regression_logit_mse: bool = False

    def __post_init__(self):
        if self.kind not in ("task", "distill"):
            raise ValueError(f"LossSpec.kind must be 'task' or 'distill', got {self.kind!r}")


def decays(params):
    """Where AdamW's weight decay applies: not to biases or LayerNorm scales, the
    official code's ``no_decay`` groups (``bias``, ``LayerNorm.weight``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) not in ("bias", "scale"), params)


def make_optimizer(learning_rate: float, total_steps: int, warmup_steps: int = 0,
                   max_grad_norm: float = 1.0, weight_decay: float = 0.0,
                   adam_eps: float = 1e-8) -> Tuple[optax.GradientTransformation, Any]:
    """Global-norm clipping + AdamW with the official linear schedule.

    The learning rate at update ``s`` is ``lr * s / warmup`` during warm-up, then
    ``lr * max(0, (T - s) / (T - warmup))``: with no warm-up the first update uses the
    full rate, as ``WarmupLinearSchedule`` stepped after each update. Weight decay (0 by
    default, as official) is decoupled, ``lr * weight_decay * p``, and skips `decays`'
    exclusions.
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(int(warmup_steps), total_steps - 1)
    decay = optax.linear_schedule(learning_rate, 0.0, total_steps - warmup_steps)
    if warmup_steps > 0:
        warm = optax.linear_schedule(0.0, learning_rate, warmup_steps)
        schedule = optax.join_schedules([warm, decay], [warmup_steps])
    else:
        schedule = decay
    tx = optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        # (no mask without decay: the optimizer state keeps the layout of earlier runs)
        optax.adamw(schedule, b1=0.9, b2=0.999, eps=adam_eps, weight_decay=weight_decay,
                    mask=decays if weight_decay else None),
    )
    return tx, schedule


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))


def _inputs(batch) -> Dict[str, jax.Array]:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def _freeze_padding_rows(grads, config):
    """Zero the gradient of the padding embedding rows (``padding_idx`` in PyTorch)."""
    emb = grads["embeddings"]
    word = emb["word_embeddings"]["embedding"].at[config.pad_token_id].set(0.0)
    new_emb = dict(emb, word_embeddings={"embedding": word})
    if config.model_type == "roberta":
        pos = emb["position_embeddings"]["embedding"].at[config.pad_token_id].set(0.0)
        new_emb["position_embeddings"] = {"embedding": pos}
    return dict(grads, embeddings=new_emb)


def _logits_for_distillation(head: str, logits):
    return losses.span_logits_for_distillation(logits) if head == "span" else logits


def student_loss(model: DynaBertModel, params, batch, subnet: SubNet, spec: LossSpec,
                 teacher_out, rng) -> jax.Array:
    """The loss of one student (train mode) on ``batch``: a mean over its rows, or, when
    the batch has ``weight`` (an epoch's last batch, padded), over its real rows only."""
    cfg = model.config
    out = model.apply({"params": params}, **_inputs(batch), subnet=subnet,
                      deterministic=False, rngs={"dropout": rng})
    if spec.kind == "task":
        return losses.task_loss(cfg.head, out.logits, batch)
    weights = batch.get("weight")
    loss = jnp.float32(0.0)
    if cfg.head in ("classification", "span") and spec.lambda_logit:
        loss += spec.lambda_logit * losses.soft_cross_entropy(
            _logits_for_distillation(cfg.head, out.logits),
            _logits_for_distillation(cfg.head, teacher_out.logits), weights)
    if cfg.head == "regression" and spec.regression_logit_mse and spec.lambda_logit:
        loss += spec.lambda_logit * losses.logit_mse(out.logits, teacher_out.logits, weights)
    if spec.lambda_hidden:
        mask = batch["attention_mask"] if spec.mask_padding else None
        loss += spec.lambda_hidden * losses.hidden_mse(
            out.hidden_states, teacher_out.hidden_states,
            subnet.teacher_hidden_indices(cfg), mask, weights)
    if spec.label_loss:
        loss += losses.task_loss(cfg.head, out.logits, batch)
    return loss


def micro_batches(batch, accum_steps: int):
    """The ``[k, B, ...]`` micro-batches of a batch of ``k * B`` rows laid out by
    `data.interleave_micro_batches` (row ``b * k + j`` is row ``b`` of micro-batch ``j``).

    Under the data-parallel sharding each device holds whole groups of ``k`` rows, so the
    reshape and the swap of axes move no data between devices.
    """
    def split(x):
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
    return {k: split(v) for k, v in batch.items()}


def make_train_step(model: DynaBertModel, students: Sequence[SubNet], spec: LossSpec,
                    tx: optax.GradientTransformation, accum_steps: int = 1,
                    partial_clip_norm: Optional[float] = None):
    """``train_step(state, teacher_params, batch, rng) -> (state, metrics)`` (not jitted).

    ``metrics``: ``loss`` (sum over students), ``losses`` ``[num_students]`` (with
    accumulation: their mean over the micro-batches), ``grad_norm`` (of the summed
    gradient, before the optimizer clips it).

    ``accum_steps`` > 1: ``batch`` holds that many micro-batches (`micro_batches`) and
    the update uses the mean of their summed gradients. ``partial_clip_norm``: clip the
    running sum to this norm after every micro-batch, as the official code does (None:
    only the optimizer clips, once, as for one large batch).
    """
    students = tuple(students)
    if not students:
        raise ValueError("a train step needs at least one student sub-network")
    if int(accum_steps) != accum_steps or accum_steps < 1:
        raise ValueError(f"accum_steps must be a positive integer, got {accum_steps!r}")
    cfg = model.config
    partial_clip = (None if partial_clip_norm is None
                    else optax.clip_by_global_norm(partial_clip_norm))

    def teacher_outputs(teacher_params, batch):
        if spec.kind != "distill":
            return {}
        widths = sorted({s.width for s in students}) if spec.width_matched_teacher else [1.0]
        outs = {}
        for w in widths:
            o = model.apply({"params": teacher_params}, **_inputs(batch),
                            subnet=SubNet(w, 1.0), deterministic=True)
            outs[w] = jax.tree_util.tree_map(jax.lax.stop_gradient, o)
        return outs

    def student_branch(subnet: SubNet):
        def branch(params, batch, t_outs, key):
            t_out = t_outs.get(subnet.width if spec.width_matched_teacher else 1.0)
            return jax.value_and_grad(student_loss, argnums=1)(
                model, params, batch, subnet, spec, t_out, key)
        return branch

    branches = [student_branch(s) for s in students]

    def summed_gradient(params, teacher_params, batch, key):
        """The teacher once, then every student on ``batch``: (the sum of the students'
        gradients, their losses)."""
        t_outs = teacher_outputs(teacher_params, batch)
        keys = jax.random.split(key, len(students))
        if len(branches) == 1:
            loss, grads = branches[0](params, batch, t_outs, keys[0])
            return _freeze_padding_rows(grads, cfg), loss[None]

        # A loop over the students, each iteration running one student's forward and
        # backward (``switch`` picks its statically shaped branch). XLA runs loop
        # iterations one after another and reuses their buffers, so at most one
        # student's activations are alive at a time: peak memory ~ one student, not
        # all of them. (Unrolled code with optimization barriers does not guarantee
        # this: XLA removes the barriers and interleaves the students.)
        def one_student(grads, xs):
            index, key = xs
            loss, g = jax.lax.switch(index, branches, params, batch, t_outs, key)
            return jax.tree_util.tree_map(jnp.add, grads, g), loss

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        grads, losses_arr = jax.lax.scan(
            one_student, zeros, (jnp.arange(len(branches)), keys))
        return _freeze_padding_rows(grads, cfg), losses_arr

    def train_step(state: TrainState, teacher_params, batch, rng):
        key = jax.random.fold_in(rng, state.step)
        if accum_steps == 1:
            grads, losses_arr = summed_gradient(state.params, teacher_params, batch, key)
            grad_norm = optax.tree.norm(grads)
        else:
            # The official loop: each micro-batch's loss / k, backward into the running
            # sum, which is clipped after every micro-batch; the update every k.
            def one_micro_batch(acc, xs):
                index, micro = xs
                g, micro_losses = summed_gradient(state.params, teacher_params, micro,
                                                  jax.random.fold_in(key, index))
                acc = jax.tree_util.tree_map(lambda a, b: a + b / accum_steps, acc, g)
                norm = optax.tree.norm(acc)
                if partial_clip is not None:
                    acc, _ = partial_clip.update(acc, partial_clip.init(acc))
                return acc, (micro_losses, norm)

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            grads, (micro_losses, norms) = jax.lax.scan(
                one_micro_batch, zeros,
                (jnp.arange(accum_steps), micro_batches(batch, accum_steps)))
            losses_arr = jnp.mean(micro_losses, axis=0)
            grad_norm = norms[-1]   # before its last clip (the optimizer's then does nothing)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": jnp.sum(losses_arr), "losses": losses_arr, "grad_norm": grad_norm}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def memory_stats(compiled) -> Optional[Dict[str, int]]:
    """XLA's memory analysis of a compiled step, in bytes, with ``peak_bytes`` =
    arguments + outputs + temporaries - aliased (donated) buffers; None when the
    backend has no analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # pragma: no cover - backend without memory analysis
        return None
    if m is None:
        return None
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    out = {f: int(getattr(m, f, 0)) for f in fields}
    out["peak_bytes"] = (out["temp_size_in_bytes"] + out["argument_size_in_bytes"]
                         + out["output_size_in_bytes"] - out["alias_size_in_bytes"])
    return out


def make_eval_step(model: DynaBertModel):
    """``eval_step(params, batch, subnet) -> logits`` (not jitted; ``subnet`` static)."""

    def eval_step(params, batch, subnet: SubNet = FULL):
        return model.apply({"params": params}, **_inputs(batch), subnet=subnet,
                           deterministic=True).logits

    return eval_step
