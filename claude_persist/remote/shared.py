"""Named sessions kept in a shared store: fetch a session's entry and files before a call,
push them after it. Used by :class:`claude_persist.sessions.Sessions` when a store is set.

A session in the store is one record of kind ``"entry"`` under its name::

    {"entry": {...the mapping entry, as the mapping file holds it...},
     "workspace_dir": "/the/workspace/it/was/pushed/from",
     "files": {"<id>.jsonl": {"sha256": "...", "size": 123},
               "<id>/subagents/agent-1.jsonl": {...}}}

and one blob per file content. File paths are relative to the CLI's project folder of the
session's cwd, as in a bundle, so a fetch places them for this machine's cwd the way ``import``
does (``bundle.moved_path``, ``transcripts.project_folder``), and compares an existing local
transcript the way import does (``transcripts.relation``: the same, behind, ahead, diverged).

A push writes the blobs first, then the entry (compare-and-swap, fenced by the lease), so a
reader that sees an entry finds every file it names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import fsio, transcripts
from ..errors import (
    LeaseLostError,
    SessionBusyError,
    SessionNotFoundError,
    StoreConflictError,
    StoreError,
    StoreRecordError,
    UsageError,
)
from ..mapping import MappingDoc
from ..store import MappingStore
from ..transcripts import Relation
from .base import Document, SharedStore
from .lease import DEFAULT_TTL, Lease, LeaseInfo, held, read_lease

#: The variable that sets a lease's time to live in seconds (how long a session stays unusable
#: after its holder's machine died); 30 unless set.
TTL_VARIABLE = "CLAUDE_PERSIST_LEASE_TTL"
STAGING_LABEL = ".claude-persist-fetch"
#: Marks a local mapping entry that came from a store, with that store's URL (a name made here
#: without a store and a store's name that differ are a conflict for ``sync``; a store's name
#: re-pointed is pulled; a name another store gave is never pushed to this one).
SHARED_MARK = "from_store"
SYNC_HINT = "run `claude-persist sync` once the store is reachable"
#: After a lost lease or compare-and-swap the store is reachable: another machine went on.
SYNC_AFTER_CONFLICT = ("run `claude-persist sync` (it pushes the turn, or says so if another "
                       "machine went on from the same turn meanwhile)")


#: The longest session name a store takes: it becomes a file name (at most 255 bytes on most
#: file systems) or a part of an object key.
NAME_LIMIT = 200


def store_name(name: str) -> str:
    """``name`` if the store can hold it; a :class:`UsageError` (exit 2) if it is too long."""
    from .base import encode_name

    length = len(encode_name(name))
    if length > NAME_LIMIT:
        raise UsageError(f"the session name {name[:40]!r}... is {length} characters long: with "
                         f"a shared store a name has at most {NAME_LIMIT} (it becomes a file "
                         "or key name in the store); choose a shorter one")
    return name


def lease_ttl(environ: Mapping[str, str] | None = None) -> float:
    value = (os.environ if environ is None else environ).get(TTL_VARIABLE, "")
    if not value:
        return DEFAULT_TTL
    try:
        ttl = float(value)
    except ValueError:
        raise UsageError(f"{TTL_VARIABLE}={value!r} is not a number of seconds") from None
    if not 0 < ttl <= 86400:
        raise UsageError(f"{TTL_VARIABLE}={value!r}: give a number of seconds above 0, at "
                         "most 86400")
    return ttl


def _digest(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


@dataclass
class Fetched:
    """What a fetch found and did."""

    document: Document | None
    """The entry record as read (None: the store has no such name); its version is what the
    push compares against."""
    session_id: str | None = None
    cwd: Path | None = None
    placed: list[str] = field(default_factory=list)
    ahead: bool = False
    """The local transcript has turns the store lacks (an earlier push failed): the next push
    carries them."""


class SharedSessions:
    """One workspace's view of a shared store."""

    def __init__(self, store: SharedStore, mapping: MappingStore, workspace: Path,
                 env: Mapping[str, str] | None, notify: Callable[[str], None]) -> None:
        self.store = store
        self.mapping = mapping
        self.workspace = workspace
        self.env = env
        self.notify = notify
        self.ttl = lease_ttl(env)

    @property
    def location(self) -> str:
        return self.store.location

    # -- leases -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, name: str, timeout: float | None, note: str) -> Iterator[Lease]:
        def waiting(info: LeaseInfo) -> None:
            limit = "until it is free" if timeout is None else f"up to {timeout:g}s"
            self.notify(f"session {name} is in use: {info.holder} holds its lease in the "
                        f"shared store {self.location}; waiting {limit}")

        store_name(name)
        with held(self.store, name, ttl=self.ttl, timeout=timeout, note=note,
                  on_wait=waiting) as lease:
            yield lease

    # -- reading ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return self.store.names("entry")

    def entry(self, name: str) -> Document | None:
        return self.store.get("entry", store_name(name))

    def stored_sid(self, document: Document | None) -> str | None:
        """The session id an entry record names (None: no record, or none named)."""
        if document is None:
            return None
        sid = (document.data.get("entry") or {}).get("session_id")
        return sid if isinstance(sid, str) else None

    # -- one name per session ---------------------------------------------------------------
    #
    # Leases and entries are per name: two names for one session would take two leases, and
    # two machines could extend the same transcript at once, each pushing under its own name.
    # So a session id has at most one name in a store. A record of kind "session" under the
    # session id names it; it is written compare-and-swap before an entry for a new session
    # id is pushed, so of two machines naming one session at once, one wins. A claim whose
    # name no longer maps the session (deleted, re-pointed by --force) and whose name's lease
    # is not held (a push under way) is stale and taken over.

    def _claims(self, other: str, sid: str) -> bool:
        """``other`` holds session ``sid`` now: its entry maps it, or its lease is held (a
        push under that name may be about to write it)."""
        import time

        if self.stored_sid(self.entry(other)) == sid:
            return True
        info = read_lease(self.store, other)
        return info is not None and info.expires_at > time.time()

    def owner(self, sid: str) -> str | None:
        """The store's name for session ``sid`` (None: it has none)."""
        claim = self.store.get("session", sid)
        other = None if claim is None else claim.data.get("name")
        if isinstance(other, str) and self.stored_sid(self.entry(other)) == sid:
            return other
        return None

    def taken(self, sid: str, name: str, other: str) -> UsageError:
        # Not a NameExistsError: --force (replace the name) would not help.
        return UsageError(
            f"session {sid} already has the name {other!r} in the shared store "
            f"{self.location}, so it cannot be named {name!r} too: a session has one name in a "
            f"store (two names would take two leases, and two machines could extend it at "
            f"once). Use {other!r} (claude-persist resume -n {other} ...), or fork it to get "
            "a copy under a new name.")

    def claim(self, sid: str, name: str) -> None:
        """Make ``name`` the store's one name for session ``sid``, or raise
        :class:`UsageError` (exit 2) naming the name it has already."""
        for _ in range(20):
            current = self.store.get("session", sid)
            other = None if current is None else current.data.get("name")
            if other == name:
                return
            if isinstance(other, str) and self._claims(other, sid):
                raise self.taken(sid, name, other)
            try:
                self.store.put("session", sid, {"name": name},
                               expect=None if current is None else current.version)
                return
            except StoreConflictError:
                continue
        raise StoreConflictError(
            f"cannot record the name of session {sid} in the shared store {self.location}: "
            "its record kept changing. Try again.", store=self.location, key=sid,
            operation="record the session's name")

    def unclaim(self, sid: str, name: str) -> None:
        """Forget that ``name`` is session ``sid``'s name (after a delete); best effort."""
        with contextlib.suppress(StoreError, StoreConflictError):
            current = self.store.get("session", sid)
            if current is not None and current.data.get("name") == name:
                self.store.delete("session", sid, expect=current.version)

    def localized(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The store's mapping entry as this workspace keeps it: its cwd and role moved from
        the workspace it was pushed from into this one, as ``import`` moves them."""
        from ..bundle import moved_path

        entry = dict(data.get("entry") or {})
        source = str(data.get("workspace_dir") or "")
        cwd = entry.get("cwd")
        moved = moved_path(cwd, source, self.workspace) if isinstance(cwd, str) and source \
            else None
        entry["cwd"] = str(moved or self.workspace)
        role = entry.get("role")
        if isinstance(role, str) and role and source:
            moved_role = moved_path(role, source, self.workspace)
            if moved_role is not None:
                entry["role"] = str(moved_role)
        return entry

    def not_found(self, name: str) -> SessionNotFoundError:
        known = ", ".join(self.names()[:20]) or "none yet"
        return SessionNotFoundError(
            f"no session named {name!r} in the shared store {self.location} (known names: "
            f"{known})", name=name)

    # -- fetch --------------------------------------------------------------------------------

    def fetch(self, name: str, lock: Callable[[str], Any]) -> Fetched:
        """Bring the session ``name`` from the store: place its files for this machine's cwd
        (only those that differ) and map the name locally. ``lock(session_id)`` gives the
        local session lock, held while files are placed. Call it holding the lease."""
        document = self.entry(name)
        if document is None:
            return Fetched(None)
        entry = self.localized(document.data)
        sid = entry.get("session_id")
        files = document.data.get("files")
        if not isinstance(sid, str) or not isinstance(files, dict):
            where = self.store.where("entry", name)
            raise StoreRecordError(f"the shared store {self.location} holds {where} without "
                                   "a session id or files: it was not written by "
                                   f"claude-persist. Delete it (delete -n {name}) and push "
                                   "again.", store=self.location,
                                   operation=f"read the entry {name!r}", reason="incomplete",
                                   key=where)
        cwd = Path(entry["cwd"])
        fetched = Fetched(document, sid, cwd)
        with lock(sid):
            self._place(name, sid, cwd, files, fetched)
        local = {**entry, SHARED_MARK: self.store.url}
        if self.mapping.read().aliases.get(name) != local:  # a write costs two fsyncs
            with self.mapping.update() as doc:
                doc.put(name, local)
        return fetched

    def _place(self, name: str, sid: str, cwd: Path, files: Mapping[str, Any],
               fetched: Fetched) -> None:
        transcript_rel = f"{sid}{transcripts.TRANSCRIPT_SUFFIX}"
        local = transcripts.locate(sid, cwd, self.env)
        project = local.parent if local is not None else transcripts.project_folder(
            cwd, self.env)
        wanted: list[tuple[str, str, Path]] = []  # (rel, digest, destination)
        for rel, meta in files.items():
            digest = meta.get("sha256") if isinstance(meta, dict) else None
            if not isinstance(rel, str) or not isinstance(digest, str) \
                    or not _safe_relative(rel, sid):
                where = self.store.where("entry", name)
                raise StoreRecordError(f"the shared store {self.location} holds {where} "
                                       f"naming the file {rel!r}, which is not a session file",
                                       store=self.location, operation=f"read the entry {name!r}",
                                       reason="bad file name", key=where)
            dest = project / rel
            current = fsio.lstat(dest, "a session file")
            if current is not None and _digest(dest)[1] == digest:
                continue
            wanted.append((rel, digest, dest))
        if not wanted:
            return
        # The transcript first: when this machine's copy has turns the store lacks (an earlier
        # push failed), nothing is placed and the push after the call sends them; the
        # transcript's own folder is placed before it, so that its files are there first.
        wanted.sort(key=lambda item: item[0] != transcript_rel)
        with fsio.Staging(transcripts.config_dir(self.env) / transcripts.PROJECTS,
                          STAGING_LABEL) as staging:
            staged: list[tuple[str, Path, Path]] = []
            for rel, digest, dest in wanted:
                path, handle = staging.new_file()
                handle.write(self.store.get_blob(digest))
                staging.seal(handle)
                if rel == transcript_rel and fsio.lstat(dest, "the transcript") is not None:
                    found = transcripts.relation(dest, path)
                    if found is Relation.AHEAD:
                        fetched.ahead = True
                        return
                    if found is Relation.DIVERGED:
                        raise self._diverged(name, sid, dest)
                staged.append((rel, path, dest))
            if staged[0][0] == transcript_rel:
                staged.append(staged.pop(0))  # the transcript goes into place last
            for rel, path, dest in staged:
                staging.place(path, dest, "the transcript" if rel == transcript_rel
                              else "a session file")
                fetched.placed.append(rel)
            staging.finish()

    def _diverged(self, name: str, sid: str, local: Path) -> StoreConflictError:
        return StoreConflictError(
            f"session {name!r} ({sid}): this machine's transcript {local} and the shared store "
            f"{self.location}'s have each turns the other lacks (a turn ran here while the "
            "store was unreachable, and another machine went on meanwhile). Keep one: move "
            "this machine's transcript aside to take the store's, or fork it.",
            store=self.location, key=name, operation="fetch the transcript")

    # -- push ---------------------------------------------------------------------------------

    def record(self, name: str, doc: MappingDoc | None = None) -> dict[str, Any] | None:
        """The store record for the local entry ``name``: its entry and its files' digests
        (None: no such local name, or no transcript here)."""
        doc = doc or self.mapping.read()
        raw = doc.aliases.get(name)
        if not isinstance(raw, dict) or not isinstance(raw.get("session_id"), str):
            return None
        entry = {k: v for k, v in raw.items() if k != SHARED_MARK}
        cwd = entry.get("cwd") or str(self.workspace)
        found = transcripts.session_files(entry["session_id"], cwd, self.env)
        if found is None:
            return None
        files = {}
        for rel, path in found.all():
            size, digest = _digest(path)
            files[rel] = {"sha256": digest, "size": size}
        return {"entry": entry, "workspace_dir": str(self.workspace), "files": files,
                "_paths": {rel: str(path) for rel, path in found.all()}}

    def push(self, name: str, lease: Lease, expect: str | None,
             known: Mapping[str, Any] | None = None, stored_sid: str | None = None) -> str:
        """Push the local session ``name``: its files' blobs (those the store's entry
        ``known`` does not name already), then its entry, compare-and-swap on ``expect``
        and fenced by ``lease``. ``stored_sid`` is the session id the store's entry maps now:
        a push of another one claims the session id for ``name`` first (see :meth:`claim`).
        Gives the entry's new version."""
        data = self.record(name)
        if data is None:
            raise SessionNotFoundError(f"session {name!r} has no transcript on this machine "
                                       "to push", name=name)
        sid = data["entry"]["session_id"]
        if sid != stored_sid:
            self.claim(sid, name)
        paths = data.pop("_paths")
        have = {meta.get("sha256") for meta in (known or {}).values()
                if isinstance(meta, dict)}
        for rel, meta in data["files"].items():
            if meta["sha256"] in have:
                continue
            with open(paths[rel], "rb") as handle:
                content = handle.read()
            if hashlib.sha256(content).hexdigest() != meta["sha256"]:
                # Appended to since it was hashed (a turn of a process that took no lease):
                # push what is there now.
                meta["sha256"], meta["size"] = hashlib.sha256(content).hexdigest(), len(content)
            self.store.put_blob(content)
        return lease.write_entry(data, expect=expect)

    def push_failed(self, name: str, error: Exception) -> StoreError | StoreConflictError:
        """The error to raise when a push after a call failed: the turn is kept here."""
        cmd = SYNC_AFTER_CONFLICT if isinstance(error, StoreConflictError) else SYNC_HINT
        text = (f"the turn finished and is kept on this machine, but pushing session {name!r} "
                f"to the shared store {self.location} failed: {error} To push it: {cmd}.")
        if isinstance(error, LeaseLostError):
            return LeaseLostError(text, store=self.location, key=name,
                                  operation="push the session")
        if isinstance(error, StoreConflictError):
            return StoreConflictError(text, store=self.location, key=name,
                                      operation="push the session")
        assert isinstance(error, StoreError)
        return StoreError(text, store=self.location, operation="push the session",
                          reason=error.reason)

    # -- sync ---------------------------------------------------------------------------------

    def sync(self, timeout: float | None, lock: Callable[[str], Any]) -> list[tuple[str, str]]:
        """Push local names the store lacks or is behind on; pull the store's names this
        machine lacks or is behind on. Gives ``(name, what was done)`` per name; a name whose
        record the store cannot read (or whose blob is missing) is ``skipped: ...``, and the
        others are still done."""
        done: list[tuple[str, str]] = []
        local = self.mapping.read()
        names = sorted(set(self.names()) | set(local.aliases))
        for name in names:
            try:
                done.append((name, self._sync_one(name, timeout, lock)))
            except (StoreConflictError, SessionNotFoundError, SessionBusyError,
                    UsageError) as exc:
                done.append((name, f"conflict: {exc}"))
            except StoreRecordError as exc:
                self.notify(f"warning: {name} skipped: {exc}")
                done.append((name, f"skipped: {exc}"))
        return done

    def _sync_one(self, name: str, timeout: float | None, lock: Callable[[str], Any]) -> str:
        with self.lease(name, timeout, "sync") as lease:
            document = self.entry(name)
            local = self.mapping.read().aliases.get(name)
            if document is None:
                if not isinstance(local, dict):
                    return "gone"
                mark = local.get(SHARED_MARK)
                if mark and mark != self.store.url:
                    origin = mark if isinstance(mark, str) else "another store"
                    return (f"left alone: this machine has it from {origin}, not from this "
                            "store")
                if mark:
                    # It came from the store, which no longer has it: deleted there (delete
                    # -n NAME on another machine). Pushing it would bring it back.
                    with self.mapping.update() as doc:
                        if doc.aliases.get(name) == local:
                            doc.remove(name)
                    return (f"deleted in the store: dropped the name here (session "
                            f"{local.get('session_id')}'s transcript stays on this machine)")
                self.push(name, lease, None)
                return "pushed (new in the store)"
            remote_sid = (document.data.get("entry") or {}).get("session_id")
            if isinstance(local, dict) and local.get("session_id") != remote_sid \
                    and not local.get(SHARED_MARK):
                raise StoreConflictError(
                        f"{name!r} names session {local.get('session_id')} here and "
                        f"{remote_sid} in the store; delete one of them (or rename it here: "
                        "export, then import --as)", store=self.location, key=name,
                        operation="sync")
            fetched = self.fetch(name, lock)
            restored = self._restore_blobs(document, fetched)
            again = f", re-uploaded {restored} missing blob(s)" if restored else ""
            if fetched.ahead:
                self.push(name, lease, document.version, document.data.get("files"),
                          self.stored_sid(document))
                return f"pushed (turns the store lacked{again})"
            if fetched.placed:
                return f"pulled ({len(fetched.placed)} files{again})"
            return f"re-uploaded {restored} missing blob(s)" if restored else "up to date"

    def _restore_blobs(self, document: Document, fetched: Fetched) -> int:
        """Upload the blobs the store's entry names but the store lacks (removed by hand or
        by a lifecycle rule), from this machine's copies of those files; gives how many."""
        files = document.data.get("files")
        if fetched.session_id is None or fetched.cwd is None or not isinstance(files, dict):
            return 0
        local = transcripts.locate(fetched.session_id, fetched.cwd, self.env)
        project = local.parent if local is not None else transcripts.project_folder(
            fetched.cwd, self.env)
        restored = 0
        for rel, meta in files.items():
            digest = meta.get("sha256") if isinstance(meta, dict) else None
            if not isinstance(digest, str) or self.store.has_blob(digest):
                continue
            try:
                content = (project / rel).read_bytes()
            except OSError:
                continue  # not here either: a fetch elsewhere names it
            if hashlib.sha256(content).hexdigest() == digest:
                self.store.put_blob(content)
                restored += 1
        return restored


def _safe_relative(rel: str, sid: str) -> bool:
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\0" in rel:
        return False
    return rel == f"{sid}{transcripts.TRANSCRIPT_SUFFIX}" or (len(parts) > 1 and
                                                               parts[0] == sid)
