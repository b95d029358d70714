#!/usr/bin/env bash
# Starts the whole feedstream system on this machine: PostgreSQL, Redis and a
# single-node Apache Kafka broker (KRaft), each installed and started when missing
# (Debian packages; the Kafka jars from Maven Central, once), then topics, migrations
# and `feedstream run` (API, processor and sink) in the foreground. Ctrl-C stops it
# and the broker it started.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FEEDSTREAM_ROOT"

DATA="$FEEDSTREAM_ROOT/.feedstream"
mkdir -p "$DATA"

ensure_toolchain
ensure_postgres
ensure_redis
ensure_kafka

if [ -n "${FEEDSTREAM_BROKERS:-}" ]; then
  say "using the Kafka brokers at $FEEDSTREAM_BROKERS (FEEDSTREAM_BROKERS)"
else
  say "starting Apache Kafka $KAFKA_VERSION (data and logs: $DATA/kafka)"
  start_kafka "$DATA/kafka" 1
  trap 'say "stopping the Kafka broker"; stop_kafka' EXIT
  export FEEDSTREAM_BROKERS="$KAFKA_BROKERS"
  say "Kafka listens on $FEEDSTREAM_BROKERS"
fi

say "building feedstream (the first build compiles RocksDB and librdkafka: about 20 minutes)"
cargo build --release --workspace --locked --bins
BIN="$CARGO_TARGET_DIR/release/feedstream"

ensure_database feedstream
export DATABASE_URL="${DATABASE_URL:-$PG_ADMIN_URL/feedstream}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export FEEDSTREAM_STATE_DIR="${FEEDSTREAM_STATE_DIR:-$DATA/state}"

# The API's bearer tokens are signed with a key made once and kept with the data.
if [ -z "${FEEDSTREAM_TOKEN_KEYS:-}" ] && [ -z "${FEEDSTREAM_TOKEN_KEYS_FILE:-}" ]; then
  export FEEDSTREAM_TOKEN_KEYS_FILE="$DATA/token-keys"
  if [ ! -s "$FEEDSTREAM_TOKEN_KEYS_FILE" ]; then
    say "making a token signing key in $FEEDSTREAM_TOKEN_KEYS_FILE (to rotate: add a new first line, drop the old one after its tokens expired)"
    (umask 077
     printf '# kid:secret, one per line: the first signs, every one verifies\nlocal-%s:%s\n' \
       "$(date +%Y%m%d)" "$(head -c 32 /dev/urandom | base64 | tr -d '\n=')" >"$FEEDSTREAM_TOKEN_KEYS_FILE")
  fi
fi

say "creating topics"
"$BIN" topics create
say "applying migrations"
"$BIN" migrate
say "starting api, processor and sink on http://127.0.0.1:8080 (Ctrl-C to stop)"
MINT="$BIN token --user 1"
[ -n "${FEEDSTREAM_TOKEN_KEYS_FILE:-}" ] && MINT="FEEDSTREAM_TOKEN_KEYS_FILE=$FEEDSTREAM_TOKEN_KEYS_FILE $MINT"
say "a token for user 1 (valid 1 h): TOKEN=\$($MINT)"
say "then: curl -s http://127.0.0.1:8080/feeds/1 -H \"Authorization: Bearer \$TOKEN\""
"$BIN" run
