"""Losses against numpy, and one train step against a hand-computed reference."""
import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

import dynabert_jax as dj
from dynabert_jax import losses, steps


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_soft_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    want = np.mean(-(np.exp(_np_log_softmax(t)) * _np_log_softmax(s)).sum(-1))
    np.testing.assert_allclose(losses.soft_cross_entropy(s, t), want, rtol=1e-6)
    w = np.array([1, 1, 0, 1, 0], np.float32)
    per = -(np.exp(_np_log_softmax(t)) * _np_log_softmax(s)).sum(-1)
    np.testing.assert_allclose(losses.soft_cross_entropy(s, t, w), per[w > 0].mean(),
                               rtol=1e-6)
    # No gradient flows into the teacher.
    g = jax.grad(lambda t_: losses.soft_cross_entropy(s, t_))(jnp.asarray(t))
    assert float(jnp.abs(g).max()) == 0.0


def test_hidden_mse_alignment_and_mask():
    rng = np.random.default_rng(1)
    teacher = [rng.normal(size=(2, 4, 3)) for _ in range(7)]   # L = 6
    student = [rng.normal(size=(2, 4, 3)) for _ in range(5)]   # depth 0.75: 4 layers
    idx = dj.SubNet(1.0, 0.75).teacher_hidden_indices(dj.ModelConfig(num_hidden_layers=6))
    assert idx == (0, 1, 2, 4, 6)
    want = sum(np.mean((s - teacher[i]) ** 2) for s, i in zip(student, idx))
    np.testing.assert_allclose(losses.hidden_mse(student, teacher, idx), want, rtol=1e-6)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    m = mask.astype(bool)
    want_m = sum(np.mean(((s - teacher[i]) ** 2)[m]) for s, i in zip(student, idx))
    np.testing.assert_allclose(losses.hidden_mse(student, teacher, idx, mask), want_m,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="teacher indices"):
        losses.hidden_mse(student[:3], teacher, idx)


def test_task_losses():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = np.array([0, 1, 1])
    want = -np.mean(_np_log_softmax(logits)[np.arange(3), labels])
    np.testing.assert_allclose(losses.task_loss("classification", logits,
                                                {"labels": labels}), want, rtol=1e-6)
    reg = losses.task_loss("regression", np.array([[1.0], [3.0]]),
                           {"labels": np.array([2.0, 2.0]), "weight": np.array([1.0, 0.0])})
    np.testing.assert_allclose(reg, 1.0)
    span = np.zeros((1, 4, 2))
    span[0, 2, 0] = span[0, 3, 1] = 5.0
    got = losses.task_loss("span", span, {"start_positions": np.array([2]),
                                           "end_positions": np.array([3])})
    np.testing.assert_allclose(got, -_np_log_softmax(np.array([0, 0, 5.0, 0]))[2], rtol=1e-5)
    with pytest.raises(ValueError):
        losses.task_loss(None, logits, {"labels": labels})


def _tiny(head="classification", dropout=0.0, seed=1, **kw):
    cfg = dj.ModelConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4,
                         num_attention_heads=4, intermediate_size=64, head=head,
                         num_labels=1 if head == "regression" else 2,
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                         **kw)
    model = dj.DynaBertModel(cfg)
    return model, dj.init_params(model, jax.random.PRNGKey(seed))


