"""The one runner, against real processes: limits, process groups, big prompts, noisy stderr."""

from __future__ import annotations

import functools
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from claude_persist import CallTimeoutError, ClaudeCallError, Sessions, TurnOptions
from claude_persist.claude import runner
from claude_persist.testing import FAKE_CLAUDE_CMD


@pytest.fixture
def wrapper(tmp_path: Path) -> str:
    """A claude-compatible wrapper script that does NOT exec (so the fake is a grandchild)."""
    script = tmp_path / "claude-wrapper.sh"
    script.write_text(f"#!/bin/sh\n{FAKE_CLAUDE_CMD} \"$@\"\necho wrapper-done >&2\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> float:
    """Shorter waits between the stop signals and after the result line, so the tests of
    stopping take a second instead of seven (what they check does not depend on the length)."""
    grace = 0.5
    monkeypatch.setattr(runner, "Limits", functools.partial(runner.Limits, grace=grace))
    monkeypatch.setattr(runner, "EOF_GRACE_SECONDS", grace)
    return grace


def _group_of_last_call(fake_claude: Any) -> int:
    return int(fake_claude.records()[-1]["pgid"])


@pytest.mark.parametrize("limit", ["deadline", "idle_timeout"])
def test_limits_end_the_whole_group_behind_a_non_exec_wrapper(
        workspace: Path, fake_claude: Any, wrapper: str, group_alive: Any, limit: str,
        short_grace: float) -> None:
    sessions = Sessions(workspace, claude_cmd=wrapper)
    sessions.create("w")
    switch = "delay=60 child=1" if limit == "deadline" else "silence=60 child=1"
    started = time.monotonic()
    # Limits long enough for the fake to be up (behind its wrapper) when they strike, on a
    # loaded machine too; the test says so if it was not, rather than check a group of old.
    options = TurnOptions(deadline=3.0) if limit == "deadline" else TurnOptions(idle_timeout=3.0)
    with pytest.raises(CallTimeoutError) as caught:
        sessions.resume("w", f"[fake {switch} ignore_signals=1] x", options)
    took = time.monotonic() - started
    assert caught.value.limit == ("deadline" if limit == "deadline" else "idle timeout")
    # SIGINT and SIGTERM are ignored, SIGKILL ends it: long before the fake's 60 s are up
    # (the bound is loose on purpose; how fast is the benchmark's business).
    assert took < 30, took
    calls = [r for r in fake_claude.records()
             if r["event"] == "start" and "child=1" in r["prompt_head"]]
    assert len(calls) == 1, "the limit struck before the fake started: nothing was stopped"
    assert not group_alive(calls[0]["pgid"]), "a process of the claude group survived"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_zombie_is_not_a_live_member_of_its_group() -> None:
    """A killed process nobody has reaped yet still answers ``killpg(pgid, 0)``; in a container
    whose PID 1 never reaps, stopping a call would otherwise wait for it until the last timeout."""
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert runner.live_group_members(child.pid) == [child.pid]
        os.kill(child.pid, signal.SIGKILL)
        end = time.monotonic() + 60  # bounds a failing test only
        while runner.live_group_members(child.pid) and time.monotonic() < end:
            time.sleep(0.01)
        assert runner.live_group_members(child.pid) == []
        os.killpg(child.pid, 0)  # the unreaped zombie is still there: the kernel sees the group
    finally:
        child.kill()
        child.wait()
    with pytest.raises(ProcessLookupError):
        os.killpg(child.pid, 0)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_the_tests_own_liveness_check_tells_a_zombie_from_a_live_process() -> None:
    """The check the process-group tests rely on, written apart from the runner's, against the
    kernel's view: running and stopped processes count, an unreaped zombie does not."""
    from .conftest import live_members

    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert live_members(child.pid) == [child.pid]
        os.kill(child.pid, signal.SIGSTOP)
        assert live_members(child.pid) == [child.pid]  # stopped is not ended
        os.kill(child.pid, signal.SIGKILL)
        end = time.monotonic() + 30
        while live_members(child.pid) and time.monotonic() < end:
            time.sleep(0.01)
        assert live_members(child.pid) == []
        os.killpg(child.pid, 0)  # yet the kernel still has the group: the zombie is unreaped
        assert runner.live_group_members(child.pid) == []  # the runner's check agrees
    finally:
        child.kill()
        child.wait()
    assert live_members(child.pid) == []


def test_a_polite_child_stops_at_sigint_without_waiting_for_the_grace(
        workspace: Path, fake_claude: Any, wrapper: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A grace far longer than the bound below: a stop that waited for it cannot pass, and one
    # that did not passes however slow the machine (a bound of 2 s after a 0.5 s deadline
    # fails whenever the machine stalls the call for 1.5 s).
    monkeypatch.setattr(runner, "Limits", functools.partial(runner.Limits, grace=120))
    sessions = Sessions(workspace, claude_cmd=wrapper)
    sessions.create("p")
    started = time.monotonic()
    with pytest.raises(CallTimeoutError):
        sessions.resume("p", "[fake delay=60] x", TurnOptions(deadline=0.5))
    assert time.monotonic() - started < 60


def test_a_1_mb_prompt_goes_through_stdin_not_argv(workspace: Path, fake_claude: Any) -> None:
    sessions = Sessions(workspace)
    sessions.create("big")
    prompt = "secret-token " + "y" * (1024 * 1024)
    result = sessions.resume("big", prompt)
    assert "turn 2" in result.text
    call = fake_claude.calls()[-1]
    assert call["stdin_bytes"] == len(prompt.encode())
    assert all("secret-token" not in arg for arg in call["argv"])
    assert sum(len(a) for a in call["argv"]) < 4096


def test_a_chatty_stderr_never_hangs_the_call(workspace: Path, fake_claude: Any) -> None:
    sessions = Sessions(workspace)
    sessions.create("noisy")
    # An undrained stderr would block the fake before its first stdout line: the deadline
    # would stop the call. No bound on the time taken: a loaded machine can pass any.
    result = sessions.resume("noisy", "[fake stderr_bytes=5000000] x", TurnOptions(deadline=60))
    assert "turn 2" in result.text


def test_a_cli_that_hangs_after_its_result_is_stopped_and_counted_as_success(
        workspace: Path, fake_claude: Any, group_alive: Any, short_grace: float) -> None:
    notes: list[str] = []
    sessions = Sessions(workspace, notify=notes.append)
    sessions.create("h")
    result = sessions.resume("h", "[fake hang_after=1] x")
    assert "turn 2" in result.text and result.notes
    assert any("did not exit" in n for n in notes)
    assert not group_alive(_group_of_last_call(fake_claude))


def test_the_failure_message_is_the_clis_own(workspace: Path, fake_claude: Any) -> None:
    sessions = Sessions(workspace)
    sessions.create("e")
    with pytest.raises(ClaudeCallError, match="Invalid API key") as caught:
        sessions.resume("e", "[fake error=401] x")
    assert caught.value.api_error_status == 401 and not caught.value.transient
    with pytest.raises(ClaudeCallError) as overloaded:
        sessions.resume("e", "[fake error=529] x")
    assert overloaded.value.transient


def test_stderr_of_a_crashing_cli_is_reported(workspace: Path, tmp_path: Path) -> None:
    script = tmp_path / "crash.sh"
    script.write_text("#!/bin/sh\necho 'boom: something broke' >&2\nexit 3\n")
    script.chmod(0o755)
    sessions = Sessions(workspace, claude_cmd=str(script))
    with pytest.raises(ClaudeCallError, match=r"(?s)exited with status 3.*boom: something broke"):
        sessions.create("c")


def test_the_runner_streams_lines_before_the_process_ends(tmp_path: Path) -> None:
    """The child prints its second line (and ends) only once ``on_line`` has had the first:
    a runner that held lines back until the end would never hand it over, and the deadline
    would stop the call. No clock is read, so a slow machine cannot fail it."""
    seen = tmp_path / "first-seen"
    code = ("import os, sys, time\nprint('first', flush=True)\n"
            "while not os.path.exists(sys.argv[1]):\n    time.sleep(0.01)\n"
            "print('second', flush=True)")
    lines: list[str] = []

    def on_line(line: str) -> bool:
        lines.append(line)
        if line == "first":
            seen.touch()
        return False

    outcome = runner.run([sys.executable, "-c", code, str(seen)], prompt="", cwd=tmp_path,
                         limits=runner.Limits(deadline=60), on_line=on_line)
    assert outcome.stopped_by is None, "the first line came only when the process ended"
    assert lines == ["first", "second"]
    assert outcome.returncode == 0 and outcome.lines == 2


def test_the_runner_refuses_a_vanished_session_folder(tmp_path: Path) -> None:
    from claude_persist import UsageError

    with pytest.raises(UsageError, match="does not exist any more"):
        runner.run(shlex.split(FAKE_CLAUDE_CMD), prompt="x", cwd=tmp_path / "gone",
                   limits=runner.Limits(), on_line=lambda line: None)


def test_claude_runs_in_the_sessions_folder(workspace: Path, fake_claude: Any,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    Sessions(workspace).create("here")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # and back: the tests after this one run where they started
    Sessions(workspace).resume("here", "x")
    assert fake_claude.calls()[-1]["cwd"] == str(workspace.resolve())


def test_limits_do_not_apply_once_the_answer_is_in(workspace: Path, fake_claude: Any,
                                                   short_grace: float,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's clock jumps an hour the moment the result line is in: both limits are
    long past from then on, yet the call succeeds. Before it, the limits are generous, so the
    fake's start-up on a loaded machine cannot trip them (an idle timeout of 0.5 s from the
    spawn did, whenever the fake took that long to print its first line)."""
    jumped = [0.0]
    monotonic = time.monotonic
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(
        monotonic=lambda: monotonic() + jumped[0], sleep=time.sleep))

    def on_line(line: str) -> None:
        if json.loads(line).get("type") == "result":
            jumped[0] = 3600.0

    sessions = Sessions(workspace, notify=lambda message: None)
    sessions.create("done")
    result = sessions.resume("done", "[fake hang_after=1] x",
                             TurnOptions(deadline=60, idle_timeout=30), on_line=on_line)
    assert jumped[0] and "turn 2" in result.text and result.notes


def _peak_rss_mib(script: str, cwd: Path) -> tuple[float, str]:
    """Run ``script`` in a fresh interpreter; its peak RSS in MiB, and what it printed."""
    code = script + textwrap.dedent("""
        import resource
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *said, peak = proc.stdout.splitlines()
    return float(peak), "\n".join(said)


def test_a_line_past_the_limit_stops_the_call(tmp_path: Path) -> None:
    code = ("import sys, time\nsys.stdout.write('ok\\n' + 'x' * 1000 + '\\n' + 'y' * 1001)\n"
            "sys.stdout.flush()\ntime.sleep(60)")
    seen: list[str] = []
    outcome = runner.run([sys.executable, "-c", code], prompt="", cwd=tmp_path,
                         limits=runner.Limits(max_line_bytes=1000, deadline=30),
                         on_line=seen.append)
    assert seen == ["ok", "x" * 1000]  # a line of exactly the limit passes
    assert outcome.stopped_by == runner.LINE_TOO_LONG
    # The limit counts bytes, not characters.
    code = "print('é' * 501)"
    outcome = runner.run([sys.executable, "-c", code], prompt="", cwd=tmp_path,
                         limits=runner.Limits(max_line_bytes=1000), on_line=seen.append)
    assert outcome.stopped_by == runner.LINE_TOO_LONG and len(seen) == 2


def test_output_without_a_newline_fails_cleanly_with_flat_memory(
        workspace: Path, fake_claude: Any, group_alive: Any) -> None:
    """300 MB without a newline from the fake: the call fails at the line limit, and the
    process that ran it never held much more than one limit's worth of it."""
    Sessions(workspace).create("flood")
    peak, said = _peak_rss_mib(textwrap.dedent(f"""
        from claude_persist import ClaudeCallError, Sessions, exit_code_for
        try:
            Sessions({str(workspace)!r}).resume("flood", "[fake flood=300000000] x")
        except ClaudeCallError as error:
            print(exit_code_for(error), error.exit_code, str(error).replace(chr(10), " "))
        """), workspace)
    code, exit_code, message = said.split(" ", 2)
    assert (code, exit_code) == ("1", "None")
    assert "longer than 64 MiB" in message and "session flood" in message
    limit_mib = runner.MAX_LINE_BYTES / 2**20
    assert peak < 2 * limit_mib + 100, f"peak RSS {peak:.0f} MiB"
    assert not group_alive(_group_of_last_call(fake_claude))


def test_lines_wait_for_a_slow_reader_once_their_bytes_fill_the_queue() -> None:
    """Lines of megabytes wait in the child's pipe, not in our memory: a queue bounded only
    by its count of lines held hundreds of them."""
    lines = runner._Lines(max_items=100, max_bytes=100)
    lines.put("a" * 60, 60)
    lines.put("b" * 30, 30)
    third = threading.Thread(target=lines.put, args=("c" * 60, 60), daemon=True)
    third.start()
    third.join(timeout=0.3)
    assert third.is_alive()  # 150 bytes would be past the budget: it waits
    assert lines.get(timeout=1) == "a" * 60
    third.join(timeout=10)
    assert not third.is_alive()
    assert [lines.get(timeout=1) for _ in range(2)] == ["b" * 30, "c" * 60]
    lines.put("d" * 500, 500)  # bigger than the budget: passes alone
    blocked = threading.Thread(target=lines.put, args=("e", 1), daemon=True)
    blocked.start()
    lines.close()  # the call is over: a waiting put returns, and later ones drop their item
    blocked.join(timeout=10)
    assert not blocked.is_alive()
    lines.put("f", 1)
    with pytest.raises(queue.Empty):
        lines.get(timeout=0)


def test_a_session_id_that_is_not_a_uuid_is_never_recorded(
        workspace: Path, fake_claude: Any) -> None:
    sessions = Sessions(workspace)
    created = sessions.create("ids")
    with pytest.raises(ClaudeCallError, match="not a UUID") as caught:
        sessions.resume("ids", "[fake report_id=../../../escape] x")
    assert "'../../../escape'" in str(caught.value) and caught.value.session_id is None
    assert sessions.resolve("ids").session_id == created.session_id


def test_a_calls_cost_is_its_own_even_after_a_turn_made_elsewhere(
        workspace: Path, fake_claude: Any) -> None:
    """The CLI's per-call usage, not the growth of its running total: that growth would also
    count a turn made directly with claude since our last call."""
    sessions = Sessions(workspace)
    sid = sessions.create("priced", "[fake cost=0.1] one").session_id
    direct = subprocess.run([*shlex.split(FAKE_CLAUDE_CMD), "-p", f"--resume={sid}"],
                            input="[fake cost=0.5] made elsewhere", capture_output=True,
                            text=True, cwd=workspace, timeout=30)
    assert direct.returncode == 0, direct.stderr
    third = sessions.resume("priced", "[fake cost=0.25] three")
    assert third.cost_usd == pytest.approx(0.25)
    assert third.raw["total_cost_usd"] == pytest.approx(0.85)
    # A CLI without the per-call figure: the difference of the totals, as before.
    older = sessions.resume("priced", "[fake cost=0.25 version=2.1.197] four")
    assert older.cost_usd == pytest.approx(0.25)
