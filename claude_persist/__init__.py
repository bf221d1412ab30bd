"""claude-persist: named, persistent Claude Code sessions and declarative workflows.

The Python API::

    from claude_persist import Sessions, TurnOptions

    sessions = Sessions(".")                      # this workspace's mapping file
    sessions.create("review-src", "Review src/ and list the problems.",
                    TurnOptions(model="sonnet", effort="high"))
    answer = sessions.resume("review-src", "Now rank them.", TurnOptions(deadline=600))
    print(answer.text, answer.session_id, answer.cost_usd)

Workflows from Python (a ``noxfile.py`` session, a script)::

    from claude_persist import run_workflow

    report = run_workflow("workflows/fix-until-green.yml", vars={"target": "calc"},
                          max_parallel=4)
    print(report["status"], [(s["id"], s["status"]) for s in report["steps"]])

Every failure is a :class:`ClaudePersistError` subclass; :func:`exit_code_for` gives the exit
code the command-line faces use for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Where each public name lives. They are imported on first use, so that a command which needs
# little (``resolve``, the fake CLI) does not pay for the rest.
_EXPORTS = {
    "EFFORTS": ".claude.command",
    "TurnResult": ".claude.result",
    "CallTimeoutError": ".errors",
    "ClaudeCallError": ".errors",
    "ClaudeNotFoundError": ".errors",
    "ClaudePersistError": ".errors",
    "InterruptedByUserError": ".errors",
    "MappingFileError": ".errors",
    "NameExistsError": ".errors",
    "SessionBusyError": ".errors",
    "SessionNotFoundError": ".errors",
    "UsageError": ".errors",
    "WorkflowError": ".errors",
    "WorkflowFailedError": ".errors",
    "exit_code_for": ".errors",
    "CorruptEntryError": ".errors",
    "DiskFullError": ".errors",
    "FilePermissionError": ".errors",
    "FileSystemError": ".errors",
    "InternalError": ".errors",
    "ReadOnlyFileSystemError": ".errors",
    "UnsafeFileError": ".errors",
    "CallSettings": ".settings",
    "SessionEntry": ".mapping",
    "Sessions": ".sessions",
    "TurnOptions": ".sessions",
    "default_mapping_file": ".store",
    "run_workflow": ".workflow",
    "validate_workflow": ".workflow",
    "dry_run_workflow": ".workflow",
    "WorkflowRunFailedError": ".workflow",
}

if TYPE_CHECKING:
    from .claude.command import EFFORTS
    from .claude.result import TurnResult
    from .errors import (
        CallTimeoutError,
        ClaudeCallError,
        ClaudeNotFoundError,
        ClaudePersistError,
        CorruptEntryError,
        DiskFullError,
        FilePermissionError,
        FileSystemError,
        InternalError,
        InterruptedByUserError,
        MappingFileError,
        NameExistsError,
        ReadOnlyFileSystemError,
        SessionBusyError,
        SessionNotFoundError,
        UnsafeFileError,
        UsageError,
        WorkflowError,
        WorkflowFailedError,
        exit_code_for,
    )
    from .mapping import SessionEntry
    from .sessions import Sessions, TurnOptions
    from .settings import CallSettings
    from .store import default_mapping_file
    from .workflow import (
        WorkflowRunFailedError,
        dry_run_workflow,
        run_workflow,
        validate_workflow,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "EFFORTS",
    "CallSettings",
    "CallTimeoutError",
    "ClaudeCallError",
    "ClaudeNotFoundError",
    "ClaudePersistError",
    "CorruptEntryError",
    "DiskFullError",
    "FilePermissionError",
    "FileSystemError",
    "InternalError",
    "InterruptedByUserError",
    "MappingFileError",
    "NameExistsError",
    "ReadOnlyFileSystemError",
    "SessionBusyError",
    "SessionEntry",
    "SessionNotFoundError",
    "Sessions",
    "TurnOptions",
    "TurnResult",
    "UnsafeFileError",
    "UsageError",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowRunFailedError",
    "default_mapping_file",
    "dry_run_workflow",
    "exit_code_for",
    "run_workflow",
    "validate_workflow",
]
