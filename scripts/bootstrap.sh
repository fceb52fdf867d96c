#!/usr/bin/env bash
# Installs everything Augur needs on a fresh Debian machine. Idempotent and quiet
# when already done: every step checks before it acts.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$AUGUR_ROOT"

log() { echo "bootstrap: $*" >&2; }

# 1. Debian packages: the real servers the tests start, and build tools.
APT_PKGS=(nats-server prometheus pkg-config build-essential curl)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Project-local Python venv: torch (libtorch for tch), training dependencies.
# Training (models/train), the benchmark's Python baseline peer (bench/peers/python_asyncio)
# schemathesis, which fuzzes the HTTP API (scripts/schemathesis.sh), and the clients the tests
# read Augur's output with (tests/python: pyarrow for pandas' Parquet), Ray Serve, the
# benchmark's HTTP peer (bench/peers/ray_serve), and matplotlib for its pictures (bench/plot).
REQ="$AUGUR_VENV/.augur-requirements.want"
STAMP="$AUGUR_VENV/.augur-requirements"
if [ ! -x "$AUGUR_VENV/bin/python" ]; then
  log "creating $AUGUR_VENV"
  python3 -m venv "$AUGUR_VENV"
fi
cat "$AUGUR_ROOT/models/train/requirements.txt" "$AUGUR_ROOT/bench/peers/python_asyncio/requirements.txt" \
  "$AUGUR_ROOT/tests/schemathesis/requirements.txt" "$AUGUR_ROOT/tests/python/requirements.txt" \
  "$AUGUR_ROOT/bench/peers/ray_serve/requirements.txt" "$AUGUR_ROOT/bench/plot/requirements.txt" >"$REQ"
if ! cmp -s "$REQ" "$STAMP"; then
  log "installing Python requirements (torch is ~4.6 GB the first time)"
  "$AUGUR_VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$STAMP"
fi

# 3. Kafka-compatible broker (tansu), built once per machine into the cache.
TANSU_ROOT="$AUGUR_CACHE/tansu-$TANSU_VERSION"
if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
  log "building tansu $TANSU_VERSION (7-9 min on 2 cores, once per machine)"
  cargo install -q tansu@"$TANSU_VERSION" --locked --features dynostore,libsql --root "$TANSU_ROOT"
fi
mkdir -p "$AUGUR_ROOT/.tools/bin"
ln -sf "$TANSU_ROOT/bin/tansu" "$AUGUR_ROOT/.tools/bin/tansu"
