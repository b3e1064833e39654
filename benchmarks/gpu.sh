#!/usr/bin/env bash
# The GPU check of issue 17 (benchmarks/gpu.py) as one command.
#
#   bash benchmarks/gpu.sh --stage     # here, once: the offline mirrors of UCI Energy and Fashion-MNIST
#                                      # (about 31 MB) into .gpu-mirror/, git-ignored through .git/info/exclude
#   bash benchmarks/gpu.sh "$OUT"      # on the GPU machine: writes $OUT/gpu.json and $OUT/gpu.log
#
# On the device machine: command `bash benchmarks/gpu.sh "$OUT"`, carry [".gpu-mirror"], timeout_s 480 (the
# parts share GPU_BUDGET_S=420 s; the rest is the interpreter's start and a margin). Its image has torch,
# torchvision, pyyaml, tqdm and pytest: nothing is installed. Without .gpu-mirror/ the populations run on
# generated data of the real shapes and the cuda tests that need those datasets skip.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${1:-}" == "--stage" ]]; then
    shared="${SHARED_DATASETS:-$root/../shared/datasets}"
    fashion="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
    mkdir -p .gpu-mirror/uci_energy .gpu-mirror/fashion-mnist
    cp "$shared"/uci_energy/data.txt "$shared"/uci_energy/permutation_indices.txt .gpu-mirror/uci_energy/
    cp "$fashion"/*-ubyte.gz .gpu-mirror/fashion-mnist/
    exclude="$(git rev-parse --git-path info/exclude)"
    grep -qxF '/.gpu-mirror/' "$exclude" 2>/dev/null || echo '/.gpu-mirror/' >>"$exclude"
    du -sh .gpu-mirror
    exit 0
fi

out="${1:?usage: bash benchmarks/gpu.sh OUT_DIR | --stage}"
if [[ -d .gpu-mirror ]]; then
    export ONEPASS_DATA_MIRRORS="$root/.gpu-mirror"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec python3 benchmarks/gpu.py --out "$out" --budget-s "${GPU_BUDGET_S:-420}"
