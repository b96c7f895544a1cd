#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client against examples/ws_echo (the
# server's own reactor and WebSocket layer with an echo service) and fails
# unless every case's behavior and close behavior is OK, NON-STRICT or
# INFORMATIONAL. Cases 12.* and 13.* (permessage-deflate) are excluded: the
# server does not offer the extension.
#
# Needs Python 2.7 (pyenv's 2.7.18 on this image); installs
# autobahntestsuite==0.8.2 into target/py27 (pip --user with PYTHONUSERBASE
# there: Python 2.7 has no venv) if `wstest` is missing there. The
# report goes to target/autobahn/ (not committed); the counts are printed.
set -euo pipefail
cd "$(dirname "$0")/../.."

export PYENV_VERSION="${PYENV_VERSION:-2.7.18}"
# Python 2.7 has no venv: its "user" site is moved under target/ instead.
export PYTHONUSERBASE="$(pwd)/target/py27"
WSTEST="$PYTHONUSERBASE/bin/wstest"
if [ ! -x "$WSTEST" ]; then
    echo "== installing autobahntestsuite==0.8.2 (Python $PYENV_VERSION, into $PYTHONUSERBASE)"
    python -m pip install --quiet --disable-pip-version-check --no-warn-script-location --user autobahntestsuite==0.8.2
fi

cargo build --quiet --release --example ws_echo
out=target/autobahn
rm -rf "$out"
mkdir -p "$out"

target/release/examples/ws_echo --port 0 > "$out/echo.stdout" 2> "$out/echo.stderr" &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT
# Wait for the listening line (the server prints it once bound).
for _ in $(seq 1 200); do
    if grep -q '^listening on ' "$out/echo.stdout"; then break; fi
    if ! kill -0 "$echo_pid" 2>/dev/null; then
        echo "ws_echo exited:"; cat "$out/echo.stderr"; exit 1
    fi
    sleep 0.05
done
url=$(sed -n 's/^listening on http:\/\///p' "$out/echo.stdout")
[ -n "$url" ] || { echo "ws_echo did not start"; exit 1; }

cat > "$out/spec.json" <<SPEC
{
  "outdir": "./reports",
  "servers": [{"agent": "autopoiesis", "url": "ws://$url"}],
  "cases": ["*"],
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {}
}
SPEC

echo "== wstest -m fuzzingclient against ws://$url"
(cd "$out" && "$WSTEST" -m fuzzingclient -s spec.json > wstest.log 2>&1) || {
    echo "wstest failed:"; tail -30 "$out/wstest.log"; exit 1
}

python3 - "$out/reports/index.json" <<'PY'
import json, sys, collections
index = json.load(open(sys.argv[1]))
cases = next(iter(index.values()))
passing = {"OK", "NON-STRICT", "INFORMATIONAL"}
counts = collections.Counter()
close_counts = collections.Counter()
bad = []
for case, r in sorted(cases.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
    counts[r["behavior"]] += 1
    close_counts[r["behaviorClose"]] += 1
    if r["behavior"] not in passing or r["behaviorClose"] not in passing:
        bad.append((case, r["behavior"], r["behaviorClose"]))
print("Autobahn|Testsuite: %d cases" % len(cases))
print("  behavior:       " + ", ".join("%s %d" % kv for kv in sorted(counts.items())))
print("  close behavior: " + ", ".join("%s %d" % kv for kv in sorted(close_counts.items())))
for case, b, c in bad:
    print("  FAILED %s: behavior %s, close %s" % (case, b, c))
sys.exit(1 if bad else 0)
PY
