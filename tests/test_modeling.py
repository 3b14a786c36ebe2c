"""The Flax model against Hugging Face PyTorch: real MiniLM weights and a random RoBERTa,
full network and every (width, depth) of the grid; extraction; static recompilation."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch
import transformers

import dynabert_jax as dj
from dynabert_jax import SubNet
from dynabert_jax.convert import params_from_state_dict, config_from_hf

from torch_ref import pruned_copy, run

GRID = [(w, d) for w in (1.0, 0.75, 0.5, 0.25) for d in (1.0, 0.75, 0.5)]
FALLBACK_PAIRS = [
    ("A man is playing a guitar on the stage.", "Someone plays music."),
    ("The cat sat on the mat.", "A dog barked loudly at the mailman this morning, again."),
    ("No one came.", "Nobody arrived at the party, although many had said they would."),
    ("It rains.", "Weather."),
]


@pytest.fixture(scope="module")
def pairs():
    """Real sentence pairs: the first RTE dev rows when the shared data is there."""
    from conftest import _shared_data_dir

    rte = _shared_data_dir() / "glue" / "RTE" / "dev.tsv"
    if rte.is_file():
        rows = [line.rstrip("\n").split("\t") for line in rte.read_text().splitlines()[1:7]]
        return [(r[1], r[2]) for r in rows]
    return FALLBACK_PAIRS


@pytest.fixture(scope="module")
def minilm(minilm_path, minilm_tokenizer, pairs):
    model, params = dj.from_pretrained_pytorch(minilm_path)
    ref = transformers.BertModel.from_pretrained(str(minilm_path), local_files_only=True).eval()
    batch = dict(minilm_tokenizer([a for a, _ in pairs], [b for _, b in pairs],
                                  padding="max_length", max_length=96, truncation=True,
                                  return_tensors="np"))
    assert batch["attention_mask"].sum(1).min() < 96, "need padded rows"
    return model, params, ref, batch


def _apply(model, params, batch, **kw):
    return model.apply({"params": params}, batch["input_ids"],
                       attention_mask=batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids"), **kw)


def _max_diff_all_positions(ours, theirs):
    """Max |ours - theirs| over every layer and every position, padded ones included: the
    official hidden-state loss is a mean over all ``B x 128 x 768`` elements with no
    attention mask (spec 7.4), so what the model puts at [PAD] positions is trained on
    and must match too. Measured on MiniLM: <= 1.2e-5 (values up to ~10.5; padded rows
    are the larger part, real tokens alone <= 6e-6); on the random RoBERTa <= 1.5e-6."""
    return max(float(np.abs(np.asarray(a) - b.numpy()).max()) for a, b in zip(ours, theirs))


def test_full_network_parity_real_minilm(minilm):
    model, params, ref, batch = minilm
    out = _apply(model, params, batch)
    r = run(ref, batch)
    assert len(out.hidden_states) == 7 == len(r.hidden_states)
    assert _max_diff_all_positions(out.hidden_states, r.hidden_states) <= 5e-5
    np.testing.assert_allclose(out.pooled_output, r.pooler_output.numpy(), atol=1e-4)


@pytest.mark.parametrize("width, depth", GRID)
def test_grid_parity_real_minilm(minilm, width, depth):
    model, params, ref, batch = minilm
    subnet = SubNet(width, depth)
    out = _apply(model, params, batch, subnet=subnet)
    r = run(pruned_copy(ref, width, depth), batch)
    assert len(out.hidden_states) == subnet.num_layers(model.config) + 1 == len(r.hidden_states)
    assert _max_diff_all_positions(out.hidden_states, r.hidden_states) <= 5e-5
    # The extracted dense sub-network computes the same thing with no slicing.
    small_model, small_params = dj.extract_subnetwork(model, params, subnet)
    small = _apply(small_model, small_params, batch)
    for a, b in zip(small.hidden_states, out.hidden_states):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def random_roberta():
    torch.manual_seed(0)
    hf_cfg = transformers.RobertaConfig(
        vocab_size=120, hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=40, num_labels=3)
    ref = transformers.RobertaForSequenceClassification(hf_cfg).eval()
    config = config_from_hf(hf_cfg.to_dict(), head="classification", num_labels=3)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    params = params_from_state_dict(config, state)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 120, size=(3, 16))
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = hf_cfg.pad_token_id
    ids[:, 0] = 0
    return dj.DynaBertModel(config), params, ref, {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("width, depth", GRID)
def test_grid_parity_random_roberta(random_roberta, width, depth):
    model, params, ref, batch = random_roberta
    out = _apply(model, params, batch, subnet=SubNet(width, depth))
    # The official RoBERTa positions are arange(2, seq + 2) for every token, pads included
    # (spec 1.3); Hugging Face's default gives pads position 1, so hand it the official ids
    # to compare padded positions as well.
    seq = batch["input_ids"].shape[1]
    positions = torch.arange(2, seq + 2).expand(len(batch["input_ids"]), seq)
    r = run(pruned_copy(ref, width, depth), batch, position_ids=positions)
    assert _max_diff_all_positions(out.hidden_states, r.hidden_states) <= 5e-5
    np.testing.assert_allclose(out.logits, r.logits.numpy(), atol=1e-4)


def _tiny(head="classification", **kw):
    cfg = dj.ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=4, intermediate_size=64, head=head, **kw)
    model = dj.DynaBertModel(cfg)
    return model, dj.init_params(model, jax.random.PRNGKey(1))


def test_new_subnet_compiles_once_and_never_retraces():
    model, params = _tiny()
    traces = []

    def forward(params, ids, subnet):
        traces.append(subnet)
        return model.apply({"params": params}, ids, subnet=subnet).logits

    fwd = jax.jit(forward, static_argnames="subnet")
    ids = jnp.ones((2, 8), jnp.int32)
    order = [SubNet(1, 1), SubNet(.5, 1), SubNet(1, 1), SubNet(.5, .5), SubNet(.5, 1),
             SubNet(0.5, 0.5), SubNet(1.0, 1.0)]
    for s in order:
        fwd(params, ids, s)
    assert traces == [SubNet(1, 1), SubNet(.5, 1), SubNet(.5, .5)]
    # Smaller sub-networks really compute less: static shapes, not masks.
    flops = {s: fwd.lower(params, ids, s).compile().cost_analysis()["flops"]
             for s in (SubNet(1, 1), SubNet(.25, .5))}
    assert flops[SubNet(.25, .5)] < 0.3 * flops[SubNet(1, 1)]


def test_masks_of_ones_change_nothing_and_zero_mask_equals_pruning():
    model, params = _tiny()
    ids = jax.random.randint(jax.random.PRNGKey(0), (2, 8), 1, 50)
    cfg = model.config
    base = model.apply({"params": params}, ids).logits
    ones = model.apply({"params": params}, ids, head_mask=jnp.ones((4, 4)),
                       ffn_mask=jnp.ones((4, 64))).logits
    np.testing.assert_allclose(ones, base, atol=1e-6)
    # Zeroing heads 2,3 and neurons 32.. everywhere is the width-0.5 sub-network.
    hm = jnp.ones((4, 4)).at[:, 2:].set(0.0)
    fm = jnp.ones((4, 64)).at[:, 32:].set(0.0)
    masked = model.apply({"params": params}, ids, head_mask=hm, ffn_mask=fm).logits
    half = model.apply({"params": params}, ids, subnet=SubNet(0.5)).logits
    np.testing.assert_allclose(masked, half, atol=1e-5)
    # Gradients w.r.t. the masks exist and have the masks' shapes.
    g = jax.grad(lambda h, f: model.apply({"params": params}, ids, head_mask=h,
                                          ffn_mask=f).logits.sum(), argnums=(0, 1))(
        jnp.ones((4, 4)), jnp.ones((4, 64)))
    assert g[0].shape == (4, 4) and g[1].shape == (4, 64)
    assert float(jnp.abs(g[0]).sum()) > 0
    with pytest.raises(ValueError, match="head_mask must have shape"):
        model.apply({"params": params}, ids, head_mask=jnp.ones((4, 2)))
    assert cfg.num_labels == 2


def test_dropout_only_when_not_deterministic():
    model, params = _tiny()
    ids = jnp.ones((2, 8), jnp.int32)
    a = model.apply({"params": params}, ids, deterministic=True).hidden_states
    b = model.apply({"params": params}, ids, deterministic=True).hidden_states
    np.testing.assert_array_equal(a[-1], b[-1])
    c = model.apply({"params": params}, ids, deterministic=False,
                    rngs={"dropout": jax.random.PRNGKey(0)}).hidden_states
    d = model.apply({"params": params}, ids, deterministic=False,
                    rngs={"dropout": jax.random.PRNGKey(1)}).hidden_states
    assert not np.allclose(a[-1], c[-1]) and not np.allclose(c[-1], d[-1])
    # The embedding output (hidden_states[0], which the hidden-state loss compares) carries
    # the embedding dropout in training (spec 2.2, 7.4): inverted dropout at rate 0.1, so
    # each element is either 0 or the deterministic value / 0.9, and about 10% are 0.
    p = model.config.hidden_dropout_prob
    emb, noisy = np.asarray(a[0]), np.asarray(c[0])
    dropped = noisy == 0
    assert 0.03 < dropped.mean() < 0.2, dropped.mean()   # 512 elements, expect ~51 zeros
    np.testing.assert_allclose(noisy[~dropped], emb[~dropped] / (1 - p), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(c[0], d[0])
    # At rate 0 the stochastic path is the deterministic one, embeddings to logits.
    model0, params0 = _tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    det = model0.apply({"params": params0}, ids, deterministic=True)
    sto = model0.apply({"params": params0}, ids, deterministic=False,
                       rngs={"dropout": jax.random.PRNGKey(0)})
    for x, y in zip(det.hidden_states + (det.logits,), sto.hidden_states + (sto.logits,)):
        np.testing.assert_array_equal(x, y)


def test_both_attention_formulations_agree():
    """Without dropout the attention normalises after its product with the values; with
    dropout it runs softmax first. A dropout rate too small to drop anything in float32
    takes the second path with the first's arithmetic: outputs and gradients (w.r.t. the
    parameters and the head mask, which rewiring uses) must agree."""
    model, params = _tiny(attention_probs_dropout_prob=1e-30, hidden_dropout_prob=0.0)
    ids = jax.random.randint(jax.random.PRNGKey(0), (2, 8), 1, 50)
    mask = jnp.ones((2, 8), jnp.int32).at[0, 5:].set(0)
    head_mask = jnp.ones((4, 4)).at[1, 2].set(0.0).at[3, 0].set(0.5)
    weights = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 32))

    def loss(p, h, deterministic):
        out = model.apply({"params": p}, ids, attention_mask=mask, head_mask=h,
                          subnet=SubNet(0.75, 1.0), deterministic=deterministic,
                          rngs={"dropout": jax.random.PRNGKey(2)})
        return jnp.sum(out.logits) + sum(jnp.sum(t * weights) for t in out.hidden_states)

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    (l_after, g_after), (l_first, g_first) = grad(params, head_mask, True), \
        grad(params, head_mask, False)
    np.testing.assert_allclose(l_after, l_first, rtol=1e-6)
    top = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g_first))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_after),
                            jax.tree.leaves(g_first)):
        # the key bias adds a per-query constant to the scores: its true gradient is 0
        scale = top if "key" in jax.tree_util.keystr(path) and b.ndim == 1 \
            else float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


def _rel_max_err(ours, ref):
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_bfloat16_compute_float32_params():
    """bfloat16 compute must track the float32 model in relative terms: the tiny model's
    logits are ~1e-2, so an absolute tolerance would accept anything (even zeros). The
    hidden states are O(1) (LayerNorm outputs). Measured max |bf16 - f32| / max |f32|:
    <= 0.013 per hidden state and <= 0.017 for the logits over several inputs and
    sub-networks (here <= 0.012 and <= 0.012); bfloat16 keeps 8 mantissa bits (0.4%)."""
    model, params = _tiny()
    bf16 = dj.DynaBertModel(model.config, dtype=jnp.bfloat16)
    ids = jax.random.randint(jax.random.PRNGKey(0), (2, 8), 1, 50)
    for subnet in (SubNet(.5, .5), SubNet(1.0, 1.0)):
        out32 = model.apply({"params": params}, ids, subnet=subnet)
        out16 = bf16.apply({"params": params}, ids, subnet=subnet)
        assert out16.hidden_states[-1].dtype == jnp.bfloat16
        assert out16.logits.dtype == jnp.float32
        assert len(out16.hidden_states) == len(out32.hidden_states)
        for i, (h16, h32) in enumerate(zip(out16.hidden_states, out32.hidden_states)):
            assert float(jnp.abs(h32).max()) > 0.5   # O(1): the relative check bites
            assert _rel_max_err(h16, h32) <= 4e-2, (subnet, i, _rel_max_err(h16, h32))
        assert _rel_max_err(out16.pooled_output, out32.pooled_output) <= 4e-2
        assert _rel_max_err(out16.logits, out32.logits) <= 4e-2, \
            (subnet, _rel_max_err(out16.logits, out32.logits))


def test_heads_outputs():
    ids = jnp.ones((2, 8), jnp.int32)
    for head, shape in [("classification", (2, 2)), ("regression", (2, 1)),
                        ("span", (2, 8, 2)), (None, None)]:
        model, params = _tiny(head)
        out = model.apply({"params": params}, ids, output_attentions=True,
                          subnet=SubNet(.75, .75))
        assert (None if out.logits is None else out.logits.shape) == shape
        assert len(out.attentions) == 3 and out.attentions[0].shape == (2, 3, 8, 8)
        assert ("pooler" in params) == (head != "span")
    model, params = _tiny("span")
    out = model.apply({"params": params}, ids)
    assert out.start_logits.shape == out.end_logits.shape == (2, 8)


def test_padding_row_starts_at_zero():
    _, params = _tiny()
    assert float(jnp.abs(params["embeddings"]["word_embeddings"]["embedding"][0]).max()) == 0


def test_bad_subnet_in_forward():
    model, params = _tiny()
    ids = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="keeps no attention head"):
        model.apply({"params": params}, ids, subnet=SubNet(0.1))   # round(0.4) = 0 heads
    with pytest.raises(ValueError, match="keeps no layer"):
        model.apply({"params": params}, ids, subnet=SubNet(1.0, 0.1))
    with pytest.raises(TypeError, match="SubNet"):
        model.apply({"params": params}, ids, subnet=0.5)
