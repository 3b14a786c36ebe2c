"""compile_options: which XLA options the trainer's programs get, and that 512-bit
vectors compute the same numbers (the trainer's use: tests/test_trainer.py)."""
import jax
import numpy as np
import pytest

import dynabert_jax as dj
from dynabert_jax import compile_options, trainer
from dynabert_jax.compile_options import compiler_options

from conftest import tiny_train_config

WIDE = {"xla_cpu_prefer_vector_width": 512}


def test_options_apply_on_cpu_only_and_512_only_with_avx512(monkeypatch):
    monkeypatch.setattr(compile_options, "cpu_has_avx512", lambda: True)
    assert compiler_options(512, "cpu") == WIDE
    assert compiler_options(256, "cpu") == {"xla_cpu_prefer_vector_width": 256}
    assert compiler_options(0, "cpu") is None                 # XLA's default
    for backend in ("gpu", "cuda", "rocm", "tpu"):            # they do not read it
        assert compiler_options(512, backend) is None
    monkeypatch.setattr(compile_options, "cpu_has_avx512", lambda: False)
    assert compiler_options(512, "cpu") is None
    assert compiler_options(128, "cpu") == {"xla_cpu_prefer_vector_width": 128}


@pytest.mark.parametrize("bad", [384, 1024, -1, True, "512", 512.5])
def test_a_width_xla_has_no_vectors_of_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"choose one of \(0, 128, 256, 512\)"):
        compiler_options(bad, "cpu")


def test_a_bad_width_in_the_config_fails_before_anything_loads(tiny_bert_dir, tmp_path):
    c = tiny_train_config(tiny_bert_dir, tmp_path)
    c.cpu_prefer_vector_width = 384
    with pytest.raises(trainer.ConfigError, match="cpu_prefer_vector_width=384: choose"):
        trainer.stages_to_run(c)


def test_avx512_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    def cpuinfo(flags):
        path = tmp_path / f"cpuinfo{len(flags)}"
        path.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n"
                        "bugs\t\t: avx512f\n\nprocessor\t: 1\n")
        return str(path)

    has = compile_options.cpu_has_avx512.__wrapped__   # uncached
    monkeypatch.setattr(compile_options.platform, "machine", lambda: "x86_64")
    assert has(cpuinfo("fpu sse2 avx2 avx512f avx512bw")) is True
    assert has(cpuinfo("fpu sse2 avx2 avx512_vnni")) is False   # no avx512f itself
    assert has(str(tmp_path / "missing")) is False
    monkeypatch.setattr(compile_options.platform, "machine", lambda: "aarch64")
    assert has(cpuinfo("fpu sse2 avx2 avx512f avx512bw")) is False   # not x86


def test_512_bit_vectors_compute_the_same_forward(monkeypatch):
    # logits and hidden states of a full network and a sub-network, compiled both ways:
    # the same up to float sums taken in another order
    monkeypatch.setattr(compile_options, "cpu_has_avx512", lambda: True)
    cfg = dj.ModelConfig(vocab_size=500, hidden_size=64, num_hidden_layers=4,
                         num_attention_heads=4, intermediate_size=128,
                         head="classification", num_labels=3)
    model = dj.DynaBertModel(cfg)
    params = dj.init_params(model, jax.random.PRNGKey(0))
    ids = np.random.default_rng(0).integers(1, 500, size=(8, 32)).astype(np.int32)
    mask = np.ones_like(ids)
    for subnet in (dj.FULL, dj.SubNet(0.25, 0.5)):
        def f(p, subnet=subnet):
            out = model.apply({"params": p}, ids, attention_mask=mask, subnet=subnet)
            return out.logits, out.hidden_states
        base = jax.jit(f)(params)
        wide = jax.jit(f, compiler_options=compiler_options(512, "cpu"))(params)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), base, wide)
