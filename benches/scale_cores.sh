#!/usr/bin/env bash
# Several cores on one box: health requests and WebSocket turns per second
# through nginx (deploy/nginx/autopoiesis.conf, ports rewritten) with 1 and
# with 2 instances, each instance pinned to its own core with taskset.
#
#   cargo build --release && benches/scale_cores.sh
#
# On a 2-core machine the load (this bench) and nginx share the
# cores with the instances, so this shows how the recipe behaves, not the
# ceiling of two dedicated cores. Needs nginx (tests/scale/run.sh
# installs it); the load is this repository's own `cargo bench --bench load`
# (32 keep-alive clients for health, 32 WebSocket clients for turns).
# Prints one line per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/autopoiesis
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-8}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -x "$NGINX" ] || { echo "needs nginx: tests/scale/run.sh installs it" >&2; exit 1; }
cargo bench --locked --quiet --bench load --no-run 2>/dev/null

root=$(mktemp -d /tmp/autopoiesis-cores-XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 2000); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/api/health" && return 0
        sleep 0.01
    done
    echo "port $1 never answered" >&2; return 1
}

run() {  # $1 = number of instances
    local n=$1 servers="" ports=()
    for i in $(seq 0 $((n - 1))); do
        local port; port=$(free_port)
        taskset -c "$i" "$BIN" serve --port "$port" --in-memory --max-sessions 10000000 \
            --id-from-header X-Request-Id > /dev/null 2>&1 &
        pids+=($!)
        ports+=("$port")
        servers+="    server 127.0.0.1:$port max_fails=0;\n"
    done
    for p in "${ports[@]}"; do wait_port "$p"; done
    local proxy; proxy=$(free_port)
    local prefix="$root/nginx-$n"
    mkdir -p "$prefix"
    python3 - "$prefix" "$proxy" "$servers" <<'PY'
import re, sys
prefix, proxy, servers = sys.argv[1], sys.argv[2], sys.argv[3].replace("\\n", "\n")
conf = open("deploy/nginx/autopoiesis.conf").read()
conf = re.sub(r"(    server 127\.0\.0\.1:\d+ max_fails=0;\n)+", servers, conf)
conf = conf.replace("listen 127.0.0.1:8420;", "listen 127.0.0.1:%s;" % proxy)
open(prefix + "/autopoiesis.conf", "w").write(conf)
open(prefix + "/nginx.conf", "w").write("""
daemon off; master_process on; worker_processes 2; pid %(p)s/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path %(p)s/b; proxy_temp_path %(p)s/p;
       fastcgi_temp_path %(p)s/f; uwsgi_temp_path %(p)s/u; scgi_temp_path %(p)s/s;
       include %(p)s/autopoiesis.conf; }
""" % {"p": prefix})
PY
    "$NGINX" -p "$prefix/" -c "$prefix/nginx.conf" -e stderr &
    pids+=($!)
    wait_port "$proxy"
    local load health turns
    load=$(LOAD_ADDR="127.0.0.1:$proxy" LOAD_PHASES=health,turns LOAD_CLIENTS=32 \
        LOAD_SECONDS="$SECONDS_PER_PHASE" cargo bench --locked --quiet --bench load 2>/dev/null)
    health=$(awk '$2 == "health" {print $3}' <<<"$load")
    turns=$(awk '$2 == "turns" {print $3}' <<<"$load")
    echo "instances=$n health_rps=$health turns_per_s=$turns"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

echo "# $(date -u +%Y-%m-%d) $(nproc) cores; nginx and the load share the cores with the instances"
run 1
run 2
