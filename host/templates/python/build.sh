#!/usr/bin/env bash
# Builds {{name}}.wasm (world `{{world}}`) from app.py with componentize-py, against the WIT in
# {{sdk}}/wit and the SDK in {{sdk}}/sdk/python. componentize-py (pinned in
# requirements.txt) is installed once into ./.venv — or give one already installed as
# COMPONENTIZE_PY=/path/to/componentize-py; after that the build needs no network.
# `./build.sh test` then runs tests/smoke.json with `saga-host test-run` (saga-host from
# $SAGA_HOST, else from PATH, else the one that wrote this project).
set -euo pipefail
cd "$(dirname "$0")"
sdk="{{sdk}}"
tool=${COMPONENTIZE_PY:-.venv/bin/componentize-py}
if [ -z "${COMPONENTIZE_PY:-}" ] && [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
"$tool" --wit-path "$sdk/wit" --world {{world}} componentize -p . -p "$sdk/sdk/python" app --output {{name}}.wasm
echo "{{name}}.wasm: $(wc -c < {{name}}.wasm) bytes"
if [ "${1:-}" = test ]; then
    saga_host=${SAGA_HOST:-$(command -v saga-host || echo "{{saga_host}}")}
    "$saga_host" test-run tests/smoke.json
fi
