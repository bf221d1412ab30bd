"""Declarative workflows: a YAML file of steps that create, resume and fork named sessions.

A run is a pipeline of small stages, each taking the previous one's result:
``spec.load_workflow`` -> ``plan.build`` -> ``execute.Scheduler.run`` -> ``report``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..claude.command import Action
from ..errors import WorkflowFailedError
from ..observe import RunObserver
from ..sessions import Sessions
from ..settings import CallSettings, merge, remembered
from . import expr, plan, report
from .execute import Progress, RunSettings, Scheduler, lookup_in
from .spec import SCHEMA_PATH, Step, Workflow, load_workflow, validate_var_assignments
from .state import RunState, RunStore


def load(path: str | Path, sessions: Sessions, var_overrides: Mapping[str, str] | None = None,
         max_parallel: int | None = None) -> tuple[Workflow, plan.Plan]:
    """Load and check a workflow against the workspace's sessions, and plan it."""
    known = [entry.name for entry in sessions.list()]
    workflow = load_workflow(path, var_overrides=var_overrides, known_sessions=known,
                             max_parallel=max_parallel)
    return workflow, plan.build(workflow, max_parallel)


def dry_run(workflow: Workflow, the_plan: plan.Plan, sessions: Sessions) -> str:
    """The plan with each step's exact argv and rendered prompt; calls nothing, writes nothing.

    Results not known before running stay as their expressions; ids of sessions that earlier
    steps will create are shown as placeholders, and what those steps will store (model,
    effort, role) is carried to later steps on the same session, as a real run would.
    Conditions are shown; what depends on data not there yet is "decided at run time".
    """
    made_here: dict[str, tuple[str, CallSettings]] = {}
    lookup = lookup_in(workflow, {}, None, os.environ)
    details: dict[str, list[str]] = {}

    def describe(step: Step, depth: int) -> list[str]:
        pad = "  " * depth
        lines: list[str] = []
        if step.condition is not None:
            lines.append(f"{pad}  if: {step.condition.text}  (decided at run time)")
        if step.for_each is not None:
            if isinstance(step.for_each, expr.Expression):
                lines.append(f"{pad}  for_each: {step.for_each.text}  (the list is decided at "
                             "run time; one expansion per element, as "
                             f"{step.id}[0], {step.id}[1], ...)")
            else:
                lines.append(f"{pad}  for_each: {len(step.for_each)} elements, as "
                             f"{step.id}[0] ... {step.id}[{max(0, len(step.for_each) - 1)}]")
            if step.fan_parallel:
                lines.append(f"{pad}  max_parallel: {step.fan_parallel}")
        if step.kind == "shell":
            command = step.run if isinstance(step.run, str) else shlex.join(step.run or ())
            lines.append(f"{pad}  run: {command}" + ("  (by /bin/sh -c)"
                                                     if isinstance(step.run, str) else ""))
            lines += [f"{pad}  env {k}={expr.render(v, lookup)}" for k, v in step.env]
            return lines
        if step.kind == "loop":
            lines.append(f"{pad}  loop: up to {step.max_iterations} passes, until "
                         f"{step.until.text if step.until else '?'}  (decided at run time)")
            for inner in step.body:
                lines.append(f"{pad}  - {inner.id}:")
                lines += describe(inner, depth + 1)
            return lines
        if step.templated:
            lines.append(f"{pad}  {step.action.value} {step.session} (one session per element)")
            lines.append(f"{pad}  prompt: {step.prompt}")
            return lines
        options = step.settings
        placeholder, stored = made_here.get(step.session, (None, None))
        argv = sessions.preview_argv(
            step.action, step.session, options, new_name=step.target, session_id=placeholder,
            stored=stored if step.action is not Action.CREATE else CallSettings())
        # What the step will store for its session, as the real run's record would.
        kept = remembered(merge(options, stored, sessions.defaults))
        if step.action is Action.RESUME and placeholder is not None:
            made_here[step.target] = (placeholder, kept)
        elif step.action is not Action.RESUME:
            made_here[step.target] = (f"<session id of {step.target} from step {step.id}>",
                                      kept)
        lines.append(f"{pad}  argv: {shlex.join(argv)}")
        lines.append(f"{pad}  prompt (sent on stdin):")
        lines += [f"{pad}    {line}" for line in expr.render(step.prompt, lookup).splitlines()]
        return lines

    for step_id in the_plan.order:
        details[step_id] = describe(workflow.step(step_id), 0)
    return report.dry_run_text(workflow, the_plan, details)


