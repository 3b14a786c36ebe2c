"""The training pipeline end to end on a tiny model: every stage for one or two steps,
the PyTorch-teacher path, NaN handling, config errors and checkpoint mismatches."""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import jax
import pytest

import dynabert_jax as dj
from dynabert_jax import checkpoint as ckpt
from dynabert_jax import results, trainer

from conftest import REPO, save_tiny_bert, tiny_train_config


def _model(config):
    hf = json.loads(open(f"{config.model.pretrained}/config.json").read())
    return dj.DynaBertModel(dj.convert.config_from_hf(hf, head="classification"))


def _like(config):
    model = _model(config)
    return jax.eval_shape(lambda: dj.init_params(model))


#: what each stage of the `all_stages` run was given: (stage, out_name, checksum of its
#: starting parameters, checksum of its teacher or None, its LossSpec); and the batches
#: rewiring computed importance on
_CALLS, _REWIRE_BATCHES = [], []
#: (file name, compiler_options) of each jax.jit the trainer and rewiring made in that run
_JITS = []


@pytest.fixture(scope="module")
def all_stages(tiny_bert_dir, tmp_path_factory):
    """One run of the whole chain (with final fine-tuning) on the tiny model, recording
    what each stage started from and distilled from (`_CALLS`) and the compiler options
    of the programs it compiled (`_JITS`; 512-bit vectors asked for on any x86 CPU)."""
    from dynabert_jax import compile_options, rewire

    tmp = tmp_path_factory.mktemp("all")
    config = tiny_train_config(tiny_bert_dir, tmp, **{"final.enabled": True,
                                                      "report_memory": True})
    train_stage, rewire_network = trainer.train_stage, rewire.rewire_network

    def recording_train_stage(ctx, stage, init, teacher, students, spec, out_name=None):
        _CALLS.append((stage, out_name, ckpt.tree_checksum(init),
                       ckpt.tree_checksum(teacher) if teacher else None, spec))
        return train_stage(ctx, stage, init, teacher, students, spec, out_name=out_name)

    def recording_rewire(model, params, batches, **kw):
        batches = list(batches)
        _REWIRE_BATCHES.extend(batches)
        return rewire_network(model, params, batches, **kw)

    jit = jax.jit

    def recording_jit(*args, **kw):
        caller = pathlib.Path(sys._getframe(1).f_code.co_filename).name
        if caller in ("trainer.py", "rewire.py"):
            _JITS.append((caller, kw.get("compiler_options")))
        return jit(*args, **kw)

    _CALLS.clear()
    _REWIRE_BATCHES.clear()
    _JITS.clear()
    rewire._jitted.cache_clear()   # so that rewiring jits its programs in this run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "train_stage", recording_train_stage)
        mp.setattr(rewire, "rewire_network", recording_rewire)
        mp.setattr(jax, "jit", recording_jit)
        if compile_options.on_x86():
            mp.setattr(compile_options, "cpu_has_avx512", lambda: True)
        record = trainer.train_and_evaluate(config, tmp / "run")
    return config, tmp / "run", record


@pytest.mark.slow
def test_each_stage_starts_and_distils_from_the_official_parameters(all_stages):
    """Spec 4.2-4.4 and checklist 9: DynaBERT_W starts from the rewired teacher and
    distils from the fine-tuned teacher (lambdas 1 / 0.1); DynaBERT starts from
    DynaBERT_W's output and distils from it (1 / 1); final fine-tuning starts from
    DynaBERT's output on the labels alone; rewiring reads the whole dev set in batches
    of 8 (the official --per_gpu_eval_batch_size for importance)."""
    config, run, _ = all_stages
    like = _like(config)

    def output(stage):
        return ckpt.tree_checksum(ckpt.load_params(run / stage / "checkpoints", like)[0])

    calls = {stage: (init, teacher, spec) for stage, _, init, teacher, spec in _CALLS}
    assert [c[0] for c in _CALLS] == ["teacher", "width", "width_depth", "final"]
    init, teacher, spec = calls["teacher"]
    assert teacher is None and spec.kind == "task"
    init, teacher, spec = calls["width"]
    assert init == output("rewire") and teacher == output("teacher")
    assert (spec.kind, spec.lambda_logit, spec.lambda_hidden) == ("distill", 1.0, 0.1)
    assert not (spec.label_loss or spec.mask_padding or spec.width_matched_teacher)
    init, teacher, spec = calls["width_depth"]
    assert init == teacher == output("width")
    assert (spec.kind, spec.lambda_logit, spec.lambda_hidden) == ("distill", 1.0, 1.0)
    assert not (spec.label_loss or spec.mask_padding or spec.width_matched_teacher)
    init, teacher, spec = calls["final"]
    assert init == output("width_depth") and teacher is None and spec.kind == "task"
    # rewiring: every dev example once (the fixture's 32), in batches of 8
    assert {len(b["input_ids"]) for b in _REWIRE_BATCHES} == {8}
    assert sum(float(np.sum(b.get("weight", 1.0))) for b in _REWIRE_BATCHES) == 32


@pytest.mark.slow
def test_every_stage_runs_and_writes_its_outputs(all_stages):
    config, run, record = all_stages
    for stage in ("teacher", "width", "width_depth", "final"):
        assert (run / stage / "checkpoints" / "best").is_dir(), stage
        lines = [json.loads(x) for x in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in lines if "loss" in x] == [1, 2]
        assert any("eval" in x for x in lines)
    assert (run / "rewire" / "importance.npz").is_file()
    # DynaBERT_W trains 4 widths; DynaBERT and final 12 (width, depth) students.
    width = json.loads((run / "width" / "grid.json").read_text())
    assert len(width["subnets"]) == 4 and {c["depth"] for c in width["subnets"]} == {1.0}
    grid = json.loads((run / "grid.json").read_text())
    assert grid == json.loads(json.dumps(record))
    assert grid["task"] == "sst2" and grid["metric"] == "acc" and grid["stage"] == "final"
    assert len(grid["subnets"]) == 12
    cfg = _model(config).config
    for cell in grid["subnets"]:
        s = dj.SubNet(cell["width"], cell["depth"])
        assert cell["params"] == dj.count_params(cfg, s)
        assert cell["flops"] == dj.encoder_flops(cfg, s, 32)
        assert 0.0 <= cell["metric"] <= 1.0 and cell["metrics"]["acc"] == cell["metric"]
    assert set(grid["teacher"]) == {"metric", "metrics", "params", "flops"}
    assert (run / "grid.png").stat().st_size > 1000
    assert "| width \\ depth |" in (run / "grid.md").read_text()
    memory = json.loads((run / "width_depth" / "memory.json").read_text())
    assert memory["num_students"] == 12 and memory["peak_ratio"] <= 2.0


