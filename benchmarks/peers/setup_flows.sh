#!/usr/bin/env bash
# A separate venv for the normalizing-flow peers (zuko, normflows) next to torch 2.13.0+cpu, numpy, and no
# torchvision. Idempotent: reuses ENV_DIR when it exists and only installs what is missing.
#
#     bash benchmarks/peers/setup_flows.sh [ENV_DIR]        # default /tmp/flowpeers
#     /tmp/flowpeers/bin/python benchmarks/peers/flows_zuko.py --model maf --seconds 60
set -euo pipefail
env_dir="${1:-/tmp/flowpeers}"

# Pin torch for every resolution step so that no peer drags in a CUDA build or another torch.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.13.0\n' >"$constraints"

if [ ! -x "$env_dir/bin/python" ]; then
  python3 -m venv "$env_dir"
fi
"$env_dir/bin/python" -m pip install -q -c "$constraints" torch==2.13.0 numpy zuko normflows

# Report what landed; fail if torch is not the CPU 2.13.0 build or if torchvision was pulled in.
"$env_dir/bin/python" - <<'EOF'
import importlib.metadata as md
import importlib.util
import sys

import torch

versions = {name: md.version(name) for name in ("torch", "numpy", "zuko", "normflows")}
print("flow peers:", ", ".join(f"{k} {v}" for k, v in versions.items()))
if not torch.__version__.startswith("2.13.0") or torch.version.cuda is not None:
    sys.exit(f"expected torch 2.13.0 (CPU), got {torch.__version__} (cuda {torch.version.cuda})")
if importlib.util.find_spec("torchvision") is not None:
    print("warning: torchvision is installed in this env (a peer pulled it in)", file=sys.stderr)
EOF
