"""Pure: the expression language of ``if:``, ``until:``, ``for_each:`` and ``${{ }}``.

One language for all of them: lookups (``vars.X``, ``env.X``, ``steps.ID.result``,
``steps.ID.output.a.b``, ``steps.ID.exit_code``, ``loop.iteration``, ``item.a``,
``item_index``, ``run.id``, ``workflow.name``), literals (numbers, quoted text, ``true``,
``false``, ``null``, lists), ``== != < <= > >=``, ``and or not in``, and the functions
``always() success() failure() contains() startswith() fromjson() tojson() lines()``.
Nothing else: no attribute access beyond lookups, no calls beyond these, no loops.

Evaluation is simpleeval's (a maintained, small, safe evaluator over Python's ``ast``): we
parse once, check the tree against the short list of node kinds above (so its wider language
-- arithmetic, comprehensions, attribute access, subscripts -- is refused at validation time,
with line:col), give it only our functions, and restrict its node table to the same kinds as a
second lock. Lookups are rewritten to plain names before parsing, since step ids may contain
``-`` and ``.``, which Python names cannot. Size is bounded (the text, the node count) and the
language has no loops, so evaluation time is bounded by the size of the values it reads.

In text, each ``${{`` is closed by the first ``}}`` after it (linear scanning); a rendered value
is never scanned again, and ``$${{`` writes a literal ``${{``.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import simpleeval

OPEN, CLOSE = "${{", "}}"
#: How much of a bad expression a message quotes.
SHOWN = 60
#: Bounds on one expression: its text, and the nodes of its tree.
MAX_CHARS = 4096
MAX_NODES = 256
STEP_FIELDS = ("result", "output", "session_id", "status", "cost_usd", "exit_code", "stderr")
#: The functions, each with how many arguments it takes.
ARITY = {"always": 0, "success": 0, "failure": 0, "contains": 2, "startswith": 2, "fromjson": 1,
         "tojson": 1, "lines": 1}
FUNCTIONS = tuple(ARITY)
#: Functions that read the state of the steps a step depends on.
STATUS_FUNCTIONS = frozenset({"always", "failure"})
LITERALS = {"true": True, "false": False, "null": None}

_TOKEN = re.compile(
    r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|"""  # quoted text is left alone
    r"""(?<![\w.-])(vars|env|steps|run|workflow|loop|item_index|item)"""
    r"""((?:\.[A-Za-z0-9_-]+)*)(?![\w(.-])""")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")

_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)
_ALLOWED = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Compare, ast.BoolOp, ast.And,
            ast.Or, ast.UnaryOp, ast.Not, ast.Call, ast.List, ast.Tuple, *_COMPARE)


@dataclass(frozen=True)
class Ref:
    """One lookup: its text as written and its dotted parts."""

    text: str
    parts: tuple[str, ...]

    @property
    def step(self) -> str | None:
        """The step id a ``steps.ID...`` lookup names."""
        return self.parts[1] if self.parts[0] == "steps" and len(self.parts) > 1 else None


class ExprError(ValueError):
    """An expression that is not in the language, or that failed while evaluated; ``offset``
    is where in its text (0-based), when known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class Unknown(Exception):
    """A lookup whose value is not known yet (a dry run, or a step that has not run)."""


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression."""

    text: str
    tree: ast.Expression = field(compare=False, repr=False)
    names: Mapping[str, Ref] = field(compare=False, repr=False)
    functions: frozenset[str] = frozenset()

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(self.names.values())

    @property
    def reads_status(self) -> bool:
        """It says ``always()`` or ``failure()``: it runs after a failed dependency."""
        return bool(self.functions & STATUS_FUNCTIONS)


