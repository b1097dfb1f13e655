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
