#!/usr/bin/env bash
# etcd and Redis from Debian's packages, for `make bench-peers` (installed when missing; root).
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v redis-server >/dev/null || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "make bench-peers needs ${need[*]} (Debian packages): run it as root, or install them" >&2
  exit 2
fi
echo "installing ${need[*]} (Debian packages)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
