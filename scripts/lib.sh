# Shared by start.sh and test.sh: find or install what feedstream needs, saying what it does.
# shellcheck shell=bash

FEEDSTREAM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Every script builds the whole workspace in the release profile, so that one build of
# RocksDB and librdkafka (whose features depend on which packages are built) serves all.
# One persistent target directory, reused by every clone and by CI: RocksDB and
# librdkafka are compiled from source and a cold build takes about 20 minutes.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/feedstream/target}"
TANSU_VERSION="0.6.0"

say() { printf '\033[1m[feedstream]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[feedstream] error:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $* (install sudo or run as root)"; fi
}

APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null || die "missing $*, and this is not a Debian-like system: install them by hand"
  if [ -z "$APT_UPDATED" ]; then
    say "updating Debian package lists"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    APT_UPDATED=1
  fi
  say "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

ensure_toolchain() {
  command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] ||
    die "no Rust toolchain: install it with rustup (https://rustup.rs), then run this again"
  export PATH="$HOME/.cargo/bin:$PATH"
  local missing=()
  command -v cc >/dev/null || missing+=(build-essential)
  command -v cmake >/dev/null || missing+=(cmake)
  [ -n "$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null)" ] || missing+=(libclang-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# PostgreSQL on 127.0.0.1:5432. Sets PG_ADMIN_URL (a superuser URL without database).
ensure_postgres() {
  command -v psql >/dev/null && command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
  local version sudo=""
  version="$(ls /etc/postgresql | sort -V | tail -1)"
  [ "$(id -u)" -eq 0 ] || sudo="sudo "
  # How the fault tests stop and start this cluster.
  export FEEDSTREAM_TEST_PG_CTL="${sudo}pg_ctlcluster --skip-systemctl-redirect $version main"
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    say "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
      die "PostgreSQL $version did not start: see /var/log/postgresql/"
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}"
  if ! psql "$PG_ADMIN_URL/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
    # A fresh Debian install asks for a password over TCP: give the postgres role one.
    say "setting a password for the PostgreSQL role postgres (local development only)"
    as_root runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
    PG_ADMIN_URL="postgres://postgres:postgres@127.0.0.1:5432"
    psql "$PG_ADMIN_URL/postgres" -Atqc 'select 1' >/dev/null ||
      die "cannot connect to PostgreSQL at 127.0.0.1:5432 as postgres; set PG_ADMIN_URL"
  fi
  export PG_ADMIN_URL
}

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    say "starting Redis on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null ||
      die "Redis did not start"
    for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

# The Kafka-protocol broker used for development and tests. Sets TANSU.
ensure_tansu() {
  TANSU="$(command -v tansu || echo "$HOME/.cargo/bin/tansu")"
  if [ ! -x "$TANSU" ] || ! "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    say "installing the tansu $TANSU_VERSION Kafka broker from crates.io (about 12 minutes, once)"
    cargo install tansu --version "=$TANSU_VERSION" --locked --features libsql --root "$HOME/.cargo" >&2 ||
      die "could not install tansu"
    TANSU="$HOME/.cargo/bin/tansu"
  fi
  export TANSU
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_tansu DB_FILE PORT LOG: runs a broker in the background and waits until it listens,
# then adds the index its sqlite engine lacks (see scripts/tansu-index.py).
start_tansu() {
  local db="$1" port="$2" log="$3"
  mkdir -p "$(dirname "$db")"
  # tansu resolves a sqlite URL's path against its working directory.
  (cd "$(dirname "$db")" && exec "$TANSU" broker --storage-engine "sqlite://$(basename "$db")" \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port") \
    >"$log" 2>&1 &
  TANSU_PID=$!
  for _ in $(seq 150); do
    if port_open "$port"; then
      python3 "$FEEDSTREAM_ROOT/scripts/tansu-index.py" "$db" || die "could not index the tansu database $db"
      return 0
    fi
    kill -0 "$TANSU_PID" 2>/dev/null || break
    sleep 0.2
  done
  tail -20 "$log" >&2
  die "the tansu broker did not start on 127.0.0.1:$port (log: $log)"
}

ensure_database() {
  local name="$1"
  if [ "$(psql "$PG_ADMIN_URL/postgres" -Atqc "select 1 from pg_database where datname = '$name'")" != 1 ]; then
    say "creating PostgreSQL database $name"
    psql "$PG_ADMIN_URL/postgres" -qc "CREATE DATABASE \"$name\"" >/dev/null
  fi
}
