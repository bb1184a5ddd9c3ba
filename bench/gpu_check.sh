#!/usr/bin/env bash
# Study-scale throughput on one GPU, offline, in a few minutes (see bench/gpu_check.py).
# Usage: bash bench/gpu_check.sh [--shapes DIR]   (DIR from `python bench/gpu_check.py --export-shapes DIR`)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$(command -v python3)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 "$PY" bench/gpu_check.py "$@"
