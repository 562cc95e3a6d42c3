#!/usr/bin/env bash
# Builds grader.wasm from grader.py and the SDK in ../../sdk/python against the repo's WIT
# (world `participant`). componentize-py (pinned in requirements.txt) is installed once into
# ./.venv; after that the build needs no network.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
.venv/bin/componentize-py --wit-path ../../wit --world participant componentize -p . -p ../../sdk/python grader --output grader.wasm
