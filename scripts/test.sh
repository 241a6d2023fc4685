#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs every test: Rust first,
# then Python against the installed package. Debian's strace, redis-server and chromium come
# from apt (the tests start their own Redis on a free loopback port). The README's test
# command; CI runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v strace >/dev/null || need+=(strace)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q --upgrade pip >/dev/null
python3 -m pip install -q ".[test]"
cargo test --locked
python3 -m pytest "$@"
