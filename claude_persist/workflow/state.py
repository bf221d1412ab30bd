"""A run's state: what each step did, saved after every step so a failed run can resume."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .. import fsio, validate
from ..errors import SessionBusyError, UsageError


class StepStatus(str, Enum):
    """Where a step stands in a run. The values are what state files and reports say."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:  # the value in messages, on every Python version
        return str.__str__(self)


class RunStatus(str, Enum):
    """Where a run stands. The values are what state files and reports say."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return str.__str__(self)


@dataclass
class StepState:
    """One step in one run."""

    id: str
    action: str
    session: str
    model: str | None = None
    effort: str | None = None
    status: StepStatus = StepStatus.PENDING
    session_id: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    cost_usd: float | None = None
    num_turns: int | None = None
    #: The text answer, a shell step's stdout; a for_each step's: the list of its expansions'.
    result: Any = ""
    output: Any = None
    error: str | None = None
    fingerprint: str = ""
    reused: bool = False
    #: ``claude``, ``shell``, ``loop`` or ``for_each``.
    kind: str = "claude"
    exit_code: int | None = None
    stderr: str = ""
    #: A loop's pass (from 1); for a step inside a loop, the pass it ran in.
    iteration: int | None = None
    #: The loop or fan-out this state is part of (its state's id), None at the top.
    parent: str | None = None
    #: A claude step's tokens (``input``, ``output``, ``cache_read``, ``cache_creation``), as
    #: :func:`usage_tokens` reads them from the call's result; None before it was kept.
    tokens: dict[str, int] | None = None
    #: When the state was recorded as ended (local time, as ``started_at``); None for a step
    #: that has not ended, or in a state written before it was kept.
    finished_at: str | None = None

    def __post_init__(self) -> None:
        self.status = StepStatus(self.status)  # a state file holds the plain text


@dataclass
class RunState:
    """One run of one workflow file."""

    run_id: str
    workflow: str
    workflow_name: str
    started_at: str
    vars: dict[str, str]
    steps: dict[str, StepState]
    status: RunStatus = RunStatus.RUNNING
    finished_at: str | None = None
    duration_s: float = 0.0
    stop_reason: str | None = None
    #: What earlier invocations of this run spent (``--resume-run`` carries it on).
    spent_before_usd: float = 0.0
    #: The process driving the run (one at a time: see :meth:`RunStore.lock`).
    pid: int | None = None

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)  # a state file holds the plain text

    #: What this invocation's calls spent, each counted as it ends: a loop's steps keep only
    #: their latest pass, so summing the steps would miss the earlier passes.
    #: None in a state written before it was kept: then the steps' costs are summed.
    spent_usd: float | None = None

    @property
    def total_cost_usd(self) -> float:
        """What this invocation spent (steps reused from earlier ones cost nothing now)."""
        if self.spent_usd is not None:
            return self.spent_usd
        return sum(s.cost_usd or 0.0 for s in self.steps.values() if not s.reused)

    @property
    def run_cost_usd(self) -> float:
        """What the run spent over all its invocations: what ``budget_usd`` covers."""
        return self.spent_before_usd + self.total_cost_usd

    def ordered(self) -> list[StepState]:
        """The steps as people read them: each top-level step, then what ran inside it
        (a loop's steps, a fan-out's expansions), in the order they started."""
        children: dict[str | None, list[StepState]] = {}
        for step in self.steps.values():
            parent = step.parent if step.parent in self.steps else None
            children.setdefault(parent, []).append(step)
        out: list[StepState] = []
        stack = list(reversed(children.get(None, [])))
        while stack:
            step = stack.pop()
            out.append(step)
            stack.extend(reversed(children.get(step.id, [])))
        return out

    def to_json(self) -> dict[str, Any]:
        # Shallow on purpose: the result is only serialised (asdict's deep copy of every step
        # was most of the cost of saving the state after each step).
        data = {name: getattr(self, name) for name in _RUN_FIELDS}
        data["steps"] = [{name: getattr(step, name) for name in _STEP_FIELDS}
                         for step in self.steps.values()]
        data["total_cost_usd"] = round(self.total_cost_usd, 6)
        data["run_cost_usd"] = round(self.run_cost_usd, 6)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        steps = {s["id"]: StepState(**s) for s in data["steps"]}
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "steps": steps})


_RUN_FIELDS = tuple(f.name for f in fields(RunState))
_STEP_FIELDS = tuple(f.name for f in fields(StepState))
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode


def state_text(state: RunState) -> str:
    """The state as JSON, one step per line, written by the C encoder: an indented dump is
    pure Python and is redone after every step of a run, however long the run grows."""
    data = state.to_json()
    steps = data.pop("steps")
    rows = ",\n    ".join(_encode(step) for step in steps)
    return f'{_encode(data)[:-1]}, "steps": [\n    {rows}\n]}}\n'


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_run_id() -> str:
    """A sortable, unique run id: ``YYYYmmdd-HHMMSS-xxxx``."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@dataclass
