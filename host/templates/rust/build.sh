#!/usr/bin/env bash
# Builds {{name}}.wasm (world `{{world}}`) with cargo for wasm32-wasip2; the SDK is saga-sdk in
# {{sdk}}/guest-sdk. `./build.sh test` then runs tests/smoke.json with `saga-host test-run`
# (saga-host from $SAGA_HOST, else from PATH, else the one that wrote this project).
set -euo pipefail
cd "$(dirname "$0")"
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2
cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm" {{name}}.wasm
echo "{{name}}.wasm: $(wc -c < {{name}}.wasm) bytes"
if [ "${1:-}" = test ]; then
    saga_host=${SAGA_HOST:-$(command -v saga-host || echo "{{saga_host}}")}
    "$saga_host" test-run tests/smoke.json
fi
