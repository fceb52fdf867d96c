#!/usr/bin/env bash
# Raw inference microbenchmark (the floor): every model at batch 1, 8, 64, one intra-op thread.
#   scripts/bench-inference.sh [--device cpu|cuda] [--seconds S] [--onnx] [--also DIR ...]
# --onnx times every model that has both runtimes through its other one too (the ONNX members'
# TorchScript files), rows "<id> (twin)".
# --also DIR times another model folder in the same run (a version without a head, say).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"
cargo bench --quiet --bench inference -- "$@"
