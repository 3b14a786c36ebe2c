"""Where the inference forward's time goes, ours vs PyTorch, per kind of work (not a test).

``bench/latency.py`` says how long a sub-network's forward takes in each framework; this
script says where the difference is. For each sub-network it profiles the same forward
as ``bench/latency.py`` (our extracted sub-network, jitted; the Hugging Face model of the
same shape) with each framework's own profiler, and adds the time of every operation
into a category both frameworks have:

* ``attention projections``: the query, key, value and attention-output products;
* ``FFN up`` / ``FFN down``: the two FFN products;
* ``attention core``: scores, softmax and the product with the values;
* ``GELU``, ``LayerNorm, residual, bias``, ``embeddings``, ``transposes and copies``;
* ``materialised broadcasts`` (ours only): constants and the attention mask written out
  at full size because an XLA:CPU library fusion takes them as operands;
* ``other``, and ``not in an operation``: the forward's wall time less the operations
  (dispatch, the executor, the profiler's own overhead).

XLA fuses elementwise work into products: a category holds what XLA fused into it (the
FFN down product of ours includes its bias, the residual and the LayerNorm after it),
so read the rows together, and compare totals. PyTorch's ``aten::addmm`` includes the
bias; its products are told apart by the ``nn.Linear`` they run in.

    taskset -c 0 python bench/profile_forward.py --threads 1 \\
        --xla-flags="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    python bench/profile_forward.py --shape bert-base --subnets 1x1 --batch 32

Prints a markdown table per sub-network and writes JSON (default
runs/bench/profile_forward.json).
"""
import argparse
import collections
import os
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from xla_profile import hlo_instructions, profile_ops  # noqa: E402  (bench/)

CATEGORIES = ("attention projections", "FFN up", "FFN down", "attention core", "GELU",
              "LayerNorm, residual, bias", "embeddings", "transposes and copies",
              "materialised broadcasts", "other", "not in an operation")
