"""What a run tells people: a line as each step starts and ends, a closing table with totals,
the JSON report for CI, and the dry-run plan."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from .. import fsio
from ..errors import UnsafeFileError, UsageError
from ..terminal import printable
from .plan import Plan
from .spec import Step, Workflow
from .state import RunState, StepState, StepStatus

TOTALS = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED)


def steps_text(count: int) -> str:
    """``1 step``, ``3 steps``."""
    return f"{count} step{'s' * (count != 1)}"


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
            print(printable(f"{head}  {text}"), file=self.stream, flush=True)

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
    lines.append(f"run {run.run_id}: {run.status}; {steps_text(len(run.steps))}, "
                 f"{counts['succeeded']} succeeded, {counts['failed']} failed, "
                 f"{counts['skipped']} skipped; {run.duration_s:.1f}s; {cost}"
                 + (f" ({run.stop_reason})" if run.stop_reason else ""))
    return printable("\n".join(lines))


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
        "parent": s.parent, "tokens": s.tokens, "finished_at": s.finished_at,
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


def check_writable(path: Path, flag: str = "--report") -> None:
    """Refuse a ``--report`` file that could not be written, before the run spends anything:
    the checks its writer makes (a real folder of ours, a regular file), and permissions."""
    folder = path.parent
    existing = next((p for p in (folder, *folder.parents) if _exists(p)), Path("."))
    try:
        if existing == folder:
            fsio.check_folder(folder, "the folder")
            current = fsio.lstat(path)
            if current is not None:
                try:
                    fsio.check_file(path, current, f"the {flag} file")
                except UnsafeFileError as exc:  # it names the file and the way out
                    raise UnsafeFileError(f"{exc} Nothing has run.", path=path) from None
        elif not existing.is_dir():
            raise UnsafeFileError(f"{existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UnsafeFileError(f"{existing} is not writable")
    except UnsafeFileError as exc:
        if str(exc).endswith(" Nothing has run."):
            raise
        raise UnsafeFileError(f"cannot write the {flag} file {path}: {exc}; nothing has run",
                              path=path) from None


def check_distinct(workflow: Path, reports: dict[str, Path]) -> None:
    """Refuse a report path that is the workflow file, or two report flags naming one file:
    writing the report would replace the workflow (or the other report) without a word."""
    def same(one: Path, other: Path) -> bool:
        try:
            return one.samefile(other)  # the same inode, whatever the links or spellings
        except OSError:  # one of them does not exist yet
            return one.resolve() == other.resolve()

    for flag, path in reports.items():
        if same(path, workflow):
            raise UsageError(f"the {flag} file {path} is the workflow file {workflow}: writing "
                             "the report would replace it. Give the report another path; "
                             "nothing has run")
    flags = list(reports.items())
    for i, (flag, path) in enumerate(flags):
        for other_flag, other in flags[i + 1:]:
            if same(path, other):
                raise UsageError(f"{flag} {path} and {other_flag} {other} name the same file: "
                                 "one report would replace the other. Give each its own path; "
                                 "nothing has run")


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
    out = [f"workflow {workflow.name} ({workflow.path}): {steps_text(len(workflow.steps))}, {mode}"]
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


# -- CI pages: a Markdown summary and GitHub annotations ----------------------------------------

#: GitHub refuses a job summary past 1 MiB; the summary keeps well under it.
SUMMARY_ROWS = 2000
SUMMARY_FAILURES = 50
FAILURE_CHARS = 2000
ANNOTATIONS = 50
_CELL_SPECIAL = set("\\`*_[]<>|$~&")


def md_cell(value: object) -> str:
    """Text for one table cell: Markdown's specials escaped (a pipe would end the cell, ``$``
    starts math on GitHub, ``<`` HTML), each line break a ``<br>``."""
    text = str(value).replace("\r\n", "\n").replace("\r", "\n")
    escaped = "".join(f"\\{ch}" if ch in _CELL_SPECIAL else ch for ch in text)
    return escaped.replace("\n", "<br>")


def _fenced(text: str) -> list[str]:
    """A code block that no run of backticks in ``text`` can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, *text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), fence]


def _step_of(workflow: Workflow | None, state_id: str) -> Step | None:
    """The workflow's step a state belongs to (an expansion ``ID[3]`` and a step inside it
    ``ID[3]/INNER`` are their step's)."""
    if workflow is None:
        return None
    return workflow.by_id.get(re.sub(r"\[\d+\]$", "", state_id.rsplit("/", 1)[-1]))


def step_line(workflow: Workflow | None, state_id: str) -> int | None:
    """The workflow file's line of the step a state belongs to."""
    step = _step_of(workflow, state_id)
    return step.line if step is not None else None


