"""bench/xla_profile.py, which the GPU lease's profiles depend on: it must find the
compiled step's operations in the profiler's trace and sort them, on CPU here.
(No timing is asserted: only which operations are counted and how they are named.)"""
import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import xla_profile  # noqa: E402  (bench/)


def _step(key, x, w):
    # a scan (a while loop on CPU) of products and dropout-like random bits
    def body(carry, k):
        keep = jax.random.bernoulli(k, 0.9, carry.shape)
        return jnp.tanh(jnp.where(keep, carry, 0.0) @ w), None

    y, _ = jax.lax.scan(body, x, jax.random.split(key, 3))
    return jnp.sum(y * y)


def test_profile_ops_counts_each_operation_once_and_sorts_them():
    f = jax.jit(_step)
    args = (jax.random.PRNGKey(0), jnp.ones((64, 64)), jnp.eye(64) * 0.5)
    text = f.lower(*args).compile().as_text()
    comps = xla_profile.hlo_instructions(text)
    table = xla_profile.all_instructions(comps)
    assert any(op == "while" for _, op, _, _ in table.values())

    wall, per_op, device = xla_profile.profile_ops(f, args, 2, text)
    assert device == "cpu" and wall > 0 and per_op
    assert set(per_op) <= set(table)
    # the while loop's event spans its body's operations: only those are counted
    assert not any(table[op][1] in xla_profile.CONTROL_FLOW for op in per_op)

    category = xla_profile.step_category(comps)
    summary = xla_profile.summarise_ops(per_op, category, wall, comps)
    assert {"products", "random bits"} <= set(summary["categories"])
    assert set(summary["categories"]) <= set(xla_profile.STEP_CATEGORIES)
    assert abs(sum(summary["categories"].values()) - summary["ops_ms"]) < 1e-2
    ms, name, cat, op_name = summary["top_ops"][0]
    assert name in per_op and cat == category(name) and op_name == table[name][2][-120:]


def test_gpu_kernels_are_matched_to_operations_by_name():
    # a GPU kernel without an hlo_op stat (run from a command buffer) is named after its
    # fusion with "_" for "."; library kernels are sorted by their names
    comps = xla_profile.hlo_instructions(
        jax.jit(_step).lower(jax.random.PRNGKey(0), jnp.ones((8, 8)), jnp.eye(8))
        .compile().as_text())
    table = xla_profile.all_instructions(comps)
    fusion = next(n for n, i in table.items() if i[1] == "fusion" and "." in n)
    assert xla_profile._kernel_op(fusion.replace(".", "_"), table) == fusion
    assert xla_profile._kernel_op("sm90_xmma_gemm_bf16", table) == "sm90_xmma_gemm_bf16"
    category = xla_profile.step_category(comps)
    assert category("(unnamed) sm90_xmma_gemm_bf16bf16_tn") == "products"
    assert category("(unnamed) ncclDevKernel_AllReduce") == "collectives"
    assert category("(unnamed) some_kernel") == "other"
