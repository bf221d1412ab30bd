"""Effects: the only place that starts a claude process.

It spawns without a shell in a new process group, writes the prompt to stdin and closes it,
hands each stdout line to ``on_line`` as soon as it arrives, drains stderr concurrently (keeping
its tail), and enforces the deadline, the idle timeout and the longest line it accepts. To stop
a call it signals the whole group -- SIGINT, a grace period, SIGTERM, another grace period,
SIGKILL -- so no process of the group survives, even behind a wrapper script that does not
``exec``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from ..errors import ClaudeNotFoundError, UsageError

STDERR_TAIL_BYTES = 64 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024
"""The longest stdout line a call may print. A result line holds the whole answer, so this is
generous; but it is fixed, so output without a newline cannot grow our memory without end."""
READ_BYTES = 64 * 1024
LINE_QUEUE_SIZE = 1024  # bounded: a slow consumer slows the child instead of growing memory
LINE_QUEUE_BYTES = 16 * 1024 * 1024  # and bounded in bytes, since one line may be megabytes
POLL_SECONDS = 0.25
EOF_GRACE_SECONDS = 2.0
_EOF = object()
_TOO_LONG = object()


class StopReason(str, Enum):
    """Why the runner stopped a call; a call that ended by itself has none. The values are the
    words messages use (the deadline of 5s, the idle timeout of 2s)."""

    DEADLINE = "deadline"
    IDLE_TIMEOUT = "idle timeout"
    INTERRUPT = "interrupt"  # Ctrl-C, or the caller's cancel event
    NO_EXIT = "no exit"  # the output ended but the process did not exit by itself
    ERROR = "error"  # on_line raised
    LINE_TOO_LONG = "line too long"  # a stdout line passed ``Limits.max_line_bytes``

    def __str__(self) -> str:  # the value in messages, on every Python version
        return str.__str__(self)


NO_EXIT = StopReason.NO_EXIT
LINE_TOO_LONG = StopReason.LINE_TOO_LONG


@dataclass(frozen=True)
class Limits:
    """How long a call may run, and how long it may stay silent."""

    deadline: float | None = None
    idle_timeout: float | None = None
    grace: float = 3.0
    max_line_bytes: int = MAX_LINE_BYTES


@dataclass(frozen=True)
class ProcessOutcome:
    """What happened to the process; the lines themselves went to ``on_line``."""

    returncode: int
    stopped_by: StopReason | None
    stderr: str
    duration: float
    lines: int


class StreamEvent(NamedTuple):
    """The stream so far, as each stdout line arrives: how many lines, the last tool the model
    asked for (a ``tool_use`` content block of stream-json), and the seconds since the start.
    A named tuple: one is made per line, and that is cheaper than a frozen dataclass."""

    events: int
    last_tool: str | None
    elapsed: float


def tool_used(line: str) -> str | None:
    """The name of the last ``tool_use`` block in a stream-json line, if it has one."""
    if '"tool_use"' not in line:  # most lines: no parse at all
        return None
    try:
        message = json.loads(line).get("message")
    except (ValueError, AttributeError):
        return None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return None
    for block in reversed(content):
        if isinstance(block, dict) and block.get("type") == "tool_use" and \
                isinstance(block.get("name"), str):
            return str(block["name"])
    return None


class _Lines:
    """The stdout lines on their way from the reader thread to the call's loop.

    Bounded in count and in bytes (one line of any size still passes when nothing waits), so
    a child that prints faster than ``on_line`` takes its lines waits instead of filling our
    memory. Once closed, ``put`` drops what it is given and never blocks.
    """

    def __init__(self, max_items: int = LINE_QUEUE_SIZE,
                 max_bytes: int = LINE_QUEUE_BYTES) -> None:
        self._items: collections.deque[tuple[object, int]] = collections.deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._closed = False
        self._changed = threading.Condition()

    def put(self, item: object, size: int = 0) -> None:
        with self._changed:
            while not self._closed and self._items and (
                    len(self._items) >= self._max_items
                    or self._bytes + size > self._max_bytes):
                self._changed.wait()
            if self._closed:
                return
            self._items.append((item, size))
            self._bytes += size
            self._changed.notify_all()

    def get(self, timeout: float) -> object:
        """The next item; ``queue.Empty`` when none came within ``timeout`` seconds."""
        with self._changed:
            if not self._items:
                self._changed.wait(timeout)
                if not self._items:
                    raise queue.Empty
            item, size = self._items.popleft()
            self._bytes -= size
            self._changed.notify_all()
            return item

    def close(self) -> None:
        """Nobody reads any more: drop what waits, and let the reader go on discarding."""
        with self._changed:
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._changed.notify_all()


def _decode(line: bytearray | memoryview) -> str:
    # str() decodes straight from the buffer: no intermediate bytes copy of a big line.
    return str(line, "utf-8", "replace").rstrip("\r")


def _pump_stdout(stream: object, lines: _Lines, max_line_bytes: int) -> None:
    """Split stdout into lines, never holding more than ``max_line_bytes`` of one.

    Past that it reports ``_TOO_LONG`` once and reads on to the end, discarding, so the child
    is never blocked on a full pipe while it is being stopped.
    """
    read = stream.read1 if hasattr(stream, "read1") else stream.read  # type: ignore[attr-defined]
    pending = bytearray()  # the start of a line whose end has not arrived yet
    try:
        while chunk := read(READ_BYTES):
            view = memoryview(chunk)
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                stop = len(chunk) if end == -1 else end
                if len(pending) + stop - start > max_line_bytes:
                    lines.put(_TOO_LONG)
                    pending = bytearray()
                    while read(READ_BYTES):
                        pass
                    return
                if end == -1:
                    pending += view[start:]
                    break
                line: bytearray | memoryview
                if pending:
                    pending += view[start:end]
                    line, pending = pending, bytearray()
                else:
                    line = view[start:end]
                text = _decode(line)
                del line
                lines.put(text, len(text))
                start = end + 1
        if pending:
            text = _decode(pending)
            pending = bytearray()
            lines.put(text, len(text))
    except (OSError, ValueError):
        pass
    finally:
        lines.put(_EOF)


def _drain_stderr(stream: object, tail: bytearray) -> None:
    read = stream.read1 if hasattr(stream, "read1") else stream.read  # type: ignore[attr-defined]
    try:
        while chunk := read(65536):
            tail.extend(chunk)
            if len(tail) > STDERR_TAIL_BYTES:
                del tail[: len(tail) - STDERR_TAIL_BYTES]
    except (OSError, ValueError):
        pass


def _write_what_fits(stream: object, data: bytes) -> bytes:
    """Write as much of ``data`` as the pipe takes without waiting; return the rest.

    A prompt that fits the pipe's buffer (64 KiB on Linux) needs no feeder thread; starting
    one per call was a measurable share of starting eight calls at once.
    """
    fd = stream.fileno()  # type: ignore[attr-defined]
    os.set_blocking(fd, False)
    try:
        written = os.write(fd, data)
    except BlockingIOError:
        written = 0
    except OSError:
        return b""  # the child closed stdin early; its exit status will say why
    finally:
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)
    return data[written:]


def _close_stdin(stream: object) -> None:
    with contextlib.suppress(OSError, ValueError):
        stream.close()  # type: ignore[attr-defined]


def _feed_stdin(stream: object, data: bytes) -> None:
    try:
        stream.write(data)  # type: ignore[attr-defined]
    except (OSError, ValueError):
        pass  # the child closed stdin early; its exit status will say why
    finally:
        _close_stdin(stream)


def live_group_members(pgid: int) -> list[int] | None:
    """The pids of the group's processes that are not zombies, or None where /proc is not there.

    A killed grandchild is reparented to PID 1 and stays a zombie until PID 1 reaps it; in a
    container whose PID 1 never reaps, ``killpg(pgid, 0)`` would see it for ever.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while we looked
        # after "pid (comm)": state, ppid, pgrp
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    """True while a process of the group runs; zombies do not count where /proc tells them."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    members = live_group_members(pgid)
    return members is None or bool(members)


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    proc.poll()  # reap our direct child, so a zombie does not count as alive
    return group_alive(proc.pid)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _wait_group(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for every process of the group to end; True if they did."""
    end = time.monotonic() + seconds
    while _group_alive(proc):
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)
    return True


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the whole group, until nothing of it is left."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            _signal_group(proc, sig)
            if _wait_group(proc, grace):
                return
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: no more patience
    _signal_group(proc, signal.SIGKILL)
    _wait_group(proc, 5.0)


