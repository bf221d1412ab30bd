"""What a run tells people: a line as each step starts and ends, a closing table with totals,
the JSON report for CI, and the dry-run plan."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from .. import fsio
from ..errors import UnsafeFileError
from .plan import Plan
from .spec import Step, Workflow
from .state import RunState, StepState, StepStatus

TOTALS = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED)


def _setting(model: str | None, effort: str | None) -> str:
    return f"{model or '-'}/{effort or '-'}"


def money(value: float) -> str:
    """Dollars as people read them: four decimals (a per-call cost, computed as a difference
    of running totals, can come back as 0.012499999...), and never a non-zero cost as $0."""
    if 0 < value < 0.00005:
        return "<$0.0001"
    return f"${value:.4f}"


def _cost(value: float | None) -> str:
    return "-" if value is None else money(value)


class ProgressPrinter:
    """Progress lines on stderr, one per start and one per end, safe across threads."""

    def __init__(self, workflow: Workflow, stream: TextIO | None = None) -> None:
        self.workflow = workflow
        self.stream = stream or sys.stderr
        self.total = len(workflow.steps)
        self._lock = threading.Lock()

    def _line(self, step: Step, text: str, state: StepState | None = None) -> None:
        key = state.id if state is not None else None
        what = {"shell": "run", "loop": "loop"}.get(step.kind, step.action.value)
        where = (state.session if state is not None and state.kind == "claude"
                 else step.target if step.kind == "claude" and not step.templated else "")
        number = f"[{step.index + 1}/{self.total}] " if step.parent is None else "  "
        head = f"{number}{key or step.id}  {what} {where}".rstrip()
        with self._lock:
            print(f"{head}  {text}", file=self.stream, flush=True)

    def step_started(self, step: Step, state: StepState) -> None:
        self._line(step, f"{_setting(step.settings.model, step.settings.effort)}  started"
                   if step.kind == "claude" else "started", state)

    def step_finished(self, step: Step, state: StepState) -> None:
        status = "reused (unchanged, succeeded before)" if state.reused else str(state.status)
        text = (f"{_setting(state.model, state.effort)}  {status}  {state.duration_s:.1f}s  "
                f"{_cost(state.cost_usd)}")
        if state.kind in ("shell", "loop", "for_each"):
            text = f"{status}  {state.duration_s:.1f}s"
            if state.exit_code is not None:
                text += f"  exit {state.exit_code}"
            if state.iteration is not None and state.kind == "loop":
                text += f"  pass {state.iteration}"
        if state.error and state.status in (StepStatus.FAILED, StepStatus.SKIPPED):
            text += f"\n    {state.error}"
        self._line(step, text, state)

    def step_retrying(self, step: Step, attempt: int, error: Exception, wait: float) -> None:
        self._line(step, f"attempt {attempt} failed ({error}); retrying in {wait:g}s")


def table(run: RunState) -> str:
    """The closing table of all steps, with totals."""
    rows = [("STEP", "ACTION", "SESSION", "MODEL/EFFORT", "STATUS", "TRIES", "SECONDS", "COST")]
    for s in run.ordered():
        rows.append((s.id, s.action, s.session, _setting(s.model, s.effort),
                     f"{s.status}{' (reused)' if s.reused else ''}", str(s.attempts),
                     f"{s.duration_s:.1f}", _cost(s.cost_usd)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    counts = _totals(run)
    cost = money(run.total_cost_usd)
    if run.spent_before_usd:
        cost += f" ({money(run.run_cost_usd)} over the run's invocations)"
    lines.append(f"run {run.run_id}: {run.status}; {len(run.steps)} steps, "
                 f"{counts['succeeded']} succeeded, {counts['failed']} failed, "
                 f"{counts['skipped']} skipped; {run.duration_s:.1f}s; {cost}"
                 + (f" ({run.stop_reason})" if run.stop_reason else ""))
    return "\n".join(lines)


def _totals(run: RunState) -> dict[str, int]:
    return {status.value: sum(1 for s in run.steps.values() if s.status is status)
            for status in TOTALS}


def as_json(run: RunState, state_file: str | None = None) -> dict[str, Any]:
    """The machine-readable report (``--report F`` / ``--json``): each step's outcome with its
    result text and structured output (None without a schema)."""
    steps = [{
        "id": s.id, "session": s.session, "session_id": s.session_id, "action": s.action,
        "model": s.model, "effort": s.effort, "status": s.status, "reused": s.reused,
        "attempts": s.attempts, "duration_s": s.duration_s,
        "cost_usd": None if s.cost_usd is None else round(s.cost_usd, 6),
        "num_turns": s.num_turns, "error": s.error, "result": s.result, "output": s.output,
        "kind": s.kind, "exit_code": s.exit_code, "stderr": s.stderr, "iteration": s.iteration,
        "parent": s.parent,
    } for s in run.ordered()]
    return {
        "run_id": run.run_id, "workflow": run.workflow, "name": run.workflow_name,
        "status": run.status, "stop_reason": run.stop_reason, "started_at": run.started_at,
        "finished_at": run.finished_at, "duration_s": run.duration_s,
        "total_cost_usd": round(run.total_cost_usd, 6),
        "run_cost_usd": round(run.run_cost_usd, 6), "state_file": state_file,
        "totals": _totals(run),
        "steps": steps,
    }


def final_result(run: RunState) -> str | None:
    """What a plain ``run`` prints on stdout: the last step's result (its structured output as
    JSON when it has a schema), if the run succeeded."""
    if run.status != "succeeded" or not run.steps:
        return None
    last = [s for s in run.ordered() if s.parent is None][-1]
    if last.output is not None:
        return json.dumps(last.output, ensure_ascii=False, indent=2)
    return last.result if isinstance(last.result, str) else json.dumps(last.result)


def check_writable(path: Path) -> None:
    """Refuse a ``--report`` file that could not be written, before the run spends anything:
    the checks its writer makes (a real folder of ours, a regular file), and permissions."""
    folder = path.parent
    existing = next((p for p in (folder, *folder.parents) if _exists(p)), Path("."))
    try:
        if existing == folder:
            fsio.check_folder(folder, "the folder")
            current = fsio.lstat(path)
            if current is not None:
                fsio.check_file(path, current, "it")
        elif not existing.is_dir():
            raise UnsafeFileError(f"{existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UnsafeFileError(f"{existing} is not writable")
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"cannot write the --report file {path}: {exc}; nothing has run",
                              path=path) from None


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except OSError:  # missing, or below something that is not a folder
        return False
    return True


def dry_run_text(workflow: Workflow, plan: Plan, details: dict[str, list[str]]) -> str:
    """The plan as a person reads it: order or waves, then each step's argv and prompt (or
    command, loop, fan-out and condition)."""
    mode = "parallel waves" if plan.parallel else "in file order, one after another"
    out = [f"workflow {workflow.name} ({workflow.path}): {len(workflow.steps)} steps, {mode}"]
    if plan.parallel:
        out += [f"  wave {i + 1}: {', '.join(wave)}" for i, wave in enumerate(plan.waves)]
    for step_id in plan.order:
        step = workflow.step(step_id)
        needs = ", ".join(sorted(plan.deps[step_id])) or "nothing"
        what = {"shell": "run", "loop": "loop"}.get(step.kind, step.action.value)
        where = f" {step.target}" if step.kind == "claude" else ""
        out.append(f"\n[{step.index + 1}/{len(workflow.steps)}] {step.id}: {what}{where} "
                   f"(waits for {needs})")
        out += details[step_id]
    return "\n".join(out)