def test_every_program_is_compiled_with_the_configured_vector_width(all_stages):
    # config.cpu_prefer_vector_width (512 by default) reaches every jax.jit of the
    # training, evaluation and rewiring programs (on the CPU backend the tests run on)
    from dynabert_jax import compile_options

    config, run, _ = all_stages
    assert config.cpu_prefer_vector_width == 512
    want = {"xla_cpu_prefer_vector_width": 512} if compile_options.on_x86() else None
    assert {caller for caller, _ in _JITS} == {"trainer.py", "rewire.py"}
    # eval, optimizer state and train step per stage; rewiring's scores and running sums
    assert len(_JITS) >= 12 and all(options == want for _, options in _JITS), _JITS
    # and each stage's wall time is recorded beside the options it was compiled with
    rows = [json.loads(x) for x in (run / "stages.jsonl").read_text().splitlines()]
    assert rows and all(row["compiler_options"] == want for row in rows)


def test_a_bad_compiler_option_reaches_xla_and_fails_the_run(tiny_bert_dir, tmp_path,
                                                             monkeypatch):
    # the options are handed to XLA's compiler, not dropped on the way: one it does not
    # know stops the run at the first compile
    from dynabert_jax import compile_options

    monkeypatch.setattr(compile_options, "compiler_options",
                        lambda width, backend: {"xla_dynabert_no_such_option": 1})
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher")
    with pytest.raises(Exception, match="No such compile option: 'xla_dynabert_no_such"):
        trainer.train_and_evaluate(c, tmp_path / "run")


@pytest.mark.slow
def test_rewire_then_width_start_from_permuted_teacher(all_stages):
    config, run, _ = all_stages
    like = _like(config)
    teacher, _ = ckpt.load_params(run / "teacher" / "checkpoints", like)
    rewired, info = ckpt.load_params(run / "rewire" / "checkpoints", like)
    imp = np.load(run / "rewire" / "importance.npz")
    expected = dj.rewire.permute(teacher, imp["head"], imp["neuron"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, rewired, expected)
    assert info["accumulate"] == "official"


@pytest.mark.slow
def test_eval_stage_and_rerun_is_a_no_op(all_stages, capsys, tmp_path):
    config, run, record = all_stages
    config = config.copy_and_resolve_references()
    config.stage = "eval"
    again = trainer.train_and_evaluate(config, run)
    # The final stage's best checkpoint re-evaluated gives the numbers it was selected with.
    assert [c["metric"] for c in again["subnets"]] == [c["metric"] for c in record["subnets"]]
    # Already finished: resumes at its last step and trains, compiles (memory.json is
    # written after compiling) and evaluates nothing; the rewiring is reused as it was.
    files = [run / "width_depth" / "metrics.jsonl", run / "width_depth" / "memory.json",
             run / "rewire" / "importance.npz"]
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    for stage in ("rewire", "width_depth"):
        config.stage = stage
        trainer.train_and_evaluate(config, run)
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before
    assert "rewire: done before with this teacher and settings, reused" in \
        capsys.readouterr().out
    # Another rewiring setting is another network: computed again (in a copy of the run,
    # which the other tests share).
    copy = shutil.copytree(run, tmp_path / "copy")
    config.stage, config.rewire.batch_size = "rewire", config.rewire.batch_size + 1
    trainer.train_and_evaluate(config, copy)
    assert "reused" not in capsys.readouterr().out
    assert (copy / "rewire" / "importance.npz").read_bytes() != before[files[2]][0]


@pytest.mark.slow
def test_one_cell_final_fine_tuning_in_a_folder_that_links_the_run(all_stages, tmp_path):
    """docs/deploy.md: stage 3 for one cell, in a new folder that links the trained
    stages, trains and scores that cell alone and leaves the run's own final/ as it was."""
    config, run, _ = all_stages
    before = (run / "final" / "metrics.jsonl").read_bytes()
    cell = tmp_path / "cell"
    cell.mkdir()
    for stage in ("teacher", "rewire", "width", "width_depth"):
        (cell / stage).symlink_to(run / stage)
    c = config.copy_and_resolve_references()
    c.stage, c.widths, c.depths = "final", (0.5,), (0.5,)
    record = trainer.train_and_evaluate(c, cell)
    assert [(x["width"], x["depth"]) for x in record["subnets"]] == [(0.5, 0.5)]
    tuned = trainer.load_run(cell)
    assert tuned.stage == "final" and tuned.info["students"] == [[0.5, 0.5]]
    assert (run / "final" / "metrics.jsonl").read_bytes() == before


def test_teacher_checksum_is_computed_once_per_teacher(monkeypatch):
    calls = []
    real = ckpt.tree_checksum
    monkeypatch.setattr(ckpt, "tree_checksum", lambda tree: calls.append(1) or real(tree))
    teacher, other = {"w": np.ones(3, np.float32)}, {"w": np.zeros(3, np.float32)}
    ctx = trainer.Context(*[None] * 9, teacher=teacher)
    assert ctx.checksum(teacher) == ctx.checksum(teacher) == real(teacher)
    assert len(calls) == 1
    # Other trees are checksummed each time (and not kept alive).
    assert ctx.checksum(other) == ctx.checksum(other) == real(other)
    assert len(calls) == 3
    # A new teacher (an equal tree, another object) is checksummed again.
    ctx.teacher = {"w": np.ones(3, np.float32)}
    assert ctx.checksum(ctx.teacher) == real(teacher) and len(calls) == 4
    assert ctx.checksum(teacher) == real(teacher) and len(calls) == 5


@pytest.mark.slow
def test_teacher_from_pytorch_checkpoint_skips_teacher_stage(all_stages, tmp_path):
    config, run, _ = all_stages
    # Export the trained teacher as a Hugging Face checkpoint, then start a new run from it.
    model = _model(config)
    like = _like(config)
    params, _ = ckpt.load_params(run / "teacher" / "checkpoints", like)
    hf_dir = dj.save_pretrained_pytorch(model, params, tmp_path / "hf_teacher")
    c = config.copy_and_resolve_references()
    c.teacher_checkpoint = str(hf_dir)
    c.final.enabled = False
    assert trainer.stages_to_run(c) == ("rewire", "width", "width_depth")
    c.stage = "rewire"
    trainer.train_and_evaluate(c, tmp_path / "run")
    rewired, _ = ckpt.load_params(tmp_path / "run" / "rewire" / "checkpoints", like)
    same, _ = ckpt.load_params(run / "rewire" / "checkpoints", like)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                           rewired, same)


