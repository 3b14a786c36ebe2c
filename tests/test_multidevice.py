"""The same train step on a mesh of 8 CPU devices (data parallel, and FSDP) gives the
loss and parameters of one device. Runs in a subprocess: the device count is fixed when
JAX starts."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    import dynabert_jax as dj
    from dynabert_jax import sharding, steps

    assert jax.device_count() == 8, jax.devices()
    cfg = dj.ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=4, intermediate_size=64, head="classification")
    model = dj.DynaBertModel(cfg)
    student = dj.init_params(model, jax.random.PRNGKey(1))
    teacher = dj.init_params(model, jax.random.PRNGKey(2))
    rng = np.random.default_rng(0)
    batches = [{"input_ids": rng.integers(1, 64, (16, 12)).astype(np.int32),
                "attention_mask": np.ones((16, 12), np.int32),
                "token_type_ids": np.zeros((16, 12), np.int32),
                "labels": rng.integers(0, 2, 16).astype(np.int32)} for _ in range(3)]
    tx, _ = steps.make_optimizer(1e-3, 10)
    # Three students of different widths and depths (the full grid compiles 4x longer
    # and checks nothing more about sharding).
    students = (dj.SubNet(1.0, 1.0), dj.SubNet(0.5, 0.75), dj.SubNet(0.25, 0.5))
    fn = steps.make_train_step(model, students, steps.LossSpec("distill", 1.0, 1.0), tx)

    def run(n, fsdp, fn=fn, layout=lambda b: b):
        mesh = sharding.make_mesh(n)
        state0 = steps.init_state(student, tx)
        # min_size=0: with FSDP every array the 8 devices divide is split (a stress test;
        # by default arrays under 16K elements stay replicated).
        st_sh = sharding.tree_shardings(state0, mesh, fsdp, min_size=0)
        t_sh = sharding.tree_shardings(teacher, mesh, fsdp, min_size=0)
        b_sh = {k: sharding.batch_sharding(mesh) for k in batches[0]}
        step = jax.jit(fn, in_shardings=(st_sh, t_sh, b_sh, sharding.replicated(mesh)),
                       out_shardings=(st_sh, sharding.replicated(mesh)), donate_argnums=0)
        state = jax.device_put(jax.tree_util.tree_map(jnp.copy, state0), st_sh)
        t = jax.device_put(teacher, t_sh)
        if n > 1 and not fsdp:   # data parallel: only the gradients' all-reduce
            text = step.lower(state0, teacher, sharding.shard_batch(layout(batches[0]), mesh),
                              jax.random.PRNGKey(0)).compile().as_text()
            for op in ("all-to-all", "all-gather", "collective-permute"):
                assert op not in text, f"{op} in the data-parallel step"
        losses = []
        for b in batches:
            state, m = step(state, t, sharding.shard_batch(layout(b), mesh),
                            jax.random.PRNGKey(0))
            losses.append(float(m["loss"]))
        if fsdp:
            k = state.params["encoder"]["layer_0"]["intermediate"]["kernel"]
            assert len({str(s.index) for s in k.addressable_shards}) == 8, "FSDP did not shard"
        return np.array(losses), jax.device_get(state.params)

    # Gradient accumulation: two micro-batches of 8 rows, each spread over all devices
    accum = steps.make_train_step(model, students[:2], steps.LossSpec("distill", 1.0, 1.0),
                                  tx, accum_steps=2, partial_clip_norm=1.0)
    layout = lambda b: dj.data.interleave_micro_batches(b, 2)

    cases = [(False, fn, lambda b: b), (True, fn, lambda b: b), (False, accum, layout)]
    bases = {}
    for fsdp, step_fn, lay in cases:
        if step_fn not in bases:
            bases[step_fn] = run(1, False, step_fn, lay)
        base_l, base_p = bases[step_fn]
        l, p = run(8, fsdp, step_fn, lay)
        np.testing.assert_allclose(l, base_l, rtol=1e-5)
        # Parameters: relative error of the whole tree <= 1e-5, every element within 1e-6.
        # (Summing the batch gradient per device then across devices rounds differently;
        # where a gradient nearly cancels, Adam's g / sqrt(v) turns that into ~1e-7. The
        # key bias, whose true gradient is 0, moves by rounding noise alone, so a
        # per-tensor relative error is meaningless there.)
        flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
        a, b = flat(p), flat(base_p)
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b), np.linalg.norm(a - b)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    print("OK", base_l)
""")


@pytest.mark.slow
def test_8_devices_equal_1_device():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


BATCHES = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    from configs import default
    from dynabert_jax import trainer

    c = default.get_config()
    c.stage = "width_depth"
    assert trainer.stages_to_run(c) == ("width_depth",)
    c.width_depth.batch_size = 12        # 8 devices cannot share 12 examples evenly
    try:
        trainer.stages_to_run(c)
    except trainer.ConfigError as e:
        print("ERROR", e)
    c.width_depth.batch_size, c.teacher.batch_size = 32, 12   # the teacher does not run
    assert trainer.stages_to_run(c) == ("width_depth",)
    c.mesh.num_devices = 4               # 12 on 4 devices is fine
    c.stage = "teacher"
    assert trainer.stages_to_run(c) == ("teacher",)
""")


def test_batch_the_mesh_does_not_divide_is_a_config_error():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", BATCHES], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("ERROR config.width_depth.batch_size=12 must be a positive multiple of the 8 "
            "device(s) of the mesh") in out.stdout, out.stdout
