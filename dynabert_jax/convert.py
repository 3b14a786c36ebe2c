"""Hugging Face PyTorch checkpoints <-> dynabert_jax parameters.

Conversion is driven by an explicit table (:func:`param_table`): one row per parameter,
naming our path, the PyTorch state-dict key and the transform (linear kernels are
transposed: PyTorch stores ``[out, in]``, we store ``[in, out]``). Loading is strict: a
missing, unexpected or mis-shaped key raises :class:`CheckpointError` naming every
offending key and the model types that were tried. The only keys skipped are ones that
are known to be unused (pre-training heads ``cls.*`` / ``lm_head.*``, the legacy
``position_ids`` buffer, a pooler the chosen head does not read, a task head that was not
asked for); each skip is logged.

Supported: ``BertModel``, ``BertForSequenceClassification``,
``BertForQuestionAnswering``, ``RobertaModel``, ``RobertaForSequenceClassification``,
``RobertaForQuestionAnswering`` (with or without the ``bert.`` / ``roberta.`` prefix),
from ``model.safetensors`` (also sharded) or ``pytorch_model.bin`` (loaded with
``torch.load(weights_only=True)``; nothing is ever unpickled). Checkpoints saved by old
transformers versions load too: LayerNorm keys named ``gamma`` / ``beta`` are renamed
(`rename_legacy_keys`), and a ``config.json`` without ``model_type`` gets it from the
weights' key prefix (`read_hf_config`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynabert_jax.modeling import DynaBertModel, ModelConfig, init_params

log = logging.getLogger(__name__)

PathTuple = Tuple[str, ...]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (missing, unexpected or mis-shaped keys,
    unsupported model type or options)."""


class Entry(NamedTuple):
    """One row of the conversion table."""

    path: PathTuple          # our parameter path, e.g. ("encoder", "layer_0", "query", "kernel")
    key: str                 # the PyTorch state-dict key, e.g. "bert.encoder.layer.0...."
    transpose: bool          # linear kernel: ours [in, out] = PyTorch [out, in].T


_ARCHITECTURES = {
    ("bert", None): "BertModel",
    ("bert", "classification"): "BertForSequenceClassification",
    ("bert", "regression"): "BertForSequenceClassification",
    ("bert", "span"): "BertForQuestionAnswering",
    ("roberta", None): "RobertaModel",
    ("roberta", "classification"): "RobertaForSequenceClassification",
    ("roberta", "regression"): "RobertaForSequenceClassification",
    ("roberta", "span"): "RobertaForQuestionAnswering",
}
_HEAD_KEY_PREFIXES = ("classifier.", "qa_outputs.")
_KNOWN_UNUSED_PREFIXES = ("cls.", "lm_head.")  # pre-training heads (MLM / NSP)

# ----------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------


def _linear(path: PathTuple, key: str) -> List[Entry]:
    return [Entry(path + ("kernel",), key + ".weight", True),
            Entry(path + ("bias",), key + ".bias", False)]


def _layer_norm(path: PathTuple, key: str) -> List[Entry]:
    return [Entry(path + ("scale",), key + ".weight", False),
            Entry(path + ("bias",), key + ".bias", False)]


def encoder_table(config: ModelConfig, prefix: str) -> List[Entry]:
    """Rows for the embeddings, every layer and the pooler (keys carry ``prefix``)."""
    p = prefix
    rows = [
        Entry(("embeddings", name, "embedding"), f"{p}embeddings.{name}.weight", False)
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ]
    rows += _layer_norm(("embeddings", "LayerNorm"), f"{p}embeddings.LayerNorm")
    for i in range(config.num_hidden_layers):
        ours, theirs = ("encoder", f"layer_{i}"), f"{p}encoder.layer.{i}"
        for name in ("query", "key", "value"):
            rows += _linear(ours + (name,), f"{theirs}.attention.self.{name}")
        rows += _linear(ours + ("attention_output",), f"{theirs}.attention.output.dense")
        rows += _layer_norm(ours + ("attention_LayerNorm",),
                            f"{theirs}.attention.output.LayerNorm")
        rows += _linear(ours + ("intermediate",), f"{theirs}.intermediate.dense")
        rows += _linear(ours + ("output",), f"{theirs}.output.dense")
        rows += _layer_norm(ours + ("output_LayerNorm",), f"{theirs}.output.LayerNorm")
    if config.has_pooler:
        rows += _linear(("pooler",), f"{p}pooler.dense")
    return rows


