#!/usr/bin/env bash
# Create .venv with everything: the CPU build of PyTorch first (a bare "torch" requirement would
# pull a multi-GB CUDA build), then the project with its training, export, Triton and test extras.
# Idempotent: a second run only checks that the install is complete.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
FIND=(); [ -d /opt/wheels ] && FIND=(--find-links /opt/wheels)
"$VENV/bin/python" -m pip install --quiet "${FIND[@]}" "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[train,export,test,triton]"
# The PyPI Triton server (nvidia-pytriton) pins numpy<2, so it gets its own small environment;
# tests and `inclust-run serve` find it through INCLUST_TRITON_ENV (scripts/test.sh sets it).
TRITON_ENV=${INCLUST_TRITON_ENV:-.venv-triton}
if [ ! -x "$TRITON_ENV/bin/python" ]; then
  "$PY" -m venv "$TRITON_ENV"
fi
"$TRITON_ENV/bin/python" -m pip install --quiet "numpy<2" onnxruntime "nvidia-pytriton==0.7.0"
"$VENV/bin/python" - <<'PY'
import importlib, torch
for mod in ("anndata", "mudata", "onnx", "onnxruntime", "sklearn", "matplotlib", "pytest", "inclust_plus.training", "inclust_plus.export", "inclust_plus.runtime", "inclust_plus.triton.repository"):
    importlib.import_module(mod)
print(f"setup ok: torch {torch.__version__}, venv {__import__('sys').prefix}")
PY
