"""Converters: every supported Hugging Face class, with and without prefix, round trips
back to transformers, .bin safety and the errors a user sees on a bad checkpoint."""
import json
import pickle

import numpy as np
import jax
import pytest
import torch
import transformers

import dynabert_jax as dj
from dynabert_jax import CheckpointError
from dynabert_jax.convert import load_state_dict, param_table, state_dict_from_params

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=40)


def _batch(vocab=99, pad=0, seq=12):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab, size=(3, seq))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    ids[mask == 0] = pad
    return {"input_ids": ids, "attention_mask": mask}


def _save_hf(model, path, safe=True):
    model.save_pretrained(str(path), safe_serialization=safe)
    return path


def _run_hf(model, batch):
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v) for k, v in batch.items()})


def _run_ours(model, params, batch):
    return model.apply({"params": params}, batch["input_ids"],
                       attention_mask=batch["attention_mask"])


CASES = [
    ("bert", transformers.BertForSequenceClassification, "classification", "logits"),
    ("bert", transformers.BertForQuestionAnswering, "span", "span"),
    ("bert", transformers.BertModel, None, "hidden"),
    ("roberta", transformers.RobertaForSequenceClassification, "classification", "logits"),
    ("roberta", transformers.RobertaModel, None, "hidden"),
]


@pytest.mark.parametrize("model_type, cls, head, what", CASES,
                         ids=[c[1].__name__ for c in CASES])
def test_load_every_supported_class(tmp_path, model_type, cls, head, what):
    torch.manual_seed(0)
    cfg_cls = transformers.BertConfig if model_type == "bert" else transformers.RobertaConfig
    ref = cls(cfg_cls(**SMALL, num_labels=2 if head == "span" else 3)).eval()
    path = _save_hf(ref, tmp_path / "ckpt")
    model, params = dj.from_pretrained_pytorch(path, head=head)
    pad = ref.config.pad_token_id
    batch = _batch(pad=pad)
    ours, theirs = _run_ours(model, params, batch), _run_hf(ref, batch)
    if what == "logits":
        assert model.config.num_labels == 3   # inferred from the checkpoint
        np.testing.assert_allclose(ours.logits, theirs.logits.numpy(), atol=1e-5)
    elif what == "span":
        np.testing.assert_allclose(ours.start_logits, theirs.start_logits.numpy(), atol=1e-5)
        np.testing.assert_allclose(ours.end_logits, theirs.end_logits.numpy(), atol=1e-5)
    else:
        m = batch["attention_mask"].astype(bool)
        np.testing.assert_allclose(np.asarray(ours.last_hidden_state)[m],
                                   theirs.last_hidden_state.numpy()[m], atol=1e-5)
    # Round trip: export and reload give exactly the same parameters, and stock
    # transformers loads the export into the same class with the same outputs.
    out = dj.save_pretrained_pytorch(model, params, tmp_path / "export")
    model2, params2 = dj.from_pretrained_pytorch(out, head=head)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(np.array_equal(a, b)), params, params2))
    reloaded = cls.from_pretrained(str(out), local_files_only=True).eval()
    sd_a, sd_b = ref.state_dict(), reloaded.state_dict()
    for k, v in sd_b.items():
        if not k.endswith("position_ids"):
            assert torch.equal(sd_a[k], v), k


def test_prefix_optional_and_bin_with_weights_only(tmp_path):
    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification(
        transformers.BertConfig(**SMALL, num_labels=2)).eval()
    # Strip the "bert." prefix and save as pytorch_model.bin (torch.save of tensors only).
    state = {k.removeprefix("bert."): v for k, v in ref.state_dict().items()}
    d = tmp_path / "noprefix"
    d.mkdir()
    torch.save(state, d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps(ref.config.to_dict()))
    model, params = dj.from_pretrained_pytorch(d, head="classification")
    batch = _batch()
    np.testing.assert_allclose(_run_ours(model, params, batch).logits,
                               _run_hf(ref, batch).logits.numpy(), atol=1e-5)


def _params_equal(a, b):
    return jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda x, y: bool(np.array_equal(x, y)), a, b))


def _legacy_names(state):
    return {k.replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in state.items()}


