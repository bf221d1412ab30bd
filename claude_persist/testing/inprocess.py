"""An in-process stand-in for the claude CLI, behind the turn runner seam.

``Sessions(..., turn_runner=InProcessClaude())`` answers every call without a process: fast
tests of the API and the workflow scheduler. It keeps each session's turns (so a resumed session
counts them, as the fake CLI does), forks by copying them, refuses an unknown session id as the
CLI does, honours ``--json-schema`` with an example value, and can be told to fail calls. What
needs a real process (signals, limits, the stream) stays with the fake CLI,
``python -m claude_persist.testing.fake_claude``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..claude.call import Answer, Turn
from ..claude.command import Action
from ..errors import ClaudeCallError, SessionNotFoundError
from .fake_claude import schema_example


@dataclass(frozen=True)
class Call:
    """One call the stand-in answered (or failed): what it was asked, and with which settings."""

    action: Action
    session_id: str
    prompt: str
    argv: list[str]
    turn: Turn


@dataclass
class InProcessClaude:
    """A turn runner that answers in process. ``cost`` is each call's cost in USD."""

    cost: float = 0.0125
    sessions: dict[str, list[str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    failures: list[BaseException | Callable[[Turn], BaseException | None]] = field(
        default_factory=list)
    """Raised (or called, and raised if they return an error) by the next calls, in order."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail_next(self, *errors: BaseException | Callable[[Turn], BaseException | None]) -> None:
        """Make the next calls fail with these errors, one each."""
        with self._lock:
            self.failures.extend(errors)

    def __call__(self, turn: Turn) -> Answer:
        spec = turn.spec
        with self._lock:
            self.calls.append(Call(spec.action, spec.session_id, turn.prompt, turn.argv, turn))
            failure = self.failures.pop(0) if self.failures else None
            if failure is not None and not isinstance(failure, BaseException):
                failure = failure(turn)
            if failure is not None:
                raise failure
            if spec.action is Action.CREATE:
                if spec.session_id in self.sessions:
                    raise ClaudeCallError(f"Session ID {spec.session_id} is already in use")
                session_id, turns = spec.session_id, []
            else:
                if spec.session_id not in self.sessions:
                    raise SessionNotFoundError(
                        f"No conversation found with session ID: {spec.session_id}")
                turns = list(self.sessions[spec.session_id])
                session_id = (spec.new_session_id or spec.session_id
                              if spec.action is Action.FORK else spec.session_id)
            turns.append(turn.prompt)
            self.sessions[session_id] = turns
        settings = spec.settings
        text = (f"fake reply to turn {len(turns)} of session {session_id} (model "
                f"{settings.model or 'default'}, effort {settings.effort or 'default'}): "
                f"{' '.join(turn.prompt.split())[:80]}")
        raw: dict[str, Any] = {
            "type": "result", "subtype": "success", "is_error": False, "result": text,
            "session_id": session_id, "num_turns": 1, "duration_ms": 1,
            "total_cost_usd": self.cost * len(turns),
        }
        if settings.json_schema is not None:
            raw["structured_output"] = schema_example(json.loads(settings.json_schema))
        if turn.on_line is not None:
            turn.on_line(json.dumps({"type": "system", "subtype": "init",
                                     "session_id": session_id}))
            turn.on_line(json.dumps(raw))
        return Answer(raw=raw, cost_usd=self.cost)

    def turns(self, session_id: str) -> list[str]:
        """The prompts a session has been sent, in order (a fork's include its source's)."""
        with self._lock:
            return list(self.sessions.get(session_id, []))

