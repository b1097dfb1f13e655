#!/usr/bin/env bash
# README command two: fetch the dev assets, build llama-server once (cached under
# ~/.cache/llama-orch/engines), build everything, and run every test against the real engine.
# REQUIRE_REAL_LLAMA=1 (the default here) turns a missing engine or model into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export REQUIRE_REAL_LLAMA="${REQUIRE_REAL_LLAMA:-1}"
ensure_rust
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "[test] installing rustfmt and clippy" >&2
  rustup component add rustfmt clippy >&2
fi
# House style gates first: they fail in seconds (fmt) or minutes (clippy), before the long runs.
cargo fmt --all --check
load_dev_assets
ensure_openai_client
ensure_anthropic_client
ensure_schemathesis
ensure_browser
# The HA tests' Postgres (never skipped: under REQUIRE_REAL_LLAMA=1 a missing URL fails them).
ensure_postgres
cargo build --bins
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Builds llama-server on the first run (about 10 minutes on 2 cores), then answers from the cache.
LLORCH_LLAMA_SERVER="$(target/debug/llorch engine build --gpu-policy cpu)"
export LLORCH_LLAMA_SERVER
echo "[test] llama-server: $LLORCH_LLAMA_SERVER" >&2
cargo test --workspace "$@"
bash scripts/fuzz-smoke.sh
