"""A shared session store against the genuine binary: a session created on one "machine"
(its own HOME and config folder, temp folder, state folder and workspace path) with a folder
store is resumed by name on another without any import, and the whole history reaches the
API."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import MODEL, RealClaude
from .test_portable import _machine

pytestmark = pytest.mark.contract


def test_a_session_created_on_one_machine_resumes_on_another_through_a_folder_store(
        real: RealClaude, tmp_path: Path) -> None:
    store = tmp_path / "shared store"
    store.mkdir()
    a = _machine(tmp_path / "a", tmp_path / "a" / "my wörk space", real)
    b = _machine(tmp_path / "b", tmp_path / "b" / "ci" / "runner" / "repo", real)
    for machine in (a, b):
        machine.env["CLAUDE_PERSIST_STORE"] = f"dir:{store}"
    a.ok("create", "-n", "plan", "--model", MODEL, "--effort", "high", "-p", "Plan it.")
    a.ok("resume", "-n", "plan", "-p", "Go on.")
    sid = a.session_id("plan")
    assert not b.transcript(sid).exists()  # nothing imported by hand
    answer = b.ok("resume", "-n", "plan", "-p", "Third, on B.", "--json").json()
    assert answer["session_id"] == sid and answer["result"] == "turns=3"
    request = real.api.for_session(sid)[-1]
    assert request["turns"] == 3
    assert [m["text"] for m in request["messages"] if m["role"] == "assistant"][:2] == \
        ["turns=1", "turns=2"]  # the whole history reached the API
    assert b.copies(sid) == [b.transcript(sid)]  # placed for b's own workspace
    back = a.ok("resume", "-n", "plan", "-p", "Fourth, on A.", "--json").json()
    assert back["result"] == "turns=4"  # a fetched b's turn first
