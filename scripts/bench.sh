#!/usr/bin/env bash
# The benchmark harness: `augur bench` runs the floor (each member's raw batch-1 pass, a NATS
# round trip) and scenarios S1-S4 for Augur and the Python asyncio baseline
# (bench/peers/python_asyncio), each peer its own process on a fresh loopback nats-server.
# S5 puts Augur's HTTP infer beside Ray Serve (bench/peers/ray_serve) serving the same model.
# Writes bench/results/latest.{md,json} and a time-stamped copy, and draws the S2 ramp and the
# S1 distribution beside them (bench/plot/plot.py, <stamp>-s2.png, -s1.png). Arguments go to
# `augur bench` (see `target/release/augur bench --help`), e.g.
#
#   scripts/bench.sh                          # everything (about 6 minutes on 2 cores)
#   scripts/bench.sh --peers augur --scenarios s1 --s1-seconds 10
#   scripts/bench.sh --device cuda            # torch members on the GPU (both peers)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"
scripts/bootstrap.sh
cargo build --release --quiet --bin augur
rc=0
target/release/augur bench "$@" || rc=$?
# The pictures (S2 ramp, S1 distribution) beside the report, embedded in its Markdown.
# (Only for the default output folder: with --out the report is elsewhere.)
case " $* " in *" --out"*) own_out=1 ;; *) own_out=0 ;; esac
if [ -f bench/results/latest.json ] && [ "$rc" -eq 0 ] && [ "$own_out" -eq 0 ]; then
  stamp=$("$AUGUR_VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["stamp"])' bench/results/latest.json)
  if "$AUGUR_VENV/bin/python" bench/plot/plot.py "bench/results/$stamp.json" >/dev/null; then
    for kind in s2 s1; do
      if [ -f "bench/results/$stamp-$kind.png" ]; then
        cp "bench/results/$stamp-$kind.png" "bench/results/latest-$kind.png"
        printf '\n![%s](%s-%s.png)\n' "$kind" "$stamp" "$kind" >>"bench/results/$stamp.md"
        printf '\n![%s](latest-%s.png)\n' "$kind" "$kind" >>bench/results/latest.md
      fi
    done
  else
    echo "bench.sh: drawing the pictures failed" >&2
    rc=1
  fi
fi
exit "$rc"
