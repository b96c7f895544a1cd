#!/usr/bin/env bash
# The chat page's real-browser test (tests/browser/chat_page.py): builds the
# release binary (cargo does nothing when it is fresh), installs Debian's
# chromium and Python Playwright (into the test venv target/venv, see
# tests/venv.sh) only when missing (never `playwright install`: the browser
# is the system's), then runs the test. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

cargo build --release --locked --quiet

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "== installing chromium (Debian)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

. tests/venv.sh
venv_need playwright.sync_api=playwright

node --test tests/browser/markdown.test.mjs

exec timeout 600 python3 tests/browser/chat_page.py
