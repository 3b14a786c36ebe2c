"""Exported sub-networks (JAX, Hugging Face PyTorch, ONNX) against the JAX sub-network.

The model is the real MiniLM-L6-H384 with a classification head; its parameters are
perturbed by a seeded random permutation-free noise so that every head and neuron
differs (a rewired, trained DynaBERT has no symmetry either).
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import dynabert_jax as dj
from dynabert_jax import export
from dynabert_jax.convert import CheckpointError
from conftest import tiny_train_config

SUBNETS = dj.grid() + (dj.SubNet(0.375, 1.0), dj.SubNet(0.375, 0.5))
TOL = 1e-4


@pytest.fixture(scope="module")
def minilm(minilm_path):
    model, params = dj.from_pretrained_pytorch(minilm_path, head="classification",
                                               num_labels=3, rng=jax.random.PRNGKey(1))
    keys = iter(jax.random.split(jax.random.PRNGKey(2), 1000))
    params = jax.tree_util.tree_map(
        lambda x: x + 0.01 * jax.random.normal(next(keys), x.shape), params)
    return model, params


@pytest.fixture(scope="module")
def inputs(minilm):
    return export.sample_inputs(minilm[0].config, batch=3, seq=20)


def jax_subnet_output(model, params, subnet, inputs):
    small, small_params = dj.extract_subnetwork(model, params, subnet)
    return np.asarray(small.apply({"params": small_params}, inputs["input_ids"],
                                  inputs["attention_mask"], inputs["token_type_ids"]).logits)


def torch_inputs(inputs):
    return {k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()}


@pytest.fixture(scope="module")
def exported(minilm, tmp_path_factory):
    """Every sub-network exported once as PyTorch + ONNX (module-wide)."""
    model, params = minilm
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for s in SUBNETS:
        pt = export.export_pytorch(model, params, s, root / s.name / "pytorch",
                                   id2label={0: "a", 1: "b", 2: "c"})
        onnx = export.export_onnx(pt, root / s.name / "model.onnx")
        out[s] = (pt, onnx)
    return out


@pytest.mark.parametrize("subnet", SUBNETS, ids=lambda s: s.name)
def test_pytorch_export_equals_jax_subnetwork_and_is_smaller(minilm, inputs, exported,
                                                             subnet):
    model, params = minilm
    cfg = model.config
    pt_dir, _ = exported[subnet]
    pt = export.load_pytorch_subnetwork(pt_dir)
    assert type(pt).__name__ == "BertForSequenceClassification"
    with torch.no_grad():
        got = pt(**torch_inputs(inputs)).logits.numpy()
    want = jax_subnet_output(model, params, subnet, inputs)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)

    n_params = sum(p.numel() for p in pt.parameters())
    assert n_params == dj.count_params(cfg, subnet, include_head=True)
    from safetensors.numpy import load_file

    stored = sum(v.size for v in load_file(str(pt_dir / "model.safetensors")).values())
    assert stored == n_params
    if subnet != dj.FULL:
        assert n_params < dj.count_params(cfg, dj.FULL, include_head=True)

    hf = json.loads((pt_dir / "config.json").read_text())
    heads = subnet.num_heads(cfg)
    assert hf["num_hidden_layers"] == subnet.num_layers(cfg)
    assert hf["intermediate_size"] == subnet.ffn_size(cfg)
    assert hf["num_attention_heads"] == cfg.num_attention_heads  # stock head size
    removed = list(range(heads, cfg.num_attention_heads))
    assert hf["pruned_heads"] == ({str(i): removed for i in range(hf["num_hidden_layers"])}
                                  if removed else {})
    assert hf["dynabert"]["kept_layers"] == list(subnet.kept_layers(cfg))
    assert hf["id2label"] == {"0": "a", "1": "b", "2": "c"}


@pytest.mark.parametrize("subnet", SUBNETS, ids=lambda s: s.name)
def test_onnx_export_runs_in_onnxruntime_with_the_same_logits(minilm, exported, subnet):
    model, params = minilm
    _, onnx_path = exported[subnet]
    sess = export.onnx_session(onnx_path)
    assert [i.name for i in sess.get_inputs()] == list(export.INPUT_NAMES)
    # another batch size and sequence length than the trace used: dynamic axes
    inputs = export.sample_inputs(model.config, batch=2, seq=37, seed=5)
    got = sess.run(["logits"], {k: v.astype(np.int64) for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, jax_subnet_output(model, params, subnet, inputs),
                               atol=TOL, rtol=0)


def test_full_width_export_loads_in_stock_transformers(minilm, inputs, exported):
    """A sub-network that keeps every head is a stock transformers 5 checkpoint."""
    from transformers import AutoModelForSequenceClassification

    model, params = minilm
    subnet = dj.SubNet(1.0, 0.5)
    pt = AutoModelForSequenceClassification.from_pretrained(
        str(exported[subnet][0]), local_files_only=True).eval()
    with torch.no_grad():
        got = pt(**torch_inputs(inputs)).logits.numpy()
    np.testing.assert_allclose(got, jax_subnet_output(model, params, subnet, inputs),
                               atol=TOL, rtol=0)


_FRESH = r"""
import json, pathlib, sys
import jax, numpy as np
from jax import export
from safetensors.numpy import load_file

