"""Batching: deterministic shuffling, resume, eval padding, process slicing, prefetch."""
import threading
import time

import numpy as np
import pytest

from dynabert_jax import data, metrics


def _arrays(n, seq=8):
    ids = np.arange(n * seq, dtype=np.int32).reshape(n, seq)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids), "labels": (np.arange(n) % 3).astype(np.int32),
            "row": np.arange(n)}


def _rows(batches):
    return [b["row"].tolist() for b in batches]


def test_train_order_is_a_pure_function_of_seed_and_epoch():
    a = _arrays(103)
    e0 = _rows(data.train_batches(a, 10, seed=7, epoch=0))
    assert e0 == _rows(data.train_batches(a, 10, seed=7, epoch=0))
    assert e0 != _rows(data.train_batches(a, 10, seed=7, epoch=1))
    assert e0 != _rows(data.train_batches(a, 10, seed=8, epoch=0))
    # documented definition: rows perm[s*B:(s+1)*B] of default_rng([seed, epoch])
    perm = np.random.default_rng([7, 0]).permutation(103)
    assert e0 == [perm[s * 10:(s + 1) * 10].tolist() for s in range(10)]
    # drop_remainder: 10 full batches, no row twice
    flat = sum(e0, [])
    assert len(e0) == 10 == data.steps_per_epoch(103, 10) and len(set(flat)) == 100
    for b in data.train_batches(a, 10, seed=7, epoch=0):
        assert b["input_ids"].shape == (10, 8) and b["input_ids"].dtype == np.int32
        np.testing.assert_array_equal(b["input_ids"], a["input_ids"][b["row"]])
        np.testing.assert_array_equal(b["labels"], a["labels"][b["row"]])


def test_resume_mid_epoch_sees_the_same_batches():
    a = _arrays(64)
    full = _rows(data.train_batches(a, 8, seed=3, epoch=2))
    resumed = _rows(data.train_batches(a, 8, seed=3, epoch=2, start_step=5))
    assert resumed == full[5:]
    # a stream over epochs, resumed at any global step, continues identically
    spe = data.steps_per_epoch(64, 8)
    stream = _rows(data.train_stream(a, 8, seed=3, num_steps=3 * spe))
    assert stream == sum((_rows(data.train_batches(a, 8, 3, e)) for e in range(3)), [])
    for g in (0, 5, spe, spe + 3, 2 * spe + 7):
        assert _rows(data.train_stream(a, 8, seed=3, start_global_step=g,
                                       num_steps=3 * spe - g)) == stream[g:]
    assert data.resume_position(spe + 3, spe) == (1, 3)


def test_no_drop_remainder_and_errors():
    a = _arrays(10)
    sizes = [len(b["row"]) for b in data.train_batches(a, 4, 0, 0, drop_remainder=False)]
    assert sizes == [4, 4, 2]
    with pytest.raises(ValueError, match="needs drop_remainder=False"):
        list(data.train_batches(a, 4, 0, 0, pad_remainder=True))
    with pytest.raises(ValueError, match="no full batch"):
        list(data.train_batches(a, 16, 0, 0))
    with pytest.raises(ValueError, match="different lengths"):
        data.num_examples({"a": np.zeros(3), "b": np.zeros(4)})


