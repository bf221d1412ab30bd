"""The mapping document: JSON text <-> typed entries. Pure; no files, no clocks.

The shape is the seed script's, so that files either side writes stay readable by the other::

    {"workspace_dir": "/abs/workspace",
     "aliases": {"review-src": {"session_id": "...", "created_at": "...",
                                "last_model": "...", "last_reasoning_effort": "...", ...}}}

The seed's older flat shape (``{name: session_id}`` or ``{name: {...}}`` at the top level) is read
too, and written back in the current shape. Keys we do not know are kept as they are.
"""

from __future__ import annotations

import bisect
import itertools
import json
import operator
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import CorruptEntryError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
UUID_PATTERN = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_is_uuid = UUID_PATTERN.fullmatch
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
    system_prompt_role: str | None = None
    """A digest of the role the CLI recorded in the session's system prompt snapshot when it
    was created ("" for none; None when not known, as for entries older than this key)."""

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


class _EntriesView(Mapping[str, dict[str, Any]]):
    """The document's entries, read-only; each entry handed out is a copy."""

    __slots__ = ("_entries",)

    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self._entries = entries

    def __getitem__(self, name: str) -> dict[str, Any]:
        copied: dict[str, Any] = _copy(self._entries[name])
        return copied

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists and scalars)."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


class MappingDoc:
    """The whole file: the alias entries (unknown keys kept) plus top-level extras.

    Entries change only through :meth:`put` and :meth:`remove`, and the document records which
    names a command changed: :func:`dump` encodes exactly those and keeps every other entry's
    line as it was read. Reading hands out copies (``aliases[name]``), so an entry changed in
    place changes nothing until it is put back.
    """

    __slots__ = ("_changed", "_entries", "_rows", "_unusable", "extra", "source", "workspace_dir")

    def __init__(self, workspace_dir: str = "",
                 aliases: Mapping[str, Mapping[str, Any]] | None = None,
                 extra: Mapping[str, Any] | None = None, *, source: str | None = None) -> None:
        self.workspace_dir = workspace_dir
        self.extra: dict[str, Any] = dict(extra or {})
        self.source = source  # the file it was read from, for errors about its entries
        self._entries: dict[str, dict[str, Any]] = {}
        self._rows: dict[str, str] = {}  # name -> its line as read (names not changed since)
        self._changed: set[str] = set()
        # Values under "aliases" that are no entry at all (a number, null, a list): kept as read
        # and written back, so that a hand-edit gone wrong is shown, never silently dropped.
        self._unusable: dict[str, Any] = {}
        for name, raw in (aliases or {}).items():
            self.put(name, raw)

    @classmethod
    def _read(cls, workspace_dir: str, entries: dict[str, dict[str, Any]],
              extra: dict[str, Any], rows: dict[str, str],
              unusable: dict[str, Any]) -> MappingDoc:
        doc = cls(workspace_dir, extra=extra)
        doc._entries, doc._rows = entries, rows  # freshly parsed: nobody else holds them
        doc._unusable = unusable
        return doc

    # -- reading ------------------------------------------------------------------------------

    @property
    def aliases(self) -> Mapping[str, dict[str, Any]]:
        """The raw entries by name, read-only; ``aliases[name]`` is a copy to change and put."""
        return _EntriesView(self._entries)

    def entry(self, name: str) -> SessionEntry | None:
        """The typed entry for ``name``; None when there is none.

        Raises :class:`~claude_persist.errors.CorruptEntryError` when the entry is there but its
        session id is missing or not a UUID (an id ends up in file names)."""
        raw = self._entries.get(name)
        if raw is None:
            if name not in self._unusable:
                return None
            raw = {}
        entry = entry_from_raw(name, raw)
        if entry is None:
            where = f" in {self.source}" if self.source else ""
            sid = raw.get("session_id")
            problem = ("has no session id" if not sid
                       else f"has the session id {sid!r}, not a UUID")
            if name in self._unusable:
                problem = f"is {_encode(self._unusable[name])}, not an object with a session id"
            raise CorruptEntryError(
                f"the entry {name!r}{where} is corrupt: it {problem}. Adopt the right session "
                "id under this name again (with force), or delete the name.",
                path=self.source, name=name)
        return entry

    def entries(self) -> list[SessionEntry]:
        """All usable entries, sorted by name (a corrupt one is left out)."""
        found = (entry_from_raw(name, raw) for name, raw in sorted(self._entries.items()))
        return [entry for entry in found if entry is not None]

    def has(self, name: str) -> bool:
        """True when the file holds something under ``name``, usable or not."""
        return name in self._entries or name in self._unusable

    def unusable(self) -> list[str]:
        """Names whose entry cannot be used (no session id, not a UUID, not an object), sorted;
        they stay in the file as they are until replaced or removed."""
        broken = {name for name, raw in self._entries.items()
                  if entry_from_raw(name, raw) is None}
        return sorted(broken | self._unusable.keys())

    def names_for_session(self, session_id: str) -> list[str]:
        """Names whose entry points at ``session_id``."""
        return [e.name for e in self.entries() if e.session_id == session_id]

    # -- changing -----------------------------------------------------------------------------

    def put(self, name: str, raw: Mapping[str, Any]) -> None:
        """Set the entry ``name`` (added or replaced) to a copy of ``raw``."""
        if not isinstance(raw, Mapping):
            raise TypeError(f"an entry is a mapping, not {type(raw).__name__}")
        self._entries[name] = _copy(dict(raw))  # nobody else holds it, nor its lists
        self._unusable.pop(name, None)
        self._changed.add(name)

    def remove(self, name: str) -> None:
        """Remove the entry ``name`` (an unusable one too); KeyError when there is none."""
        if self._unusable.pop(name, _MISSING) is _MISSING:
            del self._entries[name]
        else:
            self._entries.pop(name, None)
        self._changed.add(name)

    @property
    def changed(self) -> frozenset[str]:
        """The names put or removed since the document was read."""
        return frozenset(self._changed)


