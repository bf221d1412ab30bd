"""Shared fixtures: an isolated temp dir (so the default mapping path is the test's own), the fake
claude CLI as a real subprocess, and runners for both command-line faces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from claude_persist.claude import runner

pytest_plugins = ["claude_persist.testing.pytest_plugin"]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Ran:
    """A finished command: exit code and both streams."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace folder, with TMPDIR pointed into the test so mappings stay private."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    ws = tmp_path / "workspace"
    ws.mkdir()
    for key in [k for k in os.environ if k.startswith("INVOKE_CLAUDE_PERSIST_")]:
        monkeypatch.delenv(key)
    return ws


@dataclass
class Runner:
    """Runs one command-line face as a real process, in the workspace."""

    name: str
    prefix: list[str]
    workspace: Path

    def __call__(self, *args: str, input: str | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 60) -> Ran:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([*self.prefix, *args], input=input, capture_output=True,
                              text=True, cwd=cwd or self.workspace, env=full_env,
                              timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        return Ran(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cp(workspace: Path, fake_claude: Any) -> Runner:
    """Run the ``claude-persist`` program as a real process, in the workspace."""
    return Runner("claude-persist", [sys.executable, "-m", "claude_persist.cli"], workspace)


@pytest.fixture
def inv(workspace: Path, fake_claude: Any) -> Runner:
    """Run ``inv`` against the project's root tasks.py, in the workspace."""
    return Runner("inv", [sys.executable, "-m", "invoke", "--search-root", str(REPO)],
                  workspace)


@pytest.fixture(params=["claude-persist", "inv"])
def face(request: pytest.FixtureRequest, cp: Runner, inv: Runner) -> Runner:
    """Both command-line faces, so each behaviour is checked through each."""
    return cp if request.param == "claude-persist" else inv


def mapping_path(workspace: Path) -> Path:
    from claude_persist.store import default_mapping_file

    return default_mapping_file(workspace)


def read_mapping(workspace: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(mapping_path(workspace).read_text())
    return data


@pytest.fixture
def group_alive() -> Iterator[Callable[[int], bool]]:
    """``alive(pgid)``: the runner's own check, True while a process of that group runs
    (zombies waiting for PID 1 to reap them do not count; ``test_runner`` checks that
    distinction against the kernel's view on its own)."""
    yield runner.group_alive
