# quorumkv: `make cluster` starts a local cluster, `make test` runs every check.
NODES ?= 3
QUICK ?= 0
export NODES
# Where cargo puts binaries (CARGO_TARGET_DIR when set, as cargo itself does).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: cluster stop status kill start-node logs clean join leave test bench bench-aae bench-join bench-peers bench-hedge bench-shortener bench-growth build sim chaos alerts-check

build:
	cargo build --release --workspace --bins

cluster: build
	@./cluster/cluster.sh up

stop:
	@./cluster/cluster.sh stop

status:
	@$(TARGET_DIR)/release/qkv --config cluster/client.toml status

kill:
	@./cluster/cluster.sh kill

start-node:
	@./cluster/cluster.sh start-node

logs:
	@./cluster/cluster.sh logs

clean:
	@./cluster/cluster.sh clean

# Start a new local node (the next free id, 1 to 7) and join it: qkv cluster join + commit,
# then wait until the data moved (JOIN_WAIT_S, 300 s).
join:
	@./cluster/cluster.sh join

# Retire node N: qkv cluster leave + commit, wait until its data moved, then stop it.
leave:
	@./cluster/cluster.sh leave

test:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo build --workspace --bins
	cargo test --workspace

# The alert rules alone: promtool check and their unit tests (tests/ops.rs runs both in make test,
# and checks the metric names against a real node). Installs Debian's prometheus package when
# promtool is missing (root).
alerts-check:
	./scripts/install-promtool.sh
	promtool check rules ops/prometheus/qkv-alerts.yml
	promtool test rules ops/prometheus/qkv-alerts.test.yml

# Latency benches on a fresh local cluster: make bench [QUICK=1] [NODES=5] (results in target/bench/)
bench:
	cargo build --release --workspace --bins
	QKV_BENCH_QUICK=$(QUICK) QKV_BENCH_NODES=$(NODES) cargo bench --bench latency

# Anti-entropy: time to converge 100k divergent keys, idle CPU, throughput during a refill
bench-aae:
	cargo build --release --workspace --bins
	cargo bench --bench aae

# A fourth node joins 3 holding 1M keys under a quorum write load: time, bytes, throughput
# during vs before (KEYS=1000000)
KEYS ?= 1000000
bench-join:
	cargo build --release --workspace --bins
	QKV_BENCH_JOIN_KEYS=$(KEYS) cargo bench --bench join

# quorumkv beside etcd (3 members) and Redis (a primary and 2 replicas), in one run, with the
# ratios of the fast-path targets (installs etcd and Redis from Debian's packages when missing).
# QKV_PEERS_QUICK=1: one short rep; QKV_PEERS_ONLY=etcd|redis|qkv
bench-peers:
	./scripts/install-peers.sh
	cargo build --release --workspace --bins
	cargo bench --bench peers

# R = one reads with a replica stopped by SIGSTOP, without and with hedged reads
bench-hedge:
	cargo build --release --workspace --bins
	cargo bench --bench hedge

# Stale reads measured beside the PBS prediction (qkv pbs), node 3 applying replica writes
# 0-2x QKV_STALE_DELAY_MS (5) ms late; table, JSON and SVG in target/bench/staleness.*
bench-staleness:
	cargo build --release --workspace --bins
	cargo bench --bench staleness

# The URL shortener's scenario: create a link, a click at once on another instance; the 404 rate
# of a friend at R = one, of the creator with their session cookie, of a friend at R = quorum.
# QKV_BENCH_LINKS (1000) links per scenario; node 3 applies late by QKV_BENCH_APPLY_DELAY_MS (5)
bench-shortener:
	cargo build --release --workspace --bins
	cargo bench --bench shortener

# Cost growth: quorum p50/p99 at 100k and at KEYS keys (100-byte values), bytes per key on disk
# and in memory, and a node's start time holding them all. make bench-growth GROWTH_KEYS=10000000
GROWTH_KEYS ?= 3000000
bench-growth:
	cargo build --release --workspace --bins
	QKV_GROWTH_KEYS=$(GROWTH_KEYS) cargo bench --bench growth

# Many seeded schedules of a simulated cluster, each checked: make sim SEEDS=100000 NODES=5
SEEDS ?= 10000
sim:
	cargo run --release -p qkv-sim -- --seeds $(SEEDS) --nodes $(NODES)

# Real qkv-node processes in network namespaces under faults, then the same checker (root only;
# otherwise it says so and skips). make chaos DURATION=60 NODES=5 [PROFILE=debug]
DURATION ?= 60
PROFILE ?= release
chaos:
	cargo build $(if $(filter release,$(PROFILE)),--release,) --workspace --bins
	$(TARGET_DIR)/$(PROFILE)/qkv-chaos --duration $(DURATION) --nodes $(if $(filter 1 2,$(NODES)),3,$(NODES))
