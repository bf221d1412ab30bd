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
    #: The environment variables ``${{ env.NAME }}`` may read: those the file declares.
    env: tuple[str, ...] = ()
    #: The file's path as it was given, for messages.
    source: str = ""

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)


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
    #: Where the schema found a problem: values there (and below) are not read.
    wrong: set[Path_] = field(default_factory=set)

    def add(self, path: Path_, message: str) -> None:
        self.problems.append((self.marked.where(path), f"{path_text(path)}: {message}"))

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
    checker = _Checker(file, marked)
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
    steps = [_step(c, raw, i, defaults, base, variables) for i, raw in
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


def _step(c: _Checker, raw: dict[str, Any], index: int, defaults: dict[str, Any],
          base: tuple[CallSettings, dict[str, str]], variables: Mapping[str, str]) -> Step:
    path: Path_ = ("steps", index)
    actions = [a for a in Action if a.value in raw]
    action = actions[0] if actions else Action.CREATE
    # With more than one action (the schema reports it), the first stands for the step in the
    # session checks, so that later steps are not reported for its sake.
    session = _text(raw.get(action.value))
    target = _text(raw.get("as")) if action is Action.FORK else session
    prompt, source = _prompt(c, raw, path)
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
    refs = list(expr.find(prompt or ""))
    for bad in (r for r in refs if isinstance(r, expr.ExprError)):
        c.add((*path, "prompt" if source == "prompt" else "prompt_file"), str(bad))
    retries = raw["retries"] if "retries" in raw else defaults.get("retries")
    line, column = c.marked.where(path)
    # Every field is read even when an essential one is missing, so that all problems are
    # reported at once; such a step only serves the remaining checks (the load fails anyway).
    step = Step(
        id=_text(raw.get("id")) or f"#{index + 1}", index=index, action=action,
        session=session or "", target=target or "", prompt=prompt or "", prompt_source=source,
        line=line, column=column, settings=settings, retries=max(0, _whole(retries) or 0),
        output=output_path, needs=_texts(raw.get("needs")),
        continue_on_error=raw.get("continue_on_error") is True,
        refs=tuple(r for r in refs if isinstance(r, expr.Ref)),
    )
    return replace(step, fingerprint=_fingerprint(step, {**inherited_files, **own_files},
                                                  variables))


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
    """References: unique ids, known vars, declared env and steps, sessions that exist when
    resumed."""
    ids: dict[str, int] = {}
    for step in steps:
        if step.id in ids:
            c.add(("steps", step.index, "id"), f"duplicate id {step.id!r} (first used by "
                                               f"steps[{ids[step.id]}])")
        ids.setdefault(step.id, step.index)
    with_schema = {s.id for s in steps if s.settings.json_schema is not None}
    for step in steps:
        where: Path_ = ("steps", step.index, "prompt" if step.prompt_source == "prompt"
                        else "prompt_file")
        for need in step.needs:
            if need not in ids:
                c.add(("steps", step.index, "needs"), f"needs {need!r}, which is no step id")
            elif need == step.id:
                c.add(("steps", step.index, "needs"), "a step cannot need itself")
        for ref in step.refs:
            shown = _short(ref.text)
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
            elif sid == step.id:
                c.add(where, f"{shown}: a step cannot use its own result")
            elif ref.parts[2] == "output" and sid not in with_schema:
                c.add(where, f"{shown}: step {sid!r} has no schema, so no output")
    made = set(known)
    for step in steps:
        if step.session and step.action is not Action.CREATE and step.session not in made:
            c.add(("steps", step.index, step.action.value),
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
