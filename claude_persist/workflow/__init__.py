"""Declarative workflows: a YAML file of steps that create, resume and fork named sessions.

A run is a pipeline of small stages, each taking the previous one's result:
``spec.load_workflow`` -> ``plan.build`` -> ``execute.Scheduler.run`` -> ``report``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..claude.command import Action
from ..sessions import Sessions
from ..settings import CallSettings, merge, remembered
from . import expr, plan, report
from .execute import RunSettings, Scheduler, lookup_in
from .spec import SCHEMA_PATH, Workflow, load_workflow, validate_var_assignments
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
    """
    made_here: dict[str, tuple[str, CallSettings]] = {}
    lookup = lookup_in(workflow, {}, None, os.environ)
    argvs, prompts = {}, {}
    for step_id in the_plan.order:
        step = workflow.step(step_id)
        options = step.settings
        placeholder, stored = made_here.get(step.session, (None, None))
        argvs[step_id] = sessions.preview_argv(
            step.action, step.session, options, new_name=step.target, session_id=placeholder,
            stored=stored if step.action is not Action.CREATE else CallSettings())
        prompts[step_id] = expr.render(step.prompt, lookup)
        # What the step will store for its session, as the real run's record would.
        kept = remembered(merge(options, stored, sessions.defaults))
        if step.action is Action.RESUME and placeholder is not None:
            made_here[step.target] = (placeholder, kept)
        elif step.action is not Action.RESUME:
            made_here[step.target] = (f"<session id of {step.target} from step {step.id}>",
                                      kept)
    return report.dry_run_text(workflow, the_plan, argvs, prompts)


def run(workflow: Workflow, the_plan: plan.Plan, sessions: Sessions, settings: RunSettings,
        progress: report.ProgressPrinter | None = None) -> tuple[RunState, Path]:
    """Run the workflow; return its final state and where that state is saved."""
    store = RunStore.for_workflow(sessions.store.folder, workflow.path, workflow.name)
    scheduler = Scheduler(workflow, the_plan, sessions, store, settings,
                          progress or report.ProgressPrinter(workflow))
    state = scheduler.run()
    return state, store.path(state.run_id)


__all__ = ["SCHEMA_PATH", "RunSettings", "RunState", "Workflow", "dry_run", "load", "run",
           "validate_var_assignments"]
