"""Offline testing helpers: a fake ``claude`` CLI and a pytest fixture that runs it.

``python -m claude_persist.testing.fake_claude`` is a stand-in for ``claude`` that needs no
account and no network; :data:`FAKE_CLAUDE_CMD` is the command line to put in ``CLAUDE_CMD``.
"""

from __future__ import annotations

import shlex
import sys

FAKE_CLAUDE_MODULE = "claude_persist.testing.fake_claude"
FAKE_CLAUDE_CMD = f"{shlex.quote(sys.executable)} -m {FAKE_CLAUDE_MODULE}"

__all__ = ["FAKE_CLAUDE_CMD", "FAKE_CLAUDE_MODULE"]
