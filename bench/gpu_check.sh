#!/usr/bin/env bash
# Study-scale throughput on one GPU, offline, in a few minutes (see bench/gpu_check.py): the reference
# study's models at full shape with random weights (1-2B bf16, 7-8B 8-bit, a 70B's layers 4-bit).
#
# Usage: bash bench/gpu_check.sh [--wheels DIR] [gpu_check.py options...]
#   Wheels in DIR (default .whl/) are installed into /tmp/site, which goes first on PYTHONPATH: those
#   whose distribution this Python lacks (bitsandbytes; accelerate and psutil, which 8-bit loading
#   with device_map needs; sentencepiece and protobuf, which transformers 4 needs for the Mistral
#   tokenizer), a distribution already installed is left as it is. DIR/tokenizers.tar.xz (from
#   `python bench/gpu_check.py --export-tokenizers .whl/tokenizers.tar.xz`) is passed as --tokenizers
#   unless one is given. Without wheels or a GPU it runs all the same (see --device cpu).
#   GPU_CHECK_TIMEOUT (seconds, default 480) bounds the check; it prints what it measured when stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-$(command -v python3)}

wheels=.whl
args=()
while (($#)); do
  case $1 in
    --wheels) wheels=$2; shift 2 ;;
    --wheels=*) wheels=${1#--wheels=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

site=/tmp/site
shopt -s nullglob
found=("$wheels"/*.whl)
if ((${#found[@]})); then
  todo=()
  for whl in "${found[@]}"; do
    dist=$(basename "$whl"); dist=${dist%%-*}
    if have=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist" 2>/dev/null); then
      echo "wheels: $dist $have already installed, $(basename "$whl") not installed"
    else
      todo+=("$whl")
    fi
  done
  if ((${#todo[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${todo[@]}"
    for whl in "${todo[@]}"; do echo "wheels: installed $(basename "$whl") into $site"; done
  fi
fi
if [[ -d $site ]]; then
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if [[ -f $wheels/tokenizers.tar.xz ]] && [[ " ${args[*]-} " != *" --tokenizers"* ]]; then
  args+=(--tokenizers "$wheels/tokenizers.tar.xz")
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
df -h /dev/shm /tmp 2>/dev/null | sed 's/^/disk: /' || true
timeout --signal=TERM --kill-after=30 "${GPU_CHECK_TIMEOUT:-480}" "$PY" bench/gpu_check.py ${args[@]+"${args[@]}"}