def _batch(head="classification", pad=0):
    rng = np.random.default_rng(0)
    ids = rng.integers(pad + 1, 60, size=(4, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[2, 6:] = 0
    ids[mask == 0] = pad
    labels = (rng.integers(0, 2, size=4).astype(np.int32) if head != "regression"
              else rng.normal(size=4).astype(np.float32))
    return {"input_ids": ids, "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids), "labels": labels}


@pytest.mark.parametrize("head, lambdas, reg_mse", [("classification", (1.0, 0.1), False),
                                                    ("classification", (1.0, 1.0), False),
                                                    ("regression", (1.0, 1.0), False),
                                                    ("regression", (0.5, 1.0), True)])
def test_one_step_equals_hand_computation(head, lambdas, reg_mse):
    model, student = _tiny(head)
    _, teacher = _tiny(head, seed=2)
    batch = _batch(head)
    students = dj.grid((1.0, 0.5), (1.0, 0.5))
    spec = steps.LossSpec("distill", *lambdas, regression_logit_mse=reg_mse)
    # the official clip, then plain SGD at rate 1: the update is the clipped gradient
    # itself (Adam's first update is about lr * sign(g), blind to the gradient's scale;
    # make_optimizer has a test of its own)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))
    step = jax.jit(steps.make_train_step(model, students, spec, tx))
    state, m = step(steps.init_state(student, tx), teacher, batch, jax.random.PRNGKey(0))

    # The reference: the losses written out here in jnp on plain forward passes (dropout
    # is 0), differentiated here too, so no loss code of the library is used.
    def fwd(p, s):
        return model.apply({"params": p}, batch["input_ids"],
                           attention_mask=batch["attention_mask"], subnet=s)
    t = fwd(teacher, dj.FULL)

    def reference_losses(p):
        want = []
        for s in students:
            o = fwd(p, s)
            logit = 0.0
            if head == "classification":
                p_t = jax.nn.softmax(t.logits)
                logit = jnp.mean(-(p_t * jax.nn.log_softmax(o.logits)).sum(-1))
            elif reg_mse:
                logit = jnp.mean((o.logits - t.logits) ** 2)
            hid = sum(jnp.mean((h - t.hidden_states[i]) ** 2)
                      for h, i in zip(o.hidden_states, s.teacher_hidden_indices(model.config)))
            want.append(lambdas[0] * logit + lambdas[1] * hid)
        return want

    want = [float(x) for x in reference_losses(student)]
    np.testing.assert_allclose(m["losses"], want, rtol=2e-5)
    np.testing.assert_allclose(m["loss"], sum(want), rtol=2e-5)

    # The update is one step on the *summed* gradient, clipped to norm 1; the [PAD] row
    # gets none (padding_idx). Key biases have a true gradient of 0 (softmax ignores a
    # shift per query): both sides hold rounding noise there, far under the atol.
    g = jax.grad(lambda p: sum(reference_losses(p)))(student)
    g["embeddings"]["word_embeddings"]["embedding"] = \
        g["embeddings"]["word_embeddings"]["embedding"].at[0].set(0.0)
    norm = float(optax.tree.norm(g))
    np.testing.assert_allclose(m["grad_norm"], norm, rtol=1e-4)
    jax.tree_util.tree_map(
        lambda before, after, g_: np.testing.assert_allclose(
            before - after, g_ * min(1.0, 1.0 / norm), rtol=1e-3, atol=2e-7),
        student, state.params, g)
    if head == "regression" and not reg_mse:   # official: pooler and head get no gradient
        np.testing.assert_array_equal(state.params["classifier"]["kernel"],
                                      student["classifier"]["kernel"])
        np.testing.assert_array_equal(state.params["pooler"]["kernel"],
                                      student["pooler"]["kernel"])
    if reg_mse:   # the variant trains the head before final fine-tuning
        assert not np.array_equal(state.params["classifier"]["kernel"],
                                  student["classifier"]["kernel"])


def test_logit_mse_matches_numpy():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(5, 1)), rng.normal(size=(5, 1))
    np.testing.assert_allclose(losses.logit_mse(s, t), np.mean((s - t) ** 2), rtol=1e-6)
    w = np.array([1, 0, 1, 1, 0], np.float32)
    np.testing.assert_allclose(losses.logit_mse(s, t, w), np.mean(((s - t) ** 2)[w > 0]),
                               rtol=1e-6)
    g = jax.grad(lambda t_: losses.logit_mse(s, t_))(jnp.asarray(t))
    assert float(jnp.abs(g).max()) == 0.0


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_pad_row_never_changes_and_dropout_keys_differ(model_type):
    # The official hidden MSE includes padded positions (spec 7.4), so the padding rows
    # do get a gradient there, which padding_idx drops (7.12): BERT's [PAD] word row;
    # RoBERTa's <pad> word row and, with padding-aware position ids, its position row.
    # (A task loss alone gives them none: the attention mask hides padded tokens.)
    kw = ({} if model_type == "bert" else
          dict(model_type="roberta", pad_token_id=1, roberta_position_ids="hf",
               type_vocab_size=1, max_position_embeddings=16))
    model, student = _tiny(dropout=0.1, **kw)
    _, teacher = _tiny(dropout=0.1, seed=2, **kw)
    pad = model.config.pad_token_id
    batch = _batch(pad=pad)
    tx, _ = steps.make_optimizer(1e-2, 10)
    step = jax.jit(steps.make_train_step(model, (dj.FULL, dj.FULL),
                                         steps.LossSpec("distill", 1.0, 1.0), tx))
    state = steps.init_state(student, tx)
    for _ in range(3):
        state, m = step(state, teacher, batch, jax.random.PRNGKey(0))
    tables = ["word_embeddings"] + (["position_embeddings"] if model_type == "roberta"
                                    else [])
    for name in tables:
        emb = state.params["embeddings"][name]["embedding"]
        before = student["embeddings"][name]["embedding"]
        assert float(jnp.abs(emb[pad]).max()) == 0.0, name             # padding row frozen
        rest = np.delete(np.asarray(emb - before), pad, axis=0)
        assert float(np.abs(rest).max()) > 0, name
    losses_ = np.asarray(m["losses"])
    assert losses_[0] != losses_[1]   # same sub-network, own dropout key each


def test_teacher_runs_in_eval_mode_and_students_in_train_mode():
    # spec 4.1 / 7.8: the teacher (no_grad, eval mode) has no dropout; every student runs
    # in train mode with dropout 0.1, each with its own key
    model, student = _tiny(dropout=0.1)
    _, teacher = _tiny(dropout=0.1, seed=2)
    batch = _batch()
    students = dj.grid((1.0, 0.5), (1.0, 0.5))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))
    step = jax.jit(steps.make_train_step(model, students, steps.LossSpec("distill", 1.0, 1.0),
                                         tx))
    rng = jax.random.PRNGKey(0)
    _, m = step(steps.init_state(student, tx), teacher, batch, rng)

    # the step's student keys: its step number (0) folded into rng, split per student
    keys = jax.random.split(jax.random.fold_in(rng, 0), len(students))
    t = model.apply({"params": teacher}, batch["input_ids"],
                    attention_mask=batch["attention_mask"], subnet=dj.FULL,
                    deterministic=True)
    t_h = [np.asarray(h) for h in t.hidden_states]
    p_t = np.exp(_np_log_softmax(np.asarray(t.logits)))

    def loss(s, key, deterministic):
        o = model.apply({"params": student}, batch["input_ids"],
                        attention_mask=batch["attention_mask"], subnet=s,
                        deterministic=deterministic, rngs={"dropout": key})
        return np.mean(-(p_t * _np_log_softmax(np.asarray(o.logits))).sum(-1)) + sum(
            np.mean((np.asarray(h) - t_h[i]) ** 2)
            for h, i in zip(o.hidden_states, s.teacher_hidden_indices(model.config)))

    np.testing.assert_allclose(m["losses"],
                               [loss(s, k, False) for s, k in zip(students, keys)], rtol=2e-5)
    # (and the students' dropout is on, so the match above is about the teacher)
    assert not np.allclose(m["losses"], [loss(s, k, True) for s, k in zip(students, keys)],
                           rtol=1e-3)


