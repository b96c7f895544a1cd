#!/usr/bin/env python3
"""After an instance was added and the journals merged (docs/scaling.md,
"Adding an instance"), delete from each instance the sessions the proxy now sends
elsewhere: they are copies that no client can reach.

    deploy/nginx/dedupe.py http://127.0.0.1:8420 127.0.0.1:8421 127.0.0.1:8422 ...

PROXY is the nginx front (it must add X-Autopoiesis-Instance, as
deploy/nginx/autopoiesis.conf does); each INSTANCE is host:port exactly as
in the upstream block. The key, if any, comes from AUTOPOIESIS_API_KEY.
Prints what it deleted; deletes nothing it cannot place.
"""

import http.client
import json
import os
import sys
import urllib.parse


def call(host_port, method, path):
    host, port = host_port.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {}
    key = os.environ.get("AUTOPOIESIS_API_KEY")
    if key:
        headers["X-API-Key"] = key
    c.request(method, path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r, body


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    proxy = urllib.parse.urlsplit(sys.argv[1]).netloc
    instances = sys.argv[2:]
    deleted = kept = 0
    for instance in instances:
        r, body = call(instance, "GET", "/api/sessions")
        if r.status != 200:
            sys.exit("%s: GET /api/sessions answered %d" % (instance, r.status))
        for session in json.loads(body):
            sid = session["id"]
            r, _ = call(proxy, "GET", "/api/sessions/%s/history" % urllib.parse.quote(sid))
            home = r.getheader("X-Autopoiesis-Instance")
            if r.status != 200 or not home:
                print("%s: %s not placed (proxy answered %d); kept" % (instance, sid, r.status))
                kept += 1
            elif home == instance:
                kept += 1
            else:
                r, _ = call(instance, "DELETE", "/api/sessions/%s" % urllib.parse.quote(sid))
                print("%s: deleted %s (served by %s): %d" % (instance, sid, home, r.status))
                deleted += 1
    print("dedupe: %d kept, %d deleted" % (kept, deleted))


if __name__ == "__main__":
    main()
