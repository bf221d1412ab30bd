"""A workflow file -> checked dataclasses. Every problem is found, each with its file, line,
column and key, and all are reported at once (:class:`WorkflowError`, exit 2)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..claude.command import EFFORTS, Action
from ..errors import UsageError, WorkflowError
from ..mapping import NAME_PATTERN
from . import expr
from .yamlmarks import Marked, Path_, load

TOP_KEYS = {"version", "name", "description", "vars", "defaults", "max_parallel",
            "budget_usd", "steps"}
DEFAULT_KEYS = {"model", "effort", "deadline", "idle_timeout", "retries", "args", "max_turns",
                "max_budget_usd"}
STEP_KEYS = DEFAULT_KEYS | {"id", "create", "resume", "fork", "as", "role", "prompt",
                            "prompt_file", "schema", "output", "needs", "continue_on_error"}
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Step:
    """One step, with the workflow's defaults already applied."""

    id: str
    index: int
    action: Action
    session: str
    target: str  # the session this step leaves mapped: ``as`` for a fork, else ``session``
    prompt: str
    prompt_source: str  # "prompt" or the prompt file's path, for messages
    line: int
    role: Path | None = None
    model: str | None = None
    effort: str | None = None
    deadline: float | None = None
    idle_timeout: float | None = None
    retries: int = 0
    args: tuple[str, ...] = ()
    max_turns: int | None = None
    max_budget_usd: float | None = None
    schema: str | None = None
    output: Path | None = None
    needs: tuple[str, ...] = ()
    continue_on_error: bool = False
    refs: tuple[expr.Ref, ...] = ()
    fingerprint: str = ""

    @property
    def sessions(self) -> set[str]:
        """The session names this step touches (a fork touches its source and its copy)."""
        return {self.session, self.target}


@dataclass(frozen=True)
class Workflow:
    """A whole, checked workflow file."""

    path: Path
    name: str
    description: str
    vars: Mapping[str, str]
    max_parallel: int
    budget_usd: float | None
    steps: tuple[Step, ...]

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)


def parse_duration(value: Any) -> float:
    """Seconds as a number, or text such as ``90s``, ``15m``, ``2h``; > 0."""
    if isinstance(value, bool):
        raise ValueError("is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: write seconds, or 90s, 15m, 2h")
        seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if not seconds > 0:
        raise ValueError(f"{value!r} must be more than 0 seconds")
    return seconds


@dataclass
class _Checker:
    """Collects problems with their positions while reading the document."""

    file: Path
    marked: Marked
    problems: list[tuple[tuple[int, int], str]] = field(default_factory=list)

    def add(self, path: Path_, message: str) -> None:
        key = ".".join(str(p) for p in path) if path else "(top)"
        self.problems.append((self.marked.where(path), f"{key}: {message}"))

    def report(self) -> list[str]:
        ordered = sorted(set(self.problems + self.marked.problems))
        return [f"{self.file}:{line}:{col}: {message}" for (line, col), message in ordered]

    def keys(self, data: dict[str, Any], allowed: set[str], path: Path_) -> None:
        for key in data:
            if key not in allowed:
                self.add((*path, key), f"unknown key; expected one of {', '.join(sorted(allowed))}")

    def text(self, data: dict[str, Any], key: str, path: Path_) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.add((*path, key), "must be non-empty text")
            return None
        return value

    def number(self, data: dict[str, Any], key: str, path: Path_, *, integer: bool = False,
               minimum: float = 0, strict: bool = True) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or value < minimum or (
                strict and value == minimum):
            kind = "a whole number" if integer else "a number"
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            self.add((*path, key), f"must be {kind} {bound}, not {value!r}")
            return None
        return float(value)

    def duration(self, data: dict[str, Any], key: str, path: Path_) -> float | None:
        if data.get(key) is None:
            return None
        try:
            return parse_duration(data[key])
        except ValueError as exc:
            self.add((*path, key), str(exc))
            return None

    def file_ref(self, data: dict[str, Any], key: str, path: Path_) -> Path | None:
        value = self.text(data, key, path)
        if value is None:
            return None
        target = (self.file.parent / value).resolve()
        if not target.is_file():
            self.add((*path, key), f"no such file: {value} (looked for {target}; paths are "
                                   "relative to the workflow file)")
            return None
        return target

    def string_list(self, data: dict[str, Any], key: str, path: Path_) -> tuple[str, ...]:
        value = data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.add((*path, key), "must be a list of text items")
            return ()
        return tuple(value)


