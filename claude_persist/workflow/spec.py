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

from .. import validate
from ..claude.command import Action
from ..errors import UsageError, WorkflowError
from ..settings import CallSettings, digest, merge
from . import expr, plan
from .yamlmarks import (
    MAX_DOCUMENT_BYTES,
    FileRefused,
    LimitError,
    Marked,
    Path_,
    load,
    read_regular_file,
)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "workflow.schema.json"
#: The largest file a step may name (prompt_file, role, schema): beyond any model's context.
MAX_STEP_FILE_BYTES = 16 << 20
MAPPING_HINT = ("text with ': ' in it reads as a mapping in YAML: put the text in quotes, or "
                "write it as a | block")


@dataclass(frozen=True)
class Step:
    """One step, with the workflow's defaults already applied."""

    id: str
    index: int
    action: Action
    session: str
    target: str  # the session this step leaves mapped: ``as`` for a fork, else ``session``
    prompt: str
    prompt_source: str  # "prompt" or the prompt file's path as given, for messages
    line: int
    column: int = 1
    #: The step's layer of the settings merge (its own keys over the workflow's ``defaults:``);
    #: ``Sessions`` merges it over the session's stored values and configuration.
    settings: CallSettings = field(default_factory=CallSettings)
    retries: int = 0
    output: Path | None = None
    needs: tuple[str, ...] = ()
    continue_on_error: bool = False
    refs: tuple[expr.Ref, ...] = ()
    fingerprint: str = ""
    #: ``claude`` (create/resume/fork), ``shell`` (run) or ``loop``.
    kind: str = "claude"
    #: A shell step's command: text for ``/bin/sh -c``, or an argv.
    run: str | tuple[str, ...] | None = None
    cwd: Path | None = None
    env: tuple[tuple[str, str], ...] = ()
    condition: expr.Expression | None = None
    until: expr.Expression | None = None
    max_iterations: int = 1
    body: tuple[Step, ...] = ()
    #: ``for_each:``: an expression giving the list, or the list itself.
    for_each: expr.Expression | tuple[Any, ...] | None = None
    fan_parallel: int | None = None
    #: The loop or fanned-out step this one is inside, if any.
    parent: str | None = None
    #: Its session names are ``${{ }}`` templates (a for_each step's, rendered per element).
    templated: bool = False
    #: Where it stands in the document, for messages: ``("steps", 2, "loop", "steps", 0)``.
    path: tuple[str | int, ...] = ()
    #: Each lookup with the key it is written in, for messages.
    places: tuple[tuple[expr.Ref, tuple[str | int, ...]], ...] = ()

    @property
    def sessions(self) -> set[str]:
        """The session names this step touches (a fork touches its source and its copy; a
        loop, those of its steps); templated ones are distinct per expansion, not here."""
        if self.kind == "loop":
            return set().union(*(s.sessions for s in self.body))
        if self.kind == "shell" or self.templated:
            return set()
        return {self.session, self.target}

    @property
    def all_refs(self) -> tuple[expr.Ref, ...]:
        """Its lookups and those of the steps inside it."""
        return self.refs + tuple(r for s in self.body for r in s.all_refs)

    def walk(self) -> Iterable[Step]:
        """This step and every step inside it."""
        yield self
        for inner in self.body:
            yield from inner.walk()

    @property
    def where(self) -> str:
        """``line:column`` of the step in its file, for messages."""
        return f"{self.line}:{self.column}"


@dataclass(frozen=True, eq=False)
class Workflow:
    """A whole, checked workflow file."""

    path: Path
    name: str
    description: str
    vars: Mapping[str, str]
    max_parallel: int
    budget_usd: float | None
    steps: tuple[Step, ...]
    #: The environment variables ``${{ env.NAME }}`` may read: those the file declares.
    env: tuple[str, ...] = ()
    #: The file's path as it was given, for messages.
    source: str = ""

    def step(self, step_id: str) -> Step:
        return self.by_id[step_id]

    @functools.cached_property
    def by_id(self) -> dict[str, Step]:
        """Every step, those inside loops too, by id (the first of a duplicate id)."""
        found: dict[str, Step] = {}
        for top in self.steps:
            for step in top.walk():
                found.setdefault(step.id, step)
        return found

    @functools.cached_property
    def top(self) -> dict[str, str]:
        """Each step id -> the id of the top-level step it is in (itself at the top)."""
        return {step.id: top.id for top in self.steps for step in top.walk()}


