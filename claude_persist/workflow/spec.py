"""A workflow file -> checked dataclasses.

The file's shape (keys, types, enums, patterns, which keys go together) is checked against the
shipped JSON Schema, the one description of the format; this module adds what a schema cannot
say: unique ids, references to steps, vars and sessions, files that must exist, expressions.
Every problem is found, each with its file, line, column and key, and all are reported at once
(:class:`WorkflowError`, exit 2).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..claude.command import EFFORTS, Action
from ..errors import UsageError, WorkflowError
from . import expr
from .yamlmarks import Marked, Path_, load

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "workflow.schema.json"
# The same text as the schema's duration pattern (minus its zero exclusion: parse_duration also
# takes numbers, and says "more than 0" for both).
DURATION = re.compile(r"^ *([0-9]+(?:\.[0-9]+)?) *([smh]?) *$(?!\n)")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}
# A longer limit means no limit in practice; capped so that timers never overflow.
MAX_SECONDS = 1e9


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
    column: int = 1
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

    @property
    def where(self) -> str:
        """``line:column`` of the step in its file, for messages."""
        return f"{self.line}:{self.column}"


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
        seconds = float(min(value, MAX_SECONDS))
    else:
        match = DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: write seconds, or 90s, 15m, 2h")
        seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if not seconds > 0:
        raise ValueError(f"{value!r} must be more than 0 seconds")
    return min(seconds, MAX_SECONDS)


def path_text(path: Path_) -> str:
    """``("steps", 2, "deadline")`` -> ``steps[2].deadline``; the root is ``(top)``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top)"


# -- shape: the JSON Schema -----------------------------------------------------------------------


@functools.cache
def schema() -> dict[str, Any]:
    """The shipped workflow schema."""
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


@functools.cache
def _validator() -> Any:
    import jsonschema  # here, not at the top: only loading a workflow needs it

    return jsonschema.Draft202012Validator(schema())


def _resolved(node: Any) -> Any:
    """``node`` with its local ``$ref`` chain followed, as far as it has no title itself."""
    while isinstance(node, dict) and "title" not in node and \
            isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = schema()
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def _title(node: Any) -> str | None:
    title = _resolved(node).get("title") if isinstance(_resolved(node), dict) else None
    return title if isinstance(title, str) else None


