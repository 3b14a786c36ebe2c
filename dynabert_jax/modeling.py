"""Width- and depth-adaptive BERT / RoBERTa encoders in Flax (Linen, used functionally).

Parameters are always stored at full size. The sub-network (:class:`SubNet`) is a
*static* argument of ``__call__``: each layer slices the leading block of its weights with
static shapes (the first ``h`` heads of Q/K/V and the attention output, the first ``f``
FFN neurons) and only the kept layers run, so a width-0.25 sub-network really runs about
a quarter of the FLOPs while one set of weights serves every sub-network and gradients
flow into the shared slices.

Numerics follow the official DynaBERT code and Hugging Face ``modeling_bert.py``:
post-LayerNorm, exact (erf) GELU, LayerNorm epsilon from the config, additive attention
mask ``(1 - mask) * -10000``, dropout only when ``deterministic=False``; without
attention dropout the softmax is normalised after its product with the values (the same
function, rounded differently: see ``Layer``). With
``dtype=jnp.bfloat16`` matrix products run in bfloat16 while parameters, LayerNorm,
softmax and logits stay in float32.

Parameter tree (``{"params": ...}``), next to the Hugging Face state-dict keys::

    embeddings/{word,position,token_type}_embeddings/embedding   embeddings.*.weight
    embeddings/LayerNorm/{scale,bias}                            embeddings.LayerNorm.*
    encoder/layer_{i}/{query,key,value}/{kernel,bias}            encoder.layer.i.attention.self.*
    encoder/layer_{i}/attention_output/{kernel,bias}             ...attention.output.dense.*
    encoder/layer_{i}/attention_LayerNorm/{scale,bias}           ...attention.output.LayerNorm.*
    encoder/layer_{i}/intermediate/{kernel,bias}                 ...intermediate.dense.*
    encoder/layer_{i}/output/{kernel,bias}                       ...output.dense.*
    encoder/layer_{i}/output_LayerNorm/{scale,bias}              ...output.LayerNorm.*
    pooler/{kernel,bias}                                         pooler.dense.*
    classifier/{kernel,bias}            (BERT)                   classifier.*
    classifier/{dense,out_proj}/...     (RoBERTa)                classifier.{dense,out_proj}.*
    qa_outputs/{kernel,bias}            (span head)              qa_outputs.*

Kernels are ``[in, out]`` (PyTorch stores ``[out, in]``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dynabert_jax.subnet import FULL, SubNet

Array = jax.Array
HEADS = (None, "classification", "regression", "span")
MODEL_TYPES = ("bert", "roberta")
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a BERT or RoBERTa encoder and its task head (hashable).

    ``attention_head_size`` defaults to ``hidden_size // num_attention_heads``; an
    extracted sub-network keeps the original head size with fewer heads.
    ``head`` is ``None`` (encoder only), ``"classification"``, ``"regression"`` (one
    output, as STS-B) or ``"span"`` (start/end logits, as SQuAD).
    """

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    attention_head_size: Optional[int] = None
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: Optional[float] = None
    initializer_range: float = 0.02
    pad_token_id: int = 0
    head: Optional[str] = None
    num_labels: int = 2
    pooler: Optional[bool] = None
    #: RoBERTa position ids: "official" = ``pad + 1 + arange(seq)`` for every token (the
    #: DynaBERT code, transformers 2.1); "hf" = padding-aware ids as transformers >= 3.
    #: Both agree on the real tokens of right-padded inputs.
    roberta_position_ids: str = "official"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: {MODEL_TYPES}"
            )
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {HEADS}")
        if self.head == "regression" and self.num_labels != 1:
            object.__setattr__(self, "num_labels", 1)
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"unsupported hidden_act {self.hidden_act!r}; supported: "
                f"{sorted(_ACTIVATIONS)}"
            )
        if self.attention_head_size is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not a multiple of "
                    f"num_attention_heads {self.num_attention_heads}"
                )
        if self.roberta_position_ids not in ("official", "hf"):
            raise ValueError("roberta_position_ids must be 'official' or 'hf'")

    @property
    def head_dim(self) -> int:
        if self.attention_head_size is not None:
            return self.attention_head_size
        return self.hidden_size // self.num_attention_heads

    @property
    def all_head_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def has_reduced_heads(self) -> bool:
        """True for an extracted sub-network: fewer heads than ``hidden / head size``."""
        return self.all_head_size != self.hidden_size

    @property
    def has_pooler(self) -> bool:
        """BERT's classifier reads the pooler; RoBERTa's head and span heads do not."""
        if self.pooler is not None:
            return self.pooler
        if self.head == "span":
            return False
        return self.model_type == "bert" or self.head is None

    @property
    def classifier_dropout_rate(self) -> float:
        if self.classifier_dropout is not None:
            return self.classifier_dropout
        return self.hidden_dropout_prob


