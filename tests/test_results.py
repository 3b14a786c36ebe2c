"""The baselines of the results (direct fine-tuning per shape, DynaBERT without
rewiring) on the tiny model, and their collection into docs/results tables."""
import json
import shutil

import jax
import numpy as np
import pytest

import dynabert_jax as dj
from dynabert_jax import checkpoint as ckpt
from dynabert_jax import results, trainer

from conftest import tiny_train_config


def _like(config):
    hf = json.loads(open(f"{config.model.pretrained}/config.json").read())
    model = dj.DynaBertModel(dj.convert.config_from_hf(hf, head="classification"))
    return model, jax.eval_shape(lambda: dj.init_params(model))


@pytest.fixture(scope="module")
def run_with_baselines(tiny_bert_dir, tmp_path_factory):
    """The chain plus both baselines, without dropout so that runs can be compared
    bit for bit."""
    tmp = tmp_path_factory.mktemp("baselines")
    config = tiny_train_config(tiny_bert_dir, tmp, baselines=("direct", "no_rewire"),
                               **{"model.dropout": 0.0})
    assert trainer.stages_to_run(config) == ("teacher", "rewire", "width", "width_depth",
                                             "direct", "no_rewire")
    trainer.train_and_evaluate(config, tmp / "run")
    return config, tmp / "run"


@pytest.mark.slow
def test_direct_trains_each_shape_alone_from_the_pretrained_weights(run_with_baselines):
    config, run = run_with_baselines
    model, like = _like(config)
    grid = json.loads((run / "direct" / "grid.json").read_text())
    assert grid["stage"] == "direct" and len(grid["subnets"]) == 12
    assert "teacher" in grid
    # The top-level grid stays DynaBERT's.
    assert json.loads((run / "grid.json").read_text())["stage"] == "width_depth"
    init = trainer._pretrained_init(trainer.Context.create(config, run))
    params, _ = ckpt.load_params(run / "direct" / "w0.25_d0.5" / "checkpoints", like)
    # Layers the shape drops never change; the kept heads' query weights do, the dropped
    # heads' do not.
    kept = dj.SubNet(0.25, 0.5).kept_layers(model.config)
    for i in range(model.config.num_hidden_layers):
        a, b = params["encoder"][f"layer_{i}"], init["encoder"][f"layer_{i}"]
        q, q0 = (np.asarray(x["query"]["kernel"]) for x in (a, b))
        if i in kept:
            assert not np.array_equal(q[:, :8], q0[:, :8])   # head 0 of 4 (head size 8)
            np.testing.assert_array_equal(q[:, 8:], q0[:, 8:])
        else:
            jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    # At full size, direct fine-tuning is the teacher's recipe: the same parameters.
    full, _ = ckpt.load_params(run / "direct" / "w1_d1" / "checkpoints", like)
    teacher, _ = ckpt.load_params(run / "teacher" / "checkpoints", like)
    jax.tree_util.tree_map(np.testing.assert_array_equal, full, teacher)


@pytest.mark.slow
def test_no_rewire_equals_the_chain_with_rewiring_disabled(run_with_baselines, tmp_path):
    config, run = run_with_baselines
    _, like = _like(config)
    c = config.copy_and_resolve_references()
    c.rewire.enabled = False
    c.baselines = ()
    c.teacher_checkpoint = ""
    assert trainer.stages_to_run(c) == ("teacher", "width", "width_depth")
    trainer.train_and_evaluate(c, tmp_path / "plain")
    for stage in ("width", "width_depth"):
        a, _ = ckpt.load_params(run / "no_rewire" / stage / "checkpoints", like)
        b, _ = ckpt.load_params(tmp_path / "plain" / stage / "checkpoints", like)
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    rewired, _ = ckpt.load_params(run / "width_depth" / "checkpoints", like)
    plain, _ = ckpt.load_params(run / "no_rewire" / "width_depth" / "checkpoints", like)
    assert not np.array_equal(rewired["encoder"]["layer_0"]["query"]["kernel"],
                              plain["encoder"]["layer_0"]["query"]["kernel"])
    assert len(json.loads((run / "no_rewire" / "grid.json").read_text())["subnets"]) == 12