def test_legacy_layer_norm_names(tmp_path, caplog):
    """``LayerNorm.gamma`` / ``.beta`` (the original bert-base-uncased files) load as
    ``.weight`` / ``.bias``, from safetensors and from .bin, as transformers loads them."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification(
        transformers.BertConfig(**SMALL, num_labels=2)).eval()
    path = _save_hf(ref, tmp_path / "new")
    _, want = dj.from_pretrained_pytorch(path, head="classification")
    old = _legacy_names({k: v.contiguous() for k, v in ref.state_dict().items()})
    assert sum(k.endswith(("gamma", "beta")) for k in old) == 14   # 7 LayerNorms
    for name in ("model.safetensors", "pytorch_model.bin"):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        (d / "config.json").write_text((path / "config.json").read_text())
        if name.endswith(".bin"):
            torch.save(old, d / name)
        else:
            save_file(old, str(d / name), metadata={"format": "pt"})
        caplog.clear()
        with caplog.at_level("INFO", logger="dynabert_jax.convert"):
            _, got = dj.from_pretrained_pytorch(d, head="classification")
        assert _params_equal(got, want), name
        assert "renamed 14 legacy LayerNorm keys" in caplog.text
    hf = transformers.BertForSequenceClassification.from_pretrained(
        str(tmp_path / "model"), local_files_only=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(hf.state_dict()[k], v), k
    # both names of one tensor: which to load is ambiguous
    both = dict(old)
    both["bert.embeddings.LayerNorm.weight"] = old["bert.embeddings.LayerNorm.gamma"]
    torch.save(both, tmp_path / "pytorch_model" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"1 LayerNorm tensor\(s\) under both the "
                                              r"old and the new name.*embeddings\."
                                              r"LayerNorm\.gamma"):
        dj.from_pretrained_pytorch(tmp_path / "pytorch_model", head="classification")


def test_checkpoint_without_pooler(tmp_path):
    """Checkpoints with no pooler (a masked-LM model, roberta-base's layout; a question-
    answering model) stay strict rather than get a fresh pooler as transformers gives
    them: the fresh-initialisation path is for task heads, and a random pooler would
    silently change ``pooled_output``. The error says how to load them (``pooler=False``),
    which then gives the encoder's own outputs; BERT's classifier, which reads the
    pooler, is told to start from a checkpoint that has one."""
    torch.manual_seed(0)
    mlm = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**SMALL)).eval()
    path = _save_hf(mlm, tmp_path / "mlm")
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(2\).*roberta\.pooler"
                                              r".*has no pooler: pass pooler=False"):
        dj.from_pretrained_pytorch(path)
    model, params = dj.from_pretrained_pytorch(path, pooler=False)
    assert "pooler" not in params
    batch = _batch(pad=1)
    m = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(
        np.asarray(_run_ours(model, params, batch).last_hidden_state)[m],
        _run_hf(mlm.roberta, batch).last_hidden_state.numpy()[m], atol=1e-5)
    qa = _save_hf(transformers.BertForQuestionAnswering(transformers.BertConfig(**SMALL)),
                  tmp_path / "qa")
    with pytest.raises(CheckpointError, match="has no pooler: pass pooler=False"):
        dj.from_pretrained_pytorch(qa)
    assert "pooler" not in dj.from_pretrained_pytorch(qa, pooler=False)[1]
    with pytest.raises(CheckpointError, match="has no pooler, which BERT's classification "
                                              "head reads"):
        dj.from_pretrained_pytorch(qa, head="classification")


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_config_without_model_type(tmp_path, model_type):
    """transformers 2.x configs (the official DynaBERT checkpoints) may lack model_type:
    the weights' key prefix gives it; a bare encoder's keys cannot, and the error says
    what to add."""
    from dynabert_jax.convert import read_hf_config

    torch.manual_seed(0)
    cfg_cls = transformers.BertConfig if model_type == "bert" else transformers.RobertaConfig
    cls = (transformers.BertForSequenceClassification if model_type == "bert"
           else transformers.RobertaForSequenceClassification)
    path = _save_hf(cls(cfg_cls(**SMALL, num_labels=3)), tmp_path / "ckpt")
    want_model, want = dj.from_pretrained_pytorch(path, head="classification")
    hf = json.loads((path / "config.json").read_text())
    del hf["model_type"]
    (path / "config.json").write_text(json.dumps(hf))
    assert read_hf_config(path)["model_type"] == model_type
    model, params = dj.from_pretrained_pytorch(path, head="classification")
    assert model.config == want_model.config and _params_equal(params, want)
    bare = _save_hf(transformers.BertModel(transformers.BertConfig(**SMALL)),
                    tmp_path / "bare")
    (bare / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=r'config.json has no "model_type", and the '
                                              r"weights' keys do not tell.*add "
                                              r'"model_type": "bert"'):
        dj.from_pretrained_pytorch(bare)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


# torch warns that the file's pickle protocol (4) is not its default before refusing it
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_bin_is_never_unpickled(tmp_path, capsys):
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(transformers.BertConfig(**SMALL).to_dict()))
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="could not read weights"):
        load_state_dict(d)
    assert "pwned" not in capsys.readouterr().out   # Evil.__reduce__ never ran


def test_real_minilm_round_trip(tmp_path, minilm_path):
    model, params = dj.from_pretrained_pytorch(minilm_path)
    out = dj.save_pretrained_pytorch(model, params, tmp_path / "minilm",
                                     tokenizer_dir=minilm_path)
    assert (out / "vocab.txt").is_file() and (out / "tokenizer.json").is_file()
    original = load_state_dict(minilm_path)
    exported = load_state_dict(out)
    assert set(exported) == {e.key for e in param_table(model.config)}
    for k, v in exported.items():
        np.testing.assert_array_equal(v, original[k])


def test_fresh_head_on_pretrained_encoder(minilm_path, caplog):
    model, params = dj.from_pretrained_pytorch(minilm_path, head="classification",
                                               num_labels=3)
    assert params["classifier"]["kernel"].shape == (384, 3)
    assert "initialised it fresh" in caplog.text
    model, params = dj.from_pretrained_pytorch(minilm_path, head="regression")
    assert params["classifier"]["kernel"].shape == (384, 1)
    model, params = dj.from_pretrained_pytorch(minilm_path, head="span")
    assert "pooler" not in params and params["qa_outputs"]["kernel"].shape == (384, 2)
    # where a fine-tuned model is expected (a teacher), no head is an error
    with pytest.raises(CheckpointError, match=r"has no classification head "
                                              r"\(classifier.bias, classifier.weight\): "
                                              r"a fine-tuned model was expected"):
        dj.from_pretrained_pytorch(minilm_path, head="classification", num_labels=3,
                                   require_head=True)


def test_label_order_from_the_checkpoints_label_names():
    from dynabert_jax.convert import label_order

    glue_mnli = ("contradiction", "entailment", "neutral")
    roberta_mnli = {"id2label": {"0": "CONTRADICTION", "1": "NEUTRAL", "2": "ENTAILMENT"}}
    assert label_order(roberta_mnli, glue_mnli) == [0, 2, 1]
    assert label_order({"id2label": {"1": "entailment", "0": "not_entailment"}},
                       ("entailment", "not_entailment")) == [1, 0]
    rte, sst2 = ("entailment", "not_entailment"), ("0", "1")
    for hf, labels in (({"id2label": {"0": "LABEL_1", "1": "LABEL_0"}}, sst2),  # generic
                       ({"id2label": {"0": "negative", "1": "positive"}}, sst2),  # other
                       ({"id2label": {"0": "Entailment", "1": "not_entailment"}}, rte),
                       ({}, rte)):
        assert label_order(hf, labels) is None, hf


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_permuted_labels_give_the_permuted_logits(tmp_path, model_type):
    from dynabert_jax.convert import permute_labels

    torch.manual_seed(0)
    cfg_cls = transformers.BertConfig if model_type == "bert" else transformers.RobertaConfig
    cls = (transformers.BertForSequenceClassification if model_type == "bert"
           else transformers.RobertaForSequenceClassification)
    path = _save_hf(cls(cfg_cls(**SMALL, num_labels=3)).eval(), tmp_path / "ckpt")
    model, params = dj.from_pretrained_pytorch(path, head="classification")
    batch = _batch(pad=model.config.pad_token_id)
    before = np.asarray(_run_ours(model, params, batch).logits)
    after = np.asarray(_run_ours(model, permute_labels(model.config, params, [0, 2, 1]),
                                 batch).logits)
    np.testing.assert_array_equal(after, before[:, [0, 2, 1]])
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(_run_ours(model, params, batch).logits, before)  # untouched


# ----------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------


@pytest.fixture()
def bert_dir(tmp_path):
    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification(
        transformers.BertConfig(**SMALL, num_labels=2))
    return _save_hf(ref, tmp_path / "bert")


def _rewrite(path, edit):
    from safetensors.numpy import load_file, save_file

    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"))


def test_wrong_model_type(bert_dir):
    cfg = json.loads((bert_dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (bert_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported model_type 'gpt2'.*'bert'.*'roberta'"):
        dj.from_pretrained_pytorch(bert_dir)


def test_roberta_config_on_bert_weights(bert_dir):
    cfg = json.loads((bert_dir / "config.json").read_text())
    cfg["model_type"] = "roberta"
    (bert_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not look like a roberta checkpoint"):
        dj.from_pretrained_pytorch(bert_dir, head="classification")


def test_missing_keys_are_all_named(bert_dir):
    gone = ["bert.encoder.layer.1.output.dense.weight", "bert.pooler.dense.bias"]
    _rewrite(bert_dir, lambda s: [s.pop(k) for k in gone])
    with pytest.raises(CheckpointError) as e:
        dj.from_pretrained_pytorch(bert_dir, head="classification")
    msg = str(e.value)
    assert "missing keys (2)" in msg and all(k in msg for k in gone)
    assert "BertForSequenceClassification" in msg   # the model type that was tried


def test_unexpected_keys_are_named(bert_dir):
    _rewrite(bert_dir, lambda s: s.update({"bert.encoder.layer.9.extra.weight":
                                           np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\).*layer\.9\.extra"):
        dj.from_pretrained_pytorch(bert_dir, head="classification")


def test_shape_mismatch_names_key_and_shapes(bert_dir):
    with pytest.raises(CheckpointError, match=r"classifier\.weight: checkpoint \[2, 32\], "
                                              r"model expects \[5, 32\]"):
        dj.from_pretrained_pytorch(bert_dir, head="classification", num_labels=5)


def test_partial_head_is_an_error(bert_dir):
    _rewrite(bert_dir, lambda s: s.pop("classifier.bias"))
    with pytest.raises(CheckpointError, match="missing keys.*classifier.bias"):
        dj.from_pretrained_pytorch(bert_dir, head="classification")


def test_corrupted_and_absent_files(bert_dir, tmp_path):
    (bert_dir / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="could not read weights"):
        dj.from_pretrained_pytorch(bert_dir)
    with pytest.raises(CheckpointError, match="no config.json"):
        dj.from_pretrained_pytorch(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")   # no model_type: the weights would tell
    with pytest.raises(CheckpointError, match="no weights in .*empty"):
        dj.from_pretrained_pytorch(empty)


def test_checkpoints_of_the_wrong_form_are_explained(bert_dir, tmp_path):
    # a training script's {"state_dict": ...} saved as pytorch_model.bin
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    (wrapped / "config.json").write_text((bert_dir / "config.json").read_text())
    torch.save({"state_dict": {"x": torch.zeros(2)}, "epoch": 3},
               wrapped / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"not a state dict of named tensors \(it "
                                              r"holds \['state_dict', 'epoch'\]\)"):
        dj.from_pretrained_pytorch(wrapped)
    # the weights file instead of its folder
    with pytest.raises(CheckpointError, match="is a file; give the Hugging Face checkpoint "
                                              "folder"):
        dj.from_pretrained_pytorch(bert_dir / "model.safetensors")
    # a config.json without the model's sizes
    hf = json.loads((bert_dir / "config.json").read_text())
    del hf["vocab_size"]
    (wrapped / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=r"config.json lacks \['vocab_size'\]"):
        dj.from_pretrained_pytorch(wrapped)
    # a sharded checkpoint whose index is not JSON, or has no weight map
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text("{")
    with pytest.raises(CheckpointError, match="index.json is not valid JSON"):
        load_state_dict(sharded)
    (sharded / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="has no 'weight_map'"):
        load_state_dict(sharded)


def test_unexported_subnetwork_config_is_refused(tmp_path, minilm_path):
    model, params = dj.from_pretrained_pytorch(minilm_path)
    small, small_params = dj.extract_subnetwork(model, params, dj.SubNet(0.5, 0.5))
    with pytest.raises(CheckpointError, match="fewer heads than a stock transformers 5"):
        dj.save_pretrained_pytorch(small, small_params, tmp_path / "x")
    # Fewer layers and a narrower FFN alone are stock transformers models.
    assert state_dict_from_params(small.config, small_params)