def test_make_optimizer_schedule_clip_adam_and_decay_mask():
    lr, total = 0.1, 100
    # WarmupLinearSchedule, stepped after each update: without warm-up (BERT) the first
    # update has the full rate, then linear decay to 0 at t_total
    _, schedule = steps.make_optimizer(lr, total)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 25, 50, 100, 120)],
                               [lr, 0.75 * lr, 0.5 * lr, 0.0, 0.0], rtol=1e-6, atol=1e-9)
    # RoBERTa: warm-up int(0.06 * t_total) (the trainer's default): s / warmup, then
    # (t_total - s) / (t_total - warmup)
    warmup = int(0.06 * total)
    _, schedule = steps.make_optimizer(lr, total, warmup)
    for s in (0, 3, 6, 53, 100, 120):
        want = lr * (s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup)))
        np.testing.assert_allclose(float(schedule(s)), want, rtol=1e-6, atol=1e-9)

    # The transform itself on a tiny tree. With a constant gradient g Adam's
    # bias-corrected moments are g and g^2, so update k is -lr_k * g / (|g| + eps): the
    # component 1e-8 gets half the rate exactly when eps = 1e-8 (outside the sqrt).
    tx, _ = steps.make_optimizer(lr, 4)
    params = {"w": {"kernel": jnp.ones(3)}}
    g = {"w": {"kernel": jnp.array([0.3, -0.2, 1e-8])}}     # norm < 1: no clip
    opt = tx.init(params)
    for k in range(4):
        u, opt = tx.update(g, opt, params)
        np.testing.assert_allclose(u["w"]["kernel"], -lr * (4 - k) / 4 * np.array(
            [1.0, -1.0, 0.5]), rtol=1e-4, err_msg=f"update {k}")
    # betas (0.9, 0.999) with bias correction: two different gradients, Adam by hand
    g1, g2 = np.array([0.3, -0.2, 0.05]), np.array([-0.1, -0.4, 0.05])
    opt = tx.init(params)
    _, opt = tx.update({"w": {"kernel": jnp.asarray(g1)}}, opt, params)
    u, _ = tx.update({"w": {"kernel": jnp.asarray(g2)}}, opt, params)
    mu = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.9 ** 2)
    nu = (0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2) / (1 - 0.999 ** 2)
    np.testing.assert_allclose(u["w"]["kernel"], -lr * 3 / 4 * mu / (np.sqrt(nu) + 1e-8),
                               rtol=1e-4)
    # clip to global norm 1.0 before Adam: a gradient of norm 10 becomes [.6, .8, 1e-8]
    # (unclipped, the third component would get 1e-7 / 1.1e-7 of the rate)
    u, _ = tx.update({"w": {"kernel": jnp.array([6.0, 8.0, 1e-7])}}, tx.init(params), params)
    np.testing.assert_allclose(u["w"]["kernel"], [-lr, -lr, -lr / 2], rtol=1e-4)

    # Weight decay: none by default (official); otherwise decoupled, lr * wd * p, on
    # every weight but biases and LayerNorm scales (the official no_decay groups)
    tree = {"embeddings": {"word_embeddings": {"embedding": jnp.full((3, 2), 2.0)},
                           "LayerNorm": {"scale": jnp.ones(2), "bias": jnp.ones(2)}},
            "layer_0": {"query": {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.ones(2)}}}
    assert steps.decays(tree) == {
        "embeddings": {"word_embeddings": {"embedding": True},
                       "LayerNorm": {"scale": False, "bias": False}},
        "layer_0": {"query": {"kernel": True, "bias": False}}}
    zero = jax.tree_util.tree_map(jnp.zeros_like, tree)     # Adam's own update is 0
    for wd in (0.0, 0.5):
        tx, _ = steps.make_optimizer(lr, total, weight_decay=wd)
        u, _ = tx.update(zero, tx.init(tree), tree)
        want = jax.tree_util.tree_map(lambda p, d: -lr * wd * p * d, tree, steps.decays(tree))
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                               u, want)


