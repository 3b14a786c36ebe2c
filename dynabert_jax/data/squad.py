"""SQuAD v1.1: reading the JSON, windowed features, and span post-processing.

Pipeline::

    examples = load_squad("dev-v1.1.json")                  # list[SquadExample]
    feats = prepare_features(examples, tokenizer, 384, 128)  # SquadFeatures
    # model: feats.arrays -> start_logits, end_logits  [num_features, seq]
    preds = postprocess(examples, feats, start_logits, end_logits)   # {id: text}
    metrics.squad_v1(preds, "dev-v1.1.json")                 # {"exact_match", "f1"}

Windows follow the Hugging Face ``run_qa`` convention: the question (left-stripped)
is the first segment, the context the second; contexts longer than the window are
cut into several features with ``doc_stride`` tokens of overlap between consecutive
windows (the fast tokenizer's ``stride`` with ``return_overflowing_tokens``); the
question is never truncated.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question. ``answer_starts`` are character offsets into ``context``."""

    id: str
    title: str
    context: str
    question: str
    answer_texts: Tuple[str, ...]
    answer_starts: Tuple[int, ...]


def load_squad(path_or_data) -> List[SquadExample]:
    """Read a SQuAD v1.1 JSON file (or its already-parsed dict) into examples,
    in file order (article, paragraph, question)."""
    if isinstance(path_or_data, dict):
        data = path_or_data
        where = "<dict>"
    else:
        where = str(path_or_data)
        with open(path_or_data, encoding="utf-8") as f:
            data = json.load(f)
    if "data" not in data:
        raise ValueError(f"{where}: not a SQuAD JSON (no top-level 'data' list)")
    out = []
    for article in data["data"]:
        title = article.get("title", "")
        for para in article["paragraphs"]:
            ctx = para["context"]
            for qa in para["qas"]:
                answers = qa.get("answers", [])
                out.append(SquadExample(
                    id=qa["id"], title=title, context=ctx, question=qa["question"],
                    answer_texts=tuple(a["text"] for a in answers),
                    answer_starts=tuple(int(a["answer_start"]) for a in answers)))
    return out


@dataclasses.dataclass
class SquadFeatures:
    """Model inputs for all windows of all examples.

    Attributes:
      arrays: ``input_ids``, ``attention_mask``, ``token_type_ids`` int32 ``[F, L]``;
        ``start_positions``, ``end_positions`` int32 ``[F]`` (token indices of the
        first gold answer; 0, the CLS token, when the answer is not fully inside
        the window or the example has no answer). Feed these to the batchers.
      example_index: int32 ``[F]``, the example each window belongs to.
      offset_mapping: int32 ``[F, L, 2]`` character span of each context token in
        the example's context; ``-1`` for question, special and padding tokens.
    """

    arrays: Dict[str, np.ndarray]
    example_index: np.ndarray
    offset_mapping: np.ndarray

    def __len__(self) -> int:
        return len(self.example_index)


def _label_window(offsets: np.ndarray, is_ctx: np.ndarray, start_char: int,
                  end_char: int) -> Tuple[int, int]:
    """Token (start, end) of the char span ``[start_char, end_char)`` in one window,
    or (0, 0) if it is not fully inside the window's context tokens."""
    ctx = np.flatnonzero(is_ctx)
    if len(ctx) == 0:
        return 0, 0
    first, last = ctx[0], ctx[-1]
    if not (offsets[first, 0] <= start_char and offsets[last, 1] >= end_char):
        return 0, 0
    starts = offsets[ctx, 0]
    ends = offsets[ctx, 1]
    s = ctx[np.flatnonzero(starts <= start_char)[-1]]   # last token starting at/before
    e = ctx[np.flatnonzero(ends >= end_char)[0]]        # first token ending at/after
    return int(s), int(e)


