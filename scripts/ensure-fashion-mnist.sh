#!/usr/bin/env bash
# Make sure Fashion-MNIST is readable: Debian's dataset-fashion-mnist package when the files are
# missing and apt-get is usable (root, or passwordless sudo), otherwise cnnlab's own download
# from the official location with checksum verification. Does nothing when the files exist.
set -euo pipefail
PY=${1:-.venv/bin/python}
SYSTEM=/usr/share/datasets/fashion-mnist

if [ ! -f "$SYSTEM/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="skip"; fi
    fi
    if [ "$SUDO" != skip ]; then
        echo "installing Debian's dataset-fashion-mnist"
        if ! $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
            $SUDO apt-get update -qq >/dev/null 2>&1 || true
            $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
                || echo "apt-get could not install it; falling back to the official download"
        fi
    fi
fi
"$PY" -m cnnlab data fetch fashion_mnist
