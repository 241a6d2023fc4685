#!/usr/bin/env bash
# The README's test command (CI runs it too): installs everything the tests need on a fresh
# machine, then proves the package as a new user gets it, checks the code, and runs every test.
#  1. Debian's strace, redis-server, chromium and prometheus (promtool) when missing (tests
#     start their own Redis and Prometheus).
#  2. Builds the wheel once.
#  3. Installs it with no extras into a fresh virtual environment: pip check, every module
#     imports, `activitybi demo` runs to the end and its rows are in DuckDB.
#  4. Installs the same wheel with the `test` extra into a second fresh environment, where
#     ruff, ruff format, mypy (strict) and stubtest run, then cargo fmt, clippy and test.
#  5. pytest, every test (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

need=()
command -v strace >/dev/null || need+=(strace)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v promtool >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

step() { printf '\n== %s\n' "$*"; }
work=$(mktemp -d "${TMPDIR:-/tmp}/activitybi-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

step "build the wheel"
python3 -m pip install -q --disable-pip-version-check "maturin>=1.9,<2"
python3 -m maturin build --release --locked --quiet --out "$work/dist"
wheel=$(ls "$work"/dist/activitybi-*.whl)

step "the README's first command, in a fresh environment with no extras"
python3 -m venv "$work/user"
"$work/user/bin/pip" install -q --disable-pip-version-check "$wheel"
"$work/user/bin/pip" check
(cd "$work" && "$work/user/bin/python" "$root/scripts/smoke_install.py")

step "the test environment: the same wheel with the test extra"
python3 -m venv "$work/test"
"$work/test/bin/pip" install -q --disable-pip-version-check "$wheel[test]"
"$work/test/bin/pip" check
export PATH="$work/test/bin:$PATH"

step "checks: ruff, ruff format, mypy, stubtest, cargo fmt, clippy"
ruff check .
ruff format --check .
mypy
(cd "$work" && python -m mypy.stubtest activitybi._core)  # _core.pyi against the built module
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

step "cargo test"
cargo test --locked

step "pytest"
python -m pytest "$@"
