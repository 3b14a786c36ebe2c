"""SQuAD v1.1: reading, windowed features, span post-processing, official EM/F1.

The gold-span round trip feeds one-hot logits at the first gold answer's tokens
through `postprocess` + `metrics.squad_v1`. A token-level decoder can only return
whole tokens, so a gold answer that starts or ends inside a WordPiece token
("gold" in "golden", "8" in "18", annotation slips such as "y through ...") cannot
be reproduced exactly. The tests therefore check, per question, against an
independent tokenization of the context alone:

* every question whose first gold answer lies on token boundaries gets EM = F1 = 100;
* every other question gets the smallest token span around its gold answer.
"""
import json

import numpy as np
import pytest

from dynabert_jax import data, metrics
from dynabert_jax.data import squad


@pytest.fixture(scope="module")
def squad_path(shared_data_dir):
    p = shared_data_dir / "squad" / "v1.1" / "dev-v1.1.json"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="module")
def squad_json(squad_path):
    with open(squad_path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def examples(squad_path):
    return data.load_squad(squad_path)


def test_load_squad(examples, squad_json):
    assert len(examples) == 10570
    assert len(squad_json["data"]) == 48
    assert sum(len(a["paragraphs"]) for a in squad_json["data"]) == 2067
    assert len({e.id for e in examples}) == 10570
    for e in examples:
        assert e.answer_texts and len(e.answer_texts) == len(e.answer_starts)
        for t, s in zip(e.answer_texts, e.answer_starts):
            assert e.context[s:s + len(t)] == t


def _subset_json(squad_json, ids):
    ids = set(ids)
    out = {"version": "1.1", "data": []}
    for art in squad_json["data"]:
        paras = []
        for p in art["paragraphs"]:
            qas = [q for q in p["qas"] if q["id"] in ids]
            if qas:
                paras.append({"context": p["context"], "qas": qas})
        if paras:
            out["data"].append({"title": art["title"], "paragraphs": paras})
    return out


def _gold_round_trip(exs, squad_json, tokenizer, max_seq_length=384, doc_stride=128):
    feats = data.squad_features(exs, tokenizer, max_seq_length, doc_stride)
    n, seq = feats.arrays["input_ids"].shape
    start = np.zeros((n, seq), np.float32)
    end = np.zeros((n, seq), np.float32)
    start[np.arange(n), feats.arrays["start_positions"]] = 1.0
    end[np.arange(n), feats.arrays["end_positions"]] = 1.0
    # no length limit here: some gold answers are longer than the usual 30 tokens
    preds = data.squad_postprocess(exs, feats, start, end, max_answer_length=seq)
    assert set(preds) == {e.id for e in exs}

    # Independent: token boundaries of the context tokenized on its own.
    reachable, expected_text = set(), {}
    for e in exs:
        offs = tokenizer(e.context, add_special_tokens=False,
                         return_offsets_mapping=True)["offset_mapping"]
        sc = e.answer_starts[0]
        ec = sc + len(e.answer_texts[0])
        tok_start = max(s for s, _ in offs if s <= sc)
        tok_end = min(t for _, t in offs if t >= ec)
        expected_text[e.id] = e.context[tok_start:tok_end]
        if (tok_start, tok_end) == (sc, ec):
            reachable.add(e.id)
    assert preds == expected_text                      # every question, exactly
    assert len(reachable) >= 0.99 * len(exs)

    exact = metrics.squad_v1({i: preds[i] for i in reachable}, _subset_json(squad_json, reachable))
    assert exact == {"exact_match": 100.0, "f1": 100.0}
    return preds, metrics.squad_v1(preds, _subset_json(squad_json, preds))


def test_gold_spans_round_trip_subset(examples, squad_json, minilm_tokenizer):
    subset = examples[::20]                             # 529 questions, deterministic
    preds, overall = _gold_round_trip(subset, squad_json, minilm_tokenizer)
    assert len(preds) == 529
    assert overall["exact_match"] > 99.0 and overall["f1"] > 99.0


@pytest.mark.slow
def test_gold_spans_round_trip_full_dev(examples, squad_json, minilm_tokenizer, squad_path):
    preds, overall = _gold_round_trip(examples, squad_json, minilm_tokenizer)
    assert len(preds) == 10570
    assert metrics.squad_v1(preds, squad_path) == overall
    # 23 of 10,570 first gold answers start or end inside a WordPiece token
    assert overall["exact_match"] == pytest.approx(100 * (10570 - 23) / 10570)
    assert overall["f1"] > 99.8


def test_features_windows_and_labels(examples, minilm_tokenizer):
    exs = sorted(examples[:400], key=lambda e: -len(e.context))[:12]   # long contexts
    feats = data.squad_features(exs, minilm_tokenizer, max_seq_length=128, doc_stride=32)
    assert len(feats) > len(exs)                       # long contexts were split
    a = feats.arrays
    for k in ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"):
        assert a[k].dtype == np.int32 and len(a[k]) == len(feats)
    ref = minilm_tokenizer([e.question.lstrip() for e in exs], [e.context for e in exs],
                           truncation="only_second", max_length=128, stride=32,
                           return_overflowing_tokens=True, padding="max_length")
    np.testing.assert_array_equal(a["input_ids"], np.asarray(ref["input_ids"]))
    np.testing.assert_array_equal(feats.example_index, np.asarray(ref["overflow_to_sample_mapping"]))

    n_in_window = 0
    for i, e in enumerate(exs):
        fs = np.flatnonzero(feats.example_index == i)
        ctx_offsets = [feats.offset_mapping[f][feats.offset_mapping[f, :, 0] >= 0] for f in fs]
        for prev, nxt in zip(ctx_offsets, ctx_offsets[1:]):
            np.testing.assert_array_equal(prev[-32:], nxt[:32])   # doc_stride overlap
        sc = e.answer_starts[0]
        ec = sc + len(e.answer_texts[0])
        for f, offs in zip(fs, ctx_offsets):
            s, t = a["start_positions"][f], a["end_positions"][f]
            inside = offs[0, 0] <= sc and offs[-1, 1] >= ec
            if inside:
                n_in_window += 1
                span = feats.offset_mapping[f]
                assert 0 < s <= t
                assert span[s, 0] <= sc < span[s, 1] or span[s, 0] == sc
                assert span[t, 1] >= ec and span[t, 0] < ec
                assert e.answer_texts[0] in e.context[span[s, 0]:span[t, 1]]
            else:
                assert s == 0 and t == 0                # CLS: answer not in this window
    assert n_in_window >= len(exs)


def _toy_example():
    words = ("red blue green cat dog house tree river stone bird fish moon sun star "
             "road car boat ship rain snow wind fire water earth book pen door wall").split()
    context = " ".join(words + words)                   # 56 words, one token each
    return squad.SquadExample(id="toy", title="t", context=context, question="which color?",
                              answer_texts=("cat dog",), answer_starts=(context.index("cat"),))


def test_postprocess_picks_best_valid_span_over_windows(minilm_tokenizer):
    ex = _toy_example()
    feats = data.squad_features([ex], minilm_tokenizer, max_seq_length=32, doc_stride=8)
    n, seq = feats.arrays["input_ids"].shape
    assert n >= 3
    offs = feats.offset_mapping
    ctx = offs[..., 0] >= 0
    start = np.full((n, seq), -100.0)                   # only the marked positions matter
    end = np.full((n, seq), -100.0)
    q_tok = int(np.flatnonzero(~ctx[0] & (feats.arrays["attention_mask"][0] == 1))[1])
    start[0, q_tok] = end[0, q_tok] = 50.0              # a question token: never valid
    c0 = np.flatnonzero(ctx[0])
    start[0, c0[5]], end[0, c0[2]] = 40.0, 40.0         # end before start: invalid
    start[0, c0[10]], end[0, c0[11]] = 8.0, 8.0         # valid, lower score (16)
    c1 = np.flatnonzero(ctx[1])
    start[1, c1[0]], end[1, c1[-1]] = 30.0, 30.0        # longer than max_answer_length=4
    f = n - 1                                           # the winner (18), in the last window
    c_last = np.flatnonzero(ctx[f])
    s, e = c_last[3], c_last[5]
    start[f, s], end[f, e] = 9.0, 9.0

    pred = data.squad_postprocess([ex], feats, start, end, n_best_size=5, max_answer_length=4)
    assert pred == {"toy": ex.context[offs[f, s, 0]:offs[f, e, 1]]}
    assert len(pred["toy"].split()) == 3
    # the length limit is what ruled out window 1's higher-scoring span
    longer = data.squad_postprocess([ex], feats, start, end, n_best_size=5, max_answer_length=seq)
    assert longer == {"toy": ex.context[offs[1, c1[0], 0]:offs[1, c1[-1], 1]]}
    # without a valid span anywhere the answer is empty
    none = data.squad_postprocess([ex], feats, np.where(ctx, -1e9, 0), np.where(ctx, -1e9, 0),
                                  max_answer_length=0)
    assert none == {"toy": ""}


def test_squad_v1_hand_written_predictions(tmp_path):
    ds = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "Denver Broncos", "answer_start": 0},
                                                   {"text": "the Denver Broncos", "answer_start": 0}]},
        {"id": "q2", "question": "?", "answers": [{"text": "Santa Clara, California", "answer_start": 0},
                                                   {"text": "Levi's Stadium", "answer_start": 0}]},
        {"id": "q3", "question": "?", "answers": [{"text": "an apple", "answer_start": 0}]},
        {"id": "q4", "question": "?", "answers": [{"text": "never predicted", "answer_start": 0}]},
        {"id": "q5", "question": "?", "answers": [{"text": "1,000", "answer_start": 0}]},
        {"id": "q6", "question": "?", "answers": [{"text": "The", "answer_start": 0}]},
    ]}]}]}
    preds = {
        "q1": "The Denver  Broncos!",          # normalises to "denver broncos": EM 1, F1 1
        "q2": "Levi's Stadium in Santa Clara",  # "levis stadium in santa clara" (5 tokens)
        "q3": "apple apple",                    # vs "apple": overlap 1 -> P 1/2, R 1
        "q5": "1000",                           # punctuation removed: EM 1
        "q6": "",                               # both normalise to "": EM 1, but F1 0
        "unknown": "ignored",
    }
    # q2: vs "santa clara california": overlap 2 -> P 2/5 R 2/3 -> F1 1/2
    #     vs "levis stadium":          overlap 2 -> P 2/5 R 1   -> F1 4/7   (max)
    f1 = {"q1": 1.0, "q2": 4 / 7, "q3": 2 / 3, "q4": 0.0, "q5": 1.0, "q6": 0.0}
    em = {"q1": 1, "q2": 0, "q3": 0, "q4": 0, "q5": 1, "q6": 1}
    expected = {"exact_match": 100 * sum(em.values()) / 6, "f1": 100 * sum(f1.values()) / 6}
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(ds))
    for source in (path, str(path), ds):
        got = metrics.squad_v1(preds, source)
        assert got["exact_match"] == pytest.approx(expected["exact_match"])
        assert got["f1"] == pytest.approx(expected["f1"])


def test_normalize_answer():
    n = metrics.normalize_answer
    assert n("The  Quick, brown fox!") == "quick brown fox"
    assert n("An apple a day") == "apple day"
    assert n("theater") == "theater"                   # articles only as whole words
    assert n("  A\tB\n") == "b"
