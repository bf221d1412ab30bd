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
from ..settings import CallSettings

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
    settings: CallSettings = field(default_factory=CallSettings)
    fresh_system_prompt: bool = False
    """Build the system prompt anew instead of replaying the one the CLI recorded when the
    session was created (2.1.330+), so that a role changed since then reaches the model."""


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
    if spec.fresh_system_prompt and spec.action is not Action.CREATE:
        argv.append("--system-prompt-snapshot=off")
    return argv + spec.settings.argv()


def resolve_claude_cmd(
    flag: str | None, configured: str | None, environ: Mapping[str, str]
) -> list[str]:
    """The claude command as argv: ``--claude-cmd``, else ``CLAUDE_CMD``, else configuration,
    else ``claude``. Split with shlex, never run through a shell.

    The environment outranks configuration because a checkout's ``invoke.yaml`` is not the
    user's own: it must not be able to swap the program we run behind their ``CLAUDE_CMD``."""
    for source, raw in (
        ("--claude-cmd", flag),
        ("CLAUDE_CMD", environ.get("CLAUDE_CMD")),
        ("the claude_cmd setting", configured),
    ):
        if raw is not None and raw.strip():
            try:
                parts = shlex.split(raw)
            except ValueError as exc:
                raise UsageError(f"cannot split {source} {raw!r}: {exc}") from exc
            return parts
    return ["claude"]
