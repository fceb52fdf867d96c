#!/usr/bin/env bash
# Fuzzes the HTTP API through its own OpenAPI document (GET /openapi.json) with schemathesis
# (pinned in tests/schemathesis/requirements.txt), every check on: no 5xx, every status,
# content type and body as documented, invalid input refused, valid input accepted, the
# bearer token enforced, 405 with `Allow` for an undocumented method. Starts nats-server and
# `augur serve` (shipped config.toml, a bearer token set) on free loopback ports, runs three
# passes, stops both; non-zero on any failure or error.
#
#   1. every operation but PATCH /api/v1/config, against the shipped config;
#   2. PATCH /api/v1/config alone: a valid patch really changes the running service, so it
#      comes after the operations whose answers depend on the config (predict);
#   3. every GET again, against whatever the patches left (readiness must still be 200).
#
#   scripts/schemathesis.sh
#   AUGUR_SCHEMATHESIS_EXAMPLES=1000 scripts/schemathesis.sh  # test cases per operation (200)
#   AUGUR_SCHEMATHESIS_SEED=1234 scripts/schemathesis.sh      # replay a run (its seed is printed)
#
# Settings that are not flags (health checks, a per-operation check setting) are in
# tests/schemathesis/schemathesis.toml, with the reasons. Reports (JUnit XML and JSON per
# pass) and the servers' logs go to target/schemathesis/ (AUGUR_SCHEMATHESIS_OUT). Alone, the
# script bootstraps and builds the release binary; tests/schemathesis.rs runs it from
# scripts/test.sh with 25 examples and the binary cargo built (AUGUR_BIN).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

log() { echo "schemathesis: $*" >&2; }

EXAMPLES="${AUGUR_SCHEMATHESIS_EXAMPLES:-200}"
SEED="${AUGUR_SCHEMATHESIS_SEED:-$((RANDOM * 32768 + RANDOM))}"
OUT="${AUGUR_SCHEMATHESIS_OUT:-$AUGUR_ROOT/target/schemathesis}"
CONFIG="$AUGUR_ROOT/tests/schemathesis/schemathesis.toml"
SCHEMATHESIS="$AUGUR_VENV/bin/schemathesis"
for n in "$EXAMPLES" "$SEED"; do
  case "$n" in
    '' | *[!0-9]*) log "AUGUR_SCHEMATHESIS_EXAMPLES and AUGUR_SCHEMATHESIS_SEED take a number, got '$n'"; exit 2 ;;
  esac
done
[ "$EXAMPLES" -ge 1 ] || { log "AUGUR_SCHEMATHESIS_EXAMPLES must be at least 1"; exit 2; }

if [ -z "${AUGUR_BIN:-}" ]; then
  scripts/bootstrap.sh
  log "building augur (release)"
  cargo build --release --quiet --bin augur
  AUGUR_BIN="$AUGUR_ROOT/target/release/augur"
fi
[ -x "$AUGUR_BIN" ] || { log "no augur binary at $AUGUR_BIN"; exit 2; }
[ -x "$SCHEMATHESIS" ] || { log "schemathesis is not installed in $AUGUR_VENV: run scripts/bootstrap.sh"; exit 2; }
NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$NATS_BIN" ] || { log "nats-server not found: run scripts/bootstrap.sh"; exit 2; }

rm -rf "$OUT"
mkdir -p "$OUT"

