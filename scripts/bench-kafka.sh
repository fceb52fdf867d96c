#!/usr/bin/env bash
# Kafka latency through the service against a local tansu broker (see benches/kafka_latency.rs).
#   scripts/bench-kafka.sh [--rate R] [--seconds S]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"
scripts/bootstrap.sh
cargo bench --quiet --bench kafka_latency -- "$@"
