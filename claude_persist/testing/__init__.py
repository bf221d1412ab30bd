"""Offline testing helpers: a fake ``claude`` CLI, a pytest fixture that runs it, and an
in-process stand-in for fast tests.

``python -m claude_persist.testing.fake_claude`` is a stand-in for ``claude`` that needs no
account and no network; :data:`FAKE_CLAUDE_CMD` is the command line to put in ``CLAUDE_CMD``.
``InProcessClaude`` answers behind the turn runner seam without a process:
``Sessions(workspace, turn_runner=InProcessClaude())``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inprocess import InProcessClaude

FAKE_CLAUDE_MODULE = "claude_persist.testing.fake_claude"
# The script run by path under -S (no site-packages): it needs only the standard library and this
# package, which it finds beside itself, so it skips the site start-up that -m needs: test suites
# start it hundreds of times.
FAKE_CLAUDE_CMD = (f"{shlex.quote(sys.executable)} -S "
                   f"{shlex.quote(str(Path(__file__).resolve().with_name('fake_claude.py')))}")

__all__ = ["FAKE_CLAUDE_CMD", "FAKE_CLAUDE_MODULE", "InProcessClaude"]


def __getattr__(name: str) -> object:
    if name == "InProcessClaude":  # imported on use: the fake CLI's start-up stays lean
        from .inprocess import InProcessClaude

        return InProcessClaude
    raise AttributeError(name)
