"""The scheduler: start ready steps through ``Sessions``, retry transient failures, save the
run's state after every step, stop cleanly on failure, budget or Ctrl-C."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from .. import fsio, observe
from ..claude.command import Action
from ..claude.result import TurnResult
from ..claude.runner import Limits, StopReason, run_command
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
from .state import (
    RunState,
    RunStatus,
    RunStore,
    StepState,
    StepStatus,
    finish,
    new_run_id,
    now,
    usage_tokens,
)

#: Step errors that fail the step (and may be retried); anything else aborts the whole run.
STEP_ERRORS = (ClaudeCallError, CallTimeoutError, SessionNotFoundError, SessionBusyError,
               UsageError, InterruptedByUserError)


class Progress(Protocol):
    """Where the scheduler reports what happens (the report module prints it)."""

    def step_started(self, step: Step, state: StepState) -> None: ...

    def step_finished(self, step: Step, state: StepState) -> None: ...

    def step_retrying(self, step: Step, attempt: int, error: Exception, wait: float) -> None: ...


class _Observed:
    """The scheduler's progress, also told to the run's observer (``observe``)."""

    def __init__(self, progress: Progress, scheduler: Scheduler) -> None:
        self.progress = progress
        self.scheduler = scheduler

    def step_started(self, step: Step, state: StepState) -> None:
        self.scheduler.observer.step_started(self.scheduler.step_info(step, state))
        self.progress.step_started(step, state)

    def step_finished(self, step: Step, state: StepState) -> None:
        self.scheduler.observer.step_finished(
            self.scheduler.step_info(step, state),
            observe.StepOutcome(status=str(state.status), error=state.error,
                                duration_s=state.duration_s, cost_usd=state.cost_usd,
                                attempts=state.attempts, exit_code=state.exit_code,
                                session_id=state.session_id, reused=state.reused))
        self.progress.step_finished(step, state)

    def step_retrying(self, step: Step, attempt: int, error: Exception, wait: float) -> None:
        self.progress.step_retrying(step, attempt, error, wait)


_INDEX = re.compile(r"\[(\d+)\]$")


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


@dataclass(frozen=True)
class Scope:
    """Where a step runs: the prefix of its state key (``implement[3]/`` inside an expansion),
    its element and index in a fan-out, its loop pass; and the scope around it."""

    prefix: str = ""
    item: Any = None
    item_index: int | None = None
    iteration: int | None = None
    outer: Scope | None = None

    def chain(self) -> list[Scope]:
        found: list[Scope] = []
        scope: Scope | None = self
        while scope is not None:
            found.append(scope)
            scope = scope.outer
        return found


def resolver(workflow: Workflow, states: Mapping[str, StepState], run_id: str | None,
             environ: Mapping[str, str], scope: Scope = Scope()) -> Callable[[expr.Ref], Any]:
    """Each lookup's value; :class:`expr.Unknown` for what is not known (yet).

    ``steps.X`` is the state of X in the innermost scope that has one (inside a fan-out's
    expansion, its own steps first). Only the environment variables the workflow declares are
    read (the loader refuses any other lookup; this is the second lock on that door)."""

    def lookup(ref: expr.Ref) -> Any:
        head, *rest = ref.parts
        if head == "vars":
            return workflow.vars.get(rest[0], "")
        if head == "env":
            if rest[0] not in workflow.env:
                raise expr.Unknown(ref.text)
            return environ.get(rest[0], "")
        if head == "workflow":
            return workflow.name
        if head == "run":
            if run_id is None:
                raise expr.Unknown(ref.text)
            return run_id
        chain = scope.chain()
        if head == "loop":
            iteration = next((s.iteration for s in chain if s.iteration is not None), None)
            if iteration is None:
                raise expr.Unknown(ref.text)
            return iteration
        if head in ("item", "item_index"):
            holder = next((s for s in chain if s.item_index is not None), None)
            if holder is None:
                raise expr.Unknown(ref.text)
            if head == "item_index":
                return holder.item_index
            value: Any = holder.item
            for key in rest:
                value = value.get(key) if isinstance(value, dict) else None
            return value
        state = next((got for s in chain
                      if (got := states.get(s.prefix + rest[0])) is not None), None)
        if state is None or state.status in (StepStatus.PENDING, StepStatus.RUNNING):
            raise expr.Unknown(ref.text)
        field_name = rest[1]
        if field_name == "output":
            value = state.output
            for key in rest[2:]:
                value = value.get(key) if isinstance(value, dict) else None
            return value
        if field_name == "status":
            return str(state.status)
        return getattr(state, field_name)

    return lookup


def lookup_in(workflow: Workflow, states: dict[str, StepState], run_id: str | None,
              environ: Mapping[str, str]) -> Callable[[expr.Ref], Any]:
    """The resolver of the top scope (kept for callers of the earlier name)."""
    return resolver(workflow, states, run_id, environ)


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


SKIPPED_BY_IF = "skipped: if: "
SHELL_TIMEOUT_EXIT = 124  # what timeout(1) reports for a command it stopped


class Scheduler:
    """Runs one workflow once. Build it (which takes the run's lock), then call :meth:`run`.

    Top-level steps are ordered by the plan's graph; a loop runs its steps in order inside
    its worker, a fan-out runs its expansions on a pool of its own. Every process (a claude
    call or a command) takes one of the run's ``max_parallel`` slots, so the limit covers
    expansions too, and each session has a lock, so it never runs two turns at once."""

    def __init__(self, workflow: Workflow, plan: Plan, sessions: Sessions, store: RunStore,
                 settings: RunSettings, progress: Progress,
                 observer: observe.RunObserver | None = None) -> None:
        self.workflow = workflow
        self.plan = plan
        self.sessions = sessions
        self.store = store
        self.settings = settings
        # The sessions' own observer (telemetry) sees the run too, so its calls nest in steps.
        self.observer = observe.fan_out(sessions.observer, observer)
        self.progress: Progress = _Observed(progress, self)
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._position = {step_id: i for i, step_id in enumerate(plan.order)}
        self._run_lock: fsio.Lock | None = None
        self._workers = max(1, settings.max_parallel if plan.parallel else 1)
        self._slots = threading.BoundedSemaphore(self._workers)
        self._session_locks: dict[str, threading.Lock] = {}
        self._failed: str | None = None  # the first step that failed and stops the run
        self._first_stop: str | None = None
        self.state, self._before = self._open()

    def _open(self) -> tuple[RunState, dict[str, StepState]]:
        """The run's state, with its lock held; and, when resuming, its steps as they were."""
        fresh = {s.id: self._fresh(s, s.id, s.for_each is not None)
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
                            vars=dict(self.workflow.vars), steps=fresh, pid=os.getpid(),
                            spent_usd=0.0), {}
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
                        spent_before_usd=old.run_cost_usd, pid=os.getpid(),
                        spent_usd=0.0), old.steps

    @staticmethod
    def _fresh(step: Step, key: str, fans_out: bool = False) -> StepState:
        """A pending state for ``step`` run as ``key`` (a fan-out's own, or one of its
        expansions, which is of the step's kind)."""
        kind = "for_each" if fans_out else step.kind
        return StepState(id=key, action=step.action.value if kind == "claude" else kind,
                         session=step.target if step.kind == "claude" else "",
                         model=step.settings.model if step.kind == "claude" else None,
                         effort=step.settings.effort if step.kind == "claude" else None,
                         fingerprint=step.fingerprint, kind=kind)

    def _release(self) -> None:
        if self._run_lock is not None:
            lock, self._run_lock = self._run_lock, None
            lock.release()

    # -- the top-level loop -------------------------------------------------------------------

    def run(self) -> RunState:
        """Run every step that can run; return the final state (saved). Releases the run."""
        try:
            return self._run()
        finally:
            self._release()

    def _run(self) -> RunState:
        began = time.monotonic()
        graph = sorter(self.plan.deps)
        waiting: list[str] = []  # ready: may start once a worker is free
        running: dict[Future[None], str] = {}
        pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="step")
        # An interrupt may land anywhere from here on, the first save included: each one
        # ends in a closed, saved state. Stopping waits for the pool, not for ``running``:
        # a step submitted just before the interrupt may not be in ``running`` yet.
        try:
            self.store.save(self.state)
            self.observer.run_started(self.run_info())
            while True:
                waiting.extend(graph.get_ready())
                waiting.sort(key=self._position.__getitem__)
                passed_over = False
                while waiting and len(running) < self._workers:
                    step_id = waiting.pop(0)
                    if self._may_start(step_id):
                        running[pool.submit(self._top, self.workflow.step(step_id))] = step_id
                    else:
                        graph.done(step_id)  # what waits for it decides by its own if:
                        passed_over = True
                if passed_over:
                    continue
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    step_id = running.pop(future)
                    future.result()  # a fatal error (no claude, unsafe mapping) ends the run
                    graph.done(step_id)  # what waits for it decides by its own if:
        except KeyboardInterrupt:
            with interrupts_held():  # a second Ctrl-C must not lose the state
                self.cancel.set()
                pool.shutdown(wait=True, cancel_futures=True)  # a step not begun never will
                self._close(RunStatus.INTERRUPTED, began, "interrupted")
            raise InterruptedByUserError(
                f"interrupted; running steps were stopped. Continue with --resume-run "
                f"(run {self.state.run_id})") from None
        except ClaudePersistError:
            self.cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._close(RunStatus.FAILED, began, "aborted")
            raise
        finally:
            pool.shutdown(wait=True)
        stop_reason = self._stop_reason()
        ok = self._failed is None and all(self._settled(s.id) for s in self.workflow.steps)
        self._close(RunStatus.SUCCEEDED if ok else RunStatus.FAILED, began, stop_reason)
        return self.state

    def _may_start(self, step_id: str) -> bool:
        """A top-level step starts unless the run stopped or a step it reads failed, when its
        ``if:`` does not say ``always()`` or ``failure()``; it stays pending (and is reported
        skipped, with the reason)."""
        step = self.workflow.step(step_id)
        after_failure = step.condition is not None and step.condition.reads_status
        if after_failure:
            return True
        if self._stop_reason() is not None or self.cancel.is_set():
            return False
        inputs = self.plan.inputs.get(step_id, frozenset()) | self.plan.deps.get(step_id,
                                                                                 frozenset())
        failed = [d for d in sorted(inputs) if not self._settled(d)]
        if failed:
            state = self.state.steps[step_id]
            state.status = StepStatus.SKIPPED
            state.error = f"skipped: {', '.join(failed)} did not succeed"
            self._record(state)
            self.progress.step_finished(step, state)
            return False
        return True

    def _top(self, step: Step) -> None:
        inputs = self.plan.inputs.get(step.id, frozenset()) | self.plan.deps.get(step.id,
                                                                                 frozenset())
        failed = any(not self._settled(d) for d in inputs)
        self._node(step, Scope(), step.id, failed)

    # -- one step, of any kind ----------------------------------------------------------------

    def _record(self, state: StepState) -> None:
        """Append the step's state to the run's journal (O(1), whatever the run's size)."""
        with self._lock:
            self.state.steps[state.id] = state
            self.store.append(self.state.run_id, state)

    def _resolve(self, scope: Scope) -> Callable[[expr.Ref], Any]:
        return resolver(self.workflow, self.state.steps, self.state.run_id, os.environ, scope)

    def _node(self, step: Step, scope: Scope, key: str, failed_before: bool,
              expand: bool = True, parent: str | None = None) -> StepState:
        """Run ``step`` as ``key`` in ``scope``: check its ``if:``, then fan it out, loop it
        or call it. Returns its final state (recorded)."""
        state = self._fresh(step, key, expand and step.for_each is not None)
        state.parent = parent
        with self._lock:
            self.state.steps[key] = state
        if step.condition is not None:
            try:
                go = expr.truthy(expr.evaluate(step.condition, self._resolve(scope),
                                               expr.Status(failed=failed_before)))
            except (expr.ExprError, expr.Unknown) as exc:
                return self._fail(step, state, f"if: {exc}")
            if not go:
                state.status = StepStatus.SKIPPED
                state.error = f"{SKIPPED_BY_IF}{expr.shown(step.condition.text)} was false"
                self._record(state)
                self.progress.step_finished(step, state)
                return state
        elif failed_before:
            state.status = StepStatus.SKIPPED
            state.error = "skipped: a step it depends on failed"
            self._record(state)
            self.progress.step_finished(step, state)
            return state
        if expand and step.for_each is not None:
            return self._fan(step, scope, state)
        if step.kind == "loop":
            return self._loop(step, scope, state)
        return self._leaf(step, scope, state, expr.Status(failed=failed_before))

    def _fail(self, step: Step, state: StepState, message: str) -> StepState:
        state.status, state.error = StepStatus.FAILED, message
        self._note_failure(step, state)
        self._record(state)
        self.progress.step_finished(step, state)
        return state

    def _note_failure(self, step: Step, state: StepState) -> None:
        if state.status is StepStatus.FAILED and not step.continue_on_error:
            with self._lock:
                self._failed = self._failed or state.id

    # -- loops --------------------------------------------------------------------------------

    def _loop(self, step: Step, scope: Scope, state: StepState) -> StepState:
        """Run the loop's steps in order, then check ``until``; again, up to max_iterations.
        A resumed run starts at the pass where the earlier one stopped."""
        assert step.until is not None  # the loader requires it
        began = time.monotonic()
        # Once: a loop inside another starts its later outer passes from 1.
        with self._lock:
            before = self._before.pop(state.id, None)
        first = before.iteration if before is not None and before.iteration else 1
        state.status = StepStatus.RUNNING
        self.progress.step_started(step, state)
        last: Any = None
        current: observe.StepInfo | None = None
        broken = False
        for iteration in range(min(first, step.max_iterations), step.max_iterations + 1):
            if current is not None:  # the previous pass went through; its until was false
                self.observer.step_finished(current, observe.StepOutcome(status="succeeded"))
            state.iteration = iteration
            self._record(state)
            current = observe.StepInfo(key=f"{state.id}#{iteration}", step_id=step.id,
                                       kind="pass", parent=state.id,
                                       iteration=iteration)
            self.observer.step_started(current)
            inner = Scope(prefix=scope.prefix, iteration=iteration, outer=scope)
            broken = False
            for body in step.body:
                if self.cancel.is_set():
                    broken = True
                    break
                result = self._node(body, inner, scope.prefix + body.id, broken,
                                    parent=state.id)
                if result.status is StepStatus.FAILED and not body.continue_on_error:
                    broken = True
            if self.cancel.is_set():
                state.status, state.error = StepStatus.FAILED, "interrupted"
                break
            if broken:
                state.status = StepStatus.FAILED
                state.error = f"loop {step.id}: a step failed in pass {iteration}"
                break
            try:
                last = expr.evaluate(step.until, self._resolve(inner))
            except (expr.ExprError, expr.Unknown) as exc:
                state.status, state.error = StepStatus.FAILED, f"until: {exc}"
                break
            if expr.truthy(last):
                state.status = StepStatus.SUCCEEDED
                break
        else:
            state.status = StepStatus.FAILED
            state.error = (f"loop {step.id}: until {expr.shown(step.until.text)} was still "
                           f"{expr.as_text(last) or 'false'} after {step.max_iterations} "
                           "iterations")
        if current is not None:
            self.observer.step_finished(current, observe.StepOutcome(
                status="failed" if broken or self.cancel.is_set() else "succeeded",
                error=state.error if broken else None))
        state.duration_s = round(time.monotonic() - began, 3)
        self._note_failure(step, state)
        self._record(state)
        self.progress.step_finished(step, state)
        return state

    # -- fan-out ------------------------------------------------------------------------------

    def _fan(self, step: Step, scope: Scope, state: StepState) -> StepState:
        """One expansion per element, each as ``ID[index]``; their sessions are rendered and
        checked distinct before any of them runs."""
        began = time.monotonic()
        if isinstance(step.for_each, expr.Expression):
            try:
                items = expr.evaluate(step.for_each, self._resolve(scope))
            except (expr.ExprError, expr.Unknown) as exc:
                return self._fail(step, state, f"for_each: {exc}")
        else:
            items = list(step.for_each or ())
        if not isinstance(items, (list, tuple)):
            return self._fail(step, state, f"for_each: {expr.shown(str(step.for_each))} gave "
                                           f"{type(items).__name__}, not a list")
        scopes = [Scope(prefix=f"{state.id}[{i}]/", item=item, item_index=i, outer=scope)
                  for i, item in enumerate(items)]
        problem = self._distinct_sessions(step, scopes)
        if problem:
            return self._fail(step, state, problem)
        state.status = StepStatus.RUNNING
        self.progress.step_started(step, state)
        limit = max(1, min(step.fan_parallel or self._workers, self._workers, len(items) or 1))
        results: list[StepState] = []
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="fan") as pool:
            futures = [pool.submit(self._expansion, step, s, f"{state.id}[{i}]", state.id)
                       for i, s in enumerate(scopes)]
            try:
                results = [future.result() for future in futures]
            except BaseException:
                self.cancel.set()
                raise
        state.result = [r.result for r in results]
        state.output = [r.output for r in results]
        failed = [r.id for r in results if r.status is StepStatus.FAILED]
        skipped = [r.id for r in results if r.status is StepStatus.SKIPPED]
        if failed or (skipped and (self._stop_reason() or self.cancel.is_set())):
            state.status = StepStatus.FAILED
            state.error = (f"{len(failed)} of {len(results)} expansions failed"
                           + (f", {len(skipped)} did not run" if skipped else ""))
        else:
            state.status = StepStatus.SUCCEEDED
        state.duration_s = round(time.monotonic() - began, 3)
        self._note_failure(step, state)
        self._record(state)
        self.progress.step_finished(step, state)
        return state

    def _expansion(self, step: Step, scope: Scope, key: str, parent: str) -> StepState:
        if self.cancel.is_set() or self._stop_reason() is not None:
            state = self._fresh(step, key)
            state.parent = parent
            state.status = StepStatus.SKIPPED
            state.error = "interrupted" if self.cancel.is_set() else self._stop_reason()
            self._record(state)
            return state
        return self._node(step, scope, key, False, expand=False, parent=parent)

    def _distinct_sessions(self, step: Step, scopes: list[Scope]) -> str | None:
        """Every expansion must name its own sessions, and the names must be valid."""
        if step.kind == "shell":
            return None
        inner = [s for s in step.walk() if s.kind == "claude" and s.templated]
        for body in inner:
            seen: dict[str, int] = {}
            for scope in scopes:
                try:
                    names = {self._render(n, scope) for n in (body.session, body.target)}
                except expr.ExprError as exc:
                    return f"{body.id}: session name: {exc}"
                for name in names:
                    if not SESSION_NAME.match(name):
                        return (f"{body.id}[{scope.item_index}]: session name {name!r} is not "
                                "a name of letters, digits, '.', '_' and '-'")
                    if name in seen and seen[name] != scope.item_index:
                        return (f"{body.id}[{seen[name]}] and {body.id}[{scope.item_index}] "
                                f"both name session {name!r}: each expansion needs its own "
                                "session (one session never runs two turns at once); nothing "
                                "ran")
                    seen[name] = scope.item_index or 0
        return None

    def _render(self, text: str, scope: Scope, status: expr.Status = expr.NO_FAILURE) -> str:
        try:
            return expr.render(text, self._resolve(scope), status)
        except expr.Unknown as exc:
            raise expr.ExprError(f"{exc} is not known yet") from None

    # -- a claude call or a command -----------------------------------------------------------

    def _leaf(self, step: Step, scope: Scope, state: StepState,
              status: expr.Status = expr.NO_FAILURE) -> StepState:
        began = time.monotonic()
        state.iteration = next((s.iteration for s in scope.chain() if s.iteration is not None),
                               None)
        try:
            if step.kind == "shell":
                argv, env = self._command(step, scope, status)
                text = json.dumps([argv, sorted(env.items())])
                session = ""
                prompt = ""
            else:
                prompt = self._render(step.prompt, scope, status)
                session = self._render(step.session, scope)
                target = self._render(step.target, scope)
                state.session = target
                text = json.dumps([prompt, session, target])
        except expr.ExprError as exc:
            return self._fail(step, state, str(exc))
        state.fingerprint = self._fingerprint(step, scope, text)
        before = self._before.get(state.id)
        if before is not None and before.status is StepStatus.SUCCEEDED and \
                before.fingerprint == state.fingerprint and before.iteration == state.iteration:
            reused = StepState(**{**before.__dict__, "reused": True})
            self._record(reused)
            self.progress.step_finished(step, reused)
            return reused
        reason = self._stop_reason() if not (step.condition and step.condition.reads_status) \
            else None
        if reason is not None or self.cancel.is_set():
            state.status = StepStatus.SKIPPED
            state.error = "interrupted" if self.cancel.is_set() else reason
            self._record(state)
            return state
        state.status = StepStatus.RUNNING
        self.progress.step_started(step, state)
        try:
            with self._slots:
                if step.kind == "shell":
                    self._shell(step, state, argv, env)
                else:
                    with self._session_lock(session, state.session):
                        self._claude(step, state, prompt, replace_sessions(step, session,
                                                                           state.session))
        except ClaudePersistError as fatal:
            state.status, state.error = StepStatus.FAILED, str(fatal)
            raise
        finally:
            state.duration_s = round(time.monotonic() - began, 3)
            if state.status is StepStatus.RUNNING:
                state.status, state.error = StepStatus.FAILED, "interrupted"
            if state.cost_usd:
                with self._lock:
                    self.state.spent_usd = (self.state.spent_usd or 0.0) + state.cost_usd
                    # A loop or fan-out shows what was spent inside it (a loop's earlier
                    # passes too, which its steps' rows no longer show).
                    outer = self.state.steps.get(state.parent or "")
                    while outer is not None:
                        outer.cost_usd = (outer.cost_usd or 0.0) + state.cost_usd
                        outer = self.state.steps.get(outer.parent or "")
            self._note_failure(step, state)
            self._record(state)
            self.progress.step_finished(step, state)
        return state

    def _session_lock(self, *names: str) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        with self._lock:
            locks = [self._session_locks.setdefault(n, threading.Lock())
                     for n in sorted(set(names)) if n]
        for lock in locks:
            stack.enter_context(lock)
        return stack

    def _fingerprint(self, step: Step, scope: Scope, text: str) -> str:
        """The step's definition, what it renders to, and what the steps it reads left: a
        step runs again when anything it builds on changed, an earlier step's result too."""
        chain = scope.chain()
        read = {r.step for r in step.refs if r.step} | set(step.needs)
        if not step.parent:
            read |= set(self.plan.inputs.get(step.id, ()))
        inputs = []
        for dep in sorted(read):
            state = next((found for s in chain
                          if (found := self.state.steps.get(s.prefix + dep)) is not None), None)
            if state is not None:
                inputs.append([dep, state.fingerprint, state.status, state.session_id,
                               state.result, state.output, state.exit_code])
        payload = json.dumps([step.fingerprint, text, inputs], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def _command(self, step: Step, scope: Scope, status: expr.Status
                 ) -> tuple[list[str], dict[str, str]]:
        argv = ["/bin/sh", "-c", step.run] if isinstance(step.run, str) else list(step.run or ())
        env = {name: self._render(value, scope, status) for name, value in step.env}
        return argv, env

    def _shell(self, step: Step, state: StepState, argv: list[str], env: dict[str, str]
               ) -> None:
        limits = Limits(deadline=step.settings.deadline, idle_timeout=step.settings.idle_timeout)
        folder = step.cwd or self.sessions.workspace
        for attempt in range(1, step.retries + 2):
            state.attempts = attempt
            try:
                outcome = run_command(argv, cwd=folder, limits=limits,
                                      env={**os.environ, **env} if env else None,
                                      cancel=self.cancel)
            except UsageError as error:
                state.status, state.error = StepStatus.FAILED, str(error)
                return
            state.result, state.stderr = outcome.stdout, outcome.stderr
            limited = outcome.stopped_by in (StopReason.DEADLINE, StopReason.IDLE_TIMEOUT)
            state.exit_code = SHELL_TIMEOUT_EXIT if limited else outcome.returncode
            if outcome.stopped_by is StopReason.INTERRUPT:
                state.status, state.error = StepStatus.FAILED, "interrupted"
                return
            if state.exit_code == 0 and outcome.stopped_by is None:
                state.status, state.error = StepStatus.SUCCEEDED, None
                break
            state.status = StepStatus.FAILED
            state.error = (f"stopped by its {outcome.stopped_by} (exit code 124)" if limited
                           else f"stopped: {outcome.stopped_by}" if outcome.stopped_by
                           else f"exit code {outcome.returncode}")
            if outcome.truncated:
                state.error += "; its output was cut short"
            if attempt <= step.retries and not self.cancel.is_set():
                pause = self.settings.backoff_seconds * 2 ** (attempt - 1)
                self.progress.step_retrying(step, attempt, RuntimeError(state.error), pause)
                if self.cancel.wait(pause):
                    return
        if state.status is StepStatus.SUCCEEDED and step.output is not None:
            try:
                fsio.write_in_folder(step.output, state.result, "the step's output file")
            except OSError as exc:
                state.status = StepStatus.FAILED
                state.error = f"cannot write output {step.output}: {exc.strerror}"

    def _claude(self, step: Step, state: StepState, prompt: str, call: Step) -> None:
        options = step_options(step, self.settings)
        for attempt in range(1, step.retries + 2):
            state.attempts = attempt
            try:
                with observe.in_step(self.observer, state.id):
                    result = call_step(self.sessions, call, prompt, options, self.cancel)
            except STEP_ERRORS as error:
                if attempt <= step.retries and is_transient(error) and \
                        not self.cancel.is_set():
                    pause = self.settings.backoff_seconds * 2 ** (attempt - 1)
                    self.progress.step_retrying(step, attempt, error, pause)
                    if not self.cancel.wait(pause):
                        continue
                state.status, state.error = StepStatus.FAILED, str(error)
                if call.action is Action.RESUME:  # its session is known, failed call or not
                    state.session_id = self._resumed_session(call, error)
                return
            self._succeeded(step, state, result)
            return

    def _resumed_session(self, call: Step, error: Exception) -> str | None:
        """The id of the session a failed resume ran on: as the CLI said it, else the one its
        name maps to (None when the name maps to nothing: the call never started)."""
        said = getattr(error, "session_id", None)
        if isinstance(said, str) and said:
            return said
        try:
            return self.sessions.resolve(call.session).session_id
        except ClaudePersistError:
            return None

    def _stop_reason(self) -> str | None:
        """Why the run starts nothing more: the first reason found sticks (a fan-out that
        failed because the budget stopped its expansions names the budget)."""
        if self._first_stop is None:
            self._first_stop = self._find_stop_reason()
        return self._first_stop

    def _find_stop_reason(self) -> str | None:
        if self._failed is not None:
            return f"step {self._failed} failed"
        budget = self.workflow.budget_usd
        spent = self.state.run_cost_usd
        if budget is not None and spent >= budget:
            earlier = (f", {money(self.state.spent_before_usd)} of it by earlier invocations"
                       if self.state.spent_before_usd else "")
            return f"budget_usd {budget:g} spent ({money(spent)} over the run{earlier})"
        return None

    def _settled(self, step_id: str) -> bool:
        """Done in a way that lets what waits for it go on: succeeded, skipped by its own
        ``if:``, or failed with ``continue_on_error``."""
        state = self.state.steps.get(step_id)
        if state is None:
            return True
        if state.status is StepStatus.SKIPPED:
            return (state.error or "").startswith(SKIPPED_BY_IF)
        return state.status is StepStatus.SUCCEEDED or (
            state.status is StepStatus.FAILED and self.workflow.step(step_id).continue_on_error)

    def _succeeded(self, step: Step, state: StepState, result: TurnResult) -> None:
        state.status = StepStatus.SUCCEEDED
        state.session_id = result.session_id
        state.cost_usd = result.cost_usd
        state.num_turns = result.num_turns
        state.tokens = usage_tokens(result.raw)
        state.result = result.text
        state.output = result.structured_output
        state.model, state.effort = result.model, result.effort
        if step.output is not None:
            try:
                write_output(step.output, result)
            except OSError as exc:
                state.status = StepStatus.FAILED
                state.error = f"cannot write output {step.output}: {exc.strerror}"

    def _carry_forward(self) -> None:
        """What an earlier invocation finished and this one did not reach (it stopped first)
        stays in the state, so the next ``--resume-run`` reuses it instead of calling claude
        again; a loop keeps the pass it was at. Each is still checked against its inputs when
        it is next reached."""
        for key, old in self._before.items():
            if old.status is not StepStatus.SUCCEEDED and old.kind != "loop":
                continue
            current = self.state.steps.get(key)
            if current is None or current.status is StepStatus.PENDING or (
                    current.status is StepStatus.SKIPPED
                    and not (current.error or "").startswith(SKIPPED_BY_IF)):
                self.state.steps[key] = StepState(**{**old.__dict__, "reused": True})

    def _close(self, status: RunStatus, began: float, reason: str | None) -> None:
        with self._lock:
            self._carry_forward()
            for state in self.state.steps.values():
                if state.status is StepStatus.PENDING:
                    state.status = StepStatus.SKIPPED
                    state.error = reason or "not reached"
                elif state.status is StepStatus.RUNNING:
                    state.status, state.error = StepStatus.FAILED, reason
            finish(self.state, status, time.monotonic() - began, reason)
            self.store.save(self.state)  # the whole state, once: the journal is compacted
        self.observer.run_finished(self.run_info(), observe.RunOutcome(
            status=str(self.state.status), duration_s=self.state.duration_s or 0.0,
            cost_usd=self.state.total_cost_usd, stop_reason=self.state.stop_reason))

    # -- what observers are told --------------------------------------------------------------

    def run_info(self) -> observe.RunInfo:
        return observe.RunInfo(run_id=self.state.run_id, workflow=self.workflow.name,
                               path=str(self.workflow.path),
                               resumed=self.settings.resume_run, max_parallel=self._workers)

    def step_info(self, step: Step, state: StepState) -> observe.StepInfo:
        """The node ``state`` is, under the node it runs in: a loop's body under its current
        pass (``LOOP#n``), an expansion under its fan-out."""
        parent = self.state.steps.get(state.parent) if state.parent else None
        observed_parent = state.parent
        if parent is not None and parent.kind == "loop" and parent.iteration is not None:
            observed_parent = f"{parent.id}#{parent.iteration}"
        index = _INDEX.search(state.id)
        claude = state.kind == "claude"
        return observe.StepInfo(
            key=state.id, step_id=step.id, kind=state.kind, parent=observed_parent,
            action=state.action if claude else None, session=state.session or None,
            model=state.model if claude else None, effort=state.effort if claude else None,
            iteration=state.iteration, item_index=int(index.group(1)) if index else None)


SESSION_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def replace_sessions(step: Step, session: str, target: str) -> Step:
    """The step with its rendered session names (a for_each expansion's own)."""
    if session == step.session and target == step.target:
        return step
    return replace(step, session=session, target=target)
