# Shared by start.sh and test.sh: find or install what feedstream needs, saying what it does.
# shellcheck shell=bash

FEEDSTREAM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Every script builds the whole workspace in the release profile, so that one build of
# RocksDB and librdkafka (whose features depend on which packages are built) serves all.
# One persistent target directory, reused by every clone and by CI: RocksDB and
# librdkafka are compiled from source and a cold build takes about 20 minutes.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/feedstream/target}"

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
  # bindgen loads libclang.so or libclang-<N>.so; libclang-cpp*.so (which clang itself
  # brings) is a different library and does not do.
  [ -n "$(ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-[0-9]*.so* 2>/dev/null)" ] ||
    missing+=(libclang-dev)
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
  if [ -z "${PG_ADMIN_URL:-}" ]; then
    PG_ADMIN_URL="postgres://postgres@127.0.0.1:5432"
    # The password an earlier run of these scripts gave the role, if any.
    psql "postgres://postgres:postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1 &&
      PG_ADMIN_URL="postgres://postgres:postgres@127.0.0.1:5432"
  fi
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

# The Apache Kafka broker's jars, from Maven Central through deploy/kafka/pom.xml, once
# into ~/.cache/feedstream/kafka-<version>/; Java 17+ and Maven from Debian if missing.
# Sets KAFKA_VERSION and KAFKA_LIBS.
ensure_kafka() {
  KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$FEEDSTREAM_ROOT/deploy/kafka/pom.xml")"
  [ -n "$KAFKA_VERSION" ] || die "deploy/kafka/pom.xml names no kafka.version"
  local java_major=0
  if command -v java >/dev/null; then
    java_major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')"
  fi
  if [ "${java_major:-0}" -lt 17 ]; then apt_install openjdk-17-jre-headless; fi
  command -v mvn >/dev/null || apt_install maven
  command -v python3 >/dev/null || apt_install python3
  KAFKA_LIBS="${FEEDSTREAM_KAFKA_CACHE:-$HOME/.cache/feedstream/kafka-$KAFKA_VERSION}/libs"
  # The cache holds what one pom resolves to: a changed pom downloads again.
  local pom_digest
  pom_digest="$(sha256sum "$FEEDSTREAM_ROOT/deploy/kafka/pom.xml" | cut -d' ' -f1)"
  if [ "$(cat "$KAFKA_LIBS/.complete" 2>/dev/null)" != "$pom_digest" ]; then
    say "downloading Apache Kafka $KAFKA_VERSION (kafka_2.13, kafka-tools and their dependencies) from Maven Central into $KAFKA_LIBS (once)"
    rm -rf "$KAFKA_LIBS"
    (cd "$FEEDSTREAM_ROOT/deploy/kafka" && mvn -q -B dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS") >&2 ||
      die "could not download the Kafka jars with Maven (deploy/kafka/pom.xml)"
    echo "$pom_digest" >"$KAFKA_LIBS/.complete"
  fi
  export KAFKA_VERSION KAFKA_LIBS
}

# The API's fuzz test runs schemathesis (PyPI) from a virtualenv of the pinned
# deploy/schemathesis/requirements.txt, installed once. Sets SCHEMATHESIS (its `st`).
ensure_schemathesis() {
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  local requirements="$FEEDSTREAM_ROOT/deploy/schemathesis/requirements.txt" digest
  local venv="${FEEDSTREAM_SCHEMATHESIS_CACHE:-$HOME/.cache/feedstream/schemathesis}"
  digest="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [ "$(cat "$venv/.complete" 2>/dev/null)" != "$digest" ]; then
    say "installing schemathesis ($(grep -m1 '^schemathesis==' "$requirements")) from PyPI into $venv (once)"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "could not create a Python virtualenv in $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" >&2 ||
      die "could not install schemathesis from PyPI ($requirements)"
    echo "$digest" >"$venv/.complete"
  fi
  SCHEMATHESIS="$venv/bin/st"
  export SCHEMATHESIS
}

# start_kafka DIR NODES: starts a KRaft cluster of NODES nodes (1, or 3 for the fault
# harness) with data and logs under DIR (see scripts/kafka.sh; DIR is formatted the
# first time and kept), and waits until every node has started. Sets KAFKA_BROKERS
# (the bootstrap list) and KAFKA_PIDS.
start_kafka() {
  local dir="$1" nodes="$2" id port started pid
  "$FEEDSTREAM_ROOT/scripts/kafka.sh" format "$dir" "$nodes" || die "could not format Kafka in $dir"
  KAFKA_BROKERS="" KAFKA_PIDS=""
  while read -r id port _; do
    "$FEEDSTREAM_ROOT/scripts/kafka.sh" run "$dir" "$id" &
    KAFKA_PIDS="${KAFKA_PIDS:+$KAFKA_PIDS }$!"
    KAFKA_BROKERS="${KAFKA_BROKERS:+$KAFKA_BROKERS,}127.0.0.1:$port"
  done <"$dir/nodes"
  export KAFKA_BROKERS KAFKA_PIDS
  for _ in $(seq 600); do
    started=0
    while read -r id port _; do
      if port_open "$port" && grep -q 'Transition from STARTING to STARTED' "$dir/node-$id/logs/server.log" 2>/dev/null; then
        started=$((started + 1))
      fi
    done <"$dir/nodes"
    [ "$started" -eq "$(wc -l <"$dir/nodes")" ] && return 0
    for pid in $KAFKA_PIDS; do
      kill -0 "$pid" 2>/dev/null ||
        { tail -20 "$dir"/node-*/logs/console.log >&2; die "a Kafka node exited at start (logs: $dir/node-*/logs/)"; }
    done
    sleep 0.2
  done
  die "Kafka did not start within 120 s (logs: $dir/node-*/logs/)"
}

# stop_kafka: stops the nodes start_kafka started (SIGTERM: a controlled shutdown).
stop_kafka() {
  local pid
  # shellcheck disable=SC2086
  [ -n "${KAFKA_PIDS:-}" ] && kill $KAFKA_PIDS 2>/dev/null || true
  for pid in ${KAFKA_PIDS:-}; do
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ensure_database() {
  local name="$1"
  if [ "$(psql "$PG_ADMIN_URL/postgres" -Atqc "select 1 from pg_database where datname = '$name'")" != 1 ]; then
    say "creating PostgreSQL database $name"
    psql "$PG_ADMIN_URL/postgres" -qc "CREATE DATABASE \"$name\"" >/dev/null
  fi
}
