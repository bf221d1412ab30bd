"""Live progress: the stream events the runner reports, heartbeat cadence and frames on a fake
clock, and real runs that show a heartbeat, a live view on a terminal, and ``--quiet``."""

from __future__ import annotations

import io
import itertools
import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from claude_persist.claude import runner
from claude_persist.observe import CallInfo
from claude_persist.workflow import progress
from claude_persist.workflow.spec import load_workflow
from claude_persist.workflow.state import StepState, StepStatus

from .conftest import CP_PREFIX, Runner
from .remote.gated_claude import Gate

FAKE = f"{sys.executable} -m claude_persist.testing.fake_claude"


def write(folder: Path, text: str, name: str = "wf.yml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# -- the runner's stream events ------------------------------------------------------------------


def test_tool_used_reads_the_last_tool_use_block_of_a_line() -> None:
    line = json.dumps({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "name": "Read", "input": {}}, {"type": "text", "text": "x"},
        {"type": "tool_use", "name": "Bash", "input": {}}]}})
    assert runner.tool_used(line) == "Bash"
    assert runner.tool_used(json.dumps({"type": "assistant", "message": {
        "content": [{"type": "text", "text": "tool_use"}]}})) is None
    assert runner.tool_used('{"type": "tool_use", oops') is None
    assert runner.tool_used('"tool_use"') is None  # valid JSON, not an object


def test_the_runner_reports_each_line_with_the_last_tool(tmp_path: Path) -> None:
    events: list[runner.StreamEvent] = []
    argv = [sys.executable, "-m", "claude_persist.testing.fake_claude", "-p",
            "--output-format", "stream-json", "--verbose"]
    env = {**os.environ, "CLAUDE_CONFIG_DIR": str(tmp_path / "config"),
           "FAKE_CLAUDE_HOME": str(tmp_path / "home")}
    outcome = runner.run(argv, prompt="hi [fake tools=Read,Grep lines=2]", cwd=tmp_path,
                         limits=runner.Limits(deadline=60), on_line=lambda line: None,
                         env=env, on_event=events.append)
    assert outcome.returncode == 0
    assert [e.events for e in events] == list(range(1, outcome.lines + 1))
    tools = [e.last_tool for e in events]
    # init and text lines: no tool yet; then Read, Grep, and Grep stays the last one
    assert tools[:2] == [None, None] and tools[2:4] == ["Read", "Grep"]
    assert set(tools[4:]) == {"Grep"}
    assert all(a.elapsed <= b.elapsed for a, b in itertools.pairwise(events))


# -- cadence and frames on a fake clock -------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


WORKFLOW = """\
version: 1
steps:
  - id: review
    create: reviewer
    prompt: Review.
  - id: build
    run: make
"""


def started(live: progress.LiveProgress, tmp_path: Path, step_id: str) -> StepState:
    workflow = load_workflow(write(tmp_path, WORKFLOW))
    step = workflow.step(step_id)
    state = StepState(id=step_id, action="create", session="reviewer", kind=step.kind,
                      status=StepStatus.RUNNING)
    live.step_started(step, state)
    return state


def make(tmp_path: Path, mode: str, clock: Clock, out: io.StringIO
         ) -> progress.LiveProgress:
    workflow = load_workflow(write(tmp_path, WORKFLOW))
    return progress.LiveProgress(workflow, out, mode=mode, heartbeat=10, clock=clock,
                                 width=60, ticking=False)


def test_elapsed_and_heartbeat_formatting() -> None:
    assert [progress.elapsed_text(s) for s in (0, 45.9, 65, 3599, 3725)] == \
        ["0s", "45s", "1m05s", "59m59s", "1h02m"]
    running = progress.Running("fix[2]/test", "fix[2]/test", started=0, last_beat=0,
                               events=1, last_tool="Bash")
    assert progress.heartbeat_line(running, 65) == \
        "  fix[2]/test  still running: 1m05s, 1 event, last tool Bash"
    assert progress.heartbeat_line(progress.Running("a", "a", 0, 0), 3) == \
        "  a  still running: 3s"


def test_heartbeats_come_after_the_interval_then_every_interval(tmp_path: Path) -> None:
    clock, out = Clock(), io.StringIO()
    live = make(tmp_path, progress.LINES, clock, out)
    started(live, tmp_path, "review")
    start_lines = out.getvalue()
    assert "review  create reviewer" in start_lines and "started" in start_lines

    def beats() -> list[str]:
        return [line for line in out.getvalue().splitlines() if "still running" in line]

    clock.now += 9.9
    live.tick()
    assert beats() == []  # not yet: a short step never gets one
    live.observer.step_event(CallInfo("create", "reviewer", "id", step="review"),
                             runner.StreamEvent(7, "Read", 9.9))
    clock.now += 0.1
    live.tick()
    live.tick()  # the same instant: no second line
    assert beats() == ["  review  still running: 10s, 7 events, last tool Read"]
    clock.now += 5
    live.tick()
    assert len(beats()) == 1
    clock.now += 5
    live.tick()
    assert beats()[-1] == "  review  still running: 20s, 7 events, last tool Read"
    # an event of another step (or none) changes nothing here
    live.observer.step_event(CallInfo("resume", "x", "id", step="other"),
                             runner.StreamEvent(99, "Bash", 1))
    clock.now += 10
    live.tick()
    assert beats()[-1] == "  review  still running: 30s, 7 events, last tool Read"


