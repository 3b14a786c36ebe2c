"""GLUE and custom-file readers on the real shared files and on bad input.

Row counts and class counts come from ``../shared/data/README.md``; the texts are
checked against a plain ``line.split("\\t")`` of the same file, so every sentence
must survive the loader byte for byte.
"""
import collections
import json
import pathlib

import numpy as np
import pytest

from dynabert_jax import data, metrics

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "data"

# (task, split) -> (rows, {label: count} or None), from the shared data README
EXPECTED = {
    ("sst2", "train"): (67349, {0: 29780, 1: 37569}),
    ("sst2", "dev"): (872, {0: 428, 1: 444}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}),      # entailment / not_entailment
    ("rte", "dev"): (277, {0: 146, 1: 131}),
    ("mrpc", "train"): (3668, {1: 2474, 0: 1194}),
    ("mrpc", "dev"): (408, {1: 279, 0: 129}),
    ("stsb", "train"): (5749, None),
    ("stsb", "dev"): (1500, None),
    ("cola", "train"): (8551, {1: 6023, 0: 2528}),
    ("cola", "dev"): (1043, {1: 721, 0: 322}),
    ("qnli", "dev"): (5463, {0: 2702, 1: 2761}),
}

# raw-file columns (text..., label) for the independent check
RAW_COLUMNS = {"sst2": (0, 1), "rte": (1, 2, 3), "mrpc": (3, 4, 0), "stsb": (7, 8, 9),
               "cola": (3, 1), "qnli": (1, 2, 3)}


def _raw_rows(path, has_header):
    text = pathlib.Path(path).read_bytes().decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    return [ln.split("\t") for ln in (lines[1:] if has_header else lines)]


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_shared_file_rows_labels_and_text(glue_dir, task, split):
    ds = data.load_glue(task, glue_dir, split=split)
    t = data.TASKS[task]
    n, counts = EXPECTED[(task, split)]
    assert len(ds) == n
    assert ds.column_names == [*t.text_columns, "label", "idx"]
    labels = np.asarray(ds["label"])
    if t.is_regression:
        assert ds.features["label"].dtype == "float32"
        assert labels.min() >= 0.0 and labels.max() <= 5.0
    else:
        assert set(np.unique(labels)) <= set(range(t.num_labels))
        assert dict(collections.Counter(labels.tolist())) == counts
        assert ds.features["label"].names == list(t.label_list)
    assert list(ds["idx"]) == list(range(n))

    # Every text field equals the raw field of the same row, byte for byte.
    rows = _raw_rows(t.split_path(glue_dir, split), t.has_header)
    *text_cols, label_col = RAW_COLUMNS[task]
    for name, col in zip(t.text_columns, text_cols):
        assert list(ds[name]) == [r[col] for r in rows], name
    raw_labels = [r[label_col] for r in rows]
    if t.is_regression:
        np.testing.assert_array_equal(labels.astype(np.float32),
                                      np.asarray(raw_labels, np.float64).astype(np.float32))
    else:
        assert [t.label_list[i] for i in labels] == raw_labels


def test_quirks_survive_unchanged(glue_dir):
    """Quote-leading sentences, words like None, the MRPC BOM, U+FEFF inside QNLI,
    trailing/leading spaces and CoLA's missing header (all real rows)."""
    mrpc = data.load_glue("mrpc", glue_dir, "dev")
    # first data row: sentence 2 opens a quote that never closes
    assert mrpc[0]["sentence2"] == '"The foodservice pie business does not fit our long-term growth strategy.'
    assert mrpc[0]["label"] == 1  # BOM stripped: the header's "Quality" column was found

    rte = data.load_glue("rte", glue_dir, "dev")
    assert rte[23]["sentence2"] == '"The Osbournes" is the name of a reality show starring Ozzy Osbourne.'
    assert rte[137]["sentence1"].startswith('"It\'s Only a Play" is Terrence McNally\'s "Give My')
    rte_train = data.load_glue("rte", glue_dir, "train")
    assert rte_train[2164]["sentence1"].startswith(" ")  # the one leading space (README)

    qnli = data.load_glue("qnli", glue_dir, "dev")
    assert qnli[60]["question"] == "Where is the border of Swiss and Austria?"
    assert qnli[60]["sentence"].count("\ufeff") == 3     # kept, as in the file

    sst = data.load_glue("sst2", glue_dir, "train")
    assert sst[0]["sentence"] == "hide new secretions from the parental units "  # trailing space

    cola = data.load_glue("cola", glue_dir, "train")
    assert cola[0]["sentence"] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert cola[4178]["sentence"] == "None of these men wants to be president."
    sts = data.load_glue("stsb", glue_dir, "dev")
    assert sts[0]["label"] == 5.0 and sts[0]["sentence1"] == "A man with a hard hat is dancing."


