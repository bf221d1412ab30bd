"""Past runs of a workspace's workflows: list them, show one, prune old ones.

Reads what :mod:`.state` writes: every workflow file has a folder of runs under
``<the mapping file's folder>/runs/<name>-<digest>/``, each run its full state ``<id>.json``
(written at the start and the end), its journal ``<id>.journal`` (a line per step since) and
its lock ``<id>.lock`` (held by the process driving it). Nothing here takes a run's lock but
:func:`prune`, which must never remove a run in progress.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import fsio
from ..errors import UsageError
from ..terminal import printable
from .state import RunState, RunStatus, RunStore, StepState, StepStatus

RUNS = "runs"
#: A run whose state says running while no process holds it (killed with -9, a reboot):
#: ``--resume-run`` continues it.
ABANDONED = "abandoned"
_AGE = re.compile(r"^ *([0-9]+(?:\.[0-9]+)?) *([smhdw]) *$(?!\n)")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def runs_root(mapping_folder: Path) -> Path:
    """The folder holding every workflow's runs, beside the mapping file."""
    return mapping_folder / RUNS


def parse_age(value: str | None, flag: str = "--older-than") -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``2w``, ``45s`` (a unit is required: a bare
    number is too easy to misread as days)."""
    match = _AGE.match(value or "")
    if not match:
        raise UsageError(f"{flag} {value!r} is not an age: write a number and a unit, "
                         "such as 30d, 12h, 90m or 2w")
    return float(match.group(1)) * _UNIT[match.group(2)]


@dataclass(frozen=True)
class SavedRun:
    """A run's files, found on disk (not read yet)."""

    store: RunStore
    run_id: str

    @property
    def path(self) -> Path:
        return self.store.folder / f"{self.run_id}.json"

    def last_change(self) -> float:
        """When the run last wrote anything (its state or its journal), as a timestamp."""
        times = []
        for path in (self.path, self.path.with_suffix(".journal")):
            with contextlib.suppress(OSError):
                times.append(path.stat().st_mtime)
        return max(times, default=0.0)