@pytest.mark.slow
def test_run_records_data_sizes_and_stage_times(run_with_baselines):
    config, run = run_with_baselines
    sizes = json.loads((run / "data.json").read_text())
    # "available" is the size of the files the run read: SST-2's 67,349 / 872 with the
    # shared data, the shipped demo slice without it.
    glue = trainer.resolve_data_dir(config)
    available = {s: len(dj.data.load_glue("sst2", glue, split=s)) for s in ("train", "dev")}
    assert available["train"] > 64 and available["dev"] > 32
    assert sizes["train"] == {"used": 64, "available": available["train"]}
    assert sizes["dev"] == {"used": 32, "available": available["dev"]}
    stages = [json.loads(x)["stage"] for x in (run / "stages.jsonl").read_text().splitlines()]
    assert stages == ["teacher", "rewire", "width", "width_depth", "direct", "no_rewire"]


@pytest.mark.slow
def test_collect_and_render(run_with_baselines, tmp_path):
    _, run = run_with_baselines
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "sst2").symlink_to(run)
    out = tmp_path / "docs"
    out.mkdir()
    (out / "results.md").write_text("# Results\n\nhand-written intro\n\n" + results.BEGIN
                                    + "\nold\n" + results.END + "\n\nhand-written end\n")
    assert results.main(["--runs", str(runs), "--out", str(out)]) == 0
    rec = json.loads((out / "results" / "sst2.json").read_text())
    assert set(rec["baselines"]) == {"dynabert_w", "direct", "no_rewire", "no_rewire_w"}
    assert rec["setup"]["stages"]["direct"] == {"steps": 2, "batch_size": 8,
                                                "learning_rate": 2e-5, "num_epochs": 3.0,
                                                "max_steps": 2, "shapes": 12}
    assert rec["setup"]["data"]["train"]["used"] == 64
    assert rec["setup"]["pad_to_multiple_of"] == 0 and not rec["setup"]["group_by_length"]
    t = rec["targets"]
    cells = {(c["width"], c["depth"]): c["metric"] for c in rec["subnets"]}
    direct = {(c["width"], c["depth"]): c["metric"] for c in rec["baselines"]["direct"]["subnets"]}
    assert t["full_minus_teacher"] == (cells[1.0, 1.0] - rec["teacher"]["metric"]) * 100
    assert t["cells_compared"] == 12
    assert t["cells_at_or_above_direct"] == sum(cells[k] >= direct[k] for k in cells)
    md = (out / "results.md").read_text()
    assert md.startswith("# Results\n\nhand-written intro") and md.endswith("hand-written end\n")
    assert "old" not in md and md.count("| 0.25 | 0.5 |") == 1
    assert "paper (BERT-base)" in md and "92.0" in md   # Table 1's SST-2 (0.25, 0.5)
    assert (out / "results" / "sst2.png").stat().st_size > 1000
    # The results file is a grid.json: select reads it.
    sel = dj.select.select(rec, max_flops=rec["subnets"][-1]["flops"])
    assert (sel.best.width, sel.best.depth) == (0.25, 0.5)


@pytest.mark.slow
def test_collect_reads_each_stage_settings_from_its_checkpoints(run_with_baselines,
                                                                 tmp_path):
    # config.json is the last train.py command's: a later lane (stage=direct, another
    # learning rate, another sequence length) rewrites it. The record still gives each
    # stage the settings it trained with, which its checkpoints recorded.
    _, run = run_with_baselines
    before = results.collect_run(run)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["stage"] = "direct"
    for stage in ("teacher", "width", "width_depth", "direct"):
        config[stage]["learning_rate"] *= 10
        config[stage]["batch_size"] = 4
    config["data"]["max_seq_length"] = 16
    config["seed"] += 1
    (copy / "config.json").write_text(json.dumps(config))
    after = results.collect_run(copy)
    assert after["setup"] == before["setup"]
    assert after["setup"]["stages"]["width"]["learning_rate"] \
        == json.loads((run / "config.json").read_text())["width"]["learning_rate"]
    # A stage folder without checkpoints (older runs, or a hand-made folder) falls back
    # to config.json; looking for them creates nothing.
    shutil.rmtree(copy / "width" / "checkpoints")
    assert ckpt.best_record(copy / "width" / "checkpoints") is None
    assert not (copy / "width" / "checkpoints").exists()
    fallback = results.collect_run(copy)["setup"]["stages"]
    assert fallback["width"]["learning_rate"] == config["width"]["learning_rate"]
    assert fallback["width_depth"] == before["setup"]["stages"]["width_depth"]