@pytest.mark.parametrize("n,batch", [(277, 32), (5, 8), (64, 16), (1, 1), (101, 100)])
def test_eval_counts_every_example_exactly_once(n, batch):
    a = _arrays(n)
    batches = list(data.eval_batches(a, batch))
    assert len(batches) == data.num_eval_batches(n, batch) == -(-n // batch)
    for b in batches:
        assert b["input_ids"].shape == (batch, 8)      # static shape, last batch too
        assert b["weight"].dtype == np.float32
        assert set(np.unique(b["weight"])) <= {0.0, 1.0}
    weight = np.concatenate([b["weight"] for b in batches])
    rows = np.concatenate([b["row"] for b in batches])
    assert weight.sum() == n
    # the real rows, in order, are exactly 0..n-1: each example counted once
    np.testing.assert_array_equal(data.unpad(rows, weight), np.arange(n))
    assert (weight[:n] == 1).all() and (weight[n:] == 0).all()


def test_weighted_eval_metric_on_real_rte_dev(glue_dir, minilm_tokenizer):
    """A 'model' that is right on even rows: accuracy over padded batches must be
    exactly the fraction over the 277 real examples."""
    ds = data.load_glue("rte", glue_dir, "dev")
    arrays = data.tokenize_dataset(ds, minilm_tokenizer, "rte", 32)
    arrays["row"] = np.arange(len(ds))
    preds, labels, weights = [], [], []
    for b in data.eval_batches(arrays, 50):            # 277 = 5 * 50 + 27
        p = np.where(b["row"] % 2 == 0, b["labels"], 1 - b["labels"])
        preds.append(p), labels.append(b["labels"]), weights.append(b["weight"])
    w = np.concatenate(weights)
    p, y = data.unpad(np.concatenate(preds), w), data.unpad(np.concatenate(labels), w)
    assert len(p) == 277
    assert metrics.glue("rte", p, y)["acc"] == pytest.approx(139 / 277)
    weighted = float((np.concatenate(preds) == np.concatenate(labels)) @ w / w.sum())
    assert weighted == pytest.approx(139 / 277)


def test_process_slice():
    a = _arrays(24)
    batch = next(data.train_batches(a, 12, seed=0, epoch=0))
    parts = [data.process_slice(batch, i, 4) for i in range(4)]
    for k in batch:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), batch[k])
    assert parts[1]["row"].tolist() == batch["row"][3:6].tolist()
    with pytest.raises(ValueError, match="not divisible"):
        data.process_slice(batch, 0, 5)
    with pytest.raises(ValueError, match="process_index"):
        data.process_slice(batch, 4, 4)
    single = data.process_slice(batch)                 # jax: process 0 of 1
    np.testing.assert_array_equal(single["row"], batch["row"])


def test_kept_last_batch_is_padded_with_zero_weight_copies_and_resumes():
    a = _arrays(10)
    kept = list(data.train_batches(a, 4, 0, 0, drop_remainder=False, pad_remainder=True))
    unpadded = list(data.train_batches(a, 4, 0, 0, drop_remainder=False))
    assert [len(b["row"]) for b in kept] == [4, 4, 4]
    assert [b["weight"].tolist() for b in kept] == [[1] * 4, [1] * 4, [1, 1, 0, 0]]
    for k, u in zip(kept, unpadded):       # the same rows, in the same order, then copies
        assert k["row"][:len(u["row"])].tolist() == u["row"].tolist()
    assert kept[-1]["row"][2:].tolist() == [kept[-1]["row"][1]] * 2
    stream = _rows(data.train_stream(a, 4, seed=0, num_steps=6, pad_remainder=True))
    assert stream[:3] == _rows(kept) and len(stream) == 6
    assert sorted(set(sum(stream[:3], []))) == list(range(10))   # every row once an epoch
    assert _rows(data.train_stream(a, 4, seed=0, start_global_step=2, num_steps=2,
                                   pad_remainder=True)) == stream[2:4]
    # grouped by length: the full batches are grouped, the kept one stays last
    r, lengths = _ragged(21, seq=16, seed=2)
    grouped = list(data.train_batches(r, 4, 1, 0, drop_remainder=False, pad_remainder=True,
                                      lengths=lengths, group_batches=2))
    assert len(grouped) == 6 and grouped[-1]["weight"].tolist() == [1, 0, 0, 0]
    assert sorted(sum((b["row"][b["weight"] > 0].tolist() for b in grouped), [])) == \
        list(range(21))


def test_micro_batches_are_consecutive_batches_and_each_device_holds_a_share_of_each():
    from dynabert_jax import steps

    a = _arrays(48)
    big = next(data.train_batches(a, 24, seed=0, epoch=0))   # one update of 3 x 8 rows
    small = list(data.train_batches(a, 8, seed=0, epoch=0))[:3]
    laid = data.interleave_micro_batches(big, 3)
    micro = steps.micro_batches(laid, 3)               # what the jitted step sees
    for j in range(3):
        for key in big:
            np.testing.assert_array_equal(np.asarray(micro[key][j]), small[j][key])
    # each of 4 processes (or devices) gets 2 rows of every micro-batch
    for i in range(4):
        rows = data.process_slice(laid, i, 4)["row"]
        for j in range(3):
            assert len(set(rows.tolist()) & set(small[j]["row"].tolist())) == 2
    assert data.interleave_micro_batches(big, 1) is big
    with pytest.raises(ValueError, match="does not split into 5 micro-batches"):
        data.interleave_micro_batches(big, 5)


