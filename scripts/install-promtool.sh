#!/usr/bin/env bash
# promtool from Debian's prometheus package, for the alert-rule checks in tests/ops.rs and
# `make alerts-check` (installed when missing; root).
set -euo pipefail
command -v promtool >/dev/null && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "checking ops/prometheus/qkv-alerts.yml needs promtool (Debian package prometheus): run it as root, or install it" >&2
  exit 2
fi
echo "installing prometheus (Debian package, for promtool)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null || { echo "prometheus installed but promtool is not on PATH" >&2; exit 2; }
