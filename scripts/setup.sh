#!/usr/bin/env bash
# Creates .venv with a CPU build of torch (a bare `torch` would pull several GB of CUDA wheels)
# and installs tiforge in it. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TIFORGE_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "$TORCH_SPEC"
fi
# Cheap when everything is there already; picks up dependencies added since the last run.
.venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v -e "^WARNING: Location" -e "^$" || true
# The real CLIP BPE vocabulary ships inside open_clip_torch; its own dependencies would pull
# torchvision, which has no CPU build here, so it is installed alone.
if ! .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('open_clip') is None)" 2>/dev/null; then
  .venv/bin/pip install -q --no-deps open_clip_torch
fi
