#!/usr/bin/env python3
"""The steps of tests/ops/run.sh that talk to the live server.

    check.py documents BASE_URL KEY OUT_DIR   fetch and check the three documents, validate the OpenAPI one
    check.py streams   BASE_URL KEY OUT_DIR   WebSocket and SSE traffic checked against both documents
    check.py metrics   BASE_URL KEY DOC_MD    a scrape parsed by prometheus_client, against the doc's Metrics table

Each prints a short summary and exits non-zero on failure. Every socket has
a timeout; nothing here waits unbounded.
"""

import base64
import hashlib
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

TIMEOUT = 10


def fail(msg):
    print("FAILED: " + msg)
    sys.exit(1)


def http(base, method, path, key=None, body=None, headers=None):
    req = urllib.request.Request(base + path, method=method, data=body)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if key:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, dict((k.lower(), v) for k, v in r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict((k.lower(), v) for k, v in e.headers.items()), e.read()


# ---------------------------------------------------------------- documents


def documents(base, key, out):
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    got = {}
    for path, ctype in [("/openapi.json", "application/json"), ("/asyncapi.json", "application/json"), ("/docs", "text/html")]:
        # Public: fetched without the key (the server runs with one).
        status, headers, body = http(base, "GET", path)
        if status != 200 or not headers.get("content-type", "").startswith(ctype):
            fail(f"GET {path}: {status} {headers.get('content-type')}")
        got[path] = (headers, body)
        if path.endswith(".json"):
            with open(os.path.join(out, path.lstrip("/")), "wb") as f:
                f.write(body)
    headers, html = got["/docs"]
    csp = headers.get("content-security-policy", "")
    if not csp.startswith("default-src 'none'") or "script-src 'sha256-" not in csp or "connect-src 'self'" not in csp:
        fail(f"/docs policy: {csp!r}")
    if re.search(rb"(src|href)=\"(https?:)?//", html):
        fail("/docs references another origin")
    print(f"documents: /openapi.json, /asyncapi.json, /docs served without the key; /docs {len(html)} bytes, CSP {csp.split(';')[0]}")

    spec = json.loads(got["/openapi.json"][1])
    try:
        validate(spec)
    except OpenAPIValidationError as e:
        fail(f"openapi-spec-validator: {e}")
    ops = sum(1 for item in spec["paths"].values() for m in item if m in ("get", "post", "put", "delete", "patch"))
    version = spec["info"]["version"]
    health = json.loads(http(base, "GET", "/api/health")[2])
    if health["version"] != version:
        fail(f"info.version {version} != server {health['version']}")
    print(f"openapi-spec-validator: valid (OpenAPI {spec['openapi']}, {len(spec['paths'])} paths, {ops} operations, version {version} = the server's)")


# ------------------------------------------------------------------ streams


class WebSocket:
    """A minimal RFC 6455 client: enough to drive one session."""

    def __init__(self, base, path, headers=None):
        u = urlsplit(base)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=TIMEOUT)
        nonce = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {u.netloc}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {nonce}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                fail(f"{path}: closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode().split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in header_lines)}
        want = base64.b64encode(hashlib.sha1((nonce + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if self.status == 101 and self.headers.get("sec-websocket-accept") != want:
            fail(f"{path}: wrong Sec-WebSocket-Accept")

    def send(self, obj):
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                fail("WebSocket closed by the server")
            self.buf += chunk

    def frame(self):
        """(opcode, payload) of the next frame; server frames are unmasked."""
        self._need(2)
        op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        at = 2
        if n == 126:
            self._need(4)
            n, at = int.from_bytes(self.buf[2:4], "big"), 4
        elif n == 127:
            self._need(10)
            n, at = int.from_bytes(self.buf[2:10], "big"), 10
        self._need(at + n)
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return op, payload

    def recv(self):
        while True:
            op, payload = self.frame()
            if op == 0x1:
                return json.loads(payload)
            if op == 0x8:
                return {"close": int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None}

    def close(self):
        self.sock.close()


def payload_validators(asyncapi):
    """name (the op) → a validator of that message's payload."""
    from jsonschema import Draft202012Validator

    out = {}
    for key, msg in asyncapi["components"]["messages"].items():
        root = {"$ref": f"#/components/messages/{key}/payload", "components": asyncapi["components"]}
        out[msg["name"]] = Draft202012Validator(root)
    return out


def streams(base, key, out):
    with open(os.path.join(out, "asyncapi.json")) as f:
        asyncapi = json.load(f)
    validators = payload_validators(asyncapi)
    checked = {}

    def check(event, where):
        op = event.get("op")
        if op not in validators:
            fail(f"{where}: op {op!r} is not in the AsyncAPI document")
        errors = [e.message for e in validators[op].iter_errors(event)]
        if errors:
            fail(f"{where}: {json.dumps(event)} breaks its AsyncAPI schema: {errors[0]}")
        checked[op] = checked.get(op, 0) + 1
        return event

    sid = "ops-" + os.urandom(4).hex()
    ws = WebSocket(base, f"/api/ws/{sid}", {"X-API-Key": key})
    if ws.status != 101:
        fail(f"upgrade: {ws.status}")
    ws.send({"op": "message", "data": {"content": "hello big world"}})
    ops = []
    while not ops or ops[-1] != "done":
        ops.append(check(ws.recv(), "WebSocket")["op"])
    if ops != ["token", "token", "token", "done"]:
        fail(f"a turn streamed {ops}")
    for frame, want in [({"op": "dance"}, None), ({"op": "cancel"}, "not_running"), ({"op": "message", "data": {}}, None),
                        ({"op": "approve", "data": {}}, "approval_unsupported")]:
        ws.send(frame)
        reply = check(ws.recv(), "WebSocket")
        if reply["op"] != "error" or reply["data"].get("code") != want:
            fail(f"{frame} → {reply}")
    ws.close()

    # Resume past what the session ever had: resync first.
    ws = WebSocket(base, f"/api/ws/{sid}?since=999999", {"X-API-Key": key})
    first = check(ws.recv(), "WebSocket ?since")
    if first["op"] != "resync" or first["data"] != {"since": 999999}:
        fail(f"?since=999999 began with {first}")
    ws.close()
    # The key as a subprotocol is selected; a wrong key is closed with 4001.
    ws = WebSocket(base, f"/api/ws/{sid}", {"Sec-WebSocket-Protocol": f"autopoiesis.key.{key}"})
    if ws.status != 101 or ws.headers.get("sec-websocket-protocol") != f"autopoiesis.key.{key}":
        fail(f"key subprotocol: {ws.status} {ws.headers}")
    ws.close()
    ws = WebSocket(base, f"/api/ws/{sid}", {"X-API-Key": "wrong"})
    if ws.status != 101 or ws.recv().get("close") != 4001:
        fail("a wrong key is not closed with 4001")
    ws.close()

    # The upgrade's HTTP refusals, checked against the OpenAPI document.
    import requests
    import schemathesis

    schema = schemathesis.openapi.from_path(os.path.join(out, "openapi.json"))
    upgrade = schema["/api/ws/{id}"]["GET"]
    good = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13", "X-API-Key": key}
    statuses = []
    for path, headers, want in [
        (f"/api/ws/{sid}", {"X-API-Key": key}, 404),
        (f"/api/ws/{sid}", {**good, "Sec-WebSocket-Version": "8"}, 426),
        (f"/api/ws/{sid}", {**good, "Sec-WebSocket-Key": "short"}, 400),
        ("/api/ws/bad%20id", good, 400),
        (f"/api/ws/{sid}?since=-1", good, 400),
    ]:
        r = requests.get(base + path, headers=headers, timeout=TIMEOUT)
        if r.status_code != want:
            fail(f"GET {path} {headers}: {r.status_code}, wanted {want}")
        upgrade.validate_response(r)
        statuses.append(r.status_code)
    r = requests.post(base + f"/api/ws/{sid}", headers={"X-API-Key": key}, timeout=TIMEOUT)
    if r.status_code != 405 or r.headers.get("allow") != "GET":
        fail(f"POST /api/ws/{{id}}: {r.status_code} {r.headers}")

    # The event stream: headers, framing, and each event against its schema.
    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=TIMEOUT) as s:
        s.sendall(f"GET /api/sessions/{sid}/events HTTP/1.1\r\nHost: {u.netloc}\r\nX-API-Key: {key}\r\n"
                  f"Last-Event-ID: 0\r\n\r\n".encode())
        data = b""
        # The turn's three tokens, its done, and approve's error: 5 events.
        while data.count(b"\nevent: ") < 5:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                fail(f"the event stream gave {data!r}")
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    head = head.decode().lower()
    for want in ["http/1.1 200", "content-type: text/event-stream", "cache-control: no-cache", "x-accel-buffering: no"]:
        if want not in head:
            fail(f"event stream head lacks {want!r}: {head!r}")
    events = [e for e in body.decode().split("\n\n") if e.strip()]
    for raw in events:
        fields = dict(line.split(": ", 1) for line in raw.split("\n") if not line.startswith(":"))
        event = check(json.loads(fields["data"]), "SSE")
        if fields.get("event") != event["op"] or fields.get("id") != str(event.get("seq")):
            fail(f"SSE framing: {raw!r}")
    print(f"streams: WebSocket and SSE events valid against /asyncapi.json ({', '.join(f'{k} {v}' for k, v in sorted(checked.items()))}); "
          f"resync, key subprotocol, 4001; upgrade refusals {sorted(set(statuses))} + 405 valid against /openapi.json")


# ------------------------------------------------------------------ metrics

PROCESS_TYPES = {"process_cpu_seconds_total": "counter"}


def metrics_table(doc):
    """[(name, type, {label: [values]})] from the table under the Metrics
    heading of the project's own docs (docs/operating.md)."""
    with open(doc) as f:
        md = f.read()
    match = re.search(r"^#+ Metrics\b.*$", md, re.M)
    if not match:
        fail(f"no Metrics heading in {doc}")
    section = md[match.end():]
    lines = section.lstrip("\n").splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            if table:
                break
            continue
        table.append(line)
    text, source = "\n".join(table), doc
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z_]+)`", cells[0])
        labels_text = re.sub(r"\([^)]*\)", "", cells[2])
        if "=" in labels_text:
            labels = {m.group(1): re.findall(r"`([^`]+)`", m.group(2))
                      for m in re.finditer(r"`(\w+)`\s*=\s*((?:`[^`]+`,?\s*)+)", labels_text)}
        else:
            labels = {name: [] for name in re.findall(r"`(\w+)`", labels_text)}
        for name in names:
            kind = cells[1] if cells[1] in ("gauge", "counter", "histogram") else PROCESS_TYPES.get(name, "gauge")
            rows.append((name, kind, labels))
    return rows, source


def metrics(base, key, doc):
    from prometheus_client.parser import text_string_to_metric_families

    # A few turns first (REST, and the stream checks already ran a WebSocket and an SSE one).
    for i in range(3):
        body = json.dumps({"content": f"turn {i} of the metrics check"}).encode()
        status, _, _ = http(base, "POST", "/api/sessions/ops-metrics/chat", key, body)
        if status != 200:
            fail(f"chat: {status}")
    status, headers, body = http(base, "GET", "/metrics", key)
    if status != 200 or not headers.get("content-type", "").startswith("text/plain; version=0.0.4"):
        fail(f"/metrics: {status} {headers.get('content-type')}")
    families = {}
    for fam in text_string_to_metric_families(body.decode()):
        families[fam.name] = fam
    rows, source = metrics_table(doc)
    if len(rows) < 15:
        fail(f"only {len(rows)} metrics read from {source}")
    problems = []
    for name, kind, labels in rows:
        # The parser names a counter's family without `_total`.
        fam = families.get(name) or families.get(name.removesuffix("_total"))
        if fam is None:
            problems.append(f"{name} missing")
            continue
        if fam.type != kind:
            problems.append(f"{name} is a {fam.type}, not a {kind}")
        samples = [s for s in fam.samples if not s.name.endswith(("_bucket", "_sum", "_count", "_created"))] or fam.samples
        for label, values in labels.items():
            seen = {s.labels.get(label) for s in samples}
            if None in seen:
                problems.append(f"{name}: a sample without label {label}")
            missing = set(values) - seen
            if missing:
                problems.append(f"{name}: no sample with {label}={sorted(missing)}")
    if problems:
        fail("metrics: " + "; ".join(problems))
    tokens = families["autopoiesis_tokens"].samples[0].value
    done = [s.value for s in families["autopoiesis_turns"].samples if s.labels.get("outcome") == "done"]
    print(f"metrics: prometheus_client parsed {len(families)} families; all {len(rows)} documented metrics "
          f"(from {source}) present with their types and labels; turns done {int(done[0])}, tokens {int(tokens)}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        fail(__doc__)
    step, base, key, arg = sys.argv[1:]
    {"documents": documents, "streams": streams, "metrics": metrics}[step](base.rstrip("/"), key, arg)