def _spawn(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[bytes]:
    if not cwd.is_dir():
        raise UsageError(
            f"the session's folder {cwd} does not exist any more; claude must run where the "
            "session was created. Recreate the folder, or create a new session."
        )
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise ClaudeNotFoundError(
            f"cannot run the claude command {argv[0]!r}: {exc.strerror}. Install Claude Code "
            "(npm install -g @anthropic-ai/claude-code), or name a claude-compatible command "
            "with --claude-cmd or the CLAUDE_CMD environment variable."
        ) from exc


def run(
    argv: Sequence[str],
    *,
    prompt: str,
    cwd: Path,
    limits: Limits,
    on_line: Callable[[str], bool | None],
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
    pass_fds: Sequence[int] = (),
    on_event: Callable[[StreamEvent], None] | None = None,
) -> ProcessOutcome:
    """Run one claude call to its end (or its limit) and say how it ended.

    ``pass_fds`` are descriptors the process inherits (the session's lock: see ``Turn``).

    ``on_line`` gets each stdout line as it arrives; it returns True once it has seen the
    final line, after which the process only gets a short grace period to exit. Setting
    ``cancel`` (from another thread) stops the call as Ctrl-C would. ``on_event`` gets a
    :class:`StreamEvent` after each line (for progress and telemetry).
    """
    started = time.monotonic()
    proc = _spawn(argv, cwd, env, pass_fds)
    lines = _Lines()
    tail = bytearray()
    rest = _write_what_fits(proc.stdin, prompt.encode("utf-8"))
    workers = [
        threading.Thread(target=_pump_stdout, args=(proc.stdout, lines, limits.max_line_bytes)),
        threading.Thread(target=_drain_stderr, args=(proc.stderr, tail)),
    ]
    if rest:
        workers.append(threading.Thread(target=_feed_stdin, args=(proc.stdin, rest)))
    else:
        _close_stdin(proc.stdin)  # the whole prompt is in the pipe
    for worker in workers:
        worker.daemon = True
        worker.start()

    stopped_by: StopReason | None = None
    count = 0
    last_output = started
    exited_at: float | None = None
    final_seen = False
    last_tool: str | None = None
    try:
        while True:
            if cancel is not None and cancel.is_set():
                stopped_by = StopReason.INTERRUPT
                break
            now = time.monotonic()
            waits = [POLL_SECONDS]
            if limits.deadline is not None:
                waits.append(started + limits.deadline - now)
            if limits.idle_timeout is not None:
                waits.append(last_output + limits.idle_timeout - now)
            try:
                item = lines.get(timeout=max(0.0, min(waits)))
            except queue.Empty:
                now = time.monotonic()
                if final_seen:
                    pass  # the answer is in: limits no longer apply, only the exit is awaited
                elif limits.deadline is not None and now - started >= limits.deadline:
                    stopped_by = StopReason.DEADLINE
                    break
                elif limits.idle_timeout is not None and \
                        now - last_output >= limits.idle_timeout:
                    stopped_by = StopReason.IDLE_TIMEOUT
                    break
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at >= EOF_GRACE_SECONDS:
                    break  # finished, but stdout is still held open (a hang, or a grandchild)
                continue
            if item is _EOF:
                break
            if item is _TOO_LONG:
                stopped_by = StopReason.LINE_TOO_LONG
                break
            last_output = time.monotonic()
            count += 1
            line = str(item)
            if on_event is not None:
                last_tool = tool_used(line) or last_tool
                on_event(StreamEvent(count, last_tool, last_output - started))
            if on_line(line) and not final_seen:
                # The final line is in: from here on only the exit is awaited, so a CLI
                # that hangs after finishing is stopped after a grace period.
                final_seen = True
                exited_at = exited_at or last_output
    except KeyboardInterrupt:
        stopped_by = StopReason.INTERRUPT
    except BaseException:
        # on_line failed (say, our stdout closed): stop claude, re-raise
        stopped_by = StopReason.ERROR
        raise
    finally:
        if stopped_by is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=EOF_GRACE_SECONDS)
            if proc.poll() is None:
                stopped_by = StopReason.NO_EXIT
        if stopped_by is not None:
            stop_group(proc, limits.grace)
        _signal_group(proc, signal.SIGKILL)  # leftovers of a finished call, if any
        proc.wait()
        lines.close()  # a reader still waiting to hand over a line goes on discarding
    for worker in workers[1:]:
        worker.join(timeout=1.0)
    return ProcessOutcome(
        returncode=proc.returncode,
        stopped_by=stopped_by,
        stderr=bytes(tail).decode("utf-8", errors="replace"),
        duration=time.monotonic() - started,
        lines=count,
    )


