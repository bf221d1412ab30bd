"""Several "machines" on this one: each its own HOME, TMPDIR, XDG folders, CLAUDE_CONFIG_DIR and
workspace path (so its own mapping file, durable copy, transcripts and session locks), sharing
only a store. Every claude call is a real process of the fake CLI.

A machine's commands run the ``claude-persist`` program inside the test's process, one at a
time, with the machine's whole environment and workspace swapped in for the call (the tests'
in-process runner): a process of its own would add only its start-up, and, with an s3:// store,
boto3's import. What needs real processes (two machines at once, a holder that lives while
another machine runs, ``kill -9``) takes :meth:`Machine.start`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_persist import transcripts
from claude_persist.testing import FAKE_CLAUDE_CMD

from ..conftest import InProcessRunner, _run_claude_persist

CP = [sys.executable, "-m", "claude_persist.cli"]


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class Machine:
    name: str
    root: Path
    workspace: Path
    env: dict[str, str]

    @property
    def config(self) -> Path:
        return Path(self.env["CLAUDE_CONFIG_DIR"])

    def run(self, *args: str, timeout: float = 120, stdin: str | None = None,
            env: Mapping[str, str] | None = None) -> Ran:
        """The command, run in this process as the machine (see the module's docstring), with
        ``env`` added to the machine's environment for this call."""
        runner = InProcessRunner("claude-persist", CP, self.workspace,
                                 entry=_run_claude_persist, whole_env=True)
        done = runner(*args, input=stdin, env={**self.env, **(env or {})}, cwd=self.workspace,
                      timeout=timeout)
        return Ran(done.code, done.out, done.err)

    def process(self, *args: str, timeout: float = 120) -> Ran:
        """The command as a real process of its own."""
        done = subprocess.run([*CP, *args], cwd=self.workspace, env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return Ran(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """A command left running as a real process (its own process group, to be killed
        whole), with ``env`` added to the machine's environment."""
        return subprocess.Popen([*CP, *args], cwd=self.workspace, env={**self.env, **(env or {})},
                                text=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)

    def transcript(self, session_id: str) -> Path:
        return transcripts.transcript_path(session_id, self.workspace, self.env)


def make_machine(root: Path, name: str, store: str | None, workspace_name: str = "repo",
                 **extra: str) -> Machine:
    base = root / name
    home, temp, workspace = base / "home", base / "tmp", base / "work" / workspace_name
    for folder in (home, temp, workspace):
        folder.mkdir(parents=True)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("INVOKE_CLAUDE_PERSIST_", "FAKE_CLAUDE_", "CLAUDE_"))}
    env.update({
        "HOME": str(home), "TMPDIR": str(temp),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"), "CLAUDE_CMD": FAKE_CLAUDE_CMD,
        "FAKE_CLAUDE_HOME": str(base / "fake-home"),
    })
    if store is not None:
        env["CLAUDE_PERSIST_STORE"] = store
    env.update(extra)
    return Machine(name, base, workspace, env)


def user_prompts(path: Path) -> list[str]:
    """The user turns of a transcript, in order."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record: dict[str, Any] = json.loads(line)
        if record.get("type") == "user":
            content = record["message"]["content"]
            found.append(content if isinstance(content, str) else json.dumps(content))
    return found


def replies(path: Path) -> list[str]:
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record: dict[str, Any] = json.loads(line)
        if record.get("type") == "assistant":
            found.append(" ".join(b.get("text", "") for b in record["message"]["content"]))
    return found
