"""The scheduler: start ready steps through ``Sessions``, retry transient failures, save the
run's state after every step, stop cleanly on failure, budget or Ctrl-C."""

from __future__ import annotations

import contextlib
import graphlib
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import fsio
from ..claude.command import Action
from ..claude.result import TurnResult
from ..claude.runner import StopReason
from ..errors import (
    CallTimeoutError,
    ClaudeCallError,
    ClaudePersistError,
    InterruptedByUserError,
    SessionBusyError,
    SessionNotFoundError,
    UsageError,
)
from ..sessions import Sessions
from ..settings import CallSettings, merge
from . import expr
from .plan import Plan, sorter
from .report import money
from .spec import Step, Workflow
from .state import RunState, RunStatus, RunStore, StepState, StepStatus, finish, new_run_id, now

#: Step errors that fail the step (and may be retried); anything else aborts the whole run.
STEP_ERRORS = (ClaudeCallError, CallTimeoutError, SessionNotFoundError, SessionBusyError,
               UsageError, InterruptedByUserError)


class Progress(Protocol):
    """Where the scheduler reports what happens (the report module prints it)."""

    def step_started(self, step: Step, state: StepState) -> None: ...

    def step_finished(self, step: Step, state: StepState) -> None: ...

    def step_retrying(self, step: Step, attempt: int, error: Exception, wait: float) -> None: ...


@dataclass(frozen=True)
class RunSettings:
    """How to run: parallelism, resumption and limits."""

    max_parallel: int = 1
    resume_run: bool = False
    run_id: str | None = None
    lock_timeout: float | None = None
    backoff_seconds: float = 2.0


def is_transient(error: Exception) -> bool:
    """Worth a retry: rate limits, server errors, overload, and an idle timeout."""
    if isinstance(error, ClaudeCallError):
        return error.transient
    return isinstance(error, CallTimeoutError) and error.limit == StopReason.IDLE_TIMEOUT


def lookup_in(workflow: Workflow, states: dict[str, StepState], run_id: str | None,
              environ: Mapping[str, str]) -> Callable[[expr.Ref], str | None]:
    """The resolver for ``expr.render``; None (keep the expression) for what is not known.

    Only the environment variables the workflow declares are read (the loader refuses any
    other lookup; this is the second lock on that door)."""

    def lookup(ref: expr.Ref) -> str | None:
        head, *rest = ref.parts
        if head == "vars":
            return workflow.vars.get(rest[0], "")
        if head == "env":
            return environ.get(rest[0], "") if rest[0] in workflow.env else None
        if head == "workflow":
            return workflow.name
        if head == "run":
            return run_id
        state = states.get(rest[0])
        if state is None or state.status in (StepStatus.PENDING, StepStatus.RUNNING):
            return None
        field_name = rest[1]
        if field_name == "output":
            value: Any = state.output
            for key in rest[2:]:
                value = value.get(key) if isinstance(value, dict) else None
            return expr.as_text(value)
        return expr.as_text(getattr(state, field_name))

    return lookup


def step_options(step: Step, settings: RunSettings) -> CallSettings:
    """The step's settings under the run's own flags (``--lock-timeout``)."""
    return merge(CallSettings(lock_timeout=settings.lock_timeout), step.settings)


def call_step(sessions: Sessions, step: Step, prompt: str, options: CallSettings,
              cancel: threading.Event | None = None) -> TurnResult:
    """One attempt of one step. A workflow's ``create:`` always makes a fresh session."""
    if step.action is Action.CREATE:
        return sessions.create(step.session, prompt, options, force=True, cancel=cancel)
    if step.action is Action.FORK:
        return sessions.fork(step.session, step.target, prompt, options, force=True,
                             cancel=cancel)
    return sessions.resume(step.session, prompt, options, cancel=cancel)


def write_output(path: Path, result: TurnResult) -> None:
    """The step's ``output:`` file: the text, or the structured output as JSON."""
    if result.structured_output is not None:
        text = json.dumps(result.structured_output, indent=2) + "\n"
    else:
        text = result.text + ("\n" if not result.text.endswith("\n") else "")
    fsio.write_in_folder(path, text, "the step's output file")


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP for the block (in the main thread): the run is already
    stopping, and a repeated signal must not cut the saving of its state short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kinds = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {kind: signal.signal(kind, signal.SIG_IGN) for kind in kinds}
    try:
        yield
    finally:
        for kind, handler in before.items():
            signal.signal(kind, handler)


