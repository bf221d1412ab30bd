"""Pure checks of user input; each failure is a :class:`UsageError` that says how to fix it."""

from __future__ import annotations

import re
from pathlib import Path

from .claude.command import EFFORTS
from .errors import UsageError
from .mapping import NAME_PATTERN, UUID_PATTERN


def name(value: str | None, flag: str = "--name") -> str:
    """A session name: a non-empty slug of letters, digits, ``.``, ``_`` and ``-``."""
    if value is None or not value.strip():
        raise UsageError(f"{flag} is required: give the session a name such as review-src")
    text = value.strip()
    if not NAME_PATTERN.match(text):
        raise UsageError(
            f"{flag} {value!r} is not a valid session name: use letters, digits, '.', '_' and "
            "'-' only (for example review-src)"
        )
    return text


def is_session_id(value: object) -> bool:
    """True when ``value`` is a Claude session id: a UUID, and so safe in a file name.

    For ids that come from elsewhere than the user (a result line, a mapping entry), where a
    bad one is not a usage error: ``../../x`` must never reach a path."""
    return isinstance(value, str) and UUID_PATTERN.fullmatch(value) is not None


def session_id(value: str, flag: str = "--session-id") -> str:
    """A Claude session id given by the user: a UUID (lower-cased)."""
    text = value.strip()
    if not is_session_id(text):
        raise UsageError(
            f"{flag} {value!r} is not a session id: claude session ids are UUIDs such as "
            "123e4567-e89b-42d3-a456-426614174000"
        )
    return text.lower()


def effort(value: str | None, flag: str = "--effort") -> str | None:
    """A reasoning effort level, lower-cased; None stays None."""
    if value is None:
        return None
    text = value.strip().lower()
    if text not in EFFORTS:
        levels = ", ".join(EFFORTS)
        raise UsageError(f"{flag} {value!r} is not an effort level: use one of {levels}")
    return text


def model(value: str | None, flag: str = "--model") -> str | None:
    """A model name or alias, passed to claude as given; empty is an error."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{flag} is empty: name a model such as sonnet or opus, or leave it out")
    return value.strip()


#: ``90``, ``90s``, ``1.5m``, ``2h``: the one spelling of durations, everywhere.
DURATION = re.compile(r"^ *([0-9]+(?:\.[0-9]+)?) *([smh]?) *$(?!\n)")
UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
#: Longer than any call can last; bigger values are taken as this (no overflow downstream).
MAX_SECONDS = 1e9


def duration(value: object) -> float:
    """Seconds from a number, or from text such as ``90``, ``90s``, ``15m``, ``2h``; raises
    ValueError for anything else (a negative number included)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if value != value or value < 0:
            raise ValueError(f"{value!r} is not a duration")
        return float(min(value, MAX_SECONDS))  # min first: a huge int has no float
    match = DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration")
    return min(float(match.group(1)) * UNIT_SECONDS[match.group(2)], MAX_SECONDS)


def seconds(value: object, flag: str, *, allow_zero: bool = False) -> float | None:
    """A duration (seconds, or ``90s``, ``15m``, ``2h``): > 0 (or >= 0 with ``allow_zero``);
    None stays None."""
    if value is None:
        return None
    try:
        number = duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag} {value!r} is not a duration: write seconds, or 90s, 15m, "
                         "2h") from exc
    if number == 0 and not allow_zero:
        raise UsageError(f"{flag} must be more than 0 seconds, not {value!r}")
    return number


def role_file(value: str | Path | None, base: Path, flag: str = "--role") -> str | None:
    """An existing role file (Markdown appended to the system prompt), as an absolute path."""
    if value is None:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise UsageError(f"{flag} {value!r}: no such file ({path}); give the path of a role .md")
    return str(path.resolve())


def prompt(value: str | None, what: str = "the prompt") -> str:
    """A prompt with some text in it."""
    if value is None or not value.strip():
        raise UsageError(f"{what} is empty: pass -p TEXT, or --prompt-file FILE (- for stdin)")
    return value
