"""Where the claude CLI keeps a session's files, and what state they are in.

What the genuine CLI does (pinned in ``tests/contract/test_portable.py``):

- Its config folder is ``$CLAUDE_CONFIG_DIR``, else ``~/.claude``.
- A session made in the folder ``cwd`` is ``<config>/projects/<cwd encoded>/<session id>.jsonl``,
  one JSON object per line, only ever appended to. The encoding replaces every UTF-16 code unit
  of the absolute path that is not an ASCII letter or digit by ``-`` (so ``é`` is one dash and a
  letter outside the BMP two); a result longer than 200 characters becomes its first 200, a
  ``-`` and the base-36 absolute value of a Java-style 32-bit hash of the path.
- Beside the transcript, a folder of the same id holds what some turns make: ``subagents/``
  (each subagent's transcript and its ``.meta.json``) and ``tool-results/`` (tool output too big
  to inline). Both belong to the session. (``session-env/<id>/`` elsewhere in the config folder
  stays empty in headless runs and describes the machine, so it is not part of a session.)
- ``--resume <id>`` finds a transcript in any project folder, and appends to it where it is.
- Transcripts older than ``cleanupPeriodDays`` (30 unless a settings file says otherwise) are
  deleted by the CLI, without a word.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from datetime import datetime

# The fake CLI imports this module on every call: no dataclasses or datetime at import time.

PROJECTS = "projects"
TRANSCRIPT_SUFFIX = ".jsonl"
MAX_FOLDER_NAME = 200
DEFAULT_CLEANUP_DAYS = 30
WARN_WITHIN_DAYS = 7
"""A transcript the CLI will delete within this many days is shown as due for cleanup."""
SETTINGS_LIMIT = 1 << 20
MANAGED_SETTINGS = (Path("/etc/claude-code/managed-settings.json"),
                    Path("/Library/Application Support/ClaudeCode/managed-settings.json"))

_DIGITS36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """The CLI's config folder for this environment: ``CLAUDE_CONFIG_DIR``, else
    ``$HOME/.claude``."""
    environ = os.environ if env is None else env
    configured = environ.get("CLAUDE_CONFIG_DIR")
    if configured:
        return Path(os.path.abspath(configured))
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".claude"


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, rest = divmod(number, 36)
        digits = _DIGITS36[rest] + digits
        if not number:
            return digits


def _java_hash(units: list[int]) -> int:
    value = 0
    for unit in units:
        value = (value * 31 + unit) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def project_folder_name(cwd: str | Path) -> str:
    """The name the CLI gives the project folder of sessions made in ``cwd`` (absolute)."""
    encoded = str(cwd).encode("utf-16-le", "surrogatepass")
    units = [int.from_bytes(encoded[i:i + 2], "little") for i in range(0, len(encoded), 2)]
    name = "".join(chr(u) if u < 128 and chr(u).isalnum() else "-" for u in units)
    if len(name) <= MAX_FOLDER_NAME:
        return name
    return f"{name[:MAX_FOLDER_NAME]}-{_base36(abs(_java_hash(units)))}"


def project_folder(cwd: str | Path, env: Mapping[str, str] | None = None) -> Path:
    """The folder where the CLI keeps the sessions made in ``cwd``."""
    return config_dir(env) / PROJECTS / project_folder_name(cwd)


def transcript_path(session_id: str, cwd: str | Path,
                    env: Mapping[str, str] | None = None) -> Path:
    """Where the CLI writes the transcript of a session made in ``cwd``."""
    return project_folder(cwd, env) / f"{session_id}{TRANSCRIPT_SUFFIX}"


def _regular(path: Path) -> os.stat_result | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


class ProjectIndex:
    """Which project folder holds which transcript, read once (for the sessions that are not
    where their cwd says: made before a move, or imported by hand). A session with copies in
    several folders is the first regular file in folder-name order: one answer on every
    machine, the one the fake CLI gives too."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._found: dict[str, list[Path]] | None = None

    def find(self, session_id: str) -> Path | None:
        if self._found is None:
            self._found = {}
            try:
                projects = sorted(os.scandir(self.root), key=lambda entry: entry.name)
            except OSError:
                projects = []
            for project in projects:
                if not project.is_dir(follow_symlinks=False):
                    continue
                try:
                    names = os.listdir(project.path)
                except OSError:
                    continue
                for name in names:
                    if name.endswith(TRANSCRIPT_SUFFIX):
                        self._found.setdefault(name[:-len(TRANSCRIPT_SUFFIX)], []).append(
                            Path(project.path, name))
        return next((path for path in self._found.get(session_id, ()) if _regular(path)), None)


