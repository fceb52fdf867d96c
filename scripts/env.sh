# shellcheck shell=bash
# One build environment for every script. tch rebuilds its C++ wrapper whenever
# the LIBTORCH variables differ between invocations, so every cargo call goes
# through this file: source it, never set these by hand.
AUGUR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AUGUR_ROOT
# Tools built once per machine live outside the clone so a fresh clone (CI) reuses them.
export AUGUR_CACHE="${AUGUR_CACHE:-$HOME/.cache/augur}"
export AUGUR_VENV="$AUGUR_ROOT/.venv"
export PATH="$AUGUR_VENV/bin:$AUGUR_ROOT/.tools/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
unset LIBTORCH LIBTORCH_INCLUDE LIBTORCH_LIB LIBTORCH_CXX11_ABI LIBTORCH_STATIC
export TANSU_VERSION=0.6.0
