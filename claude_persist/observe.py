"""The one seam through which a run is watched: live progress and OpenTelemetry both listen here.

The scheduler reports the run and its steps (a loop's passes and a fan-out's expansions too),
the sessions layer reports each claude call and the stream events of the call as they arrive.
An observer never changes what runs; the one thing it may add is environment for the claude
process (the W3C ``TRACEPARENT`` of the call's span), returned by :meth:`call_started`.

Which step a call belongs to travels with the thread that runs it (:func:`in_step`), so the
sessions layer needs no knowledge of workflows. The records are named tuples: every resume
imports this module, and they cost a fraction of dataclasses to define and to make.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import NamedTuple, Protocol

from .claude.runner import StreamEvent

__all__ = [
    "NULL_OBSERVER",
    "CallInfo",
    "CallOutcome",
    "FanOut",
    "NullObserver",
    "RunInfo",
    "RunObserver",
    "RunOutcome",
    "StepInfo",
    "StepOutcome",
    "StreamEvent",
    "active",
    "call_failed",
    "call_succeeded",
    "fan_out",
    "in_step",
]


class RunInfo(NamedTuple):
    """A workflow run as it starts."""

    run_id: str
    workflow: str
    path: str
    resumed: bool = False
    max_parallel: int = 1


class RunOutcome(NamedTuple):
    status: str
    duration_s: float
    cost_usd: float
    stop_reason: str | None = None


class StepInfo(NamedTuple):
    """A node of the run: a step, a fan-out's expansion (``ID[i]``) or a loop's pass
    (``ID#n``, kind ``pass``). ``parent`` is the key of the node it runs inside, if any."""

    key: str
    step_id: str
    kind: str  # claude, shell, loop, for_each, pass
    parent: str | None = None
    action: str | None = None
    session: str | None = None
    model: str | None = None
    effort: str | None = None
    iteration: int | None = None
    item_index: int | None = None


class StepOutcome(NamedTuple):
    status: str
    error: str | None = None
    duration_s: float = 0.0
    cost_usd: float | None = None
    attempts: int = 0
    exit_code: int | None = None
    session_id: str | None = None
    reused: bool = False


class CallInfo(NamedTuple):
    """One claude call (a turn), inside a workflow step (``step``) or on its own."""

    action: str
    name: str | None
    session_id: str
    new_session_id: str | None = None
    model: str | None = None
    effort: str | None = None
    step: str | None = None


class CallOutcome(NamedTuple):
    """How a call ended: ``exit_code`` is the one of ``errors.EXIT_CODES`` it maps to."""

    ok: bool
    exit_code: int = 0
    error_type: str | None = None
    error: str | None = None
    session_id: str | None = None
    cost_usd: float | None = None
    input_tokens: int | None = None
    """All the input, as the GenAI conventions count it: the cache's reads and writes too."""
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_creation_tokens: int | None = None
    response_model: str | None = None
    num_turns: int | None = None
    events: int = 0


class RunObserver(Protocol):
    """What a watcher of runs and calls implements (every method; :class:`NullObserver` is a
    base that ignores everything). Methods are called from the threads that run the steps."""

    def run_started(self, run: RunInfo) -> None: ...

    def run_finished(self, run: RunInfo, outcome: RunOutcome) -> None: ...

    def step_started(self, step: StepInfo) -> None: ...

    def step_event(self, call: CallInfo, event: StreamEvent) -> None: ...

    def step_finished(self, step: StepInfo, outcome: StepOutcome) -> None: ...

    def call_started(self, call: CallInfo) -> Mapping[str, str]:
        """Environment variables the claude process gets on top of its own (or none)."""
        ...

    def call_finished(self, call: CallInfo, outcome: CallOutcome) -> None: ...


class NullObserver:
    """Watches nothing; subclass it to implement only what you need."""

    def run_started(self, run: RunInfo) -> None:
        pass

    def run_finished(self, run: RunInfo, outcome: RunOutcome) -> None:
        pass

    def step_started(self, step: StepInfo) -> None:
        pass

    def step_event(self, call: CallInfo, event: StreamEvent) -> None:
        pass

    def step_finished(self, step: StepInfo, outcome: StepOutcome) -> None:
        pass

    def call_started(self, call: CallInfo) -> Mapping[str, str]:
        return {}

    def call_finished(self, call: CallInfo, outcome: CallOutcome) -> None:
        pass


NULL_OBSERVER: RunObserver = NullObserver()


class FanOut:
    """Several observers as one, called in order; their environments are merged."""

    def __init__(self, observers: tuple[RunObserver, ...]) -> None:
        self.observers = observers

    def run_started(self, run: RunInfo) -> None:
        for observer in self.observers:
            observer.run_started(run)

    def run_finished(self, run: RunInfo, outcome: RunOutcome) -> None:
        for observer in self.observers:
            observer.run_finished(run, outcome)

    def step_started(self, step: StepInfo) -> None:
        for observer in self.observers:
            observer.step_started(step)

    def step_event(self, call: CallInfo, event: StreamEvent) -> None:
        for observer in self.observers:
            observer.step_event(call, event)

    def step_finished(self, step: StepInfo, outcome: StepOutcome) -> None:
        for observer in self.observers:
            observer.step_finished(step, outcome)

    def call_started(self, call: CallInfo) -> Mapping[str, str]:
        env: dict[str, str] = {}
        for observer in self.observers:
            env.update(observer.call_started(call))
        return env

    def call_finished(self, call: CallInfo, outcome: CallOutcome) -> None:
        for observer in self.observers:
            observer.call_finished(call, outcome)


def fan_out(*observers: RunObserver | None) -> RunObserver:
    """One observer for all those given (None and no-op ones left out)."""
    real: list[RunObserver] = []
    for observer in observers:
        if observer is None or observer is NULL_OBSERVER:
            continue
        real.extend(observer.observers if isinstance(observer, FanOut) else (observer,))
    if not real:
        return NULL_OBSERVER
    return real[0] if len(real) == 1 else FanOut(tuple(real))


_ACTIVE: contextvars.ContextVar[tuple[RunObserver, str] | None] = contextvars.ContextVar(
    "claude_persist_active_step", default=None)


@contextlib.contextmanager
def in_step(observer: RunObserver, key: str) -> Iterator[None]:
    """Calls made by this thread inside the block belong to step ``key``, watched by
    ``observer`` (the run's, which holds the sessions' own)."""
    token = _ACTIVE.set((observer, key))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active(default: RunObserver) -> tuple[RunObserver, str | None]:
    """The observer and step of the call this thread is about to make: the workflow step's, or
    ``default`` (the sessions' own) outside a workflow."""
    found = _ACTIVE.get()
    return (default, None) if found is None else found


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def call_succeeded(raw: Mapping[str, object], cost_usd: float | None) -> CallOutcome:
    """The outcome of a call from the CLI's result object."""
    usage = raw.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    models = raw.get("model_usage_since_last_result") or raw.get("modelUsage")
    model = next(iter(models), None) if isinstance(models, Mapping) and models else None
    session_id = raw.get("session_id")
    fresh = _int(usage.get("input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    return CallOutcome(
        ok=True, session_id=session_id if isinstance(session_id, str) else None,
        cost_usd=cost_usd,
        input_tokens=None if fresh is None else fresh + (read or 0) + (written or 0),
        output_tokens=_int(usage.get("output_tokens")),
        cache_read_tokens=read, cache_creation_tokens=written,
        response_model=model if isinstance(model, str) else None,
        num_turns=_int(raw.get("num_turns")))


def call_failed(error: BaseException) -> CallOutcome:
    """The outcome of a call that raised ``error``."""
    from .errors import exit_code_for

    code = 130 if isinstance(error, KeyboardInterrupt) else exit_code_for(error)
    return CallOutcome(ok=False, exit_code=code, error_type=type(error).__name__,
                       error=str(error)[:1000])
