#!/usr/bin/env bash
# Fill the git-ignored folder that travels to a lent GPU machine (default .gpu/, read by
# benchmarks/gpu_env.sh there): wheels of what that machine's python lacks, for its Python
# and platform (pydantic's stack at the versions installed here; its python is CPython
# GPU_PYTHON, default 3.12, on x86-64 Linux), and Fashion-MNIST (30 MB) for the real-data run.
#   benchmarks/gpu_carry.sh [PYTHON]      (PYTHON: the one with cnnlab installed; default .venv)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${1:-$repo/.venv/bin/python}"
carried="${CNNLAB_GPU_DIR:-$repo/.gpu}"
packages="pydantic pydantic-core annotated-types typing-inspection typing-extensions"
pins=$("$py" -c "
import importlib.metadata as m, sys
print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $packages)
mkdir -p "$carried/wheels" "$carried/data/fashion_mnist"
rm -f "$carried"/wheels/*.whl  # one version of each: two would stop the install there
# pip matches manylinux tags exactly, so several are named.
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$carried/wheels" $pins
fashion=$("$py" -c "
from cnnlab.data.download import locate
found = locate('fashion_mnist')
print(found or '')")
if [ -n "$fashion" ]; then
    cp "$fashion"/*-ubyte.gz "$carried/data/fashion_mnist/"
else
    echo "gpu_carry: Fashion-MNIST not found here (make data); the real-data run will skip" >&2
fi
du -sh "$carried"/* && ls "$carried/wheels"
