#!/usr/bin/env bash
# The main job: a local stack on loopback. Starts nats-server, `augur serve`, and a feed that
# replays the committed real market data (AAPL FB GOOG IBM MSFT daily, EURUSD hourly) as
# ta-v1 feature vectors. A status line per second shows rates, latency and the last
# prediction. Ctrl-C stops everything cleanly (feed, then the service drains, then NATS).
#
#   scripts/run.sh                      # until Ctrl-C
#   AUGUR_RUN_SECONDS=30 scripts/run.sh # stop by itself after 30 s
#   AUGUR_FEED_RATE=2000 scripts/run.sh # vectors per second (default 500)
#   AUGUR_KAFKA__ENABLED=true scripts/run.sh  # also Kafka (starts tansu): predictions on
#                                       # ml-predictions-output as well (or enable [kafka] in the config)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

scripts/bootstrap.sh
echo "run: building augur (release)" >&2
cargo build --release --quiet --bin augur

RUN_DIR="$AUGUR_ROOT/run"
mkdir -p "$RUN_DIR"
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
NATS_PORT="${AUGUR_NATS_PORT:-4222}"
if ! port_free "$NATS_PORT"; then
  NATS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi
NATS_URL="nats://127.0.0.1:$NATS_PORT"
# The Open Inference Protocol over gRPC: Triton's port, or a free one when it is taken.
GRPC_BIND="${AUGUR_GRPC__BIND:-127.0.0.1:8001}"
if ! port_free "${GRPC_BIND##*:}"; then
  GRPC_BIND="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi
NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo >&2
  echo "run: stopping feed, service, nats" >&2
  [ -n "${FEED_PID:-}" ] && kill -TERM "$FEED_PID" 2>/dev/null && wait "$FEED_PID" 2>/dev/null || true
  [ -n "${AUGUR_PID:-}" ] && kill -TERM "$AUGUR_PID" 2>/dev/null && wait "$AUGUR_PID" 2>/dev/null || true
  [ -n "${NATS_PID:-}" ] && kill -TERM "$NATS_PID" 2>/dev/null && wait "$NATS_PID" 2>/dev/null || true
  if [ -n "${KAFKA_PID:-}" ] && kill -TERM "$KAFKA_PID" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$KAFKA_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$KAFKA_PID" 2>/dev/null || true
  fi
  echo "run: stopped; logs in $RUN_DIR" >&2
}
trap cleanup INT TERM EXIT

# Kafka when the config (or the environment) enables it: a local tansu broker.
KAFKA_ON="${AUGUR_KAFKA__ENABLED:-$(awk '/^\[kafka\]/{s=1;next} /^\[/{s=0} s && /^enabled *=/{print $3}' config.toml)}"
if [ "$KAFKA_ON" = "true" ]; then
  KAFKA_PORT=9092
  port_free "$KAFKA_PORT" || KAFKA_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # Its own session (a Ctrl-C must not stop the broker before the service has flushed to it);
  # its pid is tracked for the cleanup (setsid does not fork here: a background job of a
  # script is not a process-group leader).
  KAFKA_PID=$(cd "$RUN_DIR" && { setsid "$AUGUR_ROOT/.tools/bin/tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
     --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine sqlite://kafka.db >"$RUN_DIR/kafka.log" 2>&1 & echo $!; })
  for _ in $(seq 100); do port_free "$KAFKA_PORT" || break; sleep 0.05; done
  export AUGUR_KAFKA__ENABLED=true AUGUR_KAFKA__BROKERS="127.0.0.1:$KAFKA_PORT"
  echo "run: kafka (tansu) on 127.0.0.1:$KAFKA_PORT; predictions also on ml-predictions-output" >&2
fi

"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" >"$RUN_DIR/nats.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 100); do port_free "$NATS_PORT" || break; sleep 0.05; done
echo "run: nats-server on $NATS_URL" >&2

AUGUR_NATS__URL="$NATS_URL" AUGUR_GRPC__BIND="$GRPC_BIND" target/release/augur serve --config config.toml --status-ms 1000 \
  2>"$RUN_DIR/augur.log" &
AUGUR_PID=$!
for _ in $(seq 600); do
  grep -q "augur ready" "$RUN_DIR/augur.log" 2>/dev/null && break
  kill -0 "$AUGUR_PID" 2>/dev/null || { cat "$RUN_DIR/augur.log" >&2; exit 1; }
  sleep 0.05
done
echo "run: augur ready ($(grep -o 'startup_ms=[0-9]*' "$RUN_DIR/augur.log" | head -1)); predictions on predictions.<tf>.<symbol>" >&2
echo "run: Open Inference Protocol on http://127.0.0.1:8080/v2 and gRPC $GRPC_BIND (tritonclient works as is)" >&2

target/release/augur publish --url "$NATS_URL" --rate "${AUGUR_FEED_RATE:-500}" --repeat \
  2>"$RUN_DIR/feed.log" &
FEED_PID=$!
echo "run: feed replaying models/data/replay/ta-v1.pb at ${AUGUR_FEED_RATE:-500} vectors/s; Ctrl-C to stop" >&2

if [ -n "${AUGUR_RUN_SECONDS:-}" ]; then
  sleep "$AUGUR_RUN_SECONDS"
else
  wait "$AUGUR_PID"
fi
