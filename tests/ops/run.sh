#!/usr/bin/env bash
# The API documents against the live server (CI runs it after the other
# steps):
#   1. /openapi.json, /asyncapi.json, /docs are served without the key; the
#      OpenAPI document passes openapi-spec-validator;
#   2. the AsyncAPI document parses with @asyncapi/parser with no
#      error-severity diagnostic;
#   3. schemathesis fuzzes every HTTP operation (all its checks) against the
#      OpenAPI document: no 5xx, no undocumented status, content type,
#      header or body;
#   4. WebSocket and SSE traffic is checked against the AsyncAPI payload
#      schemas, and the upgrade's refusals against the OpenAPI document;
#   5. after a few turns, a /metrics scrape parsed by prometheus_client has
#      every metric of the Metrics table in docs/operating.md with its type
#      and labels.
# Installs what it needs only when missing: Python packages into the test
# venv target/venv (tests/venv.sh), the parser with npm into
# target/ops/node. Everything it writes goes to target/. Exits non-zero on
# the first failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

out=target/ops
mkdir -p "$out"
SCHEMATHESIS_EXAMPLES="${SCHEMATHESIS_EXAMPLES:-100}"

. tests/venv.sh
venv_need openapi_spec_validator=openapi-spec-validator schemathesis prometheus_client
if ! command -v npm >/dev/null 2>&1; then
    echo "== installing node and npm (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node_dir="$out/node"
if [ ! -f "$node_dir/node_modules/@asyncapi/parser/package.json" ]; then
    echo "== installing @asyncapi/parser (npm, into $node_dir)"
    mkdir -p "$node_dir"
    npm install --silent --no-audit --no-fund --prefix "$node_dir" @asyncapi/parser@3 >/dev/null
fi

cargo build --release --locked --quiet

# A server with auth on: the documents must be public, everything else not.
key="ops-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
AUTOPOIESIS_API_KEY="$key" target/release/autopoiesis serve --port 0 --in-memory \
    > "$out/server.stdout" 2> "$out/server.stderr" &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
    if grep -q '^listening on ' "$out/server.stdout"; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "the server exited:"; cat "$out/server.stderr"; exit 1
    fi
    sleep 0.05
done
base=$(sed -n 's/^listening on //p' "$out/server.stdout")
[ -n "$base" ] || { echo "the server did not start"; exit 1; }

echo "== documents ($base)"
python3 tests/ops/check.py documents "$base" "$key" "$out"

echo "== AsyncAPI parser"
NODE_PATH="$node_dir/node_modules" node tests/ops/asyncapi_check.js "$out/asyncapi.json"

# schemathesis: every operation but the two that do not end as plain HTTP
# (the WebSocket upgrade; the event stream of an existing session) runs
# with all checks. The event stream runs alone first, while no session
# exists, so every answer is a 400, 401 or 404 and no stream stays open.
# All checks but use_after_free: a chat to a deleted session's id creates
# it again (`POST /api/sessions/{id}/chat`, or `POST /api/chat` with that
# `session_id`: the contract, as the original server), which schemathesis
# cannot tell from a deleted session still being readable. One worker, so
# that stateful scenarios do not interleave.
schemathesis_run() {
    local name=$1
    shift
    local log="$out/schemathesis-$name.log"
    if (cd "$out" && NO_COLOR=1 timeout 300 schemathesis --config-file "$root/tests/ops/schemathesis.toml" run "$base/openapi.json" \
        -H "X-API-Key: $key" --checks all --exclude-checks use_after_free --workers 1 --request-timeout 10 \
        --max-examples "$SCHEMATHESIS_EXAMPLES" "$@") > "$log" 2>&1; then
        echo "schemathesis ($name): $(grep -E 'generated' "$log" | tail -1 | sed 's/^ *//');" \
            "$(grep -E 'Selected:' "$log" | sed 's/^ *//') operations; $(grep -E '=+ .* =+' "$log" | tail -1 | tr -d '=' | sed 's/^ *//')"
    else
        echo "schemathesis ($name) FAILED:"
        sed -n '/FAILURES\|ERRORS/,$p' "$log" | head -150
        exit 1
    fi
}
echo "== schemathesis (-n $SCHEMATHESIS_EXAMPLES per operation)"
schemathesis_run events --include-operation-id sessionEvents
echo "  (its warning is the intended one: every id it tried is unknown, so no stream opened)"
schemathesis_run rest --exclude-operation-id sessionWebSocket --exclude-operation-id sessionEvents

echo "== WebSocket and event stream against the documents"
python3 tests/ops/check.py streams "$base" "$key" "$out"

echo "== metrics (prometheus_client)"
python3 tests/ops/check.py metrics "$base" "$key" docs/operating.md

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server died:"; tail -20 "$out/server.stderr"; exit 1
fi
echo "ops checks: all passed"
