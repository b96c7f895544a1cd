"""autopoiesis_worker: serve a pydantic-ai Agent behind `autopoiesis serve`.

`python -m autopoiesis_worker MODULE:ATTR` runs the agent as a long-lived
worker (`--agent worker`), `--exec MODULE:ATTR` as a per-turn program
(`--agent exec`). `turn.run_turn` maps one pydantic-ai run to the server's
events; `serve` holds the two stdin/stdout protocols.
"""

from .serve import LoadError, Worker, exec_turn, load_agent
from .turn import Turn, parse_decision, parse_turn, run_turn

__all__ = ["LoadError", "Turn", "Worker", "exec_turn", "load_agent", "parse_decision", "parse_turn", "run_turn"]
__version__ = "0.1.0"
