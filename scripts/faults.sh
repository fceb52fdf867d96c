#!/usr/bin/env bash
# The fault suite's long settings (tests/faults.rs): every scenario against real servers
# (tansu with sqlite storage, nats-server with JetStream, the service as a child process,
# outside librdkafka and nats clients), the broker SIGKILLed and restarted FAULTS_BROKER_KILLS
# times (default 10) in one run, the soak for FAULTS_SOAK_SECONDS (default 600) at
# FAULTS_SOAK_RATE vectors/s (default 2000) over 600 streams, and a summary table (scenario, inputs, predictions expected and made, dead letters, duplicates,
# lost, unexpected, verdict). The quick settings run in scripts/test.sh. Non-zero on any
# failed scenario.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

scripts/bootstrap.sh

summary="$AUGUR_ROOT/target/faults-summary.md"
rm -f "$summary" target/faults-soak.txt
export FAULTS_SUMMARY="$summary" FAULTS_BROKER_KILLS="${FAULTS_BROKER_KILLS:-10}"
export FAULTS_SOAK_SECONDS="${FAULTS_SOAK_SECONDS:-600}" FAULTS_SOAK_RATE="${FAULTS_SOAK_RATE:-2000}"
status=0
cargo test --release --test faults -- --test-threads 1 --nocapture || status=$?
echo
echo "| scenario | inputs | predictions expected | predictions | dead letters | duplicates | lost | unexpected | verdict |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
sort "$summary"
if [[ -f target/faults-soak.txt ]]; then
  echo
  cat target/faults-soak.txt
fi
exit "$status"