def test_width_matched_teacher_runs_teacher_per_width():
    model, student = _tiny()
    _, teacher = _tiny(seed=2)
    batch = _batch()
    tx, _ = steps.make_optimizer(1e-3, 10)
    s = dj.SubNet(0.5, 0.5)
    out = {}
    for matched in (False, True):
        step = jax.jit(steps.make_train_step(
            model, (s,), steps.LossSpec("distill", 1.0, 1.0, width_matched_teacher=matched), tx))
        out[matched] = float(step(steps.init_state(student, tx), teacher, batch,
                                  jax.random.PRNGKey(0))[1]["loss"])
    t_half = model.apply({"params": teacher}, batch["input_ids"],
                         attention_mask=batch["attention_mask"], subnet=dj.SubNet(0.5))
    o = model.apply({"params": student}, batch["input_ids"],
                    attention_mask=batch["attention_mask"], subnet=s)
    p_t = np.exp(_np_log_softmax(np.asarray(t_half.logits)))
    want = np.mean(-(p_t * _np_log_softmax(np.asarray(o.logits))).sum(-1)) + sum(
        np.mean((np.asarray(h) - np.asarray(t_half.hidden_states[i])) ** 2)
        for h, i in zip(o.hidden_states, s.teacher_hidden_indices(model.config)))
    np.testing.assert_allclose(out[True], want, rtol=2e-5)
    assert out[True] != out[False]