def test_na_null_quotes_and_empty_sentences_from_fixture():
    """Values pandas would turn into missing values stay strings; empty allowed."""
    ds = data.load_glue("sst2", FIXTURES / "glue", "dev")
    assert list(ds["sentence"]) == ["NA", "null", "None", "nan", '" a quote that never closes',
                                    '"quoted" at the start ', "", "n/a"]
    assert list(ds["label"]) == [0, 1, 0, 1, 1, 0, 1, 0]


def test_mnli_and_qqp_layout_from_fixture():
    root = FIXTURES / "glue"
    train = data.load_glue("mnli", root, "train")          # 12 columns
    dev_m = data.load_glue("mnli", root, "dev_matched")    # 16 columns
    dev_mm = data.load_glue("mnli", root, "validation_mismatched")
    t = data.TASKS["mnli"]
    assert (len(train), len(dev_m), len(dev_mm)) == (5, 3, 2)
    assert train.column_names[:2] == ["premise", "hypothesis"]
    # gold_label (last column), in the DynaBERT processor order
    assert [t.label_list[i] for i in train["label"]] == [
        "neutral", "entailment", "contradiction", "entailment", "neutral"]
    assert t.label_list == ("contradiction", "entailment", "neutral")
    assert list(dev_m["label"]) == [2, 0, 1]
    assert train[4]["premise"] == "NA" and train[4]["hypothesis"] == "null"
    assert train[0]["hypothesis"] == "The cat was tired. "
    with pytest.raises(KeyError, match="dev_matched"):
        data.load_glue("mnli", root, "dev")

    qqp = data.load_glue("qqp", root, "train")
    assert qqp.column_names[:2] == ["question1", "question2"]
    assert list(qqp["label"]) == [1, 0, 1]
    assert qqp[2]["question2"] == '"What is two plus two?'


def test_wnli_layout_from_fixture(minilm_tokenizer):
    # the official WnliProcessor: sentence1, sentence2, label "1" = entailment
    ds = data.load_glue("wnli", FIXTURES / "glue", "train")
    assert ds.column_names[:2] == ["sentence1", "sentence2"]
    assert list(ds["label"]) == [1, 0] and ds[1]["sentence2"] == "Billy is so short."
    arrays = data.tokenize_dataset(ds, minilm_tokenizer, "wnli", 32)
    assert arrays["input_ids"].shape == (2, 32) and arrays["token_type_ids"].max() == 1
    assert metrics.glue("wnli", np.array([1, 1]), arrays["labels"]) == {"acc": 0.5}


def test_registry():
    assert set(data.TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte",
                               "wnli"}
    for name, t in data.TASKS.items():
        assert t.name == name
        assert t.num_labels == (1 if name == "stsb" else len(t.label_list))
        assert t.is_regression == (name == "stsb")
        assert len(t.text_columns) == (1 if name in ("cola", "sst2") else 2)
        # the metric functions and the registry agree on the primary metric
        assert metrics.GLUE_METRICS[name][0] == t.primary_metric
        assert set(t.eval_splits) <= set(t.split_files)
        assert all(f.endswith(".tsv") for f in t.split_files.values())
    assert data.TASKS["mnli"].num_labels == 3
    assert data.TASKS["mnli"].eval_splits == ("dev_matched", "dev_mismatched")
    assert data.TASKS["stsb"].label_list is None
    assert {t: data.TASKS[t].primary_metric for t in data.TASKS} == {
        "cola": "mcc", "sst2": "acc", "mrpc": "acc", "stsb": "pearson", "qqp": "acc",
        "mnli": "acc", "qnli": "acc", "rte": "acc", "wnli": "acc"}
    assert data.get_task("SST-2") is data.TASKS["sst2"]
    with pytest.raises(KeyError, match="unknown GLUE task"):
        data.get_task("wnli2")


# ---------------------------------------------------------------------------
# Bad input: the error names the file and the line


def _write(root, task_dir, split, text):
    p = root / task_dir / f"{split}.tsv"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def test_wrong_field_count_names_file_and_line(tmp_path):
    p = _write(tmp_path, "RTE", "dev",
               "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tentailment\n")
    with pytest.raises(data.DataFormatError) as e:
        data.load_glue("rte", tmp_path, "dev")
    assert f"{p}:3:" in str(e.value)
    assert "expected 4 tab-separated fields" in str(e.value) and "got 3" in str(e.value)


def test_cola_wrong_field_count(tmp_path):
    p = _write(tmp_path, "CoLA", "train", "gj04\t1\t\tFine.\ngj04\t1\tToo few.\n")
    with pytest.raises(data.DataFormatError, match=f"{p}:2: expected 4"):
        data.load_glue("cola", tmp_path, "train")


