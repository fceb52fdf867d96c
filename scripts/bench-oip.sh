#!/usr/bin/env bash
# Latency and throughput of the Open Inference Protocol's infer, over HTTP (binary data, as
# tritonclient sends it) and gRPC, at concurrency 1 and 16: starts nats-server and
# `augur serve` (shipped config) on free loopback ports, runs `augur bench-oip`, stops both.
# The table and the JSON go to bench/results/oip-<UTC time>.{md,json} and oip-latest.*.
#
#   scripts/bench-oip.sh
#   AUGUR_BENCH_OIP_ARGS="--seconds 10 --concurrency 1,4,16" scripts/bench-oip.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

scripts/bootstrap.sh
cargo build --release --quiet --bin augur

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
OUT_DIR="$AUGUR_ROOT/bench/results"
RUN_DIR="$AUGUR_ROOT/run/bench-oip"
mkdir -p "$OUT_DIR" "$RUN_DIR"
NATS_PORT=$(free_port); HTTP_PORT=$(free_port); GRPC_PORT=$(free_port)
NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" >"$RUN_DIR/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do port_open "$NATS_PORT" && break; sleep 0.05; done
AUGUR_NATS__URL="nats://127.0.0.1:$NATS_PORT" AUGUR_HTTP__BIND="127.0.0.1:$HTTP_PORT" \
  AUGUR_GRPC__BIND="127.0.0.1:$GRPC_PORT" target/release/augur serve --config config.toml 2>"$RUN_DIR/augur.log" &
AUGUR_PID=$!
pids=("$AUGUR_PID" "${pids[@]}")
for _ in $(seq 600); do grep -q "augur ready" "$RUN_DIR/augur.log" && break; sleep 0.05; done
grep -q "augur ready" "$RUN_DIR/augur.log" || { echo "bench-oip: the service did not start (see $RUN_DIR/augur.log)" >&2; exit 1; }

STAMP=$(date -u +%Y-%m-%dT%H-%M-%SZ)
# shellcheck disable=SC2086
target/release/augur bench-oip --http "127.0.0.1:$HTTP_PORT" --grpc "127.0.0.1:$GRPC_PORT" \
  --out "$OUT_DIR/oip-$STAMP" ${AUGUR_BENCH_OIP_ARGS:-}
cp "$OUT_DIR/oip-$STAMP.md" "$OUT_DIR/oip-latest.md"
cp "$OUT_DIR/oip-$STAMP.json" "$OUT_DIR/oip-latest.json"
echo "bench-oip: bench/results/oip-$STAMP.md" >&2
