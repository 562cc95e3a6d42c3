#!/usr/bin/env bash
# Builds exam.wasm from exam.js and the SDK in ../../sdk/js against the repo's WIT
# (world `orchestrator`).
# componentize-js (pinned in package.json and package-lock.json) is installed once into
# ./node_modules; after that the build needs no network.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/@bytecodealliance/componentize-js ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
node build.mjs