def test_the_default_config_is_the_official_recipe():
    """Spec 4 and checklist 9: what a run gets without flags."""
    from configs import default

    c = default.get_config()
    for stage in ("teacher", "width", "width_depth", "final", "direct"):
        s = c[stage]
        assert (s.learning_rate, s.num_epochs, s.max_steps, s.batch_size) == (2e-5, 3.0, 0, 32)
        assert (s.weight_decay, s.adam_epsilon, s.max_grad_norm) == (0.0, 1e-8, 1.0)
        assert s.warmup_ratio == -1.0 and s.grad_accum_steps == 1   # auto: 0 BERT, 6% RoBERTa
        assert s.eval_every == (10 if stage == "final" else 50), stage
    assert (c.width.lambda_logit, c.width.lambda_hidden) == (1.0, 0.1)
    assert (c.width_depth.lambda_logit, c.width_depth.lambda_hidden) == (1.0, 1.0)
    assert c.width.objective == "distill" and not c.final.enabled
    assert not any(c.loss.values())   # no label loss, padding in the MSE, full-width teacher
    assert (c.rewire.enabled, c.rewire.accumulate, c.rewire.batch_size) == (True, "official", 8)
    assert c.widths == (1.0, 0.75, 0.5, 0.25) and c.depths == (1.0, 0.75, 0.5)
    assert c.data.max_seq_length == 128 and c.data.keep_partial_batch
    assert c.data.pad_to_multiple_of == 0 and not c.data.group_by_length
    assert c.model.dropout == -1.0 and c.model.dtype == "float32"   # the checkpoint's 0.1


def test_stage_without_its_input_says_what_to_run(tiny_bert_dir, tmp_path):
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="width_depth")
    with pytest.raises(FileNotFoundError, match="stage 'width' has no output"):
        trainer.train_and_evaluate(c, tmp_path / "run")


def test_nan_loss_stops_naming_step_and_subnet(tiny_bert_dir, tmp_path):
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher", checkpoint_every=1)
    c.teacher.max_steps = 4
    c.teacher.learning_rate = 1e30   # the first update blows the weights up
    with pytest.raises(trainer.NonFiniteLossError,
                       match=r"at step 2 in sub-network SubNet\(width=1, depth=1\).*"
                             r"last good checkpoint is step 1"):
        trainer.train_and_evaluate(c, tmp_path / "run")
    store = ckpt.StageCheckpoints(tmp_path / "run" / "teacher" / "checkpoints")
    assert store.latest_step() == 1
    store.close()


def test_an_infinite_gradient_stops_like_a_nan_loss(tiny_bert_dir, tmp_path, monkeypatch):
    """A finite loss whose gradient is not: the update has made the parameters NaN, so
    they must not be checkpointed (nor kept as the best) either."""
    import jax.numpy as jnp
    from dynabert_jax import steps

    make = steps.make_train_step

    def infinite_gradient(*args, **kw):
        step = make(*args, **kw)

        def run(*a):
            state, m = step(*a)
            return state, {**m, "grad_norm": jnp.inf}
        return run

    monkeypatch.setattr(steps, "make_train_step", infinite_gradient)
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher", checkpoint_every=1)
    with pytest.raises(trainer.NonFiniteLossError,
                       match=r"teacher: the gradient norm is inf at step 1; stopped without "
                             r"saving. No checkpoint had been written yet"):
        trainer.train_and_evaluate(c, tmp_path / "run")
    store = ckpt.StageCheckpoints(tmp_path / "run" / "teacher" / "checkpoints")
    assert store.latest_step() is None and store.best_info() is None
    store.close()


def test_a_stage_trained_with_other_settings_is_not_resumed_or_reused(tiny_bert_dir,
                                                                     tiny_teacher_dir,
                                                                     tmp_path):
    # Resuming, or handing on a finished stage, under settings other than those it was
    # trained with would mix two runs (or report the old one as the new): refused, with
    # every setting that differs named. The folder's config.json stays the first run's.
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="width", widths=(1.0, 0.5))
    c.teacher_checkpoint = str(tiny_teacher_dir)   # no teacher stage to train first
    c.rewire.enabled = False
    trainer.train_and_evaluate(c, tmp_path / "run")
    c.widths = (1.0,)
    c.width.learning_rate = 1e-3
    with pytest.raises(ckpt.CheckpointMismatchError,
                       match=r"trained with other settings: students=\[\[1.0, 1.0\], "
                             r"\[0.5, 1.0\]\] \(now \[\[1.0, 1.0\]\]\); "
                             r"width.learning_rate=2e-05 \(now 0.001\)"):
        trainer.train_and_evaluate(c, tmp_path / "run")
    c.widths, c.width.learning_rate = (1.0, 0.5), 2e-5
    c.width.eval_every = 1          # how often it evaluates is not a training setting
    trainer.train_and_evaluate(c, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["width"][
        "eval_every"] == 1
    # another task in the same folder is refused before anything loads
    c.task = "rte"
    with pytest.raises(trainer.ConfigError, match="holds a run of task 'sst2'"):
        trainer.train_and_evaluate(c, tmp_path / "run")
    c.task = "SST-2"   # the same task, spelt as GLUE does
    c.stage = "eval"
    c.data.data_dir = str(tmp_path / "nowhere")   # fails on loading the data...
    with pytest.raises(FileNotFoundError):
        trainer.train_and_evaluate(c, tmp_path / "run")
    # ... and leaves the run's config.json as it was
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"][
        "data_dir"] == ""


def test_a_stage_whose_starting_point_changed_is_not_reused(tiny_bert_dir, tiny_teacher_dir,
                                                           tmp_path):
    """DynaBERT_W trained from the un-rewired teacher, then rewiring switched on: the
    finished stage is not handed on as if it had started from the rewired network."""
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="width", widths=(1.0, 0.5))
    c.teacher_checkpoint = str(tiny_teacher_dir)
    c.rewire.enabled = False
    trainer.train_and_evaluate(c, tmp_path / "run")
    c.rewire.enabled, c.stage = True, "rewire"
    trainer.train_and_evaluate(c, tmp_path / "run")
    c.stage = "width"
    with pytest.raises(ckpt.CheckpointMismatchError,
                       match=r"width/checkpoints/latest step 2 was written with init_checksum="
                             r".*it started from other parameters"):
        trainer.train_and_evaluate(c, tmp_path / "run")


