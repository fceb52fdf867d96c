#!/usr/bin/env bash
# Scale-out figures against a local tansu broker (see benches/scaleout.rs): warm start of 600
# streams (time from ready to each stream's first complete prediction, with and without
# windows re-read from the log) and the rebalance pause (latency of the streams that do not
# move while an instance joins and leaves).
#   scripts/bench-scaleout.sh [--round-ms 500] [--rate 200] [--seconds 36] [--only warm|pause]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"
scripts/bootstrap.sh
cargo build --release --quiet --bin augur
cargo bench --quiet --bench scaleout -- "$@"
