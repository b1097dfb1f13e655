#!/usr/bin/env bash
# Ensures a local PostgreSQL server for llama-orch's HA mode (state.backend = "postgres") and prints
# `LLORCH_TEST_PG_URL=postgres://llorch:llorch@127.0.0.1:PORT/postgres` on stdout (progress on stderr).
#   - installs Debian's `postgresql` package when no server binaries are found (apt-get, non-interactive);
#   - starts the distribution's cluster (`pg_ctlcluster VERSION main start`; created with
#     `pg_createcluster` when missing). Postgres refuses to run as root: pg_ctlcluster runs it as the
#     `postgres` user, with its data under /var/lib/postgresql (a data dir under ~/.cache would sit
#     under root's 0700 home, which the postgres user cannot enter);
#   - creates the login role `llorch` (password `llorch`, CREATEDB) when missing.
# Idempotent, and quick (a few psql calls) when the server already runs. Shared by scripts/lib.sh
# (ensure_postgres) and `llorch up --ha`, which embeds this file and runs it with bash.
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "[postgres] installing postgresql (apt)" >&2
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

version="$(ls /usr/lib/postgresql | sort -n | tail -n 1)"
if ! pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1 == v && $2 == "main" { found = 1 } END { exit !found }'; then
  echo "[postgres] creating cluster $version/main" >&2
  as_root pg_createcluster "$version" main >&2
fi
cluster_line() { pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"'; }
port="$(cluster_line | awk '{ print $3 }')"
if ! cluster_line | grep -q ' online'; then
  echo "[postgres] starting cluster $version/main on port $port" >&2
  # Another caller may start it at the same moment: a failed start is fine if the cluster is up.
  as_root pg_ctlcluster "$version" main start >&2 || cluster_line | grep -q ' online'
fi
for _ in $(seq 1 100); do
  if pg_isready -q -h 127.0.0.1 -p "$port"; then break; fi
  sleep 0.1
done
pg_isready -q -h 127.0.0.1 -p "$port" || { echo "[postgres] the server on port $port is not ready" >&2; exit 1; }

psql_su() { as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres "$@"; }
if [ "$(psql_su -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'llorch'")" != 1 ]; then
  echo "[postgres] creating role llorch" >&2
  psql_su -c "CREATE ROLE llorch LOGIN CREATEDB PASSWORD 'llorch'" >&2 ||
    [ "$(psql_su -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'llorch'")" = 1 ]
fi
echo "LLORCH_TEST_PG_URL=postgres://llorch:llorch@127.0.0.1:$port/postgres"
