#!/usr/bin/env bash
# Local-cluster scaffolding behind `make cluster|stop|status|kill|start-node|logs|clean|join|leave`.
# Everything it generates (certs/, data/, logs/, pids/, *.toml, .nodes, .left) is git-ignored.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
# Binaries: QKV_BIN, else cargo's target dir (CARGO_TARGET_DIR, relative to the root, or target/).
target="${CARGO_TARGET_DIR:-target}"
[[ "$target" = /* ]] || target="$root/$target"
bin="${QKV_BIN:-$target/release}"
nodes="${NODES:-3}"
base_port="${BASE_PORT:-7001}"
wait_s="${WAIT_S:-20}"
join_wait_s="${JOIN_WAIT_S:-300}"

die() { echo "cluster: $*" >&2; exit 2; }

check_nodes() {
  [[ "$nodes" =~ ^[1-7]$ ]] || die "NODES must be between 1 and 7, got '$nodes'"
  if [[ -f "$here/.nodes" && "$(cat "$here/.nodes")" != "$nodes" ]]; then
    die "cluster/ was set up for $(cat "$here/.nodes") nodes, not $nodes: run \`make clean\` first (it deletes the cluster's data)"
  fi
}

# Ids of the local nodes with a config (1 to 7), and those of them that left the cluster.
all_ids() { local f; for f in "$here"/node[1-7].toml; do [[ -f "$f" ]] && { f=${f##*/node}; echo "${f%.toml}"; }; done; }
has_left() { [[ -f "$here/.left" ]] && grep -qx "$1" "$here/.left"; }
active_ids() { local i; for i in $(all_ids); do has_left "$i" || echo "$i"; done; }
port_of() { echo $((base_port + $1 - 1)); }
addr_of() { echo "127.0.0.1:$(port_of "$1")"; }

# write_config ID N PEERS WHO: node ID's config, with PEERS (TOML lines of { id, addr }).
write_config() {
  local i=$1 repl=$2 peers=$3 who=$4
  cat > "$here/node$i.toml" <<TOML
# Node $i of a local quorumkv cluster (written by \`$who\`).
# Relative paths are relative to this file. QKV_* environment variables override.
# peers: seeds for the first start (listing this node: a member of a new cluster;
# not listing it: a node joining through them). Later the stored layout wins.
id = $i
listen = "$(addr_of "$i")"
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
}