def test_metrics_of_steps_after_the_checkpoint_are_not_logged_twice(tmp_path):
    from dynabert_jax import report

    w = report.MetricWriter(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        w.write(step, loss=1.0 / step)
    w.drop_after(2)        # resumed from the checkpoint at step 2
    w.write(3, loss=0.5)
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # a row cut off by a crash mid-write is dropped (its step is logged again), not fatal
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')
    w.drop_after(3)
    w.write(4, loss=0.25)
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_checkpoint_of_another_model_is_refused(tiny_bert_dir, tmp_path, minilm_path):
    import transformers

    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher")
    trainer.train_and_evaluate(c, tmp_path / "run")
    c.data.max_seq_length = 16
    c.model.dropout = 0.0   # another model config than the checkpoint's
    c.teacher.max_steps = 3
    with pytest.raises(ckpt.CheckpointMismatchError, match="use a fresh workdir"):
        trainer.train_and_evaluate(c, tmp_path / "run")
    # a later stage that reads the teacher's output with a model of other shapes: the
    # same one-line error (train.py prints it), not orbax's traceback
    wide = save_tiny_bert(tmp_path / "wide", minilm_path, transformers.BertModel,
                          num_hidden_layers=4, max_position_embeddings=128,
                          intermediate_size=128)
    c = tiny_train_config(wide, tmp_path, stage="rewire")
    with pytest.raises(ckpt.CheckpointMismatchError,
                       match=r"teacher/checkpoints/best step \d+ does not fit this model: "
                             r"encoder/layer_0/intermediate/bias: \(64,\), this model "
                             r"\(128,\);"):
        trainer.train_and_evaluate(c, tmp_path / "run")


def test_config_typo_and_unknown_stage_are_errors(tiny_bert_dir, tmp_path):
    # typos in the command line: one line on stderr, exit status 2, with or without
    # --config (ml_collections raises them at different times)
    for args, says in (
            (["--config.stagee=width"], "the config has no field 'stagee' in "
                                        "--config.stagee. Did you mean \"stage\""),
            (["--config", "configs/glue.py:task=rte", "--config.width.learnin_rate=1"],
             "no field 'learnin_rate' in --config.width.learnin_rate"),
            (["--config.width.learning_rate=abc"], "could not convert string to float"),
            (["--config", "configs/glue.py:stgae=all"], "bad config argument 'stgae=all'"),
            (["--config", "configs/nope.py"], "No such file or directory: "
                                              "'configs/nope.py'"),
            (["runs/sst2"], "unexpected arguments: runs/sst2 (fields are set as "
                            "--config.x=y)"),
            # several processes asked for, outside a cluster JAX detects, with no settings
            (["--config.distributed=true"], "jax.distributed.initialize() says: "
                                            "coordinator_address should be defined. It "
                                            "finds the processes itself on TPU")):
        out = subprocess.run([sys.executable, str(REPO / "train.py"), *args,
                              f"--workdir={tmp_path}"], capture_output=True, text=True,
                             cwd=REPO)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert out.stderr.startswith("train.py: error: ") and says in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="widht")
    with pytest.raises(ValueError, match="unknown stage 'widht'"):
        trainer.stages_to_run(c)
    from configs import glue

    with pytest.raises(ValueError, match="bad config argument 'tsak=rte'"):
        glue.get_config("tsak=rte")
    assert glue.get_config("task=rte,stage=width,seq=64").data.max_seq_length == 64
    # what the user can fix is one line on stderr and exit status 2, not a traceback
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--config.stage=widht",
                          f"--workdir={tmp_path / 'cli'}"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "train.py: error: unknown stage 'widht'" in out.stderr
    assert "Traceback" not in out.stderr
    # an unknown task too, before any model or data is loaded
    with pytest.raises(ValueError, match="unknown task 'sst3' in config.task; choose one "
                                         "of cola, .*, squad or custom"):
        trainer.stages_to_run(tiny_train_config(tiny_bert_dir, tmp_path, task="sst3"))
    assert trainer.stages_to_run(tiny_train_config(tiny_bert_dir, tmp_path, task="SST-2",
                                                   stage="width")) == ("width",)


@pytest.mark.parametrize("widths, depths, match", [
    ((1.0, 0.0), (1.0,), r"width=0\.0 is out of range"),
    ((1.0, 0.5, 0.5), (1.0,), r"config.widths repeats a value"),
    ((1.0,), (), r"config.depths is empty"),
    ((1.0,), (1.5,), r"depth=1\.5 is out of range"),
    ((1.0, "half"), (1.0,), r"width must be a number"),
])
def test_bad_grid_fails_before_anything_loads(tiny_bert_dir, tmp_path, widths, depths,
                                              match):
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="all")
    c.widths, c.depths = widths, depths
    with pytest.raises(trainer.ConfigError, match=match):
        trainer.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field, value, match", [
    ("model.dtype", "float16", r"unknown config.model.dtype 'float16'; choose one of "
                               r"\('float32', 'bfloat16'\)"),
    ("rewire.accumulate", "per-batch", r"unknown config.rewire.accumulate 'per-batch'"),
    ("mesh.num_devices", 64, r"config.mesh.num_devices=64, but only \d+ device"),
    ("mesh.num_devices", -1, r"config.mesh.num_devices=-1 must be 0 \(every device\) or "
                             r"a positive number"),
    ("width_depth.batch_size", 0, r"config.width_depth.batch_size=0 must be a positive "
                                  r"multiple"),
    ("eval_batch_size", -8, r"config.eval_batch_size=-8 must be a positive multiple"),
    ("eval_from", "widht", r"unknown config.eval_from 'widht'; choose width, "),
    ("width.objective", "labels", r"unknown config.width.objective 'labels'; choose one "
                                  r"of \('distill', 'task'\)"),
    ("width_depth.max_grad_norm", 0.0, r"config.width_depth.max_grad_norm=0.0 must be > 0"),
    ("teacher.weight_decay", -0.01, r"config.teacher.weight_decay=-0.01 must be >= 0"),
    ("width_depth.grad_accum_steps", 0, r"config.width_depth.grad_accum_steps=0 must be a "
                                        r"positive integer"),
])
def test_option_of_a_later_stage_fails_before_anything_loads(tiny_bert_dir, tmp_path,
                                                             field, value, match):
    # Each of these used to fail only when its stage began: after the teacher trained
    # (rewiring's accumulation, stage 2's batch) or after the data loaded (dtype).
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="all")
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(trainer.ConfigError, match=match):
        trainer.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_custom_file_of_unknown_format_fails_before_anything_loads(tiny_bert_dir,
                                                                   tmp_path):
    c = tiny_train_config(tiny_bert_dir, tmp_path, task="custom")
    c.data.custom.train, c.data.custom.dev = str(tmp_path / "train.txt"), "dev.csv"
    c.data.custom.label_list = "neg,pos"
    with pytest.raises(trainer.ConfigError, match=r"config.data.custom.train=.*train.txt'"
                                                  r": unknown format 'txt'"):
        trainer.stages_to_run(c)
    c.data.custom.format = "xml"
    with pytest.raises(trainer.ConfigError, match="unknown format 'xml'"):
        trainer.stages_to_run(c)
    c.data.custom.format = "tsv"
    assert trainer.stages_to_run(c)