class Scheduler:
    """Runs one workflow once. Build it (which takes the run's lock), then call :meth:`run`."""

    def __init__(self, workflow: Workflow, plan: Plan, sessions: Sessions, store: RunStore,
                 settings: RunSettings, progress: Progress) -> None:
        self.workflow = workflow
        self.plan = plan
        self.sessions = sessions
        self.store = store
        self.settings = settings
        self.progress = progress
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._position = {step_id: i for i, step_id in enumerate(plan.order)}
        self._prompts: dict[str, str] = {}
        self._run_lock: fsio.Lock | None = None
        self.state, self._before = self._open()

    def _open(self) -> tuple[RunState, dict[str, StepState]]:
        """The run's state, with its lock held; and, when resuming, its steps as they were."""
        fresh = {s.id: StepState(id=s.id, action=s.action.value, session=s.target,
                                 model=s.settings.model, effort=s.settings.effort,
                                 fingerprint=s.fingerprint)
                 for s in self.workflow.steps}
        wait = self.settings.lock_timeout
        if not self.settings.resume_run:
            run_id = self.settings.run_id or new_run_id()
            self._run_lock = self.store.lock(run_id, wait)
            if self.store.exists(run_id):
                self._release()
                raise UsageError(f"--run-id {run_id}: that run exists already; add "
                                 "--resume-run to continue it, or choose another id")
            return RunState(run_id=run_id, workflow=str(self.workflow.path),
                            workflow_name=self.workflow.name, started_at=now(),
                            vars=dict(self.workflow.vars), steps=fresh, pid=os.getpid()), {}
        run_id = self.settings.run_id or self.store.latest_unfinished().run_id
        self._run_lock = self.store.lock(run_id, wait)
        try:
            old = self.store.load(run_id)  # as its last driver left it, now that it is ours
        except BaseException:
            self._release()
            raise
        return RunState(run_id=run_id, workflow=str(self.workflow.path),
                        workflow_name=self.workflow.name, started_at=old.started_at,
                        vars=dict(self.workflow.vars), steps=fresh,
                        spent_before_usd=old.run_cost_usd, pid=os.getpid()), old.steps

    def _release(self) -> None:
        if self._run_lock is not None:
            lock, self._run_lock = self._run_lock, None
            lock.release()

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> RunState:
        """Run every step that can run; return the final state (saved). Releases the run."""
        try:
            return self._run()
        finally:
            self._release()

    def _run(self) -> RunState:
        began = time.monotonic()
        stop_reason: str | None = None
        self.store.save(self.state)
        graph = sorter(self.plan.deps)
        waiting: list[str] = []  # ready and changed: may start once a worker is free
        running: dict[Future[None], str] = {}
        workers = max(1, self.settings.max_parallel if self.plan.parallel else 1)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step")
        try:
            while True:
                self._take_ready(graph, waiting)
                if stop_reason is None:
                    stop_reason = self._stop_reason()
                if stop_reason is None:
                    waiting.sort(key=self._position.__getitem__)
                    while waiting and len(running) < workers:
                        step_id = waiting.pop(0)
                        running[self._start(pool, step_id)] = step_id
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    step_id = running.pop(future)
                    future.result()  # a fatal error (no claude, unsafe mapping) ends the run
                    if self._settled(step_id):
                        graph.done(step_id)  # what waits for it may start
        except KeyboardInterrupt:
            with interrupts_held():  # a second Ctrl-C must not lose the state
                self.cancel.set()
                wait(list(running))
                self._close(RunStatus.INTERRUPTED, began, "interrupted")
            raise InterruptedByUserError(
                f"interrupted; running steps were stopped. Continue with --resume-run "
                f"(run {self.state.run_id})") from None
        except ClaudePersistError:
            self.cancel.set()
            wait(list(running))
            self._close(RunStatus.FAILED, began, "aborted")
            raise
        finally:
            pool.shutdown(wait=True)
        ok = all(self._settled(step_id) for step_id in self.state.steps)
        self._close(RunStatus.SUCCEEDED if ok else RunStatus.FAILED, began, stop_reason)
        return self.state

    def _take_ready(self, graph: graphlib.TopologicalSorter[str], waiting: list[str]) -> None:
        """Move the steps that became ready to ``waiting``, or settle them at once when an
        earlier invocation of the run did them with exactly the same inputs. Reuse costs
        nothing, so it goes on even once the run stops starting steps."""
        while ready := sorted(graph.get_ready(), key=self._position.__getitem__):
            for step_id in ready:
                if self._reuse(step_id):
                    graph.done(step_id)
                else:
                    waiting.append(step_id)

    def _reuse(self, step_id: str) -> bool:
        step = self.workflow.step(step_id)
        state = self.state.steps[step_id]
        prompt = expr.render(step.prompt, lookup_in(self.workflow, self.state.steps,
                                                    self.state.run_id, os.environ))
        self._prompts[step_id] = prompt
        state.fingerprint = self._fingerprint(step, prompt)
        before = self._before.get(step_id)
        if before is None or before.status is not StepStatus.SUCCEEDED or \
                before.fingerprint != state.fingerprint:
            return False
        reused = StepState(**{**before.__dict__, "reused": True})
        with self._lock:
            self.state.steps[step_id] = reused
            self.store.save(self.state)
        self.progress.step_finished(step, reused)
        return True

    def _fingerprint(self, step: Step, prompt: str) -> str:
        """The step's definition, its rendered prompt, and what the steps it reads left: a
        step runs again when anything it builds on changed, an earlier step's result too."""
        inputs = [[dep, state.fingerprint, state.status, state.session_id, state.result,
                   state.output]
                  for dep in sorted(self.plan.inputs.get(step.id, ()))
                  if (state := self.state.steps.get(dep)) is not None]
        text = json.dumps([step.fingerprint, prompt, inputs], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _stop_reason(self) -> str | None:
        for state in self.state.steps.values():
            if state.status is StepStatus.FAILED and \
                    not self.workflow.step(state.id).continue_on_error:
                return f"step {state.id} failed"
        budget = self.workflow.budget_usd
        spent = self.state.run_cost_usd
        if budget is not None and spent >= budget:
            earlier = (f", {money(self.state.spent_before_usd)} of it by earlier invocations"
                       if self.state.spent_before_usd else "")
            return f"budget_usd {budget:g} spent ({money(spent)} over the run{earlier})"
        return None

    def _settled(self, step_id: str) -> bool:
        """Done in a way that lets what waits for it go on."""
        status = self.state.steps[step_id].status
        return status is StepStatus.SUCCEEDED or (
            status is StepStatus.FAILED and self.workflow.step(step_id).continue_on_error)

    def _start(self, pool: ThreadPoolExecutor, step_id: str) -> Future[None]:
        step = self.workflow.step(step_id)
        state = self.state.steps[step_id]
        state.status = StepStatus.RUNNING
        self.progress.step_started(step, state)
        return pool.submit(self._execute, step, state, self._prompts[step_id])

    def _execute(self, step: Step, state: StepState, prompt: str) -> None:
        began = time.monotonic()
        options = step_options(step, self.settings)
        try:
            for attempt in range(1, step.retries + 2):
                state.attempts = attempt
                try:
                    result = call_step(self.sessions, step, prompt, options, self.cancel)
                except STEP_ERRORS as error:
                    if attempt <= step.retries and is_transient(error) and \
                            not self.cancel.is_set():
                        pause = self.settings.backoff_seconds * 2 ** (attempt - 1)
                        self.progress.step_retrying(step, attempt, error, pause)
                        if not self.cancel.wait(pause):
                            continue
                    state.status, state.error = StepStatus.FAILED, str(error)
                    return
                self._succeeded(step, state, result)
                return
        except ClaudePersistError as fatal:
            state.status, state.error = StepStatus.FAILED, str(fatal)
            raise
        finally:
            state.duration_s = round(time.monotonic() - began, 3)
            with self._lock:
                self.store.save(self.state)
            self.progress.step_finished(step, state)

    def _succeeded(self, step: Step, state: StepState, result: TurnResult) -> None:
        state.status = StepStatus.SUCCEEDED
        state.session_id = result.session_id
        state.cost_usd = result.cost_usd
        state.num_turns = result.num_turns
        state.result = result.text
        state.output = result.structured_output
        state.model, state.effort = result.model, result.effort
        if step.output is not None:
            try:
                write_output(step.output, result)
            except OSError as exc:
                state.status = StepStatus.FAILED
                state.error = f"cannot write output {step.output}: {exc.strerror}"

    def _close(self, status: RunStatus, began: float, reason: str | None) -> None:
        for state in self.state.steps.values():
            if state.status is StepStatus.PENDING:
                state.status = StepStatus.SKIPPED
                state.error = reason or "not reached"
            elif state.status is StepStatus.RUNNING:
                state.status, state.error = StepStatus.FAILED, reason
        finish(self.state, status, time.monotonic() - began, reason)
        self.store.save(self.state)
