"""What a new user tripped over and what an attacker tried, through the command-line faces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from claude_persist.errors import ClaudePersistError, exit_code_for

from .conftest import Runner, wait_for


def test_a_checkout_cannot_run_code_or_swap_the_claude_command(
        workspace: Path, fake_claude: Any) -> None:
    marker = workspace / "ran"
    (workspace / "invoke.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (workspace / "invoke.yaml").write_text(
        "claude_persist:\n  claude_cmd: /nonexistent/evil-claude\n")
    # The installed command, as users run it (python -m would put the folder on sys.path).
    command = Path(sys.executable).parent / "claude-persist"
    ran = subprocess.run([str(command), "create", "-n", "safe"], cwd=workspace,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr  # CLAUDE_CMD (the fake) outranks the project file
    assert not marker.exists()


def test_a_broken_invoke_yaml_is_a_usage_error(cp: Runner, workspace: Path) -> None:
    (workspace / "invoke.yaml").write_text("claude_persist:\n  model: [unclosed\n")
    ran = cp("list")
    assert ran.code == 2, ran.err
    assert "configuration file" in ran.err and "line" in ran.err
    assert "Traceback" not in ran.err
    (workspace / "invoke.yaml").write_text("claude_persist: 5\n")
    ran = cp("list")
    assert ran.code == 2 and "give a mapping" in ran.err and "Traceback" not in ran.err


@pytest.mark.parametrize("flag", ["--dry", "--pty", "--echo", "--warn-only"])
def test_invokes_shell_flags_are_refused_and_not_shown(cp: Runner, flag: str) -> None:
    ran = cp(flag, "list")
    assert ran.code == 2 and f"{flag} is not an option" in ran.err
    assert flag not in cp("--help").out


def test_flags_that_would_be_silently_ignored_are_errors(cp: Runner, workspace: Path) -> None:
    partial = cp("create", "-n", "p", "--partial")
    assert partial.code == 2 and "--partial" in partial.err
    (workspace / "wf.yml").write_text("version: 1\nsteps: [{id: a, create: x, prompt: hi}]\n")
    dry = cp("run", "wf.yml", "--dry-run", "--json")
    assert dry.code == 2 and "--dry-run" in dry.err


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_closed_terminal_stops_a_run_like_ctrl_c(workspace: Path, fake_claude: Any,
                                                   group_alive: Any, sig: int) -> None:
    (workspace / "wf.yml").write_text(
        "version: 1\nsteps: [{id: a, create: x, prompt: '[fake delay=30] a'}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "claude_persist.cli", "run", "wf.yml",
                             "--run-id", "r1"], cwd=workspace, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not fake_claude.records() and time.monotonic() < deadline:
        time.sleep(0.05)
    groups = [r["pgid"] for r in fake_claude.records()]
    assert groups, "the fake never started"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not any(group_alive(g) for g in groups)
    states = list((workspace.parent / "tmp").rglob("r1.json"))
    assert len(states) == 1
    assert json.loads(states[0].read_text())["status"] == "interrupted"


def test_sessions_are_found_from_a_subfolder_of_the_repository(cp: Runner,
                                                               workspace: Path) -> None:
    (workspace / ".git").mkdir()
    (workspace / "src" / "deep").mkdir(parents=True)
    assert cp("create", "-n", "top").code == 0
    below = cp("resolve", "-n", "top", cwd=workspace / "src" / "deep")
    assert below.code == 0, below.err
    elsewhere = cp("resolve", "-n", "top", "--workspace", str(workspace / "src"))
    assert elsewhere.code == 3  # an explicit workspace still wins


def test_a_relative_workspace_in_invoke_yaml_is_relative_to_that_file(
        cp: Runner, workspace: Path) -> None:
    (workspace / "proj").mkdir()
    (workspace / "invoke.yaml").write_text("claude_persist:\n  workspace: proj\n")
    listed = cp("list", "--json")
    assert listed.json()["workspace_dir"] == str((workspace / "proj").resolve())


def test_unknown_configuration_is_named_in_a_warning(cp: Runner, workspace: Path) -> None:
    (workspace / "invoke.yaml").write_text("claude_persist:\n  modle: opus\n")
    ran = cp("list", env={"INVOKE_CLAUDE_PERSIST_DEADLNE": "5"})
    assert ran.code == 0
    assert "unknown configuration ignored: modle, INVOKE_CLAUDE_PERSIST_DEADLNE" in ran.err


def test_durations_and_numbers_work_on_the_command_line(cp: Runner, workspace: Path,
                                                        fake_claude: Any) -> None:
    ran = cp("create", "-n", "d", "--deadline", "15m", "--idle-timeout", "90s",
             "--max-turns", "3")
    assert ran.code == 0, ran.err
    assert "--max-turns=3" in fake_claude.calls()[-1]["argv"]


def test_a_bad_configured_value_says_where_it_came_from(cp: Runner) -> None:
    ran = cp("list", env={"INVOKE_CLAUDE_PERSIST_DEADLINE": "soon"})
    assert ran.code == 2
    assert "configuration under claude_persist" in ran.err and "'soon'" in ran.err


@pytest.mark.parametrize(("args", "says"), [
    (["resume", "busy", "-p", "hi"], "to name the session, write -n busy"),
    (["resume", "-n", "x", "--promt", "hi"], "did you mean --prompt?"),
    (["resume", "-n"], "-n/--name needs a value"),
    (["creat", "-n", "x"], "did you mean create?"),
])
def test_parse_errors_say_what_to_type(cp: Runner, args: list[str], says: str) -> None:
    ran = cp(*args)
    assert ran.code == 2 and says in ran.err, ran.err


@pytest.mark.parametrize("task", ["run", "validate", "resume"])
def test_help_after_a_task_shows_that_tasks_help(cp: Runner, task: str) -> None:
    ran = cp(task, "--help")
    assert ran.code == 0, ran.err
    assert ran.out.startswith(f"Usage: claude-persist [--core-opts] {task} ")


def test_repeated_ctrl_c_still_saves_the_state(workspace: Path, fake_claude: Any,
                                               group_alive: Any) -> None:
    # One step's claude ignores SIGINT, so stopping it takes a grace period (then SIGTERM ends
    # it): the extra Ctrl-Cs land while the run is stopping.
    (workspace / "wf.yml").write_text(
        "version: 1\nmax_parallel: 2\nsteps:\n"
        "  - {id: a, create: x, prompt: '[fake delay=30 ignore_signals=int] a'}\n"
        "  - {id: b, create: y, prompt: '[fake delay=30] b'}\n")
    proc = subprocess.Popen([sys.executable, "-m", "claude_persist.cli", "run", "wf.yml",
                             "--run-id", "r2"], cwd=workspace, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(fake_claude.records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    groups = {r["prompt_head"][-1]: r["pgid"] for r in fake_claude.records()}
    assert len(groups) == 2, "the fakes never started"
    proc.send_signal(signal.SIGINT)
    # b's claude is stopped once the run is stopping (its Ctrl-C handling has begun), and a's
    # holds the run there for a grace period: the extra Ctrl-Cs land then, whatever the load
    # (0.3 s apart, a stalled run had not begun stopping when the second one came).
    wait_for(lambda: not group_alive(groups["b"]), "the run to stop b's claude")
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not any(group_alive(g) for g in groups.values())
    states = list((workspace.parent / "tmp").rglob("r2.json"))
    assert len(states) == 1
    assert json.loads(states[0].read_text())["status"] == "interrupted"


@pytest.mark.parametrize(("content", "says"), [
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (None, "not a file or a pipe"),
])
def test_a_prompt_file_is_bounded_text(cp: Runner, workspace: Path, content: bytes | None,
                                       says: str) -> None:
    path = "/dev/zero"
    if content is not None:
        (workspace / "p.txt").write_bytes(content)
        path = "p.txt"
    ran = cp("create", "-n", "p", "--prompt-file", path)
    assert ran.code == 2 and says in ran.err, ran.err


def test_settings_claude_persist_manages_are_refused_before_a_call(
        cp: Runner, fake_claude: Any) -> None:
    managed = cp("create", "-n", "m", "--", "--output-format", "text")
    assert managed.code == 2 and "sets that flag itself" in managed.err
    schema = cp("create", "-n", "m", "--json-schema", "{bad")
    assert schema.code == 2 and "not valid JSON" in schema.err
    assert fake_claude.calls() == []


def test_a_turn_whose_record_cannot_be_saved_still_returns_its_answer(
        workspace: Path, fake_claude: Any) -> None:
    from claude_persist import Sessions

    from .test_fsio import immutable

    notes: list[str] = []
    sessions = Sessions(workspace, notify=notes.append)
    sessions.create("q")
    sessions.resume("q", "first")  # the session's lock file exists from here on
    with immutable(sessions.store.folder):
        result = sessions.resume("q", "precious")
    assert "turn 3" in result.text
    assert any("the turn succeeded" in note for note in notes)


def test_a_claude_left_running_by_a_killed_parent_keeps_its_session_locked(
        cp: Runner, workspace: Path, fake_claude: Any, group_alive: Any) -> None:
    assert cp("create", "-n", "o").code == 0
    parent = subprocess.Popen([sys.executable, "-m", "claude_persist.cli", "resume", "-n", "o",
                               "-p", "[fake delay=60] slow", "--stream"], cwd=workspace,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Its first stream line passed through: the fake has written all it writes before its
    # delay (a claude that writes into the pipe of a dead parent dies of SIGPIPE instead).
    assert parent.stdout is not None and '"init"' in parent.stdout.readline()
    orphan_group = fake_claude.records()[-1]["pgid"]
    parent.kill()  # kill -9: no chance to stop its claude
    parent.wait()
    assert group_alive(orphan_group)
    busy = cp("resume", "-n", "o", "-p", "meanwhile", "--lock-timeout", "1")
    assert busy.code == 4, busy.err  # the orphan still holds the session
    os.killpg(orphan_group, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while group_alive(orphan_group) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = cp("resume", "-n", "o", "-p", "now", "--lock-timeout", "10")
    assert after.code == 0, after.err


def test_create_spends_no_call_when_the_mapping_file_cannot_be_changed(
        workspace: Path, fake_claude: Any) -> None:
    from claude_persist import Sessions

    from .test_fsio import immutable

    sessions = Sessions(workspace)
    sessions.create("first")
    calls = len(fake_claude.calls())
    with immutable(sessions.store.path), pytest.raises(ClaudePersistError) as refused:
        sessions.create("second")
    assert exit_code_for(refused.value) == 2
    assert len(fake_claude.calls()) == calls  # nothing spent
