#!/usr/bin/env bash
# README command one: fetch the dev assets, build llama-orch, and start the whole stack on this
# machine with the default small model (orchestratord :8080, pool-managerd :9200); a first haiku is
# streamed to the terminal, then the stack serves until Ctrl-C. Extra arguments go to `llorch up`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_rust
load_dev_assets
cargo build --bins -p orchestratord -p pool-managerd -p llorch
exec target/debug/llorch up "$@"
