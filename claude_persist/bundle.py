"""Export and import of named sessions: one gzip-compressed tar, a manifest, every file.

A bundle holds ``manifest.json`` first, then ``sessions/<id>.jsonl`` (each transcript) and
``sessions/<id>/...`` (the folder of the same id beside it, when the CLI made one). The manifest
says the format, the tool's version, the source workspace and time, and per named session: its
name, the whole mapping entry, and each file with its size and sha256.

Import trusts nothing in the archive. It reads it once, as a stream, into a private staging
folder, and checks every member on the way: only regular files, each at a safe relative path
that the manifest lists, of the listed size and checksum, within the limits below; every listed
file present. Only then does it compare with what this machine has, and refuse (unless forced)
anything that would lose a turn; only then does it move files into place, each by a rename.

Transcripts are append-only, so one copy is behind another when it is a prefix of it: a bundle
that extends the local transcript fast-forwards it; an equal one changes nothing; one that lacks
turns the local copy has is refused unless forced (the local copy is then kept beside it).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import stat
import tarfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from . import fsio, transcripts
from .errors import BundleError, ImportConflictError, UnsafeFileError, UsageError
from .mapping import HISTORY_LIMIT, NAME_PATTERN, UUID_PATTERN, MappingDoc
from .transcripts import Relation, SessionFiles

FORMAT = "claude-persist-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ROOT = "sessions"
STAGING_LABEL = ".claude-persist-import"
"""The staging folder's name in the CLI's projects folder. A project folder's name never holds
a ``.`` (the CLI turns every character but letters and digits into ``-``), so it cannot clash."""

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Limits:
    """What an import accepts at most; anything past a limit is refused before it is read."""

    max_file_bytes: int = 4 << 30
    """One file (a transcript can grow to hundreds of MB over months)."""
    max_total_bytes: int = 64 << 30
    """All files together, uncompressed."""
    max_files: int = 200_000
    max_manifest_bytes: int = 64 << 20


DEFAULT_LIMITS = Limits()


# -- the manifest -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    """One file of a session: its archive path (``sessions/<id>...``), size and sha256."""

    path: str
    size: int
    sha256: str

    @property
    def relative(self) -> str:
        """Its path inside the project folder (``<id>.jsonl``, ``<id>/subagents/...``)."""
        return self.path[len(ROOT) + 1:]


@dataclass(frozen=True)
class SessionRecord:
    """One named session in a bundle."""

    name: str
    session_id: str
    cwd: str
    entry: dict[str, Any]
    files: tuple[FileRecord, ...]

    @property
    def transcript(self) -> FileRecord:
        return self.files[0]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "session_id": self.session_id, "cwd": self.cwd,
                "entry": self.entry,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                          for f in self.files]}


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds, as ``manifest.json`` says it."""

    tool_version: str
    created_at: str
    workspace_dir: str
    sessions: tuple[SessionRecord, ...]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": self.format_version,
                "tool": "claude-persist", "tool_version": self.tool_version,
                "created_at": self.created_at, "workspace_dir": self.workspace_dir,
                "sessions": [s.to_json() for s in self.sessions]}

    def files(self) -> dict[str, FileRecord]:
        """Every file once, by archive path."""
        return {f.path: f for s in self.sessions for f in s.files}


def safe_member_name(name: str) -> bool:
    """A relative POSIX path under ``sessions/``, without ``..``, ``.``, empty parts, a
    backslash or a control character."""
    if not name or len(name) > 4096 or name.startswith("/") or "\\" in name:
        return False
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return False
    parts = name.split("/")
    return parts[0] == ROOT and len(parts) > 1 and all(p not in ("", ".", "..") for p in parts)


def _problem(where: str, what: str) -> BundleError:
    return BundleError(f"the bundle's manifest is invalid: {where}: {what}")