def test_results_cli_errors(tmp_path, capsys):
    assert results.main(["--runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no run folders" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert results.main(["--runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no DynaBERT grid" in capsys.readouterr().err


def test_targets_on_a_hand_made_record():
    def grid(vals):
        return {"subnets": [{"width": w, "depth": d, "metric": v} for (w, d), v in vals.items()]}
    rec = grid({(1.0, 1.0): 0.90, (0.25, 0.5): 0.86})
    rec["teacher"] = {"metric": 0.904}
    rec["baselines"] = {"direct": grid({(1.0, 1.0): 0.91, (0.25, 0.5): 0.80})}
    t = results.targets(rec)
    assert t["full_minus_teacher"] == pytest.approx(-0.4) and t["full_within_0.5_of_teacher"]
    assert t["smallest_minus_teacher"] == pytest.approx(-4.4)
    assert not t["smallest_within_3_of_teacher"]
    assert t["minus_direct"] == pytest.approx({"1,1": -1.0, "0.25,0.5": 6.0})
    assert t["cells_at_or_above_direct"] == 1


def test_tables_round_the_gaps_once():
    # MRPC's published (0.25, 0.5): 288/408 against a teacher of 318/408 is -7.353 points,
    # -7.4 to one decimal; rounded to two decimals first (-7.35) it printed -7.3.
    def grid(vals):
        return {"subnets": [{"width": w, "depth": d, "metric": v, "params": 1, "flops": 1}
                            for (w, d), v in vals.items()]}
    rec = grid({(1.0, 1.0): 318 / 408, (0.25, 0.5): 288 / 408})
    rec.update(task="mrpc", metric="acc", teacher={"metric": 318 / 408})
    rec["baselines"] = {"direct": grid({(1.0, 1.0): 318 / 408, (0.25, 0.5): 318 / 408})}
    rec["targets"] = results.targets(rec)
    summary = results.summary_markdown([rec])
    assert "| -7.4 | 1 of 2 | -7.4 at (0.25,0.5) |" in summary
    assert "| 0.25 | 0.5 | 0.0 | 0.00 | **70.6** | 77.9 | -7.4 |" in results.task_markdown(rec)


def test_results_config():
    from configs import results as rc

    c = rc.get_config("task=rte")
    assert c.data.max_seq_length == 128 and c.data.train_size == 2000
    assert c.baselines == ("direct", "no_rewire") and c.direct.learning_rate == 1e-4
    full = rc.get_config("task=mnli,size=full")
    assert full.data.train_size == 0 and full.teacher.learning_rate == 2e-5
    with pytest.raises(ValueError, match="size=cpu has settings"):
        rc.get_config("task=mnli")
    with pytest.raises(ValueError, match="size=cpu has settings"):
        rc.get_config("task=mnli,seq=128")
    q = rc.get_config("task=qnli,seq=128,train_size=500")   # what the error asks for
    assert (q.data.max_seq_length, q.data.train_size, q.teacher.num_epochs) == (128, 500, 1)
    with pytest.raises(ValueError, match="bad config argument"):
        rc.get_config("tsak=rte")
    g = rc.get_config("task=cola,group=1,epochs=2,baselines=direct,train_size=0")
    assert (g.data.pad_to_multiple_of, g.data.group_by_length) == (16, True)
    assert g.teacher.num_epochs == g.width_depth.num_epochs == g.direct.num_epochs == 2.0
    assert g.baselines == ("direct",) and g.data.train_size == 0
    assert rc.get_config("task=rte,baselines=none").baselines == ()
    t = rc.get_config("task=cola,teacher_epochs=3")
    assert t.teacher.num_epochs == t.direct.num_epochs == 3.0 and t.width.num_epochs == 1.0
    assert rc.get_config("task=rte").data.pad_to_multiple_of == 0
    f = rc.get_config("task=stsb,final=1")
    assert f.final.enabled and f.final.num_epochs == 1.0 and f.final.learning_rate == 2e-5
    assert "final" in trainer.stages_to_run(f) and not rc.get_config("task=rte").final.enabled
    assert rc.get_config("task=stsb,final=1,final_lr=1e-4").final.learning_rate == 1e-4
    c = rc.get_config("task=sst2")
    c.baselines = ("direkt",)
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) \['direkt'\]"):
        trainer.stages_to_run(c)


def test_stage_setup_names_gradient_accumulation_only_when_used(tmp_path):
    (tmp_path / "width").mkdir()
    (tmp_path / "width" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)))
    scfg = {"batch_size": 8, "learning_rate": 1e-4, "num_epochs": 1.0, "max_steps": 0,
            "grad_accum_steps": 1}
    assert "grad_accum_steps" not in results._stage_setup(tmp_path, "width", scfg)
    setup = results._stage_setup(tmp_path, "width", dict(scfg, grad_accum_steps=4))
    assert setup["steps"] == 3 and setup["grad_accum_steps"] == 4
    teacher = results._stage_setup(tmp_path, "width", scfg)   # the first stage: none
    record = {"task": "sst2", "metric": "acc", "subnets": [],
              "setup": {"seed": 1, "max_seq_length": 64,
                        "stages": {"teacher": teacher, "width_depth": setup}}}
    assert ("; batch 8 (batches accumulated per update: width_depth 4);"
            in results.task_markdown(record))


def _hand_grid(vals, **kw):
    return dict({"subnets": [{"width": w, "depth": d, "metric": v, "params": 1, "flops": 1}
                             for (w, d), v in vals.items()]}, **kw)


def test_squad_points_are_not_scaled_again(tmp_path):
    # SQuAD's F1 is in points already: 88.0 is 88.0, not 8800.0; a GLUE ratio is x100.
    rec = _hand_grid({(1.0, 1.0): 88.0, (0.25, 0.5): 80.0}, task="squad", metric="f1",
                     teacher={"metric": 90.0}, seq_len=384)
    rec["baselines"] = {"direct": _hand_grid({(1.0, 1.0): 89.0, (0.25, 0.5): 75.0})}
    rec["targets"] = t = results.targets(rec)
    assert t["full_minus_teacher"] == pytest.approx(-2.0)
    assert t["minus_direct"] == pytest.approx({"1,1": -1.0, "0.25,0.5": 5.0})
    md = results.task_markdown(rec)
    assert "- Teacher: **90.0**." in md
    assert "| 1 | 1 | 0.0 | 0.00 | **88.0** | 89.0 | -1.0 |" in md
    assert "8800" not in md
    assert "| squad | 90.0 | 88.0 | -2.0 | -10.0 | 1 of 2 | -1.0 at (1,1) |" in \
        results.summary_markdown([rec])
    glue = _hand_grid({(1.0, 1.0): 0.88}, task="sst2", metric="acc", teacher={"metric": 0.9})
    glue["targets"] = results.targets(glue)
    assert glue["targets"]["full_minus_teacher"] == pytest.approx(-2.0)
    assert "**88.0**" in results.task_markdown(glue)
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    labels = []
    real = plt.Axes.set_ylabel
    try:   # the plot's axis: points as they are, with no "(x100)"
        plt.Axes.set_ylabel = lambda ax, text, *a, **k: labels.append(text) or real(ax, text)
        results.plot(rec, tmp_path / "squad.png")
        results.plot(glue, tmp_path / "sst2.png")
    finally:
        plt.Axes.set_ylabel = real
    assert labels == ["dev f1", "dev acc (x100)"]


def test_stsb_paper_column_says_spearman():
    rec = _hand_grid({(1.0, 1.0): 0.85}, task="stsb", metric="pearson",
                     teacher={"metric": 0.857})
    md = results.task_markdown(rec)
    assert "- Teacher: **85.7** (paper's BERT-base teacher, dev spearmanr: 89.8)." in md
    assert md.splitlines()[-3].endswith("| **DynaBERT** | paper (BERT-base, dev spearmanr) |")
    assert md.splitlines()[-1] == "| 1 | 1 | 0.0 | 0.00 | **85.0** | 90.1 |"
    rec.update(metric="spearmanr")   # a run selected on Spearman: nothing to say
    assert "| paper (BERT-base) |" in results.task_markdown(rec)
    rec.update(task="mrpc", metric="acc")
    assert "| paper (BERT-base) |" in results.task_markdown(rec)


def test_results_cli_bad_latency_input(tmp_path, capsys):
    run = tmp_path / "runs" / "sst2"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    args = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "o")]
    assert results.main(args + ["--latency", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: latency file {tmp_path / 'missing.json'} does not exist\n"
    for bad in ("1,x", "0", ","):
        assert results.main(args + ["--latency-batch-sizes", bad]) == 2
        err = capsys.readouterr().err
        assert "--latency-batch-sizes takes positive integers" in err and \
            len(err.splitlines()) == 1


def _record(task="mrpc"):
    """A published record of 2 cells (MRPC's (0.25, 0.5): -7.353 points, see above)."""
    def grid(vals):
        return {"subnets": [{"width": w, "depth": d, "metric": v, "params": 1, "flops": 1}
                            for (w, d), v in vals.items()]}
    rec = grid({(1.0, 1.0): 318 / 408, (0.25, 0.5): 288 / 408})
    rec.update(task=task, metric="acc", seq_len=96, teacher={"metric": 318 / 408},
               model={"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
                      "num_attention_heads": 12, "intermediate_size": 1536})
    rec["baselines"] = {"direct": grid({(1.0, 1.0): 318 / 408, (0.25, 0.5): 318 / 408})}
    rec["targets"] = {"smallest_minus_teacher": -7.35}   # rounded, as records once were
    return rec


def _latency(path, batch_sizes, device="host b"):
    shape = _record()["model"]
    path.write_text(json.dumps({"device": device, "tables": [
        {"model": "minilm", "shape": shape, "batch_size": b, "seq_len": 128,
         "dtype": "float32", "rows": [{"width": w, "depth": d, "jax_ms": ms * b}
                                      for w, d, ms in ((1.0, 1.0, 20.0), (0.25, 0.5, 3.0),
                                                       (0.5, 0.5, 9.0))]}
        for b in batch_sizes]}))
    return str(path)


def test_publish_again_from_the_records(tmp_path, capsys):
    # --records publishes docs/results/<task>.json again without the run folders: the
    # targets recomputed (unrounded), latency from one file per batch size.
    recs = tmp_path / "records"
    recs.mkdir()
    (recs / "mrpc.json").write_text(json.dumps(_record()))
    (recs / "mrpc-seeds.json").write_text("{}")   # not a task's record: left alone
    out = tmp_path / "docs"
    b1, b32 = _latency(tmp_path / "b1.json", [1]), _latency(tmp_path / "b32.json", [32])
    assert results.main(["--records", str(recs), "--out", str(out),
                         "--latency", b1, b32]) == 0
    rec = json.loads((out / "results" / "mrpc.json").read_text())
    assert rec["targets"]["smallest_minus_teacher"] == pytest.approx(-30 / 408 * 100)
    assert rec["latency"]["1"]["ms"] == {"1,1": 20.0, "0.25,0.5": 3.0, "0.5,0.5": 9.0}
    assert rec["latency"]["32"]["ms"]["0.25,0.5"] == 96.0
    md = (out / "results.md").read_text()
    assert "| 0.25 | 0.5 | 0.0 | 0.00 | 3.0 | 96.0 | **70.6** | 77.9 | -7.4 |" in md
    assert "measured by bench/latency.py on host b" in md
    # Without --latency the columns stay; the same batch size in two files is refused.
    (recs / "mrpc.json").write_text(json.dumps(rec))
    assert results.main(["--records", str(recs), "--out", str(out)]) == 0
    assert json.loads((out / "results" / "mrpc.json").read_text())["latency"] == \
        rec["latency"]
    capsys.readouterr()
    both = _latency(tmp_path / "both.json", [1, 32])
    assert results.main(["--records", str(recs), "--out", str(out),
                         "--latency", b1, both]) == 2
    assert "2 latency files have a table for batch 1 of this model" in \
        capsys.readouterr().err
    assert results.main(["--records", str(recs), "--out", str(out), "--latency", b1]) == 2
    assert "no latency table with batch_size=32" in capsys.readouterr().err
    # All or nothing: a record that cannot be published again stops the others.
    (recs / "sst2.json").write_text(json.dumps(_record("sst2")))
    (recs / "stsb.json").write_text("{}")
    page = (out / "results.md").read_text()
    assert results.main(["--records", str(recs), "--out", str(out)]) == 2
    assert capsys.readouterr().err.endswith("error: nothing written (1 of 3 records "
                                            "skipped)\n")
    assert (out / "results.md").read_text() == page
    assert not (out / "results" / "sst2.json").exists()


def test_records_errors(tmp_path, capsys):
    assert results.main(["--records", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: no <task>.json records under {tmp_path}\n"
    (tmp_path / "sst2.json").write_text('{"task": "sst2"}')
    assert results.main(["--records", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is not a results record" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # one source or the other
        results.main(["--records", str(tmp_path), "--runs", str(tmp_path)])


def test_stage_times_replace_with_whole_stage_rows_and_sum_rows_of_one_call(tmp_path):
    # rows of one call (earlier versions, or resuming a checkpoint that kept no time)
    # add up; a row with the whole stage's time replaces the rows before it
    lines = [{"stage": "teacher", "seconds": 100.0, "device": "cpu"},
             {"stage": "teacher", "seconds": 4.0},
             {"stage": "width", "seconds": 50.0},
             {"stage": "width", "seconds": 30.0, "stage_seconds": 90.0},
             {"stage": "width", "seconds": 2.0, "stage_seconds": 91.0, "device": "gpu"},
             {"stage": "direct", "seconds": 10.0, "stage_seconds": 10.0},
             {"stage": "direct", "seconds": 20.0, "stage_seconds": 25.0,
              "earlier_unknown": 1}]
    (tmp_path / "stages.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    wall, device = results.stage_wall_seconds(tmp_path)
    assert wall == {"teacher": 104.0, "width": 91.0, "direct": 30.0}
    assert device == "gpu"
