"""A pytest fixture that runs the fake claude CLI as a real subprocess.

Enable it in a ``conftest.py`` with ``pytest_plugins = ["claude_persist.testing.pytest_plugin"]``,
then take ``fake_claude`` in a test: it isolates the fake's sessions and log in ``tmp_path``,
sets ``CLAUDE_CMD`` for the test, and reads back what each call saw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import FAKE_CLAUDE_CMD


@dataclass
class FakeClaude:
    """The fake CLI as one test sees it."""

    cmd: str
    home: Path
    log_file: Path
    env: dict[str, str]

    def calls(self) -> list[dict[str, Any]]:
        """One record per finished call, its start and end fields merged, in order of ending."""
        starts: dict[int, dict[str, Any]] = {}
        merged = []
        for record in self.records():
            if record["event"] == "start":
                starts[record["pid"]] = record
            else:
                start = starts.get(record["pid"], {})
                merged.append({**start, **record, "started": start.get("time"),
                               "ended": record["time"]})
        return merged

    def records(self) -> list[dict[str, Any]]:
        """Every start and end record the fake logged."""
        if not self.log_file.exists():
            return []
        lines = self.log_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def transcript(self, session_id: str) -> dict[str, Any]:
        """The fake's stored session (its turns), to check what a call left behind."""
        data: dict[str, Any] = json.loads((self.home / "sessions" / f"{session_id}.json")
                                          .read_text(encoding="utf-8"))
        return data


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClaude]:
    """Isolated fake claude: ``CLAUDE_CMD`` points at it for the duration of the test."""
    home = tmp_path / "fake-claude-home"
    log_file = tmp_path / "fake-claude.log"
    env = {"CLAUDE_CMD": FAKE_CLAUDE_CMD, "FAKE_CLAUDE_HOME": str(home),
           "FAKE_CLAUDE_LOG": str(log_file)}
    for key in [k for k in os.environ if k.startswith("FAKE_CLAUDE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield FakeClaude(cmd=FAKE_CLAUDE_CMD, home=home, log_file=log_file, env=env)