_MISSING = object()
_TEXT_FIELDS = ("last_used_at", "last_model", "last_reasoning_effort", "cwd", "role")


def entry_from_raw(name: str, raw: dict[str, Any]) -> SessionEntry | None:
    """Read one raw entry leniently; None when it has no usable session id (a UUID).

    ``list`` calls this for every entry, so it is written for speed (2 us an entry).
    """
    session_id = raw.get("session_id")
    if not isinstance(session_id, str) or _is_uuid(session_id) is None:
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
        system_prompt_role=snapshot if isinstance(snapshot := raw.get("system_prompt_role"), str)
        else None,
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
    unusable: dict[str, Any] = {}
    for name, entry in raw_aliases.items():
        normalised = _normalise_raw_entry(entry)
        if normalised is not None:
            aliases[str(name)] = normalised
        else:
            unusable[str(name)] = entry
    rows = _rows_as_read(text, aliases) if for_writing and not unusable else {}
    return MappingDoc._read(workspace, aliases, extra, rows, unusable)


_encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode
_encode_name = json.encoder.encode_basestring  # what _encode does to a str, without the setup
_encode_names = json.JSONEncoder(ensure_ascii=False).encode
_ALIASES_OPEN = '\n  "aliases": {\n'
# Where a line may hold more than its one entry: a second key after the entry's closing brace
# (a duplicate key, whose last value is the one JSON readers keep).
_MAYBE_TWO_PAIRS = re.compile(r'\}[ \t\r]*,[ \t\r]*"')


def _rows_as_read(text: str, aliases: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each entry's line as read, when the text holds exactly one entry per line in name order
    (as :func:`dump` writes it); empty for any other layout."""
    start = text.find(_ALIASES_OPEN)
    if start < 0:
        return {}
    start += len(_ALIASES_OPEN)
    end = text.find("\n  }", start)  # a JSON string holds no raw newline: the block's end
    block = text[start:end] if end > 0 else ""
    lines = block.split(",\n") if block else []
    names = sorted(aliases)
    if len(lines) != len(names):
        return {}
    # Every line's expected start, from one encoding of the name list (a quote inside a name is
    # escaped, so '", "' only ever separates two names), compared by map() in C: a Python loop
    # here cost 10 ms, and encoding the names one by one 7.
    starts = _encode_names(names)[1:-1].replace('", "', '": {\n    "')
    prefixes = f"    {starts}: {{".split("\n")
    if not all(map(str.startswith, lines, prefixes)):
        return {}  # another order or layout, or a legacy string entry
    if any(map(operator.contains, lines, itertools.repeat("\n"))):
        return {}  # a line broken by hand: it may hide a second key
    if _MAYBE_TWO_PAIRS.search(block) and not all(map(_one_pair, lines)):
        return {}
    return dict(zip(names, lines, strict=True))


def _one_pair(line: str) -> bool:
    """True when ``line`` is one ``"name": {...}`` pair and nothing more (checked by a parse
    only where the cheap search saw something that might be a second pair)."""
    if not _MAYBE_TWO_PAIRS.search(line):
        return True
    try:
        pairs = json.loads("{" + line + "}", object_pairs_hook=lambda items: items)
    except json.JSONDecodeError:
        return False
    return isinstance(pairs, list) and len(pairs) == 1


def _entry_rows(doc: MappingDoc) -> list[str]:
    """One line per entry, sorted by name: the line as read for an entry no command changed,
    a fresh encoding for the others (re-encoding 10,000 sessions took 39 ms of every write)."""
    entries = doc._entries
    if doc._unusable:  # rare: a hand-edit gone wrong, written back as it was read
        every = {**doc._unusable, **entries}
        return [_row(name, every[name]) for name in sorted(every)]
    names = sorted(entries)
    rows: list[str | None] = list(map(doc._rows.get, names))  # None: never read as a line
    for name in doc._changed & entries.keys():
        rows[bisect.bisect_left(names, name)] = None
    if None not in rows:
        return rows  # type: ignore[return-value]
    return [row if row is not None else _row(name, entries[name])
            for name, row in zip(names, rows, strict=True)]


def _row(name: str, entry: Any) -> str:
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
