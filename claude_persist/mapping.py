"""The mapping document: JSON text <-> typed entries. Pure; no files, no clocks.

The shape is the seed script's, so that files either side writes stay readable by the other::

    {"workspace_dir": "/abs/workspace",
     "aliases": {"review-src": {"session_id": "...", "created_at": "...",
                                "last_model": "...", "last_reasoning_effort": "...", ...}}}

The seed's older flat shape (``{name: session_id}`` or ``{name: {...}}`` at the top level) is read
too, and written back in the current shape. Keys we do not know are kept as they are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
UUID_PATTERN = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
HISTORY_LIMIT = 50


class CorruptMappingError(ValueError):
    """The text is not a JSON object (the caller quarantines the file)."""


@dataclass(frozen=True)
class SessionEntry:
    """One named session, as the mapping file holds it."""

    name: str
    session_id: str
    created_at: str | None = None
    last_used_at: str | None = None
    last_model: str | None = None
    last_reasoning_effort: str | None = None
    cwd: str | None = None
    role: str | None = None
    last_total_cost_usd: float | None = None
    history: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The entry as the JSON object ``resolve --json`` prints."""
        return {
            "name": self.name,
            "session_id": self.session_id,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "last_model": self.last_model,
            "last_reasoning_effort": self.last_reasoning_effort,
            "cwd": self.cwd,
            "role": self.role,
            "history": list(self.history),
        }


@dataclass
class MappingDoc:
    """The whole file: the raw alias entries (unknown keys kept) plus top-level extras.

    Change an entry by assigning a new dict to its name, never in place: ``rows`` keeps the
    text each entry was read with, and :func:`dump` reuses it while the name still holds the
    very dict that was read.
    """

    workspace_dir: str = ""
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, tuple[dict[str, Any], str]] = field(
        default_factory=dict, repr=False, compare=False)

    def entry(self, name: str) -> SessionEntry | None:
        """The typed entry for ``name``, or None when absent or without a session id."""
        raw = self.aliases.get(name)
        return None if raw is None else entry_from_raw(name, raw)

    def entries(self) -> list[SessionEntry]:
        """All usable entries, sorted by name."""
        found = (entry_from_raw(name, raw) for name, raw in sorted(self.aliases.items()))
        return [entry for entry in found if entry is not None]

    def names_for_session(self, session_id: str) -> list[str]:
        """Names whose entry points at ``session_id``."""
        return [e.name for e in self.entries() if e.session_id == session_id]


_TEXT_FIELDS = ("last_used_at", "last_model", "last_reasoning_effort", "cwd", "role")


def entry_from_raw(name: str, raw: dict[str, Any]) -> SessionEntry | None:
    """Read one raw entry leniently; None when it has no usable session id.

    ``list`` calls this for every entry, so it is written for speed (2 us an entry).
    """
    session_id = raw.get("session_id")
    if not session_id or not isinstance(session_id, str):
        return None
    used, model, effort, cwd, role = (value if value and isinstance(value, str) else None
                                      for value in map(raw.get, _TEXT_FIELDS))
    created = raw.get("created_at")
    cost = raw.get("last_total_cost_usd")
    history = raw.get("history")
    return SessionEntry(
        name, session_id, None if created is None else str(created), used, model, effort, cwd,
        role, last_total_cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
        history=tuple(h for h in history if isinstance(h, dict))
        if isinstance(history, list) and history
        else (),
    )


def _normalise_raw_entry(entry: Any) -> dict[str, Any] | None:
    if isinstance(entry, dict):
        return entry  # freshly parsed: nobody else holds it
    if isinstance(entry, str) and entry:
        return {"session_id": entry}
    return None