def test_stage2_step_memory_within_2x_of_one_student():
    model, params = _tiny()
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    batch = {k: jnp.tile(v, (8,) + (1,) * (v.ndim - 1)) for k, v in batch.items()}
    tx, _ = steps.make_optimizer(1e-3, 10)
    peaks = {}
    for name, students in (("one", (dj.FULL,)), ("grid", dj.grid())):
        fn = jax.jit(steps.make_train_step(model, students, steps.LossSpec("distill", 1, 1),
                                           tx), donate_argnums=0)
        m = fn.lower(steps.init_state(params, tx), params, batch,
                     jax.random.PRNGKey(0)).compile().memory_analysis()
        peaks[name] = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    assert peaks["grid"] <= 2 * peaks["one"], peaks


@pytest.mark.parametrize("mask_padding", [True, False])
def test_trimmed_batch_gives_the_same_step_when_padding_is_masked(mask_padding):
    """`data.trim_padding` (config.data.pad_to_multiple_of) only removes padding: with
    the hidden MSE over real tokens the train step is the same; the official unmasked
    MSE also averages over padded positions, so there it differs."""
    from dynabert_jax import data

    model, student = _tiny()
    _, teacher = _tiny(seed=2)
    batch = _batch()
    batch["attention_mask"][:, 7:] = 0      # every row ends by position 7
    batch["input_ids"][batch["attention_mask"] == 0] = 0
    cut = data.trim_padding(batch, 4)
    assert cut["input_ids"].shape == (4, 8)
    tx, _ = steps.make_optimizer(1e-3, 10)
    fn = jax.jit(steps.make_train_step(model, dj.grid((1.0, 0.5), (1.0, 0.5)),
                                       steps.LossSpec("distill", 1.0, 1.0,
                                                      mask_padding=mask_padding), tx))
    key = jax.random.PRNGKey(0)
    s_full, m_full = fn(steps.init_state(student, tx), teacher, batch, key)
    s_cut, m_cut = fn(steps.init_state(student, tx), teacher, cut, key)
    if mask_padding:
        np.testing.assert_allclose(m_cut["losses"], m_full["losses"], rtol=1e-5)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                               s_cut.params, s_full.params)
    else:
        assert not np.allclose(m_cut["losses"], m_full["losses"], rtol=1e-3)


def test_dropout_prng_choice_keeps_the_step_deterministic():
    """config.dropout_prng: threefry2x32 keeps the raw key of every earlier run; rbg and
    unsafe_rbg (XLA's RngBitGenerator, for GPU/TPU) run the multi-student step with a
    typed key, repeat exactly, and drop other units than Threefry; a typo is an error."""
    model, student = _tiny(dropout=0.1)
    _, teacher = _tiny(seed=2)
    tx, _ = steps.make_optimizer(1e-3, 10)
    fn = jax.jit(steps.make_train_step(model, dj.grid((1.0, 0.5), (0.5,)),
                                       steps.LossSpec("distill", 1.0, 1.0), tx))
    assert np.array_equal(steps.dropout_key(3), jax.random.PRNGKey(3))
    losses_by = {}
    for impl in steps.DROPOUT_PRNGS:
        key = steps.dropout_key(3, impl)
        runs = [fn(steps.init_state(student, tx), teacher, _batch(), key)[1]["losses"]
                for _ in range(2)]
        np.testing.assert_array_equal(runs[0], runs[1])
        assert np.all(np.isfinite(runs[0]))
        losses_by[impl] = np.asarray(runs[0])
    assert not np.allclose(losses_by["rbg"], losses_by["threefry2x32"], rtol=1e-4)
    with pytest.raises(ValueError, match="unknown dropout PRNG 'philox'.*config.dropout_prng"):
        steps.dropout_key(0, "philox")


