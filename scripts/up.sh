#!/usr/bin/env bash
# README command one: fetch the dev assets, build llama-orch, and start the whole stack on this
# machine with the default small model (orchestratord :8080, pool-managerd :9200); a first haiku is
# streamed to the terminal, then the stack serves until Ctrl-C. Extra arguments go to `llorch up`.
# Release binaries: this is the command users judge speed by (the debug daemons cost about twice
# the CPU per token); `llorch up` starts the orchestratord and pool-managerd next to itself, so all
# three come from target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_rust
load_dev_assets
cargo build --release --bins -p orchestratord -p pool-managerd -p llorch
exec target/release/llorch up "$@"
