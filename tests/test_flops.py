"""Analytic parameters and FLOPs against the spec's table (section 6.3)."""
import pytest

from dynabert_jax import ModelConfig, SubNet, count_params, encoder_flops
from dynabert_jax.flops import embedding_params, layer_params

BERT = ModelConfig()
ROBERTA = ModelConfig(model_type="roberta", vocab_size=50265, max_position_embeddings=514,
                      type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)

# (width, depth): (BERT params M, RoBERTa params M, FLOPs G) from the spec, section 6.3.
TABLE = {
    (1.0, 1.0): (109.5, 124.6, 22.35), (1.0, 0.75): (88.2, 103.4, 16.76),
    (1.0, 0.5): (67.0, 82.1, 11.17), (0.75, 1.0): (88.2, 103.4, 16.76),
    (0.75, 0.75): (72.3, 87.4, 12.57), (0.75, 0.5): (56.3, 71.5, 8.38),
    (0.5, 1.0): (67.0, 82.1, 11.17), (0.5, 0.75): (56.3, 71.5, 8.38),
    (0.5, 0.5): (45.7, 60.9, 5.59), (0.25, 1.0): (45.7, 60.9, 5.59),
    (0.25, 0.75): (40.4, 55.6, 4.19), (0.25, 0.5): (35.1, 50.2, 2.79),
}


@pytest.mark.parametrize("wd", sorted(TABLE))
def test_spec_table(wd):
    bert_m, roberta_m, gflops = TABLE[wd]
    s = SubNet(*wd)
    assert round(count_params(BERT, s) / 1e6, 1) == bert_m
    assert round(count_params(ROBERTA, s) / 1e6, 1) == roberta_m
    assert round(encoder_flops(BERT, s, seq_len=128) / 1e9, 2) == gflops


def test_exact_counts():
    assert encoder_flops(BERT) == 12 * (8 * 128 * 768 * 768 + 4 * 128 * 768 * 3072
                                        + 4 * 128 * 128 * 768)
    assert count_params(BERT) == 109_482_240
    assert count_params(BERT, SubNet(0.25, 0.5)) == 35_080_320
    assert layer_params(BERT, SubNet(0.5)) == 7_083_264 // 2 + 4_608
    assert embedding_params(BERT) == 23_837_184


def test_head_params_counted_on_request():
    cls = ModelConfig(head="classification", num_labels=3)
    assert count_params(cls, include_head=True) - count_params(cls) == 768 * 3 + 3
    span = ModelConfig(head="span")   # no pooler in a span model
    assert count_params(span) == count_params(BERT) - (768 * 768 + 768)


def test_pooler_counted_only_when_the_model_has_one():
    # The spec's table always counts a pooler (RoBERTa 124.6 M at (1, 1)); a RoBERTa
    # classifier has none, so its true count is one pooler (h * h + h) lower: 124.1 M.
    pooler = 768 * 768 + 768
    roberta_cls = ModelConfig(model_type="roberta", vocab_size=50265,
                              max_position_embeddings=514, type_vocab_size=1,
                              pad_token_id=1, layer_norm_eps=1e-5,
                              head="classification", num_labels=3)
    assert ROBERTA.has_pooler and not roberta_cls.has_pooler
    assert count_params(ROBERTA) == 124_645_632
    assert count_params(roberta_cls) == 124_055_040 == count_params(ROBERTA) - pooler
    assert round(count_params(roberta_cls) / 1e6, 1) == 124.1
    # The head is added on request only: RoBERTa's dense + out_proj.
    assert (count_params(roberta_cls, include_head=True) - count_params(roberta_cls)
            == (768 * 768 + 768) + (768 * 3 + 3))
    # BERT with a span head: no pooler either, 108.9 M against the table's 109.5 M.
    span = ModelConfig(head="span")
    assert count_params(span) == 108_891_648
    assert round(count_params(span) / 1e6, 1) == 108.9
