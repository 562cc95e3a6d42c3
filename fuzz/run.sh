#!/usr/bin/env bash
# Runs every fuzz target for the given seconds (default 60) on stable Rust, without a sanitizer
# (saga-core has no unsafe code: what we look for are panics, which libFuzzer reports as
# crashes). Each run starts from the target's corpus in fuzz/corpus and leaves it unchanged: new
# inputs go to a scratch directory. A crash writes its input to fuzz/artifacts/TARGET and fails.
#
# To grow the committed corpus instead: cargo fuzz run --sanitizer none -O TARGET, then
# minimise it with -set_cover_merge=1 (see the README's Fuzzing section).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi
cargo fmt --check
cargo clippy --release --bins -- -D warnings

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    mkdir -p "$scratch/$target"
    echo "fuzzing $target for $seconds s"
    if ! cargo fuzz run --sanitizer none -O "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$scratch/$target.log" 2>&1; then
        tail -n 40 "$scratch/$target.log"
        echo "fuzz target $target failed: its input is in fuzz/artifacts/$target" >&2
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|new_units_added)" "$scratch/$target.log"
done
