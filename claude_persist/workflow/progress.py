"""Live progress of a run on stderr: what is running, for how long, and what it is doing.

Three ways, chosen by :func:`for_stream`:

- lines (stderr is not a terminal: CI logs, files): a line as each step starts and ends, and
  while a step runs longer than the heartbeat interval, a heartbeat line every interval
  (elapsed time, stream events so far, last tool used);
- live (a terminal): the lines of steps that ended scroll as usual, and below them a compact
  view of the running steps is rewritten in place;
- quiet (``--quiet``): only failed steps (the caller prints the final line).

The clock is injected and the view is rendered by pure functions, so cadence and frames are
tested without waiting; the ticker thread only calls :meth:`LiveProgress.tick`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

from ..observe import CallInfo, NullObserver, RunInfo, RunOutcome, StreamEvent
from ..terminal import printable
from .report import ProgressPrinter
from .spec import Step, Workflow
from .state import StepState, StepStatus

HEARTBEAT_ENV = "CLAUDE_PERSIST_HEARTBEAT"
DEFAULT_HEARTBEAT = 20.0
"""Seconds: a step running this long gets its first heartbeat line, then one every as long."""
REFRESH_SECONDS = 0.5  # how often the terminal view is redrawn
MAX_VIEW_ROWS = 8

LINES, LIVE, QUIET = "lines", "live", "quiet"


def heartbeat_from(environ: Mapping[str, str]) -> float:
    """The heartbeat interval from ``CLAUDE_PERSIST_HEARTBEAT`` (seconds, > 0)."""
    raw = environ.get(HEARTBEAT_ENV)
    if not raw:
        return DEFAULT_HEARTBEAT
    from ..validate import seconds

    value = seconds(raw, HEARTBEAT_ENV)
    return DEFAULT_HEARTBEAT if value is None else value


def elapsed_text(seconds: float) -> str:
    """``45s``, ``1m05s``, ``2h03m``: short enough for a status line."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


@dataclass
class Running:
    """A step that runs now, as the view shows it."""

    key: str
    label: str
    started: float
    last_beat: float
    events: int = 0
    last_tool: str | None = None

    def status(self, now: float) -> str:
        parts = [elapsed_text(now - self.started)]
        if self.events:
            parts.append(f"{self.events} event{'s' * (self.events != 1)}")
        if self.last_tool:
            parts.append(f"last tool {printable(self.last_tool, lines=False)}")
        return ", ".join(parts)


def heartbeat_line(running: Running, now: float) -> str:
    """One heartbeat: ``  ID  still running: 1m05s, 42 events, last tool Bash``."""
    return f"  {running.label}  still running: {running.status(now)}"


def render_view(running: list[Running], now: float, width: int = 100) -> list[str]:
    """The live view's lines for the steps running now (oldest first), each cut to ``width``."""
    rows = sorted(running, key=lambda r: (r.started, r.key))
    lines = [f"  > {r.label}  {r.status(now)}" for r in rows[:MAX_VIEW_ROWS]]
    if len(rows) > MAX_VIEW_ROWS:
        lines.append(f"  ... and {len(rows) - MAX_VIEW_ROWS} more running")
    return [line if len(line) <= width else line[: max(1, width - 1)] + "~" for line in lines]


def erase(lines: int) -> str:
    """What moves the cursor back over a view of ``lines`` lines and clears it."""
    return f"\x1b[{lines}F\x1b[J" if lines else ""


class _Watcher(NullObserver):
    """The run observer half of :class:`LiveProgress`: the stream events of each step's claude
    call, and the run's end."""

    def __init__(self, progress: LiveProgress) -> None:
        self.progress = progress

    def step_event(self, call: CallInfo, event: StreamEvent) -> None:
        self.progress.stream_event(call.step, event)

    def run_finished(self, run: RunInfo, outcome: RunOutcome) -> None:
        self.progress.close()