class RunStore:
    """The folder of one workflow file's runs, next to the mapping file."""

    folder: Path

    @classmethod
    def for_workflow(cls, mapping_folder: Path, workflow_path: Path, name: str) -> RunStore:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "workflow"
        digest = hashlib.md5(str(workflow_path).encode()).hexdigest()[:12]
        return cls(mapping_folder / "runs" / f"{slug}-{digest}")

    def path(self, run_id: str) -> Path:
        return self.folder / f"{validate.name(run_id, '--run-id')}.json"

    def lock(self, run_id: str, timeout: float | None) -> fsio.Lock:
        """Hold the run's lock: one process drives a run at a time. ``timeout`` None or 0
        tries once; another holder is a :class:`SessionBusyError` (exit 4) naming it."""
        lock = fsio.Lock(self.path(run_id).with_suffix(".lock"))
        fsio.ensure_folder(self.folder, "the folder of the run state")
        try:
            return lock.acquire(timeout or 0)
        except fsio.LockTimeout:
            pass
        try:
            holder = self.load(run_id).pid
        except UsageError:
            holder = None
        who = f"process {holder}" if holder else "another process"
        raise SessionBusyError(f"run {run_id} is being run by {who} (state in "
                               f"{self.path(run_id)}); a run is driven by one process at a "
                               "time: wait for it to end, or start a new run without "
                               "--resume-run")

    def journal(self, run_id: str) -> Path:
        return self.path(run_id).with_suffix(".journal")

    def save(self, state: RunState) -> None:
        """Write the whole state atomically (temp file, fsync, rename), so a crash never leaves
        half a state, and empty the journal it includes (compaction)."""
        fsio.write_in_folder(self.path(state.run_id), state_text(state), "the run state")
        with contextlib.suppress(FileNotFoundError):
            self.journal(state.run_id).unlink()

    def append(self, run_id: str, step: StepState) -> None:
        """Record one step's new state at the end of the run's journal: O(1) per step, where
        rewriting the whole state after each of thousands of expansions is quadratic. A torn
        last line (a crash mid-write) is ignored on loading. A step that has ended is stamped
        with the time (the history shows when each step ran)."""
        if step.finished_at is None and step.status not in (StepStatus.PENDING,
                                                            StepStatus.RUNNING):
            step.finished_at = _now()
        line = _encode({name: getattr(step, name) for name in _STEP_FIELDS}) + "\n"
        descriptor = os.open(self.journal(run_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                             0o600)
        try:
            os.write(descriptor, line.encode("utf-8"))
        finally:
            os.close(descriptor)

    def load(self, run_id: str, fix: str = "start a new run without --resume-run"
             ) -> RunState:
        """The run's state, its journal's steps applied. A file that cannot be read is a
        :class:`UsageError` naming that file (the state or the journal), what is wrong with
        it, and ``fix``: what the caller's user can do about it."""
        path = self.path(run_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise UsageError(f"--run-id {run_id}: no such run of this workflow in "
                             f"{self.folder}") from exc
        except OSError as exc:
            raise _unreadable("the run state", path, exc.strerror or str(exc), fix) from exc
        try:
            state = _state_from(_json_text(data))
        except ValueError as exc:
            raise _unreadable("the run state", path, str(exc), fix) from exc
        journal = self.journal(run_id)
        try:
            steps = _journal_steps(journal)
        except ValueError as exc:
            raise _unreadable("the run's journal", journal, str(exc), fix) from exc
        except OSError as exc:
            raise _unreadable("the run's journal", journal, exc.strerror or str(exc),
                              fix) from exc
        for step in steps:
            state.steps[step.id] = step
        return state

    def exists(self, run_id: str) -> bool:
        return self.path(run_id).exists()

    def latest_unfinished(self) -> RunState:
        """The run that did not succeed and was saved last, for ``--resume-run`` (by time, not
        by name: a run id may be anything)."""
        found: list[tuple[int, str, RunState]] = []
        for path in self.folder.glob("*.json") if self.folder.is_dir() else ():
            try:
                saved = path.stat().st_mtime_ns
            except OSError:
                continue
            state = self.load(path.stem)
            if state.status is not RunStatus.SUCCEEDED:
                found.append((saved, state.started_at, state))
        if found:
            return max(found, key=lambda entry: entry[:2])[2]
        raise UsageError(f"--resume-run: this workflow has no unfinished run in {self.folder}; "
                         "run it without --resume-run")


def _unreadable(what: str, path: Path, why: str, fix: str) -> UsageError:
    return UsageError(f"{what} {path} is unreadable: {why}" + (f"; {fix}" if fix else ""))


def _json_text(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"it is not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"it is not JSON ({exc})") from None


def _kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number",
            float: "a number", bool: "true or false", type(None): "null"}.get(
                type(value), type(value).__name__)


def _step_from(row: Any) -> StepState:
    """A step's state from its JSON, or ValueError saying in a person's words what is wrong."""
    if not isinstance(row, dict):
        raise ValueError(f"a step is {_kind_of(row)}, not an object")
    missing = [key for key in ("id", "action", "session") if key not in row]
    if missing:
        raise ValueError(f"a step has no {', '.join(missing)}")
    if not isinstance(row["id"], str) or not row["id"]:
        raise ValueError(f"a step's id is {_kind_of(row['id'])}, not a name")
    try:
        return StepState(**{k: v for k, v in row.items() if k in _STEP_FIELDS})
    except ValueError:
        raise ValueError(f"step {row['id']} has the status {row.get('status')!r}, which "
                         "no step has") from None


def _state_from(data: Any) -> RunState:
    if not isinstance(data, dict):
        raise ValueError(f"it holds {_kind_of(data)}, not a run's state (an object)")
    missing = [key for key in ("run_id", "workflow", "workflow_name", "started_at", "vars",
                               "steps") if key not in data]
    if missing:
        raise ValueError(f"it has no {', '.join(missing)}")
    if not isinstance(data["steps"], list):
        raise ValueError(f"its steps are {_kind_of(data['steps'])}, not a list")
    steps = [_step_from(row) for row in data["steps"]]
    fields_ = {k: v for k, v in data.items() if k in RunState.__dataclass_fields__}
    try:
        return RunState(**{**fields_, "steps": {step.id: step for step in steps}})
    except ValueError:
        raise ValueError(f"its status {data.get('status')!r} is not a run's status") from None


def _journal_steps(path: Path) -> list[StepState]:
    """The steps the journal recorded, in order. A line that is not JSON is skipped (the last
    one torn by a crash); one that is JSON but not a step's state is an error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"line {bad} is not UTF-8 text") from None
    steps = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash
        try:
            steps.append(_step_from(row))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return steps


def usage_tokens(raw: Any) -> dict[str, int] | None:
    """A call's own tokens from its result object: ``model_usage_since_last_result`` (this
    call's usage per model, summed) where the CLI gives it, else ``usage``. None when neither
    holds a count (an older state, a result without them)."""
    if not isinstance(raw, dict):
        return None
    own = raw.get("model_usage_since_last_result")
    keys = {"input": "inputTokens", "output": "outputTokens",
            "cache_read": "cacheReadInputTokens", "cache_creation": "cacheCreationInputTokens"}
    if isinstance(own, dict) and own:
        models = [entry for entry in own.values() if isinstance(entry, dict)]
    else:
        usage = raw.get("usage")
        if not isinstance(usage, dict):
            return None
        models = [usage]
        keys = {"input": "input_tokens", "output": "output_tokens",
                "cache_read": "cache_read_input_tokens",
                "cache_creation": "cache_creation_input_tokens"}
    totals = dict.fromkeys(keys, 0)
    seen = False
    for entry in models:
        for ours, theirs in keys.items():
            value = entry.get(theirs)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                totals[ours] += value
                seen = True
    return totals if seen else None


def now() -> str:
    """The local time as the state file records it."""
    return _now()


def finish(state: RunState, status: RunStatus, duration: float, reason: str | None = None
           ) -> None:
    """Mark the run ended."""
    state.status = status
    state.finished_at = _now()
    state.duration_s = round(duration, 3)
    state.stop_reason = reason