def load_workflow(
    path: str | Path, *, var_overrides: Mapping[str, str] | None = None,
    known_sessions: Iterable[str] = (),
) -> Workflow:
    """Read, parse and check ``path``; raise :class:`WorkflowError` listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise WorkflowError([f"{file}: cannot read the workflow: {reason}"]) from exc
    try:
        marked = load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise WorkflowError([f"{file}:{where} YAML syntax error: {problem}"]) from exc
    checker = _Checker(file, marked)
    workflow = _check(checker, dict(var_overrides or {}), set(known_sessions))
    problems = checker.report()
    if problems or workflow is None:
        raise WorkflowError(problems or [f"{file}: the workflow is empty"])
    return workflow


def _check(c: _Checker, overrides: dict[str, str], known: set[str]
           ) -> Workflow | None:
    data = c.marked.data
    if data is None:
        c.add((), "the file is empty: a workflow needs version: 1 and a list of steps")
        return None
    if not isinstance(data, dict):
        c.add((), "the workflow must be a mapping with version, name and steps")
        return None
    c.keys(data, TOP_KEYS, ())
    if data.get("version") != 1:
        c.add(("version",), f"must be 1, not {data.get('version')!r}")
    name = c.text(data, "name", ()) or c.file.stem
    raw_description = data.get("description")
    description = raw_description if isinstance(raw_description, str) else ""
    variables = _vars(c, data, overrides)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        c.add(("defaults",), "must be a mapping")
        defaults = {}
    c.keys(defaults, DEFAULT_KEYS, ("defaults",))
    max_parallel = c.number(data, "max_parallel", (), integer=True, minimum=1, strict=False)
    budget = c.number(data, "budget_usd", ())
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        c.add(("steps",), "must be a non-empty list of steps")
        return None
    steps = [_step(c, raw, i, defaults) for i, raw in enumerate(raw_steps)]
    checked = [s for s in steps if s is not None]
    _check_graph(c, checked, set(variables), known)
    return Workflow(path=c.file.resolve(), name=name, description=description, vars=variables,
                    max_parallel=int(max_parallel or 1), budget_usd=budget,
                    steps=tuple(_fingerprinted(s, variables) for s in checked))


def _vars(c: _Checker, data: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    raw = data.get("vars") or {}
    if not isinstance(raw, dict):
        c.add(("vars",), "must be a mapping of names to values")
        raw = {}
    result: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, (dict, list)) or value is None:
            c.add(("vars", key), "must be a single value (text or number)")
            continue
        result[key] = value if isinstance(value, str) else json.dumps(value)
    for key, value in overrides.items():
        if key not in result:
            raise UsageError(f"--var {key}=...: the workflow has no var {key!r} (it has: "
                             f"{', '.join(result) or 'none'})")
        result[key] = value
    return result


def _step(c: _Checker, raw: Any, index: int, defaults: dict[str, Any]) -> Step | None:
    path: Path_ = ("steps", index)
    if not isinstance(raw, dict):
        c.add(path, "each step must be a mapping with id, an action and a prompt")
        return None
    c.keys(raw, STEP_KEYS, path)
    merged = {**defaults, **raw}
    step_id = c.text(raw, "id", path)
    if step_id is None:
        c.add(path, "id: every step needs an id")
    elif not NAME_PATTERN.match(step_id):
        c.add((*path, "id"), f"{step_id!r} is not a valid id: use letters, digits, '.', '_', '-'")
    actions = [a for a in Action if a.value in raw]
    if len(actions) != 1:
        c.add(path, "needs exactly one of create: NAME, resume: NAME or fork: NAME (+ as: NEW)")
        return None
    action = actions[0]
    session = c.text(raw, action.value, path)
    if session is not None and not NAME_PATTERN.match(session):
        c.add((*path, action.value), f"{session!r} is not a valid session name")
    target = session
    if action is Action.FORK:
        target = c.text(raw, "as", path)
        if target is None:
            c.add(path, "fork: needs as: NEW (the name of the copy)")
        elif not NAME_PATTERN.match(target):
            c.add((*path, "as"), f"{target!r} is not a valid session name")
    elif "as" in raw:
        c.add((*path, "as"), "as: goes only with fork:")
    prompt, source = _prompt(c, raw, path)
    effort = c.text(merged, "effort", path)
    if effort is not None and effort.lower() not in EFFORTS:
        c.add((*path, "effort"), f"{effort!r} is not an effort level: use one of "
                                 f"{', '.join(EFFORTS)}")
    needs = c.string_list(raw, "needs", path)
    continue_on_error = raw.get("continue_on_error", False)
    if not isinstance(continue_on_error, bool):
        c.add((*path, "continue_on_error"), "must be true or false")
    schema = None
    schema_file = c.file_ref(raw, "schema", path)
    if schema_file is not None:
        try:
            schema = json.dumps(json.loads(schema_file.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            c.add((*path, "schema"), f"{schema_file} is not valid JSON: {exc}")
    output = c.text(raw, "output", path)
    refs = list(expr.find(prompt or ""))
    for bad in (r for r in refs if isinstance(r, expr.ExprError)):
        c.add((*path, source if source == "prompt" else "prompt_file"), str(bad))
    # Every field is checked even when an essential one is missing, so that all problems are
    # reported at once; such a step only serves the remaining checks (the load fails anyway).
    return Step(
        id=step_id or f"#{index + 1}", index=index, action=action, session=session or "",
        target=target or "", prompt=prompt or "", prompt_source=source,
        line=c.marked.where(path)[0],
        role=c.file_ref(raw, "role", path),
        model=c.text(merged, "model", path),
        effort=effort.lower() if effort else None,
        deadline=c.duration(merged, "deadline", path),
        idle_timeout=c.duration(merged, "idle_timeout", path),
        retries=int(c.number(merged, "retries", path, integer=True, strict=False) or 0),
        args=c.string_list(merged, "args", path),
        max_turns=_int_or_none(c.number(merged, "max_turns", path, integer=True, minimum=1,
                                        strict=False)),
        max_budget_usd=c.number(merged, "max_budget_usd", path),
        schema=schema,
        output=(c.file.parent / output).resolve() if output else None,
        needs=needs,
        continue_on_error=continue_on_error is True,
        refs=tuple(r for r in refs if isinstance(r, expr.Ref)),
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _prompt(c: _Checker, raw: dict[str, Any], path: Path_) -> tuple[str | None, str]:
    if ("prompt" in raw) == ("prompt_file" in raw):
        c.add(path, "needs exactly one of prompt: TEXT or prompt_file: FILE")
        return None, "prompt"
    if "prompt" in raw:
        return c.text(raw, "prompt", path), "prompt"
    prompt_file = c.file_ref(raw, "prompt_file", path)
    if prompt_file is None:
        return None, "prompt_file"
    try:
        text = prompt_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        c.add((*path, "prompt_file"), f"{prompt_file} is not UTF-8 text")
        return None, "prompt_file"
    if not text.strip():
        c.add((*path, "prompt_file"), f"{prompt_file} is empty")
        return None, "prompt_file"
    return text, str(prompt_file)


def _check_graph(c: _Checker, steps: list[Step], variables: set[str], known: set[str]) -> None:
    """References: unique ids, known vars and steps, sessions that exist when resumed."""
    ids: dict[str, int] = {}
    for step in steps:
        if step.id in ids:
            c.add(("steps", step.index, "id"), f"duplicate id {step.id!r} (first used by step "
                                               f"{ids[step.id] + 1})")
        ids.setdefault(step.id, step.index)
    with_schema = {s.id for s in steps if s.schema is not None}
    for step in steps:
        where: Path_ = ("steps", step.index, "prompt" if step.prompt_source == "prompt"
                        else "prompt_file")
        for need in step.needs:
            if need not in ids:
                c.add(("steps", step.index, "needs"), f"needs {need!r}, which is no step id")
            elif need == step.id:
                c.add(("steps", step.index, "needs"), "a step cannot need itself")
        for ref in step.refs:
            if ref.parts[0] == "env" and ref.parts[1] not in os.environ:
                c.add(where, f"{ref.text}: the environment variable {ref.parts[1]} is not set")
            if ref.parts[0] == "vars" and ref.parts[1] not in variables:
                c.add(where, f"{ref.text}: no var {ref.parts[1]!r} (vars: "
                             f"{', '.join(sorted(variables)) or 'none'})")
            sid = ref.step
            if sid is None:
                continue
            if sid not in ids:
                c.add(where, f"{ref.text}: no step {sid!r}")
            elif sid == step.id:
                c.add(where, f"{ref.text}: a step cannot use its own result")
            elif ref.parts[2] == "output" and sid not in with_schema:
                c.add(where, f"{ref.text}: step {sid!r} has no schema, so no output")
    made = set(known)
    for step in steps:
        if step.session and step.action is not Action.CREATE and step.session not in made:
            c.add(("steps", step.index, step.action.value),
                  f"session {step.session!r} is neither created by an earlier step nor in the "
                  "workspace's mapping; add a create: step before it, or create it first")
        made |= {step.target}


def _fingerprinted(step: Step, variables: Mapping[str, str]) -> Step:
    """The step with a hash of its whole definition (files and vars it uses included), so a
    resumed run can tell whether it changed."""
    used_vars = {r.parts[1]: variables.get(r.parts[1]) for r in step.refs if r.parts[0] == "vars"}
    role_text = step.role.read_text(encoding="utf-8") if step.role else None
    definition = {
        "action": step.action.value, "session": step.session, "target": step.target,
        "prompt": step.prompt, "role": role_text, "model": step.model, "effort": step.effort,
        "deadline": step.deadline, "idle_timeout": step.idle_timeout, "args": step.args,
        "max_turns": step.max_turns, "max_budget_usd": step.max_budget_usd,
        "schema": step.schema, "output": str(step.output), "needs": step.needs,
        "vars": used_vars,
    }
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode())
    return Step(**{**step.__dict__, "fingerprint": digest.hexdigest()[:16]})


def validate_var_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """``--var k=v`` flags -> a dict; a pair without ``=`` is a usage error."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--var {pair!r}: write --var NAME=VALUE")
        result[key.strip()] = value
    return result


__all__ = ["Step", "Workflow", "load_workflow", "parse_duration", "validate_var_assignments"]
