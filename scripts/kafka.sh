#!/usr/bin/env bash
# A KRaft cluster of Apache Kafka nodes (each a combined broker and controller) in a
# directory of its own, for the scripts (scripts/lib.sh start_kafka) and for tests that
# kill and restart brokers:
#   kafka.sh format DIR NODES   picks free ports, writes DIR/nodes (a line per node:
#                               id port controller-port directory-id) and formats each
#                               node's DIR/node-<id> with deploy/kafka/broker.properties
#                               plus its own lines; does nothing if DIR/nodes exists
#   kafka.sh run DIR ID         runs node ID in the foreground (exec: its pid is the
#                               broker's); its logs go to DIR/node-<ID>/logs/
#   kafka.sh tool CLASS ARGS... runs one of Kafka's tools, e.g.
#                               org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
#                               --bootstrap-server HOST:PORT --describe --group G --members
# A node has started once its server.log (new at each run) says "Transition from
# STARTING to STARTED".
# Needs KAFKA_LIBS, the broker's jars (scripts/lib.sh ensure_kafka); KAFKA_HEAP bounds
# each node's heap (default 512m).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# free_port, say, die
source "$ROOT/scripts/lib.sh"
: "${KAFKA_LIBS:?set KAFKA_LIBS to the directory of the Kafka jars (scripts/lib.sh ensure_kafka)}"

java_command() {
  local node_dir="$1"; shift
  JAVA=(java "-Xms${KAFKA_HEAP:-512m}" "-Xmx${KAFKA_HEAP:-512m}" -XX:+UseG1GC
    -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$ROOT/deploy/kafka/log4j2.xml" "-Dkafka.logs.dir=$node_dir/logs"
    -cp "$KAFKA_LIBS/*" "$@")
}

# Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding. Never one
# that starts with "-", which the storage tool's argument parser takes for an option.
kafka_uuid() {
  python3 -c 'import base64,uuid
while True:
    text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not text.startswith("-"):
        print(text)
        break'
}

format_cluster() {
  local dir="$1" nodes="$2" i voters="" bootstrap="" cluster_id
  [ -f "$dir/nodes" ] && return 0
  mkdir -p "$dir"
  : >"$dir/nodes.new"
  for i in $(seq "$nodes"); do
    local port cport directory
    port="$(free_port)" cport="$(free_port)" directory="$(kafka_uuid)"
    echo "$i $port $cport $directory" >>"$dir/nodes.new"
    voters="${voters:+$voters,}$i@127.0.0.1:$cport:$directory"
    bootstrap="${bootstrap:+$bootstrap,}127.0.0.1:$cport"
  done
  # Replicated as in production once there are three nodes; one node holds one copy.
  local replicas=$(( nodes < 3 ? nodes : 3 ))
  local min_isr=$(( replicas > 1 ? 2 : 1 ))
  cluster_id="$(kafka_uuid)"
  while read -r i port cport _; do
    local node_dir="$dir/node-$i"
    mkdir -p "$node_dir/data" "$node_dir/logs"
    {
      cat "$ROOT/deploy/kafka/broker.properties"
      echo
      echo "# This node (scripts/kafka.sh)"
      echo "node.id=$i"
      echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
      echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
      echo "controller.quorum.bootstrap.servers=$bootstrap"
      echo "log.dirs=$node_dir/data"
      echo "default.replication.factor=$replicas"
      echo "min.insync.replicas=$min_isr"
      echo "offsets.topic.replication.factor=$replicas"
      echo "transaction.state.log.replication.factor=$replicas"
      echo "transaction.state.log.min.isr=$min_isr"
    } >"$node_dir/server.properties"
    local quorum=(--initial-controllers "$voters")
    [ "$nodes" -eq 1 ] && quorum=(--standalone)
    java_command "$node_dir" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$node_dir/server.properties" "${quorum[@]}"
    "${JAVA[@]}" >"$node_dir/logs/format.log" 2>&1 ||
      { cat "$node_dir/logs/format.log" >&2; echo "could not format Kafka node $i" >&2; exit 1; }
  done <"$dir/nodes.new"
  mv "$dir/nodes.new" "$dir/nodes"
}

case "${1:-} $#" in
  "format 3") format_cluster "$2" "$3" ;;
  "run 3")
    node_dir="$2/node-$3"
    [ -f "$node_dir/server.properties" ] || { echo "no Kafka node $3 in $2 (format it first)" >&2; exit 1; }
    # A fresh server.log per run, so that its start line is this run's.
    [ -f "$node_dir/logs/server.log" ] && mv -f "$node_dir/logs/server.log" "$node_dir/logs/server.log.previous"
    java_command "$node_dir" kafka.Kafka "$node_dir/server.properties"
    exec "${JAVA[@]}" >>"$node_dir/logs/console.log" 2>&1
    ;;
  tool\ *)
    [ "$#" -ge 2 ] || { echo "usage: $0 tool CLASS ARGS..." >&2; exit 2; }
    shift
    # log4j2's default configuration: errors only, to the console.
    exec java -Xmx256m -Djava.awt.headless=true -cp "$KAFKA_LIBS/*" "$@"
    ;;
  *) echo "usage: $0 format DIR NODES | run DIR ID | tool CLASS ARGS..." >&2; exit 2 ;;
esac
