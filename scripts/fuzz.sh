#!/usr/bin/env bash
# Time-bounded coverage-guided fuzzing of Augur's input parsers with cargo-fuzz (libFuzzer), on
# the stable toolchain: the codec (any bytes as a message), the config loader (any text), the
# model manifest loader (any manifest.toml) and the HTTP bodies (predict, config patch).
# Every target runs for AUGUR_FUZZ_SECONDS; a crash (panic, failed invariant), a hang (one
# input over 10 s) or running out of memory is a failure. Prints one line per target; non-zero
# on any failure.
#
#   scripts/fuzz.sh [TARGET...]        default: codec config manifest http_bodies
#
#   AUGUR_FUZZ_SECONDS        fuzzing time per target (600)
#   AUGUR_FUZZ_RSS_MB         libFuzzer's memory limit (2048)
#   AUGUR_FUZZ_CODEGEN_UNITS  unset: 1 (cargo-fuzz's default, fastest fuzzing); 16 builds faster
#
# Stable toolchain: `--sanitizer none`. cargo-fuzz then passes rustc only stable flags
# (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*, --cfg fuzzing,
# -Cdebug-assertions); every sanitizer, --build-std and --careful would need -Z flags
# (nightly). Safe Rust needs no AddressSanitizer to find panics, overflows and hangs.
#
# The build lives in fuzz/target (its own workspace, its own RUSTFLAGS): the first one compiles
# the whole dependency tree again (libtorch's C++ wrapper and librdkafka included), once.
# Corpora grow in fuzz/corpus/<target> (seeded from the repository's real inputs on every run),
# findings land in fuzz/artifacts/<target>; logs in fuzz/target/fuzz-logs/<target>.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

CARGO_FUZZ_VERSION=0.13.1
PER_TARGET="${AUGUR_FUZZ_SECONDS:-600}"
RSS_MB="${AUGUR_FUZZ_RSS_MB:-2048}"
ALL_TARGETS=(codec config manifest http_bodies)
FUZZ="$AUGUR_ROOT/fuzz"
LOGS="$FUZZ/target/fuzz-logs"
# cargo-fuzz builds and runs with plain cargo: pin the target dir whatever the caller's
# environment says, so `build` and every `run` share one build.
export CARGO_TARGET_DIR="$FUZZ/target"

log() { echo "fuzz: $*" >&2; }

for n in "$PER_TARGET" "$RSS_MB"; do
  if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
    log "AUGUR_FUZZ_SECONDS and AUGUR_FUZZ_RSS_MB must be positive integers (got '$n')"
    exit 2
  fi
done
targets=("$@")
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  if [[ ! -f "$FUZZ/fuzz_targets/$t.rs" ]]; then
    log "unknown target '$t' (known: ${ALL_TARGETS[*]})"
    exit 2
  fi
done

# 1. cargo-fuzz, once per machine, into the default cargo bin (on PATH through env.sh).
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (once per machine)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
have="$(cargo fuzz --version 2>/dev/null || true)"
[[ "$have" == *" $CARGO_FUZZ_VERSION"* ]] ||
  log "note: found '$have', this script was written against cargo-fuzz $CARGO_FUZZ_VERSION"

BUILD=(--sanitizer none --debug-assertions)
if [[ -n "${AUGUR_FUZZ_CODEGEN_UNITS:-}" ]]; then
  BUILD+=(--codegen-units "$AUGUR_FUZZ_CODEGEN_UNITS")
fi