def test_width_that_keeps_no_head_of_the_model_fails_before_training(tiny_bert_dir,
                                                                     tmp_path):
    # the tiny BERT has 4 heads: round(4 * 0.1) = 0
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="all", widths=(1.0, 0.1))
    with pytest.raises(trainer.ConfigError, match="keeps no attention head of 4"):
        trainer.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run" / "teacher").exists()


def test_demo_falls_back_to_shipped_slice_equal_to_the_full_data_subset(monkeypatch,
                                                                       tmp_path, glue_dir):
    from configs import demo

    c = demo.get_config()
    monkeypatch.delenv("DYNABERT_DATA", raising=False)
    monkeypatch.setattr(trainer, "REPO_ROOT", tmp_path / "nowhere" / "repo")
    assert trainer.resolve_data_dir(c) == trainer.DEMO_DATA
    # The shipped rows are exactly the demo's fixed subset of the full SST-2 train set,
    # so the demo trains on the same data with or without ../shared/data.
    full = trainer._subset(dj.data.load_glue("sst2", glue_dir, "train"),
                           c.data.train_size, c.seed)
    shipped = dj.data.load_glue("sst2", trainer.DEMO_DATA, "train")
    assert full["sentence"] == shipped["sentence"] and full["label"] == shipped["label"]
    assert len(dj.data.load_glue("sst2", trainer.DEMO_DATA, "dev")) == 872
    c.data.data_dir = str(tmp_path / "missing")
    assert trainer.resolve_data_dir(c) == tmp_path / "missing"
    c.data.data_dir = ""
    c.task = "rte"   # no shipped slice for RTE: a clear error with the expected layout
    with pytest.raises(FileNotFoundError, match=r"<dir>/RTE/train.tsv"):
        trainer.resolve_data_dir(c)


@pytest.mark.slow
def test_trimmed_grouped_batches_train_and_bad_options_are_errors(tiny_bert_dir, tmp_path):
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher",
                          **{"data.pad_to_multiple_of": 8, "data.group_by_length": True,
                             "teacher.max_steps": 6})
    trainer.train_and_evaluate(c, tmp_path / "run")
    logged = [json.loads(line) for line in
              (tmp_path / "run" / "teacher" / "metrics.jsonl").read_text().splitlines()]
    lens = [r["seq_len"] for r in logged if "seq_len" in r]
    assert len(lens) == 6 and all(n % 8 == 0 and n <= 32 for n in lens)
    assert min(lens) < 32, lens     # SST-2 sentences are short: batches were trimmed
    assert (tmp_path / "run" / "teacher" / "checkpoints" / "best").is_dir()

    bad = tiny_train_config(tiny_bert_dir, tmp_path, **{"data.group_by_length": True})
    with pytest.raises(ValueError, match="group_by_length needs"):
        trainer.stages_to_run(bad)
    bad = tiny_train_config(tiny_bert_dir, tmp_path, **{"data.pad_to_multiple_of": -8})
    with pytest.raises(ValueError, match="pad_to_multiple_of must be an int >= 0"):
        trainer.stages_to_run(bad)


