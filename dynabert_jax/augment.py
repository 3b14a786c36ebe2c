"""TinyBERT's data augmentation: the augmented GLUE training sets DynaBERT trains on.

    python -m dynabert_jax.augment --task rte --train ../shared/data/glue/RTE/train.tsv \\
        --mlm path/to/bert-base-uncased --glove path/to/glove.42B.300d.txt \\
        --out data/RTE/train_aug.tsv

then train with ``--config.data.augmented_train=data/RTE/train_aug.tsv`` (DynaBERT_W and
DynaBERT read it after the training set; docs/training.md).

DynaBERT's GLUE results use the augmented sets of TinyBERT's ``data_augmentation.py``
(spec section 4.5). This module does what that script does, word for word:

* A sentence is split into words by BERT's basic tokenizer (for an uncased model:
  lower-cased, accents stripped, punctuation split off). A word is replaceable when it
  is letters a-z only and not in TinyBERT's stop-word list (`STOP_WORDS`).
* A replaceable word that is one WordPiece gets the masked LM's `m` most likely tokens at
  its position, not counting ``##`` pieces. The LM reads the sentence with that piece
  masked, then ``[SEP]``, then the sentence unmasked (segment 1), cut at 512 tokens.
* A word of several pieces gets its `m` nearest GloVe words by cosine similarity,
  itself excluded, read from the first 100,000 lines of the GloVe file (title-cased when
  the word is). No candidates (not in GloVe, masked piece past 512) means the word stays.
* `n` times: each replaceable word, in order, draws a candidate and takes it with
  probability `p`; the words joined by spaces become a variant unless it is already there.
  The original sentence comes first, so a field gives 1 to ``n + 1`` sentences.
* Each data row is written once per variant of each text field, in the file's own layout
  (header kept, label copied), so `load_glue` and `load_glue_augmented` read the result.
  ``n`` defaults to TinyBERT's per task (`DEFAULT_N`), ``m = 15``, ``p = 0.4``.

Where this differs, on purpose:

* **Pairs.** TinyBERT's loop rewrites the row in place, so the second field's variants are
  written beside the *last* variant of the first field. ``pairing="tinybert"`` (the
  default) does the same; ``pairing="original"`` pairs them with the original first field.
* **Quoting.** TinyBERT's ``csv.writer`` quotes a field holding ``"``, and the GLUE readers
  (the official ones and ours) read such quotes as text; fields are written unquoted here.
* **Random numbers.** Each (row, field) draws from its own ``random.Random`` seeded by
  ``(seed, row, field)``, so a run is reproducible and a resumed run writes the same bytes.
* **Speed.** The masked-LM queries of many sentences are padded into one batch (TinyBERT
  runs one forward per word), and the vocabulary head runs at the masked position only.
  Candidates equal the one-at-a-time ones up to float ties (tested).
* **No GloVe.** ``glove=None`` leaves words of several pieces unchanged (TinyBERT requires
  the file).
* **Case.** TinyBERT's tokenizer lower-cases whatever the model (so its title-casing of
  GloVe words never fires); here the tokenizer's own config decides, so a cased model
  keeps case and a capitalised word's GloVe neighbours are title-cased.
* **Smaller things.** ``--n`` is honoured (TinyBERT's per-task table overrides it); lines
  end in LF (TinyBERT's ``csv.writer``: CRLF); the input is split at line feeds only
  and a malformed row stops the run with its line number, as `read_glue_tsv`; GloVe
  vectors are float32 and ties sort stably (neighbours may differ at near-ties); a GloVe
  word with spaces is read (TinyBERT's parser fails on it), one with a tab is never
  proposed; a word the tokenizer gives no piece is kept (TinyBERT fails); the masked LM
  is cut at ``min(512, max_position_embeddings)``.

Kept from TinyBERT, for the record: a pair row's output holds one exact repeat (the
last first-field line is also the first second-field line; with ``pairing="original"``,
the original pair); masked-LM candidates are not filtered beyond ``##`` (``[UNK]``,
punctuation and ``[unused]`` tokens can be drawn); a sentence with no replaceable word
still yields its basic-tokenized copy when that differs (a field of spaces yields ``""``).

Writing is resumable: rows go to ``<out>.partial``, and after every chunk of rows
``<out>.partial.json`` records how many rows and bytes are safely on disk. Rerun the same
command after an interruption and it continues from there; the finished file is renamed
into place at the end, and an existing ``<out>`` is never overwritten.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dynabert_jax.data.glue import DataFormatError, file_sha256, read_tsv_rows
from dynabert_jax.data.tasks import GlueTask, get_task

# TinyBERT's list, verbatim: NLTK's English stop words without the question words
# (what, which, who, whom, when, where, why, how), plus "'s" and "'re".
STOP_WORDS = frozenset([
    'i', 'me', 'my', 'myself', 'we', 'our', 'ours', 'ourselves', 'you', "you're", "you've",
    "you'll", "you'd", 'your', 'yours', 'yourself', 'yourselves', 'he', 'him', 'his',
    'himself', 'she', "she's", 'her', 'hers', 'herself', 'it', "it's", 'its', 'itself',
    'they', 'them', 'their', 'theirs', 'themselves', 'this',
    'that', "that'll", 'these', 'those', 'am', 'is', 'are', 'was', 'were', 'be', 'been',
    'being', 'have', 'has', 'had', 'having', 'do', 'does', 'did', 'doing', 'a', 'an', 'the',
    'and', 'but', 'if', 'or', 'because', 'as', 'until', 'while', 'of', 'at', 'by', 'for',
    'with', 'about', 'against', 'between', 'into', 'through', 'during', 'before', 'after',
    'above', 'below', 'to', 'from', 'up', 'down', 'in', 'out', 'on', 'off', 'over', 'under',
    'again', 'further', 'then', 'once', 'here', 'there', 'all',
    'any', 'both', 'each', 'few', 'more', 'most', 'other', 'some', 'such', 'no', 'nor',
    'not', 'only', 'own', 'same', 'so', 'than', 'too', 'very', 's', 't', 'can', 'will',
    'just', 'don', "don't", 'should', "should've", 'now', 'd', 'll', 'm', 'o', 're', 've',
    'y', 'ain', 'aren', "aren't", 'couldn', "couldn't", 'didn', "didn't", 'doesn',
    "doesn't", 'hadn', "hadn't", 'hasn', "hasn't", 'haven', "haven't", 'isn', "isn't", 'ma',
    'mightn', "mightn't", 'mustn', "mustn't", 'needn', "needn't", 'shan', "shan't",
    'shouldn', "shouldn't", 'wasn', "wasn't", 'weren', "weren't", 'won', "won't", 'wouldn',
    "wouldn't", "'s", "'re"])

# TinyBERT's N per task (its README and data_augmentation.py); M and p are shared.
DEFAULT_N = {"cola": 30, "mrpc": 30, "stsb": 30, "rte": 30, "sst2": 20, "qnli": 20,
             "mnli": 10, "qqp": 10}
DEFAULT_M = 15
DEFAULT_P = 0.4
GLOVE_VOCAB = 100_000
PAIRINGS = ("tinybert", "original")
_NOT_A_Z = re.compile("[^a-z]")


def is_replaceable(word: str) -> bool:
    """TinyBERT's test: letters a-z only (case-insensitive) and not a stop word."""
    return not _NOT_A_Z.search(word.lower()) and word.lower() not in STOP_WORDS