# 2. Seeds: real inputs, copied into each corpus on every run (libFuzzer keeps what it adds).
seed_corpora() {
  local c="$FUZZ/corpus" m id
  mkdir -p "$c/codec" "$c/config" "$c/manifest" "$c/http_bodies"

  cp config.toml "$c/config/seed-config.toml"
  : >"$c/config/seed-empty.toml"

  for m in models/*/*/manifest.toml; do
    id="${m#models/}"
    cp "$m" "$c/manifest/seed-${id//\//-}"
  done

  # Bodies from tests/http.rs and the API docs.
  local i=0 body
  while IFS= read -r body; do
    printf '%s' "$body" >"$c/http_bodies/seed-$i.json"
    i=$((i + 1))
  done <<'EOF'
{"windows": [[[1.0, 2.0]]]}
{"windows": [[[0.1, -0.2, 0.3], [0.4, 0.5, -0.6]]], "method": "majority"}
{"windows": [], "method": "stacking"}
{"aggregator": {"weights": {"lstm-direction": 2.0}}}
{"aggregator": {"methd": "majority"}, "bogus": 1}
{"executor": {"max_batch": 0}, "breaker": {"failure_rate": 3.0}, "aggregator": {"deadline_ms": 0}}
{"models": {"enabled": {"cnn-pattern": false}, "reset": ["xgb-direction"]}}
{"models": {"enabled": {"nobody": false}}}
{not json
EOF

  # The codec's input is one control byte (see fuzz_targets/codec.rs) and a payload: payloads
  # from the replay file (length-delimited FeatureVectorBatch messages); two concatenated
  # batches are one batch of both.
  local replay=models/data/replay/ta-v1.pb
  if [[ -f "$replay" ]] && command -v python3 >/dev/null 2>&1; then
    python3 - "$replay" "$c/codec" <<'PY'
import os, sys

data, out = open(sys.argv[1], "rb").read(), sys.argv[2]
payloads, i = [], 0
while i < len(data) and len(payloads) < 8:
    n = shift = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    payloads.append(data[i : i + n])
    i += n


def seed(name, control, payload):
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(bytes([control]) + payload)


# control: bit 0 history, bit 1 a 60 s maximum age, bits 2-4 subject, bits 5-6 transport.
seed("one", 0x00, payloads[0])
seed("one-on-its-subject", 2 << 2, payloads[0])  # "1d.AAPL"
seed("one-stale", 0x02, payloads[1])
seed("one-late-from-kafka", 0x03 | 1 << 5, payloads[2])
seed("two", 0x00, payloads[0] + payloads[1])
seed("eight", 0x00, b"".join(payloads))
seed("empty", 0x00, b"")
PY
  else
    log "note: no $replay or no python3: the codec starts from an empty corpus"
  fi
}

seed_corpora

# 3. One build of every target, then each target in turn (the same flags: no rebuild).
mkdir -p "$LOGS"
log "building the fuzz targets into fuzz/target (cargo fuzz build ${BUILD[*]})"
cargo fuzz build "${BUILD[@]}"

declare -A RUNS EXECS RSS CRASHES VERDICT
failed=0
for t in "${targets[@]}"; do
  artifacts="$FUZZ/artifacts/$t"
  logf="$LOGS/$t.log"
  stamp="$LOGS/.start-$t"
  scratch="$FUZZ/target/tmp/$t"
  mkdir -p "$artifacts" "$scratch"
  before=$(find "$artifacts" -type f | wc -l)
  : >"$stamp"
  log "$t: fuzzing for ${PER_TARGET}s (log: ${logf#"$AUGUR_ROOT"/})"
  rc=0
  # The outer timeout only catches a fuzzer that stops answering altogether (libFuzzer's own
  # -timeout catches a slow input); TMPDIR keeps the targets' scratch files in fuzz/target.
  TMPDIR="$scratch" timeout --kill-after=30 "$((PER_TARGET + 900))" \
    cargo fuzz run "${BUILD[@]}" "$t" -- \
    -max_total_time="$PER_TARGET" -timeout=10 -rss_limit_mb="$RSS_MB" -print_final_stats=1 \
    >"$logf" 2>&1 || rc=$?
  rm -rf "$scratch"

  runs=$(sed -n 's/^Done \([0-9][0-9]*\) runs in .*/\1/p' "$logf" | tail -n 1)
  [[ -n "$runs" ]] ||
    runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$logf" | tail -n 1)
  execs=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9][0-9]*\).*/\1/p' "$logf" | tail -n 1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *\([0-9][0-9]*\).*/\1/p' "$logf" | tail -n 1)
  mapfile -t found < <(find "$artifacts" -type f -newer "$stamp" | sort)
  RUNS[$t]="${runs:--}"
  EXECS[$t]="${execs:--}"
  RSS[$t]="${rss:+${rss} MB}"
  CRASHES[$t]=${#found[@]}

  if ((${#found[@]})); then
    # crash-*, timeout-*, oom-*, slow-unit-*: libFuzzer names a finding by its kind.
    kinds=$(printf '%s\n' "${found[@]##*/}" | sed 's/-[0-9a-f]*$//' | sort | uniq -c |
      awk '{printf "%s%s=%s", (NR > 1 ? "," : ""), $2, $1}')
    VERDICT[$t]="FAIL ($kinds)"
  elif ((rc == 124 || rc == 137)); then
    VERDICT[$t]="FAIL (hung: killed after $((PER_TARGET + 900))s)"
  elif ((rc != 0)); then
    VERDICT[$t]="ERROR (exit $rc)"
  elif [[ -z "$runs" ]]; then
    VERDICT[$t]="ERROR (no libFuzzer summary)"
  else
    VERDICT[$t]="PASS"
  fi

  if [[ "${VERDICT[$t]}" != PASS ]]; then
    failed=1
    log "$t: ${VERDICT[$t]}; the end of its log:"
    tail -n 40 "$logf" >&2
    for a in "${found[@]}"; do
      log "  finding: ${a#"$AUGUR_ROOT"/}"
      log "  reproduce: source scripts/env.sh && CARGO_TARGET_DIR=fuzz/target" \
        "cargo fuzz run ${BUILD[*]} $t ${a#"$AUGUR_ROOT"/}"
    done
  fi
  if ((before)); then
    log "note: fuzz/artifacts/$t holds $before finding(s) from earlier runs"
  fi
done

echo
printf '%-12s %14s %10s %10s %8s  %s\n' target runs exec/s peak-rss crashes verdict
for t in "${targets[@]}"; do
  printf '%-12s %14s %10s %10s %8s  %s\n' "$t" "${RUNS[$t]}" "${EXECS[$t]}" "${RSS[$t]:--}" \
    "${CRASHES[$t]}" "${VERDICT[$t]}"
done
exit "$failed"