def test_rbg_dropout_prng_trains_through_the_sharded_step(tiny_bert_dir, tmp_path):
    """config.dropout_prng=rbg: the typed key goes through the jitted, sharded step of
    the trainer; a bad name fails before any data loads."""
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher", dropout_prng="rbg")
    trainer.train_and_evaluate(c, tmp_path / "run")
    logged = [json.loads(line) for line in
              (tmp_path / "run" / "teacher" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    bad = tiny_train_config(tiny_bert_dir, tmp_path, dropout_prng="rgb")
    with pytest.raises(ValueError, match="unknown dropout PRNG 'rgb'"):
        trainer.train_and_evaluate(bad, tmp_path / "bad")


def test_compilation_cache_is_filled_then_reused_with_the_same_results(tiny_bert_dir,
                                                                        tmp_path):
    """config.compilation_cache_dir: the first run stores its executables; a second run
    of the same shapes compiles nothing new and trains to the same numbers."""
    from jax.experimental.compilation_cache import compilation_cache

    cache = tmp_path / "jax-cache"
    old = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # tiny programs
    try:
        results = []
        for run in ("first", "second"):
            c = tiny_train_config(tiny_bert_dir, tmp_path / run, stage="teacher",
                                  compilation_cache_dir=str(cache))
            results.append(trainer.train_and_evaluate(c, tmp_path / run / "run"))
            if run == "first":
                stored = sorted(p.name for p in cache.iterdir())
                assert any("train_step" in name for name in stored), stored
        assert sorted(p.name for p in cache.iterdir()) == stored
        assert json.dumps(results[0], sort_keys=True) == json.dumps(results[1],
                                                                    sort_keys=True)
    finally:
        jax.config.update("jax_compilation_cache_dir", old[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
        compilation_cache.reset_cache()


@pytest.mark.slow
def test_augmented_file_feeds_the_distillation_stages_only(tiny_bert_dir, glue_dir, tmp_path):
    """config.data.augmented_train: DynaBERT_W trains on the training set followed by the
    augmented rows (the official --data_aug), the teacher on the training set alone (and
    a run of the teacher alone does not read the file); the subset and both sizes go to
    data.json."""
    rows = (glue_dir / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    aug = tmp_path / "train_aug.tsv"   # 24 real sentences with teacher logits as labels
    aug.write_text("sentence\tlabel\n" + "".join(
        f"{r.split(chr(9))[0]}\t{0.5 - i % 2} {i % 3 - 1.0}\n"
        for i, r in enumerate(rows[1000:1024])), encoding="utf-8")
    over = {"data.train_size": 16, "data.augmented_train": str(aug),
            "data.augmented_size": 16}
    for stage in ("teacher", "width"):
        over.update({f"{stage}.max_steps": 0, f"{stage}.num_epochs": 1.0})
    run = tmp_path / "run"
    for stage in ("teacher", "rewire", "width"):
        c = tiny_train_config(tiny_bert_dir, tmp_path, stage=stage, **over)
        trainer.train_and_evaluate(c, run)
        if stage == "teacher":   # a stage that does not train on the file does not load it
            assert "augmented" not in json.loads((run / "data.json").read_text())
    logged = {s: [json.loads(x) for x in (run / s / "metrics.jsonl").read_text().splitlines()]
              for s in ("teacher", "width")}
    steps_of = {s: [r["step"] for r in rows if "loss" in r] for s, rows in logged.items()}
    assert steps_of == {"teacher": [1, 2], "width": [1, 2, 3, 4]}   # batch 8: 16 vs 16 + 16
    sizes = json.loads((run / "data.json").read_text())
    assert sizes["train"]["used"] == 16
    assert sizes["augmented"] == {"used": 16, "available": 24}

    bad = tiny_train_config(tiny_bert_dir, tmp_path, stage="width",
                            **{"data.augmented_train": str(tmp_path / "missing.tsv")})
    with pytest.raises(FileNotFoundError, match="augmented sst2 training file not found"):
        trainer.train_and_evaluate(bad, tmp_path / "bad")
    squad = tiny_train_config(tiny_bert_dir, tmp_path, task="squad",
                              **{"data.augmented_train": str(aug)})
    with pytest.raises(ValueError, match="augmented_train is for GLUE tasks"):
        trainer.train_and_evaluate(squad, tmp_path / "bad")


def test_demo_and_glue_sst2_default_to_different_workdirs():
    # the demo (2,000 SST-2 examples) must not take runs/sst2, where the GLUE SST-2
    # recipe goes: one would refuse the other's checkpoints as trained with other settings
    script = ("import sys; sys.argv = ['train.py', *sys.argv[1:]]; import train; "
              "from absl import flags; from ml_collections import config_flags; "
              "flags.FLAGS(sys.argv); c = flags.FLAGS['config']; "
              "print(train.default_workdir(config_flags.get_config_filename(c), c.value.task))")
    for args, workdir in (([], "runs/demo"),
                          (["--config", "configs/demo.py"], "runs/demo"),
                          (["--config", str(REPO / "configs/demo.py")], "runs/demo"),
                          (["--config", "configs/glue.py:task=sst2"], "runs/sst2"),
                          (["--config", "configs/glue.py:task=rte,stage=width"], "runs/rte")):
        out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                             text=True, cwd=REPO)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == workdir, (args, out.stdout)


def _evaluated_steps(run, stage):
    lines = (run / stage / "metrics.jsonl").read_text().splitlines()
    return [x["step"] for x in map(json.loads, lines) if "eval" in x]


def test_evaluations_at_every_eval_every_steps_and_at_the_end_only_if_asked(tiny_bert_dir,
                                                                           tmp_path):
    # the official code evaluates (and keeps the best) every eval_every steps only: the
    # last steps after the last multiple are never a candidate
    for (steps, every, at_end), want in (((3, 2, False), [2]), ((3, 2, True), [2, 3]),
                                         ((2, 5, False), [2])):  # shorter: at its end
        c = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher",
                              **{"teacher.max_steps": steps, "teacher.eval_every": every,
                                 "teacher.eval_at_end": at_end})
        run = tmp_path / f"run{steps}{every}{at_end}"
        trainer.train_and_evaluate(c, run)
        assert _evaluated_steps(run, "teacher") == want, (steps, every, at_end)
        info = ckpt.StageCheckpoints(run / "teacher" / "checkpoints").best_info()
        assert info["step"] in want


def test_width_objective_task_trains_dynabert_w_on_labels_without_a_teacher(
        tiny_bert_dir, tiny_teacher_dir, tmp_path, monkeypatch):
    # the official code without --data_aug: the task loss per width, no teacher terms
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="width", widths=(1.0, 0.5))
    c.teacher_checkpoint = str(tiny_teacher_dir)
    c.rewire.enabled = False
    c.width.objective = "task"
    seen = {}
    real = trainer.train_stage

    def spy(ctx, stage, init, teacher, students, spec, **kw):
        seen.update(teacher=teacher, spec=spec)
        return real(ctx, stage, init, teacher, students, spec, **kw)

    monkeypatch.setattr(trainer, "train_stage", spy)
    trainer.train_and_evaluate(c, tmp_path / "run")
    assert seen["teacher"] is None and seen["spec"].kind == "task"
    assert len(json.loads((tmp_path / "run" / "width" / "grid.json").read_text())[
        "subnets"]) == 2
    # resuming it as a distillation run is refused (it had no teacher)
    c.width.objective = "distill"
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"teacher_checksum=None"):
        trainer.train_and_evaluate(c, tmp_path / "run")


def test_settings_added_later_keep_earlier_checkpoints_resumable(tiny_bert_dir, tmp_path):
    # a checkpoint recorded before width.objective existed was trained by distillation:
    # the default leaves the key out of the record, so the two still match
    c = tiny_train_config(tiny_bert_dir, tmp_path)
    students = trainer.grid(c.widths, (1.0,))
    sig = trainer.training_signature(c, "width", students, 10)
    assert "width.objective" not in sig and "width.learning_rate" in sig
    c.width.objective = "task"
    assert trainer.training_signature(c, "width", students, 10)["width.objective"] == "task"
    # likewise the optimizer's settings, recorded once they leave the official values
    sig = trainer.training_signature(c, "teacher", students, 10)
    assert not {"teacher.weight_decay", "teacher.adam_epsilon", "teacher.max_grad_norm"} & set(sig)
    c.teacher.weight_decay = 0.01
    assert trainer.training_signature(c, "teacher", students, 10)["teacher.weight_decay"] == 0.01
    # and gradient accumulation's
    assert not {"teacher.grad_accum_steps", "teacher.clip_partial_sums"} & set(sig)
    c.teacher.clip_partial_sums = False      # changes nothing without accumulation
    assert "teacher.clip_partial_sums" not in trainer.training_signature(c, "teacher",
                                                                        students, 10)
    c.teacher.grad_accum_steps = 4
    sig = trainer.training_signature(c, "teacher", students, 10)
    assert sig["teacher.grad_accum_steps"] == 4 and sig["teacher.clip_partial_sums"] is False


class _Stop(Exception):
    pass


def _teacher_of(config, workdir, monkeypatch):
    """The teacher DynaBERT_W would distil from (its training is not run)."""
    def stop(ctx, stage, init, teacher, *args, **kw):
        raise _Stop(teacher)

    monkeypatch.setattr(trainer, "train_stage", stop)
    with pytest.raises(_Stop) as e:
        trainer.train_and_evaluate(config, workdir)
    return e.value.args[0]


def test_teacher_checkpoint_must_be_fine_tuned_and_its_labels_are_put_in_order(
        tiny_bert_dir, tiny_teacher_dir, tmp_path, monkeypatch):
    c = tiny_train_config(tiny_bert_dir, tmp_path, task="rte", stage="width",
                          widths=(1.0,), **{"rewire.enabled": False})
    # a pre-trained encoder is not a teacher: its classifier would be random
    c.teacher_checkpoint = str(tiny_bert_dir)
    with pytest.raises(dj.CheckpointError, match="has no classification head"):
        trainer.train_and_evaluate(c, tmp_path / "run")
    # a teacher whose id2label has RTE's labels the other way round: outputs swapped
    c.teacher_checkpoint = str(tiny_teacher_dir)
    as_is = _teacher_of(c, tmp_path / "as_is", monkeypatch)
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_teacher_dir, swapped)
    hf = json.loads((swapped / "config.json").read_text())
    hf["id2label"] = {"0": "not_entailment", "1": "entailment"}
    (swapped / "config.json").write_text(json.dumps(hf))
    c.teacher_checkpoint = str(swapped)
    reordered = _teacher_of(c, tmp_path / "reordered", monkeypatch)
    np.testing.assert_array_equal(reordered["classifier"]["kernel"],
                                  np.asarray(as_is["classifier"]["kernel"])[:, [1, 0]])
    np.testing.assert_array_equal(reordered["classifier"]["bias"],
                                  np.asarray(as_is["classifier"]["bias"])[[1, 0]])
    np.testing.assert_array_equal(reordered["pooler"]["kernel"], as_is["pooler"]["kernel"])
    # the run's dropout is not the teacher's architecture (it runs without dropout) ...
    c.teacher_checkpoint = str(tiny_teacher_dir)
    c.model.dropout = 0.0
    no_dropout = _teacher_of(c, tmp_path / "no_dropout", monkeypatch)
    np.testing.assert_array_equal(no_dropout["classifier"]["kernel"],
                                  as_is["classifier"]["kernel"])
    # ... but another layer norm is, and the error names what differs
    other = tmp_path / "other_eps"
    shutil.copytree(tiny_teacher_dir, other)
    hf = json.loads((other / "config.json").read_text())
    hf["layer_norm_eps"] = 1e-5
    (other / "config.json").write_text(json.dumps(hf))
    c.teacher_checkpoint = str(other)
    with pytest.raises(dj.CheckpointError, match=r"another architecture .*layer_norm_eps="
                                                 r"1e-05 \(pretrained: 1e-12\)$"):
        trainer.train_and_evaluate(c, tmp_path / "other")