class AugmentError(ValueError):
    """Input the augmenter cannot use (message says which file and why)."""


# ---------------------------------------------------------------------------------------
# GloVe neighbours (words of several pieces)


class GloveNeighbours:
    """The `m` nearest words by cosine similarity among the first `vocab_size` GloVe words.

    Reads the text format (``word v1 ... vd`` per line; a word2vec ``count dim`` first
    line is skipped). A line with more than ``d + 1`` fields holds a word with spaces
    (glove.840B has a few): its last ``d`` fields are the vector. All-zero vectors
    (``<unk>``, which TinyBERT zeroes) are never neighbours.
    """

    def __init__(self, path, vocab_size: int = GLOVE_VOCAB):
        path = pathlib.Path(path)
        if not path.is_file():
            raise AugmentError(f"{path}: GloVe file not found")
        if vocab_size < 1:
            raise AugmentError(f"vocab_size must be >= 1, got {vocab_size}")
        words: List[str] = []
        rows: List[np.ndarray] = []
        dim = None
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if len(words) == vocab_size:
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise AugmentError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
                items = line.rstrip("\r\n ").split(" ")
                if lineno == 1 and len(items) == 2 and all(x.isdigit() for x in items):
                    continue   # word2vec's text header "<count> <dim>"
                if dim is None:
                    dim = len(items) - 1
                    if dim < 1:
                        raise AugmentError(f"{path}:{lineno}: expected 'word v1 ... vd'")
                if len(items) < dim + 1:
                    raise AugmentError(f"{path}:{lineno}: {len(items) - 1} numbers, the "
                                       f"first line has {dim}")
                try:
                    vec = np.asarray(items[-dim:], dtype=np.float32)
                except ValueError:
                    raise AugmentError(f"{path}:{lineno}: the last {dim} fields are not "
                                       f"all numbers") from None
                word = " ".join(items[:-dim])
                words.append(word)
                # <unk> is zeroed as TinyBERT does; a word with a tab or line break would
                # break the TSV it is written to: never a neighbour either
                unusable = word == "<unk>" or any(c in word for c in "\t\r\n")
                rows.append(np.zeros(dim, np.float32) if unusable else vec)
        if not words:
            raise AugmentError(f"{path}: file is empty")
        emb = np.stack(rows)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        self._zero = norm[:, 0] == 0
        self._emb = emb / np.where(norm == 0, 1, norm)
        self._index = {w: i for i, w in enumerate(words)}
        self._words = words
        self._cache: Dict[Tuple[str, int], List[str]] = {}

    def __len__(self) -> int:
        return len(self._words)

    def __call__(self, word: str, m: int) -> List[str]:
        key = (word, m)
        if key not in self._cache:
            i = self._index.get(word)
            if i is None or self._zero[i]:
                found: List[str] = []
            else:
                sim = self._emb @ self._emb[i]
                sim[i] = -np.inf
                sim[self._zero] = -np.inf
                top = np.argsort(-sim, kind="stable")[:m]
                found = [self._words[j] for j in top if np.isfinite(sim[j])]
                if word.istitle():   # TinyBERT: keep the case of a capitalised word
                    found = [w.title() for w in found]
            self._cache[key] = found
        return list(self._cache[key])


