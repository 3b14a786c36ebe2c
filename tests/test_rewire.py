"""Network rewiring: importance against an independent PyTorch port of the official
``compute_neuron_head_importance`` loop (never-zeroed gradients), the permutation keeps
the function and puts the most important heads / neurons first, zero-weight padding,
the regression and span losses, and bad input."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.bert import modeling_bert

import dynabert_jax as dj
from dynabert_jax import SubNet, losses, rewire
from dynabert_jax.convert import config_from_hf, params_from_state_dict, read_hf_config

ROWS, BATCH, SEQ = 40, 8, 64   # first 40 RTE dev rows, the official batch size 8
WIDTHS = (0.25, 0.5, 0.75)


# ----------------------------------------------------------------------------------
# The official algorithm, in PyTorch, on a stock Hugging Face BERT
# ----------------------------------------------------------------------------------


def _eager_attention_with_head_mask(module, query, key, value, attention_mask,
                                    scaling=None, dropout=0.0, **kwargs):
    """transformers' ``eager_attention_forward`` plus the official ``head_mask``: the
    post-dropout probabilities of head h are multiplied by ``module.dyna_head_mask[h]``
    (transformers 5 dropped the ``head_mask`` argument)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.nn.functional.softmax(weights, dim=-1)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    mask = getattr(module, "dyna_head_mask", None)
    if mask is not None:
        weights = weights * mask[None, :, None, None]
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def torch_importance(ref, batches, zero_grad=False):
    """A line-by-line port of the official loop: one ``backward`` per batch and, unless
    ``zero_grad``, no zeroing of ``.grad`` in between (spec section 3.1)."""
    layers = ref.bert.encoder.layer
    cfg = ref.config
    head_mask = torch.ones(cfg.num_hidden_layers, cfg.num_attention_heads,
                           requires_grad=True)
    head_imp = torch.zeros(cfg.num_hidden_layers, cfg.num_attention_heads)
    neuron_imp = torch.zeros(cfg.num_hidden_layers, cfg.intermediate_size)
    ref.zero_grad()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modeling_bert, "eager_attention_forward", _eager_attention_with_head_mask)
        for b in batches:
            if zero_grad:
                ref.zero_grad()
                head_mask.grad = None
            for l, layer in enumerate(layers):
                layer.attention.self.dyna_head_mask = head_mask[l]
            inputs = {k: torch.as_tensor(b[k]).long()
                      for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
            ref(**inputs).loss.backward()
            head_imp += head_mask.grad.abs().detach()
            for l, layer in enumerate(layers):
                w1, b1 = layer.intermediate.dense.weight, layer.intermediate.dense.bias
                w2 = layer.output.dense.weight   # torch layout [out, in]
                neuron_imp[l] += ((w1 * w1.grad).sum(dim=1) + b1 * b1.grad).abs().detach()
                neuron_imp[l] += (w2 * w2.grad).sum(dim=0).abs().detach()
    for layer in layers:
        del layer.attention.self.dyna_head_mask
    ref.zero_grad()
    return head_imp.numpy(), neuron_imp.numpy()


@pytest.fixture(scope="module")
def rte_batches(glue_dir, minilm_tokenizer):
    lines = (glue_dir / "RTE" / "dev.tsv").read_text().splitlines()[1:ROWS + 1]
    rows = [line.split("\t") for line in lines]
    enc = minilm_tokenizer([r[1] for r in rows], [r[2] for r in rows],
                           padding="max_length", max_length=SEQ, truncation=True,
                           return_tensors="np")
    labels = np.array([0 if r[3] == "entailment" else 1 for r in rows], np.int32)
    assert 0 < labels.sum() < ROWS
    data = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask",
                                                  "token_type_ids")}
    data["labels"] = labels
    return [{k: v[i:i + BATCH] for k, v in data.items()} for i in range(0, ROWS, BATCH)]


@pytest.fixture(scope="module")
def minilm_cls(minilm_path):
    """HF ``BertForSequenceClassification`` on the real MiniLM weights with a seeded
    classifier, and the same weights in our model."""
    ref = transformers.BertForSequenceClassification.from_pretrained(
        str(minilm_path), num_labels=2, local_files_only=True,
        attn_implementation="eager").eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ref.classifier.weight.copy_(0.02 * torch.randn(ref.classifier.weight.shape,
                                                       generator=gen))
        ref.classifier.bias.zero_()
    config = config_from_hf(read_hf_config(minilm_path), head="classification",
                            num_labels=2)
    state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    return dj.DynaBertModel(config), params_from_state_dict(config, state), ref


