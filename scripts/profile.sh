#!/usr/bin/env bash
# Where the service's CPU goes under load: runs `augur bench` for Augur alone at one S2 rate
# (600 streams) and samples the `augur serve` process with perf (call graphs, 999 Hz) during
# the measured step. Prints CPU by thread and the hottest symbols; perf data in run/perf.data.
#
#   scripts/profile.sh            # 10,000 vectors/s
#   scripts/profile.sh 5000       # another rate
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"
RATE="${1:-10000}"
command -v perf >/dev/null || { echo "profile: perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }
scripts/bootstrap.sh
cargo build --release --quiet --bin augur
mkdir -p run
target/release/augur bench --peers augur --scenarios s2 --s2-rates "$RATE" --s2-step-seconds 20 \
  --out run/profile-bench >run/profile-bench.log 2>&1 &
BENCH=$!
PID=""
for _ in $(seq 600); do
  PID=$(pgrep -f 'augur serve --config' | head -1 || true)
  [ -n "$PID" ] && break
  sleep 0.1
done
[ -n "$PID" ] || { echo "profile: the service did not start; see run/profile-bench.log" >&2; exit 1; }
# Past start-up and warm-up (40 rounds of 600 streams): well inside the 20 s step.
until grep -q 'warm-up' run/profile-bench.log; do sleep 0.2; done
sleep 12
perf record -q -o run/perf.data -F 999 -g -p "$PID" -- sleep 8 >/dev/null 2>&1
wait "$BENCH" || true
grep 'S2' run/profile-bench.log || true
echo "== CPU samples by thread"
perf report -i run/perf.data --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
echo "== CPU samples by thread and library"
perf report -i run/perf.data --no-children --sort comm,dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -16
echo "== hottest symbols"
perf report -i run/perf.data --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40
