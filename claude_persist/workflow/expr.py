"""Pure: ``${{ ... }}`` lookups in prompts -- find them, check them, render them once.

Only lookups, never code: ``vars.X``, ``env.X``, ``steps.ID.result``, ``steps.ID.output.a.b``,
``steps.ID.session_id``, ``steps.ID.status``, ``steps.ID.cost_usd``, ``run.id``,
``workflow.name``. A rendered value is never scanned again, so a result that contains ``${{``
stays text; ``$${{`` writes a literal ``${{``.

Scanning is linear in the text: each ``${{`` is closed by the first ``}}`` after it, and once
no ``}}`` follows, nothing further is a lookup (a pattern that looked for the end again from
every unclosed ``${{`` took quadratic time).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "${{", "}}"
#: How much of a bad lookup a message quotes.
SHOWN = 60
SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")
STEP_FIELDS = ("result", "output", "session_id", "status", "cost_usd")


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
    """A lookup that is not one of the allowed forms."""


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


def _inner(written: str) -> str:
    """What stands between ``${{`` and ``}}``, stripped."""
    return written[written.index(OPEN) + 3:-2].strip()


def find(text: str) -> Iterator[Ref | ExprError]:
    """Every lookup in ``text`` (escaped ``$${{`` ones skipped), or an error for a bad one."""
    for start, end, escaped in _tokens(text):
        if escaped:
            continue
        written = text[start:end]
        try:
            yield Ref(written, _parse(_inner(written)))
        except ExprError as exc:
            yield exc


def _shown(inner: str) -> str:
    return inner if len(inner) <= SHOWN else inner[:SHOWN - 4] + " ..."


def _parse(inner: str) -> tuple[str, ...]:
    if not inner or not SEGMENT.match(inner):
        inner = _shown(inner)
        raise ExprError(f"${{{{ {inner} }}}} is not a lookup: write vars.NAME, env.NAME, "
                        "steps.ID.result|output|session_id|status|cost_usd, run.id or "
                        "workflow.name")
    parts = tuple(inner.split("."))
    inner = _shown(inner)
    head = parts[0]
    if head in ("vars", "env") and len(parts) == 2:
        return parts
    if (head, parts[1:]) in (("run", ("id",)), ("workflow", ("name",))):
        return parts
    if head == "steps" and len(parts) >= 3 and parts[2] in STEP_FIELDS:
        if parts[2] != "output" and len(parts) > 3:
            raise ExprError(f"${{{{ {inner} }}}}: only steps.ID.output has fields below it")
        return parts
    raise ExprError(f"${{{{ {inner} }}}} is not a known lookup: use vars.NAME, env.NAME, "
                    "steps.ID.result|output|session_id|status|cost_usd, run.id or "
                    "workflow.name")


def as_text(value: Any) -> str:
    """How a looked-up value reads in a prompt: text as is, data as JSON, nothing as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def render(text: str, lookup: Callable[[Ref], str | None]) -> str:
    """Replace each lookup with ``lookup(ref)``; None keeps the expression as written (for a
    dry run, where results are not known yet)."""
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
            ref = Ref(written, _parse(_inner(written)))
        except ExprError:
            out.append(written)
            continue
        value = lookup(ref)
        out.append(written if value is None else value)
    out.append(text[position:])
    return "".join(out)