# ---------------------------------------------------------------------------------------
# Masked-LM candidates (one-piece words)


class MaskedLM:
    """A Hugging Face PyTorch ``BertForMaskedLM`` and its WordPiece tokenizer, batched.

    Args:
      path: checkpoint folder with the masked-LM head (``cls.predictions``) and tokenizer.
      device: torch device for the forward passes.
      batch_size: masked-LM queries per forward.
    """

    def __init__(self, path, device: str = "cpu", batch_size: int = 16):
        import torch
        import transformers

        path = pathlib.Path(path)
        if int(batch_size) < 1:
            raise AugmentError(f"batch_size must be >= 1, got {batch_size}")
        if not (path / "config.json").is_file():
            raise AugmentError(f"{path}: not a Hugging Face checkpoint folder (no config.json)")
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        if config.model_type != "bert":
            raise AugmentError(f"{path}: model_type {config.model_type!r}; the augmentation "
                               f"uses a BERT masked LM (WordPiece, as TinyBERT's)")
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            model, info = transformers.BertForMaskedLM.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True,
                dtype=torch.float32)   # as TinyBERT, whatever dtype the config names
        finally:
            transformers.logging.set_verbosity(verbosity)
        missing = sorted(k for k in info["missing_keys"] if k.startswith("cls."))
        if missing:
            raise AugmentError(
                f"{path}: the checkpoint has no masked-LM head (missing {missing[:3]}...); "
                f"a BertModel or a fine-tuned classifier cannot propose words. Use a "
                f"pretrained BertForMaskedLM such as bert-base-uncased")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(path), local_files_only=True)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or type(backend.model).__name__ != "WordPiece":
            raise AugmentError(f"{path}: needs a fast WordPiece (BERT) tokenizer")
        self.model = model.eval().to(device)
        specials = sorted(set(self.tokenizer.all_special_tokens), key=len, reverse=True)
        self._special = re.compile(
            "(?<!\\S)(" + "|".join(map(re.escape, specials)) + ")(?!\\S)")
        self.device = device
        self.batch_size = int(batch_size)
        self.max_len = min(512, int(config.max_position_embeddings))
        self._torch = torch

    def words_and_pieces(self, sentence: str) -> Tuple[List[str], List[int], List[List[int]]]:
        """The basic tokenizer's words, the sentence's ids (``[CLS] ... [SEP]``) and, per
        word, the positions of its pieces in those ids.

        As TinyBERT's tokenizer: a special token standing alone (``[MASK]``, ``[UNK]``...)
        is one word and one piece; other text is normalised (cleaned, lower-cased and
        accents stripped for an uncased model) and split on spaces and punctuation; each
        word is cut into WordPieces on its own."""
        backend = self.tokenizer.backend_tokenizer
        words: List[str] = []
        ids = [self.tokenizer.cls_token_id]
        pieces: List[List[int]] = []
        for k, part in enumerate(self._special.split(sentence)):
            if k % 2:   # a special token
                words.append(part)
                pieces.append([len(ids)])
                ids.append(self.tokenizer.convert_tokens_to_ids(part))
                continue
            text = backend.normalizer.normalize_str(part) if backend.normalizer else part
            for word, _ in backend.pre_tokenizer.pre_tokenize_str(text):
                tokens = backend.model.tokenize(word)
                words.append(word)
                pieces.append(list(range(len(ids), len(ids) + len(tokens))))
                ids.extend(t.id for t in tokens)
        ids.append(self.tokenizer.sep_token_id)
        return words, ids, pieces

    def query(self, ids: Sequence[int], pos: int) -> Optional[Tuple[List[int], List[int]]]:
        """TinyBERT's input for the piece at `pos`: the sentence with it masked, then the
        sentence again as segment 1, cut at 512 tokens. None when `pos` is cut off."""
        if pos >= self.max_len:
            return None
        masked = list(ids)
        masked[pos] = self.tokenizer.mask_token_id
        tokens = (masked + list(ids[1:]))[: self.max_len]
        types = ([0] * len(ids) + [1] * (len(ids) - 1))[: self.max_len]
        return tokens, types

    def top_tokens(self, queries: Sequence[Tuple[List[int], List[int], int]],
                   m: int) -> List[List[str]]:
        """Each query's `m` most likely tokens at its masked position, most likely first,
        ``##`` pieces dropped (so fewer than `m` may remain)."""
        torch = self._torch
        out: List[Optional[List[str]]] = [None] * len(queries)
        order = sorted(range(len(queries)), key=lambda i: len(queries[i][0]))
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            length = max(len(queries[i][0]) for i in batch)
            ids = torch.full((len(batch), length), pad, dtype=torch.long)
            types = torch.zeros((len(batch), length), dtype=torch.long)
            mask = torch.zeros((len(batch), length), dtype=torch.long)
            for r, i in enumerate(batch):
                tok, typ, _ = queries[i]
                ids[r, :len(tok)] = torch.tensor(tok)
                types[r, :len(typ)] = torch.tensor(typ)
                mask[r, :len(tok)] = 1
            at = torch.tensor([queries[i][2] for i in batch])
            with torch.inference_mode():
                hidden = self.model.bert(input_ids=ids.to(self.device),
                                         attention_mask=mask.to(self.device),
                                         token_type_ids=types.to(self.device))[0]
                logits = self.model.cls(hidden[torch.arange(len(batch)), at.to(self.device)])
                top = torch.topk(logits.float(), k=min(m, logits.shape[-1]), dim=-1).indices
            for r, i in enumerate(batch):
                tokens = self.tokenizer.convert_ids_to_tokens(top[r].tolist())
                out[i] = [t for t in tokens if not t.startswith("##")]
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Sentences


