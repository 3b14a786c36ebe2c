"""SQuAD v1.1 through the trainer: every stage for a step on a small real slice of the
SQuAD dev file, span distillation, and EM/F1 of the evaluator."""
import json

import numpy as np
import pytest

from dynabert_jax import data, metrics, trainer

from conftest import tiny_train_config


@pytest.fixture(scope="module")
def squad_slice(shared_data_dir, tmp_path_factory):
    """The first two paragraphs of the first SQuAD dev article (real questions)."""
    full = json.loads((shared_data_dir / "squad" / "v1.1" / "dev-v1.1.json").read_text())
    article = dict(full["data"][0], paragraphs=full["data"][0]["paragraphs"][:2])
    path = tmp_path_factory.mktemp("squad") / "slice.json"
    path.write_text(json.dumps({"version": "1.1", "data": [article]}))
    return path


def _config(tiny_bert_dir, tmp_path, squad_slice, **kw):
    c = tiny_train_config(tiny_bert_dir, tmp_path, task="squad", **kw)
    c.data.squad_train = c.data.squad_dev = str(squad_slice)
    c.data.train_size = c.data.dev_size = 0
    c.data.max_seq_length = 64
    c.data.doc_stride = 16
    return c


@pytest.mark.slow
def test_squad_every_stage(tiny_bert_dir, tmp_path, squad_slice):
    # (stage 2 with gradient accumulation: the span labels go through it too)
    c = _config(tiny_bert_dir, tmp_path, squad_slice, **{"final.enabled": True,
                                                         "width_depth.grad_accum_steps": 2})
    record = trainer.train_and_evaluate(c, tmp_path / "run")
    assert record["task"] == "squad" and record["metric"] == "f1"
    assert len(record["subnets"]) == 12
    for cell in record["subnets"]:
        assert set(cell["metrics"]) == {"exact_match", "f1"}
        assert 0.0 <= cell["metric"] <= 100.0
    assert set(record["teacher"]["metrics"]) == {"exact_match", "f1"}
    for stage in ("teacher", "width", "width_depth", "final"):
        lines = (tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(x)["loss"] for x in lines if '"loss"' in x]
        assert len(losses) == 2 and all(np.isfinite(losses)), stage
    assert (tmp_path / "run" / "rewire" / "importance.npz").is_file()


def test_squad_scores_gold_logits_and_official_metric(tiny_bert_dir, tmp_path, squad_slice,
                                                      minilm_tokenizer):
    c = _config(tiny_bert_dir, tmp_path, squad_slice)
    c.data.max_seq_length, c.data.doc_stride = 128, 32   # every answer fits a window
    examples, feats = trainer._squad_split(c, minilm_tokenizer, "dev")
    assert len(examples) > 10 and len(feats) > len(examples)   # several windows each
    # One-hot logits at each window's gold span: the evaluator must find the answers.
    logits = np.full((len(feats), 128, 2), -10.0, np.float32)
    rows = np.arange(len(feats))
    logits[rows, feats.arrays["start_positions"], 0] = 10.0
    logits[rows, feats.arrays["end_positions"], 1] = 10.0
    # CLS (position 0) marks windows without the answer: keep them from winning.
    logits[feats.arrays["start_positions"] == 0, 0, :] = -10.0
    scores = trainer.squad_scores(examples, feats, logits)
    preds = data.squad_postprocess(examples, feats, logits[..., 0], logits[..., 1])
    assert scores == pytest.approx(metrics.squad_v1(preds, json.loads(
        squad_slice.read_text())))
    # Every miss is a gold answer inside a WordPiece ("gold" in "golden", "8" in "18"):
    # the decoder returns the enclosing token, which contains the gold text.
    misses = [ex for ex in examples if not metrics.squad_exact_match(preds[ex.id],
                                                                     ex.answer_texts[0])]
    assert all(ex.answer_texts[0] in preds[ex.id] for ex in misses)
    assert len(misses) <= 0.1 * len(examples) and scores["exact_match"] >= 90.0


def test_squad_dev_default_falls_back_to_the_next_data_root(tmp_path, monkeypatch):
    # $DYNABERT_DATA without a squad/ folder: ../shared/data's file, as for GLUE
    shared = trainer.REPO_ROOT.parent / "shared" / "data" / "squad" / "v1.1" / "dev-v1.1.json"
    monkeypatch.setenv("DYNABERT_DATA", str(tmp_path))
    if shared.is_file():
        assert trainer.default_squad_dev() == shared
    mine = tmp_path / "squad" / "v1.1" / "dev-v1.1.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("{}")
    assert trainer.default_squad_dev() == mine   # $DYNABERT_DATA first when it has one
