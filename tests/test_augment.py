"""TinyBERT's data augmentation (dynabert_jax.augment) against a one-word-at-a-time port
of TinyBERT's `DataAugmentor`, on a tiny random BertForMaskedLM with the real MiniLM
WordPiece tokenizer and a small GloVe file; then the file writer on real GLUE rows."""
import json
import random
import numpy as np
import pytest

from conftest import save_tiny_bert
from dynabert_jax import augment, checkpoint
from dynabert_jax.data.glue import DataFormatError, load_glue_augmented, read_glue_tsv

# Real training sentences (RTE, SST-2, CoLA): capitals, punctuation, numbers, stop words,
# an accent, words of several pieces ("unflinchingly", "unbelievably", "pyjamas").
SENTENCES = [
    "No Weapons of Mass Destruction Found in Iraq Yet.",
    "A place of sorrow, after Pope John Paul II died, became a place of celebration, as "
    "Roman Catholic faithful gathered in downtown Chicago to mark the installation of new "
    "Pope Benedict XVI.",
    "it 's a charming and often affecting journey . ",
    "unflinchingly bleak and desperate ",
    "Our friends won't buy this analysis, let alone the next one we propose.",
    "What unbelievably crôwded pyjamas, 1999 ## ok",
    "He said [MASK] was good and [UNK] cheerful",   # special tokens: one word each
    "",
    "   ",
]


@pytest.fixture(scope="module")
def tiny_mlm_dir(tmp_path_factory, minilm_path):
    import transformers

    return save_tiny_bert(tmp_path_factory.mktemp("tiny_mlm"), minilm_path,
                          transformers.BertForMaskedLM, num_hidden_layers=2,
                          max_position_embeddings=512)


GLOVE_WORDS = ["the", "sorrow", "grief", "sadness", "installation", "setup", "ceremony",
               "unflinchingly", "bravely", "pyjamas", "pajamas", "clothes", "destruction",
               "ruin", "celebration", "party", "<unk>", "unbelievably", "incredibly"]


@pytest.fixture(scope="module")
def glove_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("glove") / "glove.txt"
    lines = []
    for w in GLOVE_WORDS:
        v = rng.normal(size=8)
        lines.append(w + " " + " ".join(f"{x:.5f}" for x in v))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def mlm(tiny_mlm_dir):
    return augment.MaskedLM(tiny_mlm_dir, batch_size=16)


# --- a literal port of TinyBERT's DataAugmentor (one forward per word) ------------------