def test_weight_decay_skips_biases_and_layer_norms_and_clipping_follows_its_norm():
    # official AdamW groups: decay on every weight but biases and LayerNorm weights
    model, params = _tiny()
    tx, _ = steps.make_optimizer(0.1, 10, weight_decay=0.5)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)   # Adam's own update is 0
    updates, _ = tx.update(zero, tx.init(params), params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    leaf = {jax.tree_util.keystr(p): u for p, u in flat}
    kernel = "['encoder']['layer_0']['query']['kernel']"
    np.testing.assert_allclose(
        leaf[kernel], -0.1 * 0.5 * np.asarray(
            params["encoder"]["layer_0"]["query"]["kernel"]), rtol=1e-6)
    for name, u in leaf.items():
        if name.endswith("['bias']") or name.endswith("['scale']"):
            assert not np.any(np.asarray(u)), name
    assert np.any(np.asarray(leaf["['embeddings']['word_embeddings']['embedding']"]))
    # the summed gradient is clipped to max_grad_norm
    tx, _ = steps.make_optimizer(1.0, 10, max_grad_norm=0.25)
    big = jax.tree_util.tree_map(jnp.ones_like, params)
    _, state = tx.update(big, tx.init(params), params)
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    adam = next(x for x in jax.tree_util.tree_leaves(state, is_leaf=is_adam) if is_adam(x))
    # Adam's first moment after one step is (1 - 0.9) x the gradient it was given
    np.testing.assert_allclose(float(optax.tree.norm(adam.mu)), 0.1 * 0.25, rtol=1e-5)


def _accum_batch(rows=8):
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 60, size=(rows, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[6, 4:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "labels": rng.integers(0, 2, size=rows).astype(np.int32)}


def test_gradient_accumulation_follows_the_official_loop():
    # The official loop with --gradient_accumulation_steps k: per batch, every student's
    # loss / k is backpropagated into the running sum, which is clipped after every
    # batch; one AdamW step every k batches.
    model, student = _tiny()
    _, teacher = _tiny(seed=2)
    batch, k, c = _accum_batch(), 2, 0.05   # c small enough that every clip bites
    students = dj.grid((1.0, 0.5), (1.0, 0.5))
    spec = steps.LossSpec("distill", 1.0, 1.0)
    # plain SGD at rate 1 after the clip: the update is the gradient itself (Adam's first
    # update is about lr * sign(g), blind to most of what is tested here)
    tx = optax.chain(optax.clip_by_global_norm(c), optax.sgd(1.0))
    step = jax.jit(steps.make_train_step(model, students, spec, tx, accum_steps=k,
                                         partial_clip_norm=c))
    state, m = step(steps.init_state(student, tx), teacher,
                    dj.data.interleave_micro_batches(batch, k), jax.random.PRNGKey(0))

    def micro_loss(p, micro):   # dropout is 0, so the keys do not matter
        t = model.apply({"params": teacher}, micro["input_ids"],
                        attention_mask=micro["attention_mask"], subnet=dj.FULL)
        return [steps.student_loss(model, p, micro, s, spec, t, jax.random.PRNGKey(0))
                for s in students]

    acc = jax.tree_util.tree_map(jnp.zeros_like, student)
    want_losses, norms = [], []
    for j in range(k):
        micro = {key: v[j * 4:(j + 1) * 4] for key, v in batch.items()}
        want_losses.append([float(x) for x in micro_loss(student, micro)])
        g = jax.grad(lambda p: sum(micro_loss(p, micro)) / k)(student)
        g["embeddings"]["word_embeddings"]["embedding"] = \
            g["embeddings"]["word_embeddings"]["embedding"].at[0].set(0.0)
        acc = jax.tree_util.tree_map(jnp.add, acc, g)
        norm = float(optax.tree.norm(acc))      # torch.nn.utils.clip_grad_norm_
        norms.append(norm)
        if norm > c:
            acc = jax.tree_util.tree_map(lambda a: a * (c / norm), acc)
    assert norms[0] > c, "the first partial sum must be clipped for this test to mean much"
    np.testing.assert_allclose(m["losses"], np.mean(want_losses, axis=0), rtol=2e-5)
    np.testing.assert_allclose(m["grad_norm"], norms[-1], rtol=1e-4)
    jax.tree_util.tree_map(
        lambda before, after, g: np.testing.assert_allclose(before - after, g, rtol=1e-3,
                                                            atol=2e-7),
        student, state.params, acc)

    # Without the partial clips the update is not the same (so the clips above count)
    step = jax.jit(steps.make_train_step(model, students, spec, tx, accum_steps=k))
    other, _ = step(steps.init_state(student, tx), teacher,
                    dj.data.interleave_micro_batches(batch, k), jax.random.PRNGKey(0))
    flat = lambda s: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(  # noqa: E731
        jax.tree_util.tree_map(jnp.subtract, student, s.params))])
    assert np.linalg.norm(flat(other) - flat(state)) > 0.05 * np.linalg.norm(flat(state))


