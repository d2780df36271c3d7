# Sourced by the GPU scripts: find a python with torch and make cnnlab importable from this
# checkout without installing it, as on a lent GPU machine whose python has torch but neither
# cnnlab nor pydantic. Sets $python, PYTHONPATH (the checkout first) and, where the carried
# folder has data, CNNLAB_DATA.
#
# The carried folder ($CNNLAB_GPU_DIR, default .gpu/ in the checkout, git-ignored) holds
#   wheels/*.whl            what that python lacks (pydantic and its needs), installed with
#                           pip --no-index into a temporary folder put on PYTHONPATH;
#   data/fashion_mnist/     the four Fashion-MNIST .gz files, found through CNNLAB_DATA.
# `make gpu-carry` prepares it; docs/gpu.md says how by hand.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
carried="${CNNLAB_GPU_DIR:-$repo/.gpu}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
python="$PYTHON"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# What cnnlab imports, looked up without importing (a torch import costs seconds).
missing() {
    "$python" -c "
import importlib.util
need = ['torch', 'numpy', 'yaml', 'pydantic', 'pydantic_core', 'annotated_types',
        'typing_inspection', 'typing_extensions', 'rich', 'matplotlib', 'PIL', 'cnnlab']
print(' '.join(m for m in need if importlib.util.find_spec(m) is None))"
}
lacking="$(missing)"
if [ -n "$lacking" ] && compgen -G "$carried/wheels/*.whl" >/dev/null; then
    site="$(mktemp -d "${TMPDIR:-/tmp}/cnnlab-site.XXXXXX")"
    echo "gpu_env: $python lacks $lacking; installing $(ls "$carried"/wheels/*.whl | wc -l)" \
        "carried wheels into $site"
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$site" "$carried"/wheels/*.whl
    # Before the python's own site-packages, so a carried typing_extensions wins too.
    export PYTHONPATH="$repo:$site${PYTHONPATH#"$repo"}"
    lacking="$(missing)"
fi
if [ -n "$lacking" ]; then
    echo "gpu_env: $python cannot import cnnlab from $repo; missing: $lacking" >&2
    echo "gpu_env: carry the missing packages as wheels in $carried/wheels (docs/gpu.md)" >&2
    exit 1
fi
if [ -z "${CNNLAB_DATA:-}" ] && [ -d "$carried/data" ]; then
    export CNNLAB_DATA="$carried/data"
fi