def parse_duration(value: Any) -> float:
    """Seconds as a number, or text such as ``90s``, ``15m``, ``2h``; > 0 (the one spelling,
    :func:`claude_persist.validate.duration`)."""
    seconds = validate.duration(value)
    if not seconds > 0:
        raise ValueError(f"{value!r} must be more than 0 seconds")
    return seconds


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
    hint = f"; {MAPPING_HINT}" if isinstance(instance, dict) and \
        _resolved(node).get("type") == "string" else ""
    return [(path, f"expected {expected}, got {_shown(instance)}{hint}")]


# -- meaning: what the schema cannot say ----------------------------------------------------------


@dataclass
class _Checker:
    """Collects problems with their positions while reading the document."""

    file: Path  # as given: messages name paths the way the user wrote them
    marked: Marked
    problems: list[tuple[tuple[int, int], str]] = field(default_factory=list)
    #: The file's text, to place a problem inside a quoted value.
    source: str = ""
    #: Where the schema found a problem: values there (and below) are not read.
    wrong: set[Path_] = field(default_factory=set)

    def add(self, path: Path_, message: str) -> None:
        self.problems.append((self.marked.where(path), f"{path_text(path)}: {message}"))

    def add_expr(self, path: Path_, error: expr.ExprError, text: str) -> None:
        """An expression's problem, at the line:column of the offending part in the file."""
        line, column = self.marked.values.get(path, self.marked.where(path))
        lines = self.source.splitlines()
        if 0 < line <= len(lines) and lines[line - 1][column - 1:column] in ("'", '"'):
            column += 1  # a quoted value: the text starts after the quote
        offset = error.offset or 0
        before = text[:offset]
        if "\n" in before:
            line, column = line + before.count("\n"), offset - before.rindex("\n")
        else:
            column += offset
        self.problems.append(((line, column), f"{path_text(path)}: {error}"))

    def report(self) -> list[str]:
        ordered = sorted(set(self.problems + self.marked.problems))
        return [f"{self.file}:{line}:{col}: {message}" for (line, col), message in ordered]

    def usable(self, path: Path_) -> bool:
        """The schema found nothing wrong at ``path`` or below it."""
        return not any(bad[:len(path)] == path for bad in self.wrong)

    def file_text(self, data: dict[str, Any], key: str, path: Path_) -> tuple[Path, str] | None:
        """The absolute path and the text of the regular file a key names, relative to the
        workflow file."""
        value = _text(data.get(key))
        if value is None or not self.usable((*path, key)):
            return None  # the schema says what is wrong with it
        target = self.file.parent / value
        try:
            return target.resolve(), read_regular_file(target, MAX_STEP_FILE_BYTES)
        except FileNotFoundError:
            self.add((*path, key), f"no such file: {value} (looked for {target}; paths are "
                                   "relative to the workflow file)")
        except UnicodeDecodeError:
            self.add((*path, key), f"{target} is not UTF-8 text")
        except FileRefused as exc:
            self.add((*path, key), f"cannot use {target}: {exc}")
        except OSError as exc:
            self.add((*path, key), f"cannot read {target}: {exc.strerror}")
        except RuntimeError as exc:  # a symlink loop, on resolving
            self.add((*path, key), f"cannot resolve {target}: {exc}")
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


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


# -- settings: every key the schema marks with x-setting, read alike ------------------------------

#: How a setting's value is converted, by the kind the schema gives it.
CONVERT: dict[str, Any] = {"duration": _seconds, "integer": _whole, "number": _number,
                           "array": _texts, "boolean": _flag, "string": _text}