class TinyBertReference:
    def __init__(self, mlm_dir, glove_path, m):
        import torch
        import transformers

        self.torch = torch
        # the slow Python tokenizer TinyBERT's BertTokenizer descends from (transformers 4
        # calls it BertTokenizer)
        slow = getattr(transformers, "BertTokenizerLegacy", transformers.BertTokenizer)
        self.tok = slow(str(mlm_dir / "vocab.txt"))
        self.model = transformers.BertForMaskedLM.from_pretrained(str(mlm_dir)).eval()
        self.m = m
        words = [line.split()[0] for line in open(glove_path)]
        emb = np.array([[float(x) for x in line.split()[1:]] for line in open(glove_path)])
        emb[words.index("<unk>")] = 0
        with np.errstate(invalid="ignore", divide="ignore"):
            self.emb = (emb.T / np.sqrt((emb ** 2).sum(1))).T
        self.vocab = {w: i for i, w in enumerate(words)}
        self.words = words

    def word_distance(self, word):
        if word not in self.vocab:
            return []
        dist = self.emb @ self.emb[self.vocab[word]]
        dist[self.vocab[word]] = -np.inf
        dist[np.isnan(dist)] = -np.inf   # <unk>'s 0/0 row: never a neighbour
        found = [self.words[i] for i in np.argsort(-dist, kind="stable")[:self.m]]
        return [w.title() for w in found] if word.istitle() else found

    def masked_lm(self, sent, pieces, mask_id):
        if mask_id >= 512:
            return []
        text = ["[CLS]"] + self.tok.tokenize(sent)
        n = len(text)
        text = pieces + ["[SEP]"] + text[1:] + ["[SEP]"]
        if len(text) > 512:
            text = text[:512]
            n = min(n, 511)
        ids = self.tok.convert_tokens_to_ids(text)
        seg = [0] * (n + 1) + [1] * (len(text) - n - 1)
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([ids]),
                                token_type_ids=self.torch.tensor([seg])).logits
        top = self.torch.argsort(logits[0, mask_id], descending=True)[:self.m].tolist()
        return [t for t in self.tok.convert_ids_to_tokens(top) if t.find("##")]

    def word_augment(self, sent, word_idx, word):
        pieces = ["[CLS]"] + self.tok.tokenize(sent)
        k = -1
        for i in range(1, len(pieces)):
            if "##" not in pieces[i]:
                k += 1
                if k < word_idx:
                    ids = []
                elif k == word_idx:
                    ids = [i]
                else:
                    break
            else:
                ids.append(i)
        if len(ids) == 1:
            pieces[ids[0]] = "[MASK]"
            found = self.masked_lm(sent, pieces, ids[0])
        else:
            found = self.word_distance(word)
        return found or [word]

    def candidates(self, sent):
        words = self.tok.basic_tokenizer.tokenize(sent, never_split=self.tok.all_special_tokens)
        return words, {i: self.word_augment(sent, i, w) for i, w in enumerate(words)
                       if augment.is_replaceable(w)}

    def augment(self, sent, n, p, seed):   # TinyBERT's loop, on the global random state
        words, cands = self.candidates(sent)
        random.seed(seed)
        out = [sent]
        for _ in range(n):
            new = list(words)
            for idx in cands:
                c = random.choice(cands[idx])
                if random.random() < p:
                    new[idx] = c
            if " ".join(new) not in out:
                out.append(" ".join(new))
        return out


def test_candidates_match_tinybert_one_word_at_a_time(tiny_mlm_dir, glove_file, mlm):
    glove = augment.GloveNeighbours(glove_file)
    aug = augment.Augmentor(mlm, glove, m=5, n=10, p=0.4)
    ref = TinyBertReference(tiny_mlm_dir, glove_file, m=5)
    # 302 pieces: the second copy is cut at 512; 602: masks past 512 are not asked
    mid = " ".join(["gathered"] * 300) + " downtown Chicago"
    long = " ".join(["gathered"] * 600) + " downtown Chicago"
    got = aug.word_candidates(SENTENCES + [mid, long])   # padded batches for all of them
    sources = {"mlm": 0, "glove": 0, "kept": 0}
    for sent, wc in zip(SENTENCES + [mid, long], got):
        words, cands = ref.candidates(sent)
        assert wc.words == words, sent
        assert wc.candidates == cands, sent
        for s in wc.sources.values():
            sources[s] += 1
    # every path was taken: masked LM, GloVe, and the word kept (past 512, not in GloVe)
    assert min(sources.values()) > 0, sources
    assert got[-1].candidates[len(got[-1].words) - 1] == ["chicago"]   # masked at >= 512
    assert got[3].sources[0] == "glove" and len(got[3].candidates[0]) == 5   # unflinchingly
    assert "unflinchingly" not in got[3].candidates[0]
    assert got[1].sources[got[1].words.index("sorrow")] == "mlm"
    special = got[SENTENCES.index("He said [MASK] was good and [UNK] cheerful")]
    assert special.words == ["he", "said", "[MASK]", "was", "good", "and", "[UNK]",
                             "cheerful"]
    assert sorted(special.candidates) == [1, 4, 7]   # said, good, cheerful ("was": stop)
    assert got[SENTENCES.index("")].words == [] and got[SENTENCES.index("")].candidates == {}


def test_variants_follow_tinybert_draw_for_draw(tiny_mlm_dir, glove_file, mlm):
    aug = augment.Augmentor(mlm, augment.GloveNeighbours(glove_file), m=5, n=12, p=0.4)
    ref = TinyBertReference(tiny_mlm_dir, glove_file, m=5)
    for seed, sent in enumerate(SENTENCES):
        (wc,) = aug.word_candidates([sent])
        rng = random.Random()
        rng.seed(seed)
        got = aug.variants(wc, rng)
        assert got == ref.augment(sent, n=12, p=0.4, seed=seed)
        assert got[0] == sent and len(set(got)) == len(got) <= 13
        for v in got[1:]:
            new = v.split(" ") if v else []
            assert len(new) == len(wc.words)
            for i, (a, b) in enumerate(zip(new, wc.words)):
                assert a == b or a in wc.candidates[i]


