#!/usr/bin/env bash
# Install the embedded default dataset (Fashion-MNIST, Debian package dataset-fashion-mnist)
# when it is missing and apt-get is available. Otherwise say how to provide the data.
set -euo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ] || [ -n "${LACOOT_DATA:-}" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
else
    echo "Fashion-MNIST is not installed and apt-get is unavailable: put the four IDX files in a" >&2
    echo "folder and set LACOOT_DATA=/that/folder (or pass --data-dir)." >&2
    exit 1
fi