@dataclasses.dataclass
class WordCandidates:
    """One sentence's basic-tokenizer words and, per replaceable word, its candidates."""
    sentence: str
    words: List[str]
    candidates: Dict[int, List[str]]
    sources: Dict[int, str]   # "mlm", "glove" or "kept" (no candidate: the word itself)


def sample_variants(sentence: str, words: Sequence[str], candidates: Dict[int, List[str]],
                    n: int, p: float, rng: random.Random) -> List[str]:
    """TinyBERT's `augment` loop: `sentence` first, then up to `n` distinct variants."""
    variants = [sentence]
    seen = {sentence}
    for _ in range(n):
        new = list(words)
        for idx, cands in candidates.items():
            word = rng.choice(cands)
            if rng.random() < p:
                new[idx] = word
        text = " ".join(new)
        if text not in seen:
            seen.add(text)
            variants.append(text)
    return variants


class Augmentor:
    """Candidates for many sentences at once (one batched LM pass), then variants."""

    def __init__(self, mlm: MaskedLM, glove: Optional[GloveNeighbours],
                 m: int = DEFAULT_M, n: int = 30, p: float = DEFAULT_P):
        if m < 1 or n < 0 or not 0.0 <= p <= 1.0:
            raise AugmentError(f"need m >= 1, n >= 0 and 0 <= p <= 1, got m={m}, n={n}, p={p}")
        self.mlm, self.glove, self.m, self.n, self.p = mlm, glove, m, n, p

    def word_candidates(self, sentences: Sequence[str]) -> List[WordCandidates]:
        results: List[WordCandidates] = []
        queries: List[Tuple[List[int], List[int], int]] = []
        slots: List[Tuple[int, int]] = []
        for s, sentence in enumerate(sentences):
            words, ids, pieces = self.mlm.words_and_pieces(sentence)
            wc = WordCandidates(sentence, words, {}, {})
            for idx, word in enumerate(words):
                if not is_replaceable(word):
                    continue
                wc.candidates[idx] = []
                if len(pieces[idx]) == 1:
                    q = self.mlm.query(ids, pieces[idx][0])
                    if q is not None:
                        queries.append((q[0], q[1], pieces[idx][0]))
                        slots.append((s, idx))
                        wc.sources[idx] = "mlm"
                elif len(pieces[idx]) > 1 and self.glove is not None:
                    wc.candidates[idx] = self.glove(word, self.m)
                    wc.sources[idx] = "glove"
            results.append(wc)
        for (s, idx), tokens in zip(slots, self.mlm.top_tokens(queries, self.m)):
            results[s].candidates[idx] = tokens
        for wc in results:
            for idx, cands in wc.candidates.items():
                if not cands:   # TinyBERT: no candidate means the word itself
                    cands.append(wc.words[idx])
                    wc.sources[idx] = "kept"
        return results

    def variants(self, wc: WordCandidates, rng: random.Random) -> List[str]:
        return sample_variants(wc.sentence, wc.words, wc.candidates, self.n, self.p, rng)