def parse_manifest(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Read and check ``manifest.json``; :class:`BundleError` says what is wrong."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # nesting past Python's limit is not JSON we read
        raise BundleError(f"the bundle's manifest.json is not valid JSON ({exc})",
                          member=MANIFEST_NAME) from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"manifest.json does not describe a {FORMAT} (its \"format\" is "
                          f"{raw.get('format') if isinstance(raw, dict) else None!r})",
                          member=MANIFEST_NAME)
    version = raw.get("format_version")
    if not isinstance(version, int) or version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise BundleError(
            f"the bundle has format version {version!r}; this claude-persist reads version "
            f"{FORMAT_VERSION}" + (" (it was made by a newer claude-persist: upgrade this one)"
                                   if newer else ""), member=MANIFEST_NAME)
    sessions_raw = raw.get("sessions")
    if not isinstance(sessions_raw, list):
        raise _problem("sessions", "not a list")
    workspace = raw.get("workspace_dir")
    if not isinstance(workspace, str) or not workspace.startswith("/"):
        raise _problem("workspace_dir", f"{workspace!r} is not an absolute path")
    sessions: list[SessionRecord] = []
    names: set[str] = set()
    seen: dict[str, FileRecord] = {}
    total = 0
    for index, item in enumerate(sessions_raw):
        record = _session_record(item, f"sessions[{index}]", limits)
        if record.name in names:
            raise _problem(f"sessions[{index}]", f"the name {record.name!r} appears twice")
        names.add(record.name)
        for file in record.files:
            earlier = seen.get(file.path)
            if earlier is None:
                seen[file.path] = file
                total += file.size
            elif earlier != file:
                raise _problem(f"sessions[{index}]", f"{file.path} is listed twice with "
                                                     "different sizes or checksums")
        sessions.append(record)
    # A path that is a file and also holds files: placing one would meet the other.
    folders = {parent for path in seen for parent in _parents(path)}
    for path in sorted(seen):
        if path in folders:
            raise _problem("sessions", f"{path} is listed as a file and as a folder of files")
    if len(seen) > limits.max_files:
        raise BundleError(f"the bundle lists {len(seen)} files, more than the "
                          f"{limits.max_files} an import accepts")
    if total > limits.max_total_bytes:
        raise BundleError(f"the bundle's files come to {total} bytes, more than the "
                          f"{limits.max_total_bytes} an import accepts")
    return Manifest(tool_version=str(raw.get("tool_version", "")),
                    created_at=str(raw.get("created_at", "")), workspace_dir=workspace,
                    sessions=tuple(sessions))


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


#: The keys of a mapping entry that claude-persist itself reads, and the JSON type each must
#: have; an imported entry whose values are of other types is refused (others are kept as they
#: are: the seed's files may carry keys of their own).
ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "created_at": str, "last_used_at": str, "last_model": str, "last_reasoning_effort": str,
    "cwd": str, "role": str, "history": list, "forked_from": str, "system_prompt_role": str,
    "last_total_cost_usd": (int, float), "adopted": bool,
}


def _check_entry(entry: dict[str, Any], where: str) -> None:
    for key, kind in ENTRY_TYPES.items():
        value = entry.get(key)
        if value is not None and (not isinstance(value, kind) or (
                isinstance(value, bool) and kind is not bool)):
            raise _problem(where, f"the mapping entry's {key} is {value!r}, not what "
                                  "claude-persist writes there")
    for item in entry.get("history") or []:
        if not isinstance(item, dict) or not (isinstance(item.get("session_id"), str)
                                              and UUID_PATTERN.match(item["session_id"])):
            raise _problem(where, f"the mapping entry's history holds {item!r}, not a replaced "
                                  "session")
    snapshot = entry.get("system_prompt_role")
    if snapshot not in (None, "") and not _HEX64.match(str(snapshot)):
        raise _problem(where, "the mapping entry's system_prompt_role is not a digest")


