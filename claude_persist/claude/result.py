"""Pure: stream-json lines and a process outcome -> the result object, or a typed failure.

The CLI's own facts decide: judge by ``is_error`` and the exit code, never by ``subtype`` (API
errors say ``"subtype": "success"``); an exit 0 with no result line is a failure (that is what
SIGINT leaves); "No conversation found" is a missing session, not a plain failure. A session id
that is not a UUID is never passed on: ids name files.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    CallTimeoutError,
    ClaudeCallError,
    InterruptedByUserError,
    SessionNotFoundError,
)
from .runner import Limits, ProcessOutcome, StopReason

NOT_FOUND_MARK = "No conversation found"
UUID_RE = re.compile(r"\A[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
STDERR_TAIL_LINES = 5
STDERR_TAIL_CHARS = 2000


@dataclass
class StreamCollector:
    """Watches the stream line by line, keeping only what the verdict needs (memory stays flat)."""

    result: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    garbage_lines: int = 0
    garbage_sample: str = ""

    def feed(self, line: str) -> bool:
        """Take one line; True once the final ``result`` line has arrived."""
        text = line.strip()
        if not text:
            return False
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self.garbage_lines += 1
            if not self.garbage_sample:
                self.garbage_sample = text[:200]
            return False
        kind = obj.get("type")
        if kind == "system" and obj.get("subtype") == "init":
            self.init = obj
        elif kind == "result":
            self.result = obj
            return True
        return False

    @property
    def cli_version(self) -> str | None:
        """The CLI version that the init line reports, when it does."""
        version = (self.init or {}).get("claude_code_version")
        return version if isinstance(version, str) else None


@dataclass(frozen=True)
class TurnResult:
    """One successful turn: the answer and what it cost."""

    session_id: str
    text: str
    raw: dict[str, Any]
    name: str | None = None
    mapping_file: str | None = None
    model: str | None = None
    effort: str | None = None
    cost_usd: float | None = None
    structured_output: Any = None
    num_turns: int | None = None
    duration_ms: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """The CLI's result object plus ``name`` and ``mapping_file`` (what ``--json`` prints)."""
        return {**self.raw, "name": self.name, "mapping_file": self.mapping_file}


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _stderr_tail(stderr: str) -> str:
    """The last few non-empty lines, cut to their last ``STDERR_TAIL_CHARS`` characters."""
    kept = [line for line in stderr.strip().splitlines() if line.strip()][-STDERR_TAIL_LINES:]
    tail = "\n".join(kept)
    return tail if len(tail) <= STDERR_TAIL_CHARS else "..." + tail[-STDERR_TAIL_CHARS:]


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def is_session_id(value: object) -> bool:
    """True for a UUID in its usual 8-4-4-4-12 form, the only session id we pass on."""
    return isinstance(value, str) and UUID_RE.match(value) is not None


def _bad_session_id(collector: StreamCollector) -> tuple[str, object] | None:
    """The first init or result line whose ``session_id`` is there but not a UUID."""
    for where, line in (("init", collector.init), ("result", collector.result)):
        if line is not None and "session_id" in line and not is_session_id(line["session_id"]):
            return where, line["session_id"]
    return None


def _text_field(line: Mapping[str, Any], key: str) -> str | None:
    value = line.get(key)
    return value if isinstance(value, str) else None


def _call_error(message: str, collector: StreamCollector,
                outcome: ProcessOutcome) -> ClaudeCallError:
    """The error with the facts of the call as fields, not only in its message."""
    result: Mapping[str, Any] = collector.result or {}
    status = result.get("api_error_status")
    session_id = next((line.get("session_id") for line in (result, collector.init or {})
                       if is_session_id(line.get("session_id"))), None)
    return ClaudeCallError(
        message,
        exit_code=outcome.returncode if outcome.stopped_by is None else None,
        stderr_tail=_stderr_tail(outcome.stderr),
        subtype=_text_field(result, "subtype"),
        api_error_status=status if isinstance(status, int) and not isinstance(status, bool)
        else None,
        terminal_reason=_text_field(result, "terminal_reason"),
        session_id=session_id,
    )


def _error_message(result: dict[str, Any]) -> str:
    """The CLI's own words, led by its subtype unless that is the misleading "success"."""
    errors = result.get("errors")
    parts = [str(result["result"])] if result.get("result") else []
    if isinstance(errors, list):
        parts.extend(str(e) for e in errors)
    subtype = result.get("subtype")
    if subtype and subtype != "success":
        parts.insert(0, f"{subtype}:")
    return " ".join(parts) if parts else "an error without a message"


def _mentions_not_found(result: dict[str, Any] | None, stderr: str) -> bool:
    if NOT_FOUND_MARK in stderr:
        return True
    if result is None or "result" in result:
        return False
    return any(NOT_FOUND_MARK in str(e) for e in result.get("errors") or [])


