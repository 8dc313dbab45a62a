#!/usr/bin/env bash
# On a CUDA machine: train the nasrec-full supernet on synthetic Criteo-shaped data through the real
# training loop (bf16 autocast, pinned non-blocking copies) and print samples/s. Well under 5 minutes
# on one H100/H200. Usage: bench/gpu_check.sh [JSON_PATH]   (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PYTHON" >&2
    exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -m bench.supernet_train --space nasrec-full --steps "${STEPS:-300}" --batch-size 512 --device cuda \
    --json "${1:-runs/bench/gpu_check.json}"
