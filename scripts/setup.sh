#!/usr/bin/env bash
# Make .venv and install the project. Torch goes first, pinned: here the CPU wheel that lies on
# disk; on a GPU machine set TORCH_SPEC to your CUDA build (e.g. TORCH_SPEC="torch==2.13.0"
# with your index) before running. Everything else comes from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install --quiet "$TORCH_SPEC"
python -m pip install --quiet -e ".[test]"
python -c "import torch, transformers, datasets, accelerate, deepspeed; print('installed: torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| deepspeed', deepspeed.__version__)" 2>&1 | grep installed
