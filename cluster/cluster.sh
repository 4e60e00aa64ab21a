#!/usr/bin/env bash
# Local-cluster scaffolding behind `make cluster|stop|status|kill|start-node|logs|clean`.
# Everything it generates (certs/, data/, logs/, pids/, *.toml) is git-ignored.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
bin="${QKV_BIN:-$root/target/release}"
nodes="${NODES:-3}"
base_port="${BASE_PORT:-7001}"
wait_s="${WAIT_S:-20}"

die() { echo "cluster: $*" >&2; exit 2; }

check_nodes() {
  [[ "$nodes" =~ ^[1-7]$ ]] || die "NODES must be between 1 and 7, got '$nodes'"
  if [[ -f "$here/.nodes" && "$(cat "$here/.nodes")" != "$nodes" ]]; then
    die "cluster/ was set up for $(cat "$here/.nodes") nodes, not $nodes: run \`make clean\` first (it deletes the cluster's data)"
  fi
}

known_nodes() { if [[ -f "$here/.nodes" ]]; then cat "$here/.nodes"; else echo "$nodes"; fi; }

write_configs() {
  local n=$1 repl ids peers i
  repl=$(( n < 3 ? n : 3 ))
  ids=$(seq -s, 1 "$n")
  "$bin/qkv" certs --out "$here/certs" --nodes "$ids" --clients client >/dev/null
  peers=""
  for i in $(seq 1 "$n"); do peers+="  { id = $i, addr = \"127.0.0.1:$((base_port + i - 1))\" },"$'\n'; done
  for i in $(seq 1 "$n"); do
    [[ -f "$here/node$i.toml" ]] && continue
    cat > "$here/node$i.toml" <<TOML
# Node $i of a local quorumkv cluster (written by \`make cluster\`).
# Relative paths are relative to this file. QKV_* environment variables override.
id = $i
listen = "127.0.0.1:$((base_port + i - 1))"
data_dir = "data/node$i"
replication = $repl
vnodes = 64
persist = "buffer"      # buffer | sync | periodic
request_timeout_ms = 1000
worker_threads = 1      # the whole cluster shares this machine
metrics_listen = "127.0.0.1:$((base_port + 2000 + i - 1))"   # Prometheus: GET /metrics
peers = [
$peers]

[tls]
ca = "certs/ca.pem"
cert = "certs/node-$i.pem"
key = "certs/node-$i.key"
TOML
  done
  if [[ ! -f "$here/client.toml" ]]; then
    local list=""
    for i in $(seq 1 "$n"); do list+="\"127.0.0.1:$((base_port + i - 1))\", "; done
    cat > "$here/client.toml" <<TOML
# How \`qkv\` finds the local cluster (written by \`make cluster\`). Relative paths are relative to this file.
nodes = [${list%, }]
read = "quorum"
write = "quorum"
timeout_ms = 1000

[tls]
ca = "certs/ca.pem"
cert = "certs/client.pem"
key = "certs/client.key"
TOML
  fi
  echo "$n" > "$here/.nodes"
}

pid_of() { local f="$here/pids/node$1.pid"; [[ -f "$f" ]] && cat "$f"; }
running() { local p; p=$(pid_of "$1") && [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

start_node() {
  local i=$1
  [[ -f "$here/node$i.toml" ]] || die "no cluster/node$i.toml: run \`make cluster\` first"
  if running "$i"; then echo "node $i already running (pid $(pid_of "$i"))"; return; fi
  mkdir -p "$here/logs" "$here/pids"
  nohup "$bin/qkv-node" --config "$here/node$i.toml" >>"$here/logs/node$i.log" 2>&1 &
  echo $! > "$here/pids/node$i.pid"
  echo "started node $i (pid $!), log cluster/logs/node$i.log"
}

wait_up() {
  local i=$1 deadline=$((SECONDS + wait_s))
  until QKV_NODES="127.0.0.1:$((base_port + i - 1))" "$bin/qkv" --config "$here/client.toml" ring probe >/dev/null 2>&1; do
    running "$i" || die "node $i exited; see cluster/logs/node$i.log"
    (( SECONDS < deadline )) || die "node $i did not answer within ${wait_s}s; see cluster/logs/node$i.log"
    sleep 0.2
  done
}

stop_node() {
  local i=$1 sig=${2:-TERM} p deadline
  p=$(pid_of "$i") || { echo "node $i: not started"; return; }
  if kill -0 "$p" 2>/dev/null; then
    kill -"$sig" "$p"
    deadline=$((SECONDS + 10))
    while kill -0 "$p" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { echo "node $i did not stop in 10s; sending SIGKILL"; kill -KILL "$p"; }
    echo "node $i stopped (SIG$sig)"
  else
    echo "node $i: not running"
  fi
  rm -f "$here/pids/node$i.pid"
}

node_arg() { [[ "${N:-}" =~ ^[1-7]$ ]] || die "give the node number: N=2"; echo "$N"; }

case "${1:-}" in
  up)
    check_nodes
    write_configs "$nodes"
    for i in $(seq 1 "$nodes"); do start_node "$i"; done
    for i in $(seq 1 "$nodes"); do wait_up "$i"; done
    cat <<TXT

quorumkv: $nodes nodes up on 127.0.0.1:$base_port-$((base_port + nodes - 1)), N=$(( nodes < 3 ? nodes : 3 )).
Talk to it from this directory (qkv reads cluster/client.toml):

  export PATH="\$PWD/target/release:\$PATH"
  qkv put greeting hello
  qkv get greeting --r all
  qkv status

  make status | make kill N=2 | make start-node N=2 | make logs N=2 | make stop | make clean
TXT
    ;;
  stop) for i in $(seq 1 "$(known_nodes)"); do stop_node "$i" TERM; done ;;
  kill) stop_node "$(node_arg)" KILL ;;
  start-node) i=$(node_arg); start_node "$i"; wait_up "$i" ;;
  logs) i=$(node_arg); tail -n "${LINES_:-100}" "$here/logs/node$i.log" ;;
  clean)
    for i in $(seq 1 7); do running "$i" && stop_node "$i" TERM; done
    rm -rf "$here/certs" "$here/data" "$here/logs" "$here/pids" "$here"/node*.toml "$here/client.toml" "$here/.nodes"
    echo "cluster/ cleaned"
    ;;
  *) die "usage: cluster.sh up|stop|kill|start-node|logs|clean" ;;
esac
