#!/usr/bin/env bash
# The GPU figures in one run (about 8 minutes on one GPU): penalty overhead (bf16, resnet18, batch
# 256), one CIFAR-sized training epoch, collapsed/full latency in eager PyTorch and ONNX Runtime.
# Usage: benchmarks/gpu_check.sh [OUT.json]   (falls back to the CPU when no GPU is visible)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
exec "$PY" benchmarks/gpu_check.py --device auto --out "${1:-gpu_check.json}"