def test_sample_variants_edge_cases():
    words = ["a", "good", "film"]
    cands = {1: ["great", "bad"], 2: ["movie"]}
    rng = random.Random(0)
    # p = 0: only the basic-tokenized copy (it differs from the raw sentence)
    assert augment.sample_variants("A good film", words, cands, 5, 0.0, rng) == \
        ["A good film", "a good film"]
    # p = 1: every replaceable word replaced every time
    out = augment.sample_variants("a good film", words, cands, 20, 1.0, rng)
    assert sorted(out[1:]) == ["a bad movie", "a great movie"] and out[0] == "a good film"
    assert augment.sample_variants("a good film", words, cands, 0, 0.4, rng) == ["a good film"]
    assert augment.sample_variants("x", ["x"], {}, 5, 0.4, rng) == ["x"]


def test_replaceable_words_and_stop_words():
    assert augment.is_replaceable("charming") and augment.is_replaceable("Chicago")
    assert augment.is_replaceable("what")   # TinyBERT's list keeps the question words
    for w in ("the", "The", "won't", "'s", "1999", "crôwded", "u.s", "."):
        assert not augment.is_replaceable(w), w
    assert len(augment.STOP_WORDS) == 173


def _aug(mlm, glove_file, n=4):
    return augment.Augmentor(mlm, augment.GloveNeighbours(glove_file), m=5, n=n, p=0.4)


@pytest.mark.parametrize("pairing", ["tinybert", "original"])
def test_pair_task_file_reads_back_and_pairs_as_asked(tmp_path, glue_dir, mlm, glove_file,
                                                      pairing):
    src = glue_dir / "RTE" / "train.tsv"
    out = tmp_path / "train_aug.tsv"
    aug = _aug(mlm, glove_file)
    stats = augment.augment_file("rte", src, out, aug, pairing=pairing, limit=5,
                                 chunk_rows=2, progress=False, seed=1)
    header, *rows = out.read_text(encoding="utf-8").split("\n")[:-1]
    src_header, *src_rows = src.read_text(encoding="utf-8").split("\n")[:6]
    assert header == src_header
    # each row: its sentence1 variants beside sentence2, then its sentence2 variants
    # beside sentence1 (TinyBERT: beside the last sentence1 variant), label copied
    expected = []
    for r, line in enumerate(src_rows):
        fields = line.split("\t")
        row = list(fields)
        for j, col in enumerate((1, 2)):
            (wc,) = aug.word_candidates([fields[col]])
            variants = aug.variants(wc, augment._row_rng(1, r, j))
            assert variants[0] == fields[col] and len(variants) > 1
            for v in variants:
                row[col] = v
                expected.append("\t".join(row))
            if pairing == "original":
                row[col] = fields[col]
    assert rows == expected and stats["sentences"] == len(rows)
    originals = [line.split("\t") for line in src_rows]
    both_changed = [r for r in rows if (r.split("\t")[1], r.split("\t")[2]) not in
                    {(o[1], o[2]) for o in originals}
                    and r.split("\t")[1] not in {o[1] for o in originals}
                    and r.split("\t")[2] not in {o[2] for o in originals}]
    assert bool(both_changed) == (pairing == "tinybert")
    ds = load_glue_augmented("rte", out)
    assert ds.num_rows == len(rows)
    assert set(read_glue_tsv(out, "rte")["label"]) <= set(read_glue_tsv(src, "rte")["label"])