#: How much of a command's stdout a shell step keeps (like one claude line, it is bounded).
MAX_COMMAND_OUTPUT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class CommandOutcome:
    """How a command (not claude: any process, stdout as text) ended."""

    returncode: int
    stopped_by: StopReason | None
    stdout: str
    stderr: str
    duration: float
    truncated: bool


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    limits: Limits,
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
    max_output_bytes: int = MAX_COMMAND_OUTPUT_BYTES,
) -> CommandOutcome:
    """Run a command through :func:`run` -- the same process group, limits, signals and
    no-survivor guarantee as a claude call -- keeping its stdout (bounded) and stderr tail.
    A command that cannot be started is a :class:`UsageError`."""
    kept: list[str] = []
    size = 0
    truncated = False

    def on_line(line: str) -> None:
        nonlocal size, truncated
        if size + len(line) + 1 > max_output_bytes:
            truncated = True  # keep draining, so the command is not blocked on a full pipe
            return
        kept.append(line)
        size += len(line) + 1

    if not cwd.is_dir():
        raise UsageError(f"cannot run {argv[0]!r}: its folder {cwd} does not exist")
    try:
        outcome = run(argv, prompt="", cwd=cwd, limits=limits, on_line=on_line, env=env,
                      cancel=cancel)
    except ClaudeNotFoundError as exc:
        raise UsageError(f"cannot run the command {argv[0]!r}: "
                         f"{exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else exc}"
                         ) from None
    return CommandOutcome(returncode=outcome.returncode, stopped_by=outcome.stopped_by,
                          stdout="\n".join(kept) + ("\n" if kept else ""),
                          stderr=outcome.stderr, duration=outcome.duration, truncated=truncated)