def _session_record(item: Any, where: str, limits: Limits) -> SessionRecord:
    if not isinstance(item, dict):
        raise _problem(where, "not an object")
    name, sid, cwd, entry = (item.get(k) for k in ("name", "session_id", "cwd", "entry"))
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _problem(where, f"the name {name!r} is not a valid session name")
    if not isinstance(sid, str) or not UUID_PATTERN.match(sid) or sid != sid.lower():
        raise _problem(where, f"the session id {sid!r} is not a UUID as claude writes them "
                              "(lower case)")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise _problem(where, f"the cwd {cwd!r} is not an absolute path")
    if not isinstance(entry, dict) or entry.get("session_id") != sid:
        raise _problem(where, "the mapping entry is missing or names another session id")
    _check_entry(entry, where)
    files_raw = item.get("files")
    if not isinstance(files_raw, list) or not files_raw:
        raise _problem(where, "no files listed")
    files = []
    for number, raw_file in enumerate(files_raw):
        at = f"{where}.files[{number}]"
        if not isinstance(raw_file, dict):
            raise _problem(at, "not an object")
        path, size, digest = (raw_file.get(k) for k in ("path", "size", "sha256"))
        if not isinstance(path, str) or not safe_member_name(path):
            raise _problem(at, f"the path {path!r} is not a safe relative path under {ROOT}/")
        expected = f"{ROOT}/{sid}.jsonl" if number == 0 else None
        if expected is not None and path != expected:
            raise _problem(at, f"the first file must be the transcript {expected}")
        if number and not path.startswith(f"{ROOT}/{sid}/"):
            raise _problem(at, f"{path} is not in the session's folder {ROOT}/{sid}/")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _problem(at, f"the size {size!r} is not a byte count")
        if size > limits.max_file_bytes:
            raise BundleError(f"{path} is {size} bytes, more than the {limits.max_file_bytes} "
                              "an import accepts for one file", member=path)
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise _problem(at, f"the sha256 {digest!r} is not 64 lower-case hex digits")
        files.append(FileRecord(path, size, digest))
    return SessionRecord(name, sid.lower(), cwd, dict(entry), tuple(files))


# -- export -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSource:
    """A named session to export: its mapping entry, the cwd it runs in, and its files."""

    name: str
    entry: dict[str, Any]
    cwd: str
    files: SessionFiles


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote."""

    manifest: Manifest
    files: int
    bytes: int


class _HashingReader:
    """Reads exactly ``size`` bytes of a file for the tar, hashing them on the way."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self.handle = handle
        self.left = size
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.handle.read(size)
        self.left -= len(data)
        self.digest.update(data)
        return data


def _hash_file(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file, read once from one descriptor (never past its size then, so
    a line the CLI appends meanwhile is left for the next export)."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest, left = hashlib.sha256(), size
        while left:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                raise BundleError(f"{path} shrank while it was exported; export again")
            digest.update(chunk)
            left -= len(chunk)
    return size, digest.hexdigest()


def write(out: IO[bytes], sources: Sequence[ExportSource], workspace: Path, tool_version: str,
          *, guard: Callable[[str], AbstractContextManager[object]] | None = None,
          compresslevel: int = 6) -> ExportReport:
    """Write a bundle of ``sources`` to ``out``.

    Each session's files are measured and hashed under ``guard(session_id)`` (the session's
    lock: no turn of ours appends meanwhile), then copied into the tar up to the measured size
    and hashed again; a file that changed other than by appending fails the export."""
    records: list[SessionRecord] = []
    measured: dict[str, tuple[Path, FileRecord]] = {}
    for source in sources:
        with guard(source.files.session_id) if guard else nullcontext():
            files = []
            for relative, path in source.files.all():
                member = f"{ROOT}/{relative}"
                if member not in measured:
                    size, digest = _hash_file(path)
                    measured[member] = (path, FileRecord(member, size, digest))
                files.append(measured[member][1])
        records.append(SessionRecord(source.name, source.files.session_id, source.cwd,
                                     source.entry, tuple(files)))
    manifest = Manifest(tool_version=tool_version, created_at=_utc_now(),
                        workspace_dir=str(workspace), sessions=tuple(records))
    payload = json.dumps(manifest.to_json(), indent=1, ensure_ascii=False).encode("utf-8")
    now = time.time()
    # The gzip layer is ours, to set its level: 6, gzip's and tar czf's own default.
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=compresslevel, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member(MANIFEST_NAME, len(payload), now), _BytesReader(payload))
        total = 0
        for member, (path, record) in measured.items():
            with path.open("rb") as handle:
                reader = _HashingReader(handle, record.size)
                tar.addfile(_member(member, record.size, path.stat().st_mtime), reader)
            if reader.left or reader.digest.hexdigest() != record.sha256:
                raise BundleError(f"{path} changed while it was exported (not only appended "
                                  "to); export again", member=member)
            total += record.size
    return ExportReport(manifest, len(measured), total)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.at + size
        chunk, self.at = self.data[self.at:end], min(end, len(self.data))
        return chunk