def test_label_outside_label_set(tmp_path):
    p = _write(tmp_path, "SST-2", "train", "sentence\tlabel\ngood\t1\nbad\t2\n")
    with pytest.raises(data.DataFormatError) as e:
        data.load_glue("sst2", tmp_path, "train")
    msg = str(e.value)
    assert f"{p}:3:" in msg and "'2'" in msg and "['0', '1']" in msg
    _write(tmp_path, "RTE", "train",
           "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentails\n")
    with pytest.raises(data.DataFormatError, match=r"RTE/train.tsv:2: label 'entails' is not in"):
        data.load_glue("rte", tmp_path, "train")
    _write(tmp_path, "STS-B", "dev", "\t".join(["index", "genre", "filename", "year", "old_index",
                                                "source1", "source2", "sentence1", "sentence2",
                                                "score"]) + "\n" + "\t".join(
        ["0", "g", "f", "y", "0", "n", "n", "a", "b", "high"]) + "\n")
    with pytest.raises(data.DataFormatError, match=r"STS-B/dev.tsv:2: label 'high' is not a number"):
        data.load_glue("stsb", tmp_path, "dev")


def test_missing_split_file_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_glue("rte", tmp_path, "dev")
    msg = str(e.value)
    assert str(tmp_path / "RTE" / "dev.tsv") in msg
    assert "<data_dir>/<TASK>/<split>.tsv" in msg
    with pytest.raises(FileNotFoundError, match="no such directory"):
        data.load_glue("rte", tmp_path / "nowhere", "dev")


def test_empty_and_header_only_files(tmp_path):
    p = _write(tmp_path, "SST-2", "dev", "")
    with pytest.raises(data.DataFormatError, match=f"{p}: file is empty"):
        data.load_glue("sst2", tmp_path, "dev")
    p = _write(tmp_path, "SST-2", "train", "sentence\tlabel\n")
    with pytest.raises(data.DataFormatError, match=f"{p}: no data rows"):
        data.load_glue("sst2", tmp_path, "train")


def test_header_without_expected_columns(tmp_path):
    p = _write(tmp_path, "SST-2", "dev", "text\tlabel\nok\t1\n")
    with pytest.raises(data.DataFormatError, match=f"{p}:1: header has no text column 'sentence'"):
        data.load_glue("sst2", tmp_path, "dev")


def test_crlf_and_empty_sentences(tmp_path):
    _write(tmp_path, "RTE", "dev", "index\tsentence1\tsentence2\tlabel\r\n"
                                   "0\t\t\tentailment\r\n1\tx\ty\rz\tnot_entailment\r\n")
    ds = data.load_glue("rte", tmp_path, "dev")
    assert ds[0]["sentence1"] == "" and ds[0]["sentence2"] == ""
    assert ds[1]["sentence2"] == "y\rz"        # a bare CR inside a field is not a line break
    assert list(ds["label"]) == [0, 1]


def test_augmented_file_reads_labels_or_teacher_logits(glue_dir, tmp_path):
    """load_glue_augmented: the task's train.tsv layout; a label column with the task's
    labels (TinyBERT's train_aug.tsv) or the teacher's logits (the official
    *_aug_with_logits.tsv), whose class is the numeric argmax, not the official reader's
    argmax over strings ("-0.5" > "-3.25" > "0.75" as strings)."""
    head = "index\tsentence1\tsentence2\tlabel\n"
    p = tmp_path / "train_aug.tsv"
    p.write_text(head + "0\ta\tb\tnot_entailment\n1\ta b\tc\t-3.25 -0.5\n"
                 "2\tx\ty\t0.75 -0.5\n3\tx\ty\t1e1 1e1\n", encoding="utf-8")
    ds = data.load_glue_augmented("rte", p)
    assert list(ds["label"]) == [1, 1, 0, 0]       # ties: the first maximum
    assert list(ds["sentence1"]) == ["a", "a b", "x", "x"]
    assert ds.features == data.load_glue("rte", glue_dir, "dev").features
    # a file cut from the real training set reads as that set does
    real = glue_dir / "SST-2" / "train.tsv"
    q = tmp_path / "sst2_aug.tsv"
    q.write_text("".join(real.read_text(encoding="utf-8").splitlines(keepends=True)[:50]),
                 encoding="utf-8")
    aug, full = data.load_glue_augmented("sst2", q), data.load_glue("sst2", glue_dir, "train")
    assert aug["sentence"] == full["sentence"][:49] and aug["label"] == full["label"][:49]
    # STS-B: the one number is the value, with no range check (a teacher may say 5.3)
    cols = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
            "sentence1", "sentence2", "score"]
    r = tmp_path / "stsb_aug.tsv"
    r.write_text("\t".join(cols) + "\n" + "\t".join(["0", "g", "f", "y", "0", "n", "n",
                                                      "a", "b", "5.3"]) + "\n", encoding="utf-8")
    assert data.load_glue_augmented("stsb", r)["label"] == [pytest.approx(5.3)]