# ---------------------------------------------------------------------------------------
# Files


def _row_rng(seed: int, row: int, field: int) -> random.Random:
    return random.Random(f"{seed}:{row}:{field}")   # str seeds hash with SHA-512: stable


def _read_rows(path, task: GlueTask) -> Tuple[Optional[str], List[List[str]], List[int]]:
    """The header line (None for CoLA), the data rows split on tabs, the text columns."""
    tsv = read_tsv_rows(path, task)
    rows = [fields for _, fields in tsv.rows]
    return tsv.header, rows, tsv.text_idx


def augment_file(task, train_path, out_path, augmentor: Augmentor, *,
                 pairing: str = "tinybert", seed: int = 0, limit: Optional[int] = None,
                 chunk_rows: int = 32, progress: bool = True,
                 settings: Optional[dict] = None) -> dict:
    """Write the augmented copy of `train_path` to `out_path` (resumable; see the module
    docstring). Returns counts: rows, sentences written, candidate sources.

    `settings` (what produced the candidates: model, GloVe file, m, n, p) is recorded in
    the progress file, and a partial file written under other settings is not resumed.
    """
    from dynabert_jax.checkpoint import write_json_atomic   # lazy: it imports jax, orbax

    task = get_task(task) if isinstance(task, str) else task
    if pairing not in PAIRINGS:
        raise AugmentError(f"pairing {pairing!r}; choose from {PAIRINGS}")
    if limit is not None and limit < 1:
        raise AugmentError(f"limit must be >= 1 row, got {limit}")
    if chunk_rows < 1:
        raise AugmentError(f"chunk_rows must be >= 1, got {chunk_rows}")
    out = pathlib.Path(out_path)
    if out.exists():
        raise AugmentError(f"{out} exists; remove it or choose another --out")
    partial = out.with_name(out.name + ".partial")
    state_path = out.with_name(out.name + ".partial.json")
    header, rows, text_idx = _read_rows(train_path, task)
    if limit is not None:
        rows = rows[:limit]
    run = {"task": task.name, "train_sha256": file_sha256(train_path),
           "rows": len(rows), "pairing": pairing, "seed": seed, "m": augmentor.m,
           "n": augmentor.n, "p": augmentor.p, **(settings or {})}

    state = {"run": run, "rows_done": 0, "bytes": 0, "sentences": 0,
             "sources": {"mlm": 0, "glove": 0, "kept": 0}}
    if partial.exists() and state_path.exists():
        old = json.loads(state_path.read_text())
        if old.get("run") != run:
            diff = sorted(k for k in set(run) | set(old.get("run", {}))
                          if run.get(k) != old.get("run", {}).get(k))
            raise AugmentError(
                f"{partial} was written with other settings ({', '.join(diff)} differ); "
                f"remove {partial} and {state_path} to start over, or rerun as before")
        if partial.stat().st_size < old["bytes"]:
            raise AugmentError(
                f"{partial} holds {partial.stat().st_size} bytes, fewer than the "
                f"{old['bytes']} recorded in {state_path}: it was cut or replaced; remove "
                f"both to start over")
        state = old
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "r+b" if state["bytes"] else "wb") as f:
        f.truncate(state["bytes"])
        f.seek(state["bytes"])
        if state["bytes"] == 0 and header is not None:
            f.write((header + "\n").encode("utf-8"))
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(rows), initial=state["rows_done"], unit="row",
                       desc=f"augmenting {task.dir_name}")
        t0 = time.perf_counter()
        while state["rows_done"] < len(rows):
            lo = state["rows_done"]
            chunk = rows[lo: lo + chunk_rows]
            cands = augmentor.word_candidates([r[i] for r in chunk for i in text_idx])
            lines = []
            for k, fields in enumerate(chunk):
                row = list(fields)
                for j, col in enumerate(text_idx):
                    wc = cands[k * len(text_idx) + j]
                    for src in wc.sources.values():
                        state["sources"][src] += 1
                    for text in augmentor.variants(wc, _row_rng(seed, lo + k, j)):
                        row[col] = text
                        lines.append("\t".join(row))
                    if pairing == "original":
                        row[col] = fields[col]
            data = ("\n".join(lines) + "\n").encode("utf-8")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            state["rows_done"] = lo + len(chunk)
            state["bytes"] = f.tell()
            state["sentences"] += len(lines)
            write_json_atomic(state_path, state)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
    os.replace(partial, out)
    state_path.unlink(missing_ok=True)
    return {"rows": len(rows), "sentences": state["sentences"],
            "sources": state["sources"], "seconds": time.perf_counter() - t0, **run}


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m dynabert_jax.augment",
        description="TinyBERT's data augmentation of a GLUE training file (masked-LM and "
                    "GloVe word replacement), as DynaBERT's augmented training sets.")
    p.add_argument("--task", required=True, help="GLUE task (sst2, mrpc, rte, ...)")
    p.add_argument("--train", required=True, help="the task's train.tsv")
    p.add_argument("--out", required=True, help="the augmented file to write")
    p.add_argument("--mlm", required=True,
                   help="Hugging Face BertForMaskedLM folder (e.g. bert-base-uncased)")
    p.add_argument("--glove", default=None,
                   help="GloVe text file for words of several pieces (omit to keep them)")
    p.add_argument("--n", type=int, default=None,
                   help="variants tried per sentence (default: TinyBERT's for the task)")
    p.add_argument("--m", type=int, default=DEFAULT_M, help="candidates per word")
    p.add_argument("--p", type=float, default=DEFAULT_P, help="replacement probability")
    p.add_argument("--pairing", choices=PAIRINGS, default="tinybert",
                   help="pair tasks: the first field beside the second field's variants "
                        "(tinybert: its last variant, as TinyBERT writes; original)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT rows")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="masked-LM queries per forward (16: fastest on a 2-core CPU; more on a GPU)")
    p.add_argument("--glove-vocab", type=int, default=GLOVE_VOCAB,
                   help="GloVe lines read (TinyBERT: the first 100,000)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        task = get_task(args.task)
    except KeyError as e:
        print(f"error: {e.args[0]}")
        return 2
    try:
        n = DEFAULT_N.get(task.name, 30) if args.n is None else args.n
        mlm = MaskedLM(args.mlm, device=args.device, batch_size=args.batch_size)
        glove = GloveNeighbours(args.glove, args.glove_vocab) if args.glove else None
        augmentor = Augmentor(mlm, glove, m=args.m, n=n, p=args.p)
        settings = {"mlm": str(pathlib.Path(args.mlm).resolve()),
                    "glove": str(pathlib.Path(args.glove).resolve()) if args.glove else None,
                    "glove_vocab": args.glove_vocab if args.glove else None}
        stats = augment_file(task, args.train, args.out, augmentor, pairing=args.pairing,
                             seed=args.seed, limit=args.limit, progress=not args.no_progress,
                             settings=settings)
    except (AugmentError, DataFormatError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 2
    src = stats["sources"]
    words = sum(src.values())
    print(f"{args.out}: {stats['sentences']:,} rows from {stats['rows']:,} "
          f"({stats['sentences'] / stats['rows']:.1f} per row; N={n}, M={args.m}, "
          f"p={args.p}); replaceable words: {words:,} "
          f"(masked LM {src['mlm']:,}, GloVe {src['glove']:,}, no candidate {src['kept']:,})")
    if glove is None:
        print("note: no --glove: words of several pieces were left unchanged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