def _member(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o600, int(mtime), tarfile.REGTYPE
    return info


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat()


# -- import: read and verify ----------------------------------------------------------------------


@dataclass
class Staged:
    """A verified bundle: its manifest, and each file's staged copy (by archive path)."""

    manifest: Manifest
    files: dict[str, Path]
    staging: fsio.Staging


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.isdir():
        return "a folder"
    return "not a regular file"


def _check_member(member: tarfile.TarInfo, expected: dict[str, FileRecord],
                  seen: set[str], root: Path) -> FileRecord:
    name = member.name
    if name.startswith("/"):
        raise BundleError(f"the bundle holds an absolute path, {name!r}; refusing it",
                          member=name)
    if ".." in name.split("/"):
        raise BundleError(f"the bundle holds a path with '..', {name!r}; refusing it",
                          member=name)
    if not member.isreg():
        raise BundleError(f"the bundle's member {name!r} is {_kind(member)}; a bundle holds "
                          "only regular files", member=name)
    if not safe_member_name(name) or name not in expected:
        raise BundleError(f"the bundle holds {name!r}, which its manifest does not list",
                          member=name)
    if name in seen:
        raise BundleError(f"the bundle holds {name!r} twice", member=name)
    record = expected[name]
    if member.size != record.size:
        raise BundleError(f"{name} is {member.size} bytes in the archive; the manifest says "
                          f"{record.size}", member=name)
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:  # the standard library's own judgement, as a second opinion
        try:
            data_filter(member, str(root))
        except tarfile.FilterError as exc:
            raise BundleError(f"the bundle's member {name!r} is unsafe: {exc}",
                              member=name) from exc
    return record


class _Gunzip:
    """A gzip stream's decompressed bytes, inflated by a thread of its own: zlib lets go of
    the interpreter while it inflates, so inflating the next megabytes and checking and writing
    these take two cores, as ``tar xzf`` does with a gzip process beside it. Each step of
    inflating is bounded, so a small stream that inflates to a huge one fills no memory."""

    def __init__(self, stream: IO[bytes], depth: int = 8) -> None:
        import queue
        import threading

        self._stream = stream
        self._chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        self._pending = b""
        self._offset = 0
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._inflate, name="bundle-gunzip",
                                        daemon=True)
        self._thread.start()

    def _inflate(self) -> None:
        try:
            inflater = zlib.decompressobj(wbits=31)
            while not self._stop.is_set():
                data = self._stream.read(_CHUNK)
                if not data:
                    if not inflater.eof:
                        raise EOFError("the gzip stream ends before its end marker")
                    break
                while not self._stop.is_set():
                    out = inflater.decompress(data, 4 * _CHUNK)
                    if out:
                        self._put(out)
                    if inflater.eof:  # a member ends; another may follow, as gzip allows
                        data = inflater.unused_data
                        if not data:
                            break
                        if data[:2] != b"\x1f\x8b":
                            raise zlib.error("data after the gzip stream")
                        inflater = zlib.decompressobj(wbits=31)
                        continue
                    data = inflater.unconsumed_tail
                    if not data and len(out) < 4 * _CHUNK:
                        break  # all input used and all output given: read more
            self._put(None)
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        import queue

        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        have = 0
        while size < 0 or have < size:
            if self._offset >= len(self._pending):
                if self._done:
                    break
                item = self._chunks.get()
                if item is None or isinstance(item, BaseException):
                    self._done = True
                    if item is None:
                        break
                    raise item
                self._pending, self._offset = item, 0
            left = len(self._pending) - self._offset
            take = left if size < 0 else min(size - have, left)
            parts.append(self._pending[self._offset:self._offset + take])
            self._offset += take
            have += take
        return b"".join(parts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # (it may wait on a stream that never ends)


def read(stream: IO[bytes], staging: fsio.Staging, label: str,
         limits: Limits = DEFAULT_LIMITS) -> Staged:
    """Read a bundle from ``stream`` into ``staging``, checking everything; raise
    :class:`BundleError` at the first problem (``label`` names the bundle in messages)."""
    files: dict[str, Path] = {}
    try:
        gunzip = _Gunzip(stream)
        with contextlib.closing(gunzip), \
                tarfile.open(fileobj=cast(IO[bytes], gunzip), mode="r|", bufsize=_CHUNK) as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME or not first.isreg():
                raise BundleError(f"{label} does not start with {MANIFEST_NAME}: it is not a "
                                  "claude-persist bundle (make one with export)")
            if first.size > limits.max_manifest_bytes:
                raise BundleError(f"{label}'s manifest is {first.size} bytes, more than the "
                                  f"{limits.max_manifest_bytes} an import accepts")
            handle = tar.extractfile(first)
            assert handle is not None
            manifest = parse_manifest(handle.read(), limits)
            expected = manifest.files()
            member = tar.next()  # (iterating the TarFile would begin again with the manifest)
            while member is not None:
                record = _check_member(member, expected, set(files), staging.root)
                files[member.name] = _stage(tar, member, record, staging)
                member = tar.next()
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        if isinstance(exc, UnsafeFileError):
            raise
        raise BundleError(f"{label} is not a readable bundle ({exc or type(exc).__name__}): "
                          "truncated, or not a gzip-compressed tar") from exc
    missing = sorted(set(expected) - set(files))
    if missing:
        raise BundleError(f"{label} lacks {len(missing)} file(s) its manifest lists, such as "
                          f"{missing[0]} (truncated?)", member=missing[0])
    return Staged(manifest, files, staging)


def _stage(tar: tarfile.TarFile, member: tarfile.TarInfo, record: FileRecord,
           staging: fsio.Staging) -> Path:
    source = tar.extractfile(member)
    assert source is not None
    path, handle = staging.new_file()
    digest, left = hashlib.sha256(), record.size
    try:
        while left:
            chunk = source.read(min(_CHUNK, left))
            if not chunk:
                raise BundleError(f"{member.name} ends before its {record.size} bytes "
                                  "(the bundle is truncated)", member=member.name)
            digest.update(chunk)
            handle.write(chunk)
            left -= len(chunk)
    except BaseException:
        handle.close()
        raise
    staging.seal(handle)
    if digest.hexdigest() != record.sha256:
        raise BundleError(f"{member.name}'s sha256 does not match the manifest's: the bundle "
                          "is damaged or was changed", member=member.name)
    return path


# -- import: plan -----------------------------------------------------------------------------


class Action(str, Enum):
    """What an import does to one session's transcript."""

    NEW = "new"
    FAST_FORWARD = "fast-forward"
    UNCHANGED = "unchanged"
    REPLACED = "replaced"


@dataclass
class SessionPlan:
    """One session id of the bundle, and where its files go."""

    session_id: str
    cwd: Path
    project: Path
    files: list[tuple[Path, Path]]
    """(staged copy, destination), the transcript last."""
    local: Path | None
    local_stamp: tuple[int, int] | None
    action: Action
    turns_added: int = 0
    """Turns the bundle adds to the local copy (not counted for a new one: a count would
    read every transcript)."""
    keep_old_as: Path | None = None


@dataclass
class NamePlan:
    """One name of the bundle, as it will be mapped here."""

    name: str
    bundle_name: str
    session: SessionPlan
    entry: dict[str, Any]
    seen_id: str | None
    """The session id the name had here when the plan was made."""


@dataclass
class ImportPlan:
    """What an import will do; nothing is written until :func:`place` and :func:`map_names`."""

    manifest: Manifest
    sessions: list[SessionPlan]
    names: list[NamePlan]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """What happened to one name."""

    name: str
    session_id: str
    action: Action
    turns_added: int
    transcript: Path

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "session_id": self.session_id, "action": self.action.value,
                "turns_added": self.turns_added, "transcript": str(self.transcript)}