@pytest.fixture(scope="module")
def minilm_imp(minilm_cls, rte_batches):
    model, params, ref = minilm_cls
    return {
        "official": rewire.importance(model, params, rte_batches, disable=True),
        "per_batch": rewire.importance(model, params, rte_batches, "per_batch",
                                       disable=True),
        "torch_official": torch_importance(ref, rte_batches),
        "torch_per_batch": torch_importance(ref, rte_batches, zero_grad=True),
    }


def _assert_importance_close(ours, theirs, rtol=1e-4):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-2 * np.abs(b).max())


def test_official_importance_matches_pytorch_port(minilm_imp):
    ours, ref = minilm_imp["official"], minilm_imp["torch_official"]
    assert ours[0].shape == (6, 12) and ours[1].shape == (6, 1536)
    assert ours[0].min() > 0 and ours[1].min() > 0
    _assert_importance_close(ours, ref)
    # Same ranking, hence the same rewired network.
    np.testing.assert_array_equal(np.argsort(-ours[0], axis=1, kind="stable"),
                                  np.argsort(-ref[0], axis=1, kind="stable"))


def test_per_batch_matches_zeroed_pytorch_and_differs_from_official(minilm_imp):
    _assert_importance_close(minilm_imp["per_batch"], minilm_imp["torch_per_batch"])
    official, per_batch = minilm_imp["official"][0], minilm_imp["per_batch"][0]
    # Sum of |prefix sums| vs sum of |per-batch gradients|: the quirk matters.
    assert not np.allclose(official, per_batch, rtol=1e-2)
    # ... and changes which heads a width-0.25 sub-network keeps (top 3 of 12).
    def top3(imp):
        return [set(row) for row in np.argsort(-imp, axis=1)[:, :3]]

    assert top3(official) != top3(per_batch)


# ----------------------------------------------------------------------------------
# The permutation
# ----------------------------------------------------------------------------------


def _apply(model, params, batch, **kw):
    return model.apply({"params": params}, batch["input_ids"],
                       attention_mask=batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids"), **kw)


def _assert_same_function(model, params, rewired, batch, atol=1e-5):
    a, b = _apply(model, params, batch), _apply(model, rewired, batch)
    np.testing.assert_allclose(b.logits, a.logits, atol=atol, rtol=0)
    assert len(a.hidden_states) == model.config.num_hidden_layers + 1
    for x, y in zip(a.hidden_states, b.hidden_states):
        np.testing.assert_allclose(y, x, atol=atol, rtol=0)


def _tiny(head="classification", seed=1):
    cfg = dj.ModelConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3,
                         num_attention_heads=4, intermediate_size=64, head=head,
                         max_position_embeddings=32)
    model = dj.DynaBertModel(cfg)
    params = dj.init_params(model, jax.random.PRNGKey(seed))
    # Non-zero biases and a larger classifier so that every term of the scores matters.
    rng = np.random.default_rng(seed)
    return model, jax.tree_util.tree_map(
        lambda x: jnp.asarray(x + 0.05 * rng.standard_normal(x.shape, np.float32)), params)


