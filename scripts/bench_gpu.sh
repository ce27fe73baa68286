#!/usr/bin/env bash
# The GPU benchmark (docs/speed.md) in one go: install, then every family at its published resolution (bf16,
# random weights): step time, peak memory, ours vs diffusers, eager vs compiled, each cache, sp = 2/4/8.
# Writes outputs/bench_gpu.json and prints a table; sized for ~10 minutes on one H100 / H200.
#
#   bash scripts/bench_gpu.sh                      # installs videosys + diffusers from the registry
#   bash scripts/bench_gpu.sh --fetch-wheels       # where the registry is reachable: diffusers' wheels -> .whl/
#   bash scripts/bench_gpu.sh --wheels .whl        # offline (a lent device, .whl carried): those wheels only
#   bash scripts/bench_gpu.sh --dry-run            # CPU, tiny sizes, no install: checks the script
# Offline, videosys runs from this checkout (PYTHONPATH) and only diffusers and what it needs beyond a CUDA
# PyTorch image (importlib_metadata) are installed, into /tmp/site, with no index and no dependency resolution.
# Any other argument goes to scripts/bench_gpu.py (e.g. --families latte,cogvideox --no-compile).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels="" dry=0 args=()
while (($#)); do
    case "$1" in
        --wheels) wheels="$2"; shift 2 ;;
        --dry-run) dry=1; args+=("--dry-run"); shift ;;
        --fetch-wheels)
            "${PYTHON:-$(command -v python || command -v python3)}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
                --implementation cp --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
            ls .whl; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
python="${PYTHON:-$(command -v python || command -v python3)}"  # a CUDA image may have python3 alone
if ((!dry)); then
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "bench_gpu.sh: needs a CUDA build of torch and a GPU (or --dry-run)" >&2; exit 1; }
    # torch is kept as installed (a CUDA build): only what videosys and the diffusers comparison add
    if [[ -n "$wheels" ]]; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$wheels"/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        "$python" -m pip install -q -e ".[memory]" diffusers  # memory: torchao, accelerate (bench_gpu.py --memory)
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 900 "$python" scripts/bench_gpu.py "${args[@]}"