def test_accumulated_step_without_partial_clips_equals_one_large_batch():
    model, student = _tiny()
    _, teacher = _tiny(seed=2)
    batch = _accum_batch()
    students = (dj.FULL, dj.SubNet(0.5, 0.5))
    spec = steps.LossSpec("distill", 1.0, 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))  # update = gradient
    big = jax.jit(steps.make_train_step(model, students, spec, tx))
    want, m_want = big(steps.init_state(student, tx), teacher, batch, jax.random.PRNGKey(0))
    for k in (2, 4):
        step = jax.jit(steps.make_train_step(model, students, spec, tx, accum_steps=k))
        got, m = step(steps.init_state(student, tx), teacher,
                      dj.data.interleave_micro_batches(batch, k), jax.random.PRNGKey(0))
        np.testing.assert_allclose(m["losses"], m_want["losses"], rtol=1e-5)
        np.testing.assert_allclose(m["grad_norm"], m_want["grad_norm"], rtol=1e-5)
        jax.tree_util.tree_map(lambda a, b, p: np.testing.assert_allclose(
            p - a, p - b, rtol=1e-3, atol=2e-7), got.params, want.params, student)
    with pytest.raises(ValueError, match="accum_steps must be a positive integer"):
        steps.make_train_step(model, students, spec, tx, accum_steps=0)


@pytest.mark.parametrize("spec", [steps.LossSpec("task"),
                                  steps.LossSpec("distill", 1.0, 1.0),
                                  steps.LossSpec("distill", 1.0, 0.1, mask_padding=True)])
def test_a_padded_last_batch_trains_as_its_real_rows_alone(spec):
    # an epoch's last partial batch, filled up with zero-weight copies of a row (as
    # data.keep_partial_batch does), gives the losses and update of its real rows alone
    model, student = _tiny()
    _, teacher = _tiny(seed=2)
    full = _accum_batch()
    real = {k: v[:5] for k, v in full.items()}
    padded = {k: np.concatenate([v[:5], np.repeat(v[4:5], 3, axis=0)]) for k, v in full.items()}
    padded["weight"] = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))   # update = gradient
    step = jax.jit(steps.make_train_step(model, (dj.FULL, dj.SubNet(0.5, 0.5)), spec, tx))
    want, m_want = step(steps.init_state(student, tx), teacher, real, jax.random.PRNGKey(0))
    got, m = step(steps.init_state(student, tx), teacher, padded, jax.random.PRNGKey(0))
    np.testing.assert_allclose(m["losses"], m_want["losses"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], m_want["grad_norm"], rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b, p: np.testing.assert_allclose(
        p - a, p - b, rtol=1e-3, atol=2e-7), got.params, want.params, student)
    # and the copies do count when their weight is 1 (so the weights are what works)
    _, m_ones = step(steps.init_state(student, tx), teacher,
                     dict(padded, weight=np.ones(8, np.float32)), jax.random.PRNGKey(0))
    assert not np.allclose(m_ones["losses"], m_want["losses"], rtol=1e-4)
