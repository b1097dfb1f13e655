# Shared by scripts/up.sh and scripts/test.sh.

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "cargo is not installed: install Rust with rustup (https://rustup.rs) and run this again" >&2
      exit 1
    fi
  fi
}

# Fetches the pinned llama.cpp source and the dev model (cached) and exports their paths.
load_dev_assets() {
  local vars
  vars="$(bash scripts/dev-assets.sh)"
  set -a
  eval "$vars"
  set +a
}

# A venv with the official openai client (pinned) for the OpenAI-compatibility tests; exports
# LLORCH_PYTHON. Cached under ~/.cache/llama-orch/venv-openai.
ensure_openai_client() {
  local venv="${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/venv-openai"
  if ! "$venv/bin/python" -c 'import openai, sys; sys.exit(openai.__version__ != "3.57.0")' >/dev/null 2>&1; then
    echo "[test] installing openai==3.57.0 into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==3.57.0" >&2
  fi
  export LLORCH_PYTHON="$venv/bin/python"
}

# The pinned `anthropic` client, in the same cached venv as the openai client (the cluster tests run
# both with LLORCH_PYTHON); call after ensure_openai_client.
ensure_anthropic_client() {
  local venv="${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/venv-openai"
  if ! "$venv/bin/python" -c 'import anthropic, sys; sys.exit(anthropic.__version__ != "2.10.0")' >/dev/null 2>&1; then
    echo "[test] installing anthropic==2.10.0 into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "anthropic==2.10.0" >&2
  fi
}

# A venv with schemathesis (pinned) for the OpenAPI conformance run; exports LLORCH_SCHEMATHESIS.
ensure_schemathesis() {
  local venv="${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/venv-schemathesis"
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "4.32.5"; then
    echo "[test] installing schemathesis==4.32.5 into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5" >&2
  fi
  export LLORCH_SCHEMATHESIS="$venv/bin/schemathesis"
}

# Headless Chromium (Debian's `chromium` package) and playwright-core (pinned, npm) for the UI's
# browser test; exports LLORCH_CHROMIUM and LLORCH_NODE_PATH (the node_modules playwright-core is
# in). Cached under ~/.cache/llama-orch/playwright.
ensure_browser() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "[test] installing chromium (apt)" >&2
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
    else
      sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
    fi
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "[test] installing nodejs and npm (apt)" >&2
    if [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
    else
      sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
    fi
  fi
  local dir="${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/playwright"
  local want="1.65.1"
  if [ "$(node -p "require('$dir/node_modules/playwright-core/package.json').version" 2>/dev/null)" != "$want" ]; then
    echo "[test] installing playwright-core@$want into $dir" >&2
    mkdir -p "$dir"
    (cd "$dir" && [ -f package.json ] || echo '{"private":true}' > package.json)
    npm install --silent --no-audit --no-fund --prefix "$dir" "playwright-core@$want" >&2
  fi
  LLORCH_CHROMIUM="$(command -v chromium)"
  export LLORCH_CHROMIUM
  export LLORCH_NODE_PATH="$dir/node_modules"
}

# A local PostgreSQL server and the `llorch` role for the HA tests (state.backend = "postgres");
# exports LLORCH_TEST_PG_URL. scripts/postgres.sh does the work (`llorch up --ha` runs the same
# file): apt-get install postgresql when missing, start Debian's cluster as the postgres user.
ensure_postgres() {
  local vars
  vars="$(bash scripts/postgres.sh)"
  set -a
  eval "$vars"
  set +a
}