def prepare_features(examples: Sequence[SquadExample], tokenizer, max_seq_length: int = 384,
                     doc_stride: int = 128, chunk_size: int = 1024) -> SquadFeatures:
    """Tokenize question/context pairs into fixed-length, overlapping windows.

    Args:
      examples: from `load_squad`.
      tokenizer: a Hugging Face *fast* tokenizer (offsets needed), right padding.
      max_seq_length: L, tokens per window (question + context + specials).
      doc_stride: tokens shared by consecutive windows of one context.
      chunk_size: examples per tokenizer call (bounds peak memory).
    Returns:
      `SquadFeatures` with F >= len(examples) windows.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("prepare_features needs a fast tokenizer (offset mappings)")
    if getattr(tokenizer, "padding_side", "right") != "right":
        raise ValueError("prepare_features expects a right-padding tokenizer")
    keys = ("input_ids", "attention_mask", "token_type_ids")
    parts: Dict[str, list] = {k: [] for k in keys + ("start_positions", "end_positions")}
    ex_index, offset_parts = [], []
    for lo in range(0, len(examples), chunk_size):
        chunk = examples[lo:lo + chunk_size]
        enc = tokenizer([e.question.lstrip() for e in chunk], [e.context for e in chunk],
                        truncation="only_second", max_length=max_seq_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True,
                        padding="max_length", return_tensors="np")
        n_feat = len(enc["input_ids"])
        sample = np.asarray(enc["overflow_to_sample_mapping"], np.int64)
        offsets = np.asarray(enc["offset_mapping"], np.int32).copy()
        starts = np.zeros(n_feat, np.int32)
        ends = np.zeros(n_feat, np.int32)
        for f in range(n_feat):
            seq_ids = enc.sequence_ids(f)
            is_ctx = np.fromiter((s == 1 for s in seq_ids), bool, count=len(seq_ids))
            offsets[f][~is_ctx] = -1
            ex = chunk[sample[f]]
            if ex.answer_texts:
                sc = ex.answer_starts[0]
                starts[f], ends[f] = _label_window(offsets[f], is_ctx, sc,
                                                   sc + len(ex.answer_texts[0]))
        for k in keys:
            if k in enc:
                parts[k].append(np.asarray(enc[k], np.int32))
            else:  # tokenizers without segment ids (RoBERTa)
                parts[k].append(np.zeros((n_feat, max_seq_length), np.int32))
        parts["start_positions"].append(starts)
        parts["end_positions"].append(ends)
        ex_index.append((sample + lo).astype(np.int32))
        offset_parts.append(offsets)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return SquadFeatures(arrays=arrays, example_index=np.concatenate(ex_index),
                         offset_mapping=np.concatenate(offset_parts))


def postprocess(examples: Sequence[SquadExample], features: SquadFeatures,
                start_logits, end_logits, n_best_size: int = 20,
                max_answer_length: int = 30) -> Dict[str, str]:
    """Pick the best answer span per question over all of its windows.

    For each window, the `n_best_size` highest start and end logits among the
    context tokens are paired; a pair is valid if ``start <= end`` and the span is
    at most `max_answer_length` tokens. The valid pair with the highest
    ``start_logit + end_logit`` over all windows of the question wins (ties: first
    window, then lowest start, then lowest end). Its text is the context slice
    from the start token's first character to the end token's last.

    Args:
      examples: the examples `features` were built from.
      features: from `prepare_features`.
      start_logits, end_logits: ``[F, L]`` model outputs, one row per feature (drop
        eval padding first, e.g. with `batching.unpad`).
    Returns:
      ``{question id: answer text}``, ``""`` when no window has a valid span.
    """
    start_logits = np.asarray(start_logits, np.float64)
    end_logits = np.asarray(end_logits, np.float64)
    n_feat = len(features)
    if start_logits.shape != end_logits.shape or start_logits.shape[0] != n_feat:
        raise ValueError(f"logits {start_logits.shape}/{end_logits.shape} do not match "
                         f"{n_feat} features")
    is_ctx = features.offset_mapping[..., 0] >= 0                       # [F, L]
    s_masked = np.where(is_ctx, start_logits, -np.inf)
    e_masked = np.where(is_ctx, end_logits, -np.inf)
    k = min(n_best_size, start_logits.shape[1])
    # top-k positions per feature, highest first, ties to the lower index
    s_top = np.argsort(-s_masked, axis=1, kind="stable")[:, :k]         # [F, k]
    e_top = np.argsort(-e_masked, axis=1, kind="stable")[:, :k]

    best: Dict[int, Tuple[float, int, int, int]] = {}
    for f in range(n_feat):
        si, ei = s_top[f], e_top[f]
        ok = (is_ctx[f, si][:, None] & is_ctx[f, ei][None, :]
              & (ei[None, :] >= si[:, None])
              & (ei[None, :] - si[:, None] + 1 <= max_answer_length))
        if not ok.any():
            continue
        score = np.where(ok, s_masked[f, si][:, None] + e_masked[f, ei][None, :], -np.inf)
        # among maximal scores, the lowest (start, end)
        top = score.max()
        cand = np.argwhere(score == top)
        pairs = sorted((int(si[a]), int(ei[b])) for a, b in cand)
        s, e = pairs[0]
        ex = int(features.example_index[f])
        if ex not in best or top > best[ex][0]:
            best[ex] = (float(top), f, s, e)

    preds = {}
    for i, ex in enumerate(examples):
        if i in best:
            _, f, s, e = best[i]
            offs = features.offset_mapping[f]
            preds[ex.id] = ex.context[offs[s, 0]:offs[e, 1]]
        else:
            preds[ex.id] = ""
    return preds