def moved_path(path: str, source_workspace: str, workspace: Path) -> Path | None:
    """``path`` moved from inside the source workspace to the same place inside
    ``workspace``; None when it was not inside."""
    try:
        inside = PurePosixPath(path).relative_to(PurePosixPath(source_workspace))
    except ValueError:
        return None
    if ".." in inside.parts:
        return None
    return workspace.joinpath(*inside.parts) if inside.parts else workspace


def parse_renames(pairs: Sequence[str], manifest: Manifest | None = None) -> dict[str, str]:
    """``--as OLD=NEW`` pairs, checked (each OLD in the bundle once, NEW a valid name)."""
    renames: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not NAME_PATTERN.match(old) or not NAME_PATTERN.match(new):
            raise UsageError(f"--as {pair!r} is not OLD=NEW with two session names (letters, "
                             "digits, '.', '_', '-'), e.g. --as plan-x=plan-x-ci")
        if old in renames:
            raise UsageError(f"--as names {old!r} twice")
        renames[old] = new
    if manifest is not None:
        names = {s.name for s in manifest.sessions}
        unknown = sorted(set(renames) - names)
        if unknown:
            raise UsageError(f"--as names {', '.join(unknown)}, which the bundle does not hold "
                             f"(it holds: {', '.join(sorted(names)) or 'nothing'})")
        from collections import Counter

        counts = Counter(renames.get(n, n) for n in names)
        clash = sorted(t for t, count in counts.items() if count > 1)
        if clash:
            raise UsageError(f"two sessions of the bundle would be named {clash[0]!r}; give "
                             "each its own name with --as")
    return renames