def _random_batches(n_batches, rows=8, seq=12, regression=False, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        mask = np.ones((rows, seq), np.int32)
        for r in range(rows):
            mask[r, rng.integers(4, seq + 1):] = 0
        ids = np.where(mask == 1, rng.integers(1, 60, (rows, seq)), 0).astype(np.int32)
        labels = (rng.normal(size=rows).astype(np.float32) if regression
                  else rng.integers(0, 2, rows).astype(np.int32))
        out.append(dict(input_ids=ids, attention_mask=mask,
                        token_type_ids=(rng.random((rows, seq)) < .3).astype(np.int32),
                        labels=labels))
    return out


@pytest.fixture(scope="module")
def tiny_rewired():
    model, params = _tiny()
    batches = _random_batches(4)
    head_imp, neuron_imp = rewire.importance(model, params, batches, disable=True)
    rewired = rewire.permute(params, head_imp, neuron_imp)
    return model, params, batches, head_imp, neuron_imp, rewired


def test_rewired_tiny_computes_the_same_function(tiny_rewired):
    model, params, batches, _, _, rewired = tiny_rewired
    _assert_same_function(model, params, rewired, batches[0])


def test_rewired_minilm_computes_the_same_function(minilm_cls, minilm_imp, rte_batches):
    model, params, _ = minilm_cls
    rewired = rewire.permute(params, *minilm_imp["official"], config=model.config)
    _assert_same_function(model, params, rewired, rte_batches[0])


def _slot_sources(orig, new, axis, block):
    """Which original block (of ``block`` columns / rows along ``axis``) sits in each
    slot of ``new``, found by comparing the weights."""
    orig, new = np.asarray(orig), np.asarray(new)
    n = orig.shape[axis] // block

    def blocks(w):
        return [np.take(w, np.arange(i * block, (i + 1) * block), axis) for i in range(n)]

    ob = blocks(orig)
    src = []
    for nb in blocks(new):
        hits = [i for i, b in enumerate(ob) if np.array_equal(b, nb)]
        assert len(hits) == 1
        src.append(hits[0])
    return np.array(src)


def test_narrower_subnets_keep_the_top_heads_and_neurons(tiny_rewired):
    model, params, batches, head_imp, neuron_imp, rewired = tiny_rewired
    cfg = model.config
    d = cfg.head_dim
    for l in range(cfg.num_hidden_layers):
        o, n = params["encoder"][f"layer_{l}"], rewired["encoder"][f"layer_{l}"]
        heads = _slot_sources(o["query"]["kernel"], n["query"]["kernel"], 1, d)
        # Q, K, V, their biases and the attention-output rows moved together.
        for name in ("key", "value"):
            np.testing.assert_array_equal(
                _slot_sources(o[name]["kernel"], n[name]["kernel"], 1, d), heads)
            np.testing.assert_array_equal(
                _slot_sources(o[name]["bias"], n[name]["bias"], 0, d), heads)
        np.testing.assert_array_equal(_slot_sources(
            o["attention_output"]["kernel"], n["attention_output"]["kernel"], 0, d), heads)
        neurons = _slot_sources(o["intermediate"]["kernel"], n["intermediate"]["kernel"],
                                1, 1)
        np.testing.assert_array_equal(
            _slot_sources(o["output"]["kernel"], n["output"]["kernel"], 0, 1), neurons)
        np.testing.assert_array_equal(n["intermediate"]["bias"],
                                      np.asarray(o["intermediate"]["bias"])[neurons])
        for width in WIDTHS:
            sub = SubNet(width)
            k, f = sub.num_heads(cfg), sub.ffn_size(cfg)
            top_heads = set(np.argsort(-head_imp[l])[:k])
            top_neurons = set(np.argsort(-neuron_imp[l])[:f])
            assert set(heads[:k]) == top_heads and set(neurons[:f]) == top_neurons
        np.testing.assert_array_equal(heads, np.argsort(-head_imp[l], kind="stable"))
    # Unchanged: biases of the output projections, LayerNorms, embeddings, heads.
    for l in range(cfg.num_hidden_layers):
        o, n = params["encoder"][f"layer_{l}"], rewired["encoder"][f"layer_{l}"]
        for name in ("attention_output", "output"):
            np.testing.assert_array_equal(n[name]["bias"], o[name]["bias"])
    for name in ("embeddings", "pooler", "classifier"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, rewired[name], params[name])


def test_subnet_of_rewired_equals_original_with_only_top_units(tiny_rewired):
    """Width w on the rewired params = the original network with every head / neuron
    outside the per-layer top-k masked to zero."""
    model, params, batches, head_imp, neuron_imp, rewired = tiny_rewired
    cfg = model.config
    for width in WIDTHS:
        sub = SubNet(width)
        k, f = sub.num_heads(cfg), sub.ffn_size(cfg)
        hm, fm = np.zeros_like(head_imp), np.zeros_like(neuron_imp)
        for l in range(cfg.num_hidden_layers):
            hm[l, np.argsort(-head_imp[l], kind="stable")[:k]] = 1
            fm[l, np.argsort(-neuron_imp[l], kind="stable")[:f]] = 1
        masked = _apply(model, params, batches[1], head_mask=hm, ffn_mask=fm)
        narrow = _apply(model, rewired, batches[1], subnet=sub)
        np.testing.assert_allclose(narrow.logits, masked.logits, atol=1e-5)
        np.testing.assert_allclose(narrow.hidden_states[-1], masked.hidden_states[-1],
                                   atol=1e-5)


def _assert_ranked(imp_new, imp_old):
    """Importance recomputed on the rewired params is the old one, sorted per layer."""
    expected = -np.sort(-imp_old, axis=1)
    np.testing.assert_allclose(imp_new, expected, rtol=1e-3,
                               atol=1e-5 * np.abs(imp_old).max())
    assert (np.diff(imp_new, axis=1) <= 1e-4 * np.abs(imp_old).max()).all()


def test_importance_of_rewired_network_is_non_increasing(tiny_rewired):
    model, _, batches, head_imp, neuron_imp, rewired = tiny_rewired
    h, n = rewire.importance(model, rewired, batches, disable=True)
    _assert_ranked(h, head_imp)
    _assert_ranked(n, neuron_imp)


def test_importance_of_rewired_minilm_is_non_increasing(minilm_cls, minilm_imp,
                                                        rte_batches):
    model, params, _ = minilm_cls
    head_imp, neuron_imp = minilm_imp["official"]
    rewired, h, n = rewire.rewire_network(model, params, rte_batches[:1], disable=True)
    h_all, n_all = rewire.importance(
        model, rewire.permute(params, head_imp, neuron_imp), rte_batches, disable=True)
    _assert_ranked(h_all, head_imp)
    _assert_ranked(n_all, neuron_imp)
    # rewire_network = importance + permute.
    h1, n1 = rewire.importance(model, params, rte_batches[:1], disable=True)
    np.testing.assert_array_equal(h, h1)
    jax.tree_util.tree_map(np.testing.assert_array_equal, rewired,
                           rewire.permute(params, h1, n1))


def test_permute_is_pure_stable_and_keeps_container_type():
    model, params = _tiny()
    before = jax.tree_util.tree_map(np.array, params)
    L, H, F = 3, 4, 64
    head_imp = np.tile([0.1, 0.4, 0.2, 0.3], (L, 1))       # order 1, 3, 2, 0
    out = rewire.permute(params, head_imp, np.random.default_rng(0).random((L, F)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, before)
    d = 32 // H
    for name in ("query", "key", "value"):
        np.testing.assert_array_equal(
            out["encoder"]["layer_2"][name]["kernel"][:, :d],
            before["encoder"]["layer_2"][name]["kernel"][:, d:2 * d])
        np.testing.assert_array_equal(
            out["encoder"]["layer_2"][name]["bias"][3 * d:],
            before["encoder"]["layer_2"][name]["bias"][:d])
    # Ties keep the lower index first: equal (or already sorted) importance is identity.
    same = rewire.permute(params, np.ones((L, H)), np.ones((L, F)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, before)
    desc = rewire.permute(params, -np.tile(np.arange(H), (L, 1)),
                          -np.tile(np.arange(F), (L, 1)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, desc, before)
    frozen = rewire.permute(flax.core.freeze(params), np.ones((L, H)), np.ones((L, F)))
    assert isinstance(frozen, flax.core.FrozenDict)


# ----------------------------------------------------------------------------------
# Losses, padding, bad input
# ----------------------------------------------------------------------------------


def test_regression_head_matches_hand_computation():
    """MSE head; the official accumulation written out with full gradient trees."""
    model, params = _tiny("regression")
    batches = _random_batches(3, regression=True, seed=3)
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads

    def loss(p, head_mask, b):
        logits = _apply(model, p, b, head_mask=head_mask).logits
        return jnp.mean((logits[:, 0] - b["labels"]) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    acc_p = jax.tree_util.tree_map(lambda x: np.zeros(x.shape), params)
    acc_h = np.zeros((L, H))
    head_imp, neuron_imp = np.zeros((L, H)), np.zeros((L, cfg.intermediate_size))
    for b in batches:
        gp, gh = grad(params, jnp.ones((L, H)), b)
        acc_p = jax.tree_util.tree_map(lambda a, g: a + np.asarray(g, np.float64),
                                       acc_p, gp)
        acc_h = acc_h + np.asarray(gh, np.float64)
        head_imp += np.abs(acc_h)
        for l in range(L):
            p, g = params["encoder"][f"layer_{l}"], acc_p["encoder"][f"layer_{l}"]
            w1, b1 = np.asarray(p["intermediate"]["kernel"]), np.asarray(
                p["intermediate"]["bias"])
            w2 = np.asarray(p["output"]["kernel"])
            neuron_imp[l] += np.abs((w1 * g["intermediate"]["kernel"]).sum(0)
                                    + b1 * g["intermediate"]["bias"])
            neuron_imp[l] += np.abs((w2 * g["output"]["kernel"]).sum(1))
    ours = rewire.importance(model, params, batches, disable=True)
    _assert_importance_close(ours, (head_imp, neuron_imp), rtol=1e-4)


def test_span_loss_is_the_hf_qa_loss():
    model, params = _tiny("span")
    rng = np.random.default_rng(0)
    seq = 12
    logits = jnp.asarray(rng.normal(size=(4, seq, 2)).astype(np.float32))
    start = np.array([3, 0, 40, 5], np.int32)   # 40 is out of range: ignored
    end = np.array([5, 11, -2, 7], np.int32)    # -2 is clamped to 0, as HF does
    weight = np.array([1, 1, 1, 0], np.float32)  # the last row is padding
    ours = losses.task_loss(model.config.head, logits, dict(
        start_positions=start, end_positions=end, weight=weight))
    t = torch.tensor(np.asarray(logits)[:3])
    ce = torch.nn.CrossEntropyLoss(ignore_index=seq)
    s, e = (torch.as_tensor(p[:3]).long().clamp(0, seq) for p in (start, end))
    ref = (ce(t[..., 0], s) + ce(t[..., 1], e)) / 2
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)
    # And importance runs end to end with a span head.
    batches = _random_batches(2)
    for b in batches:
        labels = b.pop("labels")
        b["start_positions"], b["end_positions"] = labels + 1, labels * 0 + 3
    h, n = rewire.importance(model, params, batches, disable=True)
    assert h.shape == (3, 4) and n.shape == (3, 64) and h.min() > 0 and n.min() > 0


def _pad(batch, rows, seed=7):
    """Pad with *garbage* zero-weight rows: they must not contribute at all."""
    rng = np.random.default_rng(seed)
    n, seq = batch["input_ids"].shape
    out = {}
    for k, v in batch.items():
        extra = rng.integers(0, 2 if k != "input_ids" else 60, (rows - n,) + v.shape[1:])
        out[k] = np.concatenate([v, extra.astype(v.dtype)])
    out["weight"] = np.r_[np.ones(n), np.zeros(rows - n)].astype(np.float32)
    return out


def test_zero_weight_padding_changes_nothing():
    model, params = _tiny()
    full = _random_batches(2, seed=5)
    five = {k: v[:5] for k, v in full[1].items()}
    padded = _pad(five, 8)
    for mode in rewire.ACCUMULATE:
        a = rewire.importance(model, params, [five], mode, disable=True)
        b = rewire.importance(model, params, [padded], mode, disable=True)
        # Padding changes the matmul shapes, so XLA's CPU kernels may sum in another
        # order: on an Intel Xeon one small score moved by 2.7e-5 relative (none did on
        # the AMD EPYC machines). Garbage rows that counted move the scores by about 50%
        # (median), which the last check shows this tolerance would catch.
        _assert_importance_close(a, b, rtol=1e-4)
        # A short last batch is padded automatically; an all-padding batch is skipped.
        c = rewire.importance(model, params, [full[0], five], mode, disable=True)
        empty = dict(padded, weight=np.zeros(8, np.float32))
        d = rewire.importance(model, params, [full[0], padded, empty], mode, disable=True)
        _assert_importance_close(c, d, rtol=1e-4)
        counted = dict(padded, weight=np.ones(8, np.float32))
        leak = rewire.importance(model, params, [counted], mode, disable=True)
        for ours, wrong in zip(a, leak):
            assert np.median(np.abs(wrong - ours) / np.abs(ours)) > 0.1


def test_bad_input_is_rejected_clearly():
    model, params = _tiny()
    batches = _random_batches(1)
    with pytest.raises(ValueError, match=r"accumulate='sum'.*official.*per_batch"):
        rewire.importance(model, params, batches, accumulate="sum")
    headless = dj.DynaBertModel(dj.ModelConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64))
    with pytest.raises(ValueError, match="no head"):
        rewire.importance(headless, dj.init_params(headless), batches)
    with pytest.raises(ValueError, match="lacks.*labels"):
        rewire.importance(model, params, [{k: v for k, v in batches[0].items()
                                           if k != "labels"}], disable=True)
    h, n = np.ones((3, 4)), np.ones((3, 64))
    with pytest.raises(ValueError, match="head_imp"):
        rewire.permute(params, np.ones((2, 4)), n)
    with pytest.raises(ValueError, match="head_imp"):
        rewire.permute(params, np.ones((3, 5)), n)          # 5 does not divide 32
    with pytest.raises(ValueError, match="heads per layer"):
        rewire.permute(params, np.ones((3, 2)), n, config=model.config)
    with pytest.raises(ValueError, match="neuron_imp"):
        rewire.permute(params, h, np.ones((3, 63)))
    with pytest.raises(ValueError, match="non-finite"):
        rewire.permute(params, np.full((3, 4), np.nan), n)
    with pytest.raises(ValueError, match="encoder"):
        rewire.permute({"classifier": params["classifier"]}, h, n)