def test_cola_without_header(tmp_path, glue_dir, mlm, glove_file):
    src = glue_dir / "CoLA" / "train.tsv"
    out = tmp_path / "cola_aug.tsv"
    aug = _aug(mlm, glove_file, n=3)
    stats = augment.augment_file("cola", src, out, aug, limit=4, progress=False)
    src_rows = [line.split("\t") for line in src.read_text().splitlines()[:4]]
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert stats["sentences"] == len(rows) and len(rows) > 4   # no header, variants made
    groups = []
    for row in rows:   # a new group starts at each original, in order
        if len(groups) < 4 and row[3] == src_rows[len(groups)][3]:
            groups.append([])
        groups[-1].append(row)
    assert len(groups) == 4
    for fields, group in zip(src_rows, groups):
        assert all(r[:3] == fields[:3] for r in group)      # source, label, mark copied
        assert len({r[3] for r in group}) == len(group) <= 4
    assert read_glue_tsv(out, "cola")["label"] == [int(r[1]) for r in rows]


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path, glue_dir, mlm, glove_file,
                                                   monkeypatch):
    src = glue_dir / "SST-2" / "train.tsv"
    whole = tmp_path / "whole.tsv"
    augment.augment_file("sst2", src, whole, _aug(mlm, glove_file), limit=7, chunk_rows=2,
                         progress=False, seed=3)
    out = tmp_path / "resumed.tsv"
    write_state = checkpoint.write_json_atomic
    calls = []

    def interrupted(path, obj):   # killed right after the second chunk's record
        write_state(path, obj)
        calls.append(obj["rows_done"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_json_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        augment.augment_file("sst2", src, out, _aug(mlm, glove_file), limit=7, chunk_rows=2,
                             progress=False, seed=3)
    monkeypatch.setattr(checkpoint, "write_json_atomic", write_state)
    state = json.loads((tmp_path / "resumed.tsv.partial.json").read_text())
    assert state["rows_done"] == 4 and not out.exists()
    # a torn write after the last recorded chunk is cut off on resume
    with open(tmp_path / "resumed.tsv.partial", "ab") as f:
        f.write(b"half a line")
    # other settings: refused, the partial file kept
    with pytest.raises(augment.AugmentError, match="seed differ"):
        augment.augment_file("sst2", src, out, _aug(mlm, glove_file), limit=7, chunk_rows=2,
                             progress=False, seed=4)
    with pytest.raises(augment.AugmentError, match="n differ"):
        augment.augment_file("sst2", src, out, _aug(mlm, glove_file, n=5), limit=7,
                             chunk_rows=2, progress=False, seed=3)
    partial = tmp_path / "resumed.tsv.partial"
    kept = partial.read_bytes()
    partial.write_bytes(kept[:state["bytes"] - 10])   # cut short: refused, not padded
    with pytest.raises(augment.AugmentError, match="fewer than"):
        augment.augment_file("sst2", src, out, _aug(mlm, glove_file), limit=7, chunk_rows=2,
                             progress=False, seed=3)
    partial.write_bytes(kept)
    augment.augment_file("sst2", src, out, _aug(mlm, glove_file), limit=7, chunk_rows=2,
                         progress=False, seed=3)
    assert out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "resumed.tsv.partial").exists()
    assert not (tmp_path / "resumed.tsv.partial.json").exists()
    with pytest.raises(augment.AugmentError, match="exists"):   # never overwritten
        augment.augment_file("sst2", src, out, _aug(mlm, glove_file), limit=7,
                             progress=False)
    # another seed gives other variants
    other = tmp_path / "other.tsv"
    augment.augment_file("sst2", src, other, _aug(mlm, glove_file), limit=7, progress=False,
                         seed=4)
    assert other.read_bytes() != whole.read_bytes()


def test_clear_errors(tmp_path, tiny_bert_dir, tiny_mlm_dir, glove_file, glue_dir, mlm):
    with pytest.raises(augment.AugmentError, match="no masked-LM head"):
        augment.MaskedLM(tiny_bert_dir)     # a BertModel checkpoint: no cls.predictions
    with pytest.raises(augment.AugmentError, match="no config.json"):
        augment.MaskedLM(tmp_path)
    with pytest.raises(augment.AugmentError, match="not found"):
        augment.GloveNeighbours(tmp_path / "missing.txt")
    bad = tmp_path / "bad_glove.txt"
    bad.write_text("the 0.1 0.2 0.3\nfilm 0.1 x 0.3\n")
    with pytest.raises(augment.AugmentError, match=r"bad_glove.txt:2: .*not all numbers"):
        augment.GloveNeighbours(bad)
    bad.write_text("the 0.1 0.2 0.3\nfilm 0.1\n")
    with pytest.raises(augment.AugmentError, match=r"bad_glove.txt:2: 1 numbers"):
        augment.GloveNeighbours(bad)
    with pytest.raises(augment.AugmentError, match="need m >= 1"):
        augment.Augmentor(mlm, None, m=0)
    rows = tmp_path / "train.tsv"
    rows.write_text("index\tsentence1\tsentence2\tlabel\n0\tonly two\tfields\n")
    with pytest.raises(DataFormatError, match=r"train.tsv:2: expected 4 tab-separated"):
        augment.augment_file("rte", rows, tmp_path / "o.tsv", _aug(mlm, glove_file),
                             progress=False)
    with pytest.raises(augment.AugmentError, match="limit must be >= 1"):
        augment.augment_file("rte", glue_dir / "RTE" / "train.tsv", tmp_path / "o.tsv",
                             _aug(mlm, glove_file), limit=0, progress=False)
    with pytest.raises(augment.AugmentError, match="batch_size must be >= 1"):
        augment.MaskedLM(tiny_mlm_dir, batch_size=0)
    bad.write_bytes(b"the 0.1 0.2\n\xff 0.1 0.2\n")
    with pytest.raises(augment.AugmentError, match=r"bad_glove.txt:2: not valid UTF-8"):
        augment.GloveNeighbours(bad)
    with pytest.raises(augment.AugmentError, match="pairing"):
        augment.augment_file("rte", glue_dir / "RTE" / "train.tsv", tmp_path / "o.tsv",
                             _aug(mlm, glove_file), pairing="both", progress=False)


def test_glove_neighbours(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("film 1 0 0\nmovie 0.9 0.1 0\ncinema 0.7 0.7 0\n<unk> 1 0 0\n"
                    "new york 0 0 1\nstate 0.1 0 1\n")
    g = augment.GloveNeighbours(path)
    assert len(g) == 6
    assert g("film", 3) == ["movie", "cinema", "state"]      # <unk> zeroed, never returned
    assert g("Film", 2) == []                                 # case-sensitive lookup
    assert g("state", 1) == ["new york"]                      # a word with a space
    assert augment.GloveNeighbours(path, vocab_size=2)("film", 5) == ["movie"]
    path.write_text("3 2\nfilm 1 0 \nmovie 0.9 0.1\ncinema 0 1\n")   # word2vec header
    assert augment.GloveNeighbours(path)("film", 5) == ["movie", "cinema"]
    path.write_text("Paris 1 0\nLyon 0.9 0.1\n")
    assert augment.GloveNeighbours(path)("Paris", 1) == ["Lyon"]   # title case kept


def test_cli(tmp_path, tiny_mlm_dir, glove_file, glue_dir, capsys):
    out = tmp_path / "mrpc_aug.tsv"
    rc = augment.main(["--task", "mrpc", "--train", str(glue_dir / "MRPC" / "train.tsv"),
                       "--out", str(out), "--mlm", str(tiny_mlm_dir), "--glove",
                       str(glove_file), "--limit", "3", "--n", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    n = len(read_glue_tsv(out, "mrpc")["label"])
    assert f"{n:,} rows from 3" in printed and "N=2, M=15" in printed
    assert 3 * 2 < n <= 3 * 2 * 3
    rc = augment.main(["--task", "mrpc", "--train", str(glue_dir / "MRPC" / "train.tsv"),
                       "--out", str(tmp_path / "default_n.tsv"), "--mlm", str(tiny_mlm_dir),
                       "--limit", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "N=30, M=15, p=0.4" in printed   # TinyBERT's N for MRPC
    assert "no --glove" in printed
    rc = augment.main(["--task", "nope", "--train", "x", "--out", str(tmp_path / "y"),
                       "--mlm", str(tiny_mlm_dir)])
    assert rc == 2 and "unknown GLUE task" in capsys.readouterr().out