def test_a_finished_step_gets_no_more_heartbeats(tmp_path: Path) -> None:
    clock, out = Clock(), io.StringIO()
    live = make(tmp_path, progress.LINES, clock, out)
    state = started(live, tmp_path, "review")
    workflow = load_workflow(write(tmp_path, WORKFLOW))
    state.status, state.duration_s = StepStatus.SUCCEEDED, 3.0
    live.step_finished(workflow.step("review"), state)
    clock.now += 100
    live.tick()
    assert "still running" not in out.getvalue()
    assert "succeeded" in out.getvalue()


def test_the_view_is_rendered_as_pure_frames() -> None:
    rows = [progress.Running(f"s{i}", f"s{i}", started=float(i), last_beat=0, events=i)
            for i in range(10)]
    frame = progress.render_view(rows, now=70, width=30)
    assert frame[0] == "  > s0  1m10s"
    assert frame[1] == "  > s1  1m09s, 1 event"
    assert len(frame) == progress.MAX_VIEW_ROWS + 1 and frame[-1] == "  ... and 2 more running"
    long = progress.Running("a" * 80, "a" * 80, 0, 0)
    assert progress.render_view([long], 1, width=30) == ["  > " + "a" * 25 + "~"]
    assert progress.render_view([], 1) == []


def test_the_live_view_is_rewritten_in_place(tmp_path: Path) -> None:
    clock, out = Clock(), io.StringIO()
    live = make(tmp_path, progress.LIVE, clock, out)
    started(live, tmp_path, "review")
    started(live, tmp_path, "build")
    assert out.getvalue() == ""  # no start lines on a terminal
    live.tick()
    first = out.getvalue()
    assert first == "  > build  0s\n  > review  0s\n"
    clock.now += 2
    live.observer.step_event(CallInfo("create", "reviewer", "id", step="review"),
                             runner.StreamEvent(3, "Edit", 2))
    live.tick()
    assert out.getvalue()[len(first):] == (progress.erase(2) + "  > build  2s\n"
                                           "  > review  2s, 3 events, last tool Edit\n")
    workflow = load_workflow(write(tmp_path, WORKFLOW))
    done = StepState(id="build", action="run", session="", kind="shell",
                     status=StepStatus.SUCCEEDED, duration_s=2.0)
    mark = len(out.getvalue())
    live.step_finished(workflow.step("build"), done)
    after = out.getvalue()[mark:]
    # the view goes, the finished line scrolls, the view comes back without the step
    assert after.startswith(progress.erase(2))
    assert "build  run  succeeded  2.0s" in after
    assert after.endswith("  > review  2s, 3 events, last tool Edit\n")
    live.close()
    assert out.getvalue().endswith(progress.erase(1))


def test_quiet_prints_only_failures(tmp_path: Path) -> None:
    clock, out = Clock(), io.StringIO()
    live = make(tmp_path, progress.QUIET, clock, out)
    workflow = load_workflow(write(tmp_path, WORKFLOW))
    state = started(live, tmp_path, "review")
    clock.now += 100
    live.tick()
    state.status = StepStatus.SUCCEEDED
    live.step_finished(workflow.step("review"), state)
    assert out.getvalue() == ""
    failed = StepState(id="build", action="run", session="", kind="shell", status=StepStatus.FAILED,
                       error="exit code 2")
    live.step_finished(workflow.step("build"), failed)
    assert "build  run  failed" in out.getvalue() and "exit code 2" in out.getvalue()


def test_the_mode_follows_the_stream_and_the_interval_the_environment() -> None:
    assert progress.choose_mode(io.StringIO(), False, {}) == progress.LINES
    assert progress.choose_mode(io.StringIO(), True, {}) == progress.QUIET
    primary, secondary = pty.openpty()
    try:
        with open(secondary, "w", closefd=False) as tty:
            assert progress.choose_mode(tty, False, {"TERM": "xterm"}) == progress.LIVE
            assert progress.choose_mode(tty, False, {"TERM": "dumb"}) == progress.LINES
    finally:
        os.close(primary)
        os.close(secondary)
    assert progress.heartbeat_from({}) == progress.DEFAULT_HEARTBEAT
    assert progress.heartbeat_from({"CLAUDE_PERSIST_HEARTBEAT": "0.2"}) == 0.2
    assert progress.heartbeat_from({"CLAUDE_PERSIST_HEARTBEAT": "2m"}) == 120


# -- real runs ------------------------------------------------------------------------------------

