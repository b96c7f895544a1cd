#!/usr/bin/env python3
"""Runs the runnable examples of README.md and docs/*.md against a live server.

A fenced code block whose info string is `sh runnable` or `python runnable`
is an example that must run as shown. This starts
`target/release/autopoiesis serve --port 0 --in-memory`, waits for its
`listening on` line, replaces the default port 8420 in each example with
the server's, and runs the examples in document order (sh blocks with
`bash -e -o pipefail`, Python blocks with this interpreter) from the
repository's root, each with a timeout. Exits non-zero on the first
example that exits non-zero; prints each example and its output.

First it checks that every relative link of those documents
(`[text](docs/x.md#anchor)`) names a file that exists and, for a Markdown
file, a heading that it has.

    tests/readme/run.sh            # builds, installs what the examples import, runs this
"""

import glob
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "autopoiesis")
FENCE = re.compile(r"^```(\w+) runnable\s*\n(.*?)^```\s*$", re.M | re.S)
TIMEOUT = 120


def examples():
    """[(file, line, language, code)] in document order, README first."""
    found = []
    for path in ["README.md"] + sorted(glob.glob("docs/*.md")):
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append((path, line, m.group(1), m.group(2)))
    return found


def heading_anchors(text):
    """GitHub's anchors for the headings of a Markdown text."""
    anchors = set()
    for m in re.finditer(r"^#+ (.*)$", text, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def check_links():
    """Every relative link resolves: the file exists, the anchor is a heading."""
    bad, n = [], 0
    for path in ["README.md"] + sorted(glob.glob("docs/*.md")):
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            link = m.group(1)
            if re.match(r"^[a-z]+:", link):
                continue
            n += 1
            file, _, anchor = link.partition("#")
            target = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), file)) if file else os.path.join(ROOT, path)
            if not os.path.exists(target):
                bad.append(f"{path}: {link} (no such file)")
            elif anchor and target.endswith(".md"):
                with open(target) as f:
                    if anchor not in heading_anchors(f.read()):
                        bad.append(f"{path}: {link} (no such heading)")
    if bad:
        sys.exit("broken links:\n  " + "\n  ".join(bad))
    print(f"links: all {n} relative links of README.md and docs/ resolve")


def start_server():
    proc = subprocess.Popen([BIN, "serve", "--port", "0", "--in-memory"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # the server prints this once it listens
    m = re.match(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"the server did not start: {line!r}")
    return proc, m.group(1)


def main():
    check_links()
    found = examples()
    readme = [e for e in found if e[0] == "README.md"]
    if len(readme) < 4:
        sys.exit(f"only {len(readme)} runnable examples in README.md: is the `runnable` tag still there?")
    server, port = start_server()
    try:
        for path, line, lang, code in found:
            code = code.replace("8420", port)
            if lang == "sh":
                cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
            elif lang == "python":
                cmd = [sys.executable, "-c", code]
            else:
                sys.exit(f"{path}:{line}: no runner for `{lang} runnable`")
            print(f"== {path}:{line} ({lang})")
            print("   " + code.rstrip().replace("\n", "\n   "))
            started = time.monotonic()
            try:
                r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                sys.exit(f"FAILED {path}:{line}: still running after {TIMEOUT} s")
            out = (r.stdout + r.stderr).rstrip()
            if out:
                shown = out if len(out) < 2000 else out[:2000] + " …"
                print("   -> " + shown.replace("\n", "\n      "))
            if r.returncode != 0:
                sys.exit(f"FAILED {path}:{line}: exit status {r.returncode}")
            if server.poll() is not None:
                sys.exit(f"FAILED {path}:{line}: the server exited")
            print(f"   ok ({time.monotonic() - started:.1f} s)")
        print(f"readme examples: all {len(found)} runnable examples passed")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