def test_gradient_accumulation_trains_like_a_large_batch_and_resumes_exactly(
        tiny_bert_dir, tmp_path, monkeypatch):
    """Batches of 8 accumulated twice take the updates of batches of 16 (no dropout, one
    clip per update), as many per epoch; clipping each partial sum, as the official
    code, changes them; a run stopped after its second update resumes to the same
    parameters."""
    def config(bs, accum, **kw):
        # a clip norm every update's gradient exceeds (their norms are 0.02-0.6)
        return tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher", **{
            "teacher.max_steps": 0, "teacher.num_epochs": 1.0, "teacher.batch_size": bs,
            "teacher.grad_accum_steps": accum, "teacher.clip_partial_sums": False,
            "teacher.max_grad_norm": 0.01, "model.dropout": 0.0, "checkpoint_every": 1,
            **kw})

    def final_params(workdir):
        return jax.tree_util.tree_leaves(trainer.load_run(workdir, "teacher").params)

    def updates(workdir):
        rows = [json.loads(line) for line in
                (workdir / "teacher" / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in rows if "loss" in r]

    trainer.train_and_evaluate(config(16, 1), tmp_path / "large")
    trainer.train_and_evaluate(config(8, 2), tmp_path / "accum")
    assert updates(tmp_path / "large") == updates(tmp_path / "accum") == [1, 2, 3, 4]  # 64 // 16
    memory = json.loads((tmp_path / "accum" / "teacher" / "memory.json").read_text())
    assert memory["batch_size"] == 8 and memory["grad_accum_steps"] == 2
    for a, b in zip(final_params(tmp_path / "large"), final_params(tmp_path / "accum")):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)

    # interrupted after the checkpoint of update 2, then run again: it resumes there
    class Stop(Exception):
        pass

    save = ckpt.StageCheckpoints.save_latest

    def save_then_stop(self, step, *args, **kw):
        save(self, step, *args, **kw)
        if step == 2:
            raise Stop
    monkeypatch.setattr(ckpt.StageCheckpoints, "save_latest", save_then_stop)
    with pytest.raises(Stop):
        trainer.train_and_evaluate(config(8, 2, **{"teacher.clip_partial_sums": True}),
                                   tmp_path / "resumed")
    monkeypatch.setattr(ckpt.StageCheckpoints, "save_latest", save)
    trainer.train_and_evaluate(config(8, 2, **{"teacher.clip_partial_sums": True}),
                               tmp_path / "resumed")
    assert updates(tmp_path / "resumed") == [1, 2, 3, 4]
    trainer.train_and_evaluate(config(8, 2, **{"teacher.clip_partial_sums": True}),
                               tmp_path / "whole")
    for a, b in zip(final_params(tmp_path / "whole"), final_params(tmp_path / "resumed")):
        np.testing.assert_array_equal(a, b)
    # the partial clips reach the step: these updates are not the large batch's
    gap = max(float(np.abs(a - b).max()) for a, b in zip(
        final_params(tmp_path / "whole"), final_params(tmp_path / "large")))
    assert gap > 1e-5, gap


