"""The sub-network rules, asserted against the tables of the spec (sections 1.1, 2.1, 2.3)."""
import numpy as np
import pytest

from dynabert_jax import DEPTHS, WIDTHS, ModelConfig, SubNet, grid

BERT_BASE = ModelConfig()  # 12 layers, 12 heads of 64, FFN 3072
MINILM = ModelConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536)
BERT_LARGE_DEPTH = ModelConfig(hidden_size=1024, num_hidden_layers=24,
                               num_attention_heads=16, intermediate_size=4096)


@pytest.mark.parametrize("width, heads, qkv, ffn", [
    (1.0, 12, 768, 3072),
    (0.75, 9, 576, 2304),
    (0.5, 6, 384, 1536),
    (0.25, 3, 192, 768),
    (0.125, 2, 128, 512),    # round(1.5) = 2 (half to even)
    (0.375, 4, 256, 1024),   # round(4.5) = 4 (half to even)
])
def test_width_table_bert_base(width, heads, qkv, ffn):
    s = SubNet(width=width)
    assert s.num_heads(BERT_BASE) == heads
    assert s.num_heads(BERT_BASE) * BERT_BASE.head_dim == qkv
    assert s.ffn_size(BERT_BASE) == ffn


def test_width_uses_config_not_bert_base_constants():
    # Official code on MiniLM: width 0.75 keeps 9 heads of 32, Q/K/V 288, FFN 1152.
    s = SubNet(0.75)
    assert s.num_heads(MINILM) == 9
    assert s.num_heads(MINILM) * MINILM.head_dim == 288
    assert s.ffn_size(MINILM) == 1152


@pytest.mark.parametrize("config, depth, kept", [
    (BERT_BASE, 1.0, tuple(range(12))),
    (BERT_BASE, 0.75, (0, 1, 2, 4, 5, 6, 8, 9, 10)),
    (BERT_BASE, 0.5, (0, 2, 4, 6, 8, 10)),
    (BERT_BASE, 0.25, (0, 4, 8)),
    (MINILM, 1.0, (0, 1, 2, 3, 4, 5)),
    (MINILM, 0.75, (0, 1, 2, 4)),   # round(4.5) = 4 layers, not 5
    (MINILM, 0.5, (0, 2, 4)),
    (BERT_LARGE_DEPTH, 0.75, (0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 16, 17, 18, 20, 21, 22)),
    (BERT_LARGE_DEPTH, 0.5, tuple(range(0, 24, 2))),
])
def test_kept_layers(config, depth, kept):
    s = SubNet(depth=depth)
    assert s.kept_layers(config) == kept
    assert s.num_layers(config) == len(kept)


@pytest.mark.parametrize("config, depth, teacher", [
    (BERT_BASE, 1.0, tuple(range(13))),
    (BERT_BASE, 0.75, (0, 1, 2, 4, 5, 6, 8, 9, 10, 12)),
    (BERT_BASE, 0.5, (0, 2, 4, 6, 8, 10, 12)),
    (MINILM, 0.75, (0, 1, 2, 4, 6)),
    (MINILM, 0.5, (0, 2, 4, 6)),
])
def test_teacher_alignment(config, depth, teacher):
    s = SubNet(depth=depth)
    t = s.teacher_hidden_indices(config)
    assert t == teacher
    assert len(t) == s.num_layers(config) + 1   # one per student hidden state
    assert t[0] == 0 and t[-1] == config.num_hidden_layers


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, 2, float("nan"), float("inf"),
                                 np.float32("nan"), np.float32(1.5), np.int64(0)])
def test_out_of_range_is_value_error(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SubNet(width=bad)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SubNet(depth=bad)


def test_non_number_is_type_error():
    with pytest.raises(TypeError):
        SubNet(width="0.5")
    with pytest.raises(TypeError):
        SubNet(width=True)


def test_numpy_bool_is_type_error():
    with pytest.raises(TypeError):
        SubNet(depth=np.bool_(True))


@pytest.mark.parametrize("value", [np.float32(0.25), np.float32(0.5), np.float16(0.75),
                                   np.float64(0.5), np.int64(1), np.int32(1)])
def test_numpy_scalars_are_plain_floats(value):
    # A SubNet is a jit static argument: one built from a numpy scalar must equal and
    # hash like the one built from the same Python float, so it reuses its executable.
    s = SubNet(value, value)
    assert type(s.width) is float and type(s.depth) is float
    plain = SubNet(float(value), float(value))
    assert s == plain and hash(s) == hash(plain)
    assert s.num_heads(BERT_BASE) == plain.num_heads(BERT_BASE)


def test_numpy_float32_converts_exactly():
    # float() is exact: float32(0.1) is not 0.1, so it is a different SubNet.
    assert SubNet(np.float32(0.1)).width == float(np.float32(0.1)) != 0.1


def test_width_that_keeps_no_head():
    s = SubNet(width=0.04)  # round(12 * 0.04) = round(0.48) = 0
    with pytest.raises(ValueError, match="keeps no attention head.*width"):
        s.num_heads(BERT_BASE)
    with pytest.raises(ValueError, match="keeps no attention head"):
        s.validate(BERT_BASE)


def test_depth_that_keeps_no_layer():
    s = SubNet(depth=0.08)  # round(6 * 0.08) = round(0.48) = 0
    with pytest.raises(ValueError, match="keeps no layer.*depth"):
        s.kept_layers(MINILM)


def test_hashable_frozen_and_normalised():
    assert SubNet(1, 1) == SubNet(1.0, 1.0)
    assert hash(SubNet(0.5, 0.75)) == hash(SubNet(0.5, 0.75))
    assert len({SubNet(0.5), SubNet(0.5, 1.0), SubNet(0.25)}) == 2
    with pytest.raises(Exception):
        SubNet().width = 0.5


def test_grid_official_order():
    g = grid()
    assert len(g) == len(WIDTHS) * len(DEPTHS) == 12
    assert g[:5] == (SubNet(1, 1), SubNet(.75, 1), SubNet(.5, 1), SubNet(.25, 1), SubNet(1, .75))
    assert g[-1] == SubNet(.25, .5)
    assert grid(depths=(1.0,)) == (SubNet(1), SubNet(.75), SubNet(.5), SubNet(.25))
