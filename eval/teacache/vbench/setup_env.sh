#!/usr/bin/env bash
# The VBench scorer's own environment, in one command:
#     bash vbench/setup_env.sh [ENV_DIR]          # default: vbench/.venv
# vbench 0.1.5 pins transformers 4.33.2, tokenizers 0.13.3 and numpy < 2, so it cannot share
# videosys's environment. Then:
#     ENV_DIR/bin/python vbench/run_vbench.py --video-dir ... --output-dir ...
# Choose the torch build with TORCH_SPEC (default "torch==2.14.1 torchvision==0.29.1", a matching
# pair; add e.g. PIP_EXTRA_INDEX_URL for a CUDA-specific build). The GRiT dimensions (object_class,
# multiple_objects, color, spatial_relationship) also need detectron2, which is not on PyPI:
#     ENV_DIR/bin/pip install 'detectron2@git+https://github.com/facebookresearch/detectron2.git'
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dir="${1:-$here/.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

"$python" -m venv "$env_dir"
pip=("$env_dir/bin/python" -m pip install --disable-pip-version-check)
# torch first, so vbench's dependencies (timm, pyiqa, ...) resolve against it instead of replacing it
"${pip[@]}" $torch_spec
"${pip[@]}" "vbench==0.1.5" $torch_spec
# check: the scorer imports, and its prompt list is there
"$env_dir/bin/python" - <<'PY'
import importlib.util, json, os
import vbench  # noqa: F401  (imports torch, torchvision, decord, transformers)
info = os.path.join(list(importlib.util.find_spec("vbench").submodule_search_locations)[0], "VBench_full_info.json")
print(f"vbench ready: {len(json.load(open(info)))} prompts in {info}")
PY
echo "VBench environment: $env_dir  (run: $env_dir/bin/python $here/run_vbench.py --help)"
