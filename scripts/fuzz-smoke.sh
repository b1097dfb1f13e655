#!/usr/bin/env bash
# Brief fuzz runs of the request-body, ModelRef and engine-stream parsers (cargo fuzz, libFuzzer).
# The code forbids `unsafe`, so the runs look for panics: no sanitizer, and RUSTC_BOOTSTRAP lets the
# stable toolchain take cargo-fuzz's flags. FUZZ_SECONDS sets each target's time (default 15).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz
fi
secs="${FUZZ_SECONDS:-15}"
cd fuzz
export RUSTC_BOOTSTRAP=1
for target in task_request model_ref engine_stream; do
  mkdir -p "corpus/$target"
  echo "[fuzz] $target for ${secs}s" >&2
  cargo fuzz run --sanitizer none -O "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$secs" -max_len=4096 2>&1 | tail -n 3
done
echo "fuzz: 3 passed, 0 failed"
