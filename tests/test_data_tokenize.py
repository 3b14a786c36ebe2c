"""Tokenization: parity with the Hugging Face tokenizer's own output and with the official
convert_examples_to_features (pair truncation, stripped texts), and the cache."""
import copy
import os

import numpy as np
import pytest

from dynabert_jax import data
from dynabert_jax.data import features as features_mod


@pytest.mark.parametrize("task", ["sst2", "rte"])
def test_ids_equal_hf_tokenizer(glue_dir, minilm_tokenizer, task):
    ds = data.load_glue(task, glue_dir, "dev")
    t = data.TASKS[task]
    arrays = data.tokenize_dataset(ds, minilm_tokenizer, task, max_seq_length=128)
    texts = [list(ds[c]) for c in t.text_columns]
    ref = minilm_tokenizer(*texts, padding="max_length", truncation=True, max_length=128)
    n = len(ds)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert arrays[key].dtype == np.int32
        assert arrays[key].shape == (n, 128)
        np.testing.assert_array_equal(arrays[key], np.asarray(ref[key]), err_msg=key)
    assert arrays["labels"].dtype == np.int32
    np.testing.assert_array_equal(arrays["labels"], np.asarray(ds["label"]))
    if task == "rte":
        # pairs: both segments present, and some pairs really were truncated
        assert (arrays["token_type_ids"].max(axis=1) == 1).all()
        assert (arrays["attention_mask"].sum(axis=1) == 128).any()


def _official_bert_features(tokenizer, a, b, length):
    """transformers 2.1.1's convert_examples_to_features for one BERT pair."""
    ta, tb = tokenizer.tokenize(a.strip()), tokenizer.tokenize(b.strip())
    while len(ta) + len(tb) > length - 3:      # _truncate_seq_pair
        (ta if len(ta) > len(tb) else tb).pop()
    ids = tokenizer.convert_tokens_to_ids(["[CLS]"] + ta + ["[SEP]"] + tb + ["[SEP]"])
    pad = [0] * (length - len(ids))
    return (ids + pad, [1] * len(ids) + pad, [0] * (len(ta) + 2) + [1] * (len(tb) + 1) + pad)


def test_pairs_are_cut_as_the_official_code_cuts_them(glue_dir, minilm_tokenizer):
    # an odd room for text: the official loop keeps the spare token in the first text,
    # the Rust tokenizers' longest_first in the second (31 of MRPC's 408 dev pairs at 64)
    ds = data.load_glue("mrpc", glue_dir, "dev")
    a, b = list(ds["sentence1"]), list(ds["sentence2"])
    ours = data.tokenize_dataset(ds, minilm_tokenizer, "mrpc", max_seq_length=64)
    for i in range(len(a)):
        want = _official_bert_features(minilm_tokenizer, a[i], b[i], 64)
        for key, w in zip(("input_ids", "attention_mask", "token_type_ids"), want):
            np.testing.assert_array_equal(ours[key][i], w, err_msg=f"{key} row {i}")
    rust = minilm_tokenizer(a, b, padding="max_length", truncation=True, max_length=64)
    assert (np.asarray(rust["input_ids"]) != ours["input_ids"]).any(axis=1).sum() == 31


def test_truncate_pair_is_the_official_loop():
    for la in range(25):
        for lb in range(25):
            for room in range(30):
                x, y = la, lb
                while x + y > room:
                    if x > y:
                        x -= 1
                    else:
                        y -= 1
                assert features_mod.truncate_pair(la, lb, room) == (x, y), (la, lb, room)


def test_texts_are_stripped_as_the_official_tokenize_does():
    # a byte-level BPE (RoBERTa) would make a token of SST-2's trailing space
    seen = []

    class Recorder:
        is_fast = False

        def __call__(self, a, b=None, **kw):
            seen.extend(a + (b or []))
            return {"input_ids": np.zeros((len(a), 8), np.int32)}

    features_mod.tokenize_texts(Recorder(), [" it 's a charming journey . "], ["  x\t"], 8)
    assert seen == ["it 's a charming journey .", "x"]


def test_a_left_padding_tokenizer_is_refused(minilm_path):
    """Batching finds a row's length from the right and pairs are padded on the right:
    a left-padding tokenizer would silently give single sentences the other layout."""
    from transformers import AutoTokenizer

    left = AutoTokenizer.from_pretrained(str(minilm_path), local_files_only=True,
                                         padding_side="left")
    for b in (None, ["a pair"]):
        with pytest.raises(ValueError, match="right-padding tokenizer.*padding_side='left'"):
            features_mod.tokenize_texts(left, ["a sentence"], b, 16)