def locate(session_id: str, cwd: str | Path, env: Mapping[str, str] | None = None,
           index: ProjectIndex | None = None) -> Path | None:
    """The session's transcript: where ``cwd`` puts it, else wherever the CLI would find it by
    id (any project folder); None when there is none."""
    expected = transcript_path(session_id, cwd, env)
    if _regular(expected):
        return expected
    index = index or ProjectIndex(config_dir(env) / PROJECTS)
    return index.find(session_id)


class SessionFiles(NamedTuple):
    """A session's files on disk: its transcript, and the files in the folder of the same id
    beside it (as paths relative to the project folder, ``<id>/subagents/...``)."""

    session_id: str
    project: Path
    transcript: Path
    extra: tuple[str, ...] = ()

    def all(self) -> list[tuple[str, Path]]:
        """``(path relative to the project folder, absolute path)``, the transcript first."""
        return [(self.transcript.name, self.transcript),
                *((rel, self.project / rel) for rel in self.extra)]


def session_files(session_id: str, cwd: str | Path, env: Mapping[str, str] | None = None,
                  index: ProjectIndex | None = None) -> SessionFiles | None:
    """Everything the CLI keeps for the session, or None when its transcript is gone.

    Only regular files are carried; a symlink in the session's folder is not followed."""
    transcript = locate(session_id, cwd, env, index)
    if transcript is None:
        return None
    project = transcript.parent
    extra: list[str] = []
    folder = project / session_id
    if folder.is_dir() and not folder.is_symlink():
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not Path(root, d).is_symlink())
            for name in sorted(files):
                path = Path(root, name)
                if _regular(path):
                    extra.append(path.relative_to(project).as_posix())
    return SessionFiles(session_id, project, transcript, tuple(extra))


# -- state --------------------------------------------------------------------------------------


class TranscriptState(str, Enum):
    """What ``list`` says about a session's transcript."""

    PRESENT = "present"
    MISSING = "missing"
    DUE = "due for cleanup"


class TranscriptStatus(NamedTuple):
    """A transcript's state, where it is, and when the CLI's cleanup will delete it."""

    state: TranscriptState
    path: Path | None = None
    cleanup_at: datetime | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"state": self.state.value, "path": str(self.path) if self.path else None,
                "cleanup_at": self.cleanup_at.isoformat() if self.cleanup_at else None}