def head_table(config: ModelConfig) -> List[Entry]:
    """Rows for the task head (its keys never carry the ``bert.`` prefix)."""
    if config.head in ("classification", "regression"):
        if config.model_type == "roberta":
            return (_linear(("classifier", "dense"), "classifier.dense")
                    + _linear(("classifier", "out_proj"), "classifier.out_proj"))
        return _linear(("classifier",), "classifier")
    if config.head == "span":
        return _linear(("qa_outputs",), "qa_outputs")
    return []


def param_table(config: ModelConfig, prefix: Optional[str] = None) -> List[Entry]:
    """The whole table. ``prefix`` defaults to Hugging Face's own layout: ``bert.`` /
    ``roberta.`` when the model has a head, none for a bare encoder."""
    if prefix is None:
        prefix = f"{config.model_type}." if config.head else ""
    return encoder_table(config, prefix) + head_table(config)


def architecture(config: ModelConfig) -> str:
    return _ARCHITECTURES[(config.model_type, config.head)]


# ----------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------


def read_json(file, missing: str):
    """The JSON in ``file``; :class:`CheckpointError` with ``missing`` when there is no
    such file, or naming the file when it is not valid JSON."""
    file = pathlib.Path(file)
    if not file.is_file():
        raise CheckpointError(missing)
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None


def mismatch_error(header: str, groups: Mapping[str, Sequence[str]]
                   ) -> Optional[CheckpointError]:
    """An error listing every non-empty group of offending keys under ``header``
    (``{"missing keys": [...], ...}``), or None when all groups are empty."""
    parts = [f"  {name} ({len(items)}): {list(items)}" for name, items in groups.items()
             if items]
    return CheckpointError("\n".join([header] + parts)) if parts else None


def read_hf_config(path) -> dict:
    """The ``config.json`` of checkpoint folder ``path``. One without ``model_type`` (as
    transformers 2.x wrote them, e.g. for the official DynaBERT checkpoints) gets it from
    the prefix of the folder's weight keys (`model_type_from_keys`)."""
    path = pathlib.Path(path)
    if path.is_file():
        raise CheckpointError(f"{path} is a file; give the Hugging Face checkpoint folder "
                              f"that holds it and its config.json ({path.parent})")
    hf = read_json(path / "config.json", f"{path} is not a Hugging Face checkpoint "
                                         f"directory: no config.json in it")
    if isinstance(hf, dict) and hf.get("model_type") is None:
        model_type = model_type_from_keys(load_state_dict(path))
        if model_type is None:
            raise CheckpointError(
                f"{path / 'config.json'} has no \"model_type\", and the weights' keys do "
                f"not tell (no 'bert.' or 'roberta.' prefix): add "
                f"\"model_type\": \"bert\" (or \"roberta\") to config.json")
        log.info("%s has no model_type: %r, from its weights' key prefix",
                 path / "config.json", model_type)
        hf = dict(hf, model_type=model_type)
    return hf


def model_type_from_keys(keys) -> Optional[str]:
    """``"bert"`` or ``"roberta"`` when the state-dict keys carry that prefix (and not the
    other), else None: a bare encoder's keys are the same for both."""
    found = {t for t in ("bert", "roberta") if any(k.startswith(f"{t}.") for k in keys)}
    return found.pop() if len(found) == 1 else None


