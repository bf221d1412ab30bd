"""Offline testing helpers: a fake ``claude`` CLI, a pytest fixture that runs it, and an
in-process stand-in for fast tests.

``python -m claude_persist.testing.fake_claude`` is a stand-in for ``claude`` that needs no
account and no network; :data:`FAKE_CLAUDE_CMD` is the command line to put in ``CLAUDE_CMD``.
``InProcessClaude`` answers behind the turn runner seam without a process:
``Sessions(workspace, turn_runner=InProcessClaude())``.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inprocess import InProcessClaude

FAKE_CLAUDE_MODULE = "claude_persist.testing.fake_claude"
# The fake imported from its own folder, as a module of its own, under -S: no site start-up, no
# package to import (it needs only the standard library), and its cached bytecode, which a script
# run by path would not use. Test suites start it hundreds of times.
_HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_CLAUDE_CMD = (f"{shlex.quote(sys.executable)} -S -c " + shlex.quote(
    f"import sys; sys.path[0] = {_HERE!r}; import fake_claude; fake_claude.main()"))

__all__ = ["FAKE_CLAUDE_CMD", "FAKE_CLAUDE_MODULE", "InProcessClaude"]


def __getattr__(name: str) -> object:
    if name == "InProcessClaude":  # imported on use: the fake CLI's start-up stays lean
        from .inprocess import InProcessClaude

        return InProcessClaude
    raise AttributeError(name)
