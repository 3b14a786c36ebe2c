"""Export one sub-network of a DynaBERT as a standalone model.

Three formats, each holding only what the sub-network keeps (dense, smaller tensors):

* **JAX** (:func:`export_jax`): ``params.safetensors`` (the small parameter tree, keys
  like ``encoder/layer_0/query/kernel``), ``dynabert_config.json`` (the small model's
  :class:`~dynabert_jax.modeling.ModelConfig` and where it came from) and
  ``forward.jax_exported``, a :mod:`jax.export` serialized forward function
  ``(params, input_ids, attention_mask, token_type_ids) -> output`` that runs with
  jax and safetensors alone, without this library (see docs/deploy.md).
  :func:`load_jax_subnetwork` rebuilds ``(model, params)``; :func:`load_exported` the
  serialized function.
* **Hugging Face PyTorch** (:func:`export_pytorch`): ``config.json`` +
  ``model.safetensors``. Fewer layers and a smaller ``intermediate_size`` are stock
  config fields; fewer heads per layer are not in transformers 5, so the config keeps
  the original ``num_attention_heads`` and lists the removed heads in ``pruned_heads``
  (which transformers 4.x applies itself in ``from_pretrained``) and in a ``dynabert``
  block. :func:`load_pytorch_subnetwork` builds the stock transformers 5 model, prunes
  its attention with ``prune_linear_layer`` and loads the weights strictly.
* **ONNX** (:func:`export_onnx`): traced from the PyTorch sub-network with dynamic batch
  and sequence axes; runs in onnxruntime.

The command line exports from a training run and checks every format against the JAX
sub-network on the spot::

    python -m dynabert_jax.export --workdir runs/sst2 --width 0.5 --depth 0.75 \\
        --out exported/sst2-w0.5-d0.75
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dynabert_jax.convert import (
    CHECKPOINT_FILES,
    TOKENIZER_FILES,
    CheckpointError,
    check_replaceable,
    config_to_hf,
    copy_tokenizer_files,
    mismatch_error,
    read_json,
    read_hf_config,
    replace_dir,
    staging_dir,
    state_dict_from_params,
    write_checkpoint_dir,
)
from dynabert_jax.flops import count_params
from dynabert_jax.modeling import DynaBertModel, ModelConfig, extract_subnetwork, init_params
from dynabert_jax.subnet import SubNet

FORMAT = "dynabert_jax.subnetwork"
FORMAT_VERSION = 1
JAX_CONFIG = "dynabert_config.json"
JAX_PARAMS = "params.safetensors"
JAX_EXPORTED = "forward.jax_exported"
JAX_FILES = (JAX_CONFIG, JAX_PARAMS, JAX_EXPORTED) + TOKENIZER_FILES
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


# ----------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------


def _check_full_model(model: DynaBertModel) -> None:
    cfg = model.config
    if cfg.has_reduced_heads:
        raise ValueError(
            f"this model has {cfg.num_attention_heads} heads of {cfg.attention_head_size} "
            f"(hidden {cfg.hidden_size}): it is already an extracted sub-network; export "
            f"from the full DynaBERT model and its parameters")


def _extract(model: DynaBertModel, params, subnet: SubNet):
    if not isinstance(subnet, SubNet):
        raise TypeError(f"subnet must be a dynabert_jax.SubNet, got {subnet!r}")
    _check_full_model(model)
    subnet.validate(model.config)  # a width or depth that keeps nothing: ValueError
    return extract_subnetwork(model, params, subnet)


def output_names(config: ModelConfig) -> Tuple[str, ...]:
    """Names of the exported model's outputs (Hugging Face's, for the head)."""
    if config.head in ("classification", "regression"):
        return ("logits",)
    if config.head == "span":
        return ("start_logits", "end_logits")
    return ("last_hidden_state",)


def _source_record(model: DynaBertModel, subnet: SubNet, small_cfg: ModelConfig) -> dict:
    cfg = model.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "width": subnet.width,
        "depth": subnet.depth,
        "heads_per_layer": small_cfg.num_attention_heads,
        "intermediate_size": small_cfg.intermediate_size,
        "kept_layers": list(subnet.kept_layers(cfg)),
        "source_num_hidden_layers": cfg.num_hidden_layers,
        "source_num_attention_heads": cfg.num_attention_heads,
        "source_intermediate_size": cfg.intermediate_size,
        "params": count_params(cfg, subnet, include_head=True),
    }


def _flat(tree) -> Dict[str, Any]:
    return {"/".join(str(getattr(p, "key", p)) for p in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flatten_params(params) -> Dict[str, np.ndarray]:
    """``{"encoder/layer_0/query/kernel": array, ...}`` (contiguous numpy arrays)."""
    return {k: np.ascontiguousarray(np.asarray(jax.device_get(v)))
            for k, v in _flat(params).items()}


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _load_safetensors(path: pathlib.Path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # truncated, corrupted, not safetensors
        raise CheckpointError(f"could not read weights from {path}: {e}") from e


# ----------------------------------------------------------------------------------
# JAX: safetensors + config + jax.export
# ----------------------------------------------------------------------------------


def forward_fn(model: DynaBertModel) -> Callable:
    """``f(params, input_ids, attention_mask, token_type_ids)`` -> the model's output
    (logits, ``[batch, seq, 2]`` span logits, or the last hidden state)."""
    def f(params, input_ids, attention_mask, token_type_ids):
        out = model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
                          deterministic=True)
        return out.last_hidden_state if out.logits is None else out.logits

    return f


def _export_forward(model: DynaBertModel, params, batch_size: Optional[int],
                    seq_len: Optional[int], platforms: Optional[Sequence[str]]) -> bytes:
    from jax import export

    b, s = export.symbolic_shape("b, s")
    shape = (b if batch_size is None else int(batch_size),
             s if seq_len is None else int(seq_len))
    ids = jax.ShapeDtypeStruct(shape, jnp.int32)
    pspec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    kwargs = {} if platforms is None else {"platforms": tuple(platforms)}
    exported = export.export(jax.jit(forward_fn(model)), **kwargs)(pspec, ids, ids, ids)
    return exported.serialize()


def export_jax(model: DynaBertModel, params, subnet: SubNet, out_dir, *,
               batch_size: Optional[int] = None, seq_len: Optional[int] = None,
               platforms: Optional[Sequence[str]] = None, serialize_forward: bool = True,
               id2label: Optional[Mapping[int, str]] = None,
               tokenizer_dir=None) -> pathlib.Path:
    """Write ``subnet`` of ``(model, params)`` as a standalone JAX model in ``out_dir``.

    Args:
      model, params: the full DynaBERT model and its (trained) parameters.
      subnet: any width/depth the rules allow, trained or not (e.g. ``SubNet(0.375)``).
      batch_size, seq_len: shapes of the serialized function; ``None`` (default) keeps
        that axis symbolic, so one artifact serves every batch size / sequence length
        up to ``max_position_embeddings``.
      platforms: lowering platforms for :mod:`jax.export` (default: the current
        backend), e.g. ``("cpu", "cuda")``.
      serialize_forward: also write ``forward.jax_exported``.
    """
    small_model, small_params = _extract(model, params, subnet)
    small_cfg = small_model.config
    from safetensors.numpy import save_file

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(small_cfg),
        "dynabert": _source_record(model, subnet, small_cfg),
        "source_config": dataclasses.asdict(model.config),
        "outputs": list(output_names(small_cfg)),
    }
    if id2label is not None:
        meta["id2label"] = {str(k): v for k, v in id2label.items()}
    out_dir = pathlib.Path(out_dir)
    check_replaceable(out_dir, JAX_FILES)
    tmp = staging_dir(out_dir)
    save_file(flatten_params(small_params), str(tmp / JAX_PARAMS),
              metadata={"format": FORMAT})
    if serialize_forward:
        (tmp / JAX_EXPORTED).write_bytes(
            _export_forward(small_model, small_params, batch_size, seq_len, platforms))
        meta["exported"] = {
            "file": JAX_EXPORTED,
            "inputs": list(INPUT_NAMES),
            "input_dtype": "int32",
            "batch_size": batch_size if batch_size is not None else "dynamic",
            "seq_len": seq_len if seq_len is not None else "dynamic",
            "platforms": list(platforms) if platforms else [jax.default_backend()],
            "output": output_names(small_cfg)[0] if small_cfg.head != "span"
            else "span_logits [batch, seq, 2] (start, end)",
        }
    (tmp / JAX_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    copy_tokenizer_files(tokenizer_dir, tmp)
    replace_dir(tmp, out_dir, JAX_FILES)
    return out_dir


def _read_jax_meta(path: pathlib.Path) -> dict:
    meta = read_json(path / JAX_CONFIG, f"{path} is not an exported dynabert_jax "
                                        f"sub-network: no {JAX_CONFIG}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / JAX_CONFIG} is not a dynabert_jax sub-network "
                              f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer dynabert_jax (format "
                              f"version {meta['format_version']} > {FORMAT_VERSION})")
    return meta


def _model_config(path: pathlib.Path, meta: Mapping) -> ModelConfig:
    try:
        return ModelConfig(**meta["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path / JAX_CONFIG} has an invalid model config: {e}") from e


def load_jax_subnetwork(path, dtype=jnp.float32) -> Tuple[DynaBertModel, dict]:
    """``(model, params)`` of a folder written by :func:`export_jax`; every tensor is
    checked against the config (names and shapes) before anything is returned."""
    path = pathlib.Path(path)
    meta = _read_jax_meta(path)
    model = DynaBertModel(_model_config(path, meta), dtype=dtype)
    flat = _load_safetensors(path / JAX_PARAMS)
    expected = _flat(jax.eval_shape(lambda: init_params(model)))
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    bad = [f"{k}: file {list(flat[k].shape)}, config expects {list(expected[k].shape)}"
           for k in sorted(set(flat) & set(expected)) if tuple(flat[k].shape) != tuple(expected[k].shape)]
    error = mismatch_error(f"{path / JAX_PARAMS} does not match its config:", {
        "missing": missing, "unexpected": unexpected, "shape mismatches": bad})
    if error:
        raise error
    params = unflatten_params({k: jnp.asarray(v) for k, v in flat.items()})
    return model, params


def load_exported(path) -> Callable:
    """The serialized forward of a folder written by :func:`export_jax`, bound to its
    parameters: ``f(input_ids, attention_mask=None, token_type_ids=None) -> array``."""
    from jax import export

    path = pathlib.Path(path)
    meta = _read_jax_meta(path)
    if not (path / JAX_EXPORTED).is_file():
        raise CheckpointError(f"{path} has no {JAX_EXPORTED} (exported with "
                              f"serialize_forward=False)")
    try:
        exported = export.deserialize(bytearray((path / JAX_EXPORTED).read_bytes()))
    except Exception as e:
        raise CheckpointError(f"could not deserialize {path / JAX_EXPORTED}: {e}") from e
    params = unflatten_params(_load_safetensors(path / JAX_PARAMS))
    cfg = _model_config(path, meta)
    max_len = max_positions(cfg)

    def call(input_ids, attention_mask=None, token_type_ids=None):
        # Out-of-range ids would not fail inside the compiled function: its embedding
        # lookups return NaN rows for them. So they are refused here.
        ids = np.asarray(input_ids, np.int32)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {ids.shape}")
        if ids.shape[1] > max_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's "
                             f"{max_len} positions")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask,
                                                                           np.int32)
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(
            token_type_ids, np.int32)
        for name, x, high in (("input_ids", ids, cfg.vocab_size),
                              ("attention_mask", mask, 2),
                              ("token_type_ids", types, cfg.type_vocab_size)):
            if x.shape != ids.shape:
                raise ValueError(f"{name} has shape {x.shape}, input_ids {ids.shape}")
            if x.size and (x.min() < 0 or x.max() >= high):
                raise ValueError(f"{name} must lie in [0, {high}), got values from "
                                 f"{x.min()} to {x.max()}")
        return exported.call(params, ids, mask, types)

    call.exported = exported
    call.meta = meta
    return call


# ----------------------------------------------------------------------------------
# Hugging Face PyTorch
# ----------------------------------------------------------------------------------


def _hf_subnet_config(model: DynaBertModel, subnet: SubNet, small_cfg: ModelConfig,
                      id2label) -> dict:
    cfg = model.config
    # A stock config: original head count (so head size = hidden / heads), fewer
    # layers, smaller FFN; the removed heads are listed per layer.
    stock = dataclasses.replace(small_cfg, num_attention_heads=cfg.num_attention_heads,
                                attention_head_size=None)
    hf = config_to_hf(stock, id2label)
    kept = small_cfg.num_attention_heads
    removed = list(range(kept, cfg.num_attention_heads))
    hf["pruned_heads"] = ({str(i): removed for i in range(small_cfg.num_hidden_layers)}
                          if removed else {})
    hf["dynabert"] = _source_record(model, subnet, small_cfg)
    return hf


def export_pytorch(model: DynaBertModel, params, subnet: SubNet, out_dir, *,
                   id2label: Optional[Mapping[int, str]] = None,
                   tokenizer_dir=None) -> pathlib.Path:
    """Write ``subnet`` as a Hugging Face checkpoint (``config.json`` +
    ``model.safetensors``, tokenizer files if ``tokenizer_dir``), atomically.

    Load it with :func:`load_pytorch_subnetwork` (transformers 5), or with plain
    ``AutoModelForSequenceClassification.from_pretrained`` on transformers 4.x, which
    applies ``pruned_heads`` itself. A width that keeps every head is a stock model for
    any version.
    """
    small_model, small_params = _extract(model, params, subnet)
    small_cfg = small_model.config
    hf = _hf_subnet_config(model, subnet, small_cfg, id2label)
    state = state_dict_from_params(small_cfg, small_params)
    return write_checkpoint_dir(out_dir, hf, state, tokenizer_dir)


def _model_class(hf: Mapping):
    import transformers

    archs = hf.get("architectures") or []
    name = archs[0] if archs else {"bert": "BertModel", "roberta": "RobertaModel"}.get(
        hf.get("model_type"))
    supported = ("BertModel", "BertForSequenceClassification", "BertForQuestionAnswering",
                 "RobertaModel", "RobertaForSequenceClassification",
                 "RobertaForQuestionAnswering")
    if name not in supported:
        raise CheckpointError(f"architecture {name!r} is not supported by the "
                              f"sub-network loader; supported: {supported}")
    return getattr(transformers, name)


def _hf_output_names(hf: Mapping) -> Tuple[str, ...]:
    arch = (hf.get("architectures") or [""])[0]
    if arch.endswith("ForSequenceClassification"):
        return ("logits",)
    if arch.endswith("ForQuestionAnswering"):
        return ("start_logits", "end_logits")
    return ("last_hidden_state", "pooler_output")


def _prune_attention(layer, heads: int, head_dim: int) -> None:
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    index = torch.arange(heads * head_dim)
    sa = layer.attention.self
    sa.query = prune_linear_layer(sa.query, index, dim=0)
    sa.key = prune_linear_layer(sa.key, index, dim=0)
    sa.value = prune_linear_layer(sa.value, index, dim=0)
    sa.num_attention_heads = heads
    sa.all_head_size = heads * head_dim
    out = layer.attention.output
    out.dense = prune_linear_layer(out.dense, index, dim=1)


def load_pytorch_subnetwork(path, torch_dtype=None):
    """A stock transformers model (eval mode) holding the sub-network in ``path``.

    Builds ``BertForSequenceClassification`` / ``RobertaForSequenceClassification`` (or
    the ``...Model`` / ``...ForQuestionAnswering`` the config names) from the
    checkpoint's ``config.json``, removes the heads listed in ``pruned_heads`` with
    ``prune_linear_layer``, and loads ``model.safetensors`` strictly: a missing,
    unexpected or mis-shaped tensor raises :class:`~dynabert_jax.convert.CheckpointError`.
    Only a prefix of heads per layer can be removed here (what DynaBERT exports); other
    patterns are refused.
    """
    import torch
    from transformers import AutoConfig

    path = pathlib.Path(path)
    hf = read_hf_config(path)
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"no model.safetensors in {path} (the sub-network loader "
                              f"reads safetensors only)")
    cls = _model_class(hf)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    pruned = {int(k): sorted(int(h) for h in v)
              for k, v in (hf.get("pruned_heads") or {}).items()}
    if hasattr(config, "pruned_heads"):
        config.pruned_heads = {}  # we prune below; never let a model class do it twice
    model = cls(config)
    base = getattr(model, config.model_type, None) or model
    heads_total = config.num_attention_heads
    head_dim = config.hidden_size // heads_total
    for i, removed in pruned.items():
        if not 0 <= i < config.num_hidden_layers:
            raise CheckpointError(f"{path / 'config.json'}: pruned_heads names layer {i}, "
                                  f"but the model has {config.num_hidden_layers} layers")
        keep = heads_total - len(removed)
        if removed != list(range(keep, heads_total)) or keep < 1:
            raise CheckpointError(
                f"{path / 'config.json'}: pruned_heads[{i}] = {removed}; this loader "
                f"removes only trailing heads (keeping 1 or more), as DynaBERT exports")
        _prune_attention(base.encoder.layer[i], keep, head_dim)
    state = _load_safetensors(path / "model.safetensors")
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("position_ids"))
    unexpected = sorted(k for k in state if k not in own)
    bad = [f"{k}: file {list(state[k].shape)}, model {list(own[k].shape)}"
           for k in sorted(set(state) & set(own)) if tuple(state[k].shape) != tuple(own[k].shape)]
    error = mismatch_error(
        f"{path / 'model.safetensors'} does not fit the {cls.__name__} its config.json "
        f"describes:", {"missing": missing, "unexpected": unexpected,
                        "shape mismatches": bad})
    if error:
        raise error
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(torch.from_numpy(np.ascontiguousarray(v)))
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model.eval()


# ----------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------


def export_onnx(pytorch_dir, onnx_path, *, opset: Optional[int] = None,
                example_seq_len: int = 16) -> pathlib.Path:
    """Trace the PyTorch sub-network in ``pytorch_dir`` (from :func:`export_pytorch`)
    to a single ONNX file with dynamic ``batch`` and ``sequence`` axes.

    Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64); outputs named
    as :func:`output_names`. Written to a temporary file and renamed.
    """
    import torch

    model = load_pytorch_subnetwork(pytorch_dir)
    names = _hf_output_names(read_hf_config(pytorch_dir))
    ids = torch.ones((2, example_seq_len), dtype=torch.long)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "token_type_ids": torch.zeros_like(ids)}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {k: {0: batch, 1: seq} for k in INPUT_NAMES}
    onnx_path = pathlib.Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    import logging
    import warnings

    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar notes
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (), None, kwargs=kwargs, input_names=list(INPUT_NAMES),
                output_names=list(names), dynamic_shapes=dynamic, opset_version=opset,
                dynamo=True, verbose=False, report=False)
    finally:
        quiet.setLevel(level)
    program.save(str(tmp), external_data=False)
    tmp.replace(onnx_path)
    return onnx_path


def onnx_session(onnx_path):
    """An onnxruntime CPU session for ``onnx_path``."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CheckpointError(f"onnxruntime could not load {onnx_path}: {e}") from e


