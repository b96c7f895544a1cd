#!/usr/bin/env python3
"""Three instances of autopoiesis behind nginx, sharded by session id.

Run by tests/scale/run.sh (which builds the release binary and installs
nginx). The nginx configuration is deploy/nginx/autopoiesis.conf itself,
with its ports rewritten to the ones this run picked. Every wait is on an
event (a line printed, a port that answers, a frame), bounded by TIMEOUT.
No third-party Python packages: a minimal WebSocket client is below.
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "autopoiesis")
CONF = os.path.join(ROOT, "deploy", "nginx", "autopoiesis.conf")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TIMEOUT = 20.0

passed = 0


def check(cond, what):
    global passed
    if not cond:
        raise AssertionError(what)
    passed += 1
    print("  ok  " + what, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- HTTP


def request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    data = None if body is None else json.dumps(body).encode()
    c.request(method, path, body=data, headers=headers or {})
    r = c.getresponse()
    raw = r.read()
    c.close()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw
    return r.status, parsed


def wait_http(port, path="/api/health"):
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            status, _ = request(port, "GET", path)
            if status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("port %d never answered %s" % (port, path))
        time.sleep(0.02)


# ---------------------------------------------------------------- WebSocket


class Ws:
    """Just enough RFC 6455 for a test client: text frames, close codes."""

    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n" % (path, port, key)
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("connection closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ")[1])

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read(8), "big")
        return b0 & 0x0F, self._read(n)

    def send(self, obj):
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        else:
            header += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def json(self):
        """The next text frame as JSON (pings skipped)."""
        while True:
            op, data = self.frame()
            if op == 1:
                return json.loads(data)
            if op == 8:
                raise AssertionError("closed: %r" % data)

    def until_done(self):
        frames = []
        while True:
            f = self.json()
            frames.append(f)
            if f["op"] == "done":
                return frames

    def close_code(self):
        while True:
            op, data = self.frame()
            if op == 8:
                return int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- SSE


class Sse:
    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path).encode())
        self.file = self.sock.makefile("rb")
        status_line = self.file.readline()
        self.status = int(status_line.split(b" ")[1])
        while self.file.readline() not in (b"\r\n", b""):
            pass

    def event(self):
        fields = {}
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError
            line = line.rstrip(b"\n").decode()
            if not line:
                if "data" in fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            k, _, v = line.partition(": ")
            fields[k] = v


# ---------------------------------------------------------------- the cluster


class Instance:
    def __init__(self, name, root):
        self.name = name
        self.data = os.path.join(root, name)
        self.port = free_port()
        self.proc = None

    def start(self, extra=()):
        self.proc = subprocess.Popen(
            [BIN, "serve", "--port", str(self.port), "--data-dir", self.data,
             "--id-from-header", "X-Request-Id", "--trusted-proxy", "127.0.0.1",
             "--echo-delay-ms", "30"] + list(extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("AUTOPOIESIS_")},
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise AssertionError("%s did not start: %r" % (self.name, line))

    def ids(self):
        status, sessions = request(self.port, "GET", "/api/sessions")
        assert status == 200
        return {s["id"] for s in sessions}


def worker_pids(master):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)],
                         capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def nginx_config(proxy_port, instances, prefix):
    conf = open(CONF).read()
    # The deploy file's three servers and its listen port, rewritten.
    servers = "".join(
        "    server 127.0.0.1:%d max_fails=0;\n" % i.port for i in instances
    )
    conf, n = re.subn(r"(    server 127\.0\.0\.1:\d+ max_fails=0;\n)+", servers, conf)
    assert n == 1, "the upstream block of the deploy file changed shape"
    conf = conf.replace("listen 127.0.0.1:8420;", "listen 127.0.0.1:%d;" % proxy_port)
    with open(os.path.join(prefix, "autopoiesis.conf"), "w") as f:
        f.write(conf)
    main = """
daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    include {p}/autopoiesis.conf;
}}
""".format(p=prefix)
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(main)
    return path


def main():
    root = tempfile.mkdtemp(prefix="autopoiesis-scale-")
    instances = [Instance("i%d" % n, root) for n in range(3)]
    nginx = None
    try:
        for i in instances:
            i.start()
        proxy = free_port()
        conf = nginx_config(proxy, instances, root)
        nginx = subprocess.Popen([NGINX, "-p", root + "/", "-c", conf, "-e", "stderr"])
        wait_http(proxy)
        print("three instances on %s behind nginx on %d" % ([i.port for i in instances], proxy))

        print("sessions spread, each on exactly one instance")
        created = set()
        statuses = set()
        for _ in range(30):
            status, info = request(proxy, "POST", "/api/sessions")
            statuses.add(status)
            created.add(info["id"])
        check(statuses == {201}, "30 x POST /api/sessions through the proxy: 201")
        homes = {i.name: i.ids() for i in instances}
        check(all(homes[i.name] for i in instances), "every instance holds some of the 30 sessions: %s"
              % {k: len(v) for k, v in homes.items()})
        union = set().union(*homes.values())
        check(union == created, "the instances hold exactly the sessions created")
        check(sum(len(v) for v in homes.values()) == len(created), "no session is on two instances")
        home_of = {sid: i for i in instances for sid in homes[i.name]}

        print("every route of a session, through the proxy")
        sid = sorted(created)[0]
        status, body = request(proxy, "POST", "/api/sessions/%s/chat" % sid, {"content": "hello big world"})
        check((status, body) == (200, {"session_id": sid, "content": "hello big world"}),
              "routed chat reaches the session's instance")
        status, hist = request(proxy, "GET", "/api/sessions/%s/history" % sid)
        check(status == 200 and len(hist["messages"]) == 2, "history through the proxy")
        check(len(home_of[sid].ids() & {sid}) == 1, "the chat ran on the session's home instance")
        status, body = request(proxy, "POST", "/api/chat", {"content": "new one"})
        check(status == 200, "POST /api/chat without an id creates a session through the proxy")
        new_id = body["session_id"]
        status, _ = request(proxy, "GET", "/api/sessions/%s/history" % new_id)
        check(status == 200, "...and the session it created is found through the proxy")
        check(sum(new_id in i.ids() for i in instances) == 1, "...on exactly one instance")
        status, _ = request(proxy, "GET", "/api/sessions/%s/history" % sid,
                            headers={"Origin": "http://127.0.0.1:%d" % proxy})
        check(status == 200, "a browser on the proxy's origin passes the Origin check (Host kept)")
        status, _ = request(proxy, "GET", "/api/sessions/%s/history" % sid,
                            headers={"Origin": "http://evil.example"})
        check(status == 403, "a cross-site origin is still refused")
        wrong = [i for i in instances if i is not home_of[sid]][0]
        status, body = request(wrong.port, "POST", "/api/chat", {"content": "x", "session_id": sid})
        check(status == 421, "a body session id on the wrong instance is 421, not a fork (%s %s)" % (status, body))
        ws = Ws(proxy, "/api/ws/%s" % sid)
        check(ws.status == 101, "WebSocket upgrade through the proxy")
        ws.send({"op": "message", "data": {"content": "over ws"}})
        frames = ws.until_done()
        check(frames[-1]["data"]["content"] == "over ws", "a WebSocket turn through the proxy")
        ws.close()

        print("three WebSocket clients of one session see the same stream")
        clients = [Ws(proxy, "/api/ws/%s" % sid) for _ in range(3)]
        chat = socket.create_connection(("127.0.0.1", proxy), timeout=TIMEOUT)
        body = json.dumps({"content": "one two three four five"}).encode()
        chat.sendall(b"POST /api/sessions/%s/chat HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                     % (sid.encode(), len(body), body))
        streams = [c.until_done() for c in clients]
        check(streams[0] == streams[1] == streams[2], "the three clients got identical frames")
        seqs = [f["seq"] for f in streams[0]]
        check(seqs == list(range(seqs[0], seqs[0] + len(seqs))), "with consecutive seq %s" % seqs)
        chat.recv(4096)
        chat.close()

        print("SSE through the proxy is live, not buffered")
        sse = Sse(proxy, "/api/sessions/%s/events" % sid)
        check(sse.status == 200, "event stream through the proxy")
        words = " ".join("w%d" % n for n in range(40))  # 40 tokens, 30 ms apart
        chat = socket.create_connection(("127.0.0.1", proxy), timeout=TIMEOUT)
        body = json.dumps({"content": words}).encode()
        chat.sendall(b"POST /api/sessions/%s/chat HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                     % (sid.encode(), len(body), body))
        first = sse.event()
        chat.setblocking(False)
        try:
            early = chat.recv(1) == b""
        except BlockingIOError:
            early = True  # the chat's answer has not come: the turn still runs
        check(first["event"] == "token" and early, "the first token arrived while the turn was running")
        events = [first]
        while events[-1]["event"] != "done":
            events.append(sse.event())
        check(len(events) == 41, "all 40 tokens and the done")
        chat.close()
        sse.sock.close()

        print("kill -9 of one instance")
        victim = home_of[sid]
        others = [i for i in instances if i is not victim]
        last_seq = json.loads(events[-1]["data"])["seq"]
        status, before = request(proxy, "GET", "/api/sessions/%s/history" % sid)
        resume_from = last_seq
        victim.proc.kill()
        victim.proc.wait()
        for o in others:
            other_sid = sorted(homes[o.name])[0]
            status, _ = request(proxy, "POST", "/api/sessions/%s/chat" % other_sid, {"content": "still here"})
            check(status == 200, "%s's sessions keep working" % o.name)
        status, _ = request(proxy, "GET", "/api/sessions/%s/history" % sid)
        check(status == 502, "the dead instance's session answers 502")
        status, _ = request(proxy, "POST", "/api/sessions/%s/chat" % sid, {"content": "fork?"})
        check(status == 502, "a chat to it is 502 too")
        dead_ws = Ws(proxy, "/api/ws/%s" % sid)
        check(dead_ws.status == 502, "and its WebSocket")
        dead_ws.close()
        check(all(sid not in o.ids() for o in others), "it was not re-created on another instance")

        print("restart on the same data directory")
        victim.start()
        wait_http(victim.port)
        status, after = request(proxy, "GET", "/api/sessions/%s/history" % sid)
        check(status == 200 and after == before, "its sessions are back whole")
        ws = Ws(proxy, "/api/ws/%s?since=%d" % (sid, resume_from))
        ws.send({"op": "message", "data": {"content": "after restart"}})
        frames = ws.until_done()
        # After a crash the numbering resumes above every seq that may have
        # gone out, and the events in between are gone: resync first.
        check(frames[0] == {"op": "resync", "data": {"since": resume_from}},
              "a client resuming with ?since= after the crash is told to resync")
        seqs = [f["seq"] for f in frames[1:]]
        check(min(seqs) > resume_from, "and gets no duplicate (seq %d.. > %d)"
              % (min(seqs), resume_from))
        check(frames[-1]["data"]["content"] == "after restart", "and the new turn")

        print("SIGTERM closes its WebSocket clients with 1001")
        victim.proc.send_signal(signal.SIGTERM)
        code = ws.close_code()
        check(code == 1001, "close code %d" % code)
        check(victim.proc.wait(timeout=TIMEOUT) == 0, "and it exits 0")

        print("adding a fourth instance (docs/scaling.md)")
        # What every session holds now, read through the proxy (the victim
        # is stopped: start it again first).
        victim.start()
        wait_http(victim.port)
        everything = set().union(*(i.ids() for i in instances))
        histories = {}
        for s_id in everything:
            status, h = request(proxy, "GET", "/api/sessions/%s/history" % s_id)
            assert status == 200, (s_id, status)
            histories[s_id] = h
        # 1. Stop every instance (SIGTERM: turns drain, clients get 1001).
        for i in instances:
            i.proc.send_signal(signal.SIGTERM)
            check(i.proc.wait(timeout=TIMEOUT) == 0, "%s stopped cleanly" % i.name)
        # 2. The new instance starts from all their journals, one after the
        #    other (records of distinct sessions; framing survives `cat`).
        fourth = Instance("i3", root)
        os.makedirs(fourth.data, mode=0o700)
        with open(os.path.join(fourth.data, "journal"), "wb") as out:
            for i in instances:
                with open(os.path.join(i.data, "journal"), "rb") as f:
                    shutil.copyfileobj(f, out)
        # 3. Start all four; nginx learns of the fourth and reloads.
        for i in instances + [fourth]:
            i.start()
        instances.append(fourth)
        nginx_config(proxy, instances, root)
        old_workers = worker_pids(nginx.pid)
        subprocess.run([NGINX, "-p", root + "/", "-c", conf, "-e", "stderr", "-s", "reload"],
                       check=True)
        fourth_addr = "127.0.0.1:%d" % fourth.port
        deadline = time.monotonic() + TIMEOUT
        while True:  # until the old workers (the old upstream list) are gone
            workers = worker_pids(nginx.pid)
            if workers and not workers & old_workers:
                break
            assert time.monotonic() < deadline, "nginx's old workers never exited"
            time.sleep(0.02)
        while True:  # and the new ones route to the fourth
            c = http.client.HTTPConnection("127.0.0.1", proxy, timeout=TIMEOUT)
            c.request("GET", "/api/health")
            r = c.getresponse()
            r.read()
            c.close()
            if r.getheader("X-Autopoiesis-Instance") == fourth_addr:
                break
            assert time.monotonic() < deadline, "nginx never routed to the fourth instance"
        # 4. Remove the copies nobody can reach.
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "deploy", "nginx", "dedupe.py"),
             "http://127.0.0.1:%d" % proxy] + ["127.0.0.1:%d" % i.port for i in instances],
            check=True, capture_output=True, text=True).stdout
        print("    " + out.strip().splitlines()[-1])
        homes = {i.name: i.ids() for i in instances}
        check(set().union(*homes.values()) == everything, "every session is still held")
        dups = {x for x in everything if sum(x in v for v in homes.values()) > 1}
        where = [(x, [n for n, v in homes.items() if x in v]) for x in dups]
        check(not dups, "each on exactly one instance %s" % ((where, out) if dups else "",))
        moved = len(homes["i3"])
        check(0 < moved < len(everything), "%d of %d sessions moved to the new instance"
              % (moved, len(everything)))
        same = all(request(proxy, "GET", "/api/sessions/%s/history" % s_id) == (200, histories[s_id])
                   for s_id in everything)
        check(same, "every history reads the same through the proxy")
        moved_id = sorted(homes["i3"])[0]
        status, _ = request(proxy, "POST", "/api/sessions/%s/chat" % moved_id, {"content": "moved"})
        status2, h = request(proxy, "GET", "/api/sessions/%s/history" % moved_id)
        check(status == 200 and len(h["messages"]) == len(histories[moved_id]["messages"]) + 2,
              "a moved session goes on on its new instance")
        print("scale-out: %d checks passed" % passed)
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait()
        for i in instances:
            if i.proc and i.proc.poll() is None:
                i.proc.kill()
                i.proc.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED: %s" % e, flush=True)
        sys.exit(1)
