"""Portable sessions against the genuine binary: two "machines", each with its own HOME and
config folder, temp folder (so its own mapping file) and workspace path. One path has a space and
a non-ASCII letter, the other is long enough that the CLI shortens its project folder's name.
What the CLI keeps per session, and where, is pinned here; export on one machine and import on
the other must give a session that resumes by name with its whole history, role, model and
effort, and that converges (fast-forward) or refuses when both sides moved on."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from claude_persist import transcripts as tr

from ..conftest import Ran, Runner
from .conftest import MODEL, RealClaude
from .fake_api import Switches

pytestmark = pytest.mark.contract

AGENT_CALL = {"name": "Agent", "input": {"description": "look around", "prompt": "Say hello.",
                                         "subagent_type": "general-purpose"}}


@dataclass
class Machine:
    """A machine of its own: HOME and config folder, temp folder, workspace."""

    home: Path
    workspace: Path
    env: dict[str, str]

    @property
    def config(self) -> Path:
        return self.home / ".claude"

    def cp(self, *args: str) -> Ran:
        face = Runner("claude-persist", [sys.executable, "-m", "claude_persist.cli"],
                      self.workspace)
        return face(*args, env=self.env, timeout=120)

    def ok(self, *args: str) -> Ran:
        ran = self.cp(*args)
        assert ran.code == 0, f"{args}: {ran.err}"
        return ran

    def session_id(self, name: str) -> str:
        return str(json.loads(self.ok("resolve", "-n", name, "--json").out)["session_id"])

    def transcript(self, sid: str, cwd: Path | None = None) -> Path:
        return tr.transcript_path(sid, cwd or self.workspace, self.env)

    def copies(self, sid: str) -> list[Path]:
        """Every transcript of ``sid`` anywhere in the config folder."""
        return sorted((self.config / "projects").glob(f"*/{sid}.jsonl"))


def _machine(root: Path, workspace: Path, real: RealClaude) -> Machine:
    home = root / "home"
    temp = root / "tmp"
    for folder in (home, temp, workspace):
        folder.mkdir(parents=True, exist_ok=True)
    env = {**real.env, "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"),
           "TMPDIR": str(temp), "XDG_STATE_HOME": str(home / ".local" / "state")}
    return Machine(home, workspace, env)


@pytest.fixture
def machines(real: RealClaude, tmp_path: Path) -> tuple[Machine, Machine]:
    a = _machine(tmp_path / "a", tmp_path / "a" / "my wörk space", real)
    long_path = tmp_path / "b" / "/".join(f"a-long-folder-name-for-a-ci-runner-{i}"
                                          for i in range(6))
    b = _machine(tmp_path / "b", long_path, real)
    assert len(tr.project_folder_name(b.workspace)) > 200 or \
        len(str(b.workspace)) > 200  # long enough that the CLI shortens the folder name
    for machine in (a, b):  # the role file is in the repository, on both machines
        (machine.workspace / "roles").mkdir()
        (machine.workspace / "roles" / "planner.md").write_text(
            "You are the planner. ROLE-MARK-7f3a\n")
    return a, b


def test_the_cli_keeps_transcripts_where_we_look(real: RealClaude,
                                                 machines: tuple[Machine, Machine]) -> None:
    """The project folder's name, for a path with a space and non-ASCII letters and for one
    the CLI shortens, and the config folder from CLAUDE_CONFIG_DIR."""
    for machine in machines:
        machine.ok("create", "-n", "where", "--model", MODEL)
        sid = machine.session_id("where")
        assert machine.copies(sid) == [machine.transcript(sid)]
    long_name = machines[1].transcript(machines[1].session_id("where")).parent.name
    assert len(long_name) > 200 and long_name[200] == "-"  # cut at 200, then the hash


def test_what_the_cli_keeps_for_a_session(real: RealClaude,
                                          machines: tuple[Machine, Machine]) -> None:
    """A turn with a subagent leaves a folder of the session's id beside the transcript; that
    folder and the transcript are everything of the session's own (session-env/<id> stays
    empty in a headless run)."""
    a, _ = machines
    real.api.switches = Switches(tool_calls=[AGENT_CALL])
    a.ok("create", "-n", "agentic", "--model", MODEL, "-p", "Use a subagent.")
    sid = a.session_id("agentic")
    files = tr.session_files(sid, a.workspace, a.env)
    assert files is not None
    assert any(rel.startswith(f"{sid}/subagents/agent-") and rel.endswith(".jsonl")
               for rel in files.extra), files.extra
    project = a.transcript(sid).parent
    for path in a.config.rglob(f"*{sid}*"):
        if path == a.transcript(sid) or project / sid in (path, *path.parents):
            continue
        assert path.is_dir() and path.parent.name == "session-env" and \
            not any(path.iterdir()), f"unexpected file of the session: {path}"


def test_a_session_travels_and_converges(real: RealClaude,
                                         machines: tuple[Machine, Machine],
                                         tmp_path: Path) -> None:
    a, b = machines
    a.ok("create", "-n", "plan", "--model", MODEL, "--effort", "high",
         "--role", "roles/planner.md", "-p", "Plan the work.")
    a.ok("resume", "-n", "plan", "-p", "Go on.")
    sid = a.session_id("plan")
    bundle = tmp_path / "plan.tgz"
    a.ok("export", "-n", "plan", "-o", str(bundle))
    imported = b.ok("import", str(bundle))
    assert imported.out.split() == ["plan", "new", sid]
    assert b.copies(sid) == [b.transcript(sid)]
    answer = b.ok("resume", "-n", "plan", "-p", "Third, on B.", "--json").json()
    assert answer["session_id"] == sid and answer["result"] == "turns=3"
    request = real.api.for_session(sid)[-1]
    assert request["turns"] == 3
    assert [m["text"] for m in request["messages"] if m["role"] == "assistant"][:2] == \
        ["turns=1", "turns=2"]  # the whole history reached the API
    assert "ROLE-MARK-7f3a" in request["system"]
    assert (request["model"], request["effort"]) == (MODEL, "high")
    assert b.copies(sid) == [b.transcript(sid)]  # the CLI appended where we put it
    # B moved on by one turn: its bundle fast-forwards A.
    back = tmp_path / "back.tgz"
    b.ok("export", "--all", "-o", str(back))
    forward = a.ok("import", str(back))
    assert forward.out.split()[:3] == ["plan", "fast-forward", "+1"]
    assert a.transcript(sid).read_bytes() == b.transcript(sid).read_bytes()
    assert a.ok("resume", "-n", "plan", "-p", "Fourth, on A.", "--json").json()["result"] == \
        "turns=4"
    # A turn on both sides: the import refuses, and says which side has what.
    b.ok("resume", "-n", "plan", "-p", "Fourth, on B.")
    b.ok("export", "-n", "plan", "-o", str(back))
    before = a.transcript(sid).read_bytes()
    refused = a.cp("import", str(back))
    assert refused.code == 2, refused.err
    assert "the bundle has 1 turn(s) this machine lacks, and this machine 1" in refused.err
    assert a.transcript(sid).read_bytes() == before
    assert a.ok("resume", "-n", "plan", "-p", "Fifth, on A.", "--json").json()["result"] == \
        "turns=5"


def test_a_fork_and_a_session_with_a_subagent_travel(real: RealClaude,
                                                     machines: tuple[Machine, Machine],
                                                     tmp_path: Path) -> None:
    a, b = machines
    a.ok("create", "-n", "base", "--model", MODEL)
    a.ok("resume", "-n", "base", "-p", "two")
    a.ok("fork", "-n", "base", "--as", "alt", "-p", "three, forked")
    real.api.switches = Switches(tool_calls=[AGENT_CALL])
    a.ok("create", "-n", "agentic", "--model", MODEL, "-p", "Use a subagent.")
    ids = {name: a.session_id(name) for name in ("base", "alt", "agentic")}
    sub = tr.session_files(ids["agentic"], a.workspace, a.env)
    assert sub is not None and sub.extra
    bundle = tmp_path / "all.tgz"
    a.ok("export", "--all", "-o", str(bundle))
    b.ok("import", str(bundle))
    placed = tr.session_files(ids["agentic"], b.workspace, b.env)
    assert placed is not None and placed.extra == sub.extra
    for relative in sub.extra:
        assert (placed.project / relative).read_bytes() == (sub.project / relative).read_bytes()
    fork = b.ok("resume", "-n", "alt", "-p", "four", "--json").json()
    assert fork["session_id"] == ids["alt"] and fork["result"] == "turns=4"
    base = b.ok("resume", "-n", "base", "-p", "three", "--json").json()
    assert base["session_id"] == ids["base"] and base["result"] == "turns=3"
    again = b.ok("resume", "-n", "agentic", "-p", "again", "--json").json()
    assert again["session_id"] == ids["agentic"]
    assert real.api.for_session(ids["agentic"])[-1]["turns"] >= 2


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_transcript_is_only_appended_to(real: RealClaude,
                                          machines: tuple[Machine, Machine]) -> None:
    """What fast-forward rests on: a resume appends to the transcript and rewrites nothing."""
    a, _ = machines
    a.ok("create", "-n", "grow", "--model", MODEL)
    path = a.transcript(a.session_id("grow"))
    sizes = []
    for n in range(2):
        before = path.read_bytes()
        a.ok("resume", "-n", "grow", "-p", f"turn {n}")
        after = path.read_bytes()
        assert after.startswith(before) and len(after) > len(before)
        sizes.append(len(after))
    assert tr.user_turns(path.read_bytes()) == 3
    assert all(isinstance(line, dict) for line in _lines(path))  # one JSON object a line
    assert os.stat(path).st_mode & 0o777 == 0o600
