#!/usr/bin/env bash
# The GPU runs of docs/benchmarks.md and docs/results.md, in parts that each fit one
# 10-minute run on a lent machine (every part also records the device and library versions in env.txt).
# Wall times on an H100 (2026-11-23) in brackets; compiling dominates the training parts.
#
#   bash bench/gpu.sh OUTDIR latency-bert            # BERT-base: 100 batches of 128x128 in
#                                                    # bf16, fp32, tf32 (500 s)
#   bash bench/gpu.sh OUTDIR latency-minilm [DIR]    # the same for MiniLM (DIR: its HF
#                                                    # checkpoint if the package is missing)
#   bash bench/gpu.sh OUTDIR latency-bert-bf16w      # BERT-base in bf16 with bf16 weights on
#                                                    # both sides (PyTorch model.to(bf16), no
#                                                    # autocast): the bf16 deployment case
#   bash bench/gpu.sh OUTDIR train-bf16-minilm       # stages single/1/2, batch 32 (480 s)
#   bash bench/gpu.sh OUTDIR train-bf16-bert         # stages single/1, batch 32 (290 s)
#   bash bench/gpu.sh OUTDIR train-bf16-bert-b128    # stage 1 at batch 128, for MFU (200 s)
#   bash bench/gpu.sh OUTDIR train-bf16-bert-stage2  # stage 2, batch 32
#   bash bench/gpu.sh OUTDIR train-fp32              # IEEE float32, both shapes, stages 1/2
#   bash bench/gpu.sh OUTDIR mfu-profile             # stage 1 at batch 128, ours only, with
#                                                    # device time per kind of work (kernels
#                                                    # by HLO op: bench/xla_profile.py), XLA
#                                                    # command buffers off (their kernels
#                                                    # carry no HLO op); the others keep them
#   bash bench/gpu.sh OUTDIR mfu-dropout             # stage 1 at batch 128 without dropout,
#                                                    # ours only: dropout's share of a step
#   bash bench/gpu.sh OUTDIR mfu-rbg                 # the same with dropout's bits from XLA's
#                                                    # RngBitGenerator (config.dropout_prng=rbg)
#   bash bench/gpu.sh OUTDIR train-accum             # stage 1, BERT-base: 4 x 32 accumulated,
#                                                    # ours only (against train-bf16-bert's
#                                                    # batch 32 and -b128's batch 128)
#   bash bench/gpu.sh OUTDIR attention               # the attention core both ways (softmax
#                                                    # first / normalise after), fp32 and bf16,
#                                                    # batch 32 and 128, and the whole forward
#                                                    # against modeling.py before the change
#
#   bash bench/gpu.sh OUTDIR augment                 # the data augmentation's masked-LM
#                                                    # queries on the GPU, batch 16-256
#
#   bash bench/gpu.sh OUTDIR lease                   # what is still unmeasured, most wanted
#                                                    # first, within one call (LEASE_SECONDS,
#                                                    # 560): latency-minilm (bf16 and fp32),
#                                                    # mfu-profile, train-bf16-bert-stage2,
#                                                    # mfu-dropout, latency-bert, mfu-rbg,
#                                                    # latency-bert-bf16w
#
#   bash bench/gpu.sh OUTDIR results TASK            # docs/results.md at full size: the
#                                                    # official recipe on TASK's whole training
#                                                    # set, in bf16 (below)
#
# What the lent machine lacks (modeling.py before the attention change, MiniLM's weights,
# the GLUE files, two Python packages) is made here by `bash bench/gpu_kit.sh` into .gpu/
# and carried with every call: carry [".gpu"].
#
# results: `train.py --config configs/results.py:task=TASK,size=full,baselines=none`
# into runs/gpu/TASK, bf16 compute (DTYPE=float32 for IEEE), the teacher then DynaBERT_W
# and DynaBERT (BASELINES=direct, no_rewire or direct+no_rewire adds those). A call stops
# the run after RESULTS_SECONDS (540) and brings back its tables and metrics; the machine
# keeps runs/gpu (checkpoints, XLA's compilation cache) while warm, 30 s after a call, so
# the same command called again at once resumes from the last checkpoint (every 50 steps).
# RESULTS_ARGS: more train.py flags. Back in OUTDIR: results-TASK.tgz, the workdir without
# its checkpoints (unpack it into a folder of runs for python -m dynabert_jax.results).
#
# Peaks for MFU are the H100 SXM datasheet's dense figures (bf16 989.4, FP32 66.9
# TFLOP/s): set PEAK_BF16 / PEAK_FP32 for another device.
set -uo pipefail
out=${1:?usage: bench/gpu.sh OUTDIR PART [MINILM_DIR | TASK]}
part=${2:?PART: see the head of bench/gpu.sh}
arg=${3:-}
py=${PYTHON:-python3}
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
PEAK_BF16=${PEAK_BF16:-989.4}
PEAK_FP32=${PEAK_FP32:-66.9}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$(dirname "$0")/.."
mkdir -p "$out"
minilm=""
case $part in latency-*) minilm=$arg ;; esac
[ -z "$minilm" ] && [ -d .gpu/minilm ] && minilm=.gpu/minilm
if ! "$py" -c "import ml_collections, datasets" 2>/dev/null && [ -d .gpu/wheels ]; then
  "$py" -m pip install -q --no-deps --no-index .gpu/wheels/*.whl || exit 1
fi
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$py" -c "import jax, jaxlib, flax, optax, torch, transformers, numpy
print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__,
      'optax', optax.__version__, 'torch', torch.__version__, 'transformers',
      transformers.__version__, 'numpy', numpy.__version__)
print('jax devices', jax.devices(), '| torch',
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')
import dynabert_jax"
} 2>&1 | tee "$out/env.txt" || exit 1

latency() {  # $1: shape, $2: name suffix, then more latency.py arguments; JAX and
  # PyTorch share the GPU in one process: JAX takes 45%
  local shape=$1 name=$1${2:-}; shift 2
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "$py" bench/latency.py --gpu-protocol --shapes "$shape" \
    --dtype "${LATENCY_DTYPES:-bfloat16,float32,tf32}" ${minilm:+--minilm-dir "$minilm"} \
    --out "$out/latency-gpu-$name.json" "$@" 2>&1 | tee "$out/latency-$name.log"
}
train() {  # $1: name, then train_throughput.py arguments
  local name=$1; shift
  "$py" bench/train_throughput.py --torch-device cuda --steps 10 --warmup 2 \
    --parity none --out "$out/train_throughput-gpu-$name.json" "$@" \
    2>&1 | tee "$out/train-$name.log"
}
bf16=(--dtype bfloat16 --peak-tflops "$PEAK_BF16")
results() {  # $1: task; see the head of this file
  local task=${1:?usage: bench/gpu.sh OUTDIR results TASK} work=runs/gpu/${1:-}
  timeout -k 30 "${RESULTS_SECONDS:-540}" "$py" train.py \
    --config "configs/results.py:task=$task,size=full,baselines=${BASELINES:-none}" \
    --workdir "$work" --config.model.pretrained=.gpu/minilm \
    --config.data.data_dir=.gpu/data/glue --config.model.dtype="${DTYPE:-bfloat16}" \
    --config.compilation_cache_dir=runs/gpu/xla-cache --config.progress=false \
    ${RESULTS_ARGS:-} 2>&1 | tee -a "$out/results-$task.log"
  local rc=${PIPESTATUS[0]}
  # back (a call returns at most 8 files of 16 MiB): the workdir without its checkpoints,
  # i.e. every stage's grid tables, metrics and eval JSON, for python -m dynabert_jax.results
  tar -czf "$out/results-$task.tgz" --exclude=checkpoints -C runs/gpu "$task"
  [ "$rc" = 124 ] && echo "stopped after ${RESULTS_SECONDS:-540} s: call again to resume"
  return "$rc"
}

lease() {  # the parts in order while time is left; each one stopped at what remains
  local end=$((SECONDS + ${LEASE_SECONDS:-560})) p need left
  # part:seconds it needs to be worth starting, mostly compiling (on an H100: 160 s for
  # BERT-base's stage-1 step, ~330 s for stage 2)
  for p in latency-minilm:240 mfu-profile:200 train-bf16-bert-stage2:400 mfu-dropout:200 \
           latency-bert:500 mfu-rbg:200 latency-bert-bf16w:150; do
    need=${p#*:} p=${p%%:*} left=$((end - SECONDS))
    if [ "$left" -lt "$need" ]; then
      echo "lease: $left s left, not starting $p (needs about $need s)"; continue
    fi
    echo "lease: $p with at most $left s" | tee -a "$out/lease.log"
    LATENCY_DTYPES=bfloat16,float32 timeout -k 15 "$left" bash "$self" "$out" "$p"
    echo "lease: $p ended with status $? at $SECONDS s" | tee -a "$out/lease.log"
  done
}

case $part in
  lease) lease ;;
  latency-bert) latency bert-base "" ;;
  latency-minilm) latency minilm "" ;;
  latency-bert-bf16w) LATENCY_DTYPES=bfloat16 latency bert-base -bf16w --bf16-weights ;;
  train-bf16-minilm) train bf16-minilm "${bf16[@]}" --shapes minilm ;;
  train-bf16-bert) train bf16-bert "${bf16[@]}" --shapes bert-base --stages single,1 ;;
  train-bf16-bert-b128)
    train bf16-bert-b128 "${bf16[@]}" --shapes bert-base --stages 1 --batch 128 ;;
  train-bf16-bert-stage2) train bf16-bert-stage2 "${bf16[@]}" --shapes bert-base --stages 2 ;;
  train-fp32)
    train fp32 --dtype float32 --peak-tflops "$PEAK_FP32" --steps 5 --stages 1,2 ;;
  mfu-profile)  # without command buffers, whose kernels the profile cannot attribute
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" \
      train bf16-bert-b128-profile "${bf16[@]}" --shapes bert-base --stages 1 --batch 128 \
      --frameworks jax --profile 2 ;;
  mfu-dropout)
    train bf16-bert-b128-nodropout "${bf16[@]}" --shapes bert-base --stages 1 --batch 128 \
      --dropout 0 --frameworks jax --profile 2 ;;
  mfu-rbg)
    train bf16-bert-b128-rbg "${bf16[@]}" --shapes bert-base --stages 1 --batch 128 \
      --dropout-prng rbg --frameworks jax --profile 2 ;;
  train-accum)
    train bf16-bert-accum4 "${bf16[@]}" --shapes bert-base --stages 1 --batch 32 --accum 4 \
      --frameworks jax ;;
  attention)
    for dt in float32 bfloat16; do
      "$py" bench/attention_core.py --dtype $dt --batch-sizes 32,128 \
        --whole-model .gpu/modeling_afd75ba.py --out "$out/attention_core-gpu-$dt.json" \
        2>&1 | tee "$out/attention-$dt.log"
    done ;;
  augment)
    "$py" bench/augment_speed.py --device cuda --sentences 200 --rounds 3 \
      --batch-sizes 16,64,256 --tokenizer .gpu/minilm --data .gpu/data/glue \
      --out "$out/augment_speed-gpu.json" 2>&1 | tee "$out/augment.log" ;;
  results) results "$arg" ;;
  *) echo "unknown part $part (see the head of bench/gpu.sh)" >&2; exit 2 ;;
esac
