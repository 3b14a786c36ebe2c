"""A compact PyTorch DynaBERT (runtime width/depth slicing, as the official code) and its
multi-student distillation step: the reference that bench/train_throughput.py times
ours against (not a test).

The model follows ``DynaBERT/transformers/modeling_bert.py`` of
``huawei-noah/Pretrained-Language-Model`` (``shared/spec/dynabert-reference.md``
sections 1-2): every module carries ``width_mult``; a ``DynaLinear`` recomputes its
active sizes on each forward with ``round_to_nearest`` and calls ``F.linear`` on the
leading ``weight[:out, :in]`` block; the encoder keeps layers ``floor(i / depth_mult)``
for ``i < round(L * depth_mult)``. Post-LN BERT, exact GELU, additive ``-10000`` mask,
``padding_idx = 0``. Parameter names are Hugging Face's ``BertForSequenceClassification``
keys, so :func:`dynabert_jax.convert.state_dict_from_params` loads into it directly.

The train step is the loop of the official ``run_glue.py`` ``train()`` (spec 4.1-4.3):
teacher forward once under ``torch.no_grad`` (eval mode); for each student (depth outer,
width inner, both descending): set width and depth, forward in train mode, distillation
loss (soft cross-entropy on logits + summed hidden-state MSEs with the official
alignment), ``backward()`` at once so gradients accumulate; then
``clip_grad_norm_(1.0)``, one ``torch.optim.AdamW`` step (eps 1e-8, no weight decay,
linear decay) and ``zero_grad``.

    python bench/torch_reference.py --parity --shape minilm     # check against ours
    python bench/torch_reference.py --shape minilm --stage 2    # time a few steps

``--parity`` needs JAX and ``dynabert_jax``; timing mode imports neither (only the rules
module ``dynabert_jax/subnet.py``, loaded by path), so its max RSS is PyTorch's alone.
The last line printed is ``RESULT {json}``.
"""
import argparse
import copy
import importlib.util
import json
import math
import pathlib
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from precisions import PRECISIONS, set_torch_precision  # noqa: E402
from train_throughput import SHAPES, STAGES, random_batch  # noqa: E402  (no JAX import)


