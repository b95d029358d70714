#!/usr/bin/env bash
# Benchmark: restore rate of a state store from its changelog, next to the raw consume
# rate of the same broker. A fresh tansu broker (fresh sqlite file) for each run.
#   scripts/bench-restore.sh [RECORDS]      (default 200000)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$FEEDSTREAM_ROOT"
RECORDS="${1:-200000}"
ensure_toolchain
ensure_tansu
RUN_DIR="$(mktemp -d -t feedstream-bench.XXXXXX)"
PORT="$(free_port)"
say "starting a fresh tansu broker on 127.0.0.1:$PORT"
start_tansu "$RUN_DIR/tansu.db" "$PORT" "$RUN_DIR/tansu.log"
trap 'kill "$TANSU_PID" 2>/dev/null || true; rm -rf "$RUN_DIR"' EXIT
say "building the benchmark (release)"
cargo build --release -p feedstream-topology --example restore_bench
say "measuring with $RECORDS changelog records"
"$CARGO_TARGET_DIR/release/examples/restore_bench" "127.0.0.1:$PORT" "$RECORDS"