@flax.struct.dataclass
class ModelOutput:
    """What the model returns.

    logits: ``[batch, num_labels]`` (classification / regression), ``[batch, seq, 2]``
      (span: start, end) or ``None`` (encoder only); always float32.
    hidden_states: tuple of ``[batch, seq, hidden]``: the embedding output, then one per
      kept layer (``D + 1`` in all).
    attentions: ``None``, or a tuple of pre-softmax masked scores
      ``[batch, heads_kept, seq, seq]``, one per kept layer.
    pooled_output: ``[batch, hidden]`` or ``None`` for models without a pooler.
    """

    logits: Optional[Array]
    hidden_states: Tuple[Array, ...]
    attentions: Optional[Tuple[Array, ...]] = None
    pooled_output: Optional[Array] = None

    @property
    def last_hidden_state(self) -> Array:
        return self.hidden_states[-1]

    @property
    def start_logits(self) -> Array:
        return self.logits[..., 0]

    @property
    def end_logits(self) -> Array:
        return self.logits[..., 1]


# ----------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------


class Linear(nn.Module):
    """A dense layer whose leading input rows / output columns can be sliced statically.

    ``kernel`` is ``[in_features, out_features]``. ``in_size`` keeps ``kernel[:in_size]``;
    ``out_size`` keeps ``kernel[:, :out_size]`` and ``bias[:out_size]``.
    """

    in_features: int
    out_features: int
    dtype: Any = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: Array, in_size: Optional[int] = None,
                 out_size: Optional[int] = None) -> Array:
        kernel = self.param("kernel", nn.initializers.normal(self.init_std),
                            (self.in_features, self.out_features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.out_features,), jnp.float32)
        if in_size is not None and in_size != self.in_features:
            kernel = kernel[:in_size]
        if out_size is not None and out_size != self.out_features:
            kernel = kernel[:, :out_size]
            bias = bias[:out_size]
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 (biased variance, as PyTorch), output in ``dtype``."""

    features: int
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(self.dtype)


def _embedding_init(std: float, padding_idx: Optional[int]):
    def init(key, shape, dtype=jnp.float32):
        table = std * jax.random.normal(key, shape, dtype)
        if padding_idx is not None:
            table = table.at[padding_idx].set(0.0)
        return table

    return init


class Embed(nn.Module):
    """An embedding table ``[rows, features]`` (param ``embedding``); ``padding_idx``'s
    row starts at zero, as in PyTorch."""

    rows: int
    features: int
    init_std: float = 0.02
    padding_idx: Optional[int] = None

    @nn.compact
    def __call__(self, ids: Array) -> Array:
        table = self.param("embedding", _embedding_init(self.init_std, self.padding_idx),
                           (self.rows, self.features), jnp.float32)
        return jnp.take(table, ids, axis=0)


class Embeddings(nn.Module):
    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        cfg = self.config
        std, hid = cfg.initializer_range, cfg.hidden_size
        pos_pad = cfg.pad_token_id if cfg.model_type == "roberta" else None
        x = (Embed(cfg.vocab_size, hid, std, cfg.pad_token_id, name="word_embeddings")(
                 input_ids)
             + Embed(cfg.max_position_embeddings, hid, std, pos_pad,
                     name="position_embeddings")(position_ids)
             + Embed(cfg.type_vocab_size, hid, std, name="token_type_embeddings")(
                 token_type_ids))
        x = LayerNorm(hid, cfg.layer_norm_eps, self.dtype, name="LayerNorm")(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class Layer(nn.Module):
    """One post-LN transformer layer that keeps its first ``heads`` heads and ``ffn``
    FFN neurons."""

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, *, heads: int, ffn: int, deterministic: bool,
                 head_mask=None, ffn_mask=None):
        cfg = self.config
        hid, d = cfg.hidden_size, cfg.head_dim
        a = heads * d
        dense = lambda n_in, n_out, name: Linear(  # noqa: E731
            n_in, n_out, self.dtype, cfg.initializer_range, name=name)
        batch, seq, _ = x.shape

        q = dense(hid, cfg.all_head_size, "query")(x, out_size=a)
        k = dense(hid, cfg.all_head_size, "key")(x, out_size=a)
        v = dense(hid, cfg.all_head_size, "value")(x, out_size=a)
        # Heads-major [batch, heads, seq, d] before the attention products, as PyTorch
        # does: with "bqhd,bkhd->bhqk" XLA:CPU fuses both products and the softmax into
        # one kernel that ran the MiniLM-L6 forward ~30% slower (bench/latency.py).
        q, k, v = (t.reshape(batch, seq, heads, d).transpose(0, 2, 1, 3) for t in (q, k, v))
        # [batch, heads, q, k]; the official code divides by sqrt(head_size).
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
        scores = scores / math.sqrt(d) + mask_bias
        if deterministic or cfg.attention_probs_dropout_prob == 0.0:
            # softmax(scores) @ v with the normalisation moved after the product:
            # exp(scores - max) @ v / sum(exp(scores - max)). The same function (the max
            # is a constant the result does not depend on; the head mask scales rows of
            # probabilities, so it commutes with the division), but the division touches
            # [batch, heads, q, d] instead of [batch, heads, q, k]. On CPU the attention
            # core's forward takes 0.4-0.97x the time, the whole MiniLM forward at batch
            # 32 0.92-0.96x (bench/attention_core.py). Not used with dropout on the
            # probabilities: there the backward got slower.
            shift = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
            unnormalized = jnp.exp(scores - shift)
            denominator = jnp.sum(unnormalized, axis=-1, keepdims=True)
            if head_mask is not None:  # [heads]
                unnormalized *= head_mask.astype(jnp.float32)[None, :, None, None]
            ctx = jnp.einsum("bhqk,bhkd->bhqd", unnormalized.astype(self.dtype), v)
            ctx = (ctx.astype(jnp.float32) / denominator).astype(self.dtype)
            ctx = ctx.transpose(0, 2, 1, 3)
        else:
            probs = nn.Dropout(cfg.attention_probs_dropout_prob)(
                jax.nn.softmax(scores, axis=-1), deterministic=False)
            if head_mask is not None:  # [heads], multiplies post-dropout probabilities
                probs = probs * head_mask.astype(probs.dtype)[None, :, None, None]
            ctx = jnp.einsum("bhqk,bhkd->bqhd", probs.astype(self.dtype), v)
        ctx = ctx.reshape(batch, seq, a)
        attn = dense(cfg.all_head_size, hid, "attention_output")(ctx, in_size=a)
        attn = nn.Dropout(cfg.hidden_dropout_prob)(attn, deterministic=deterministic)
        x = LayerNorm(hid, cfg.layer_norm_eps, self.dtype, name="attention_LayerNorm")(
            attn + x)

        inter = dense(hid, cfg.intermediate_size, "intermediate")(x, out_size=ffn)
        inter = _ACTIVATIONS[cfg.hidden_act](inter)
        if ffn_mask is not None:  # [ffn], multiplies the activations
            inter = inter * ffn_mask.astype(inter.dtype)
        out = dense(cfg.intermediate_size, hid, "output")(inter, in_size=ffn)
        out = nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic)
        x = LayerNorm(hid, cfg.layer_norm_eps, self.dtype, name="output_LayerNorm")(out + x)
        return x, scores


class Encoder(nn.Module):
    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, *, subnet: SubNet, deterministic: bool,
                 head_mask=None, ffn_mask=None, output_attentions: bool = False):
        cfg = self.config
        heads, ffn = subnet.num_heads(cfg), subnet.ffn_size(cfg)
        hidden_states, attentions = [x], []
        for i in subnet.kept_layers(cfg):  # original indices; masks use them too
            x, scores = Layer(cfg, self.dtype, name=f"layer_{i}")(
                x, mask_bias, heads=heads, ffn=ffn, deterministic=deterministic,
                head_mask=None if head_mask is None else head_mask[i, :heads],
                ffn_mask=None if ffn_mask is None else ffn_mask[i, :ffn])
            hidden_states.append(x)
            if output_attentions:
                attentions.append(scores)
        return tuple(hidden_states), (tuple(attentions) if output_attentions else None)


# ----------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------


class DynaBertModel(nn.Module):
    """BERT / RoBERTa encoder with an optional classification, regression or span head.

    Call with ``model.apply({"params": params}, input_ids, attention_mask=...,
    token_type_ids=..., subnet=SubNet(w, d), deterministic=True)``; with
    ``deterministic=False`` pass ``rngs={"dropout": key}``. Under ``jax.jit`` mark
    ``subnet`` (and ``deterministic``, ``output_attentions``) static.

    Args (of ``__call__``):
      input_ids: ``[batch, seq]`` int token ids.
      attention_mask: ``[batch, seq]``, 1 for real tokens and 0 for padding.
      token_type_ids: ``[batch, seq]`` (zeros by default; RoBERTa ignores them).
      position_ids: ``[batch, seq]`` or ``None`` for the default rule.
      subnet: the static sub-network to run.
      head_mask: optional traced ``[layers, heads]`` multiplier of attention
        probabilities (full-size, indexed by original layer and head), for importance.
      ffn_mask: optional traced ``[layers, ffn]`` multiplier of FFN activations.
      output_attentions: also return pre-softmax attention scores.
    """

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
                 position_ids=None, *, subnet: SubNet = FULL, deterministic: bool = True,
                 head_mask=None, ffn_mask=None,
                 output_attentions: bool = False) -> ModelOutput:
        cfg = self.config
        if not isinstance(subnet, SubNet):
            raise TypeError(f"subnet must be a dynabert_jax.SubNet, got {subnet!r}")
        subnet.validate(cfg)
        input_ids = jnp.asarray(input_ids)
        batch, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, seq), jnp.int32)
        if token_type_ids is None or cfg.model_type == "roberta":
            token_type_ids = jnp.zeros((batch, seq), jnp.int32)
        if position_ids is None:
            position_ids = default_position_ids(cfg, input_ids)
        _check_mask_shape("head_mask", head_mask,
                          (cfg.num_hidden_layers, cfg.num_attention_heads))
        _check_mask_shape("ffn_mask", ffn_mask,
                          (cfg.num_hidden_layers, cfg.intermediate_size))

        x = Embeddings(cfg, self.dtype, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic)
        mask_bias = (1.0 - jnp.asarray(attention_mask, jnp.float32)) * -10000.0
        mask_bias = mask_bias[:, None, None, :]
        hidden_states, attentions = Encoder(cfg, self.dtype, name="encoder")(
            x, mask_bias, subnet=subnet, deterministic=deterministic,
            head_mask=head_mask, ffn_mask=ffn_mask, output_attentions=output_attentions)
        seq_out = hidden_states[-1]

        std = cfg.initializer_range
        pooled = None
        if cfg.has_pooler:
            pooled = jnp.tanh(Linear(cfg.hidden_size, cfg.hidden_size, self.dtype, std,
                                     name="pooler")(seq_out[:, 0]))
        logits = None
        drop = nn.Dropout(cfg.classifier_dropout_rate)
        if cfg.head in ("classification", "regression"):
            if cfg.model_type == "roberta":
                logits = RobertaClassificationHead(cfg, self.dtype, name="classifier")(
                    seq_out[:, 0], deterministic)
            else:
                logits = Linear(cfg.hidden_size, cfg.num_labels, self.dtype, std,
                                name="classifier")(drop(pooled, deterministic=deterministic))
        elif cfg.head == "span":
            logits = Linear(cfg.hidden_size, 2, self.dtype, std, name="qa_outputs")(seq_out)
        if logits is not None:
            logits = logits.astype(jnp.float32)
        return ModelOutput(logits=logits, hidden_states=hidden_states,
                           attentions=attentions, pooled_output=pooled)


class RobertaClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj, on the ``<s>`` token."""

    config: ModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        cfg = self.config
        drop = nn.Dropout(cfg.classifier_dropout_rate)
        x = drop(x, deterministic=deterministic)
        x = jnp.tanh(Linear(cfg.hidden_size, cfg.hidden_size, self.dtype,
                            cfg.initializer_range, name="dense")(x))
        x = drop(x, deterministic=deterministic)
        return Linear(cfg.hidden_size, cfg.num_labels, self.dtype, cfg.initializer_range,
                      name="out_proj")(x)