def shown(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN else text[:SHOWN - 4] + " ..."


def _ref(text: str) -> Ref:
    parts = tuple(text.split("."))
    head = parts[0]
    ok = (
        (head in ("vars", "env") and len(parts) == 2)
        or parts in (("run", "id"), ("workflow", "name"), ("loop", "iteration"), ("item_index",))
        or head == "item"
        or (head == "steps" and len(parts) >= 3 and parts[2] in STEP_FIELDS
            and (parts[2] == "output" or len(parts) == 3))
    )
    if not ok:
        if head == "steps" and len(parts) > 3 and parts[2] in STEP_FIELDS:
            raise ExprError(f"{text}: only steps.ID.output has fields below it")
        raise ExprError(f"{shown(text)} is not a known lookup: use vars.NAME, env.NAME, "
                        f"steps.ID.{'|'.join(STEP_FIELDS)}, loop.iteration, item, item.FIELD, "
                        "item_index, run.id or workflow.name")
    return Ref(text, parts)


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Expression:
    """Check ``text`` against the language; raise :class:`ExprError` (with an offset).
    Cached: a fan-out renders the same few expressions once per element."""
    if len(text) > MAX_CHARS:
        raise ExprError(f"the expression is longer than {MAX_CHARS} characters", 0)
    names: dict[str, Ref] = {}
    rewritten: list[str] = []
    offsets: list[tuple[int, int]] = []  # (offset in the rewritten text, offset in text)
    position = 0
    for match in _TOKEN.finditer(text):
        if match.group(1) is None:
            continue
        try:
            ref = _ref(match.group(0))
        except ExprError as exc:
            raise ExprError(str(exc), match.start()) from None
        name = f"ref__{len(names)}"
        names[name] = ref
        rewritten.append(text[position:match.start()])
        offsets.append((sum(map(len, rewritten)), match.start()))
        rewritten.append(name)
        position = match.end()
    rewritten.append(text[position:])
    source = "".join(rewritten)

    def original(offset: int) -> int:
        shift = 0
        for at, was in offsets:
            if at <= offset:
                shift = was - at
        return max(0, offset + shift)

    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        lead = len(source) - len(source.lstrip())
        where = original(lead + (exc.offset or 1) - 1)
        raise ExprError(f"{shown(text)}: not an expression ({exc.msg})", where) from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise ExprError(f"{shown(text)}: too large (more than {MAX_NODES} parts)", 0)
    lead = len(source) - len(source.lstrip())
    used: set[str] = set()
    called = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
    for node in nodes:
        col = getattr(node, "col_offset", None)
        at = None if col is None else original(lead + col)
        if not isinstance(node, _ALLOWED):
            what = {ast.Attribute: "attribute access", ast.Subscript: "indexing",
                    ast.BinOp: "arithmetic"}.get(type(node), type(node).__name__)
            raise ExprError(f"{shown(text)}: {what} is not part of the language (it has "
                            "lookups, literals, comparisons, and/or/not/in and the functions "
                            f"{', '.join(f + '()' for f in FUNCTIONS)})", at)
        if isinstance(node, ast.Name) and node.id not in names and node.id not in LITERALS \
                and id(node) not in called:
            raise ExprError(f"{shown(text)}: unknown name {node.id!r} (lookups start with vars., "
                            "env., steps., loop., item, run. or workflow.; literals are true, "
                            "false, null, numbers and quoted text)", at)
        if isinstance(node, ast.Call):
            func = node.func
            if not isinstance(func, ast.Name) or func.id not in FUNCTIONS or node.keywords:
                named = func.id if isinstance(func, ast.Name) else "that"
                raise ExprError(f"{shown(text)}: {named}() is not a function of the language "
                                f"(it has {', '.join(f + '()' for f in FUNCTIONS)})", at)
            if len(node.args) != ARITY[func.id]:
                count = ARITY[func.id]
                raise ExprError(f"{shown(text)}: {func.id}() takes {count} argument"
                                f"{'s' if count != 1 else ''}, not {len(node.args)}", at)
            used.add(func.id)
    return Expression(text=text, tree=tree, names=names, functions=frozenset(used))


# -- evaluation -----------------------------------------------------------------------------


def _contains(where: Any, what: Any) -> bool:
    if isinstance(where, str):
        return as_text(what) in where
    if isinstance(where, (list, tuple, dict)):
        return what in where
    return False


def _startswith(text: Any, prefix: Any) -> bool:
    return isinstance(text, str) and text.startswith(as_text(prefix))


def _fromjson(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ExprError(f"fromjson(): not JSON ({exc})") from None


def _tojson(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _lines(text: Any) -> list[str]:
    return [line for line in as_text(text).splitlines() if line.strip()]


def _checked(function: Callable[..., Any], count: int) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if len(args) != count:
            raise ExprError(f"{function.__name__.lstrip('_')}() takes {count} argument"
                            f"{'s' if count != 1 else ''}, not {len(args)}")
        return function(*args)
    return call


PURE: dict[str, Callable[..., Any]] = {
    "contains": _checked(_contains, 2), "startswith": _checked(_startswith, 2),
    "fromjson": _checked(_fromjson, 1), "tojson": _checked(_tojson, 1),
    "lines": _checked(_lines, 1),
}

_SUCCEEDED = {**PURE, "always": _checked(lambda: True, 0),
              "success": _checked(lambda: True, 0), "failure": _checked(lambda: False, 0)}
_FAILED = {**PURE, "always": _checked(lambda: True, 0),
           "success": _checked(lambda: False, 0), "failure": _checked(lambda: True, 0)}
_local = threading.local()


def _evaluator() -> Any:
    """This thread's evaluator, its node table cut down to the language's node kinds (a
    second lock after :func:`parse`'s check); built once, since building one costs more than
    most evaluations."""
    evaluator = getattr(_local, "evaluator", None)
    if evaluator is None:
        evaluator = simpleeval.EvalWithCompoundTypes(functions=dict(_SUCCEEDED))
        evaluator.nodes = {kind: handler for kind, handler in evaluator.nodes.items()
                           if kind in _NODES}
        _local.evaluator = evaluator
    return evaluator


_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Compare, ast.BoolOp, ast.UnaryOp,
          ast.Call, ast.List, ast.Tuple)


@dataclass(frozen=True)
class Status:
    """The state of the steps a step depends on, for ``success()`` and ``failure()``."""

    failed: bool = False


#: The dependencies all succeeded.
NO_FAILURE = Status()


def evaluate(expression: Expression, resolve: Callable[[Ref], Any],
             status: Status = NO_FAILURE) -> Any:
    """The value of ``expression``; ``resolve`` gives each lookup's value (or raises
    :class:`Unknown`). A failure while evaluating is an :class:`ExprError`."""

    def name(node: ast.Name) -> Any:
        if node.id in LITERALS:
            return LITERALS[node.id]
        return resolve(expression.names[node.id])

    evaluator = _evaluator()
    evaluator.names = name
    evaluator.functions = _FAILED if status.failed else _SUCCEEDED
    try:
        return evaluator.eval(expression.text, previously_parsed=expression.tree.body)
    except (Unknown, ExprError):
        raise
    except (simpleeval.InvalidExpression, TypeError, ValueError, RecursionError) as exc:
        raise ExprError(f"{shown(expression.text)}: {exc}") from None


def truthy(value: Any) -> bool:
    return bool(value)


# -- ${{ }} in text -------------------------------------------------------------------------


def _tokens(text: str) -> Iterator[tuple[int, int, bool]]:
    """Each ``${{ ... }}`` in ``text``, left to right, in one pass: where it starts (at the
    extra ``$`` of an escaped ``$${{``), where it ends, and whether it is escaped."""
    position = 0
    while (start := text.find(OPEN, position)) >= 0:
        end = text.find(CLOSE, start + 3)
        if end < 0:
            return  # no }} after this ${{, so none after any later one either
        escaped = start > position and text[start - 1] == "$"
        position = end + 2
        yield (start - 1 if escaped else start), position, escaped


def _inner(written: str) -> tuple[str, int]:
    """What stands between ``${{`` and ``}}``, and its offset in ``written``."""
    start = written.index(OPEN) + 3
    return written[start:-2], start


def find(text: str) -> Iterator[Expression | ExprError]:
    """Every ``${{ }}`` expression in ``text`` (escaped ones skipped), or an error for a bad one
    (its offset counted in ``text``)."""
    for start, end, escaped in _tokens(text):
        if escaped:
            continue
        inner, at = _inner(text[start:end])
        try:
            if not inner.strip():
                raise ExprError("${{ }} is empty: write an expression inside", 0)
            yield parse(inner)
        except ExprError as exc:
            yield ExprError(f"${{{{ {shown(inner.strip())} }}}}: {exc}",
                            start + at + (exc.offset or 0))


def whole(text: str) -> Expression | None:
    """The expression when ``text`` is exactly one ``${{ }}`` (its value keeps its type)."""
    stripped = text.strip()
    if stripped.startswith(OPEN) and stripped.endswith(CLOSE) and \
            stripped.find(CLOSE) == len(stripped) - 2:
        found = list(find(stripped))
        if len(found) == 1 and isinstance(found[0], Expression):
            return found[0]
    return None


def as_text(value: Any) -> str:
    """How a value reads in text: text as is, data as JSON, nothing as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def render(text: str, resolve: Callable[[Ref], Any], status: Status = NO_FAILURE) -> str:
    """Replace each ``${{ }}`` with its value as text; an expression whose lookups are not
    known yet (:class:`Unknown`) is kept as written (a dry run shows it so)."""
    out: list[str] = []
    position = 0
    for start, end, escaped in _tokens(text):
        written = text[start:end]
        out.append(text[position:start])
        position = end
        if escaped:
            out.append(written[1:])  # $${{ ... }} -> ${{ ... }}
            continue
        try:
            value = evaluate(parse(_inner(written)[0]), resolve, status)
        except ExprError as exc:
            if exc.offset is None:
                raise  # it failed while evaluated; a malformed one (offset) stays as written
            out.append(written)
            continue
        except Unknown:
            out.append(written)
            continue
        out.append(as_text(value))
    out.append(text[position:])
    return "".join(out)