def config_from_hf(hf: Mapping, head: Optional[str] = None,
                   num_labels: Optional[int] = None, **overrides) -> ModelConfig:
    """Our :class:`ModelConfig` from a Hugging Face ``config.json`` dict."""
    model_type = hf.get("model_type")
    if model_type not in ("bert", "roberta"):
        raise CheckpointError(
            f"unsupported model_type {model_type!r} (architectures "
            f"{hf.get('architectures')}); supported: 'bert' (BertModel, "
            f"BertForSequenceClassification, BertForQuestionAnswering) and 'roberta' "
            f"(RobertaModel, RobertaForSequenceClassification, RobertaForQuestionAnswering)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type "
                              f"{hf['position_embedding_type']!r} is not supported "
                              f"(only 'absolute')")
    if hf.get("pruned_heads"):
        raise CheckpointError("checkpoints with pruned_heads are not supported; load the "
                              "unpruned model")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise CheckpointError("decoder / cross-attention BERT models are not supported")
    if num_labels is None:
        num_labels = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                           "num_attention_heads", "intermediate_size") if k not in hf]
    if missing:
        raise CheckpointError(f"config.json lacks {missing}: not a complete "
                              f"{model_type} config")
    kwargs = dict(
        model_type=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_act=hf.get("hidden_act", "gelu"),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=hf.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob", 0.1),
        classifier_dropout=hf.get("classifier_dropout"),
        initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id", 1 if model_type == "roberta" else 0),
        head=head,
        num_labels=1 if head == "regression" else num_labels,
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def config_to_hf(config: ModelConfig, id2label: Optional[Mapping[int, str]] = None) -> dict:
    """A ``config.json`` dict that stock transformers loads."""
    if config.has_reduced_heads:
        raise CheckpointError(
            f"a model with {config.num_attention_heads} heads of "
            f"{config.attention_head_size} (hidden {config.hidden_size}) has fewer heads "
            f"than a stock transformers 5 BERT config can express (no pruned_heads); "
            f"export sub-networks from the full model with "
            f"dynabert_jax.export.export_pytorch, and load them with "
            f"dynabert_jax.export.load_pytorch_subnetwork")
    out = {
        "architectures": [architecture(config)],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "classifier_dropout": config.classifier_dropout,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
    }
    if config.model_type == "roberta":
        out.update(bos_token_id=0, eos_token_id=2)
    if config.head in ("classification", "regression"):
        n = config.num_labels
        id2label = dict(id2label or {i: f"LABEL_{i}" for i in range(n)})
        out["id2label"] = {str(k): v for k, v in id2label.items()}
        out["label2id"] = {v: int(k) for k, v in id2label.items()}
        if config.head == "regression":
            out["problem_type"] = "regression"
    return out


# ----------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------


def _to_numpy_f32(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        import torch

        x = x.detach().to("cpu")
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy().astype(np.float32, copy=False)
    arr = np.asarray(x)
    return arr.astype(np.float32) if arr.dtype != np.float32 else arr


def load_state_dict(path) -> Dict[str, np.ndarray]:
    """All tensors of a checkpoint directory (or file) as float32 numpy arrays.

    Prefers ``model.safetensors`` (and its sharded index); falls back to
    ``pytorch_model.bin`` loaded with ``torch.load(weights_only=True)``.
    """
    path = pathlib.Path(path)
    files: List[pathlib.Path]
    if path.is_file():
        files = [path]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif (path / "model.safetensors.index.json").is_file():
        files = _shards(path / "model.safetensors.index.json")
    elif (path / "pytorch_model.bin").is_file():
        files = [path / "pytorch_model.bin"]
    elif (path / "pytorch_model.bin.index.json").is_file():
        files = _shards(path / "pytorch_model.bin.index.json")
    else:
        raise CheckpointError(f"no weights in {path}: expected model.safetensors (or its "
                              f"sharded index) or pytorch_model.bin")
    state: Dict[str, np.ndarray] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.numpy import load_file

                part = load_file(str(f))
            else:
                import torch

                part = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # corrupted / truncated / not a checkpoint
            raise CheckpointError(f"could not read weights from {f}: {e}") from e
        if not isinstance(part, Mapping) or not all(
                isinstance(k, str) and hasattr(v, "shape") for k, v in part.items()):
            keys = list(part)[:5] if isinstance(part, Mapping) else type(part).__name__
            raise CheckpointError(f"{f} is not a state dict of named tensors (it holds "
                                  f"{keys}); save model.state_dict() itself")
        state.update({k: _to_numpy_f32(v) for k, v in part.items()})
    return rename_legacy_keys(state, path)


_LEGACY_LAYER_NORM = {"LayerNorm.gamma": "LayerNorm.weight",
                      "LayerNorm.beta": "LayerNorm.bias"}


def rename_legacy_keys(state: Mapping[str, np.ndarray], source="state dict"
                       ) -> Dict[str, np.ndarray]:
    """``state`` with the LayerNorm keys of old checkpoints (``...LayerNorm.gamma`` /
    ``.beta``: the original ``bert-base-uncased`` files, DynaBERT's backbone) named as
    today (``.weight`` / ``.bias``), as transformers renames them on load. A checkpoint
    holding both names of one tensor is ambiguous: :class:`CheckpointError`."""
    renamed = {k: k[:-len(old)] + new for k in state
               for old, new in _LEGACY_LAYER_NORM.items() if k.endswith(old)}
    both = sorted(k for k, new in renamed.items() if new in state)
    if both:
        raise CheckpointError(
            f"{source} holds {len(both)} LayerNorm tensor(s) under both the old and the "
            f"new name, so which to load is ambiguous: "
            f"{[f'{k} / {renamed[k]}' for k in both]}")
    if renamed:
        log.info("%s: renamed %d legacy LayerNorm keys (gamma / beta -> weight / bias)",
                 source, len(renamed))
    return {renamed.get(k, k): v for k, v in state.items()}


def _shards(index_file: pathlib.Path) -> List[pathlib.Path]:
    """The weight files a sharded checkpoint's index names."""
    index = read_json(index_file, f"no {index_file}")
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise CheckpointError(f"{index_file} has no 'weight_map' of tensor names to files")
    return [index_file.parent / f for f in sorted(set(index["weight_map"].values()))]


def _get(tree, path: PathTuple):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: PathTuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _detect_prefix(config: ModelConfig, keys) -> Optional[str]:
    for prefix in (f"{config.model_type}.", ""):
        if f"{prefix}embeddings.word_embeddings.weight" in keys:
            return prefix
    return None


def _known_unused(key: str, config: ModelConfig, prefix: str) -> Optional[str]:
    """Why ``key`` may be skipped, or None if it is really unexpected."""
    if key.startswith(_KNOWN_UNUSED_PREFIXES):
        return "pre-training head"
    if key.endswith("position_ids"):
        return "legacy buffer"
    if key.startswith(f"{prefix}pooler.") and not config.has_pooler:
        return f"pooler, unused by the {config.head!r} head"
    if key.startswith(_HEAD_KEY_PREFIXES):
        return f"task head not requested (head={config.head!r})"
    return None


def _pooler_hint(config: ModelConfig, prefix: str, missing: Sequence[str]
                 ) -> Optional[str]:
    """How to load a checkpoint with no pooler at all (a masked-LM or question-answering
    model, roberta-base's layout), or None when the pooler is not wholly missing. Loading
    stays strict (a random pooler would silently change ``pooled_output``); the encoder
    alone loads with ``pooler=False``, but BERT's classifier reads the pooler."""
    keys = [e.key for e in _linear(("pooler",), f"{prefix}pooler.dense")]
    if not all(k in missing for k in keys):
        return None
    if config.model_type == "bert" and config.head in ("classification", "regression"):
        return (f"this checkpoint has no pooler, which BERT's {config.head} head reads: "
                f"start from one that has it (BertModel, BertForPreTraining, "
                f"BertForSequenceClassification)")
    return "this checkpoint has no pooler: pass pooler=False to load the model without it"


def params_from_state_dict(config: ModelConfig, state: Mapping[str, np.ndarray],
                           rng: Optional[jax.Array] = None, source: str = "state dict",
                           require_head: bool = False):
    """Convert a PyTorch state dict to our parameter tree (strict; see module doc).

    A requested head that the checkpoint lacks entirely (e.g. a classifier on top of a
    pre-trained encoder) is initialised fresh from ``rng``, or with ``require_head`` is
    an error (a fine-tuned model was expected); a head that is only partly there is an
    error.
    """
    tried = f"{architecture(config)} (model_type {config.model_type!r}, key prefix " \
            f"'{config.model_type}.' or none)"
    prefix = _detect_prefix(config, state.keys())
    if prefix is None:
        sample = sorted(state)[:8]
        raise CheckpointError(
            f"{source} does not look like a {config.model_type} checkpoint: no "
            f"'{config.model_type}.embeddings.word_embeddings.weight' or "
            f"'embeddings.word_embeddings.weight' key; tried {tried}. First keys: {sample}")
    enc, head = encoder_table(config, prefix), head_table(config)
    head_present = [e for e in head if e.key in state]
    fresh_head = bool(head) and not head_present
    if fresh_head and require_head:
        raise CheckpointError(
            f"{source} has no {config.head} head ({', '.join(sorted({e.key for e in head}))}):"
            f" a fine-tuned model was expected, not a pre-trained encoder")
    table = enc + ([] if fresh_head else head)

    missing = [e.key for e in table if e.key not in state]
    mismatched = []
    params: dict = {}
    expected = jax.eval_shape(lambda: init_params(DynaBertModel(config)))
    for e in table:
        if e.key not in state:
            continue
        value = state[e.key].T if e.transpose else state[e.key]
        want = tuple(_get(expected, e.path).shape)
        if tuple(value.shape) != want:
            got = tuple(state[e.key].shape)
            need = want[::-1] if e.transpose else want
            mismatched.append(f"{e.key}: checkpoint {list(got)}, model expects {list(need)}")
            continue
        _set(params, e.path, jnp.asarray(np.ascontiguousarray(value)))
    used = {e.key for e in table}
    skipped, unexpected = {}, []
    for k in sorted(set(state) - used):
        why = _known_unused(k, config, prefix)
        if why is None:
            unexpected.append(k)
        else:
            skipped[k] = why
    error = mismatch_error(f"{source} does not match {tried}:", {
        "missing keys": missing, "unexpected keys": unexpected,
        "shape mismatches": mismatched})
    if error:
        hint = _pooler_hint(config, prefix, missing)
        raise CheckpointError(f"{error}\n  {hint}") if hint else error
    for k, why in skipped.items():
        log.info("skipped %s (%s)", k, why)
    if fresh_head:
        fresh = init_params(DynaBertModel(config),
                            jax.random.PRNGKey(0) if rng is None else rng)
        for e in head:
            _set(params, e.path, _get(fresh, e.path))
        log.warning("%s has no %s head: initialised it fresh (%s); fine-tune before use",
                    source, config.head, ", ".join(sorted({e.key for e in head})))
    return params


def state_dict_from_params(config: ModelConfig, params,
                           prefix: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Our parameters as a Hugging Face state dict (contiguous float32 numpy arrays)."""
    out = {}
    for e in param_table(config, prefix):
        value = np.asarray(_get(params, e.path), dtype=np.float32)
        out[e.key] = np.ascontiguousarray(value.T if e.transpose else value)
    return out


# ----------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------


def from_pretrained_pytorch(path, head: Optional[str] = None,
                            num_labels: Optional[int] = None, *, dtype=jnp.float32,
                            rng: Optional[jax.Array] = None, require_head: bool = False,
                            **config_overrides):
    """Load a Hugging Face PyTorch BERT / RoBERTa checkpoint directory.

    Args:
      path: folder with ``config.json`` and ``model.safetensors`` (or
        ``pytorch_model.bin``).
      head: ``None`` (encoder only), ``"classification"``, ``"regression"`` or
        ``"span"``. A head missing from the checkpoint is initialised from ``rng``
        (with ``require_head``: a `CheckpointError`).
      num_labels: classes of the classification head; by default from the checkpoint.
      dtype: computation dtype of the returned model (parameters stay float32).
      **config_overrides: fields of :class:`ModelConfig` to override (e.g. dropout;
        ``pooler=False`` for a checkpoint without a pooler, such as roberta-base).

    Returns:
      ``(model, params)``: a :class:`DynaBertModel` and its full-size parameters.
    """
    hf = read_hf_config(path)
    config = config_from_hf(hf, head=head, num_labels=num_labels, **config_overrides)
    state = load_state_dict(path)
    if num_labels is None and head == "classification":
        for key in ("classifier.weight", "classifier.out_proj.weight"):
            if key in state:  # the checkpoint's own head decides
                config = dataclasses.replace(config, num_labels=state[key].shape[0])
    params = params_from_state_dict(config, state, rng=rng, source=str(path),
                                    require_head=require_head)
    return DynaBertModel(config, dtype=dtype), params


def label_order(hf_config: Mapping, labels: Sequence[str]) -> Optional[List[int]]:
    """Where each of ``labels`` (a task's, in id order) is among a fine-tuned checkpoint's
    outputs, when its ``id2label`` names the same labels (ignoring case) in another order;
    ``None`` when they are in order or named otherwise (``LABEL_0``, ``negative``...).

    RoBERTa's MNLI head, for one, is contradiction / neutral / entailment, against GLUE's
    contradiction / entailment / neutral (the official code swaps the two by hand).
    """
    id2label = hf_config.get("id2label") or {}
    try:
        names = [str(v).lower() for _, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))]
    except (TypeError, ValueError):
        return None
    want = [str(x).lower() for x in labels]
    if names == want or sorted(names) != sorted(want):
        return None
    return [names.index(w) for w in want]


def permute_labels(config: ModelConfig, params, order: Sequence[int]):
    """``params`` with the classifier's outputs taken in ``order`` (see `label_order`)."""
    *_, last = head_table(config)   # the output layer's bias (its kernel comes first)
    path = last.path[:-1]
    out = jax.tree_util.tree_map(lambda x: x, params)   # new containers, same arrays
    layer = dict(_get(out, path))
    layer["kernel"] = layer["kernel"][:, jnp.asarray(order)]
    layer["bias"] = layer["bias"][jnp.asarray(order)]
    _set(out, path, layer)
    return out


TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json")


def save_pretrained_pytorch(model: DynaBertModel, params, out_dir, *,
                            id2label: Optional[Mapping[int, str]] = None,
                            tokenizer_dir=None) -> pathlib.Path:
    """Write ``config.json`` + ``model.safetensors`` that stock transformers loads.

    The full model is written with Hugging Face's key names (``bert.`` prefix when it has
    a head). Files are written to a temporary folder and moved into place, so a crash
    never leaves a half-written checkpoint. ``tokenizer_dir`` copies the tokenizer files
    along.
    """
    config = model.config
    return write_checkpoint_dir(out_dir, config_to_hf(config, id2label),
                                state_dict_from_params(config, params), tokenizer_dir)


CHECKPOINT_FILES = ("config.json", "model.safetensors") + TOKENIZER_FILES


def write_checkpoint_dir(out_dir, hf_config: Mapping, state: Mapping[str, np.ndarray],
                         tokenizer_dir=None, extra_files: Optional[Mapping[str, str]] = None
                         ) -> pathlib.Path:
    """Write ``config.json``, ``model.safetensors`` (and tokenizer / extra text files)
    into ``out_dir`` atomically: everything goes to a new folder beside it first, which
    then replaces ``out_dir``, so a crash never leaves a half-written checkpoint. An
    ``out_dir`` holding files of other kinds is refused (`replace_dir`)."""
    from safetensors.numpy import save_file

    out_dir = pathlib.Path(out_dir)
    ours = CHECKPOINT_FILES + tuple(extra_files or ())
    check_replaceable(out_dir, ours)
    tmp = staging_dir(out_dir)
    save_file(dict(state), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    copy_tokenizer_files(tokenizer_dir, tmp)
    replace_dir(tmp, out_dir, ours)
    return out_dir


def copy_tokenizer_files(tokenizer_dir, out_dir) -> None:
    """Copy the tokenizer files of ``tokenizer_dir`` (if any, and if given) along."""
    if tokenizer_dir is None:
        return
    for name in TOKENIZER_FILES:
        src = pathlib.Path(tokenizer_dir) / name
        if src.is_file():
            shutil.copy2(src, pathlib.Path(out_dir) / name)


def _named(out_dir) -> pathlib.Path:
    out_dir = pathlib.Path(out_dir)
    return out_dir.resolve() if out_dir.name in ("", ".", "..") else out_dir


def staging_dir(out_dir) -> pathlib.Path:
    """A new empty folder beside ``out_dir`` to write into before `replace_dir` moves it
    into place. Its name is hidden and unique, so it is never a folder of the user's."""
    out_dir = _named(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))


def check_replaceable(out_dir, ours: Sequence[str]) -> None:
    """`FileExistsError` unless ``out_dir`` is missing, or a folder that holds only files
    named in ``ours`` (what the writer makes: an earlier export, which it replaces)."""
    out_dir = pathlib.Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; give a folder to "
                              f"write into")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in set(ours))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{out_dir} already holds files this export does not write ({shown}); "
            f"replacing the folder would lose them. Write to a new or empty folder, or "
            f"move them away")


def replace_dir(tmp: pathlib.Path, out_dir, ours: Sequence[str] = ()) -> None:
    """Move the finished folder ``tmp`` to ``out_dir``, replacing an earlier export
    there (a folder holding only names in ``ours`` or ``tmp``'s files; anything else is
    refused by `check_replaceable`, and ``tmp`` removed)."""
    out_dir = _named(out_dir)
    try:
        check_replaceable(out_dir, tuple(ours) + tuple(p.name for p in tmp.iterdir()))
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-",
                                            dir=out_dir.parent))
        os.replace(out_dir, old)   # onto the new empty folder: POSIX rename allows it
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
