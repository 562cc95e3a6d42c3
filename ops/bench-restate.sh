#!/usr/bin/env bash
# Restate and saga-host side by side, one after the other on this machine: the Restate peer
# (../shared/peers/restate: restate-server + a TypeScript service doing what POST /exams does)
# under wrk at 1 and 32 connections, then `saga-bench http` at 1 and 32 clients; prints both
# and the ratio of sagas/s (saga-host / Restate).
#
# The peer's folder is copied to a scratch folder (mktemp -d) first and runs from there; its
# results and logs stay in it (printed at the end), its npm packages and Restate's data are
# removed at the end. The peer listens on 127.0.0.1:8080 (and :9070, :9080, :5122): run.sh
# refuses to start when one is taken, and nothing else of this script uses them. stop.sh (always run, by a trap) stops only the processes run.sh started, by
# the PIDs it recorded.
#
# Needs the network for npm (setup.sh's `npm ci`) and a release build of saga-host and
# saga-bench (`make bench-restate` builds them).
#
# Env: SECONDS_EACH (10) seconds per point for both; QUIET_WAIT (120) how long bench.sh waits
# for the machine to be quiet (other processes under 10% CPU) before it measures anyway
# (REQUIRE_QUIET=1: give up instead).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEER="${RESTATE_PEER:-$ROOT/../shared/peers/restate}"
SECONDS_EACH="${SECONDS_EACH:-10}"
BENCH="$ROOT/target/release/saga-bench"

[ -d "$PEER" ] || { echo "no Restate peer at $PEER" >&2; exit 1; }
[ -x "$BENCH" ] || { echo "$BENCH is missing: run make bench-restate" >&2; exit 1; }

work="$(mktemp -d)"
# run.sh, bench.sh and stop.sh keep their state, logs and PID files under PEER_TMP.
export PEER_TMP="$work"
cp -r "$PEER" "$work/"
cd "$work/restate"
finish() {
    "$work/restate/stop.sh"
    rm -rf "$work/restate/node_modules" "$work/restate-exams-peer/data"
}
trap finish EXIT

echo "== Restate peer in $work/restate"
./setup.sh
./run.sh
LEVELS="1 32" DURATION="${SECONDS_EACH}s" RUNS=1 OUT="$work/results" \
    QUIET_WAIT="${QUIET_WAIT:-120}" REQUIRE_QUIET="${REQUIRE_QUIET:-0}" ./bench.sh
finish
trap - EXIT

echo "== saga-host: saga-bench http --seconds $SECONDS_EACH"
"$BENCH" http --seconds "$SECONDS_EACH" --clients 1,32 | tee "$work/saga-bench.txt"

echo "== side by side (POST /exams; Restate: rps of wrk at 1 and 32 connections)"
printf '%-8s %14s %14s %8s %14s %14s\n' clients "saga-host/s" "Restate/s" ratio \
    "saga-host p50" "Restate p50"
for c in 1 32; do
    ours=$(awk -v c="$c" '$1 == "POST" && $2 == "/exams" && $3 == c {print $4, $5}' \
        "$work/saga-bench.txt")
    theirs=$(awk -F'\t' -v c="$c" 'NR > 1 && $2 == c {print $5, $6}' "$work/results/summary.tsv")
    read -r ours_rps ours_p50 <<<"$ours"
    read -r their_rps their_p50 <<<"$theirs"
    awk -v c="$c" -v a="$ours_rps" -v b="$their_rps" -v ap="$ours_p50" -v bp="$their_p50" \
        'BEGIN {printf "%-8s %14.0f %14.0f %8.1f %11.2f ms %11.2f ms\n", c, a, b, (b > 0 ? a / b : 0), ap, bp}'
done
echo "(Restate's results and logs: $work)"
