#!/usr/bin/env bash
# Starts the whole feedstream system on this machine: PostgreSQL, Redis and a tansu
# Kafka broker (installed and started when missing), then topics, migrations and
# `feedstream run` (API, processor and sink) in the foreground. Ctrl-C stops it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FEEDSTREAM_ROOT"

PORT="${FEEDSTREAM_KAFKA_PORT:-9092}"
DATA="$FEEDSTREAM_ROOT/.feedstream"
mkdir -p "$DATA"

ensure_toolchain
ensure_postgres
ensure_redis
ensure_tansu

if port_open "$PORT"; then
  say "a Kafka broker already listens on 127.0.0.1:$PORT; using it"
else
  say "starting the tansu broker on 127.0.0.1:$PORT (data: $DATA/tansu.db, log: $DATA/tansu.log)"
  start_tansu "$DATA/tansu.db" "$PORT" "$DATA/tansu.log"
  trap 'say "stopping the tansu broker"; kill "$TANSU_PID" 2>/dev/null || true' EXIT
fi

say "building feedstream (the first build compiles RocksDB and librdkafka: about 20 minutes)"
cargo build --release --workspace --locked --bins
BIN="$CARGO_TARGET_DIR/release/feedstream"

ensure_database feedstream
export FEEDSTREAM_BROKERS="127.0.0.1:$PORT"
export DATABASE_URL="${DATABASE_URL:-$PG_ADMIN_URL/feedstream}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export FEEDSTREAM_STATE_DIR="${FEEDSTREAM_STATE_DIR:-$DATA/state}"

say "creating topics"
"$BIN" topics create
say "applying migrations"
"$BIN" migrate
say "starting api, processor and sink (Ctrl-C to stop)"
"$BIN" run
