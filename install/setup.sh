#!/usr/bin/env bash
# Idempotent setup: a .venv with the pinned stack, detectron2 (pure Python), the MMSeg stack and the
# Debian package with the built-in data. A re-run with nothing changed returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
FMNIST=/usr/share/datasets/fashion-mnist
key=$(cat pyproject.toml install/setup.sh install/repack_detectron2.sh | sha256sum | cut -c1-16)
stamp="$VENV/.setup-$key"

have_data() { [ -f "$FMNIST/train-images-idx3-ubyte.gz" ] && [ -f "$FMNIST/t10k-labels-idx1-ubyte.gz" ]; }

if [ -f "$stamp" ] && have_data; then exit 0; fi
start=$(date +%s)

if ! have_data; then
    echo "setup: installing the Debian package dataset-fashion-mnist"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
    have_data || { echo "setup: dataset-fashion-mnist did not provide $FMNIST" >&2; exit 1; }
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch from plain pip (it finds the wheels on local disk; uv/poetry would download ~3 GB)
"$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1 wheel
echo "setup: building detectron2 (pure Python) wheel"
d2=$(install/repack_detectron2.sh "$PY" "$VENV/wheels")
echo "setup: installing mae-transfer[all] and detectron2"
"$PY" -m pip install -q -e ".[all]" "$d2"
rm -f "$VENV"/.setup-*
touch "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s"
