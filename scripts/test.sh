#!/usr/bin/env bash
# Runs the whole test suite against real engines: PostgreSQL, Redis and a fresh tansu
# Kafka broker (each installed and started when missing; the broker is stopped after).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FEEDSTREAM_ROOT"

ensure_toolchain
ensure_postgres
ensure_redis
ensure_tansu

# Each test makes its own database and Redis key prefix; clear what earlier runs left.
stale="$(psql "$PG_ADMIN_URL/postgres" -Atqc "select datname from pg_database where datname like 'feedstream\_test\_%'")"
if [ -n "$stale" ]; then
  say "dropping $(echo "$stale" | wc -l) PostgreSQL databases left by earlier test runs"
  for database in $stale; do psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS \"$database\"" >/dev/null; done
fi
redis-cli --scan --pattern 'test-????????:*' | xargs -r -n 500 redis-cli del >/dev/null

RUN_DIR="$(mktemp -d -t feedstream-test.XXXXXX)"
PORT="$(free_port)"
say "starting a fresh tansu broker on 127.0.0.1:$PORT (data and log in $RUN_DIR)"
start_tansu "$RUN_DIR/tansu.db" "$PORT" "$RUN_DIR/tansu.log"
trap 'kill "$TANSU_PID" 2>/dev/null || true; rm -rf "$RUN_DIR"' EXIT

export FEEDSTREAM_TEST_BROKERS="127.0.0.1:$PORT"
export FEEDSTREAM_TEST_PG_ADMIN_URL="$PG_ADMIN_URL"
export FEEDSTREAM_TEST_REDIS_URL="redis://127.0.0.1:6379"
export FEEDSTREAM_TEST_TANSU="$TANSU"

say "running the test suite (unit, property, integration and end-to-end tests)"
cargo test --release --workspace --locked --no-fail-fast "$@"
