"""The Python API: typed results and errors, the per-session lock, costs per call."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_persist import (
    NameExistsError,
    SessionNotFoundError,
    Sessions,
    TurnOptions,
    TurnResult,
)

from .conftest import barrier_claude


def test_api_returns_typed_results(workspace: Path, fake_claude: Any) -> None:
    sessions = Sessions(workspace)
    created = sessions.create("api", "first", TurnOptions(model="opus", effort="low"))
    assert isinstance(created, TurnResult) and created.name == "api"
    assert created.cost_usd == pytest.approx(0.0125)
    resumed = sessions.resume("api", "second")
    assert resumed.session_id == created.session_id and "turn 2" in resumed.text
    assert (resumed.model, resumed.effort) == ("opus", "low")
    assert resumed.cost_usd == pytest.approx(0.0125)  # this call, not the session's total
    assert resumed.raw["total_cost_usd"] == pytest.approx(0.025)
    assert [e.name for e in sessions.list()] == ["api"]


def test_a_fork_costs_only_its_own_call(workspace: Path, fake_claude: Any) -> None:
    """The CLI's running total of a fork carries on from the source's; the turn costs one call."""
    sessions = Sessions(workspace)
    sessions.create("source", "one")
    sessions.resume("source", "two")
    forked = sessions.fork("source", "copy", "three")
    assert forked.raw["total_cost_usd"] == pytest.approx(0.0375)
    assert forked.cost_usd == pytest.approx(0.0125)
    assert sessions.resume("copy", "four").cost_usd == pytest.approx(0.0125)


def test_stream_callback_sees_every_line(workspace: Path, fake_claude: Any) -> None:
    lines: list[str] = []
    Sessions(workspace).create("cb", "x", on_line=lines.append)
    assert '"type": "system"' in lines[0] and '"type": "result"' in lines[-1]


def test_two_resumes_of_one_session_never_overlap(workspace: Path, fake_claude: Any,
                                                  tmp_path: Path) -> None:
    """The test holds the session while three processes start, until each says it waits: then
    they contend for it, however slow the machine (with nobody holding it, processes that
    started far enough apart each found it free, and the check that one waited failed)."""
    sessions = Sessions(workspace)
    sid = sessions.create("shared").session_id
    script = textwrap.dedent(f"""
        from claude_persist import Sessions
        Sessions({str(workspace)!r}).resume("shared", "[fake delay=0.8] turn")
    """)
    err_files = [tmp_path / f"resume-{i}.err" for i in range(3)]
    waiting = "in use by another process; waiting"
    with sessions.store.session_lock(sid, "shared"):
        procs = []
        for err_file in err_files:
            with open(err_file, "w") as err:
                procs.append(subprocess.Popen([sys.executable, "-c", script], stderr=err))
        deadline = time.monotonic() + 60
        while not all(waiting in f.read_text() for f in err_files):
            assert all(p.poll() is None for p in procs), [f.read_text() for f in err_files]
            assert time.monotonic() < deadline, [f.read_text() for f in err_files]
            time.sleep(0.02)
    for proc in procs:
        proc.wait(timeout=60)
    errs = [f.read_text() for f in err_files]
    assert all(p.returncode == 0 for p in procs), errs
    calls = sorted(fake_claude.calls()[1:], key=lambda c: c["started"])
    assert len(calls) == 3
    for before, after in itertools.pairwise(calls):
        assert after["started"] >= before["ended"], "two turns ran at once"
    assert sorted(c["turns"] for c in calls) == [2, 3, 4]


def test_different_sessions_run_side_by_side(workspace: Path, fake_claude: Any,
                                             tmp_path: Path) -> None:
    """Each call is held until both have started (a call on its own fails after 60 s): both
    answer only if the two sessions ran at once. (Timing the fake's log against a 1 s delay
    fails when one call starts more than a second after the other.)"""
    Sessions(workspace).create("a")
    Sessions(workspace).create("b")
    sessions = Sessions(workspace, claude_cmd=barrier_claude(tmp_path, 2))
    results: dict[str, object] = {}

    def resume(name: str) -> None:
        try:
            results[name] = sessions.resume(name, "x")
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=resume, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(r, TurnResult) and "turn 2" in r.text for r in results.values()), \
        results
    assert len(results) == 2


def test_a_name_taken_while_creating_loses_no_session(workspace: Path, fake_claude: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = Sessions(workspace)
    real_run = sessions._run

    def run_then_race(*args: Any, **kwargs: Any) -> TurnResult:
        result = real_run(*args, **kwargs)
        Sessions(workspace).adopt("race", str(uuid.uuid4()))  # another process won the name
        return result

    monkeypatch.setattr(sessions, "_run", run_then_race)
    with pytest.raises(NameExistsError, match=r"was created but could not be named.*adopt"
                       ) as caught:
        sessions.create("race")
    created = fake_claude.calls()[-1]["session_id"]
    assert created in str(caught.value) and caught.value.unmapped == created


def test_resume_by_unmapped_session_id_works_and_records_nothing(workspace: Path,
                                                                 fake_claude: Any) -> None:
    sessions = Sessions(workspace)
    sid = sessions.create("temp").session_id
    sessions.delete("temp")
    result = sessions.resume(None, "x", session_id=sid)
    assert result.session_id == sid and result.name is None
    assert sessions.list() == []


def test_adopted_sessions_resume(workspace: Path, fake_claude: Any) -> None:
    sessions = Sessions(workspace)
    sid = sessions.create("orig").session_id
    sessions.adopt("alias", sid)
    assert "turn 2" in sessions.resume("alias", "x").text
    with pytest.raises(SessionNotFoundError):
        sessions.delete(session_id=str(uuid.uuid4()))


def test_bad_options_fail_before_waiting_for_a_busy_session(workspace: Path,
                                                            fake_claude: Any) -> None:
    from claude_persist import UsageError

    sessions = Sessions(workspace)
    sid = sessions.create("held").session_id
    # A resume that waited for the session first would be told it is busy (lock timeout 0),
    # not that the effort is bad: no clock needed (a bound of 1 s on the time taken fails on a
    # machine that stalls the test that long).
    with sessions.store.session_lock(sid, "held"), \
            pytest.raises(UsageError, match="not an effort level"):
        sessions.resume("held", "x", TurnOptions(effort="extreme", lock_timeout=0))


def test_a_changed_role_reaches_the_model_on_every_later_turn(workspace: Path,
                                                              fake_claude: Any) -> None:
    (workspace / "one.md").write_text("First role.")
    (workspace / "two.md").write_text("Second role.")
    sessions = Sessions(workspace)
    sessions.create("s", "a", TurnOptions(role="one.md"))
    sessions.resume("s", "b")                               # the snapshot is right: replayed
    sessions.resume("s", "c", TurnOptions(role="two.md"))   # changed: sent fresh
    sessions.resume("s", "d")                               # stored now, still fresh
    (workspace / "two.md").write_text("Second role, edited.")
    sessions.resume("s", "e")                               # edited in place: fresh again
    calls = fake_claude.calls()
    assert [c["role_sent"] for c in calls] == ["First role.", "First role.", "Second role.",
                                               "Second role.", "Second role, edited."]
    fresh = ["--system-prompt-snapshot=off" in c["argv"] for c in calls]
    assert fresh == [False, False, True, True, True]