d = pathlib.Path(sys.argv[1])
flat = load_file(str(d / "params.safetensors"))
params = {}
for key, value in flat.items():
    node = params
    *parents, leaf = key.split("/")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
fn = export.deserialize(bytearray((d / "forward.jax_exported").read_bytes()))
inputs = np.load(sys.argv[2])
outs = {}
for n in (3, 2):  # two batch sizes and sequence lengths through one artifact
    ids = inputs["input_ids"][:n, :n * 6]
    outs[f"b{n}"] = np.asarray(fn.call(params, ids, inputs["attention_mask"][:n, :n * 6],
                                       inputs["token_type_ids"][:n, :n * 6]))
assert "dynabert_jax" not in sys.modules and "flax" not in sys.modules
np.savez(sys.argv[3], **outs)
"""


@pytest.mark.parametrize("subnet", [dj.SubNet(0.375, 0.75), dj.SubNet(0.25, 0.5)],
                         ids=lambda s: s.name)
def test_jax_export_reloads_in_a_fresh_process(minilm, inputs, tmp_path, subnet):
    model, params = minilm
    out = export.export_jax(model, params, subnet, tmp_path / "jax")
    meta = json.loads((out / export.JAX_CONFIG).read_text())
    assert meta["exported"]["batch_size"] == "dynamic"
    np.savez(tmp_path / "inputs.npz", **inputs)
    subprocess.run([sys.executable, "-c", _FRESH, str(out), str(tmp_path / "inputs.npz"),
                    str(tmp_path / "outs.npz")], check=True, cwd=tmp_path,
                   env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    outs = np.load(tmp_path / "outs.npz")
    for n in (3, 2):
        sliced = {k: v[:n, :n * 6] for k, v in inputs.items()}
        np.testing.assert_allclose(outs[f"b{n}"],
                                   jax_subnet_output(model, params, subnet, sliced),
                                   atol=TOL, rtol=0)

    # in-process: the loaders give the same model and function
    small, small_params = export.load_jax_subnetwork(out)
    assert small.config == dj.subnetwork_config(model.config, subnet)
    assert dj.count_params(small.config, include_head=True) == meta["dynabert"]["params"]
    got = small.apply({"params": small_params}, **inputs).logits
    np.testing.assert_allclose(got, jax_subnet_output(model, params, subnet, inputs),
                               atol=1e-6)
    f = export.load_exported(out)
    np.testing.assert_allclose(f(**inputs), got, atol=1e-6)
    with pytest.raises(ValueError, match="length 600 exceeds the model's 512 positions"):
        f(np.zeros((1, 600), np.int32))


def test_jax_export_with_fixed_shapes(minilm, inputs, tmp_path):
    model, params = minilm
    out = export.export_jax(model, params, dj.SubNet(0.5, 0.5), tmp_path / "jax",
                            batch_size=3, seq_len=20)
    f = export.load_exported(out)
    assert f.meta["exported"]["seq_len"] == 20
    np.testing.assert_allclose(
        f(**inputs), jax_subnet_output(model, params, dj.SubNet(0.5, 0.5), inputs),
        atol=TOL)
    with pytest.raises(Exception):
        f(inputs["input_ids"][:, :10])
    # what the compiled lookups would turn into NaN rows is refused before the call
    vocab = model.config.vocab_size
    for kwargs, match in (({"input_ids": inputs["input_ids"] + vocab}, r"input_ids must "
                           rf"lie in \[0, {vocab}\)"),
                          ({"token_type_ids": 2 + 0 * inputs["input_ids"]},
                           r"token_type_ids must lie in \[0, 2\)"),
                          ({"attention_mask": inputs["attention_mask"][:, :5]},
                           r"attention_mask has shape \(3, 5\)")):
        with pytest.raises(ValueError, match=match):
            f(**dict(inputs, **kwargs))


# -- bad input ----------------------------------------------------------------------


def test_width_that_keeps_no_heads_is_refused(minilm, tmp_path):
    model, params = minilm
    with pytest.raises(ValueError, match="keeps no attention head"):
        export.export_pytorch(model, params, dj.SubNet(0.04), tmp_path / "x")
    with pytest.raises(ValueError, match="keeps no layer"):
        export.export_jax(model, params, dj.SubNet(1.0, 0.05), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_exporting_an_extracted_subnetwork_again_is_refused(minilm, tmp_path):
    small, small_params = dj.extract_subnetwork(*minilm, dj.SubNet(0.5))
    with pytest.raises(ValueError, match="already an extracted sub-network"):
        export.export_pytorch(small, small_params, dj.SubNet(0.5), tmp_path / "x")
    # the sliced parameters with the full model: named, not a KeyError deep inside
    model, _ = minilm
    with pytest.raises(ValueError, match=r"needs the full model's parameters \(6 layers, "
                                         r"12 heads\): these have 6 layers and a query of "
                                         r"width 192; were they extracted already"):
        dj.extract_subnetwork(model, small_params, dj.SubNet(0.5))
    _, shallow = dj.extract_subnetwork(*minilm, dj.SubNet(1.0, 0.5))
    with pytest.raises(ValueError, match="these have 3 layers"):
        dj.extract_subnetwork(model, shallow, dj.SubNet(0.5))


def _truncate(path: pathlib.Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupted_files_give_clear_errors(minilm, tmp_path):
    model, params = minilm
    s = dj.SubNet(0.25, 0.5)
    jx = export.export_jax(model, params, s, tmp_path / "jax")
    pt = export.export_pytorch(model, params, s, tmp_path / "pt")

    _truncate(jx / export.JAX_EXPORTED)
    with pytest.raises(CheckpointError, match="could not deserialize"):
        export.load_exported(jx)
    _truncate(jx / export.JAX_PARAMS)
    with pytest.raises(CheckpointError, match="could not read weights"):
        export.load_jax_subnetwork(jx)
    (jx / export.JAX_CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        export.load_jax_subnetwork(jx)

    _truncate(pt / "model.safetensors")
    with pytest.raises(CheckpointError, match="could not read weights"):
        export.load_pytorch_subnetwork(pt)


def test_weights_of_another_shape_are_named(minilm, tmp_path):
    model, params = minilm
    a = export.export_jax(model, params, dj.SubNet(0.5), tmp_path / "a")
    b = export.export_jax(model, params, dj.SubNet(0.25), tmp_path / "b")
    (a / export.JAX_PARAMS).replace(b / export.JAX_PARAMS)
    with pytest.raises(CheckpointError, match=r"encoder/layer_0/query/kernel: file \[384, "
                                              r"192\], config expects \[384, 96\]"):
        export.load_jax_subnetwork(b)

    p1 = export.export_pytorch(model, params, dj.SubNet(0.5), tmp_path / "p1")
    p2 = export.export_pytorch(model, params, dj.SubNet(0.5, 0.5), tmp_path / "p2")
    (p1 / "model.safetensors").replace(p2 / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected \(\d+\): \['bert.encoder.layer.3"):
        export.load_pytorch_subnetwork(p2)


def test_a_plain_hugging_face_folder_is_not_a_jax_subnetwork(minilm_path):
    with pytest.raises(CheckpointError, match="no dynabert_config.json"):
        export.load_jax_subnetwork(minilm_path)


# -- the command line, on a run folder ------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tiny_bert_dir, tmp_path_factory):
    """A run folder as train.py leaves it (config.json + a width_depth best
    checkpoint), holding a tiny BERT with a classification head."""
    from dynabert_jax import checkpoint as ckpt

    tmp = tmp_path_factory.mktemp("run")
    config = tiny_train_config(tiny_bert_dir, tmp, task="sst2")
    (tmp / "config.json").write_text(config.to_json_best_effort(indent=2))
    model, params = dj.from_pretrained_pytorch(tiny_bert_dir, head="classification",
                                               num_labels=2, rng=jax.random.PRNGKey(0))
    store = ckpt.StageCheckpoints(tmp / "width_depth" / "checkpoints")
    store.save_best(3, params, {"results": []})
    store.close()
    return tmp, model, params


def test_cli_exports_checks_and_reports(run_dir, tmp_path, capsys):
    workdir, model, params = run_dir
    rc = export.main(["--workdir", str(workdir), "--width", "0.75", "--depth", "0.5",
                      "--out", str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "stage width_depth" in text and "3/4 heads" in text
    for fmt in ("jax", "pytorch", "onnx"):
        assert f"check {fmt}" in text
    assert "FAILED" not in text
    assert (tmp_path / "out" / "pytorch" / "vocab.txt").is_file()  # tokenizer shipped
    hf = json.loads((tmp_path / "out" / "pytorch" / "config.json").read_text())
    assert hf["id2label"] == {"0": "0", "1": "1"}
    f = export.load_exported(tmp_path / "out" / "jax")
    ids = np.ones((2, 8), np.int32)
    want = jax_subnet_output(model, params, dj.SubNet(0.75, 0.5),
                             {"input_ids": ids, "attention_mask": ids,
                              "token_type_ids": 0 * ids})
    np.testing.assert_allclose(f(ids), want, atol=1e-6)


def test_cli_reports_the_cells_the_stage_trained(run_dir, tmp_path, capsys):
    """The stage's record gives the exported cell's dev metrics; a cell the stage did
    not train (final fine-tuning of one other cell) gets a warning that names them."""
    from dynabert_jax import checkpoint as ckpt

    source, _, params = run_dir
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text((source / "config.json").read_text())
    store = ckpt.StageCheckpoints(workdir / "final" / "checkpoints")
    store.save_best(5, params, {"results": [[0.5, 0.5, {"accuracy": 0.75}]]})
    store.close()
    args = ["--workdir", str(workdir), "--formats", "jax", "--no-verify"]
    assert export.main(args + ["--width", "0.5", "--depth", "0.5",
                               "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert "dev at stage final: accuracy 0.7500" in text and "warning" not in text
    assert export.main(args + ["--width", "1", "--depth", "1",
                               "--out", str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "warning: stage final" in text and "scored (0.5, 0.5), not (1, 1)" in text


def test_cli_bad_input(run_dir, minilm_path, tmp_path, capsys):
    workdir, _, _ = run_dir
    assert export.main(["--workdir", str(workdir), "--width", "0.1",
                        "--out", str(tmp_path / "o")]) == 2
    assert "keeps no attention head" in capsys.readouterr().err
    assert export.main(["--workdir", str(minilm_path), "--width", "0.5",
                        "--out", str(tmp_path / "o")]) == 2
    assert "not a dynabert_jax training config" in capsys.readouterr().err
    assert export.main(["--workdir", str(tmp_path), "--width", "0.5",
                        "--out", str(tmp_path / "o")]) == 2
    assert "not a dynabert_jax run folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _files(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir())


def test_an_export_never_replaces_a_folder_with_other_files(run_dir, tmp_path):
    # The folder is written beside the target and swapped in: a folder holding files
    # the writer does not make (a README, training_args.bin) would lose them, so it is
    # refused, and a user's own "<out>.tmp" is never touched.
    _, model, params = run_dir
    out = tmp_path / "ck"
    dj.save_pretrained_pytorch(model, params, out)
    dj.save_pretrained_pytorch(model, params, out)   # an earlier export: replaced
    assert _files(out) == ["config.json", "model.safetensors"]
    (out / "README.md").write_text("mine")
    (tmp_path / "ck.tmp").mkdir()
    (tmp_path / "ck.tmp" / "keep.txt").write_text("mine too")
    with pytest.raises(FileExistsError, match=r"already holds files this export does not "
                                              r"write \(README.md\)"):
        dj.save_pretrained_pytorch(model, params, out)
    assert (out / "README.md").read_text() == "mine"
    assert (tmp_path / "ck.tmp" / "keep.txt").read_text() == "mine too"
    with pytest.raises(FileExistsError, match="README.md"):
        export.export_jax(model, params, dj.SubNet(0.5, 1.0), out)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        export.export_pytorch(model, params, dj.SubNet(0.5, 1.0), tmp_path / "a_file")
    assert (tmp_path / "a_file").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no leftovers
    jax_out = tmp_path / "j"
    export.export_jax(model, params, dj.SubNet(0.5, 1.0), jax_out)
    export.export_jax(model, params, dj.SubNet(0.25, 1.0), jax_out)
    assert export.load_jax_subnetwork(jax_out)[0].config.num_attention_heads == 1


def test_cli_refuses_an_out_it_would_leave_mixed(run_dir, tmp_path, capsys):
    # A second export with fewer formats would leave the first one's onnx/ (another
    # sub-network) beside the new jax/ and pytorch/.
    workdir, _, _ = run_dir
    out = tmp_path / "out"
    args = ["--workdir", str(workdir), "--no-verify", "--out", str(out)]
    assert export.main(args + ["--width", "0.5", "--formats", "jax,onnx"]) == 0
    assert _files(out) == ["jax", "onnx", "pytorch"]
    before = (out / "onnx" / "model.onnx").stat().st_mtime_ns
    capsys.readouterr()
    assert export.main(args + ["--width", "0.25", "--formats", "jax,pytorch"]) == 2
    err = capsys.readouterr().err
    assert "holds onnx/ from an earlier export" in err and "add onnx to --formats" in err
    assert (out / "onnx" / "model.onnx").stat().st_mtime_ns == before
    assert export.load_jax_subnetwork(out / "jax")[0].config.num_attention_heads == 2
    (out / "jax" / "NOTES.txt").write_text("mine")
    assert export.main(args + ["--width", "0.25"]) == 2
    assert "NOTES.txt" in capsys.readouterr().err
    assert export.load_jax_subnetwork(out / "jax")[0].config.num_attention_heads == 2


def test_cli_checks_an_export_of_fixed_shape(run_dir, tmp_path, capsys):
    workdir, _, _ = run_dir
    args = ["--workdir", str(workdir), "--width", "0.5", "--formats", "jax"]
    assert export.main(args + ["--out", str(tmp_path / "a"), "--batch-size", "2",
                               "--seq-len", "16"]) == 0, capsys.readouterr()
    assert "check jax" in capsys.readouterr().out
    assert export.load_exported(tmp_path / "a" / "jax")(np.ones((2, 16), np.int32)).shape \
        == (2, 2)
    for flag, value, match in (("--seq-len", "0", "--seq-len must be at least 1"),
                               ("--batch-size", "-2", "--batch-size must be at least 1")):
        with pytest.raises(SystemExit):
            export.main(args + ["--out", str(tmp_path / "b"), flag, value])
        assert match in capsys.readouterr().err
    assert export.main(args + ["--out", str(tmp_path / "b"), "--seq-len", "100000"]) == 2
    assert "longer than the model's" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cli_warns_of_a_stage_that_did_not_finish(run_dir, tmp_path, capsys):
    from dynabert_jax import checkpoint as ckpt

    source, _, params = run_dir
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text((source / "config.json").read_text())
    store = ckpt.StageCheckpoints(workdir / "width_depth" / "checkpoints",
                                  {"training": {"total_steps": 40}})
    store.save_best(2, params, {"results": [[0.5, 1.0, {"acc": 0.6}]]})
    store.save_latest(12, params)
    store.close()
    args = ["--workdir", str(workdir), "--width", "0.5", "--formats", "jax", "--no-verify"]
    assert export.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "stage width_depth of" in (text := capsys.readouterr().out)
    assert "stopped at step 12 of 40" in text
    store = ckpt.StageCheckpoints(workdir / "width_depth" / "checkpoints",
                                  {"training": {"total_steps": 40}})
    store.save_latest(40, params)
    store.close()
    assert export.main(args + ["--out", str(tmp_path / "b")]) == 0
    assert "stopped at" not in capsys.readouterr().out


def test_roberta_subnetwork_exports_to_pytorch_and_onnx(tmp_path):
    """RoBERTa: the classification head is dense + out_proj, position ids start at
    pad + 1; the loader builds a stock RobertaForSequenceClassification."""
    import transformers

    torch.manual_seed(0)
    hf_cfg = transformers.RobertaConfig(vocab_size=120, hidden_size=48, num_hidden_layers=4,
                                        num_attention_heads=6, intermediate_size=96,
                                        max_position_embeddings=70, num_labels=3)
    transformers.RobertaForSequenceClassification(hf_cfg).save_pretrained(str(tmp_path / "hf"))
    model, params = dj.from_pretrained_pytorch(tmp_path / "hf", head="classification")
    subnet = dj.SubNet(0.5, 0.75)
    pt_dir = export.export_pytorch(model, params, subnet, tmp_path / "pt")
    pt = export.load_pytorch_subnetwork(pt_dir)
    assert type(pt).__name__ == "RobertaForSequenceClassification"
    inputs = export.sample_inputs(model.config, batch=3, seq=16)
    inputs["token_type_ids"][:] = 0
    inputs["input_ids"][inputs["attention_mask"] == 0] = model.config.pad_token_id
    want = jax_subnet_output(model, params, subnet, inputs)
    with torch.no_grad():
        got = pt(**torch_inputs(inputs)).logits.numpy()
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    onnx = export.export_onnx(pt_dir, tmp_path / "m.onnx")
    got = export.onnx_session(onnx).run(None, {k: v.astype(np.int64)
                                               for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert sum(p.numel() for p in pt.parameters()) == dj.count_params(
        model.config, subnet, include_head=True)


_TF4 = r"""
import sys, numpy as np, torch, transformers
from transformers import AutoModelForSequenceClassification
assert transformers.__version__.startswith("4."), transformers.__version__
m = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
inputs = dict(np.load(sys.argv[2]))
with torch.no_grad():
    out = m(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in inputs.items()})
