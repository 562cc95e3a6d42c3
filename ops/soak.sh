#!/usr/bin/env bash
# `make soak`: longer kill campaigns than `make test` runs. For seeds 1..SEEDS it runs the crash
# test (the embedded defaults: SQLite, the in-process broker; the host killed at random moments
# under load, then every saga checked to end with each participant effect exactly once) and
# the two-host kill test (PostgreSQL + NATS: one host killed under load, the other finishes its
# sagas, each effect exactly once), and prints one line per run and a summary. A run fails on
# any lost, doubled or stuck saga (the tests' own assertions); its seed replays it:
# SAGA_CRASH_SEED=SEED cargo test --release --test crash (or --test cluster).
set -uo pipefail
cd "$(dirname "$0")/.."
seeds=${SEEDS:-100}
cargo test --release --test crash --test cluster --no-run -q 2>/dev/null || {
    echo "soak: the tests do not build; run make test first" >&2
    exit 2
}
runs=0 failed=0 acknowledged=0 failures=""
run() {
    local label=$1 seed=$2
    shift 2
    local out
    out=$(SAGA_CRASH_SEED=$seed cargo test --release -q "$@" -- --nocapture 2>&1)
    local status=$?
    local acked
    acked=$(grep -oE '^[0-9]+ of [0-9]+ starts were acknowledged' <<<"$out" | awk '{s += $1} END {print s + 0}')
    runs=$((runs + 1))
    acknowledged=$((acknowledged + acked))
    if [ $status -eq 0 ]; then
        printf '%-8s seed %-4s ok      %5s sagas acknowledged, all ended, each effect once\n' "$label" "$seed" "$acked"
    else
        failed=$((failed + 1))
        failures="$failures $label:$seed"
        printf '%-8s seed %-4s FAILED  (replay: SAGA_CRASH_SEED=%s cargo test --release %s)\n' "$label" "$seed" "$seed" "$*"
        grep -E 'panicked|did not end|times|lost' <<<"$out" | head -5 | sed 's/^/         /'
    fi
}
for seed in $(seq 1 "$seeds"); do
    run crash "$seed" --test crash
    run cluster "$seed" --test cluster when_one_of_two_hosts_is_killed
done
echo "soak: $runs runs ($seeds seeds × crash, two-host kill), $acknowledged sagas acknowledged before the kills, $failed failed${failures:+:$failures}"
[ "$failed" -eq 0 ]