def _tail_turns(path: Path, start: int) -> int:
    """User turns in ``path`` after byte ``start`` (taken back to the start of its line)."""
    with path.open("rb") as handle:
        if start:
            handle.seek(start - 1)
            if handle.read(1) != b"\n":
                head = start - 1
                while head > 0:  # back to the line's beginning
                    step = min(_CHUNK, head)
                    handle.seek(head - step)
                    cut = handle.read(step).rfind(b"\n")
                    if cut >= 0:
                        start = head - step + cut + 1
                        break
                    head -= step
                else:
                    start = 0
        handle.seek(start)
        return transcripts.user_turns(handle.read())


def _common_prefix(a: Path, b: Path) -> int:
    with a.open("rb") as left, b.open("rb") as right:
        common = 0
        while True:
            x, y = left.read(_CHUNK), right.read(_CHUNK)
            if not x or not y or x != y:
                for i, (p, q) in enumerate(zip(x, y, strict=False)):
                    if p != q:
                        return common + i
                return common + min(len(x), len(y))
            common += len(x)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def plan(staged: Staged, doc: MappingDoc, workspace: Path, env: Mapping[str, str] | None,
         *, force: bool = False, renames: Mapping[str, str] | None = None,
         now: str | None = None) -> ImportPlan:
    """Decide, for each session and name of the bundle, what the import does here; raise
    :class:`ImportConflictError` listing every conflict when not forced. Writes nothing."""
    manifest = staged.manifest
    renames = parse_renames([f"{k}={v}" for k, v in (renames or {}).items()], manifest)
    when = now or _utc_now()
    notes: list[str] = []
    conflicts: list[str] = []
    sessions: dict[str, SessionPlan] = {}
    names: list[NamePlan] = []
    index = transcripts.ProjectIndex(transcripts.config_dir(env) / transcripts.PROJECTS)
    for record in manifest.sessions:
        cwd = moved_path(record.cwd, manifest.workspace_dir, workspace) or workspace
        session = sessions.get(record.session_id)
        if session is None:
            session = _session_plan(record, staged, cwd, env, force, when, conflicts, index)
            sessions[record.session_id] = session
        name = renames.get(record.name, record.name)
        entry = _entry_for_here(record, manifest, workspace, session.cwd, when, notes)
        local = doc.aliases.get(name)
        local_id = local.get("session_id") if isinstance(local, dict) else None
        if local_id and local_id != record.session_id:
            if not force:
                conflicts.append(
                    f"{name}: here it names session {local_id}, the bundle's {record.name} is "
                    f"session {record.session_id}")
                continue
            entry["history"] = [*entry.get("history", []),
                                {"session_id": local_id, "replaced_at": when,
                                 "reason": "import --force"}][-HISTORY_LIMIT:]
        elif isinstance(local, dict) and local_id and session.action is Action.UNCHANGED:
            entry = dict(local)  # nothing new: the local entry stays as it is
        names.append(NamePlan(name, record.name, session, entry,
                              local_id if isinstance(local_id, str) else None))
    if conflicts:
        raise ImportConflictError(conflicts)
    return ImportPlan(manifest, list(sessions.values()), names, notes)