def _settings_days(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            data = json.loads(handle.read(SETTINGS_LIMIT))
    except (OSError, ValueError):
        return None  # the CLI's own file: absent or not ours to judge
    value = data.get("cleanupPeriodDays") if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def cleanup_period_days(cwd: str | Path | None = None,
                        env: Mapping[str, str] | None = None) -> int:
    """``cleanupPeriodDays`` from the CLI's settings: the user's (``<config>/settings.json``),
    the machine's managed settings, and for ``cwd`` the project's (``.claude/settings.json``,
    ``.claude/settings.local.json``). The smallest wins, since any CLI started with it
    deletes; 30 when none sets it. (The CLI deletes a transcript whose last change is older
    than that many days.)"""
    files = [config_dir(env) / "settings.json", *MANAGED_SETTINGS]
    if cwd is not None:
        files += [Path(cwd) / ".claude" / "settings.json",
                  Path(cwd) / ".claude" / "settings.local.json"]
    found = [days for days in map(_settings_days, files) if days is not None]
    return min(found) if found else DEFAULT_CLEANUP_DAYS


def statuses(sessions: Iterable[tuple[str, str | Path]], workspace: Path,
             env: Mapping[str, str] | None = None, now: datetime | None = None
             ) -> list[TranscriptStatus]:
    """The state of each ``(session id, cwd)``'s transcript, in order: one stat each, and one
    look through the project folders only if some transcript is not where its cwd puts it."""
    from datetime import datetime, timedelta, timezone

    now = now or datetime.now(timezone.utc)
    period = timedelta(days=cleanup_period_days(workspace, env))
    warn = timedelta(days=WARN_WITHIN_DAYS)
    root = config_dir(env) / PROJECTS
    index = ProjectIndex(root)
    # Strings, not Paths, and each cwd encoded once (most sessions share one): list stays a
    # few microseconds an entry at 10,000 sessions.
    folders: dict[str, str] = {}
    found = []
    for session_id, cwd in sessions:
        key = str(cwd)
        folder = folders.get(key)
        if folder is None:
            folder = folders[key] = os.path.join(root, project_folder_name(key), "")
        name = folder + session_id + TRANSCRIPT_SUFFIX
        try:
            st: os.stat_result | None = os.lstat(name)
        except OSError:
            st = None
        path: Path | None = None
        if st is not None and stat.S_ISREG(st.st_mode):
            path = Path(name)
        else:
            path = index.find(session_id)
            st = _regular(path) if path is not None else None
        if path is None or st is None:
            found.append(TranscriptStatus(TranscriptState.MISSING))
            continue
        cleanup_at = datetime.fromtimestamp(st.st_mtime, timezone.utc) + period
        state = TranscriptState.DUE if cleanup_at - now <= warn \
            else TranscriptState.PRESENT
        found.append(TranscriptStatus(state, path, cleanup_at))
    return found


# -- comparing two copies of one transcript -----------------------------------------------------


class Relation(str, Enum):
    """How a local transcript stands to an incoming copy of the same session."""

    EQUAL = "equal"
    BEHIND = "behind"      # the local one is a prefix: the incoming one extends it
    AHEAD = "ahead"        # the incoming one is a prefix: the local one has more
    DIVERGED = "diverged"  # each has lines the other lacks


_CHUNK = 1 << 20


def relation(local: Path, incoming: Path) -> Relation:
    """Compare two copies byte by byte (transcripts are append-only, so a copy that is a
    prefix of the other is behind it)."""
    local_size, incoming_size = local.stat().st_size, incoming.stat().st_size
    with local.open("rb") as a, incoming.open("rb") as b:
        left = min(local_size, incoming_size)
        while left > 0:
            size = min(_CHUNK, left)
            if a.read(size) != b.read(size):
                return Relation.DIVERGED
            left -= size
    if local_size == incoming_size:
        return Relation.EQUAL
    return Relation.BEHIND if local_size < incoming_size else Relation.AHEAD


def user_turns(data: bytes) -> int:
    """The prompts a user typed in a transcript (user lines carrying text; tool results and
    the CLI's own meta lines are not turns). Read tolerantly: lines we cannot read are
    skipped."""
    turns = 0
    for line in data.splitlines():
        if b'"user"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("type") != "user" \
                or record.get("isMeta") or record.get("isSidechain") \
                or record.get("promptSource") == "system":  # the CLI's own notices
            continue
        message = record.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) or (isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") == "text" for b in content)):
            turns += 1
    return turns


def read_bytes(path: Path) -> bytes:
    """A transcript's bytes (for counting turns in a message)."""
    with path.open("rb") as handle:
        return handle.read()