def test_regression_labels_and_explicit_columns(glue_dir, minilm_tokenizer):
    ds = data.load_glue("stsb", glue_dir, "dev").select(range(40))
    by_task = data.tokenize_dataset(ds, minilm_tokenizer, "stsb", 64)
    by_cols = data.tokenize_dataset(ds, minilm_tokenizer, ("sentence1", "sentence2"), 64)
    assert by_task["labels"].dtype == np.float32
    for k in by_task:
        np.testing.assert_array_equal(by_task[k], by_cols[k])
    np.testing.assert_allclose(by_task["labels"], np.asarray(ds["label"], np.float32))
    with pytest.raises(KeyError, match="no text column 'nope'"):
        data.tokenize_dataset(ds, minilm_tokenizer, ("nope",), 64)


def test_cache_hit_skips_tokenizer_and_returns_same_arrays(glue_dir, minilm_tokenizer, tmp_path,
                                                           monkeypatch):
    ds = data.load_glue("rte", glue_dir, "dev")
    cold = data.tokenize_dataset(ds, minilm_tokenizer, "rte", 128, cache_dir=tmp_path)
    entries = [e for e in os.listdir(tmp_path) if not e.startswith(".")]
    assert len(entries) == 1

    def boom(*a, **k):
        raise AssertionError("tokenizer called although the cache should hit")

    monkeypatch.setattr(features_mod, "tokenize_texts", boom)
    warm = data.tokenize_dataset(ds, minilm_tokenizer, "rte", 128, cache_dir=tmp_path)
    assert set(warm) == set(cold)
    for k in cold:
        assert warm[k].dtype == cold[k].dtype
        np.testing.assert_array_equal(warm[k], cold[k])

    # a different max length or different content is a different entry (tokenizer runs)
    for other_ds, length in [(ds, 64), (ds.select(range(10)), 128)]:
        with pytest.raises(AssertionError, match="tokenizer called"):
            data.tokenize_dataset(other_ds, minilm_tokenizer, "rte", length, cache_dir=tmp_path)


def test_cache_key_follows_file_content(tmp_path, minilm_tokenizer):
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    f = glue / "SST-2" / "dev.tsv"
    f.write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n")
    cache = tmp_path / "cache"
    a = data.tokenize_dataset(data.load_glue("sst2", glue, "dev"), minilm_tokenizer, "sst2", 16,
                              cache_dir=cache)
    f.write_text("sentence\tlabel\na fine film\t1\na dull film\t1\n")  # one label changed
    b = data.tokenize_dataset(data.load_glue("sst2", glue, "dev"), minilm_tokenizer, "sst2", 16,
                              cache_dir=cache)
    assert len(os.listdir(cache)) == 2
    assert list(a["labels"]) == [1, 0] and list(b["labels"]) == [1, 1]


def test_tokenizer_fingerprint(minilm_tokenizer):
    fp = data.tokenizer_fingerprint(minilm_tokenizer)
    # calling the tokenizer changes its backend's truncation/padding state: same key
    minilm_tokenizer(["x y z"], padding="max_length", truncation=True, max_length=7)
    assert data.tokenizer_fingerprint(minilm_tokenizer) == fp
    other = copy.deepcopy(minilm_tokenizer)
    other.add_tokens(["dynabertnewtoken"])
    assert data.tokenizer_fingerprint(other) != fp


class _NoSegmentsTokenizer:
    """Wraps a tokenizer and drops token_type_ids, like RoBERTa's."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, *a, **k):
        enc = self.tok(*a, **k)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def get_vocab(self):
        return self.tok.get_vocab()


def test_tokenizer_without_token_type_ids(minilm_tokenizer):
    ds = {"a": ["one two", "three"], "b": ["four", ""], "label": [0, 1]}
    arrays = data.tokenize_dataset(ds, _NoSegmentsTokenizer(minilm_tokenizer), ("a", "b"), 12)
    assert arrays["token_type_ids"].shape == (2, 12)
    assert not arrays["token_type_ids"].any()
    ref = minilm_tokenizer(ds["a"], ds["b"], padding="max_length", truncation=True, max_length=12)
    np.testing.assert_array_equal(arrays["input_ids"], ref["input_ids"])
