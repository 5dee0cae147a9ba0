#!/usr/bin/env bash
# The GPU figures of issue 4, in one device call (the device tool's machines: no hub, no
# network; weights are random, the tokenizer and config travel in .gpu/smollm2, missing
# Python packages as wheels in .gpu/whl). Writes JSON into $OUT.
#   bash bench/gpu.sh            EXTRA="--epochs 1 -k 2 --passages 1" bash bench/gpu.sh   (smoke)
set -u
OUT=${OUT:-/tmp/seal-gpu-out}; mkdir -p "$OUT"
if [ -d .gpu/whl ] && ls .gpu/whl/*.whl >/dev/null 2>&1 && [ -z "${SEAL_GPU_NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
EXTRA=${EXTRA:-}
for m in smollm2-135m llama-1b; do
  echo "== inner loop, $m"
  timeout ${T_INNER:-200} $PY bench/inner_loop.py --self-edits bench/data/self_edits_k16.json --random-init $m \
    --model-dir .gpu/smollm2 -k 16 --passages 2 --skip reference --warmup --json "$OUT/inner_$m.json" $EXTRA
done
echo "== serving, smollm2-135m"
timeout ${T_SERVE:-150} $PY bench/serving.py --random-init smollm2-135m --model-dir .gpu/smollm2 --registered 100 \
  --json "$OUT/serving_smollm2-135m.json" ${SERVE_EXTRA:-}
