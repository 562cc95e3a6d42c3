#!/usr/bin/env bash
# Builds the tutorial's two services, written in Python with the SDK in ../../sdk/python:
# exam.wasm (world `orchestrator`: it runs the saga) and attempt.wasm (world `participant`).
# componentize-py (pinned in requirements.txt) is installed once into ./.venv; after that the
# build needs no network.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
fi
sdk=../../sdk/python
.venv/bin/componentize-py --wit-path ../../wit --world orchestrator componentize -p exam -p "$sdk" app --output exam.wasm
.venv/bin/componentize-py --wit-path ../../wit --world participant componentize -p attempt -p "$sdk" app --output attempt.wasm
