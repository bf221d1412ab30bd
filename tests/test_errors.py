"""Errors: the library's messages name no CLI flags, the faces add hints in their own words,
anything unexpected is one line (exit 70), and a finished turn never undoes a re-point."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit

from claude_persist import Sessions
from claude_persist.claude.call import Answer, Turn
from claude_persist.errors import NameExistsError, SessionNotFoundError
from claude_persist.tasks import face_hint, persist_task
from claude_persist.testing import InProcessClaude


def test_library_messages_name_no_flags(tmp_path: Path) -> None:
    sessions = Sessions(tmp_path, mapping_file=tmp_path / "m.json", turn_runner=InProcessClaude())
    sessions.create("a", "hi")
    with pytest.raises(NameExistsError) as exists:
        sessions.create("a", "again")
    with pytest.raises(SessionNotFoundError) as missing:
        sessions.resume("nope", "hi")
    for error in (exists.value, missing.value):
        assert "--" not in str(error), str(error)
    assert exists.value.name == "a" and missing.value.name == "nope"


def test_hints_use_the_face_the_user_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = SessionNotFoundError("no session named 'x'", name="x")
    monkeypatch.setattr(sys, "argv", ["/usr/bin/claude-persist", "resume", "-n", "x"])
    assert face_hint(missing, "resume") == "Create it with: claude-persist create -n x"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/inv", "claude.resume", "-n", "x"])
    assert face_hint(missing, "resume") == "Create it with: inv claude.create -n x"
    assert face_hint(missing, "delete") == ""  # deleting an unknown name suggests nothing
    exists = NameExistsError("taken", name="x", session_id="s", unmapped="new-id")
    assert "--force" in face_hint(exists, "create")
    assert "inv claude.adopt -n OTHER --session-id new-id" in face_hint(exists, "create")


def test_an_unexpected_exception_is_one_line_and_exit_70(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(c: Context) -> None:
        """Fails the way a bug would."""
        raise KeyError("surprise")

    task = persist_task(broken)
    monkeypatch.delenv("CLAUDE_PERSIST_TRACEBACK", raising=False)
    with pytest.raises(Exit) as stopped:
        task.body(Context())
    assert stopped.value.code == 70
    assert str(stopped.value.message).startswith("claude-persist: internal error: KeyError")
    assert "CLAUDE_PERSIST_TRACEBACK=1" in str(stopped.value.message)
    monkeypatch.setenv("CLAUDE_PERSIST_TRACEBACK", "1")
    with pytest.raises(KeyError):
        task.body(Context())


@pytest.mark.parametrize("meanwhile", ["create --force", "adopt --force", "delete"])
def test_a_finished_turn_never_undoes_a_re_point(tmp_path: Path, meanwhile: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake = InProcessClaude()
    other = Sessions(tmp_path, mapping_file=tmp_path / "m.json", turn_runner=fake)
    other.create("x", "first")
    old = other.resolve("x").session_id
    adopted = "123e4567-e89b-42d3-a456-426614174000"

    def re_point_during_the_turn(turn: Turn) -> Answer:
        if turn.spec.session_id == old and len(fake.calls) == 1:
            if meanwhile == "create --force":
                other.create("x", "new", force=True)
            elif meanwhile == "adopt --force":
                other.adopt("x", adopted, force=True)
            else:
                other.delete("x")
        return fake(turn)

    sessions = Sessions(tmp_path, mapping_file=tmp_path / "m.json",
                        turn_runner=re_point_during_the_turn)
    sessions.resume("x", "slow turn")
    entries: dict[str, Any] = {e.name: e for e in sessions.list()}
    if meanwhile == "delete":
        assert "x" not in entries
    else:
        assert entries["x"].session_id not in (old,)
        assert entries["x"].history[-1]["session_id"] == old
    assert f"belongs to session {old}" in capsys.readouterr().err
