#!/usr/bin/env bash
# Counts the host's instructions per POST /exams with callgrind: a figure that, unlike a timing,
# does not move with the machine's load. Starts the release host under valgrind on a fresh data
# directory (the bundled Exam and Attempt), sends WARMUP requests, then counts N more, one at a
# time, and prints the instructions per saga, the services' hottest wasm functions (named through
# the perf map the host writes with SAGA_HOST_PERFMAP=1) and the callgrind file
# (callgrind_annotate FILE).
#
#   N=200 WARMUP=20 ops/callgrind-exams.sh        (about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-200}"; WARMUP="${WARMUP:-20}"
host=target/release/saga-host
wasm=target/wasm32-wasip2/release
for f in "$host" "$wasm/guest_exam.wasm" "$wasm/guest_attempt.wasm"; do
  [ -e "$f" ] || { echo "$f is missing: run make components and cargo build --release -p saga-host" >&2; exit 1; }
done
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
data=$(mktemp -d); out="$data/callgrind.out"
mkdir "$data/components" && cp "$wasm/guest_exam.wasm" "$wasm/guest_attempt.wasm" "$data/components/"
env -u RUST_LOG SAGA_HOST_PERFMAP=1 setsid valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "$host" serve --listen 127.0.0.1:0 --data "$data" --components "$data/components" >"$data/log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
addr=""
for _ in $(seq 1 240); do
  addr=$(sed -n 's#^saga-host listening on http://\([^ ]*\).*#\1#p' "$data/log" | head -1)
  [ -n "$addr" ] && break; sleep 0.5
done
[ -n "$addr" ] || { echo "the host did not start; its log: $data/log" >&2; exit 1; }
post() {
  for _ in $(seq 1 "$1"); do
    curl -s -o /dev/null -w '%{http_code}\n' -X POST "http://$addr/exams" -H 'content-type: application/json' \
      -d "{\"user_uuid\":\"$(cat /proc/sys/kernel/random/uuid)\",\"exam_uuid\":\"$(cat /proc/sys/kernel/random/uuid)\"}"
  done | grep -vx 200 | sort | uniq -c | sed 's/^/not 200: /' >&2 || true
}
post "$WARMUP"
callgrind_control -i on "$pid" >/dev/null 2>&1
post "$N"
callgrind_control -i off "$pid" >/dev/null 2>&1
callgrind_control -d "$pid" >/dev/null 2>&1
sleep 1
kill "$pid"; wait "$pid" 2>/dev/null || true
trap - EXIT
file="$out.1"   # the dump of the counted requests (the file at exit counts nothing)
total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done=1}')
echo "instructions per POST /exams: $((total / N)) ($total over $N sagas)"
# Callgrind cannot name code compiled at run time ("???:0x…"); the perf map can.
callgrind_annotate --auto=no --threshold=100 "$file" 2>/dev/null |
  python3 -c '
import bisect, re, sys
n, path = int(sys.argv[1]), sys.argv[2]
spans = sorted((int(a, 16), int(s, 16), name) for a, s, name in
               (line.rstrip("\n").split(" ", 2) for line in open(path)))
starts = [s[0] for s in spans]
costs = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) .*\?\?\?:0x([0-9a-f]+)", line)
    if not m:
        continue
    i = bisect.bisect_right(starts, int(m.group(2), 16)) - 1
    name = spans[i][2] if i >= 0 and int(m.group(2), 16) < starts[i] + spans[i][1] else "?"
    costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
print(f"of which compiled wasm: {sum(costs.values()) // n} per saga; the hottest functions:")
for name, cost in sorted(costs.items(), key=lambda c: -c[1])[:12]:
    print(f"  {cost // n:>8}  {name[:110]}")
' "$N" "/tmp/perf-$pid.map"
rm -f "/tmp/perf-$pid.map"
echo "callgrind file: $file (callgrind_annotate --inclusive=yes $file)"