def _check_mask_shape(name, mask, expected):
    if mask is not None and tuple(mask.shape) != expected:
        raise ValueError(f"{name} must have shape [layers, units] = {expected} (full "
                         f"size, original layer order), got {tuple(mask.shape)}")


def default_position_ids(config: ModelConfig, input_ids: Array) -> Array:
    """Position ids ``[batch, seq]``: ``arange`` for BERT, offset by ``pad + 1`` for
    RoBERTa (padding-aware with ``roberta_position_ids="hf"``)."""
    batch, seq = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    if config.model_type != "roberta":
        return positions
    pad = config.pad_token_id
    if config.roberta_position_ids == "official":
        return positions + pad + 1
    not_pad = (input_ids != pad).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + pad


def init_params(model: DynaBertModel, rng: Optional[Array] = None, seq_len: int = 8):
    """Fresh full-size parameters (BERT initialisation: N(0, config.initializer_range),
    zero biases)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(rng, ids, subnet=FULL)["params"]


# ----------------------------------------------------------------------------------
# Sub-network extraction (the inference path)
# ----------------------------------------------------------------------------------


def subnetwork_config(config: ModelConfig, subnet: SubNet) -> ModelConfig:
    """The config of a dense model with exactly the sub-network's shape."""
    return dataclasses.replace(
        config,
        num_hidden_layers=subnet.num_layers(config),
        num_attention_heads=subnet.num_heads(config),
        attention_head_size=config.head_dim,
        intermediate_size=subnet.ffn_size(config),
    )


