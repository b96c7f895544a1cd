#!/usr/bin/env bash
# Runs the examples of README.md (and docs/*.md) that are marked runnable
# (a fenced block tagged `sh runnable` or `python runnable`) against a live
# release binary on a free port: tests/readme/examples.py. The Python
# examples' packages go into the test venv target/venv (tests/venv.sh).
# Exits non-zero on the first example that fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

. tests/venv.sh
venv_need websockets

cargo build --release --locked --quiet
exec timeout 600 python3 tests/readme/examples.py "$@"
