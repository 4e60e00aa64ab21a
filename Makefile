# quorumkv: `make cluster` starts a local cluster, `make test` runs every check.
NODES ?= 3
export NODES

.PHONY: cluster stop status kill start-node logs clean test bench build

build:
	cargo build --release --workspace --bins

cluster: build
	@./cluster/cluster.sh up

stop:
	@./cluster/cluster.sh stop

status:
	@./target/release/qkv --config cluster/client.toml status

kill:
	@./cluster/cluster.sh kill

start-node:
	@./cluster/cluster.sh start-node

logs:
	@./cluster/cluster.sh logs

clean:
	@./cluster/cluster.sh clean

test:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo build --workspace --bins
	cargo test --workspace

# Until the full bench suite lands: sequential put/get latency against the running `make cluster`.
bench:
	cargo bench --bench sequential