write_configs() {
  local n=$1 repl ids peers i
  repl=$(( n < 3 ? n : 3 ))
  ids=$(seq -s, 1 "$n")
  "$bin/qkv" certs --out "$here/certs" --nodes "$ids" --clients client --admins admin >/dev/null
  peers=""
  for i in $(seq 1 "$n"); do peers+="  { id = $i, addr = \"127.0.0.1:$((base_port + i - 1))\" },"$'\n'; done
  for i in $(seq 1 "$n"); do
    [[ -f "$here/node$i.toml" ]] && continue
    write_config "$i" "$repl" "$peers" "make cluster"
  done
  [[ -f "$here/client.toml" ]] && ensure_admin 1
  if [[ ! -f "$here/client.toml" ]]; then
    local list=""
    for i in $(seq 1 "$n"); do list+="\"127.0.0.1:$((base_port + i - 1))\", "; done
    cat > "$here/client.toml" <<TOML
# How \`qkv\` finds the local cluster (written by \`make cluster\`). Relative paths are relative to this file.
# The admin certificate may also change membership (\`qkv cluster\`); give applications
# certs/client.pem, which may only read and write.
nodes = [${list%, }]
read = "quorum"
write = "quorum"
timeout_ms = 1000

[tls]
ca = "certs/ca.pem"
cert = "certs/admin.pem"
key = "certs/admin.key"
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

qkv() { "$bin/qkv" --config "$here/client.toml" "$@"; }

# A field of `qkv cluster show --json` (its first occurrence: the top-level one).
show_field() { local re="\"$2\":\"?([^,\"}]*)"; if [[ $1 =~ $re ]]; then echo "${BASH_REMATCH[1]}"; fi; }

# wait_stable NODE EPOCH: until NODE holds layout epoch EPOCH (or later) with no transition
# running, printing the phase as it changes; dies after join_wait_s.
wait_stable() {
  local i=$1 epoch=$2 deadline=$((SECONDS + join_wait_s)) out e phase last=""
  while :; do
    out=$(qkv cluster show --json --node "$(addr_of "$i")" 2>/dev/null) || out=""
    e=$(show_field "$out" epoch); phase=$(show_field "$out" phase)
    if [[ -n "$e" ]] && (( e >= epoch )) && [[ "$phase" == stable ]]; then
      echo "node $i: layout epoch $e, stable"; return
    fi
    [[ -n "$phase" && "$phase" != "$last" ]] && { echo "node $i: epoch ${e:-?}, phase $phase"; last=$phase; }
    (( SECONDS < deadline )) || die "node $i: the change to epoch $epoch did not end within ${join_wait_s}s (JOIN_WAIT_S); see \`qkv cluster show --node $(addr_of "$i")\` and \`make status\`"
    sleep 0.5
  done
}

# The first running member other than $1, to stage and commit on.
admin_node() {
  local i
  for i in $(active_ids); do [[ "$i" != "$1" ]] && running "$i" && { echo "$i"; return; }; done
  die "no running member to stage the change on"
}

client_add() { grep -q "\"$1\"" "$here/client.toml" || sed -i "s/^nodes = \[\(.*\)\]/nodes = [\1, \"$1\"]/" "$here/client.toml"; }
client_remove() { sed -i -e "s/, \"$1\"//" -e "s/\"$1\", //" "$here/client.toml"; }

# Membership changes need an admin certificate; a cluster made before they did has none.
ensure_admin() {
  [[ -f "$here/certs/admin.pem" ]] || "$bin/qkv" certs --out "$here/certs" --nodes "$1" --clients client --admins admin >/dev/null
  sed -i -e 's#^cert = "certs/client\.pem"#cert = "certs/admin.pem"#' -e 's#^key = "certs/client\.key"#key = "certs/admin.key"#' "$here/client.toml"
}

join_node() {
  [[ -f "$here/.nodes" ]] || die "no local cluster: run \`make cluster\` first"
  local id="" i peers="" admin epoch repl
  for i in $(seq 1 7); do [[ -f "$here/node$i.toml" ]] || { id=$i; break; }; done
  [[ -n "$id" ]] || die "the 7 local node ids are taken (\`make clean\` starts over)"
  for i in $(active_ids); do running "$i" && peers+="  { id = $i, addr = \"$(addr_of "$i")\" },"$'\n'; done
  [[ -n "$peers" ]] || die "no local node is running: \`make cluster\` first"
  admin=$(admin_node "$id")
  repl=$(sed -n 's/^replication = \([0-9]*\).*/\1/p' "$here/node$admin.toml")
  "$bin/qkv" certs --out "$here/certs" --nodes "$id" --clients client --admins admin >/dev/null
  ensure_admin "$id"
  write_config "$id" "${repl:-3}" "$peers" "make join"
  start_node "$id"
  wait_up "$id"
  epoch=$(show_field "$(qkv cluster show --json --node "$(addr_of "$admin")")" epoch)
  qkv cluster join "$(addr_of "$id")" --node "$(addr_of "$admin")"
  qkv cluster commit --node "$(addr_of "$admin")" || {
    qkv cluster abort --node "$(addr_of "$admin")" >/dev/null 2>&1 || true
    die "the commit failed (node $id is running but not a member; \`make kill N=$id\` and delete cluster/node$id.toml, or retry by hand)"
  }
  client_add "$(addr_of "$id")"
  wait_stable "$admin" $((epoch + 1))
  wait_stable "$id" $((epoch + 1))
  echo "node $id joined at $(addr_of "$id")"
}

leave_node() {
  local i=$1 admin epoch
  [[ -f "$here/node$i.toml" ]] || die "no cluster/node$i.toml"
  has_left "$i" && die "node $i already left"
  ensure_admin "$i"
  admin=$(admin_node "$i")
  epoch=$(show_field "$(qkv cluster show --json --node "$(addr_of "$admin")")" epoch)
  qkv cluster leave "$i" --node "$(addr_of "$admin")"
  qkv cluster commit --node "$(addr_of "$admin")" || {
    qkv cluster abort --node "$(addr_of "$admin")" >/dev/null 2>&1 || true
    die "the commit failed; node $i is still a member"
  }
  # Its data has moved once the transition ended everywhere: the new owners hold its
  # ranges and read from them. Then it may go.
  wait_stable "$admin" $((epoch + 1))
  if running "$i"; then wait_stable "$i" $((epoch + 1)); fi
  echo "$i" >> "$here/.left"
  client_remove "$(addr_of "$i")"
  stop_node "$i" TERM
  echo "node $i left the cluster (its config and data stay in cluster/; \`make clean\` removes them)"
}

node_arg() { [[ "${N:-}" =~ ^[1-7]$ ]] || die "give the node number: N=2"; echo "$N"; }

case "${1:-}" in
  up)
    check_nodes
    write_configs "$nodes"
    for i in $(active_ids); do start_node "$i"; done
    for i in $(active_ids); do wait_up "$i"; done
    cat <<TXT

quorumkv: nodes $(active_ids | tr '\n' ' ')up on 127.0.0.1:$base_port and on, N=$(( nodes < 3 ? nodes : 3 )).
Talk to it from this directory (qkv reads cluster/client.toml):

  export PATH="$(if [[ "$bin" == "$root/"* ]]; then echo "\$PWD/${bin#"$root/"}"; else echo "$bin"; fi):\$PATH"
  qkv put greeting hello
  qkv get greeting --r all
  qkv status

  make status | make kill N=2 | make start-node N=2 | make logs N=2 | make stop | make clean
  make join | make leave N=2
TXT
    ;;
  stop) for i in $(all_ids); do stop_node "$i" TERM; done ;;
  join) join_node ;;
  leave) leave_node "$(node_arg)" ;;
  kill) stop_node "$(node_arg)" KILL ;;
  start-node) i=$(node_arg); start_node "$i"; wait_up "$i" ;;
  logs) i=$(node_arg); tail -n "${LINES_:-100}" "$here/logs/node$i.log" ;;
  clean)
    for i in $(seq 1 7); do running "$i" && stop_node "$i" TERM; done
    rm -rf "$here/certs" "$here/data" "$here/logs" "$here/pids" "$here"/node*.toml "$here/client.toml" "$here/.nodes" "$here/.left"
    echo "cluster/ cleaned"
    ;;
  *) die "usage: cluster.sh up|stop|kill|start-node|logs|clean|join|leave" ;;
esac
