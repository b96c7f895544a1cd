"""pytest fixtures: a tool log file, and a running worker serving `scripted:agent`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import WorkerProc


@pytest.fixture
def tool_log(tmp_path: Path) -> Path:
    return tmp_path / "tools.jsonl"


@pytest.fixture
def worker(tool_log: Path) -> Iterator[WorkerProc]:
    w = WorkerProc(tool_log=tool_log)
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()