np.save(sys.argv[3], out.logits.numpy())
"""


@pytest.mark.skipif(not os.environ.get("DYNABERT_TF4_PYTHON"),
                    reason="set DYNABERT_TF4_PYTHON to a Python with transformers 4.x")
def test_transformers4_loads_the_export_with_plain_from_pretrained(minilm, inputs,
                                                                   exported, tmp_path):
    """transformers 4.x applies config.pruned_heads itself in from_pretrained."""
    model, params = minilm
    np.savez(tmp_path / "inputs.npz", **inputs)
    for subnet in (dj.SubNet(0.5, 0.75), dj.SubNet(0.375, 1.0), dj.SubNet(0.25, 0.5)):
        subprocess.run([os.environ["DYNABERT_TF4_PYTHON"], "-c", _TF4,
                        str(exported[subnet][0]), str(tmp_path / "inputs.npz"),
                        str(tmp_path / "out.npy")], check=True, timeout=300,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
        np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                                   jax_subnet_output(model, params, subnet, inputs),
                                   atol=TOL, rtol=0)


def test_span_head_exports_through_every_format(tiny_bert_dir, tmp_path):
    """SQuAD models: BertForQuestionAnswering with start/end logits in every format."""
    model, params = dj.from_pretrained_pytorch(tiny_bert_dir, head="span",
                                               rng=jax.random.PRNGKey(3))
    subnet = dj.SubNet(0.5, 0.75)
    out = tmp_path / "out"
    export.export_jax(model, params, subnet, out / "jax")
    pt = export.export_pytorch(model, params, subnet, out / "pytorch")
    export.export_onnx(pt, out / "onnx" / "model.onnx")
    assert type(export.load_pytorch_subnetwork(pt)).__name__ == "BertForQuestionAnswering"
    sess = export.onnx_session(out / "onnx" / "model.onnx")
    assert [o.name for o in sess.get_outputs()] == ["start_logits", "end_logits"]
    diffs = export.verify_export(model, params, subnet, out, export.FORMATS)
    assert set(diffs) == set(export.FORMATS)
    assert max(diffs.values()) <= TOL, diffs


@pytest.fixture(scope="module")
def roberta_span_export(tmp_path_factory):
    """A tiny RoBERTa span model (official position ids) exported in every format."""
    import transformers

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("roberta_span")
    hf_cfg = transformers.RobertaConfig(vocab_size=120, hidden_size=48, num_hidden_layers=4,
                                        num_attention_heads=4, intermediate_size=96,
                                        max_position_embeddings=40)
    transformers.RobertaForQuestionAnswering(hf_cfg).save_pretrained(str(root / "hf"))
    model, params = dj.from_pretrained_pytorch(root / "hf", head="span")
    assert model.config.roberta_position_ids == "official"
    subnet = dj.SubNet(0.5, 0.75)
    out = root / "out"
    export.export_jax(model, params, subnet, out / "jax")
    pt = export.export_pytorch(model, params, subnet, out / "pytorch")
    export.export_onnx(pt, out / "onnx" / "model.onnx")
    return model, params, subnet, out


def test_sample_inputs_are_right_padded_with_the_pad_id():
    cfg = dj.ModelConfig(model_type="roberta", vocab_size=120, max_position_embeddings=40,
                         type_vocab_size=1, pad_token_id=1)
    inputs = export.sample_inputs(cfg, batch=3, seq=16)
    mask, ids = inputs["attention_mask"], inputs["input_ids"]
    assert mask[0].all() and not mask[1:, -1].any() and mask[:, 0].all()
    assert (ids[mask == 0] == cfg.pad_token_id).all()
    assert (ids[mask == 1] != cfg.pad_token_id).all()
    assert (np.diff(mask, axis=1) <= 0).all()  # right padding only


def test_roberta_span_export_verifies_on_padded_input(roberta_span_export):
    """Hugging Face's RoBERTa gives pad tokens position id ``pad``, the official JAX
    model ``pad + 1 + i``: pad positions differ, real tokens agree, and the check looks
    at real tokens only."""
    model, params, subnet, out = roberta_span_export
    inputs = export.sample_inputs(model.config, batch=3, seq=16)
    pad = inputs["attention_mask"] == 0
    assert pad.any()
    diffs = export.verify_export(model, params, subnet, out, export.FORMATS, inputs)
    assert set(diffs) == set(export.FORMATS)
    assert max(diffs.values()) <= TOL, diffs
    # the case is real: at pad positions the exports do differ from JAX
    small, small_params = dj.extract_subnetwork(model, params, subnet)
    want = np.asarray(jax.jit(export.forward_fn(small))(
        small_params, *(inputs[k] for k in export.INPUT_NAMES)))
    pt = export.load_pytorch_subnetwork(out / "pytorch")
    with torch.no_grad():
        got = pt(**torch_inputs(inputs))
    got = np.stack([got.start_logits.numpy(), got.end_logits.numpy()], axis=-1)
    assert np.abs(got - want)[pad].max() > TOL
    np.testing.assert_allclose(got[~pad], want[~pad], atol=TOL, rtol=0)


def test_verify_export_catches_a_difference_at_real_tokens(roberta_span_export):
    """Masking pad positions must not hide a real discrepancy: parameters that differ
    from the exported ones (one weight of a kept layer) fail the check in every format."""
    model, params, subnet, out = roberta_span_export
    inputs = export.sample_inputs(model.config, batch=3, seq=16)
    # one weight from FFN neuron 0 of layer 0 (a sub-network keeps a prefix of neurons,
    # and layer 0) to hidden unit 0; not a whole row, which LayerNorm would cancel
    perturbed = jax.tree_util.tree_map(lambda x: x, params)  # a new tree, same arrays
    ffn_out = perturbed["encoder"]["layer_0"]["output"]
    ffn_out["kernel"] = ffn_out["kernel"].at[0, 0].add(1.0)
    diffs = export.verify_export(model, perturbed, subnet, out, export.FORMATS, inputs)
    assert set(diffs) == set(export.FORMATS)
    assert min(diffs.values()) > 1e-2, diffs