# A step whose claude call streams a tool call, then waits at a gate the test opens once it has
# seen what it looks for (a heartbeat, a redrawn view): no fixed delay, and nothing that
# depends on how fast the machine is.
SLOW = """\
version: 1
steps:
  - id: slow
    create: worker
    prompt: "Work. [fake tools=Read lines=2]"
  - id: after
    run: "echo done"
"""
#: The fake's init line, its first text line and its Read line come before the gate.
BEFORE_GATE = 3


class Collected:
    """What a reader thread gathers from a stream, with a wait for what the test looks for."""

    def __init__(self) -> None:
        self.text = ""
        self._changed = threading.Condition()

    def add(self, chunk: str) -> None:
        with self._changed:
            self.text += chunk
            self._changed.notify_all()

    def read_all(self, stream: IO[str]) -> None:
        for line in stream:
            self.add(line)

    def wait_for(self, seen: Callable[[str], bool], timeout: float = 120) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: seen(self.text), timeout), self.text


def heartbeat_with_the_tool(text: str) -> bool:
    return any(line.startswith("  slow  still running: ") and " events, last tool Read" in line
               for line in text.splitlines())


def test_a_slow_step_prints_heartbeats_with_events_and_the_last_tool(
        workspace: Path, fake_claude: Any) -> None:
    """The one real run of heartbeats: a short interval, and the step held until one came."""
    path = write(workspace, SLOW)
    with Gate() as gate:
        proc = subprocess.Popen(
            [*CP_PREFIX, "run", str(path)], cwd=workspace, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "CLAUDE_PERSIST_HEARTBEAT": "0.2", **gate.env(BEFORE_GATE)})
        # Both streams are read by threads of ours to the end (communicate() would race
        # the stderr reader for the last lines).
        out, err = Collected(), Collected()
        assert proc.stdout is not None and proc.stderr is not None
        readers = [threading.Thread(target=collected.read_all, args=(stream,), daemon=True)
                   for collected, stream in ((out, proc.stdout), (err, proc.stderr))]
        for reader in readers:
            reader.start()
        try:
            gate.wait(proc)
            err.wait_for(heartbeat_with_the_tool)
            gate.open()
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for reader in readers:
            reader.join(timeout=10)
    assert proc.returncode == 0, err.text
    assert "after  run" in err.text and "succeeded" in err.text
    assert out.text.strip().endswith("done")


def test_quiet_leaves_only_the_final_line_and_errors(workspace: Path, cp: Runner) -> None:
    path = write(workspace, SLOW)
    ran = cp("run", str(path), "--quiet", env={"CLAUDE_PERSIST_HEARTBEAT": "0.01"})
    assert ran.code == 0, ran.err
    assert ran.err.splitlines() == [ran.err.strip()]
    assert ran.err.startswith("run ") and ": succeeded; 2 steps, 2 succeeded" in ran.err
    assert ran.out.strip() == "done"
    failing = write(workspace, SLOW.replace("echo done", "echo broken >&2; exit 3"), "bad.yml")
    ran = cp("run", str(failing), "--quiet")
    assert ran.code == 1
    lines = ran.err.splitlines()
    assert any("after  run" in line and "failed" in line for line in lines)
    assert any("exit code 3" in line for line in lines)
    assert not any("slow" in line for line in lines)  # the step that succeeded: nothing
    assert any(line.startswith("run ") and ": failed;" in line for line in lines)


def redrawn(text: str) -> bool:
    """The view showed the running step, then was erased and drawn again (a redraw while
    the step runs: the gate holds it)."""
    shown = text.find("  > slow  ")
    return shown >= 0 and "F\x1b[J" in text[shown:]


def test_on_a_terminal_a_live_view_replaces_the_scrolling_lines(workspace: Path,
                                                                 fake_claude: Any) -> None:
    path = write(workspace, SLOW)
    primary, secondary = pty.openpty()
    err = Collected()

    def read() -> None:
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the other end closed
                return
            if not data:
                return
            err.add(data.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with Gate() as gate:
        proc = subprocess.Popen([*CP_PREFIX, "run", str(path)], cwd=workspace,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=secondary, text=True,
                                env={**os.environ, "TERM": "xterm", **gate.env(BEFORE_GATE)})
        try:
            gate.wait(proc)
            err.wait_for(redrawn)  # the view showed the running step, rewritten in place
            gate.open()
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(secondary)
            reader.join(timeout=10)
            os.close(primary)
    assert proc.returncode == 0, err.text
    assert "slow  create worker" in err.text and "succeeded" in err.text  # the end scrolls
    assert "started" not in err.text and "still running" not in err.text


def test_quiet_is_a_flag_of_both_faces(workspace: Path, face: Runner) -> None:
    path = write(workspace, "version: 1\nsteps:\n  - {id: a, create: one, prompt: Hi.}\n")
    ran = face("run", str(path), "--quiet")
    assert ran.code == 0, ran.err
    (line,) = ran.err.splitlines()
    assert line.startswith("run ") and ": succeeded; 1 step, 1 succeeded" in line
    assert "fake reply to turn 1" in ran.out
