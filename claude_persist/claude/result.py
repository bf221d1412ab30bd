"""Pure: stream-json lines and a process outcome -> the result object, or a typed failure.

The CLI's own facts decide: judge by ``is_error`` and the exit code, never by ``subtype`` (API
errors say ``"subtype": "success"``); an exit 0 with no result line is a failure (that is what
SIGINT leaves); "No conversation found" is a missing session, not a plain failure.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    CallTimeoutError,
    ClaudeCallError,
    InterruptedByUserError,
    SessionNotFoundError,
)
from .runner import NO_EXIT, Limits, ProcessOutcome

NOT_FOUND_MARK = "No conversation found"


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


def _stderr_tail(stderr: str, lines: int = 5) -> str:
    kept = [line for line in stderr.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


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
    if outcome.stopped_by in ("deadline", "idle timeout"):
        seconds = limits.deadline if outcome.stopped_by == "deadline" else limits.idle_timeout
        flag = "--deadline" if outcome.stopped_by == "deadline" else "--idle-timeout"
        raise CallTimeoutError(
            f"claude was stopped on {label}: the {outcome.stopped_by} of {seconds:g}s "
            f"({flag}) ran out after {outcome.duration:.1f}s; its process group was ended.",
            limit=outcome.stopped_by,
        )
    if outcome.stopped_by == "interrupt":
        raise InterruptedByUserError(f"interrupted; the claude call on {label} was stopped")
    result = collector.result
    if _mentions_not_found(result, outcome.stderr):
        raise SessionNotFoundError(
            f"claude has no conversation for {label} (it may have been deleted: claude removes "
            "transcripts after cleanupPeriodDays, 30 by default, or it was made from another "
            "folder or config dir). Nothing was started. Create a new session with create "
            "--force, or map another with adopt."
        )
    if result is not None and result.get("is_error"):
        status = result.get("api_error_status")
        raise ClaudeCallError(
            f"claude failed on {label}: {_error_message(result)}",
            api_error_status=status if isinstance(status, int) else None,
        )
    if result is not None and (outcome.returncode == 0 or outcome.stopped_by == NO_EXIT):
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
    raise ClaudeCallError(f"{why} on {label}" + (f":\n{detail}" if detail else ""))


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