def _session_plan(record: SessionRecord, staged: Staged, cwd: Path,
                  env: Mapping[str, str] | None, force: bool, when: str,
                  conflicts: list[str], index: transcripts.ProjectIndex) -> SessionPlan:
    project = transcripts.project_folder(cwd, env)
    files = [(staged.files[f.path], project / f.relative) for f in record.files[1:]]
    incoming = staged.files[record.transcript.path]
    files.append((incoming, project / record.transcript.relative))
    for _, dest in files:
        current = fsio.lstat(dest)
        if current is not None:
            fsio.check_file(dest, current, "the transcript file")  # no symlink, not another's
    local = transcripts.locate(record.session_id, cwd, env, index)
    session = SessionPlan(record.session_id, cwd, project, files, local,
                          _stamp(local) if local else None, Action.NEW)
    if local is None:
        return session
    _judge(session, record.name, incoming, force, when, conflicts)
    return session


def _judge(session: SessionPlan, name: str, incoming: Path, force: bool, when: str,
           conflicts: list[str]) -> None:
    """Set the session's action from how its local transcript stands to the incoming one."""
    local = session.local
    assert local is not None
    found = transcripts.relation(local, incoming)
    if found is Relation.EQUAL:
        session.action = Action.UNCHANGED
    elif found is Relation.BEHIND:
        session.action = Action.FAST_FORWARD
        session.turns_added = _tail_turns(incoming, local.stat().st_size)
    else:
        common = _common_prefix(local, incoming)
        here, there = _tail_turns(local, common), _tail_turns(incoming, common)
        if found is Relation.AHEAD:
            what = (f"this machine has {here} turn(s) the bundle lacks (its transcript "
                    f"{local} is longer)")
        else:
            what = (f"the two copies diverged: the bundle has {there} turn(s) this machine "
                    f"lacks, and this machine {here} the bundle lacks ({local})")
        if not force:
            conflicts.append(f"{name} (session {session.session_id}): {what}")
            return
        session.action = Action.REPLACED
        session.turns_added = there
        session.keep_old_as = local.with_name(f"{local.name}.replaced-{_name_stamp(when)}")


