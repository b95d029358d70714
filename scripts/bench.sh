#!/usr/bin/env bash
# Benchmark: builds feedstream and feedstream-bench (release), starts a fresh
# single-node Apache Kafka broker and a fresh PostgreSQL database, then runs the bench, which
# measures the machine's ceilings, starts api, process and sink, drives them over HTTP
# and writes report.json, report.md and SVG plots.
#   scripts/bench.sh [OUT_DIR] [feedstream-bench options]    (default OUT_DIR: bench/results/latest)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FEEDSTREAM_ROOT"
OUT="${1:-bench/results/latest}"
shift || true

ensure_toolchain
ensure_postgres
ensure_redis
ensure_kafka

say "building feedstream and feedstream-bench (release; the first build compiles RocksDB and librdkafka: about 20 minutes)"
cargo build --release --workspace --locked --bins

RUN_DIR="$(mktemp -d -t feedstream-bench.XXXXXX)"
trap 'stop_kafka; rm -rf "$RUN_DIR"' EXIT
say "starting a fresh Apache Kafka $KAFKA_VERSION broker (data and logs in $RUN_DIR/kafka)"
start_kafka "$RUN_DIR/kafka" 1

DATABASE="feedstream_bench"
say "creating a fresh PostgreSQL database $DATABASE"
psql "$PG_ADMIN_URL/postgres" -qc "DROP DATABASE IF EXISTS $DATABASE" >/dev/null
psql "$PG_ADMIN_URL/postgres" -qc "CREATE DATABASE $DATABASE" >/dev/null

say "running the benchmark (about 5 minutes); report in $OUT"
"$CARGO_TARGET_DIR/release/feedstream-bench" --out "$OUT" \
  --brokers "$KAFKA_BROKERS" --broker-pid "$KAFKA_PIDS" \
  --database-url "$PG_ADMIN_URL/$DATABASE" --redis-url "redis://127.0.0.1:6379" "$@"