def markdown(run: RunState, workflow: Workflow | None = None, file: str | None = None) -> str:
    """The run as a Markdown page (a CI job summary): a table of steps with status, time and
    cost, the failed steps' messages, totals."""
    file = file or run.workflow
    counts = _totals(run)
    cost = money(run.total_cost_usd)
    if run.spent_before_usd:
        cost += f" ({money(run.run_cost_usd)} over the run's invocations)"
    out = [f"### {md_cell(run.workflow_name)}: {run.status}", "",
           f"Run {md_cell(run.run_id)} of {md_cell(file)}: {steps_text(len(run.steps))}, "
           f"{counts['succeeded']} succeeded, {counts['failed']} failed, "
           f"{counts['skipped']} skipped; {run.duration_s:.1f} s; {md_cell(cost)}"
           + (f" ({md_cell(run.stop_reason)})" if run.stop_reason else ""), "",
           "| Step | Session | Status | Attempts | Time (s) | Cost |",
           "| --- | --- | --- | ---: | ---: | ---: |"]
    ordered = run.ordered()
    for s in ordered[:SUMMARY_ROWS]:
        status = f"{s.status}{' (reused)' if s.reused else ''}"
        out.append(f"| {md_cell(s.id)} | {md_cell(s.session or '-')} | {md_cell(status)} | "
                   f"{s.attempts} | {s.duration_s:.1f} | {md_cell(_cost(s.cost_usd))} |")
    out.append(f"| **Total** | | {counts['succeeded']} succeeded, {counts['failed']} failed, "
               f"{counts['skipped']} skipped | | {run.duration_s:.1f} | "
               f"{md_cell(money(run.total_cost_usd))} |")
    if len(ordered) > SUMMARY_ROWS:
        out += ["", f"{len(ordered) - SUMMARY_ROWS} more steps are not shown here: "
                f"runs-show {md_cell(run.run_id)} lists them all."]
    failed = [s for s in ordered if s.status is StepStatus.FAILED]
    if failed:
        out += ["", "#### Failed steps"]
        for s in failed[:SUMMARY_FAILURES]:
            line = step_line(workflow, s.id)
            where = f" ({md_cell(file)}{f':{line}' if line else ''})"
            message = s.error or "failed"
            if len(message) > FAILURE_CHARS:
                message = message[:FAILURE_CHARS] + " ..."
            out += ["", f"**{md_cell(s.id)}**{where}:", "", *_fenced(message)]
        if len(failed) > SUMMARY_FAILURES:
            out += ["", f"... and {len(failed) - SUMMARY_FAILURES} more failed steps."]
    return "\n".join(out) + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def error_annotations(run: RunState, workflow: Workflow | None, file: str) -> list[str]:
    """GitHub Actions ``::error`` commands, one per failed step, at its line of the workflow
    file (escaped as GitHub's toolkit does: ``%``, CR and LF in the message; also ``:`` and
    ``,`` in the properties). A step whose failure the workflow lets pass
    (``continue_on_error``) gets a ``::warning`` instead."""
    out = []
    failed = [s for s in run.ordered() if s.status is StepStatus.FAILED]
    for s in failed[:ANNOTATIONS]:
        step = _step_of(workflow, s.id)
        line = step.line if step is not None else None
        level = "warning" if step is not None and step.continue_on_error else "error"
        props = [f"file={_escape_property(file)}"]
        if line:
            props.append(f"line={line}")
        props.append(f"title={_escape_property(f'step {s.id} failed')}")
        out.append(f"::{level} {','.join(props)}::{_escape_data(s.error or 'failed')}")
    return out


def annotation_path(workflow_file: str | Path, env: Mapping[str, str]) -> str:
    """The workflow file as GitHub wants it in an annotation: relative to the checkout
    (``GITHUB_WORKSPACE``, else the current folder) when inside it."""
    path = Path(workflow_file).resolve()
    base = Path(env.get("GITHUB_WORKSPACE") or os.getcwd()).resolve()
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def publish_ci(run: RunState, workflow: Workflow | None, env: Mapping[str, str],
               out: TextIO, err: TextIO) -> None:
    """What a run leaves on a CI page: with ``GITHUB_STEP_SUMMARY`` set, its Markdown summary
    appended to that file (a file that cannot be written is a warning: the run's outcome stays
    its own); with ``GITHUB_ACTIONS=true``, an ``::error`` annotation per failed step on
    ``out`` (the runner reads workflow commands from both streams; the faces pass stderr, so
    that stdout keeps only the answer)."""
    file = annotation_path(run.workflow, env)
    summary_file = env.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        try:
            append_text(Path(summary_file), markdown(run, workflow, file))
        except OSError as exc:
            print(f"claude-persist: warning: cannot append the run's summary to "
                  f"GITHUB_STEP_SUMMARY={summary_file}: {exc.strerror or exc}", file=err,
                  flush=True)
    if env.get("GITHUB_ACTIONS") == "true":
        for line in error_annotations(run, workflow, file):
            print(line, file=out, flush=True)


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to a file (made if missing), never truncating what it holds: a job's
    summary file collects every step's."""
    flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        descriptor = os.open(path, os.O_RDWR | flags, 0o644)
    except PermissionError:  # a file we may write but not read: append as it comes
        descriptor = os.open(path, os.O_WRONLY | flags, 0o644)
    try:
        data = text.encode("utf-8")
        # What the job's other steps wrote may end mid-line: our heading must start a line.
        with contextlib.suppress(OSError):
            size = os.fstat(descriptor).st_size
            if size and os.pread(descriptor, 1, size - 1) != b"\n":
                data = b"\n" + data
        while data:
            written = os.write(descriptor, data)
            data = data[written:]
    finally:
        os.close(descriptor)


def write_markdown(path: Path, run: RunState, workflow: Workflow | None,
                   file: str | None = None) -> None:
    """``--report-md FILE``: the summary, written atomically."""
    fsio.write_in_folder(path, markdown(run, workflow, file), "the --report-md file")
