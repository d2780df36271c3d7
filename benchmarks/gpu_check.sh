#!/usr/bin/env bash
# The prepared GPU check: <= 5 minutes, no downloads, writes JSON (default gpu_check.json).
#   benchmarks/gpu_check.sh [--cpu] [--out FILE] [--tiny] [--cifar-root DIR]
# See benchmarks/gpu_check.py for the sections. GPU_CHECK_LIMIT (seconds, default 300) bounds
# the whole run; the JSON is rewritten after every section, so a cut-off run keeps its results.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
exec timeout "${GPU_CHECK_LIMIT:-300}" "$python" "$here/gpu_check.py" "$@"
