#!/usr/bin/env bash
# Runs every test of Augur on this machine: installs what is missing (bootstrap), then
# formatting, lints, the Rust workspace's tests (against real servers that the tests start)
# and the Python checks of the training side. Non-zero on any failure.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

scripts/bootstrap.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --release --workspace --no-fail-fast
echo "== python checks"
"$AUGUR_VENV/bin/python" -m pytest -q -p no:cacheprovider models/train/tests bench/plot
