#!/usr/bin/env python3
import json, os, subprocess, sys, threading, time
LOG = os.environ["WORKER_LOG"]
pid = os.getpid()
out_lock = threading.Lock()
log_lock = threading.Lock()
cond = threading.Condition()
state = {"inflight": 0, "peak": 0, "sessions": {}}
cancelled = set()

def log(text):
    with log_lock:
        with open(LOG, "a") as f:
            f.write("%d %s\n" % (pid, text))

def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

def token(t, text):
    emit({"turn": t, "op": "token", "data": {"content": text}})

def until(pred, timeout):
    with cond:
        return cond.wait_for(pred, timeout)

def handle(t, words, per):
    cmd = words[0] if words else ""
    if cmd == "wait":
        n = int(words[1])
        ok = until(lambda: state["peak"] >= n or t in cancelled, 20)
        return "together=%s" % ok
    if cmd == "gate":
        deadline = time.time() + 30
        while not os.path.exists(words[1]) and t not in cancelled and time.time() < deadline:
            time.sleep(0.01)
        return "peak=%d" % state["peak"]
    if cmd == "hang":
        until(lambda: t in cancelled, 60)
        token(t, "late")
        emit({"turn": t, "op": "done", "data": {"content": "too late"}})
        return None
    if cmd == "crash":
        sys.stderr.write("dying on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    if cmd == "garbage":
        sys.stderr.write("about to misbehave\n")
        sys.stderr.flush()
        with out_lock:
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
        until(lambda: False, 60)
        return None
    if cmd == "stray":
        token(999999, "not mine")
        token(t - 1, "ended long ago")
    if cmd == "flood":
        chunk = "x" * int(words[2])
        for _ in range(int(words[1])):
            token(t, chunk)
        return "flooded"
    for w in words:
        token(t, w.upper() + " ")
    return ""

def run(msg):
    t, sid = msg["turn"], msg["session_id"]
    with cond:
        state["inflight"] += 1
        state["peak"] = max(state["peak"], state["inflight"])
        per = state["sessions"].get(sid, 0) + 1
        state["sessions"][sid] = per
        now = state["inflight"]
        cond.notify_all()
    log("start %d %s inflight=%d history=%d" % (t, sid, now, len(msg["history"])))
    try:
        reply = handle(t, msg["prompt"].split(), per)
    finally:
        with cond:
            state["inflight"] -= 1
            state["sessions"][sid] -= 1
            cond.notify_all()
    if reply is not None:
        emit({"turn": t, "op": "done", "data": {"content": "pid=%d per=%d %s" % (pid, per, reply)}})

log("up pgid=%d" % os.getpgrp())
if os.environ.get("GRANDCHILD"):
    kid = subprocess.Popen(["sleep", "1000"])
    log("grandchild %d" % kid.pid)
for line in sys.stdin:
    msg = json.loads(line)
    log("got " + line.strip())
    if msg["type"] == "turn":
        threading.Thread(target=run, args=(msg,), daemon=True).start()
    elif msg["type"] == "cancel":
        with cond:
            cancelled.add(msg["turn"])
            cond.notify_all()
log("eof")
if os.environ.get("STUBBORN"):
    while True:
        time.sleep(1)
os._exit(0)
