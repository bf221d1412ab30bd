"""claude-persist: named, persistent Claude Code sessions and declarative workflows.

The Python API::

    from claude_persist import Sessions, TurnOptions

    sessions = Sessions(".")                      # this workspace's mapping file
    sessions.create("review-src", "Review src/ and list the problems.",
                    TurnOptions(model="sonnet", effort="high"))
    answer = sessions.resume("review-src", "Now rank them.", TurnOptions(deadline=600))
    print(answer.text, answer.session_id, answer.cost_usd)

Every failure is a :class:`ClaudePersistError` subclass; :func:`exit_code_for` gives the exit
code the command-line faces use for it.
"""

from .claude.command import EFFORTS
from .claude.result import TurnResult
from .errors import (
    CallTimeoutError,
    ClaudeCallError,
    ClaudeNotFoundError,
    ClaudePersistError,
    InterruptedByUserError,
    MappingFileError,
    NameExistsError,
    SessionBusyError,
    SessionNotFoundError,
    UsageError,
    WorkflowError,
    WorkflowFailedError,
    exit_code_for,
)
from .mapping import SessionEntry
from .sessions import Sessions, TurnOptions
from .store import default_mapping_file

__all__ = [
    "EFFORTS",
    "CallTimeoutError",
    "ClaudeCallError",
    "ClaudeNotFoundError",
    "ClaudePersistError",
    "InterruptedByUserError",
    "MappingFileError",
    "NameExistsError",
    "SessionBusyError",
    "SessionEntry",
    "SessionNotFoundError",
    "Sessions",
    "TurnOptions",
    "TurnResult",
    "UsageError",
    "WorkflowError",
    "WorkflowFailedError",
    "default_mapping_file",
    "exit_code_for",
]
