#!/usr/bin/env bash
# Creates .venv with torch and installs tiforge in it: the CUDA build of torch when an NVIDIA GPU
# answers (`nvidia-smi` works), the CPU build otherwise (a bare `torch` would pull several GB of CUDA
# wheels onto machines that cannot use them). TIFORGE_TORCH overrides the torch requirement, and
# TIFORGE_TORCH_INDEX the wheel index. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TIFORGE_TORCH:-torch==2.13.0}
if [ -n "${TIFORGE_TORCH_INDEX:-}" ]; then
  TORCH_INDEX=(--index-url "$TIFORGE_TORCH_INDEX")
elif [ -n "${TIFORGE_TORCH:-}" ]; then
  TORCH_INDEX=()  # the user's own requirement: pip's configured index decides
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch"
  TORCH_INDEX=()  # PyPI's Linux torch wheels are the CUDA build
else
  echo "no NVIDIA GPU (nvidia-smi): installing the CPU build of torch"
  # 2.13.0+cpu outranks PyPI's 2.13.0; offline, pip falls back to its configured sources after one retry
  TORCH_INDEX=(--retries 1 --extra-index-url https://download.pytorch.org/whl/cpu)
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "${TORCH_INDEX[@]}" "$TORCH_SPEC"
fi
# Cheap when everything is there already; picks up dependencies added since the last run.
.venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v -e "^WARNING: Location" -e "^$" || true
# The real CLIP BPE vocabulary ships inside open_clip_torch; its own dependencies would pull
# torchvision, which has no CPU build here, so it is installed alone.
if ! .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('open_clip') is None)" 2>/dev/null; then
  .venv/bin/pip install -q --no-deps open_clip_torch
fi
