"""Data pipeline: GLUE / custom-task readers, tokenization, batching, SQuAD v1.1.

Main entry points (see ``docs/data.md``)::

    from dynabert_jax import data
    ds = data.load_glue("rte", "/path/to/glue", split="dev")     # datasets.Dataset
    arrays = data.tokenize_dataset(ds, tokenizer, "rte", 128, cache_dir=".cache/tok")
    for batch in data.train_batches(arrays, 32, seed=42, epoch=0): ...
    for batch in data.eval_batches(arrays, 128): ...             # batch["weight"]

Modules: `tasks` (registry), `glue` (file readers), `features` (tokenization and
cache), `batching` (iterators, process slicing, prefetch), `squad` (SQuAD v1.1).
"""
from dynabert_jax.data.batching import (
    cut_sequence,
    epoch_permutation,
    eval_batches,
    interleave_micro_batches,
    num_eval_batches,
    num_examples,
    padded_length,
    prefetch,
    process_slice,
    resume_position,
    row_lengths,
    steps_per_epoch,
    train_batches,
    train_stream,
    trim_padding,
    unpad,
)
from dynabert_jax.data.features import (
    content_fingerprint,
    tokenize_dataset,
    tokenize_texts,
    tokenizer_fingerprint,
)
from dynabert_jax.data.glue import (
    DataFormatError,
    custom_format,
    file_sha256,
    from_hub_dataset,
    load_custom,
    load_glue,
    load_glue_augmented,
    read_glue_tsv,
)
from dynabert_jax.data.squad import (
    SquadExample,
    SquadFeatures,
    load_squad,
    postprocess as squad_postprocess,
    prepare_features as squad_features,
)
from dynabert_jax.data.tasks import CUSTOM_METRICS, TASKS, GlueTask, custom_task, get_task
from dynabert_jax.data import squad  # noqa: F401  (data.squad.prepare_features, ...)

__all__ = [
    "TASKS", "GlueTask", "get_task", "custom_task", "CUSTOM_METRICS",
    "DataFormatError", "load_glue", "load_glue_augmented", "load_custom", "custom_format",
    "read_glue_tsv",
    "from_hub_dataset",
    "file_sha256",
    "tokenize_dataset", "tokenize_texts", "tokenizer_fingerprint", "content_fingerprint",
    "train_batches", "train_stream", "eval_batches", "num_eval_batches", "unpad",
    "steps_per_epoch", "epoch_permutation", "resume_position", "num_examples",
    "process_slice", "interleave_micro_batches", "prefetch", "row_lengths", "padded_length",
    "trim_padding", "cut_sequence",
    "squad", "SquadExample", "SquadFeatures", "load_squad", "squad_features",
    "squad_postprocess",
]
