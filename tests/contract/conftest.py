"""The genuine ``claude`` binary, pinned, installed with npm into ``.cache/`` and run offline.

Every test here is marked ``contract``. The binary talks only to a fake Messages API on
127.0.0.1 (``fake_api.py``) and keeps its sessions in the test's own ``HOME``. Without ``npm`` the
suite is skipped, and says so loudly at the end of the run; any other install problem fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from claude_persist.fsio import Lock

from ..conftest import REPO, Ran, Runner, read_mapping
from .fake_api import FakeMessagesAPI, serve

CLAUDE_CODE_VERSION = "2.1.332"
"""The one pinned version of ``@anthropic-ai/claude-code`` this suite proves our code against."""

VERSION_VARIABLE = "CLAUDE_PERSIST_CONTRACT_VERSION"
VERSION_UNDER_TEST = (os.environ.get(VERSION_VARIABLE, "").strip()
                      or CLAUDE_CODE_VERSION)
"""The version this run installs and checks: the pinned one, unless ``VERSION_VARIABLE`` names
another (to try a new release, or an older one a user still runs, without editing the pin)."""

PACKAGE = "@anthropic-ai/claude-code"
CACHE = REPO / ".cache" / "claude-code"
MODEL = "claude-opus-4-7"
"""A model the CLI sends every ``output_config.effort`` level for (claude-haiku-4-5 gets none,
claude-sonnet-4-6 gets ``high`` for ``xhigh``)."""

_skipped_for_npm: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if VERSION_UNDER_TEST != CLAUDE_CODE_VERSION:
        terminalreporter.write_line(
            f"contract suite: claude {VERSION_UNDER_TEST} from {VERSION_VARIABLE}, not the "
            f"pinned {CLAUDE_CODE_VERSION}", yellow=True, bold=True)
    if _skipped_for_npm:
        terminalreporter.write_sep("!", "CONTRACT SUITE SKIPPED", red=True, bold=True)
        terminalreporter.write_line(_skipped_for_npm[0], red=True, bold=True)


def _installed_binary(folder: Path) -> Path | None:
    """The package's binary in ``folder`` if it runs and reports the pinned version."""
    package = folder / "node_modules" / PACKAGE
    binary = package / "bin" / "claude.exe"
    if not binary.is_file():
        return None
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
    if "native binary not installed" in version.stdout + version.stderr:
        # npm skipped the postinstall that puts the native binary in place.
        subprocess.run(["node", "install.cjs"], cwd=package, check=True, timeout=600)
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                 timeout=60, stdin=subprocess.DEVNULL)
    if version.returncode == 0 and version.stdout.strip().startswith(VERSION_UNDER_TEST):
        return binary
    return None


@pytest.fixture(scope="session")
def claude_binary() -> Path:
    """The pinned real CLI, installed once into ``.cache/claude-code/<version>`` and reused."""
    npm = shutil.which("npm")
    if npm is None:
        message = (f"npm is not on PATH, so the genuine claude CLI {VERSION_UNDER_TEST} cannot "
                   "be installed: the contract suite did NOT run. Install Node.js and npm.")
        _skipped_for_npm.append(message)
        print(f"\n{message}", file=sys.stderr)
        pytest.skip(message)
    if not re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?", VERSION_UNDER_TEST):
        pytest.fail(f"{VERSION_VARIABLE}={VERSION_UNDER_TEST!r} is not a version of "
                    f"{PACKAGE}; give one like {CLAUDE_CODE_VERSION}, or unset it to use the "
                    "pinned one.")
    folder = CACHE / VERSION_UNDER_TEST
    folder.mkdir(parents=True, exist_ok=True)
    with Lock(CACHE / f"{VERSION_UNDER_TEST}.lock").acquire(timeout=900):
        binary = _installed_binary(folder)
        if binary is None:
            (folder / "package.json").write_text('{"private": true}\n')
            # Pinned: on Node 20 an unpinned install quietly resolves to 2.1.197.
            subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error",
                            f"{PACKAGE}@{VERSION_UNDER_TEST}"], cwd=folder, check=True,
                           timeout=900)
            binary = _installed_binary(folder)
        assert binary is not None, f"npm installed {PACKAGE}, but it does not report " \
                                   f"{VERSION_UNDER_TEST}"
    return binary


@dataclass
class RealClaude:
    """One test's view of the real CLI: its fake API, its own HOME, and our program to run."""

    binary: Path
    api: FakeMessagesAPI
    home: Path
    workspace: Path
    env: dict[str, str]

    def cp(self, *args: str, input: str | None = None, timeout: float = 60) -> Ran:
        """Run ``claude-persist`` to the end, in the workspace."""
        face = Runner("claude-persist", [sys.executable, "-m", "claude_persist.cli"],
                      self.workspace)
        return face(*args, input=input, env=self.env, timeout=timeout)

    def start(self, *args: str, stdout: int | IO[Any] = subprocess.PIPE
              ) -> subprocess.Popen[str]:
        """Start ``claude-persist`` and return at once."""
        return subprocess.Popen([sys.executable, "-m", "claude_persist.cli", *args],
                                stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.PIPE, text=True, cwd=self.workspace,
                                env=self.env)

    def mapping(self) -> dict[str, Any]:
        return read_mapping(self.workspace)

    def session_id(self, name: str) -> str:
        return str(self.mapping()["aliases"][name]["session_id"])

    def transcript(self, session_id: str) -> Path:
        """Where the CLI keeps a session made in the workspace (the facts page's rule)."""
        folder = "".join(c if c.isalnum() else "-" for c in str(self.workspace))
        return self.home / ".claude" / "projects" / folder / f"{session_id}.jsonl"

    def claude_processes(self) -> list[int]:
        """Pids of live CLI processes started for this test (found by their HOME)."""
        mark = f"HOME={self.home}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                exe = os.readlink(entry / "exe")
            except OSError:
                continue
            if mark in environ and exe == str(self.binary):
                pids.append(int(entry.name))
        return pids

    def wait_for_claude_process(self, timeout: float = 10) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pids = self.claude_processes()
            if pids:
                return pids[0]
            time.sleep(0.02)
        raise AssertionError("no claude process started")


@pytest.fixture
def real(claude_binary: Path, workspace: Path, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[RealClaude]:
    """The real CLI for one test: isolated HOME, a fresh fake API, ``CLAUDE_CMD`` set."""
    home = tmp_path / "home"
    home.mkdir()
    for key in list(os.environ):
        if key.startswith(("ANTHROPIC_", "CLAUDE_", "FAKE_CLAUDE_")):
            monkeypatch.delenv(key)
    with serve(log_file=tmp_path / "api-requests.jsonl") as api:
        isolation = {
            "HOME": str(home),
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "ANTHROPIC_BASE_URL": api.url,
            "ANTHROPIC_API_KEY": "contract-test-key",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "CLAUDE_CMD": str(claude_binary),
        }
        for key, value in isolation.items():
            monkeypatch.setenv(key, value)
        yield RealClaude(binary=claude_binary, api=api, home=home, workspace=workspace,
                         env=dict(os.environ))
