#!/usr/bin/env bash
# A local cluster on loopback: N Augur instances sharing one feed through the brokers.
#   - tansu with the partitioned input topic (AUGUR_CLUSTER_PARTITIONS, default 6): the
#     instances form one consumer group (cooperative-sticky) and hand partitions over as they
#     come and go;
#   - nats-server with deploy/nats.conf (the subject mapping that partitions features.<tf>.<sym>);
#     predictions go out on NATS and Kafka;
#   - the feed: `augur feed` (ta-v1 from the committed real OHLCV) into Kafka.
# Each instance's HTTP (127.0.0.1:9101, 9102, ...) reports what it owns: /api/v1/health ->
# buses.kafka.assigned_partitions and active_streams; a line every 5 s shows them all.
#
#   scripts/cluster.sh 3                       # until Ctrl-C
#   AUGUR_RUN_SECONDS=60 scripts/cluster.sh 3  # stop by itself
#   AUGUR_CLUSTER_INPUT=nats scripts/cluster.sh 2
#       # NATS partitions instead: instance i takes partitions p with p mod N == i of the four
#       # that deploy/nats.conf makes, and the feed publishes on NATS
#   AUGUR_FEED_RATE=2000 AUGUR_FEED_SYMBOLS=100 scripts/cluster.sh 4
#
# Instances use dynamic group membership: against tansu 0.6.0 static membership
# (kafka.instance_id) left the partitions of a restarted or departed member unassigned when
# several instances share the group (see docs/SCALING.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

N="${1:-3}"
[[ "$N" =~ ^[1-9][0-9]?$ ]] || { echo "usage: scripts/cluster.sh N (1-99 instances)" >&2; exit 2; }
INPUT="${AUGUR_CLUSTER_INPUT:-kafka}"
PARTITIONS="${AUGUR_CLUSTER_PARTITIONS:-6}"
if [ "$INPUT" = "nats" ] && [ "$N" -gt 4 ]; then
  echo "cluster: deploy/nats.conf makes 4 NATS partitions: at most 4 instances with AUGUR_CLUSTER_INPUT=nats" >&2
  exit 2
fi

scripts/bootstrap.sh
echo "cluster: building augur (release)" >&2
cargo build --release --quiet --bin augur

RUN_DIR="$AUGUR_ROOT/run/cluster"
mkdir -p "$RUN_DIR"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 200); do port_free "$1" || return 0; sleep 0.05; done; echo "cluster: port $1 not up" >&2; return 1; }

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo >&2
  echo "cluster: stopping feed, instances, brokers" >&2
  [ -n "${FEED_PID:-}" ] && kill -TERM "$FEED_PID" 2>/dev/null && wait "$FEED_PID" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${NATS_PID:-}" ] && kill -TERM "$NATS_PID" 2>/dev/null && wait "$NATS_PID" 2>/dev/null || true
  if [ -n "${KAFKA_PID:-}" ] && kill -TERM "$KAFKA_PID" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$KAFKA_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$KAFKA_PID" 2>/dev/null || true
  fi
  echo "cluster: stopped; logs in $RUN_DIR" >&2
}
trap cleanup INT TERM EXIT

NATS_PORT=$(free_port)
NATS_URL="nats://127.0.0.1:$NATS_PORT"
NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
"$NATS_BIN" -c deploy/nats.conf -a 127.0.0.1 -p "$NATS_PORT" >"$RUN_DIR/nats.log" 2>&1 &
NATS_PID=$!
wait_port "$NATS_PORT"
echo "cluster: nats-server on $NATS_URL with deploy/nats.conf's partition mapping" >&2

KAFKA_PORT=$(free_port)
rm -f "$RUN_DIR/kafka.db"
KAFKA_PID=$(cd "$RUN_DIR" && { setsid "$AUGUR_ROOT/.tools/bin/tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
   --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine sqlite://kafka.db >"$RUN_DIR/kafka.log" 2>&1 & echo $!; })
wait_port "$KAFKA_PORT"
BROKERS="127.0.0.1:$KAFKA_PORT"
echo "cluster: kafka (tansu) on $BROKERS, $PARTITIONS partitions" >&2

for i in $(seq 0 $((N - 1))); do
  http="127.0.0.1:$((9101 + i))"
  port_free "$((9101 + i))" || http="127.0.0.1:$(free_port)"
  nats_parts=""
  for p in 0 1 2 3; do
    if [ $((p % N)) -eq "$i" ]; then nats_parts="$nats_parts${nats_parts:+,}$p"; fi
  done
  nats_parts="[$nats_parts]"
  env=(AUGUR_HTTP__BIND="$http" AUGUR_GRPC__BIND="127.0.0.1:0" AUGUR_NATS__URL="$NATS_URL" AUGUR_NATS__PARTITION_COUNT=4
       AUGUR_KAFKA__ENABLED=true AUGUR_KAFKA__BROKERS="$BROKERS" AUGUR_KAFKA__PARTITIONS="$PARTITIONS"
       AUGUR_KAFKA__INSTANCE_ID="")
  if [ "$INPUT" = "nats" ]; then
    # NATS input by partition; the Kafka consumer reads a topic nobody feeds.
    env+=(AUGUR_NATS__PARTITIONS="$nats_parts" AUGUR_KAFKA__INPUT_TOPIC="ml-feature-vectors-unused")
  else
    # Kafka input; the NATS subscriptions take partitions nobody publishes on.
    env+=(AUGUR_NATS__PARTITIONS="[$((i % 4))]")
  fi
  env "${env[@]}" RUST_LOG="${RUST_LOG:-info}" target/release/augur serve --config config.toml \
    2>"$RUN_DIR/augur-$i.log" &
  pids+=($!)
  echo "$http" >"$RUN_DIR/http-$i"
done
for i in $(seq 0 $((N - 1))); do
  for _ in $(seq 600); do
    grep -q "augur ready" "$RUN_DIR/augur-$i.log" 2>/dev/null && break
    kill -0 "${pids[$i]}" 2>/dev/null || { cat "$RUN_DIR/augur-$i.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "cluster: instance $i ready on http://$(cat "$RUN_DIR/http-$i")" >&2
done

feed=(target/release/augur feed --symbols "${AUGUR_FEED_SYMBOLS:-20}" --rate "${AUGUR_FEED_RATE:-500}")
if [ "$INPUT" = "nats" ]; then feed+=(--nats "$NATS_URL"); else feed+=(--kafka "$BROKERS"); fi
"${feed[@]}" 2>"$RUN_DIR/feed.log" &
FEED_PID=$!
echo "cluster: feed into $INPUT at ${AUGUR_FEED_RATE:-500} vectors/s; Ctrl-C to stop" >&2

ownership() {
  for i in $(seq 0 $((N - 1))); do
    curl -s "http://$(cat "$RUN_DIR/http-$i")/api/v1/health" | python3 -c '
import json, sys
i = sys.argv[1]
try:
    h = json.load(sys.stdin)
except Exception:
    print(f"  {i}: down", end=""); sys.exit()
k = h.get("buses", {}).get("kafka", {})
n = h.get("buses", {}).get("nats", {})
parts = [s.rsplit(".", 1)[1] for s in n.get("input_subjects", [])]
print("  %s: kafka %s nats %s streams %s" % (i, k.get("assigned_partitions"), sorted(set(parts)), h.get("active_streams")), end="")
' "$i" || true
  done
  echo
}
end=$(( $(date +%s) + ${AUGUR_RUN_SECONDS:-1000000000} ))
while [ "$(date +%s)" -lt "$end" ]; do
  sleep 5
  printf 'cluster:' >&2; ownership >&2
done