def load_subnet_rules():
    """``dynabert_jax/subnet.py`` without importing the package (which imports JAX)."""
    if "dynabert_jax.subnet" in sys.modules:
        return sys.modules["dynabert_jax.subnet"]
    spec = importlib.util.spec_from_file_location("_dynabert_subnet",
                                                  ROOT / "dynabert_jax" / "subnet.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def students_for(stage: str):
    rules = load_subnet_rules()
    depths = STAGES[stage][0]
    if stage == "single":
        return (rules.SubNet(1.0, 1.0),)
    return rules.grid(rules.WIDTHS, depths)


# ----------------------------------------------------------------------------------
# The model (official-style runtime slicing)
# ----------------------------------------------------------------------------------


def round_to_nearest(size: int, width_mult: float, num_heads: int, min_value: int = 1):
    """Official rule: quantise the width to whole heads (Python round, half to even)."""
    w = round(num_heads * width_mult) / num_heads
    return max(min_value, int(w * size))


class DynaLinear(nn.Linear):
    """``nn.Linear`` that uses its leading ``[:out, :in]`` block at ``width_mult``."""

    def __init__(self, n_in, n_out, num_heads, dyna_dim=(False, False)):
        super().__init__(n_in, n_out)
        self.in_max, self.out_max, self.num_heads = n_in, n_out, num_heads
        self.dyna_dim = dyna_dim
        self.width_mult = 1.0

    def forward(self, x):
        n_in = (round_to_nearest(self.in_max, self.width_mult, self.num_heads)
                if self.dyna_dim[0] else self.in_max)
        n_out = (round_to_nearest(self.out_max, self.width_mult, self.num_heads)
                 if self.dyna_dim[1] else self.out_max)
        return F.linear(x, self.weight[:n_out, :n_in], self.bias[:n_out])


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"], padding_idx=0)
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, ids, token_type_ids):
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        x = (self.word_embeddings(ids) + self.position_embeddings(pos)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, n = c["hidden_size"], c["num_attention_heads"]
        self.num_heads, self.head_size = n, h // n
        self.query = DynaLinear(h, h, n, (False, True))
        self.key = DynaLinear(h, h, n, (False, True))
        self.value = DynaLinear(h, h, n, (False, True))
        self.dropout = nn.Dropout(c["attention_probs_dropout_prob"])
        self.width_mult = 1.0

    def forward(self, x, mask_bias):
        b, s, _ = x.shape
        heads = round(self.num_heads * self.width_mult)
        split = lambda t: t.view(b, s, heads, self.head_size).permute(0, 2, 1, 3)  # noqa
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + mask_bias
        probs = self.dropout(F.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(b, s, heads * self.head_size)


class DenseLN(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)`` (attention.output / output)."""

    def __init__(self, n_in, c):
        super().__init__()
        self.dense = DynaLinear(n_in, c["hidden_size"], c["num_attention_heads"], (True, False))
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseLN(c["hidden_size"], c)

    def forward(self, x, mask_bias):
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = DynaLinear(c["hidden_size"], c["intermediate_size"],
                                c["num_attention_heads"], (False, True))

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseLN(c["intermediate_size"], c)

    def forward(self, x, mask_bias):
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.depth_mult = 1.0

    def forward(self, x, mask_bias):
        n = len(self.layer)
        kept = [int(i / self.depth_mult) for i in range(round(n * self.depth_mult))]
        hidden = [x]
        for i in kept:
            x = self.layer[i](x, mask_bias)
            hidden.append(x)
        return hidden


class Pooler(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))


class Bert(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        self.pooler = Pooler(c)


class DynaBertForSequenceClassification(nn.Module):
    """Returns ``(logits, hidden_states)``; hidden states = embeddings + kept layers."""

    def __init__(self, c):
        super().__init__()
        self.config = c
        self.bert = Bert(c)
        self.dropout = nn.Dropout(c["hidden_dropout_prob"])
        self.classifier = nn.Linear(c["hidden_size"], c["num_labels"])
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(0.0, self.config["initializer_range"])
        if isinstance(m, nn.Linear):
            m.bias.data.zero_()
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            m.weight.data[m.padding_idx].zero_()

    def set_subnet(self, width: float, depth: float):
        """As the official scripts: ``model.apply(lambda m: setattr(m, 'width_mult', w))``."""
        self.apply(lambda m: setattr(m, "width_mult", width))
        self.bert.encoder.depth_mult = depth

    def forward(self, input_ids, attention_mask, token_type_ids):
        mask_bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        x = self.bert.embeddings(input_ids, token_type_ids)
        hidden = self.bert.encoder(x, mask_bias)
        logits = self.classifier(self.dropout(self.bert.pooler(hidden[-1])))
        return logits, hidden


def make_config(shape: str, dropout: float = 0.1, num_labels: int = 2) -> dict:
    return dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
                layer_norm_eps=1e-12, initializer_range=0.02, num_labels=num_labels,
                hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                **SHAPES[shape])


# ----------------------------------------------------------------------------------
# The official multi-student distillation step
# ----------------------------------------------------------------------------------


def soft_cross_entropy(student_logits, teacher_logits):
    return (-F.softmax(teacher_logits, -1) * F.log_softmax(student_logits, -1)).sum(-1).mean()


class TrainStep:
    """One optimizer step of DynaBERT_W / DynaBERT distillation (spec 4.1-4.3)."""

    def __init__(self, student: DynaBertForSequenceClassification,
                 teacher: DynaBertForSequenceClassification, students, lambda_logit: float,
                 lambda_hidden: float, lr: float = 2e-5, total_steps: int = 1000,
                 autocast_dtype=None):
        self.student, self.teacher = student, teacher
        #: forward passes (not backward) under autocast, as torch.autocast's docs advise
        self.autocast_dtype = autocast_dtype
        self.students = tuple(students)
        self.lambda_logit, self.lambda_hidden = lambda_logit, lambda_hidden
        self.num_layers = student.config["num_hidden_layers"]
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.999),
                                     eps=1e-8, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: max(0.0, (total_steps - s) / total_steps))

    def teacher_indices(self, depth: float):
        kept = [int(i / depth) for i in range(round(self.num_layers * depth))]
        return kept + [self.num_layers]

    def __call__(self, batch):
        """Returns ``(per-student losses, grad norm before clipping)``."""
        inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        dev = inputs[0].device.type
        autocast = lambda: torch.autocast(  # noqa: E731
            dev, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with torch.no_grad(), autocast():
            t_logits, t_hidden = self.teacher(*inputs)
        self.student.train()
        losses = []
        for sub in self.students:
            self.student.set_subnet(sub.width, sub.depth)
            with autocast():
                logits, hidden = self.student(*inputs)
                # losses in float32, as our steps compute them
                loss = self.lambda_logit * soft_cross_entropy(logits.float(),
                                                              t_logits.float())
                hid = sum(F.mse_loss(s.float(), t_hidden[t].float())
                          for s, t in zip(hidden, self.teacher_indices(sub.depth)))
                loss = loss + self.lambda_hidden * hid
            loss.backward()
            losses.append(loss.item())
        norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        self.student.set_subnet(1.0, 1.0)
        return losses, float(norm)


def to_torch(batch):
    return {k: torch.from_numpy(v).long() for k, v in batch.items()}


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------


def bench(shape: str, stage: str, batch: int, seq: int, steps: int, warmup: int,
          threads: int, device: str = "cpu", dtype: str = "float32",
          dropout: float = 0.1) -> dict:
    torch.set_num_threads(threads)
    autocast_dtype = set_torch_precision(torch, dtype)
    torch.manual_seed(0)
    dev = torch.device(device)
    c = make_config(shape, dropout=dropout)
    student = DynaBertForSequenceClassification(c).to(dev)
    teacher = copy.deepcopy(student)
    _, lam_logit, lam_hidden = STAGES[stage]
    step = TrainStep(student, teacher, students_for(stage), lam_logit, lam_hidden,
                     autocast_dtype=autocast_dtype)
    b = {k: v.to(dev) for k, v in to_torch(random_batch(batch, seq, c["vocab_size"])).items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, losses = [], None
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        losses, _ = step(b)  # .item() per student also synchronises
        sync()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        print(f"torch {shape} stage {stage} step {i} {'(warm-up) ' if i < warmup else ''}"
              f"{dt:.2f} s", file=sys.stderr, flush=True)
    med = statistics.median(times)
    out = {"framework": "torch", "torch": torch.__version__, "threads": threads,
           "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
           "shape": shape, "stage": stage, "students": len(step.students), "dtype": dtype,
           "dropout": dropout,
           "batch": batch, "seq": seq, "step_times_s": [round(t, 4) for t in times],
           "median_step_s": med, "examples_per_s": batch / med,
           "max_rss_mib": round(max_rss_mib(), 1), "last_losses": losses}
    if dev.type == "cuda":
        out["peak_device_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return out


# ----------------------------------------------------------------------------------
# Parity with dynabert_jax
# ----------------------------------------------------------------------------------


def parity(shape: str, batch: int, seq: int, threads: int, stages=("1", "2")) -> dict:
    """Same weights in both: full-width logits and hidden states (eval mode), then the
    per-student losses and the grad norm of step 0 of each stage's train step (dropout
    0 in both, so the losses are deterministic; teacher and student differ)."""
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp

    import dynabert_jax as dj
    from dynabert_jax import convert, steps

    torch.set_num_threads(threads)
    cfg = dj.ModelConfig(head="classification", hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, **SHAPES[shape])
    model = dj.DynaBertModel(cfg)
    params = dj.init_params(model, jax.random.PRNGKey(0))
    t_params = dj.init_params(model, jax.random.PRNGKey(1))
    c = make_config(shape, dropout=0.0)

    def torch_model(p):
        m = DynaBertForSequenceClassification(c)
        sd = {k: torch.from_numpy(np.array(v))
              for k, v in convert.state_dict_from_params(cfg, p).items()}
        m.load_state_dict(sd, strict=True)
        return m

    nb = random_batch(batch, seq, c["vocab_size"], seed=1)
    tb = to_torch(nb)
    jb = {k: jnp.asarray(v) for k, v in nb.items()}
    out = {"shape": shape, "batch": batch, "seq": seq}

    # 1. forward (eval mode, full width) and a sub-network, same weights
    tm = torch_model(params).eval()
    fwd = {}
    for sub in (dj.FULL, dj.SubNet(0.25, 0.5)):
        ours = model.apply({"params": params}, jb["input_ids"], jb["attention_mask"],
                           jb["token_type_ids"], subnet=sub, deterministic=True)
        tm.set_subnet(sub.width, sub.depth)
        with torch.no_grad():
            logits, hidden = tm(tb["input_ids"], tb["attention_mask"], tb["token_type_ids"])
        fwd[sub.name] = {
            "logits_max_abs_diff": float(np.max(np.abs(np.asarray(ours.logits)
                                                       - logits.numpy()))),
            "logits_max_abs": float(np.max(np.abs(logits.numpy()))),
            "hidden_max_abs_diff": max(float(np.max(np.abs(np.asarray(a) - b.numpy())))
                                       for a, b in zip(ours.hidden_states, hidden)),
            "num_hidden_states": [len(ours.hidden_states), len(hidden)]}
    out["forward"] = fwd

    # 2. step 0 of the real train steps: per-student losses and grad norm
    tx, _ = steps.make_optimizer(2e-5, 1000)
    out["steps"] = {}
    for stage in stages:
        depths, lam_logit, lam_hidden = STAGES[stage]
        students = dj.grid(dj.WIDTHS, depths) if stage != "single" else (dj.FULL,)
        spec = steps.LossSpec("distill", lam_logit, lam_hidden)
        state = steps.init_state(params, tx)
        fn = jax.jit(steps.make_train_step(model, students, spec, tx))
        _, m = fn(state, t_params, jb, jax.random.PRNGKey(0))
        ours = np.asarray(m["losses"], np.float64)
        ts = TrainStep(torch_model(params), torch_model(t_params),
                       students_for(stage), lam_logit, lam_hidden)
        theirs, norm = ts(tb)
        theirs = np.asarray(theirs, np.float64)
        rel = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12)
        out["steps"][stage] = {
            "students": [s.name for s in students],
            "losses_ours": ours.tolist(), "losses_torch": theirs.tolist(),
            "loss_max_rel_diff": float(rel.max()),
            "grad_norm_ours": float(m["grad_norm"]), "grad_norm_torch": norm,
            "grad_norm_rel_diff": abs(float(m["grad_norm"]) - norm) / norm}
    tol = 1e-4
    out["pass"] = bool(
        all(f["logits_max_abs_diff"] <= tol for f in fwd.values())
        and all(s["loss_max_rel_diff"] <= tol for s in out["steps"].values()))
    return out


def print_parity(p: dict):
    print(f"parity ({p['shape']}, batch {p['batch']} x seq {p['seq']}, same weights, "
          f"dropout 0):")
    for name, f in p["forward"].items():
        print(f"  forward {name}: logits max |diff| {f['logits_max_abs_diff']:.2e} "
              f"(max |logit| {f['logits_max_abs']:.3f}), hidden states max |diff| "
              f"{f['hidden_max_abs_diff']:.2e}, {f['num_hidden_states'][0]} states")
    for stage, s in p["steps"].items():
        print(f"  stage {stage} step 0: {len(s['students'])} student losses, max rel diff "
              f"{s['loss_max_rel_diff']:.2e}; grad norm {s['grad_norm_ours']:.6g} vs "
              f"{s['grad_norm_torch']:.6g} (rel {s['grad_norm_rel_diff']:.2e})")
        for n, a, b in zip(s["students"], s["losses_ours"], s["losses_torch"]):
            print(f"    {n}: ours {a:.7f}  torch {b:.7f}")
    print(f"  parity within 1e-4: {'PASS' if p['pass'] else 'FAIL'}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="minilm", choices=sorted(SHAPES))
    ap.add_argument("--stage", default="2", choices=sorted(STAGES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timing mode)")
    ap.add_argument("--dtype", default="float32", choices=sorted(PRECISIONS))
    ap.add_argument("--dropout", type=float, default=0.1,
                    help="hidden and attention dropout (0: no random bits drawn)")
    ap.add_argument("--parity", action="store_true",
                    help="check against dynabert_jax on the same weights instead of timing")
    ap.add_argument("--parity-stages", default="1,2")
    args = ap.parse_args()
    if args.parity:
        result = parity(args.shape, args.batch, args.seq, args.threads,
                        tuple(args.parity_stages.split(",")))
        print_parity(result)
    else:
        result = bench(args.shape, args.stage, args.batch, args.seq, args.steps,
                       args.warmup, args.threads, args.device, args.dtype, args.dropout)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
