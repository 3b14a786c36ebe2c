"""A user's own task through the trainer (``task=custom``): the task and its metrics,
config errors, and the chain on real sentences in CSV / JSONL files."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from dynabert_jax import data, metrics, trainer

from conftest import REPO, tiny_train_config


def test_custom_task_metrics_and_labels():
    t = data.custom_task("text", ["neg", "pos"])
    assert (t.name, t.text_columns, t.label_list, t.num_labels) == (
        "custom", ("text",), ("neg", "pos"), 2)
    assert t.metric_names == ("acc", "mcc", "f1", "acc_and_f1")
    t = data.custom_task(("premise", "hypothesis"), ["a", "b", "c"], metric="mcc")
    assert t.metric_names == ("mcc", "acc") and t.is_pair and t.num_labels == 3
    t = data.custom_task("text", is_regression=True, metric="spearmanr")
    assert t.metric_names == ("spearmanr", "pearson", "corr") and t.num_labels == 1
    for kwargs, match in [
        (dict(label_list=None), "needs label_list"),
        (dict(label_list=["pos"]), "needs label_list"),
        (dict(label_list=["a", "a"]), "distinct"),
        (dict(label_list=["a", "b", "c"], metric="f1"), "'f1' is not one of"),
        (dict(is_regression=True, metric="acc"), "'acc' is not one of"),
        (dict(is_regression=True, label_list=["a", "b"]), "no label_list"),
    ]:
        with pytest.raises(ValueError, match=match):
            data.custom_task("text", **kwargs)
    with pytest.raises(ValueError, match="1 or 2 columns"):
        data.custom_task(("a", "b", "c"), ["x", "y"])


def test_named_metrics_in_the_order_asked():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 2))
    labels = rng.integers(0, 2, 50)
    preds = logits.argmax(-1)
    got = metrics.named(("acc_and_f1", "acc", "f1", "mcc"), logits, labels)
    assert list(got) == ["acc_and_f1", "acc", "f1", "mcc"]
    acc, f1 = np.mean(preds == labels), metrics.f1_binary(preds, labels)
    assert got["acc"] == pytest.approx(acc) and got["f1"] == pytest.approx(f1)
    assert got["acc_and_f1"] == pytest.approx((acc + f1) / 2)
    assert got["mcc"] == pytest.approx(np.corrcoef(preds, labels)[0, 1])  # binary MCC
    scores, gold = rng.normal(size=(40, 1)), rng.uniform(0, 5, 40)
    got = metrics.named(("spearmanr", "corr", "pearson"), scores, gold)
    assert list(got) == ["spearmanr", "corr", "pearson"]
    assert got["pearson"] == pytest.approx(np.corrcoef(scores[:, 0], gold)[0, 1])
    assert got["corr"] == pytest.approx((got["pearson"] + got["spearmanr"]) / 2)
    with pytest.raises(KeyError, match="unknown metric"):
        metrics.named(("acc", "pearson"), logits, labels)
    with pytest.raises(KeyError, match="unknown metric"):
        metrics.named(("accuracy",), logits, labels)


@pytest.mark.parametrize("overrides, match", [
    ({}, "set config.data.custom.train and config.data.custom.dev"),
    ({"data.custom.train": "x.csv"}, "set config.data.custom.dev"),
    ({"data.custom.label_list": ""}, "needs label_list"),
    ({"data.custom.metric": "pearson"}, "'pearson' is not one of"),
    ({"data.augmented_train": "aug.tsv"}, "augmented_train is for GLUE tasks"),
])
def test_custom_config_errors(tiny_bert_dir, tmp_path, overrides, match):
    """Each is found before the model or any file is read, and leaves no run folder."""
    files = {"data.custom.train": "a.csv", "data.custom.dev": "b.csv"}
    if "data.custom.train" in overrides or not overrides:
        files = {}
    c = tiny_train_config(tiny_bert_dir, tmp_path, task="custom",
                          **{"data.custom.label_list": "0,1", **files, **overrides})
    with pytest.raises(trainer.ConfigError, match=match):
        trainer.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_custom_without_files_is_one_line_from_train_py(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--config.task=custom",
                          "--config.data.custom.label_list=neg,pos",
                          f"--workdir={tmp_path / 'run'}"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    assert ("train.py: error: task=custom needs the files: set config.data.custom.train "
            "and config.data.custom.dev") in out.stderr
    assert "Traceback" not in out.stderr


def _sst2_rows(glue_dir, split, n):
    lines = (glue_dir / "SST-2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:n + 1]]
    return [{"review": s, "sentiment": ("neg", "pos")[int(y)]} for s, y in rows]


@pytest.fixture(scope="module")
def custom_run(tiny_bert_dir, glue_dir, tmp_path_factory):
    """The chain (teacher, rewiring, DynaBERT_W, DynaBERT) on a user's files: 64 SST-2
    training sentences as a CSV, 32 dev sentences as JSONL, labels named neg / pos."""
    tmp = tmp_path_factory.mktemp("custom")
    train = _sst2_rows(glue_dir, "train", 64)
    with open(tmp / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["review", "sentiment"])
        w.writeheader()
        w.writerows(train)
    dev = _sst2_rows(glue_dir, "dev", 32)
    (tmp / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    config = tiny_train_config(
        tiny_bert_dir, tmp, task="custom", widths=(1.0, 0.5), depths=(1.0, 0.5),
        **{"data.custom.train": str(tmp / "train.csv"),
           "data.custom.dev": str(tmp / "dev.jsonl"),
           "data.custom.text_columns": "review", "data.custom.label_column": "sentiment",
           "data.custom.label_list": "neg,pos", "data.custom.metric": "acc_and_f1"})
    record = trainer.train_and_evaluate(config, tmp / "run")
    return tmp / "run", record, dev


@pytest.mark.slow
def test_custom_task_trains_the_chain(custom_run):
    run, record, dev = custom_run
    assert record["task"] == "custom" and record["metric"] == "acc_and_f1"
    assert len(record["subnets"]) == 4
    for cell in record["subnets"]:
        assert list(cell["metrics"]) == ["acc_and_f1", "acc", "mcc", "f1"]
        assert cell["metric"] == cell["metrics"]["acc_and_f1"]
        # 32 dev sentences: accuracy is a multiple of 1/32
        assert abs(cell["metrics"]["acc"] * 32 - round(cell["metrics"]["acc"] * 32)) < 1e-9
    sizes = json.loads((run / "data.json").read_text())
    assert sizes["train"]["used"] == 64 and sizes["dev"]["used"] == 32
    # export and select read the run back with the user's label names
    loaded = trainer.load_run(run)
    assert loaded.stage == "width_depth" and loaded.task.name == "custom"
    assert loaded.id2label == {0: "neg", 1: "pos"}
    assert loaded.model.config.num_labels == 2


def test_custom_regression_teacher(tiny_bert_dir, glue_dir, tmp_path):
    """A regression task from a headerless TSV: one output, scored by its metric."""
    lines = (glue_dir / "STS-B" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:49]
    rows = [line.split("\t") for line in lines]
    tsv = "".join(f"{r[7]}\t{r[8]}\t{r[9]}\n" for r in rows)
    (tmp_path / "train.tsv").write_text(tsv, encoding="utf-8")
    (tmp_path / "dev.tsv").write_text(tsv, encoding="utf-8")
    c = tiny_train_config(tiny_bert_dir, tmp_path, task="custom", stage="teacher",
                          **{"data.custom.train": str(tmp_path / "train.tsv"),
                             "data.custom.dev": str(tmp_path / "dev.tsv"),
                             "data.custom.column_names": "a,b,score",
                             "data.custom.text_columns": "a, b",
                             "data.custom.label_column": "score",
                             "data.custom.regression": True,
                             "data.custom.metric": "spearmanr"})
    trainer.train_and_evaluate(c, tmp_path / "run")
    ev = json.loads((tmp_path / "run" / "teacher" / "eval.json").read_text())
    assert list(ev["metrics"]) == ["spearmanr", "pearson", "corr"]
    assert -1.0 <= ev["metrics"]["spearmanr"] <= 1.0
    loaded = trainer.load_run(tmp_path / "run", stage="teacher")
    assert loaded.model.config.head == "regression" and loaded.id2label is None


def test_sweep_summary_reads_a_custom_teachers_metric(tmp_path):
    """A sweep point that trained only its teacher is summarised by the task's primary
    metric, which for a custom task comes from its config."""
    from configs import default
    from dynabert_jax import sweep

    c = default.get_config()
    c.task, c.data.custom.label_list, c.data.custom.metric = "custom", "neg,pos", "mcc"
    c.data.custom.train, c.data.custom.dev = "train.csv", "dev.csv"   # not read
    (tmp_path / "config.json").write_text(c.to_json())
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "eval.json").write_text(
        json.dumps({"metrics": {"mcc": 0.25, "acc": 0.7}}))
    point = sweep.read_point(tmp_path)
    assert (point["metric"], point["teacher"], point["methods"]) == ("mcc", 0.25, {})
