#!/usr/bin/env bash
# Builds {{name}}.wasm (world `{{world}}`) from service.js with componentize-js (build.mjs),
# against the WIT in {{sdk}}/wit and the SDK in {{sdk}}/sdk/js. componentize-js (pinned in
# package.json and package-lock.json) is installed once into ./node_modules — or give a
# node_modules that has it as COMPONENTIZE_JS_MODULES=/path/to/node_modules; after that the
# build needs no network. `./build.sh test` then runs tests/smoke.json with `saga-host test-run`
# (saga-host from $SAGA_HOST, else from PATH, else the one that wrote this project).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -e node_modules ] && [ -n "${COMPONENTIZE_JS_MODULES:-}" ]; then
    ln -s "$COMPONENTIZE_JS_MODULES" node_modules
fi
if [ ! -d node_modules/@bytecodealliance/componentize-js ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
node build.mjs
if [ "${1:-}" = test ]; then
    saga_host=${SAGA_HOST:-$(command -v saga-host || echo "{{saga_host}}")}
    "$saga_host" test-run tests/smoke.json
fi
