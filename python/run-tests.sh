#!/usr/bin/env bash
# Tests of the pydantic-ai adapter (python/), against the real pydantic-ai, offline.
#
# Makes (or reuses) the virtual environment target/venv at the repository root,
# installs ./python and pytest into it (again only when python/ changed), and
# runs python/tests with it. Extra arguments go to pytest, e.g.
#   python/run-tests.sh -k approval -x
# With --install-only it stops after the install (the server's own
# integration test, tests/pydantic_ai.rs, runs the adapter from this venv).
# Needs python3 (3.11+, as pydantic-ai does) and access to the package registry for the first run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The test tooling's one venv (made, with python3-venv if need be, by the
# script every test runner sources).
. tests/venv.sh
venv="$VENV_DIR"
py="$venv/bin/python"

# Reinstall the adapter when its sources changed (a stamp of their hashes).
stamp="$venv/.autopoiesis-worker.stamp"
digest="$(cd "$root/python" && find pyproject.toml autopoiesis_worker -type f -name '*.py' -o -type f -name '*.toml' -o -type f -name 'py.typed' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ] || ! "$py" -c 'import autopoiesis_worker, pytest' 2>/dev/null; then
    "$py" -m pip install --quiet --disable-pip-version-check --upgrade "$root/python" pytest
    echo "$digest" >"$stamp"
fi

[ "${1:-}" = "--install-only" ] && exit 0
cd "$root/python"
exec "$py" -m pytest -p no:cacheprovider "$@"