def verdict(
    collector: StreamCollector, outcome: ProcessOutcome, limits: Limits, label: str
) -> dict[str, Any]:
    """The successful result object, or raise the typed error that explains the failure."""
    if outcome.stopped_by in (StopReason.DEADLINE, StopReason.IDLE_TIMEOUT):
        deadline = outcome.stopped_by == StopReason.DEADLINE
        seconds = limits.deadline if deadline else limits.idle_timeout
        allowed = f"{seconds:g}s" if seconds is not None else "its limit"
        what = (f"it ran past its deadline of {allowed} (--deadline)" if deadline
                else f"it printed nothing for its idle timeout of {allowed} (--idle-timeout)")
        raise CallTimeoutError(
            f"claude was stopped on {label}: {what}; its process group was ended.",
            limit=outcome.stopped_by, seconds=seconds,
        )
    if outcome.stopped_by == StopReason.INTERRUPT:
        raise InterruptedByUserError(f"interrupted; the claude call on {label} was stopped")
    if outcome.stopped_by == StopReason.LINE_TOO_LONG:
        raise _call_error(
            f"claude printed a line longer than {_size_text(limits.max_line_bytes)} on {label}, "
            "the most one line of its output may hold; the call was stopped and its process "
            "group ended. Check that the claude command prints stream-json (a genuine claude "
            "does).", collector, outcome)
    bad_id = _bad_session_id(collector)
    if bad_id is not None:
        where, value = bad_id
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise _call_error(
            f"claude reported the session id {shown} in its {where} line on {label}: not a "
            "UUID, so it was not used (session ids name files) and the call failed. Check "
            "that the claude command is a genuine claude.", collector, outcome)
    result = collector.result
    if _mentions_not_found(result, outcome.stderr):
        raise SessionNotFoundError(
            f"claude has no conversation for {label} (it may have been deleted: claude removes "
            "transcripts after cleanupPeriodDays, 30 by default, or it was made from another "
            "folder or config dir). Nothing was started. Create a new session with create "
            "--force, or map another with adopt."
        )
    if result is not None and result.get("is_error"):
        raise _call_error(f"claude failed on {label}: {_error_message(result)}", collector,
                          outcome)
    if result is not None and (outcome.returncode == 0
                               or outcome.stopped_by == StopReason.NO_EXIT):
        return result
    detail = _stderr_tail(outcome.stderr)
    if result is not None:
        why = f"claude {_exit_text(outcome.returncode)} after its result"
    elif outcome.returncode == 0:
        why = "claude exited 0 without a result line (it was interrupted, or is not claude)"
    else:
        why = f"claude {_exit_text(outcome.returncode)} without a result"
    if collector.garbage_lines and result is None:
        why += f"; its output was not stream-json, e.g. {collector.garbage_sample!r}"
    raise _call_error(f"{why} on {label}" + (f":\n{detail}" if detail else ""), collector,
                      outcome)


def _version_tuple(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in version.split(".")[:3])
    except ValueError:
        return None


def turn_cost(reported: Any, previous_total: float | None, cli_version: str | None) -> float | None:
    """What this one call cost, from the ``total_cost_usd`` the CLI reported.

    Newer CLIs (2.1.330) report the session's running total after a resume, 2.1.197 the call
    alone. Known versions decide; without a version, a figure below the last total can only be
    a per-call one. ``previous_total`` is the total reported by the session's previous call.
    """
    if not isinstance(reported, (int, float)):
        return None
    if previous_total is None:
        return float(reported)
    parsed = _version_tuple(cli_version) if cli_version else None
    if parsed is not None and parsed <= (2, 1, 197):
        return float(reported)
    if parsed is None and reported < previous_total:
        return float(reported)
    return max(0.0, float(reported) - previous_total)


def _own_cost(result: Mapping[str, Any]) -> float | None:
    """The call's own cost from ``model_usage_since_last_result`` (the sum of its models'
    ``costUSD``), or None when the line does not carry a usable one."""
    usage = result.get("model_usage_since_last_result")
    if not isinstance(usage, dict):
        return None
    total = 0.0
    for entry in usage.values():
        cost = entry.get("costUSD") if isinstance(entry, dict) else None
        if not isinstance(cost, (int, float)) or isinstance(cost, bool) or cost < 0:
            return None
        total += cost
    return total


def call_cost(result: Mapping[str, Any], previous_total: float | None,
              cli_version: str | None) -> float | None:
    """What this one call cost.

    The CLI's own figure when the result line has it (``model_usage_since_last_result``, this
    call's usage per model: exact even when a turn was made outside claude-persist, or a
    fork carried the source's total); else the figure :func:`turn_cost` derives from
    ``total_cost_usd``.
    """
    own = _own_cost(result)
    if own is not None:
        return own
    return turn_cost(result.get("total_cost_usd"), previous_total, cli_version)