def saved_runs(root: Path) -> list[SavedRun]:
    """Every run under ``root`` (folders and state files only, no symlinks followed)."""
    found: list[SavedRun] = []
    try:
        folders = sorted(os.scandir(root), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise fsio.os_error(exc, "list", "the folder of runs", root) from exc
    for folder in folders:
        if not folder.is_dir(follow_symlinks=False):
            continue
        store = RunStore(Path(folder.path))
        try:
            names = sorted(os.listdir(folder.path))
        except OSError:
            continue
        found += [SavedRun(store, name[:-5]) for name in names
                  if name.endswith(".json") and RUN_ID.match(name[:-5])]
    return found


RUN_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True


def status_of(state: RunState) -> str:
    """The run's status as people should read it: ``running`` only while its process lives
    (a look at the process, not at the lock: taking the lock, even for an instant, could make
    a ``--resume-run`` starting at that moment fail)."""
    if state.status is RunStatus.RUNNING and not _alive(state.pid):
        return ABANDONED
    return str(state.status)


def _started(state: RunState) -> float | None:
    try:
        return datetime.strptime(state.started_at, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


def _duration(saved: SavedRun, state: RunState, status: str, now: float) -> float:
    if status in (RunStatus.RUNNING, ABANDONED):
        began = _started(state)
        # An abandoned run never wrote its duration: it ran until it last wrote anything.
        end = now if status == RunStatus.RUNNING else saved.last_change()
        return round(max(0.0, end - began), 3) if began is not None else 0.0
    return state.duration_s


def _counts(state: RunState) -> dict[str, int]:
    counts = {status.value: 0 for status in StepStatus}
    for step in state.steps.values():
        counts[step.status.value] += 1
    return counts


def summary(saved: SavedRun, state: RunState, now: float | None = None) -> dict[str, Any]:
    """One run as ``runs`` lists it."""
    status = status_of(state)
    counts = _counts(state)
    return {
        "run_id": state.run_id, "name": state.workflow_name, "workflow": state.workflow,
        "status": status, "started_at": state.started_at, "finished_at": state.finished_at,
        "duration_s": _duration(saved, state, status, time.time() if now is None else now),
        "cost_usd": round(state.run_cost_usd, 6), "steps_total": len(state.steps),
        "succeeded": counts["succeeded"], "failed": counts["failed"],
        "skipped": counts["skipped"], "stop_reason": state.stop_reason,
        "state_file": str(saved.path),
    }


@dataclass
class Listing:
    """The runs found, newest first, and what could not be read (one line each)."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


#: What to do about a run whose files cannot be read, when looking back (``--resume-run``
#: has its own advice); the caller names the prune command in its own face's words.
UNREADABLE_FIX = "delete that file, or remove the run with: {prune} --older-than AGE"


def list_runs(root: Path, now: float | None = None, fix: str = "") -> Listing:
    """Every run of the workspace, newest first."""
    listing = Listing()
    for saved in saved_runs(root):
        try:
            state = saved.store.load(saved.run_id, fix)
        except UsageError as exc:
            listing.unreadable.append(str(exc))
            continue
        listing.runs.append(summary(saved, state, now))
    listing.runs.sort(key=lambda run: (run["started_at"] or "", run["run_id"]), reverse=True)
    return listing


def find(root: Path, run_id: str, workflow: str | None = None, fix: str = ""
         ) -> tuple[SavedRun, RunState]:
    """The run ``run_id`` (of the workflow file ``workflow`` when given: run ids are unique
    per workflow file only); ``fix`` is the advice for a run that cannot be read."""
    if not RUN_ID.match(run_id or ""):
        raise UsageError(f"{run_id!r} is not a run id (runs lists them)")
    matches = [saved for saved in saved_runs(root) if saved.run_id == run_id]
    loaded = [(saved, saved.store.load(saved.run_id, fix)) for saved in matches]
    if workflow is not None:
        wanted = str(Path(workflow).resolve())
        loaded = [(s, state) for s, state in loaded if state.workflow == wanted]
    if not loaded:
        where = f" of {workflow}" if workflow else ""
        raise UsageError(f"no run {run_id}{where} in {root} (runs lists the runs of this "
                         "workspace)")
    if len(loaded) > 1:
        files = ", ".join(state.workflow for _, state in loaded)
        raise UsageError(f"run id {run_id} names runs of several workflows ({files}); pick one "
                         "with --workflow FILE")
    return loaded[0]


def own_run(mapping_folder: Path, workflow_path: Path, name: str, pid: int,
            look_at: int = 5) -> RunState | None:
    """The run of this workflow that process ``pid`` drove and saved last (a run that ended
    by an error or an interrupt, whose state the caller was not handed), or None."""
    store = RunStore.for_workflow(mapping_folder, workflow_path, name)
    found = [saved for saved in saved_runs(store.folder.parent)
             if saved.store.folder == store.folder]
    found.sort(key=lambda saved: saved.last_change(), reverse=True)
    for saved in found[:look_at]:
        try:
            state = saved.store.load(saved.run_id)
        except UsageError:
            continue
        if state.pid == pid and state.status is not RunStatus.RUNNING:
            return state
    return None


def resume_words(step: StepState, mapped: Mapping[str, str]) -> list[str] | None:
    """The words after the program's name that continue a claude step's session: by its name
    while the name still maps to that session, else by its id. None without a session id."""
    if step.kind != "claude" or not step.session_id:
        return None
    if step.session and mapped.get(step.session) == step.session_id:
        return ["resume", "-n", step.session, "-p", "PROMPT"]
    return ["resume", "--session-id", step.session_id, "-p", "PROMPT"]


def step_detail(step: StepState, mapped: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """One step (or expansion, or a step of a loop's pass) as ``runs-show`` gives it."""
    words = resume_words(step, mapped)
    return {
        "id": step.id, "kind": step.kind, "action": step.action, "session": step.session,
        "session_id": step.session_id, "status": step.status.value, "reused": step.reused,
        "attempts": step.attempts, "duration_s": step.duration_s,
        "finished_at": step.finished_at,
        "cost_usd": None if step.cost_usd is None else round(step.cost_usd, 6),
        "tokens": step.tokens, "num_turns": step.num_turns, "model": step.model,
        "effort": step.effort, "error": step.error, "result": step.result,
        "output": step.output, "exit_code": step.exit_code, "stderr": step.stderr,
        "iteration": step.iteration, "parent": step.parent,
        "resume_command": None if words is None else prefix + shlex.join(words),
    }


def show(saved: SavedRun, state: RunState, mapped: Mapping[str, str],
         prefix: str = "claude-persist ", now: float | None = None) -> dict[str, Any]:
    """One run in full: its summary and every step, in the order people read them."""
    return {**summary(saved, state, now), "vars": state.vars,
            "steps": [step_detail(step, mapped, prefix) for step in state.ordered()]}


@dataclass
class Pruned:
    """What :func:`prune` did: the runs removed and those kept because a process drives them."""

    removed: list[dict[str, Any]] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def prune(root: Path, older_than: float, *, dry_run: bool = False,
          now: float | None = None) -> Pruned:
    """Remove the runs whose last change is older than ``older_than`` seconds. A run whose
    lock is held (a process drives it, however old it is) is never removed: its lock is
    taken (without waiting) before its files go, and held until they are gone."""
    now = time.time() if now is None else now
    done = Pruned()
    found = saved_runs(root)
    # A folder unchanged for the age (no run made, ended or started in it since) and empty once
    # its runs are gone is removed too; a run starting in it now makes it non-empty first.
    quiet_folders = set()
    for folder in {saved.store.folder for saved in found}:
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime >= older_than:
                quiet_folders.add(folder)
    for saved in found:
        if now - saved.last_change() < older_than:
            continue
        lock_path = saved.path.with_suffix(".lock")
        try:
            held = fsio.Lock(lock_path, "the run's lock").acquire(0)
        except fsio.LockTimeout:
            done.in_progress.append(saved.run_id)
            continue
        try:
            try:
                state = saved.store.load(saved.run_id, "")
                entry = summary(saved, state, now)
            except UsageError as exc:  # an unreadable state is still an old run's
                done.unreadable.append(str(exc))
                entry = {"run_id": saved.run_id, "state_file": str(saved.path)}
            if not dry_run:
                for path in (saved.path.with_suffix(".journal"), saved.path, lock_path):
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        raise fsio.os_error(exc, "remove", "a run's file", path) from exc
            done.removed.append(entry)
        finally:
            held.release()
    if not dry_run:
        for folder in quiet_folders:
            with contextlib.suppress(OSError):  # not empty (a run began in it): kept
                folder.rmdir()
    return done


# -- text ---------------------------------------------------------------------------------------


def steps_text(count: int) -> str:
    from .report import steps_text as text

    return text(count)


def _money(value: float | None) -> str:
    from .report import money

    return "-" if value is None else money(value)


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            .rstrip() for row in rows]


def listing_text(runs: list[dict[str, Any]]) -> str:
    """The ``runs`` table."""
    rows = [("RUN", "WORKFLOW", "STARTED", "DURATION", "STATUS", "COST", "DONE", "FAILED")]
    rows += [(run["run_id"], run["name"], (run["started_at"] or "-")[:19],
              _seconds(run["duration_s"]), run["status"], _money(run["cost_usd"]),
              f"{run['succeeded']}/{run['steps_total']}", str(run["failed"])) for run in runs]
    return "\n".join(_table([tuple(printable(cell, lines=False) for cell in row)
                                for row in rows]))


def _tokens(tokens: dict[str, int] | None) -> str:
    if not tokens:
        return ""
    text = f"{tokens.get('input', 0)} in / {tokens.get('output', 0)} out"
    cached = tokens.get("cache_read", 0) + tokens.get("cache_creation", 0)
    return f"  tokens {text}" + (f" ({cached} cache)" if cached else "")


def _excerpt(value: Any, lines: int = 6, chars: int = 600) -> list[str]:
    import json

    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    kept = text[:chars].splitlines()[:lines]
    cut = len(text) > chars or len(text.splitlines()) > lines
    return kept + (["..."] if cut else [])


def show_text(run: dict[str, Any]) -> str:
    """``runs-show`` as text: the run, then each step with what it did (long results cut;
    ``--json`` has them whole)."""
    out = [f"run {run['run_id']}: {run['name']} ({run['workflow']})",
           f"  {run['status']}; started {run['started_at']}; {_seconds(run['duration_s'])}; "
           f"{_money(run['cost_usd'])}; {run['succeeded']} of {steps_text(run['steps_total'])} "
           f"succeeded, {run['failed']} failed, {run['skipped']} skipped"
           + (f" ({run['stop_reason']})" if run["stop_reason"] else ""),
           f"  state: {run['state_file']}"]
    by_id = {s["id"]: s for s in run["steps"]}
    for step in run["steps"]:
        depth = 0
        parent = step["parent"]
        while parent is not None and parent in by_id and depth < 32:
            depth += 1
            parent = by_id[parent]["parent"]
        pad = "  " * depth
        what = {"shell": "run", "loop": "loop", "for_each": "for_each"}.get(
            step["kind"], f"{step['action']} {step['session']}")
        tries = ("" if step["kind"] in ("loop", "for_each") else
                 f"{step['attempts']} tr{'y' if step['attempts'] == 1 else 'ies'}  ")
        status = step["status"] + (" (reused)" if step["reused"] else "")
        ended = f"  ended {step['finished_at'][11:19]}" if step["finished_at"] else ""
        if step["iteration"] is not None:
            ended = f"  pass {step['iteration']}{ended}"
        out.append(f"\n{pad}{step['id']}  {what}  {status}  {tries}"
                   f"{_seconds(step['duration_s'])}  {_money(step['cost_usd'])}"
                   f"{_tokens(step['tokens'])}{ended}")
        if step["session_id"]:
            out.append(f"{pad}  session {step['session']} ({step['session_id']})")
        if step["exit_code"] is not None:
            out.append(f"{pad}  exit code {step['exit_code']}")
        if step["error"] and step["status"] == "failed":
            out.append(f"{pad}  error: {step['error']}")
        elif step["error"] and step["status"] == "skipped":  # why: not an error of its own
            out.append(f"{pad}  skipped: {step['error'].removeprefix('skipped: ')}")
        if step["kind"] in ("claude", "shell") and step["result"]:
            out += [f"{pad}  result: {line}" if i == 0 else f"{pad}          {line}"
                    for i, line in enumerate(_excerpt(step["result"]))]
        if step["kind"] == "shell" and step["stderr"]:  # its warnings too, when it succeeded
            tail = step["stderr"].splitlines()[-6:]
            out += [f"{pad}  stderr: {line}" if i == 0 else f"{pad}          {line}"
                    for i, line in enumerate(tail)]
        if step["output"] is not None and step["kind"] == "claude":
            out += [f"{pad}  output: {line}" for line in _excerpt(step["output"], 1, 300)]
        if step["resume_command"]:
            out.append(f"{pad}  resume: {step['resume_command']}")
    return printable("\n".join(line.rstrip() for line in out))


def pruned_text(done: Pruned, older_than: str, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {run['run_id']}" + (f" ({run['name']}, {run['status']}, started "
                                          f"{run['started_at']})" if "name" in run else "")
             for run in done.removed]
    lines.append(f"{verb} {len(done.removed)} run{'s' * (len(done.removed) != 1)} older than "
                 f"{older_than}" + (f"; kept {len(done.in_progress)} in progress "
                                    f"({', '.join(done.in_progress)})"
                                    if done.in_progress else ""))
    return printable("\n".join(lines))
