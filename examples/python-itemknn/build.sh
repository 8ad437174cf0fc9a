#!/bin/sh
# Builds python-itemknn.wasm from src/ with componentize-py, after the model's tests pass.
#
#   ./build.sh          test, then build python-itemknn.wasm
#   ./build.sh test     the tests only (plain Python, no WebAssembly)
#
# The first run makes a virtualenv in .venv (or $VENV) with the pinned tools of
# requirements.txt; later runs reuse it.
set -eu
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/componentize-py" ] || [ ! -x "$VENV/bin/pytest" ]; then
    echo "creating the virtualenv $VENV (componentize-py, pytest)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
fi

"$VENV/bin/pytest" -q tests
[ "${1:-}" = test ] && exit 0

"$VENV/bin/componentize-py" --wit-path wit --world strategy componentize \
    --python-path src app --output python-itemknn.wasm
echo "built python-itemknn.wasm; next: recohost plugin check python-itemknn.wasm"
