"""A pytest fixture that runs the fake claude CLI as a real subprocess.

Enable it in a ``conftest.py`` with ``pytest_plugins = ["claude_persist.testing.pytest_plugin"]``,
then take ``fake_claude`` in a test: it isolates the fake's sessions and log in ``tmp_path`` (its
transcripts go where the real CLI's would, under ``CLAUDE_CONFIG_DIR``, which it points into
``tmp_path``), sets ``CLAUDE_CMD`` for the test, and reads back what each call saw.
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
    config_dir: Path
    """The CLI's config folder for the test (``CLAUDE_CONFIG_DIR``): transcripts live below."""

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
        """Every start and end record the fake logged. A test that polls this while calls run
        may read the log as a fake appends to it: a last record without its newline yet is
        still being written, and is left for the next read (parsing it, or decoding a
        character cut in two, would fail the test)."""
        try:
            data = self.log_file.read_bytes()
        except FileNotFoundError:
            return []
        lines = data[:data.rfind(b"\n") + 1].decode("utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def transcript_path(self, session_id: str) -> Path:
        """Where the session's transcript is (in any project folder, as the CLI finds it)."""
        found = next((self.config_dir / "projects").glob(f"*/{session_id}.jsonl"), None)
        if found is None:
            raise FileNotFoundError(f"no transcript of session {session_id} under "
                                    f"{self.config_dir}")
        return found

    def transcript(self, session_id: str) -> dict[str, Any]:
        """The session as the fake reads its transcript back (``turns``: each user and
        assistant line's role and text; ``name``, ``model``, ``cwd``, ``total_cost_usd``), to
        check what a call left behind."""
        from .fake_claude import read_session

        return read_session(self.transcript_path(session_id))


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClaude]:
    """Isolated fake claude: ``CLAUDE_CMD`` points at it for the duration of the test."""
    home = tmp_path / "fake-claude-home"
    log_file = tmp_path / "fake-claude.log"
    config_dir = tmp_path / "claude-config"
    env = {"CLAUDE_CMD": FAKE_CLAUDE_CMD, "FAKE_CLAUDE_HOME": str(home),
           "FAKE_CLAUDE_LOG": str(log_file), "CLAUDE_CONFIG_DIR": str(config_dir)}
    for key in [k for k in os.environ if k.startswith("FAKE_CLAUDE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield FakeClaude(cmd=FAKE_CLAUDE_CMD, home=home, log_file=log_file, env=env,
                     config_dir=config_dir)