def test_prefetch_same_items_bounded_and_errors():
    a = _arrays(50)
    direct = _rows(data.train_batches(a, 5, 1, 0))
    assert _rows(data.prefetch(data.train_batches(a, 5, 1, 0), buffer_size=3)) == direct

    produced = []

    def slow_source():
        for i in range(100):
            produced.append(i)
            yield i

    it = data.prefetch(slow_source(), buffer_size=2, transform=lambda x: x * 10)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(produced) <= 1 + 2 + 1        # consumed + queue bound + one in hand
    assert next(it) == 10
    it.close()
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate()
                   if t is it._thread)

    def failing():
        yield 1
        raise RuntimeError("bad batch")

    with data.prefetch(failing()) as it:
        assert next(it) == 1
        with pytest.raises(RuntimeError, match="bad batch"):
            next(it)


def _ragged(n, seq=16, seed=0):
    """Rows of random real lengths 1..seq, right-padded (attention_mask 1 then 0)."""
    a = _arrays(n, seq)
    lengths = np.random.default_rng(seed).integers(1, seq + 1, size=n)
    a["attention_mask"] = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    a["input_ids"] = a["input_ids"] * a["attention_mask"]
    return a, lengths


def test_row_lengths_padded_length_and_trim():
    a, lengths = _ragged(40)
    np.testing.assert_array_equal(data.row_lengths(a["attention_mask"]), lengths)
    assert data.row_lengths(np.array([[0, 0, 0], [1, 0, 1]])).tolist() == [0, 3]
    assert [data.padded_length(n, 8, 20) for n in (0, 1, 8, 9, 17)] == [8, 8, 8, 16, 20]
    assert data.padded_length(3, 8, 5) == 5
    with pytest.raises(ValueError, match="positive"):
        data.padded_length(3, 0, 16)

    batch = {k: v[:6] for k, v in a.items()}
    longest = int(lengths[:6].max())
    cut = data.trim_padding(batch, 4)
    width = -(-longest // 4) * 4
    assert cut["input_ids"].shape == (6, width) and cut["attention_mask"].shape == (6, width)
    # only padding is removed; 1-D arrays are kept
    assert cut["attention_mask"].sum() == batch["attention_mask"].sum()
    np.testing.assert_array_equal(cut["input_ids"], batch["input_ids"][:, :width])
    np.testing.assert_array_equal(cut["labels"], batch["labels"])
    full = {k: v[:2] for k, v in _arrays(2, 16).items()}   # no padding: unchanged
    assert data.trim_padding(full, 4) is full


def test_group_by_length_keeps_rows_groups_lengths_and_resumes():
    a, lengths = _ragged(203, seq=64, seed=1)
    plain = _rows(data.train_batches(a, 8, seed=5, epoch=0))
    grouped = _rows(data.train_batches(a, 8, seed=5, epoch=0, lengths=lengths,
                                       group_batches=10))
    # the same rows as without grouping (the same remainder dropped), in other batches
    assert sorted(sum(grouped, [])) == sorted(sum(plain, []))
    assert grouped != plain and len(grouped) == len(plain) == 25
    assert grouped == _rows(data.train_batches(a, 8, seed=5, epoch=0, lengths=lengths,
                                               group_batches=10))
    assert grouped != _rows(data.train_batches(a, 8, seed=5, epoch=1, lengths=lengths,
                                               group_batches=10))

    def padded_tokens(batches):
        return sum(data.padded_length(lengths[b].max(), 8, 64) * len(b) for b in batches)
    assert padded_tokens(grouped) < 0.8 * padded_tokens(plain)
    # one group holding the whole epoch: rows sorted by length, so no two batches'
    # length ranges overlap
    one = _rows(data.train_batches(a, 8, seed=5, epoch=0, lengths=lengths,
                                   group_batches=1000))
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in one)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))

    # resume: a stream started at any global step continues the uninterrupted one
    spe = data.steps_per_epoch(203, 8)
    stream = _rows(data.train_stream(a, 8, seed=5, num_steps=2 * spe, lengths=lengths))
    for g in (0, 7, spe, spe + 3):
        assert _rows(data.train_stream(a, 8, seed=5, start_global_step=g,
                                       num_steps=2 * spe - g, lengths=lengths)) == stream[g:]
    # fewer rows than one batch, kept as one padded batch: nothing to group, no error
    few = {k: v[:5] for k, v in a.items()}
    (only,) = data.train_batches(few, 8, seed=5, epoch=0, lengths=lengths[:5],
                                 drop_remainder=False, pad_remainder=True)
    assert only["weight"].tolist() == [1] * 5 + [0] * 3
    with pytest.raises(ValueError, match="drop_remainder"):
        next(data.train_batches(a, 8, 0, 0, drop_remainder=False, lengths=lengths))
    with pytest.raises(ValueError, match="lengths has shape"):
        next(data.train_batches(a, 8, 0, 0, lengths=lengths[:5]))
