#!/usr/bin/env bash
# `make soak`: longer kill campaigns than `make test` runs. For seeds 1..SEEDS it runs the crash
# test (the embedded defaults: SQLite, the in-process broker; the host killed at random moments
# under load, then every saga checked to end with each participant effect exactly once) and
# the two-host kill test (PostgreSQL + NATS: one host killed under load, the other finishes its
# sagas, each effect exactly once), and prints one line per run and a summary. A run fails on
# any lost, doubled or stuck saga (the tests' own assertions); its seed replays it:
# SAGA_CRASH_SEED=SEED cargo test --release --test crash (or --test cluster).
#
# The campaign runs copies of the test executables and of the host binary made once at its
# start, so that a rebuild meanwhile (the campaign takes hours at the default) changes nothing
# it tests.
set -uo pipefail
cd "$(dirname "$0")/.."
seeds=${SEEDS:-100}
# cargo names each test executable on stderr: "Executable tests/crash.rs (target/…/crash-HASH)".
built=$(cargo test --release --test crash --test cluster --no-run 2>&1) || {
    echo "soak: the tests do not build; run make test first" >&2
    exit 2
}
snapshot=$(mktemp -d "${TMPDIR:-/tmp}/saga-soak.XXXXXX")
trap 'rm -rf "$snapshot"' EXIT
for test in crash cluster; do
    executable=$(sed -nE "s|.*Executable .*tests/$test\.rs \((.*)\)|\1|p" <<<"$built")
    cp "$executable" "$snapshot/$test" || exit 2
done
cp target/release/saga-host "$snapshot/saga-host"
export SAGA_TEST_HOST_BIN="$snapshot/saga-host"
# A failed run's whole output, to read after the campaign.
logs=${SOAK_LOGS:-target/soak}
mkdir -p "$logs"
runs=0 failed=0 acknowledged=0 failures=""
run() {
    local label=$1 seed=$2 test=$3
    shift 3
    local out
    # Run from host/, as cargo test would (the tests find the repository from there).
    out=$(cd host && SAGA_CRASH_SEED=$seed "$snapshot/$test" --nocapture "$@" 2>&1)
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
        printf '%-8s seed %-4s FAILED  (replay: SAGA_CRASH_SEED=%s cargo test --release --test %s %s)\n' "$label" "$seed" "$seed" "$test" "$*"
        grep -E 'panicked|did not end|times|lost' <<<"$out" | head -5 | sed 's/^/         /'
        printf '%s\n' "$out" >"$logs/$label-$seed.log"
        printf '         its whole output: %s\n' "$logs/$label-$seed.log"
    fi
}
for seed in $(seq 1 "$seeds"); do
    run crash "$seed" crash
    run cluster "$seed" cluster when_one_of_two_hosts_is_killed
done
echo "soak: $runs runs ($seeds seeds × crash, two-host kill), $acknowledged sagas acknowledged before the kills, $failed failed${failures:+:$failures}"
[ "$failed" -eq 0 ]
