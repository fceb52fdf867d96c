#!/usr/bin/env bash
# The fault suite's long settings (tests/faults.rs): every scenario against real servers
# (tansu with sqlite storage, the service as a child process, an outside librdkafka client),
# the broker SIGKILLed and restarted FAULTS_BROKER_KILLS times (default 10) in one run, and a
# summary table (scenario, inputs, predictions expected and made, dead letters, duplicates,
# lost, unexpected, verdict). The quick settings run in scripts/test.sh. Non-zero on any
# failed scenario.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

scripts/bootstrap.sh

summary="$AUGUR_ROOT/target/faults-summary.md"
rm -f "$summary"
export FAULTS_SUMMARY="$summary" FAULTS_BROKER_KILLS="${FAULTS_BROKER_KILLS:-10}"
status=0
cargo test --release --test faults -- --test-threads 1 --nocapture || status=$?
echo
echo "| scenario | inputs | predictions expected | predictions | dead letters | duplicates | lost | unexpected | verdict |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
sort "$summary"
exit "$status"