# ----------------------------------------------------------------------------------
# Checking an export, and the command line
# ----------------------------------------------------------------------------------


def max_positions(config: ModelConfig) -> int:
    """The longest input the model has position embeddings for (RoBERTa's first two
    rows are the padding index and the one below it)."""
    return config.max_position_embeddings - (2 if config.model_type == "roberta" else 0)


def sample_inputs(config: ModelConfig, batch: int = 3, seq: int = 24, seed: int = 0):
    """Random int32 inputs for checking an export: row 0 is unpadded, the others are
    right-padded as a tokenizer pads them (pad id, attention mask 0); every row keeps at
    least one real token. Real tokens are drawn from ids >= 5, so none is the pad id
    (Hugging Face's RoBERTa finds padding by the id, not by the mask)."""
    rng = np.random.default_rng(seed)
    seq = min(seq, max_positions(config))
    ids = rng.integers(5, config.vocab_size, size=(batch, seq), dtype=np.int32)
    mask = np.ones_like(ids)
    for i in range(1, batch):
        mask[i, max(1, seq - 3 * i):] = 0
    ids[mask == 0] = config.pad_token_id
    types = np.zeros_like(ids)
    if config.model_type == "bert":
        types[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _as_output(config: ModelConfig, out) -> np.ndarray:
    """Bring a PyTorch / ONNX output to our layout (span: ``[batch, seq, 2]``)."""
    if config.head == "span":
        start, end = (np.asarray(o) for o in out[:2])
        return np.stack([start, end], axis=-1)
    return np.asarray(out[0])


def _max_diff(config: ModelConfig, got, ref: np.ndarray, attention_mask) -> float:
    """Max |got - ref|, over real tokens only for per-token outputs (span logits, the
    last hidden state).

    Padded positions are masked out of every attention, so what is computed there is
    never read; and the exports may legitimately differ there: for RoBERTa the JAX model
    gives a pad token the official position id ``pad + 1 + i``, Hugging Face's RoBERTa
    gives it ``pad``, so its hidden state (and span logits) differ while every real
    token agrees. Per-sequence outputs (classification logits) depend only on real
    tokens and are compared whole."""
    got = np.asarray(got)
    if got.shape != ref.shape:
        raise ValueError(f"exported output has shape {got.shape}, the JAX sub-network's "
                         f"{ref.shape}")
    if config.head in ("span", None):  # [batch, seq, ...]
        real = np.asarray(attention_mask) != 0
        if not real.any():
            raise ValueError("the check's inputs have no real token (attention_mask is "
                             "all 0), so there is nothing to compare")
        got, ref = got[real], ref[real]
    return float(np.abs(got - ref).max())


def verify_export(model: DynaBertModel, params, subnet: SubNet, out_dir,
                  formats: Sequence[str], inputs: Optional[dict] = None) -> Dict[str, float]:
    """Max |difference| of each exported format's output from the JAX sub-network (at
    real tokens for per-token outputs, see :func:`_max_diff`)."""
    small_model, small_params = _extract(model, params, subnet)
    cfg = small_model.config
    inputs = inputs or sample_inputs(cfg)
    mask = inputs["attention_mask"]
    ref = np.asarray(jax.jit(forward_fn(small_model))(small_params, *(
        inputs[k] for k in INPUT_NAMES)))
    out_dir = pathlib.Path(out_dir)
    diffs = {}
    if "jax" in formats:
        f = load_exported(out_dir / "jax")
        diffs["jax"] = _max_diff(cfg, f(*(inputs[k] for k in INPUT_NAMES)), ref, mask)
    if "pytorch" in formats:
        import torch

        pt = load_pytorch_subnetwork(out_dir / "pytorch")
        with torch.no_grad():
            res = pt(**{k: torch.from_numpy(inputs[k].astype(np.int64)) for k in INPUT_NAMES})
        res = [v.numpy() for v in res.values()] if hasattr(res, "values") else res
        diffs["pytorch"] = _max_diff(cfg, _as_output(cfg, res), ref, mask)
    if "onnx" in formats:
        sess = onnx_session(out_dir / "onnx" / "model.onnx")
        feed = {k: inputs[k].astype(np.int64) for k in INPUT_NAMES}
        diffs["onnx"] = _max_diff(cfg, _as_output(cfg, sess.run(None, feed)), ref, mask)
    return diffs


def _dir_size(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


FORMATS = ("jax", "pytorch", "onnx")


def _report_training(run, subnet: SubNet, workdir) -> None:
    """Print the cell's dev metrics from the stage's record, or warn when the stage did
    not train it (e.g. final fine-tuning of one other cell, docs/deploy.md)."""
    from dynabert_jax.trainer import results_from_info

    scored = results_from_info(run.info)
    if subnet in scored:
        print(f"dev at stage {run.stage}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in scored[subnet].items()))
    elif scored:
        cells = ", ".join(f"({s.width:g}, {s.depth:g})" for s in scored)
        print(f"warning: stage {run.stage} of {workdir} trained and scored {cells}, not "
              f"({subnet.width:g}, {subnet.depth:g}): these weights were neither tuned "
              f"nor checked for it; export one of those, or pick another stage with "
              f"--stage")


def _check_out(out: pathlib.Path, formats: Sequence[str]) -> None:
    """Refuse, before anything is written, an ``--out`` whose contents the export would
    lose or leave stale: a file, a format folder holding other files, or an earlier
    export's format folder that this one does not rewrite (it would sit beside the new
    files as if it were the same sub-network)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    ours = {"jax": JAX_FILES, "pytorch": CHECKPOINT_FILES}
    for name in formats:
        if name in ours:
            check_replaceable(out / name, ours[name])
    stale = [name for name in FORMATS if name not in formats and (out / name).exists()]
    if stale:
        raise FileExistsError(
            f"{out} holds {', '.join(f'{s}/' for s in stale)} from an earlier export, "
            f"which --formats {','.join(formats)} would not rewrite; export into a new "
            f"folder or add {','.join(stale)} to --formats")


def _warn_unfinished(workdir, stage: str) -> None:
    from dynabert_jax.trainer import stage_progress

    progress = stage_progress(workdir, stage)
    if progress and progress[0] < progress[1]:
        print(f"warning: stage {stage} of {workdir} stopped at step {progress[0]} of "
              f"{progress[1]}: these are its best weights so far. Start its train.py "
              f"command again to finish it")


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    from dynabert_jax.trainer import load_run

    p = argparse.ArgumentParser(
        prog="python -m dynabert_jax.export",
        description="Export one (width, depth) sub-network of a trained DynaBERT run as "
                    "standalone JAX, Hugging Face PyTorch and ONNX models, and check each "
                    "against the JAX sub-network.")
    p.add_argument("--workdir", required=True, help="the training run's --workdir")
    p.add_argument("--stage", default=None,
                   help="stage whose best checkpoint to export (default: the last of "
                        "final, width_depth, width)")
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--depth", type=float, default=1.0)
    p.add_argument("--out", required=True, help="output folder (jax/, pytorch/, onnx/)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"comma-separated subset of {FORMATS}")
    p.add_argument("--batch-size", type=int, default=None,
                   help="fix the batch axis of the jax.export function (default dynamic)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="fix the sequence axis of the jax.export function (default dynamic)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check of every format against the JAX sub-network")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args(argv)

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        p.error(f"unknown format(s) {unknown}; choose from {FORMATS}")
    if "onnx" in formats and "pytorch" not in formats:
        formats = formats + ("pytorch",)  # ONNX is traced from the PyTorch export
    for name in ("batch_size", "seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    out = pathlib.Path(args.out)
    try:
        subnet = SubNet(args.width, args.depth)
        run = load_run(args.workdir, args.stage)
        cfg = run.model.config
        subnet.validate(cfg)
        if args.seq_len is not None and args.seq_len > max_positions(cfg):
            raise ValueError(f"--seq-len {args.seq_len} is longer than the model's "
                             f"{max_positions(cfg)} positions")
        _check_out(out, formats)
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.workdir} (stage {run.stage}, task {run.task.name}): exporting "
          f"{subnet.name}: {subnet.num_heads(cfg)}/{cfg.num_attention_heads} heads, "
          f"{subnet.ffn_size(cfg)}/{cfg.intermediate_size} FFN neurons, layers "
          f"{list(subnet.kept_layers(cfg))} of {cfg.num_hidden_layers}")
    _report_training(run, subnet, args.workdir)
    _warn_unfinished(args.workdir, run.stage)
    written = {}
    if "jax" in formats:
        written["jax"] = export_jax(run.model, run.params, subnet, out / "jax",
                                    batch_size=args.batch_size, seq_len=args.seq_len,
                                    id2label=run.id2label, tokenizer_dir=run.tokenizer_dir)
    if "pytorch" in formats:
        written["pytorch"] = export_pytorch(run.model, run.params, subnet, out / "pytorch",
                                            id2label=run.id2label,
                                            tokenizer_dir=run.tokenizer_dir)
    if "onnx" in formats:
        written["onnx"] = export_onnx(out / "pytorch", out / "onnx" / "model.onnx").parent
    n_small = count_params(cfg, subnet, include_head=True)
    n_full = count_params(cfg, SubNet(1.0, 1.0), include_head=True)
    print(f"parameters: {n_small:,} of {n_full:,} ({n_small / n_full:.1%})")
    for name, path in written.items():
        print(f"  {name:8s} {path}  ({_dir_size(path) / 2**20:.1f} MiB)")
    if args.no_verify:
        return 0
    # the sample batch takes the shape a fixed --batch-size / --seq-len gave the export
    inputs = sample_inputs(cfg, batch=args.batch_size or 3, seq=args.seq_len or 24)
    diffs = verify_export(run.model, run.params, subnet, out, formats, inputs)
    ok = all(d <= args.tolerance for d in diffs.values())
    for name, d in diffs.items():
        print(f"  check {name:8s} max |output - JAX sub-network| = {d:.2e} "
              f"({'ok' if d <= args.tolerance else 'FAILED'}, tolerance {args.tolerance:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