def test_a_stage_with_fewer_examples_than_one_update_fails_before_any_stage_trains(
        tiny_bert_dir, tmp_path):
    c = tiny_train_config(tiny_bert_dir, tmp_path, stage="all")
    c.data.keep_partial_batch = False          # (kept, 64 rows would make one padded update)
    c.width_depth.grad_accum_steps = 16        # 8 x 16 = 128 rows; the subset has 64
    with pytest.raises(trainer.ConfigError,
                       match=r"64 training examples make no batch of 128 \(config.width_depth."
                             r"batch_size=8 x grad_accum_steps=16\)"):
        trainer.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run" / "teacher").exists()   # the teacher never started


def test_an_epochs_last_partial_batch_trains_unless_dropped(tiny_bert_dir, tmp_path):
    """60 examples in batches of 8: 8 updates an epoch, the last of 4 real rows, as the
    official loader (ceil); 7 with data.keep_partial_batch=false; 5 examples: one update.
    Only a stage that had a partial batch records the setting."""
    def updates(keep, size=60):
        c = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher", **{
            "teacher.max_steps": 0, "teacher.num_epochs": 1.0, "data.train_size": size,
            "data.keep_partial_batch": keep})
        work = tmp_path / f"{keep}-{size}"
        trainer.train_and_evaluate(c, work)
        rows = [json.loads(line) for line in
                (work / "teacher" / "metrics.jsonl").read_text().splitlines()]
        store = ckpt.StageCheckpoints(work / "teacher" / "checkpoints")
        try:
            recorded = store.latest_meta()["training"]
        finally:
            store.close()
        return [r["step"] for r in rows if "loss" in r], recorded

    steps, recorded = updates(True)
    assert steps == list(range(1, 9)) and recorded["data.keep_partial_batch"] is True
    steps, recorded = updates(False)
    assert steps == list(range(1, 8)) and "data.keep_partial_batch" not in recorded
    steps, recorded = updates(True, size=64)     # no partial batch: as before
    assert steps == list(range(1, 9)) and "data.keep_partial_batch" not in recorded
    steps, recorded = updates(True, size=5)      # fewer rows than one batch: one update
    assert steps == [1] and recorded["data.keep_partial_batch"] is True


def test_a_url_workdir_is_refused(tmp_path, tiny_bert_dir):
    with pytest.raises(trainer.ConfigError, match="is a URL"):
        trainer.train_and_evaluate(tiny_train_config(tiny_bert_dir, tmp_path),
                                   "gs://bucket/runs/sst2")
    assert not (pathlib.Path.cwd() / "gs:").exists()   # not made as a local folder


def test_a_resumed_or_reused_stage_records_the_time_of_its_earlier_calls(tiny_bert_dir,
                                                                        tmp_path,
                                                                        monkeypatch):
    """stages.jsonl has a row per call: "seconds" for the call, "stage_seconds" with the
    time earlier calls spent up to the checkpoint it resumed (kept in the checkpoint), or
    that of the finished stage it reused; a resumed checkpoint written before that
    record is counted as unknown."""
    def rows(workdir):
        return [json.loads(x) for x in (workdir / "stages.jsonl").read_text().splitlines()]

    def latest_seconds(workdir):
        store = ckpt.StageCheckpoints(workdir / "teacher" / "checkpoints")
        try:
            return store.latest_meta()["seconds"]
        finally:
            store.close()

    class Stop(Exception):
        pass

    save = ckpt.StageCheckpoints.save_latest

    def save_then_stop(drop_seconds):
        def wrapped(self, step, state, extra=None):
            if drop_seconds:   # as checkpoints were written before they kept their time
                extra = {k: v for k, v in extra.items() if k != "seconds"}
            save(self, step, state, extra)
            if step == 2:
                raise Stop
        return wrapped

    config = tiny_train_config(tiny_bert_dir, tmp_path, stage="teacher", checkpoint_every=1,
                               **{"teacher.max_steps": 4})
    run = tmp_path / "run"
    monkeypatch.setattr(ckpt.StageCheckpoints, "save_latest", save_then_stop(False))
    with pytest.raises(Stop):
        trainer.train_and_evaluate(config, run)
    assert not (run / "stages.jsonl").exists()   # the killed call wrote no row
    at_2 = latest_seconds(run)
    assert at_2 > 0
    monkeypatch.setattr(ckpt.StageCheckpoints, "save_latest", save)
    trainer.train_and_evaluate(config, run)        # resumes at step 2
    (row,) = rows(run)
    assert "earlier_unknown" not in row
    assert row["stage_seconds"] == pytest.approx(row["seconds"] + at_2, abs=0.11)
    at_4 = latest_seconds(run)                     # the time of both calls to step 4
    assert at_2 < at_4 <= row["stage_seconds"] + 0.1

    trainer.train_and_evaluate(config, run)        # finished: reused
    reused = rows(run)[-1]
    assert reused["stage_seconds"] == pytest.approx(reused["seconds"] + at_4, abs=0.11)

    config.stage = "rewire"                        # rewiring keeps its time too
    trainer.train_and_evaluate(config, run)
    trainer.train_and_evaluate(config, run)
    computed, again = rows(run)[-2:]
    assert computed["stage_seconds"] == computed["seconds"]
    store = ckpt.StageCheckpoints(run / "rewire" / "checkpoints")
    info = store.best_info()
    store.close()
    assert 0 < info["seconds"] <= computed["seconds"] + 0.05   # (rows round to 0.1 s)
    assert again["stage_seconds"] == pytest.approx(again["seconds"] + info["seconds"],
                                                   abs=0.11)
    # the collector takes each stage's last whole-stage row
    wall, _ = results.stage_wall_seconds(run)
    assert wall == {"teacher": reused["stage_seconds"], "rewire": again["stage_seconds"]}

    # a checkpoint from before checkpoints kept their time: resumed, counted as unknown
    config.stage = "teacher"
    old = tmp_path / "old"
    monkeypatch.setattr(ckpt.StageCheckpoints, "save_latest", save_then_stop(True))
    with pytest.raises(Stop):
        trainer.train_and_evaluate(config, old)
    monkeypatch.setattr(ckpt.StageCheckpoints, "save_latest", save)
    trainer.train_and_evaluate(config, old)
    (row,) = rows(old)
    assert row["earlier_unknown"] == 1 and row["stage_seconds"] == row["seconds"]
    assert latest_seconds(old) is None   # and stays unknown for a later resume or reuse