def _slice_layer(layer, a: int, f: int):
    out = dict(layer)
    for name in ("query", "key", "value"):
        out[name] = {"kernel": layer[name]["kernel"][:, :a], "bias": layer[name]["bias"][:a]}
    out["attention_output"] = {"kernel": layer["attention_output"]["kernel"][:a],
                               "bias": layer["attention_output"]["bias"]}
    out["intermediate"] = {"kernel": layer["intermediate"]["kernel"][:, :f],
                           "bias": layer["intermediate"]["bias"][:f]}
    out["output"] = {"kernel": layer["output"]["kernel"][:f], "bias": layer["output"]["bias"]}
    return out


def extract_subnetwork(model: DynaBertModel, params, subnet: SubNet):
    """Slice the kept heads, neurons and layers out of full-size ``params``.

    Returns ``(small_model, small_params)``: a model of exactly the sub-network's shape
    whose default ``subnet`` (full) runs with no slicing inside the compiled function,
    and dense parameters holding only the kept slices (layers renumbered
    ``layer_0 .. layer_{D-1}``). ``small_model.apply({"params": small_params}, ...)``
    equals ``model.apply({"params": params}, ..., subnet=subnet)``.
    """
    cfg = model.config
    small_cfg = subnetwork_config(cfg, subnet)
    a = small_cfg.all_head_size
    f = small_cfg.intermediate_size
    params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else params
    layers = params.get("encoder", {}) if isinstance(params, dict) else {}
    q = layers.get("layer_0", {}).get("query", {}).get("kernel")
    if len(layers) != cfg.num_hidden_layers or q is None \
            or tuple(q.shape[-1:]) != (cfg.all_head_size,):
        raise ValueError(
            f"extract_subnetwork needs the full model's parameters ({cfg.num_hidden_layers} "
            f"layers, {cfg.num_attention_heads} heads): these have {len(layers)} layers"
            + ("" if q is None else f" and a query of width {q.shape[-1]}")
            + "; were they extracted already?")
    small = {k: v for k, v in params.items() if k != "encoder"}
    small["encoder"] = {
        f"layer_{j}": _slice_layer(params["encoder"][f"layer_{i}"], a, f)
        for j, i in enumerate(subnet.kept_layers(cfg))
    }
    small = jax.tree_util.tree_map(lambda x: jnp.array(x), small)  # own, contiguous copies
    return DynaBertModel(small_cfg, dtype=model.dtype), small
