#!/usr/bin/env bash
# Set up a virtual environment for lacoot in .venv (idempotent).
#   scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test,cli
# torch is pinned to the CPU build 2.13.0 first, so that the package's own `torch>=2.1`
# requirement is already met and pip never pulls the multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-cli}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
.venv/bin/python -c 'import torch' 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[${EXTRAS}]"
