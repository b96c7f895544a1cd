#!/usr/bin/env python3
"""An exec agent that asks a person to approve its tool calls (for
tests/browser/chat_page.py).

Reads one JSON line `{"session_id","prompt","history",["approvals"]}` on
stdin and prints JSON event lines. A prompt with "delete" ends the turn with
`approval_required`: one `delete_file` call (`c1`, path notes.txt); with
"two" as well, two calls (`c1` a.txt, `c2` b.txt); with "hostile", one call
whose name and arguments are HTML that must stay text. A resumed turn
(`prompt` null, `approvals` given) reports a `tool_result` per decision
(`success` or `denied`) and says what it did, e.g. "Deleted notes.txt.".
Anything else is echoed.
"""

import json
import sys

req = json.loads(sys.stdin.readline())


def out(op, **data):
    print(json.dumps({"op": op, "data": data}), flush=True)


def call(cid, path, name="delete_file"):
    return {"tool_call_id": cid, "name": name, "args": {"path": path}}


approvals = req.get("approvals")
prompt = req.get("prompt")
if approvals is not None:
    # The history ends with the response holding the calls.
    parts = req["history"][-1]["parts"]
    args = {p["tool_call_id"]: p.get("args") for p in parts if p.get("part_kind") == "tool-call"}
    said = []
    for cid, decision in sorted(approvals.items()):
        a = args.get(cid)
        if isinstance(a, str):
            a = json.loads(a)
        path = (a or {}).get("path", "?")
        ok = decision is True or (isinstance(decision, dict) and decision.get("approved") is True)
        out("tool_result", tool_call_id=cid, name="delete_file", status="success" if ok else "denied",
            details=("deleted " if ok else "kept ") + path)
        said.append(f"Deleted {path}." if ok else f"Kept {path} (denied).")
    text = " ".join(said)
    out("token", content=text)
    out("done", content=text)
elif isinstance(prompt, str) and "delete" in prompt:
    if "hostile" in prompt:
        calls = [call("c1", "<img src=x onerror=window.__pwned=1>", name="<script>window.__pwned=2</script>")]
    elif "two" in prompt:
        calls = [call("c1", "a.txt"), call("c2", "b.txt")]
    else:
        calls = [call("c1", "notes.txt")]
    out("token", content="I need your approval first.")
    out("approval_required", tool_calls=calls)
else:
    out("token", content=str(prompt))
    out("done", content=str(prompt))