@functools.cache
def setting_keys() -> dict[str, dict[str, Any]]:
    """The workflow keys that are claude settings (``schema`` -> ``json_schema``, ...), each
    with its schema: the keys of ``$defs/settings`` that carry ``x-setting``."""
    properties: dict[str, Any] = schema()["$defs"]["settings"]["properties"]
    return {key: node for key, node in properties.items() if "x-setting" in node}


def _kind(node: Any) -> str:
    """A setting's kind: ``duration`` for the schema's duration, else its JSON type."""
    while isinstance(node, dict) and "type" not in node and isinstance(node.get("$ref"), str):
        if node["$ref"] == "#/$defs/duration":
            return "duration"
        target: Any = schema()
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    kind = node.get("type") if isinstance(node, dict) else None
    return kind if isinstance(kind, str) else "string"


def _layer(c: _Checker, raw: dict[str, Any], path: Path_) -> tuple[CallSettings, dict[str, str]]:
    """The settings ``raw`` sets, and the text of each file it passes by path (for the
    fingerprint: the path alone would not show an edit of the file)."""
    values: dict[str, Any] = {}
    files: dict[str, str] = {}
    for key, node in setting_keys().items():
        if key not in raw or not c.usable((*path, key)):
            continue
        value: Any
        if "x-file" in node:
            found = c.file_text(raw, key, path)
            if found is None:
                continue
            target, text = found
            if node["x-file"] == "json":
                try:
                    value = json.dumps(json.loads(text))
                except ValueError as exc:
                    c.add((*path, key), f"{c.file.parent / raw[key]} is not valid JSON: {exc}")
                    continue
            else:
                value, files[key] = str(target), text
        else:
            value = CONVERT[_kind(node)](raw[key])
        if value is not None:
            values[node["x-setting"]] = value
    try:
        return CallSettings(**values).checked(c.file.parent), files
    except UsageError as exc:  # the schema and the settings' own checks disagree
        c.add(path, str(exc))
        return CallSettings(), files


