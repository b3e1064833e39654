#!/usr/bin/env bash
# Set up this checkout on a fresh machine: a virtual environment in .venv with onepass and everything the
# pipeline and the tests need. Idempotent; source it (`. scripts/setup.sh`) to keep .venv activated.
#
# PyTorch: if the Python that creates .venv can already import torch (a GPU machine's own build), .venv
# uses it (--system-site-packages); otherwise torch==${ONEPASS_TORCH_VERSION:-2.13.0} is installed, so that
# a bare `torch` requirement never pulls several GB of CUDA wheels. Offline data: where Debian's
# dataset-fashion-mnist package is installable (root, apt-get), it is installed as the Fashion-MNIST mirror;
# so are Debian's chromium and chromium-driver, for the browser test of the report.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

if [ ! -x "$root/.venv/bin/python" ]; then
    # the system's packages only where they bring a torch (a GPU machine's own build): elsewhere they would
    # only mix unrelated packages, and their pins, into .venv
    if "$python" -c "import torch" 2>/dev/null; then
        "$python" -m venv --system-site-packages "$root/.venv"
    else
        "$python" -m venv "$root/.venv"
    fi
fi
# shellcheck disable=SC1091
. "$root/.venv/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
    pip install -q "torch==${ONEPASS_TORCH_VERSION:-2.13.0}"
fi
pip install -q -e "$root[pipeline,baselines,test]"

fmnist=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$fmnist" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) ||
        echo "note: could not install Debian's dataset-fashion-mnist; Fashion-MNIST will be downloaded" >&2
fi
# Headless Chromium and its WebDriver for tests/test_report.py (the report rendered as a reader sees it):
# Debian's packages, never a browser download. About a minute the first time, nothing once installed.
if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null &&
    [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }) ||
        echo "note: could not install Debian's chromium and chromium-driver; tests/test_report.py will skip (and fail under CI)" >&2
fi
python -c "import onepass, torch, snakemake; print(f'onepass {onepass.__version__}, torch {torch.__version__}, snakemake {snakemake.__version__}')"
