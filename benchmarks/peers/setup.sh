#!/usr/bin/env bash
# A separate venv for peer libraries next to torch 2.13.0+cpu and numpy, with no torchvision (whose
# registry build is CUDA-only and breaks next to CPU torch). Idempotent: reuses ENV_DIR when it exists
# and only installs what is missing.
#
#     bash benchmarks/peers/setup.sh ENV_DIR PACKAGE...
#     bash benchmarks/peers/setup.sh /tmp/pythae pythae==0.1.2       # the VAE peer (benchmarks/vae_pythae.py)
#     bash benchmarks/peers/setup_flows.sh /tmp/flowpeers             # zuko and normflows
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash benchmarks/peers/setup.sh ENV_DIR PACKAGE..." >&2
  exit 2
fi
env_dir="$1"
shift

# Pin torch for every resolution step so that no peer drags in a CUDA build or another torch.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf 'torch==2.13.0\n' >"$constraints"

if [ ! -x "$env_dir/bin/python" ]; then
  python3 -m venv "$env_dir"
fi
"$env_dir/bin/python" -m pip install -q -c "$constraints" torch==2.13.0 numpy "$@"

# Report what landed; fail if torch is not the CPU 2.13.0 build or if torchvision was pulled in.
"$env_dir/bin/python" - "$@" <<'PY'
import importlib.metadata as md
import importlib.util
import re
import sys

import torch

names = ["torch", "numpy"] + [re.split(r"[=<>!~\[ ]", p, maxsplit=1)[0] for p in sys.argv[1:]]
print("peers:", ", ".join(f"{n} {md.version(n)}" for n in names))
if not torch.__version__.startswith("2.13.0") or torch.version.cuda is not None:
    sys.exit(f"expected torch 2.13.0 (CPU), got {torch.__version__} (cuda {torch.version.cuda})")
if importlib.util.find_spec("torchvision") is not None:
    print("warning: torchvision is installed in this env (a peer pulled it in)", file=sys.stderr)
PY
