"""One turn: argv -> runner -> verdict. The seam between the sessions layer and processes.

:class:`Sessions` hands a :class:`Turn` to a :data:`TurnRunner` and gets an :class:`Answer` back.
The default runner, :func:`run_turn`, starts the claude command; tests of the API and the workflow
scheduler may pass ``claude_persist.testing.InProcessClaude`` instead, which answers in process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import runner
from .command import CallSpec, build_argv
from .result import StreamCollector, call_cost, verdict


@dataclass(frozen=True)
class Turn:
    """Everything one call needs: the command, what to run, where, and how to watch it."""

    claude_cmd: Sequence[str]
    spec: CallSpec
    prompt: str
    cwd: Path
    label: str
    previous_total: float | None = None
    """The session's last running total of cost, for CLIs that report one."""
    env: Mapping[str, str] | None = None
    on_line: Callable[[str], None] | None = None
    on_event: Callable[[runner.StreamEvent], None] | None = None
    """Told of the stream after each line (its count, the last tool used)."""
    cancel: threading.Event | None = None
    hold_open: tuple[int, ...] = ()
    """Descriptors the claude process inherits: the session lock's, so that a claude left
    running by a parent killed with ``kill -9`` keeps the session locked until it ends."""

    @property
    def argv(self) -> list[str]:
        return build_argv(self.claude_cmd, self.spec)


@dataclass(frozen=True)
class Answer:
    """A successful call: the CLI's result object, this call's own cost, and any notes."""

    raw: dict[str, Any]
    cost_usd: float | None
    notes: tuple[str, ...] = ()


#: Runs one turn, raising the typed errors of :mod:`claude_persist.errors` when it fails.
TurnRunner = Callable[[Turn], Answer]


def run_turn(turn: Turn) -> Answer:
    """Run ``turn`` through the claude command and judge it."""
    settings = turn.spec.settings
    limits = runner.Limits(deadline=settings.deadline, idle_timeout=settings.idle_timeout)
    collector = StreamCollector()
    user_callback = turn.on_line

    def on_line(line: str) -> bool:
        done = collector.feed(line)
        if user_callback is not None:
            user_callback(line)
        return done

    outcome = runner.run(turn.argv, prompt=turn.prompt, cwd=turn.cwd, limits=limits,
                         on_line=on_line, env=turn.env, cancel=turn.cancel,
                         pass_fds=turn.hold_open, on_event=turn.on_event)
    raw = verdict(collector, outcome, limits, turn.label)
    notes: tuple[str, ...] = ()
    if outcome.stopped_by == runner.NO_EXIT:
        notes = ("claude did not exit after its result; its process group was stopped",)
    cost = call_cost(raw, turn.previous_total, collector.cli_version)
    return Answer(raw=raw, cost_usd=cost, notes=notes)