def _entry_for_here(record: SessionRecord, manifest: Manifest, workspace: Path, cwd: Path,
                    when: str, notes: list[str]) -> dict[str, Any]:
    entry = dict(record.entry)
    entry["cwd"] = str(cwd)
    role = entry.get("role")
    if isinstance(role, str) and role:
        moved = moved_path(role, manifest.workspace_dir, workspace)
        entry["role"] = str(moved) if moved else role
        if not Path(entry["role"]).is_file():
            notes.append(f"the role file {entry['role']} of {record.name} is not on this "
                         "machine; its resumes will ask for one (--role) until it is")
    entry["imported_at"] = when
    return entry


# -- import: place and map ----------------------------------------------------------------------


def place(session: SessionPlan, staging: fsio.Staging, force: bool) -> str | None:
    """Move one session's files into place (the transcript last, so its folder's files are
    there first). Called under the session's lock; if the local transcript changed since the
    plan was made, the comparison is made again, and a conflict is returned instead."""
    if session.local is not None and fsio.lstat(session.local) is not None \
            and _stamp(session.local) != session.local_stamp:
        incoming = session.files[-1][0]
        conflicts: list[str] = []
        _judge(session, session.session_id, incoming, force, _utc_now(), conflicts)
        if conflicts:
            return conflicts[0] + " (a turn ran here while the bundle was read)"
    if session.action is Action.UNCHANGED:
        return None
    stamp = _name_stamp(_utc_now())
    for staged, dest in session.files:
        is_transcript = staged == session.files[-1][0]
        staging.place(staged, dest, "the transcript" if is_transcript else "a session file",
                      keep_old_as=session.keep_old_as if is_transcript
                      else _side_file_backup(staged, dest, stamp))
    return None


def _side_file_backup(staged: Path, dest: Path, stamp: str) -> Path | None:
    """Where to keep the local copy of a session's side file (a subagent's transcript, a tool
    result) before the bundle's replaces it: only when the local one holds bytes the bundle's
    lacks; one the bundle's extends or equals is replaced as it is."""
    current = fsio.lstat(dest, "a session file")
    if current is None or not stat.S_ISREG(current.st_mode):
        return None  # nothing to keep; anything but a file is refused by the placing
    if transcripts.relation(dest, staged) in (Relation.EQUAL, Relation.BEHIND):
        return None
    return dest.with_name(f"{dest.name}.replaced-{stamp}")


def _name_stamp(when: str) -> str:
    """An ISO time as a piece of a file name: 20261126T203000."""
    return when.replace(":", "").replace("-", "").split(".")[0].replace("+", "")


def map_names(doc: MappingDoc, names: Sequence[NamePlan], force: bool) -> list[str]:
    """Map the names in the (locked) mapping document; returns the conflicts found now that a
    name changed since the plan (each such name is left as it is)."""
    conflicts = []
    for item in names:
        local = doc.aliases.get(item.name)
        local_id = local.get("session_id") if isinstance(local, dict) else None
        if local_id not in (item.seen_id, item.session.session_id) and not force:
            conflicts.append(f"{item.name}: it was re-pointed to session {local_id} while the "
                             "import ran")
            continue
        doc.put(item.name, item.entry)
    return conflicts


def outcomes(names: Sequence[NamePlan]) -> list[Outcome]:
    return [Outcome(n.name, n.session.session_id, n.session.action, n.session.turns_added,
                    n.session.files[-1][1]) for n in names]


# -- opening and closing ------------------------------------------------------------------------


def staging_for(env: Mapping[str, str] | None) -> fsio.Staging:
    """A staging folder in the CLI's projects folder: on the destinations' file system."""
    return fsio.Staging(transcripts.config_dir(env) / transcripts.PROJECTS, STAGING_LABEL)


def open_source(source: str | Path | IO[bytes]) -> tuple[IO[bytes], str, bool]:
    """The bundle's byte stream, how to name it, and whether we opened it (and close it)."""
    if isinstance(source, (str, Path)):
        try:
            return open(source, "rb"), str(source), True
        except OSError as exc:
            raise UsageError(f"cannot read the bundle {source}: {exc.strerror}") from exc
    return source, "the bundle", False