class LiveProgress:
    """The scheduler's progress (``execute.Progress``), printing to ``stream`` in one of three
    modes; its :attr:`observer` (for ``workflow.run``) brings in each call's stream events."""

    def __init__(self, workflow: Workflow, stream: TextIO | None = None, *, mode: str = LINES,
                 heartbeat: float = DEFAULT_HEARTBEAT, refresh: float = REFRESH_SECONDS,
                 clock: Callable[[], float] = time.monotonic, width: int | None = None,
                 ticking: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.mode = mode
        self.heartbeat = heartbeat
        self.refresh = refresh
        self.clock = clock
        self.width = width
        self.lines = ProgressPrinter(workflow, self.stream)
        self._lock = threading.RLock()
        self._running: dict[str, Running] = {}
        self._shown = 0  # lines of the live view now on screen
        self._ticking = ticking
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.observer = _Watcher(self)

    # -- execute.Progress ---------------------------------------------------------------------

    def step_started(self, step: Step, state: StepState) -> None:
        if state.kind in ("claude", "shell"):  # a loop or fan-out shows through its steps
            now = self.clock()
            with self._lock:
                self._running[state.id] = Running(state.id, state.id, now, now)
            self._start_ticking()
        if self.mode == LINES:
            self._print(lambda: self.lines.step_started(step, state))

    def step_finished(self, step: Step, state: StepState) -> None:
        with self._lock:
            self._running.pop(state.id, None)
        if self.mode != QUIET or state.status is StepStatus.FAILED:
            self._print(lambda: self.lines.step_finished(step, state))

    def step_retrying(self, step: Step, attempt: int, error: Exception, wait: float) -> None:
        if self.mode != QUIET:
            self._print(lambda: self.lines.step_retrying(step, attempt, error, wait))

    def stream_event(self, step: str | None, event: StreamEvent) -> None:
        """The stream of step ``step``'s call so far."""
        with self._lock:
            running = self._running.get(step or "")
            if running is not None:
                running.events = event.events
                running.last_tool = event.last_tool or running.last_tool

    # -- the clock ----------------------------------------------------------------------------

    def tick(self) -> None:
        """What is due now: heartbeat lines (lines mode) or a fresh view (live mode)."""
        now = self.clock()
        with self._lock:
            if self.mode == LINES:
                due = [r for r in self._running.values()
                       if now - r.last_beat >= self.heartbeat]
                for running in sorted(due, key=lambda r: (r.started, r.key)):
                    running.last_beat = now
                    self.stream.write(heartbeat_line(running, now) + "\n")
                if due:
                    self.stream.flush()
            elif self.mode == LIVE:
                self._redraw(now)

    def close(self) -> None:
        """Stop the ticker and take the live view off the screen."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            if self._shown:
                self.stream.write(erase(self._shown))
                self._shown = 0
                self.stream.flush()

    def _start_ticking(self) -> None:
        if not self._ticking or self.mode == QUIET:
            return
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._tick_loop, name="progress",
                                            daemon=True)
            self._thread.start()

    def _tick_loop(self) -> None:
        pause = self.refresh if self.mode == LIVE else min(1.0, max(0.05, self.heartbeat / 4))
        while not self._stop.wait(pause):
            try:
                self.tick()
            except (OSError, ValueError):  # stderr closed: progress is not worth failing for
                return

    def _print(self, write: Callable[[], None]) -> None:
        """Print a scrolling line; in live mode, under the view's erasure and redraw."""
        with self._lock:
            if self.mode == LIVE and self._shown:
                self.stream.write(erase(self._shown))
                self._shown = 0
            write()
            if self.mode == LIVE:
                self._redraw(self.clock())

    def _redraw(self, now: float) -> None:
        width = self.width or _terminal_width(self.stream)
        frame = render_view(list(self._running.values()), now, width)
        self.stream.write(erase(self._shown) + "".join(line + "\n" for line in frame))
        self.stream.flush()
        self._shown = len(frame)


def _terminal_width(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100
    return columns if columns >= 20 else 100  # a terminal that tells no size says 0


def choose_mode(stream: TextIO, quiet: bool, environ: Mapping[str, str]) -> str:
    """Quiet when asked; the live view on a terminal (not ``TERM=dumb``); else lines."""
    if quiet:
        return QUIET
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return LIVE if terminal and environ.get("TERM", "") != "dumb" else LINES


def for_stream(workflow: Workflow, stream: TextIO | None = None, *, quiet: bool = False,
               environ: Mapping[str, str] | None = None) -> LiveProgress:
    """The progress a run prints on ``stream`` (stderr): quiet, live or lines."""
    stream = stream or sys.stderr
    environ = os.environ if environ is None else environ
    return LiveProgress(workflow, stream, mode=choose_mode(stream, quiet, environ),
                        heartbeat=heartbeat_from(environ))