def parse(text: str, *, for_writing: bool = False) -> MappingDoc:
    """Parse the file's text; raise :class:`CorruptMappingError` if it is not a JSON object.

    ``for_writing`` also keeps each entry's line for :func:`dump` (10 ms at 10,000 sessions,
    which a read-only command does not spend)."""
    if not text.strip():
        return MappingDoc()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptMappingError(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CorruptMappingError(f"top level is a JSON {type(data).__name__}, not an object")
    workspace_dir = data.get("workspace_dir")
    workspace = workspace_dir if isinstance(workspace_dir, str) else ""
    if isinstance(data.get("aliases"), dict):
        raw_aliases = data["aliases"]
        extra = {k: v for k, v in data.items() if k not in {"workspace_dir", "aliases"}}
    else:  # the seed's legacy flat shape
        raw_aliases = {k: v for k, v in data.items() if k not in {"workspace_dir", "aliases"}}
        extra = {}
    aliases: dict[str, dict[str, Any]] = {}
    for name, entry in raw_aliases.items():
        normalised = _normalise_raw_entry(entry)
        if normalised is not None:
            aliases[str(name)] = normalised
    return MappingDoc(workspace_dir=workspace, aliases=aliases, extra=extra,
                      rows=_rows_as_read(text, aliases) if for_writing else {})


_encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode
_encode_name = json.encoder.encode_basestring  # what _encode does to a str, without the setup
_ALIASES_OPEN = '\n  "aliases": {\n'
_SPOT_CHECKS = 16


def _rows_as_read(text: str, aliases: dict[str, dict[str, Any]]
                  ) -> dict[str, tuple[dict[str, Any], str]]:
    """Each entry's line as read, when the text holds one entry per line in name order (as
    :func:`dump` writes it); empty for any other layout."""
    start = text.find(_ALIASES_OPEN)
    if start < 0:
        return {}
    start += len(_ALIASES_OPEN)
    end = text.find("\n  }", start)  # a JSON string holds no raw newline: the block's end
    lines = text[start:end].split(",\n") if end > 0 else []
    names = sorted(aliases)
    if len(lines) != len(names):
        return {}
    # map() keeps the 10,000-fold loops in C; a Python loop here cost 10 ms.
    prefixes = map("    {}: {{".format, map(_encode_name, names))
    if not all(map(str.startswith, lines, prefixes)):
        return {}  # another order or layout, or a legacy string entry
    return dict(zip(names, zip(map(aliases.__getitem__, names), lines, strict=True), strict=True))


def _entry_rows(doc: MappingDoc) -> list[str]:
    """One line per entry, sorted by name; an entry still holding the dict it was read as keeps
    the line it was read with (re-encoding 10,000 sessions took 39 ms of every write)."""
    names = sorted(doc.aliases)
    rows = []
    for name in names:
        entry = doc.aliases[name]
        kept = doc.rows.get(name)
        rows.append(kept[1] if kept is not None and kept[0] is entry else _row(name, entry))
    # A check that the kept lines still say what their entries hold: all of a small file, a
    # spread of a big one. A caller that changed an entry in place is caught here and the
    # whole block is encoded afresh.
    step = max(1, len(names) // _SPOT_CHECKS)
    for index in range(0, len(names), step):
        if rows[index] != _row(names[index], doc.aliases[names[index]]):
            return [_row(name, doc.aliases[name]) for name in names]
    return rows


def _row(name: str, entry: dict[str, Any]) -> str:
    return f"    {_encode_name(name)}: {_encode(entry)}"


def dump(doc: MappingDoc) -> str:
    """Serialise with sorted keys and one session per line: readable, friendly to diff and grep,
    and written by the C encoder (an indented dump is three times slower on 10,000 sessions)."""
    top: dict[str, Any] = {**doc.extra, "workspace_dir": doc.workspace_dir, "aliases": None}
    parts = []
    for key in sorted(top):
        if key == "aliases":
            rows = _entry_rows(doc)
            value = "{\n" + ",\n".join(rows) + "\n  }" if rows else "{}"
        else:
            value = _encode(top[key])
        parts.append(f"  {_encode(key)}: {value}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def replaced_history(raw: dict[str, Any], reason: str, when: str) -> list[dict[str, Any]]:
    """The entry's history with its current session id appended (newest last, bounded)."""
    history = [h for h in raw.get("history", []) if isinstance(h, dict)]
    if isinstance(raw.get("session_id"), str):
        history.append({"session_id": raw["session_id"], "replaced_at": when, "reason": reason})
    return history[-HISTORY_LIMIT:]
