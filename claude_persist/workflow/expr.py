"""Pure: ``${{ ... }}`` lookups in prompts -- find them, check them, render them once.

Only lookups, never code: ``vars.X``, ``env.X``, ``steps.ID.result``, ``steps.ID.output.a.b``,
``steps.ID.session_id``, ``steps.ID.status``, ``steps.ID.cost_usd``, ``run.id``,
``workflow.name``. A rendered value is never scanned again, so a result that contains ``${{``
stays text; ``$${{`` writes a literal ``${{``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

TOKEN = re.compile(r"(\$?)\$\{\{(.*?)\}\}", re.DOTALL)
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


def find(text: str) -> Iterator[Ref | ExprError]:
    """Every lookup in ``text`` (escaped ``$${{`` ones skipped), or an error for a bad one."""
    for match in TOKEN.finditer(text):
        if match.group(1):
            continue
        inner = match.group(2).strip()
        try:
            yield Ref(match.group(0), _parse(inner))
        except ExprError as exc:
            yield exc


def _parse(inner: str) -> tuple[str, ...]:
    if not inner or not SEGMENT.match(inner):
        raise ExprError(f"${{{{ {inner} }}}} is not a lookup: write vars.NAME, env.NAME, "
                        "steps.ID.result|output|session_id|status|cost_usd, run.id or "
                        "workflow.name")
    parts = tuple(inner.split("."))
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

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(0)[1:]  # $${{ ... }} -> ${{ ... }}
        try:
            ref = Ref(match.group(0), _parse(match.group(2).strip()))
        except ExprError:
            return match.group(0)
        value = lookup(ref)
        return match.group(0) if value is None else value

    return TOKEN.sub(replace, text)
