"""Command line: `python -m autopoiesis_worker [--exec] MODULE:ATTR`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .serve import LineWriter, LoadError, Worker, exec_turn, load_agent, protocol_stdout

DESCRIPTION = """\
Serve a pydantic-ai Agent to `autopoiesis serve`.

  python -m autopoiesis_worker MODULE:ATTR          worker (--agent worker)
  python -m autopoiesis_worker --exec MODULE:ATTR   one turn (--agent exec)

MODULE is imported with the current directory on sys.path; ATTR names the
Agent in it (e.g. examples.pydantic_ai_agent:agent).

worker: stdin lines {"type":"turn","turn":T,"session_id","prompt","history",
"approvals"?} and {"type":"cancel","turn":T}; each turn runs as an asyncio
task and writes stdout lines {"turn":T,"op":...,"data":...}.
exec: stdin is one request {"session_id","prompt","history","approvals"?};
stdout gets the turn's events {"op":...,"data":...}, one per line.

Events: token, thinking, thinking_done, tool_call, tool_result, then one of
done {"content","messages"}, approval_required {"tool_calls","messages"} or
error {"message"}. A turn resumed after approvals has "prompt": null and
"approvals": {tool_call_id: true | false | {"approved", "message"?,
"override_args"?}}.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autopoiesis_worker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("agent", metavar="MODULE:ATTR", help="the pydantic-ai Agent to serve")
    parser.add_argument("--exec", action="store_true", help="run one turn (exec agent) instead of a worker")
    args = parser.parse_args(argv)
    # Stdout is the protocol's from here on: whatever the agent's module
    # prints as it is imported goes to stderr (the server's log) instead.
    writer = LineWriter(protocol_stdout())
    try:
        agent = load_agent(args.agent)
    except LoadError as e:
        print(f"autopoiesis_worker: {e}", file=sys.stderr)
        return 2
    if args.exec:
        return asyncio.run(exec_turn(agent, sys.stdin.buffer, writer))
    asyncio.run(Worker(agent, writer).serve(sys.stdin.buffer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
