"""Text safe to print on a terminal: what a model, a shell command or a file wrote cannot
send control characters to the user's terminal through a text view or an error message."""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_OR_BREAK = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str, *, lines: bool = True) -> str:
    """``text`` safe to print on a terminal: C0 and C1 control characters (an escape that
    retitles the window or clears the screen, a carriage return that hides what precedes
    it) become visible escapes such as ``\\x1b``. With ``lines`` a line break and a tab are
    kept, for a block of lines; without, they are escaped too, for one line of a table.
    Text that came from a model, a shell command or a file goes through here before a text
    view prints it (JSON output stays exact)."""
    pattern = _CONTROL if lines else _CONTROL_OR_BREAK
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
