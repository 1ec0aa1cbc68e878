#!/usr/bin/env bash
# Runs the whole fleetgate test suite on a fresh machine: installs what the
# tests need (redis-server, node packages, python packages), then runs the
# lint gates, the Rust unit and integration tests, the end-to-end tests with
# the official socket.io-client (against one Redis, then a Redis Cluster),
# and the python-socketio smoke tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The operations checks: promtool lints the metrics exposition and the
# dashboard queries, nginx fronts the gateway under /chat, Chromium loads
# the live map page.
command -v promtool >/dev/null || missing+=(prometheus)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v chromium >/dev/null || missing+=(chromium)
# The device ingest tests start their own MQTT broker (never the host's).
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
# The NATS output tests start their own JetStream server (never the host's).
command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] || missing+=(nats-server)
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "format"
cargo fmt --all -- --check
# Clippy type-checks every dependency once more; it runs when asked
# (LINT=1), and before every commit by habit.
if [[ ${LINT:-0} == 1 ]]; then
  step "lint"
  cargo clippy --locked --workspace --all-targets -- -D warnings
fi

# The crate docs (src/lib.rs holds the crate map) build without a broken link.
step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --lib

step "rust unit and integration tests"
cargo build --locked --workspace
cargo test --locked --workspace

# The vendored Engine.IO transport's own tests, unit and integration
# (vendor/PATCHES.md), from its own manifest and lock file.
step "vendored engineioxide tests"
CARGO_TARGET_DIR="$PWD/target/vendor" cargo test --locked --manifest-path vendor/engineioxide/Cargo.toml \
  --features __test_harness,v3 --lib --tests

export FLEETGATE_BIN="$PWD/target/debug/fleetgate"

step "end-to-end tests (socket.io-client)"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error && npm test)

step "end-to-end tests again, replicas sharing a Redis Cluster (3 primaries)"
(cd tests/e2e && npm run test:cluster)

step "python tests: python-socketio, HTTP API, operations artefacts"
if [[ ! -x .venv-test/bin/python ]]; then python3 -m venv .venv-test; fi
.venv-test/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
(cd tests/python && ../../.venv-test/bin/python -m pytest -q)
step "done"
