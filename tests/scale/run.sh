#!/usr/bin/env bash
# Scale-out test: three instances of the release binary behind Debian's
# nginx, configured by deploy/nginx/autopoiesis.conf itself (ports
# rewritten), nginx run unprivileged in the foreground on loopback ports.
# Installs nginx if missing. Prints each check; exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "== installing nginx"
    # Keep the package's postinst from starting a system nginx on port 80.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx > /dev/null
fi

cargo build --quiet --release
python3 tests/scale/scale_out.py "$@"