_PROJECTIONS = ("query", "key", "value", "attention_output")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="minilm", choices=("minilm", "bert-base"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--subnets", default="1x1,0.5x0.5,0.25x0.5",
                    help="comma-separated WIDTHxDEPTH")
    ap.add_argument("--calls", type=int, default=3, help="profiled forwards (averaged)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="PyTorch intra-op threads")
    ap.add_argument("--xla-flags", default="",
                    help="added to XLA_FLAGS before JAX starts")
    ap.add_argument("--minilm-dir", default=None)
    ap.add_argument("--torch-linear", choices=("default", "onednn"), default="default",
                    help="onednn: PyTorch's nn.Linear layers run oneDNN's inner product, "
                         "as bench/latency.py --torch-linear onednn")
    ap.add_argument("--out", default="runs/bench/profile_forward.json")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------------
# Ours: XLA's per-operation events, named after the compiled HLO's instructions
# ----------------------------------------------------------------------------------


def categorize(comps):
    """``category(name)`` of the entry computation's instructions (see `CATEGORIES`)."""
    entry = {i[0]: i for i in comps.get("__entry__", [])}

    def category(name: str) -> str:
        if name not in entry:
            return "other"
        _, opcode, op_name, calls = entry[name]
        inner = comps.get(calls, []) if calls else []
        dots = [i[2] for i in inner if i[1] == "dot"] + ([op_name] if opcode == "dot" else [])
        for d in dots:
            if "bhqd,bhkd->bhqk" in d or "bhqk,bhkd->bhqd" in d:
                return "attention core"
        for d in dots:
            layer = d.rsplit("/", 2)[-2] if d.count("/") >= 2 else ""
            if layer in _PROJECTIONS:
                return "attention projections"
            if layer == "intermediate":
                return "FFN up"
            if layer == "output":
                return "FFN down"
        if name.startswith("wrapped_broadcast") or (
                inner and inner[-1][1] == "broadcast" and not any(
                    i[1] in ("dot", "reduce", "exponential") for i in inner)):
            return "materialised broadcasts"
        if "/embeddings/" in op_name and "LayerNorm" not in op_name:
            return "embeddings"
        if "erf" in op_name or "gelu" in op_name or "intermediate/add" in op_name:
            return "GELU"
        if "LayerNorm" in op_name or op_name.endswith("/add"):
            return "LayerNorm, residual, bias"
        if "transpose" in op_name or opcode in ("copy", "transpose"):
            return "transposes and copies"
        return "other"

    return category


def profile_ours(forward, args_, calls: int):
    """``(wall ms per forward, {category: ms per forward}, [(ms, name, category)])``."""
    text = forward.lower(*args_).compile().as_text()
    category = categorize(hlo_instructions(text))
    wall, per_op, _ = profile_ops(forward, args_, calls, text)
    cats = collections.Counter()
    ops = []
    for name, ms in per_op.items():
        cat = category(name)
        cats[cat] += ms
        ops.append((round(ms, 3), name, cat))
    cats["not in an operation"] = max(wall - sum(cats.values()), 0.0)
    return wall, dict(cats), sorted(ops, reverse=True)


# ----------------------------------------------------------------------------------
# PyTorch: aten operations, products told apart by their operand shapes
# ----------------------------------------------------------------------------------


#: Hugging Face BERT module name suffix -> category of the products it runs
_TORCH_LINEARS = {"attention.self.query": "attention projections",
                  "attention.self.key": "attention projections",
                  "attention.self.value": "attention projections",
                  "attention.output.dense": "attention projections",
                  "intermediate.dense": "FFN up", "output.dense": "FFN down"}


def torch_category(op: str, linear: str = "") -> str:
    """The category of one aten operation; ``linear`` is the category of the
    ``nn.Linear`` it ran in, if any (its product and bias)."""
    if linear:
        return linear
    if "scaled_dot_product" in op or op in ("aten::bmm", "aten::softmax", "aten::_softmax",
                                            "aten::matmul", "aten::baddbmm"):
        return "attention core"
    if op == "aten::gelu":
        return "GELU"
    if op in ("aten::native_layer_norm", "aten::add", "aten::add_"):
        return "LayerNorm, residual, bias"
    if op in ("aten::index_select", "aten::embedding"):
        return "embeddings"
    if op in ("aten::copy_", "aten::contiguous", "aten::clone"):
        return "transposes and copies"
    return "other"


def onednn_linears(model):
    """``model`` with each ``nn.Linear`` replaced by a module running it as
    ``torch.utils.mkldnn.to_mkldnn`` would (an ``MkldnnLinear``), one that forward hooks
    can still label."""
    import torch
    from torch.utils.mkldnn import MkldnnLinear

    class OneDNNLinear(torch.nn.Module):
        def __init__(self, linear):
            super().__init__()
            self.inner = MkldnnLinear(linear, torch.float)

        def forward(self, x):
            return self.inner(x)

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, OneDNNLinear(child))
    return model


