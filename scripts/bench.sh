#!/usr/bin/env bash
# The benchmark harness: `augur bench` runs the floor (each member's raw batch-1 pass, a NATS
# round trip) and scenarios S1-S4 for Augur and the Python asyncio baseline
# (bench/peers/python_asyncio), each peer its own process on a fresh loopback nats-server.
# Writes bench/results/latest.{md,json} and a time-stamped copy. Arguments go to
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
exec target/release/augur bench "$@"
