#!/usr/bin/env bash
# The GPU figures of issue 4 in one device call (about 6 minutes on an H100). The device
# tool's machines reach no hub or network: weights are random (bench/random_model.py), the
# default model's tokenizer and config travel in .gpu/smollm2, missing Python packages as
# wheels in .gpu/whl (see BENCHMARKS.md). JSON and a log go to $OUT.
#   bash bench/gpu.sh
#   PY=.venv/bin/python SEAL_GPU_NO_WHEELS=1 EXTRA="--epochs 1" bash bench/gpu.sh    (CPU smoke test)
set -u
OUT=${OUT:-/tmp/seal-gpu-out}; mkdir -p "$OUT"
if [ -z "${SEAL_GPU_NO_WHEELS:-}" ] && ls .gpu/whl/*.whl >/dev/null 2>&1; then
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
run_inner() {  # model, way, k
  timeout ${T_INNER:-150} $PY bench/inner_loop.py --self-edits bench/data/self_edits_k16.json --random-init $1 \
    --model-dir .gpu/smollm2 -k $3 --passages 2 --skip reference,$2 --warmup --json "$OUT/inner_$1_$3.json" $EXTRA
}
for m in smollm2-135m llama-1b; do
  echo "== inner loop, $m: (c) batched, K=16";   run_inner $m sequential 16
  echo "== inner loop, $m: (b) sequential, 4 self-edits per passage"; run_inner $m batched 4
done
echo "== serving, smollm2-135m"
timeout ${T_SERVE:-150} $PY bench/serving.py --random-init smollm2-135m --model-dir .gpu/smollm2 --registered 100 \
  --json "$OUT/serving_smollm2-135m.json" ${SERVE_EXTRA:-}