def _shown(value: Any) -> str:
    """A value as a message quotes it, cut short."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        text = repr(value)
    elif isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = f"{value} (a {type(value).__name__})"
    return text if len(text) <= 60 else text[:56] + " ..."


def shape_problems(data: Any) -> list[tuple[Path_, str]]:
    """Every way ``data`` breaks the schema, as (where, what is wrong and what to write)."""
    errors = list(_validator().iter_errors(data))
    # A value of the wrong type gets one message, not also those of rules that presume a type.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    problems: list[tuple[Path_, str]] = []
    for error in errors:
        path: Path_ = tuple(error.absolute_path)
        if error.validator != "type" and path in mistyped:
            continue
        problems.extend(_explain(error, path))
    return problems


def _explain(error: Any, path: Path_) -> list[tuple[Path_, str]]:
    keyword, node, instance = error.validator, error.schema, error.instance
    properties: dict[str, Any] = node.get("properties", {}) if isinstance(node, dict) else {}
    if keyword == "additionalProperties":
        allowed = ", ".join(sorted(properties))
        return [((*path, key), f"unknown key; expected one of {allowed}")
                for key in instance if key not in properties]
    if keyword == "required":
        return [((*path, key), f"missing; add {key}: with {_title(properties.get(key))}")
                for key in error.validator_value if key not in instance]
    if keyword == "dependentRequired":
        return [((*path, key), f"needs {dep}: as well ({properties[dep].get('description')})")
                for key, deps in error.validator_value.items() if key in instance
                for dep in deps if dep not in instance]
    if keyword in ("oneOf", "anyOf") and all(set(choice) == {"required"}
                                              for choice in error.validator_value):
        return [(path, _title(node) or error.message)]
    if "propertyNames" in error.relative_schema_path:
        path = (*path, instance)  # the key itself is wrong: point at it
    if not path and instance is None:
        return [(path, "the file is empty: a workflow needs version: 1 and a list of steps")]
    expected = _title(node)
    if expected is None:
        return [(path, error.message)]
    return [(path, f"expected {expected}, got {_shown(instance)}")]


# -- meaning: what the schema cannot say ----------------------------------------------------------


@dataclass
class _Checker:
    """Collects problems with their positions while reading the document."""

    file: Path
    marked: Marked
    problems: list[tuple[tuple[int, int], str]] = field(default_factory=list)

    def add(self, path: Path_, message: str) -> None:
        self.problems.append((self.marked.where(path), f"{path_text(path)}: {message}"))

    def report(self) -> list[str]:
        ordered = sorted(set(self.problems + self.marked.problems))
        return [f"{self.file}:{line}:{col}: {message}" for (line, col), message in ordered]

    def file_ref(self, data: dict[str, Any], key: str, path: Path_) -> Path | None:
        """The existing file a key names, relative to the workflow file."""
        value = _text(data.get(key))
        if value is None or "\0" in value:
            return None  # the schema says what is wrong with it
        try:
            target = (self.file.parent / value).resolve()
        except (OSError, RuntimeError) as exc:
            self.add((*path, key), f"cannot resolve {value}: {exc}")
            return None
        if not target.is_file():
            self.add((*path, key), f"no such file: {value} (looked for {target}; paths are "
                                   "relative to the workflow file)")
            return None
        return target

    def read(self, target: Path, path: Path_) -> str | None:
        try:
            return target.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            self.add(path, f"{target} is not UTF-8 text")
        except OSError as exc:
            self.add(path, f"cannot read {target}: {exc.strerror}")
        return None


# Values the schema has checked, converted; a value of the wrong shape reads as absent (the
# schema's message says what is wrong), so the checks of meaning still run on the rest.

def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, float) and value.is_integer() else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return float("inf")


def _seconds(value: Any) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except ValueError:
        return None


def _texts(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


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
    for where_, message in shape_problems(marked.data):
        checker.add(where_, message)
    workflow = _build(checker, dict(var_overrides or {}), set(known_sessions))
    problems = checker.report()
    if problems or workflow is None:
        raise WorkflowError(problems or [f"{file}: the workflow is empty"])
    return replace(workflow, steps=tuple(_fingerprinted(s, workflow.vars)
                                         for s in workflow.steps))


def _build(c: _Checker, overrides: dict[str, str], known: set[str]) -> Workflow | None:
    data = c.marked.data
    if not isinstance(data, dict):
        return None
    variables = _vars(data.get("vars"), overrides)
    defaults = data.get("defaults")
    defaults = defaults if isinstance(defaults, dict) else {}
    raw_steps = data.get("steps")
    steps = [_step(c, raw, i, defaults) for i, raw in
             enumerate(raw_steps if isinstance(raw_steps, list) else []) if isinstance(raw, dict)]
    _check_graph(c, steps, set(variables), known)
    description = data.get("description")
    return Workflow(path=c.file.resolve(), name=_text(data.get("name")) or c.file.stem,
                    description=description if isinstance(description, str) else "",
                    vars=variables, max_parallel=_whole(data.get("max_parallel")) or 1,
                    budget_usd=_number(data.get("budget_usd")), steps=tuple(steps))


def _vars(raw: Any, overrides: dict[str, str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in (raw.items() if isinstance(raw, dict) else ()):
        if isinstance(value, (str, int, float)):  # bool is an int: true -> "true"
            result[key] = value if isinstance(value, str) else json.dumps(value)
    for key, value in overrides.items():
        if key not in result:
            raise UsageError(f"--var {key}=...: the workflow has no var {key!r} (it has: "
                             f"{', '.join(result) or 'none'})")
        result[key] = value
    return result


def _step(c: _Checker, raw: dict[str, Any], index: int, defaults: dict[str, Any]) -> Step:
    path: Path_ = ("steps", index)
    merged = {**defaults, **raw}
    actions = [a for a in Action if a.value in raw]
    action = actions[0] if actions else Action.CREATE
    # With more than one action (the schema reports it), the first stands for the step in the
    # session checks, so that later steps are not reported for its sake.
    session = _text(raw.get(action.value))
    target = _text(raw.get("as")) if action is Action.FORK else session
    prompt, source = _prompt(c, raw, path)
    schema_text = None
    schema_file = c.file_ref(raw, "schema", path)
    if schema_file is not None and (text := c.read(schema_file, (*path, "schema"))) is not None:
        try:
            schema_text = json.dumps(json.loads(text))
        except ValueError as exc:
            c.add((*path, "schema"), f"{schema_file} is not valid JSON: {exc}")
    role = c.file_ref(raw, "role", path)
    if role is not None and c.read(role, (*path, "role")) is None:
        role = None
    output = _text(raw.get("output"))
    output_path = None
    if output is not None and "\0" not in output:
        try:
            output_path = (c.file.parent / output).resolve()
        except (OSError, RuntimeError) as exc:
            c.add((*path, "output"), f"cannot resolve {output}: {exc}")
    refs = list(expr.find(prompt or ""))
    for bad in (r for r in refs if isinstance(r, expr.ExprError)):
        c.add((*path, "prompt" if source == "prompt" else "prompt_file"), str(bad))
    effort = merged.get("effort")
    line, column = c.marked.where(path)
    # Every field is read even when an essential one is missing, so that all problems are
    # reported at once; such a step only serves the remaining checks (the load fails anyway).
    return Step(
        id=_text(raw.get("id")) or f"#{index + 1}", index=index, action=action,
        session=session or "", target=target or "", prompt=prompt or "", prompt_source=source,
        line=line, column=column, role=role, model=_text(merged.get("model")),
        effort=effort.lower() if isinstance(effort, str) and effort.lower() in EFFORTS else None,
        deadline=_seconds(merged.get("deadline")),
        idle_timeout=_seconds(merged.get("idle_timeout")),
        retries=_whole(merged.get("retries")) or 0, args=_texts(merged.get("args")),
        max_turns=_whole(merged.get("max_turns")),
        max_budget_usd=_number(merged.get("max_budget_usd")), schema=schema_text,
        output=output_path, needs=_texts(raw.get("needs")),
        continue_on_error=raw.get("continue_on_error") is True,
        refs=tuple(r for r in refs if isinstance(r, expr.Ref)),
    )


def _prompt(c: _Checker, raw: dict[str, Any], path: Path_) -> tuple[str | None, str]:
    if "prompt" in raw or "prompt_file" not in raw:
        return _text(raw.get("prompt")), "prompt"
    prompt_file = c.file_ref(raw, "prompt_file", path)
    if prompt_file is None:
        return None, "prompt_file"
    text = c.read(prompt_file, (*path, "prompt_file"))
    if text is None:
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
            c.add(("steps", step.index, "id"), f"duplicate id {step.id!r} (first used by "
                                               f"steps[{ids[step.id]}])")
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
    return replace(step, fingerprint=digest.hexdigest()[:16])


def validate_var_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """``--var k=v`` flags -> a dict; a pair without ``=`` is a usage error."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--var {pair!r}: write --var NAME=VALUE")
        result[key.strip()] = value
    return result


__all__ = ["SCHEMA_PATH", "Step", "Workflow", "load_workflow", "parse_duration", "path_text",
           "schema", "shape_problems", "validate_var_assignments"]
