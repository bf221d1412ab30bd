"""Pure: one call's settings -> the claude argv. No processes, no files.

Every value goes in ``--flag=value`` form so that a value starting with ``-`` can never be read
as a flag, and the prompt never goes on argv (the runner writes it to stdin): argv is readable
by every local user through ``ps`` and Linux caps one argument at 128 KiB.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from ..errors import UsageError

EFFORTS = ("low", "medium", "high", "xhigh", "max")


class Action(str, Enum):
    """What a call does to its session."""

    CREATE = "create"
    RESUME = "resume"
    FORK = "fork"


@dataclass(frozen=True)
class CallSpec:
    """Everything that decides one claude invocation's argv."""

    action: Action
    session_id: str
    new_session_id: str | None = None
    title: str | None = None
    model: str | None = None
    effort: str | None = None
    role_file: str | None = None
    include_partial: bool = False
    json_schema: str | None = None
    max_turns: int | None = None
    max_budget_usd: float | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def build_argv(claude_cmd: Sequence[str], spec: CallSpec) -> list[str]:
    """The argv for ``spec``: always ``-p`` with stream-json (one code path for every call)."""
    argv = [*claude_cmd, "-p", "--output-format=stream-json", "--verbose"]
    if spec.action is Action.CREATE:
        argv.append(f"--session-id={spec.session_id}")
    else:
        argv.append(f"--resume={spec.session_id}")
    if spec.action is Action.FORK:
        argv.append("--fork-session")
        if spec.new_session_id:
            argv.append(f"--session-id={spec.new_session_id}")
    if spec.title and spec.action is not Action.RESUME:
        argv.append(f"--name={spec.title}")
    if spec.model:
        argv.append(f"--model={spec.model}")
    if spec.effort:
        argv.append(f"--effort={spec.effort}")
    if spec.role_file:
        argv.append(f"--append-system-prompt-file={spec.role_file}")
    if spec.include_partial:
        argv.append("--include-partial-messages")
    if spec.json_schema is not None:
        argv.append(f"--json-schema={spec.json_schema}")
    if spec.max_turns is not None:
        argv.append(f"--max-turns={spec.max_turns}")
    if spec.max_budget_usd is not None:
        argv.append(f"--max-budget-usd={spec.max_budget_usd:g}")
    argv.extend(spec.extra_args)
    return argv


def resolve_claude_cmd(
    flag: str | None, configured: str | None, environ: Mapping[str, str]
) -> list[str]:
    """The claude command as argv: ``--claude-cmd``, else configuration, else ``CLAUDE_CMD``,
    else ``claude``. Split with shlex, never run through a shell."""
    for source, raw in (
        ("--claude-cmd", flag),
        ("the claude_cmd setting", configured),
        ("CLAUDE_CMD", environ.get("CLAUDE_CMD")),
    ):
        if raw is not None and raw.strip():
            try:
                parts = shlex.split(raw)
            except ValueError as exc:
                raise UsageError(f"cannot split {source} {raw!r}: {exc}") from exc
            return parts
    return ["claude"]