@pytest.mark.parametrize("label", ["0.1", "0.1 0.2 0.3", "0.1 nan", "yes no", "entails"])
def test_augmented_file_bad_label_names_file_and_line(tmp_path, label):
    p = tmp_path / "train_aug.tsv"
    p.write_text(f"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
                 f"1\ta\tb\t{label}\n", encoding="utf-8")
    with pytest.raises(data.DataFormatError, match=f"{p}:3: label .* is neither one of the "
                       r"labels \['entailment', 'not_entailment'\] of task rte nor 2"):
        data.load_glue_augmented("rte", p)
    with pytest.raises(FileNotFoundError, match="augmented rte training file not found"):
        data.load_glue_augmented("rte", tmp_path / "missing.tsv")
    # the training set itself still takes only its labels
    _write(tmp_path, "RTE", "train", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\t0.1 0.2\n")
    with pytest.raises(data.DataFormatError, match="is not in the label set"):
        data.load_glue("rte", tmp_path, "train")


def test_from_hub_dataset_maps_labels_by_name():
    import datasets

    hub = datasets.Dataset.from_dict(
        {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [0, 1, 2],
         "idx": [0, 1, 2]},
        features=datasets.Features({
            "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": datasets.Value("int32")}))
    ds = data.from_hub_dataset("mnli", hub)
    names = data.TASKS["mnli"].label_list
    assert [names[i] for i in ds["label"]] == ["entailment", "neutral", "contradiction"]
    assert ds.column_names == ["premise", "hypothesis", "label", "idx"]


# ---------------------------------------------------------------------------
# The user's own files


def test_load_custom_tsv_csv_jsonl(tmp_path):
    tsv = tmp_path / "mine.tsv"
    tsv.write_text('text\tlabel\n"NA\tpos\nnull\tneg\n\tpos\n', encoding="utf-8")
    ds = data.load_custom(tsv, text_columns="text", label_column="label", label_list=["neg", "pos"])
    assert list(ds["text"]) == ['"NA', "null", ""]
    assert list(ds["label"]) == [1, 0, 1]
    assert ds.features["label"].names == ["neg", "pos"]

    csv_path = tmp_path / "mine.csv"
    csv_path.write_text('a,b,y\n"x, with comma","second\nline",0.5\nNA,null,2\n', encoding="utf-8")
    ds = data.load_custom(csv_path, text_columns=("a", "b"), label_column="y", is_regression=True)
    assert list(ds["a"]) == ["x, with comma", "NA"]
    assert list(ds["b"]) == ["second\nline", "null"]
    np.testing.assert_allclose(ds["label"], [0.5, 2.0])

    jl = tmp_path / "mine.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"q": "a?", "p": "b", "lab": "yes"}, {"q": "c?", "p": "", "lab": "no"}]) + "\n")
    ds = data.load_custom(jl, text_columns=["q", "p"], label_column="lab")
    assert ds.features["label"].names == ["no", "yes"]      # inferred, sorted
    assert list(ds["label"]) == [1, 0]

    headerless = tmp_path / "nohead.tsv"
    headerless.write_text("hello\t1\nbye\t0\n")
    ds = data.load_custom(headerless, ["s"], "y", label_list=["0", "1"], column_names=["s", "y"])
    assert list(ds["label"]) == [1, 0]


def test_load_custom_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("text\tlabel\nok\tpos\ntoo\tmany\tfields\n")
    with pytest.raises(data.DataFormatError, match=f"{p}:3: expected 2 fields"):
        data.load_custom(p, ["text"], "label")
    p.write_text("text\tlabel\nok\tpos\nbad\tmaybe\n")
    with pytest.raises(data.DataFormatError, match=f"{p}:3: label 'maybe' is not in"):
        data.load_custom(p, ["text"], "label", label_list=["neg", "pos"])
    p.write_text("")
    with pytest.raises(data.DataFormatError, match="file is empty"):
        data.load_custom(p, ["text"], "label")
    c = tmp_path / "bad.csv"
    c.write_text('text,label\n"multi\nline",1\nshort\n')
    with pytest.raises(data.DataFormatError, match=f"{c}:4: expected 2 fields"):
        data.load_custom(c, ["text"], "label")
    j = tmp_path / "bad.jsonl"
    j.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(data.DataFormatError, match=f"{j}:2: no column 'label'"):
        data.load_custom(j, ["text"], "label")
    with pytest.raises(FileNotFoundError):
        data.load_custom(tmp_path / "nope.tsv", ["text"], "label")