def run(workflow: Workflow, the_plan: plan.Plan, sessions: Sessions, settings: RunSettings,
        progress: Progress | None = None, observer: RunObserver | None = None
        ) -> tuple[RunState, Path]:
    """Run the workflow; return its final state and where that state is saved. ``observer``
    is told of the run, its steps and calls (besides the sessions' own observer)."""
    store = RunStore.for_workflow(sessions.store.folder, workflow.path, workflow.name)
    scheduler = Scheduler(workflow, the_plan, sessions, store, settings,
                          progress or report.ProgressPrinter(workflow), observer)
    state = scheduler.run()
    return state, store.path(state.run_id)


class WorkflowRunFailedError(WorkflowFailedError):
    """A run that did not succeed; ``report`` is its report (every step's status)."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def _sessions(workspace: str | Path | Sessions | None) -> Sessions:
    return workspace if isinstance(workspace, Sessions) else Sessions(workspace or ".")


def validate_workflow(path: str | Path, vars: Mapping[str, str] | None = None,
                      workspace: str | Path | Sessions | None = None) -> Workflow:
    """Check ``path`` as ``validate`` does; return the workflow or raise
    :class:`~claude_persist.WorkflowError` listing every problem with line:column."""
    return load(path, _sessions(workspace), vars)[0]


def dry_run_workflow(path: str | Path, vars: Mapping[str, str] | None = None,
                     max_parallel: int | None = None,
                     workspace: str | Path | Sessions | None = None) -> str:
    """The plan ``run --dry-run`` prints; calls nothing, writes nothing."""
    sessions = _sessions(workspace)
    workflow, the_plan = load(path, sessions, vars, max_parallel)
    return dry_run(workflow, the_plan, sessions)


def run_workflow(path: str | Path, vars: Mapping[str, str] | None = None,
                 max_parallel: int | None = None, resume_run: bool = False,
                 run_id: str | None = None, workspace: str | Path | Sessions | None = None,
                 progress: TextIO | None = None) -> dict[str, Any]:
    """Run a workflow file; return its report (what ``run --json`` prints: every step's
    status, result, output and cost). Raises :class:`~claude_persist.WorkflowError` (exit 2)
    for an invalid file, :class:`WorkflowRunFailedError` (a ``WorkflowFailedError``, exit 1,
    with ``.report``) when a step failed, ``SessionBusyError`` when another process drives
    the run, ``InterruptedByUserError`` on Ctrl-C. Progress lines go to ``progress``
    (default stderr; a heartbeat while a step runs long, a live view on a terminal)."""
    sessions = _sessions(workspace)
    workflow, the_plan = load(path, sessions, vars, max_parallel)
    settings = RunSettings(max_parallel=max_parallel or workflow.max_parallel,
                           resume_run=resume_run, run_id=run_id)
    from .progress import for_stream

    live = for_stream(workflow, progress)  # start and end lines, and heartbeats
    try:
        state, state_file = run(workflow, the_plan, sessions, settings, live, live.observer)
    finally:
        live.close()
    data = report.as_json(state, str(state_file))
    if state.status != "succeeded":
        raise WorkflowRunFailedError(
            f"workflow {workflow.name} {state.status}: "
            f"{state.stop_reason or 'not every step ran'}; continue it with "
            f"run_workflow(..., resume_run=True) (run {state.run_id}; state in {state_file})",
            data)
    return data


__all__ = [
    "SCHEMA_PATH",
    "RunSettings",
    "RunState",
    "Workflow",
    "WorkflowRunFailedError",
    "dry_run",
    "dry_run_workflow",
    "load",
    "run",
    "run_workflow",
    "validate_var_assignments",
    "validate_workflow",
]
