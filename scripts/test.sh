#!/usr/bin/env bash
# Runs the whole test suite against real engines: PostgreSQL, Redis and a fresh
# single-node Apache Kafka broker (KRaft). Whatever is missing is installed (Debian build
# tools, PostgreSQL, Redis, Java and Maven from Debian; the Kafka jars from Maven
# Central and schemathesis from PyPI, once) and what is stopped is started; the broker is stopped afterwards.
# Tests that kill brokers start private ones (a 3-node cluster for the fault harness).
# Arguments go to `cargo test`, e.g. `scripts/test.sh --test faults -- --nocapture`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FEEDSTREAM_ROOT"

ensure_toolchain
ensure_postgres
ensure_redis
ensure_kafka
ensure_schemathesis

# Each test makes its own database and Redis key prefix; clear what earlier runs left.
stale="$(psql "$PG_ADMIN_URL/postgres" -Atqc "select datname from pg_database where datname like 'feedstream\_test\_%'")"
if [ -n "$stale" ]; then
  say "dropping $(echo "$stale" | wc -l) PostgreSQL databases left by earlier test runs"
  for database in $stale; do psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS \"$database\"" >/dev/null; done
fi
redis-cli --scan --pattern 'test-????????:*' | xargs -r -n 500 redis-cli del >/dev/null

RUN_DIR="$(mktemp -d -t feedstream-test.XXXXXX)"
trap 'stop_kafka; rm -rf "$RUN_DIR"' EXIT
say "starting a fresh Apache Kafka $KAFKA_VERSION broker (data and logs in $RUN_DIR/kafka)"
start_kafka "$RUN_DIR/kafka" 1
say "Kafka listens on $KAFKA_BROKERS"

export FEEDSTREAM_TEST_BROKERS="$KAFKA_BROKERS"
export FEEDSTREAM_TEST_PG_ADMIN_URL="$PG_ADMIN_URL"
export FEEDSTREAM_TEST_REDIS_URL="redis://127.0.0.1:6379"
export FEEDSTREAM_TEST_KAFKA_LIBS="$KAFKA_LIBS"
export FEEDSTREAM_TEST_SCHEMATHESIS="$SCHEMATHESIS"

say "building and running the test suite (unit, property, integration and end-to-end tests)"
cargo test --release --workspace --locked --no-fail-fast "$@"