def load_workflow(
    path: str | Path, *, var_overrides: Mapping[str, str] | None = None,
    known_sessions: Iterable[str] = (), max_parallel: int | None = None,
) -> Workflow:
    """Read, parse and check ``path``, its plan included (``max_parallel`` overrides the
    file's); raise :class:`WorkflowError` listing every problem."""
    file = Path(path)
    try:
        text = read_regular_file(file, MAX_DOCUMENT_BYTES)
    except (OSError, UnicodeDecodeError, FileRefused) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else
                  "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc))
        raise WorkflowError([f"{file}: cannot read the workflow: {reason}"]) from exc
    try:
        marked = load(text)
    except LimitError as exc:
        raise WorkflowError([f"{file}:{exc.line}:{exc.column}: refused: {exc}"]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if problem == "mapping values are not allowed here":
            problem += f"; {MAPPING_HINT}"
        raise WorkflowError([f"{file}:{where} YAML syntax error: {problem}"]) from exc
    checker = _Checker(file, marked, source=text)
    for where_, message in shape_problems(marked.data):
        checker.add(where_, message)
        checker.wrong.add(where_)
    workflow = _build(checker, dict(var_overrides or {}), set(known_sessions))
    if workflow is not None:
        parallel = (max_parallel or workflow.max_parallel) > 1
        for where_, message in plan.problems(workflow, parallel):
            checker.add(where_, message)
    problems = checker.report()
    if problems or workflow is None:
        raise WorkflowError(problems or [f"{file}: the workflow is empty"])
    return workflow


def _build(c: _Checker, overrides: dict[str, str], known: set[str]) -> Workflow | None:
    data = c.marked.data
    if not isinstance(data, dict):
        return None
    variables = _vars(data.get("vars"), overrides)
    env = _texts(data.get("env")) if c.usable(("env",)) else ()
    defaults = data.get("defaults")
    defaults = defaults if isinstance(defaults, dict) else {}
    base = _layer(c, defaults, ("defaults",))
    raw_steps = data.get("steps")
    steps = [_step(c, raw, ("steps", i), defaults, base, variables) for i, raw in
             enumerate(raw_steps if isinstance(raw_steps, list) else []) if isinstance(raw, dict)]
    _check_graph(c, steps, set(variables), set(env), known)
    description = data.get("description")
    return Workflow(path=c.file.resolve(), name=_text(data.get("name")) or c.file.stem,
                    description=description if isinstance(description, str) else "",
                    vars=variables, max_parallel=_whole(data.get("max_parallel")) or 1,
                    budget_usd=_number(data.get("budget_usd")), steps=tuple(steps), env=env,
                    source=str(c.file))


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


@dataclass(frozen=True)
class _Where:
    """What encloses a step: the loop or fan-out it is in, which names it may read."""

    parent: str | None = None
    in_loop: bool = False
    in_fan: bool = False


def _expression(c: _Checker, raw: dict[str, Any], key: str, path: Path_
                ) -> expr.Expression | None:
    text = raw.get(key)
    if not isinstance(text, str) or not c.usable((*path, key)):
        return None
    try:
        return expr.parse(text)
    except expr.ExprError as exc:
        c.add_expr((*path, key), exc, text)
        return None


def _text_exprs(c: _Checker, text: str, path: Path_) -> list[expr.Ref]:
    """The lookups of the ``${{ }}`` in ``text``; each bad one is a problem at ``path``."""
    refs: list[expr.Ref] = []
    for found in expr.find(text):
        if isinstance(found, expr.ExprError):
            c.add_expr(path, found, text)
        else:
            refs.extend(found.refs)
    return refs


def _step(c: _Checker, raw: dict[str, Any], path: Path_, defaults: dict[str, Any],
          base: tuple[CallSettings, dict[str, str]], variables: Mapping[str, str],
          where: _Where = _Where()) -> Step:
    index = path[-1] if isinstance(path[-1], int) else 0
    kind = "shell" if "run" in raw else "loop" if "loop" in raw else "claude"
    actions = [a for a in Action if a.value in raw]
    action = actions[0] if actions else Action.CREATE
    # With more than one action (the schema reports it), the first stands for the step in the
    # session checks, so that later steps are not reported for its sake.
    session = _text(raw.get(action.value)) if kind == "claude" else None
    target = _text(raw.get("as")) if action is Action.FORK else session
    places: list[tuple[expr.Ref, Path_]] = []  # each lookup, and the key it is in
    fan = raw.get("for_each")
    for_each: expr.Expression | tuple[Any, ...] | None = None
    if isinstance(fan, list):
        for_each = tuple(fan)
    elif isinstance(fan, str) and c.usable((*path, "for_each")):
        found = [e for e in expr.find(fan)]
        for bad in (e for e in found if isinstance(e, expr.ExprError)):
            c.add_expr((*path, "for_each"), bad, fan)
        for_each = expr.whole(fan)
        if for_each is None and not any(isinstance(e, expr.ExprError) for e in found):
            c.add((*path, "for_each"), "write the list as one ${{ expression }}, or as a YAML "
                                       "list")
        places += [(r, (*path, "for_each")) for r in (for_each.refs if for_each else ())]
    in_fan = where.in_fan or "for_each" in raw
    step_id = _text(raw.get("id")) or f"#{index + 1}"
    inner = _Where(parent=step_id, in_loop=where.in_loop, in_fan=in_fan)
    templated = False
    for key in ("create", "resume", "fork", "as"):
        value = raw.get(key)
        if isinstance(value, str) and expr.OPEN in value and c.usable((*path, key)):
            found_refs = _text_exprs(c, value, (*path, key))
            templated = True
            if not in_fan:
                c.add((*path, key), "a session name may use ${{ }} only in a for_each step "
                                    "(to name one session per element)")
            elif not any(r.parts[0] in ("item", "item_index") for r in found_refs):
                c.add((*path, key), "each expansion of a for_each needs its own session: "
                                    "use ${{ item... }} or ${{ item_index }} in the name")
            places += [(r, (*path, key)) for r in found_refs]
    if kind == "claude" and in_fan and not templated and session is not None:
        c.add((*path, action.value), "each expansion of a for_each needs its own session: "
                                     "use ${{ item... }} or ${{ item_index }} in the name")
    if kind == "claude":
        prompt, source = _prompt(c, raw, path)
    else:
        prompt, source = "", "prompt"
        for key in ("prompt", "prompt_file"):
            if key in raw:
                c.add((*path, key), f"a {'shell' if kind == 'shell' else 'loop'} step has no "
                                    "prompt; remove it")
    own, own_files = _layer(c, raw, path)
    inherited, inherited_files = base
    if raw.get("args_replace") is True:
        inherited = replace(inherited, extra_args=())
    settings = merge(own, inherited)  # defaults' args first, then the step's
    output = _text(raw.get("output")) if c.usable((*path, "output")) else None
    output_path = None
    if output is not None:
        try:
            output_path = (c.file.parent / output).resolve()
        except (OSError, RuntimeError) as exc:
            c.add((*path, "output"), f"cannot resolve {output}: {exc}")
    prompt_key = (*path, "prompt" if source == "prompt" else "prompt_file")
    places += [(r, prompt_key) for r in _text_exprs(c, prompt or "", prompt_key)]
    run: str | tuple[str, ...] | None = None
    cwd: Path | None = None
    env: list[tuple[str, str]] = []
    if kind == "shell":
        command = raw.get("run")
        run = command if isinstance(command, str) else _texts(command)
        folder = _text(raw.get("cwd")) if c.usable((*path, "cwd")) else None
        if folder is not None:
            cwd = (c.file.parent / folder).resolve()
            if not cwd.is_dir():
                c.add((*path, "cwd"), f"no such folder: {folder} (looked for {cwd}; paths are "
                                      "relative to the workflow file)")
        for key, value in (raw.get("env") or {}).items() if isinstance(raw.get("env"), dict) \
                else ():
            if isinstance(value, (str, int, float)):
                text = value if isinstance(value, str) else json.dumps(value)
                env.append((key, text))
                places += [(r, (*path, "env", key))
                           for r in _text_exprs(c, text, (*path, "env", key))]
    elif "cwd" in raw or "env" in raw:
        for key in ("cwd", "env"):
            if key in raw:
                c.add((*path, key), f"{key}: is for shell steps (run:) only")
    condition = _expression(c, raw, "if", path)
    places += [(r, (*path, "if")) for r in (condition.refs if condition else ())]
    body: list[Step] = []
    until = None
    max_iterations = 1
    loop = raw.get("loop")
    if kind == "loop" and isinstance(loop, dict):
        loop_where = _Where(parent=step_id, in_loop=True, in_fan=in_fan)
        inner_steps = loop.get("steps")
        body = [_step(c, item, (*path, "loop", "steps", i), defaults, base, variables,
                      loop_where)
                for i, item in enumerate(inner_steps if isinstance(inner_steps, list) else [])
                if isinstance(item, dict)]
        until = _expression(c, loop, "until", (*path, "loop"))
        places += [(r, (*path, "loop", "until")) for r in (until.refs if until else ())]
        max_iterations = _whole(loop.get("max_iterations")) or 1
    if "max_parallel" in raw and "for_each" not in raw:
        c.add((*path, "max_parallel"), "a step's max_parallel limits its for_each expansions; "
                                       "add for_each:, or set max_parallel at the top")
    retries = raw["retries"] if "retries" in raw else defaults.get("retries")
    line, column = c.marked.where(path)
    # Every field is read even when an essential one is missing, so that all problems are
    # reported at once; such a step only serves the remaining checks (the load fails anyway).
    step = Step(
        id=step_id, index=index, action=action,
        session=session or "", target=target or "", prompt=prompt or "", prompt_source=source,
        line=line, column=column, settings=settings, retries=max(0, _whole(retries) or 0),
        output=output_path, needs=_texts(raw.get("needs")),
        continue_on_error=raw.get("continue_on_error") is True,
        refs=tuple(r for r, _ in places), places=tuple(places), kind=kind, run=run, cwd=cwd,
        env=tuple(env), condition=condition,
        until=until, max_iterations=max_iterations, body=tuple(body), for_each=for_each,
        fan_parallel=_whole(raw.get("max_parallel")), parent=where.parent,
        templated=templated, path=path,
    )
    _check_scope(c, step, path, where, inner)
    if isinstance(for_each, tuple):
        _check_expansions(c, step, path, for_each, variables)
    return replace(step, fingerprint=_fingerprint(step, {**inherited_files, **own_files},
                                                  variables))


def _check_expansions(c: _Checker, step: Step, path: Path_, items: tuple[Any, ...],
                      variables: Mapping[str, str]) -> None:
    """A literal list: the sessions each expansion names are known now, so check them now."""

    def resolve(ref: expr.Ref, item: Any, index: int) -> Any:
        if ref.parts[0] == "item_index":
            return index
        if ref.parts[0] == "item":
            value = item
            for key in ref.parts[1:]:
                value = value.get(key) if isinstance(value, dict) else None
            return value
        if ref.parts[0] == "vars":
            return variables.get(ref.parts[1], "")
        raise expr.Unknown(ref.text)

    for inner in step.walk():
        if inner.kind != "claude" or not inner.templated:
            continue
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            try:
                names = {expr.render(n, lambda r: resolve(r, item, index))  # noqa: B023
                         for n in (inner.session, inner.target)}
            except (expr.ExprError, expr.Unknown):
                return  # decided at run time
            for name in names:
                if expr.OPEN in name:
                    return
                if not re.match(r"^[A-Za-z0-9._-]+$(?!\n)", name):
                    c.add((*path, "for_each", index), f"element {index} names session "
                          f"{name!r} in step {inner.id}, which is not a name of letters, "
                          "digits, '.', '_' and '-'")
                elif name in seen and seen[name] != index:
                    c.add((*path, "for_each", index), f"elements {seen[name]} and {index} both "
                          f"name session {name!r} in step {inner.id}: each expansion needs its "
                          "own session")
                seen.setdefault(name, index)


def _check_scope(c: _Checker, step: Step, path: Path_, where: _Where, inner: _Where) -> None:
    """``loop.iteration`` only inside a loop, ``item``/``item_index`` only in a for_each (not
    in the list it expands)."""
    fan_refs = set(step.for_each.refs) if isinstance(step.for_each, expr.Expression) else set()
    for ref in step.refs:
        if ref.parts[0] == "loop" and not where.in_loop and step.kind != "loop":
            c.add(path, f"{ref.text}: loop.iteration is only known inside a loop's steps")
        if ref.parts[0] in ("item", "item_index"):
            if ref in fan_refs and not where.in_fan:
                c.add((*path, "for_each"), f"{ref.text}: the list of a for_each cannot use "
                                           "its own elements")
            elif not inner.in_fan:
                c.add(path, f"{ref.text}: item and item_index are only known in a for_each "
                            "step (and the steps of a loop it expands)")


def _prompt(c: _Checker, raw: dict[str, Any], path: Path_) -> tuple[str | None, str]:
    if "prompt" in raw or "prompt_file" not in raw:
        return _text(raw.get("prompt")), "prompt"
    found = c.file_text(raw, "prompt_file", path)
    if found is None:
        return None, "prompt_file"
    shown = str(c.file.parent / raw["prompt_file"])
    if not found[1].strip():
        c.add((*path, "prompt_file"), f"{shown} is empty")
        return None, "prompt_file"
    return found[1], shown


def _short(text: str) -> str:
    return text if len(text) <= 70 else text[:66] + " ..."


def _check_graph(c: _Checker, steps: list[Step], variables: set[str], env: set[str],
                 known: set[str]) -> None:
    """References: ids unique across loops, known vars, declared env and steps, sessions that
    exist when resumed."""
    everything = [inner for step in steps for inner in step.walk()]
    ids: dict[str, Step] = {}
    for step in everything:
        if step.id in ids:
            c.add((*step.path, "id"), f"duplicate id {step.id!r} (first used by "
                                      f"{path_text(ids[step.id].path)}; ids are unique across "
                                      "loops too)")
        ids.setdefault(step.id, step)
    with_schema = {s.id for s in everything if s.settings.json_schema is not None
                   and s.kind == "claude"}
    inside = {s.id: {i.id for i in s.walk()} for s in everything}
    for step in everything:
        for need in step.needs:
            if need not in ids:
                c.add((*step.path, "needs"), f"needs {need!r}, which is no step id")
            elif need == step.id:
                c.add((*step.path, "needs"), "a step cannot need itself")
        for ref, where in step.places:
            shown = "${{ " + _short(ref.text) + " }}"
            if ref.parts[0] == "env" and ref.parts[1] not in env:
                c.add(where, f"{shown}: only environment variables the workflow declares can be "
                             f"read; add {ref.parts[1]} to its top-level env: list (declared: "
                             f"{', '.join(sorted(env)) or 'none'})")
            elif ref.parts[0] == "env" and ref.parts[1] not in os.environ:
                c.add(where, f"{shown}: the environment variable {ref.parts[1]} is not set")
            if ref.parts[0] == "vars" and ref.parts[1] not in variables:
                c.add(where, f"{shown}: no var {ref.parts[1]!r} (vars: "
                             f"{', '.join(sorted(variables)) or 'none'})")
            sid = ref.step
            if sid is None:
                continue
            if sid not in ids:
                c.add(where, f"{shown}: no step {sid!r}")
            elif sid == step.id and not (step.kind == "loop" and step.until is not None
                                         and ref in step.until.refs):
                c.add(where, f"{shown}: a step cannot use its own result")
            elif ref.parts[2] == "output" and sid not in with_schema:
                c.add(where, f"{shown}: step {sid!r} has no schema, so no output")
            elif sid in inside[step.id] - {step.id} and step.kind == "loop" and \
                    (step.until is None or ref not in step.until.refs):
                c.add(where, f"{shown}: a loop's own steps are read in its until:, not in "
                             "its other keys")
    made = set(known)
    for step in everything:
        if step.kind != "claude" or step.templated:
            continue
        if step.session and step.action is not Action.CREATE and step.session not in made:
            c.add((*step.path, step.action.value),
                  f"session {step.session!r} is neither created by an earlier step nor in the "
                  "workspace's mapping; add a create: step before it, or create it first")
        made |= {step.target}


def _fingerprint(step: Step, files: Mapping[str, str], variables: Mapping[str, str]) -> str:
    """A hash of the step's whole definition: its settings (``settings.digest``), prompt, the
    files it passes by path and the vars it reads. A resumed run adds what the step reads at
    run time (the rendered prompt, the results it builds on) before comparing."""
    used_vars = {r.parts[1]: variables.get(r.parts[1]) for r in step.refs if r.parts[0] == "vars"}
    definition = {
        "action": step.action.value, "session": step.session, "target": step.target,
        "prompt": step.prompt, "settings": digest(step.settings), "files": dict(files),
        "output": str(step.output), "needs": step.needs, "vars": used_vars,
        "kind": step.kind, "run": step.run, "cwd": str(step.cwd), "env": step.env,
        "if": step.condition and step.condition.text, "until": step.until and step.until.text,
        "max_iterations": step.max_iterations,
        "for_each": step.for_each.text if isinstance(step.for_each, expr.Expression)
        else step.for_each,
    }
    text = json.dumps(definition, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
           "schema", "setting_keys", "shape_problems", "validate_var_assignments"]