free_port() {
  "$AUGUR_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Every process started here, stopped (TERM, then KILL after 10 s) newest first on any exit.
pids=()
cleanup() {
  trap - EXIT INT TERM
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NATS_PORT=$(free_port)
"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
pids+=("$!")
for _ in $(seq 200); do port_open "$NATS_PORT" && break; sleep 0.05; done
port_open "$NATS_PORT" || { log "nats-server did not start (see $OUT/nats.log)"; exit 1; }

HTTP_PORT=$(free_port)
BASE="http://127.0.0.1:$HTTP_PORT"
TOKEN="schemathesis-$SEED-$RANDOM"
AUGUR_NATS__URL="nats://127.0.0.1:$NATS_PORT" AUGUR_HTTP__BIND="127.0.0.1:$HTTP_PORT" AUGUR_GRPC__BIND="127.0.0.1:0" \
  AUGUR_HTTP__TOKEN="$TOKEN" "$AUGUR_BIN" serve --config config.toml >"$OUT/augur.out" 2>"$OUT/augur.log" &
AUGUR_PID=$!
pids+=("$AUGUR_PID")
ready=false
for _ in $(seq 1200); do
  if curl -fsS -o /dev/null "$BASE/health/ready" 2>/dev/null; then ready=true; break; fi
  if ! kill -0 "$AUGUR_PID" 2>/dev/null; then
    log "augur exited during start-up; the end of $OUT/augur.log:"
    tail -n 40 "$OUT/augur.log" >&2
    exit 1
  fi
  sleep 0.1
done
$ready || { log "augur not ready in 120 s; the end of $OUT/augur.log:"; tail -n 40 "$OUT/augur.log" >&2; exit 1; }
log "augur ready on $BASE (nats on $NATS_PORT); seed $SEED, $EXAMPLES examples per operation"

# One schemathesis run over the operations the filter flags select; its reports in $OUT/<name>.
# Runs in that folder: schemathesis keeps its cache and Hypothesis' examples in the working
# directory.
results=()
status=0
pass() {
  local name=$1
  shift
  local dir="$OUT/$name"
  mkdir -p "$dir"
  local cmd=("$SCHEMATHESIS" --config-file "$CONFIG" run "$BASE/openapi.json"
    --checks all
    --header "Authorization: Bearer $TOKEN"
    --max-examples "$EXAMPLES"
    --seed "$SEED"
    --workers 1
    --request-timeout 60
    --no-color
    --report junit,json --report-junit-path "$dir/junit.xml" --report-json-path "$dir/report.json"
    "$@")
  log "pass $name: ${cmd[*]//$TOKEN/***}"
  local code=0
  (cd "$dir" && "${cmd[@]}") 2>&1 | tee "$dir/output.txt" || code=$?
  [ "$code" -eq 0 ] || status=1
  results+=("$("$AUGUR_VENV/bin/python" - "$name" "$code" "$dir/report.json" <<'EOF'
import json, sys
name, code, path = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(path) as f:
        r = json.load(f)
except (OSError, ValueError) as e:
    print(f"| {name} | no report ({e}) | | | | {code} |")
    raise SystemExit
t = r.get("test_cases") or {}
ops = r.get("operations") or {}
failures = "; ".join(f"{g['title']} x{g['count']} ({', '.join(g['operations'])})" for g in r.get("failures", []))
errors = "; ".join(f"{g['title']} x{g['count']}" for g in r.get("errors", []))
print(
    f"| {name} | {ops.get('tested', '?')} | {t.get('generated', '?')} | {t.get('with_failures', '?')}"
    f" {failures} | {t.get('errored', '?')} {errors} | {code} |"
)
EOF
  )")
}

pass all-but-patch --exclude-name "PATCH /api/v1/config"
pass patch-config --include-name "PATCH /api/v1/config"
pass reads-after-patches --include-method GET

# Still up: a crash of the service during the run is a failure whatever schemathesis said.
if ! kill -0 "$AUGUR_PID" 2>/dev/null; then
  log "augur died during the run; the end of $OUT/augur.log:"
  tail -n 40 "$OUT/augur.log" >&2
  status=1
fi
if grep -q "panicked" "$OUT/augur.log"; then
  log "augur panicked during the run:"
  grep -n -A5 "panicked" "$OUT/augur.log" >&2
  status=1
fi

echo
echo "schemathesis (seed $SEED, $EXAMPLES examples per operation; reports in $OUT)"
echo "| pass | operations | test cases | with failures | errored | exit |"
echo "|---|---:|---:|---|---|---:|"
printf '%s\n' "${results[@]}"
exit "$status"