def _label_linears(model):
    """Wrap the forward of each BERT linear layer (an ``nn.Linear``, or its
    `onednn_linears` replacement), found by its name, in a ``record_function`` named
    after its category, so the profiler's event tree tells the products apart."""
    import torch

    handles = []
    for name, module in model.named_modules():
        cat = next((c for suffix, c in _TORCH_LINEARS.items() if name.endswith(suffix)
                    and ".layer." in name), None)
        if cat is None:
            continue
        label = f"linear:{cat}"

        def pre(mod, inputs, label=label):
            mod._profile_ctx = torch.profiler.record_function(label)
            mod._profile_ctx.__enter__()

        def post(mod, inputs, output):
            mod._profile_ctx.__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def profile_torch(model, inputs, calls: int):
    """``(wall ms per forward, {category: ms per forward}, [(ms, op, category)])`` from
    the self CPU time of each aten operation."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    handles = _label_linears(model)
    try:
        with torch.inference_mode():
            for _ in range(2):
                model(**inputs)
            walls = []
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(calls):
                    t0 = time.perf_counter()
                    model(**inputs)
                    walls.append(time.perf_counter() - t0)
    finally:
        for h in handles:
            h.remove()
    cats = collections.Counter()
    per_op = collections.Counter()
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        linear, parent = "", ev.cpu_parent
        while parent is not None:
            if parent.name.startswith("linear:"):
                linear = parent.name[len("linear:"):]
                break
            parent = parent.cpu_parent
        cat = torch_category(ev.name, linear)
        ms = ev.self_cpu_time_total / 1e3 / calls
        cats[cat] += ms
        per_op[(ev.name, cat)] += ms
    wall = 1e3 * statistics.mean(walls)
    cats["not in an operation"] = max(wall - sum(cats.values()), 0.0)
    ops = sorted(((round(ms, 3), name, cat) for (name, cat), ms in per_op.items()),
                 reverse=True)
    return wall, dict(cats), ops


# ----------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                                   args.xla_flags).strip()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import jax.numpy as jnp
    import torch

    import dynabert_jax as dj
    from latency import load_shape, make_inputs, torch_subnetwork
    from train_throughput import run_header, write_atomic

    torch.set_num_threads(args.threads)
    out, header = run_header(args.out)
    model, params = load_shape(args.shape, args.minilm_dir)
    cfg = model.config
    inputs = make_inputs(cfg, args.batch, args.seq)
    jin = tuple(jnp.asarray(inputs[k], jnp.int32)
                for k in ("input_ids", "attention_mask", "token_type_ids"))
    tin = {k: torch.as_tensor(v) for k, v in inputs.items()}
    result = {**header, "shape": args.shape, "batch": args.batch, "seq": args.seq,
              "threads": args.threads, "calls": args.calls,
              "torch_linear": args.torch_linear, "subnets": []}
    for spec in args.subnets.split(","):
        w, d = (float(x) for x in spec.split("x"))
        subnet = dj.SubNet(w, d)
        small, small_params = dj.extract_subnetwork(model, params, subnet)

        @jax.jit
        def forward(p, ids, mask, types, small=small):
            return small.apply({"params": p}, ids, attention_mask=mask,
                               token_type_ids=types, deterministic=True).logits

        tmodel = torch_subnetwork(model, params, subnet)
        if args.torch_linear == "onednn":
            tmodel = onednn_linears(tmodel)
        ours = profile_ours(forward, (small_params,) + jin, args.calls)
        theirs = profile_torch(tmodel, tin, args.calls)
        rows = [{"category": c, "ours_ms": round(ours[1].get(c, 0.0), 2),
                 "torch_ms": round(theirs[1].get(c, 0.0), 2)} for c in CATEGORIES]
        result["subnets"].append({
            "width": w, "depth": d, "ours_wall_ms": round(ours[0], 2),
            "torch_wall_ms": round(theirs[0], 2), "categories": rows,
            "ours_top_ops": ours[2][:25], "torch_top_ops": theirs[2][:25]})
        print(f"\n### {args.shape}, ({w:g}, {d:g}), batch {args.batch} x seq {args.seq}, "
              f"{args.threads} thread(s)\n")
        print("| category | ours (ms) | PyTorch (ms) | ours - PyTorch |")
        print("|---|---|---|---|")
        for r in rows:
            if r["ours_ms"] or r["torch_ms"]:
                print(f"| {r['category']} | {r['ours_ms']:.1f} | {r['torch_ms']:.1f} | "
                      f"{r['ours_ms'] - r['torch_ms']:+.1f} |")
        print(f"| **forward (wall, profiled)** | **{ours[0]:.1f}** | **{theirs[0]:.1f}** | "
              f"{ours[0] - theirs[0]:+.1f} |", flush=True)
        write_atomic(out, result)
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
