"""The mapping file on disk: where it lives, its locks, safe reads and atomic writes.

The default path sits in the shared system temp folder, where anybody can guess it, so every
path is checked before use (see :mod:`fsio`): no symlinks where the folder, the file or the temp
file should be, and no folder or file owned by another user. Writes go to ``<file>.tmp.<pid>``
in the same folder, are fsynced and ``os.replace``d under a ``flock`` lock, so a reader sees the
old file or the new one, never half of one, and a writer killed at any moment loses nothing
committed. Every file operation goes through :mod:`fsio`, which turns the system's failures
into typed errors; nothing here touches a file itself.

Reboots and temp cleaners empty the temp folder (systemd-tmpfiles on Linux, the system's own
cleaning of the per-user temp folder on macOS), and the names with it, while claude still has
the transcripts. So the default mapping file, the working copy, has a durable copy under the
user's state folder (``$XDG_STATE_HOME/claude-persist/<workspace key>/``, else
``~/.local/state/claude-persist/...``), written in the same locked step (before the working
copy, so that the working copy is never the newer of the two by our doing). When the working
copy is missing, older than the durable one, or corrupt, it is restored from it, and stderr says
so. A mapping file named with ``--mapping-file`` is the user's own choice of place: no copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from . import fsio, mapping
from .errors import CorruptEntryError, MappingFileError, SessionBusyError, UnsafeFileError
from .fsio import Lock, LockTimeout

MAPPING_FILE_NAME = "claude-code-alias-mapping.json"
SHARED_FOLDER_NAME = "agent-sessions"
SHARED_FOLDER_MODE = 0o1777  # like /tmp: every user may make a folder in it, none rename another's
MAPPING_LOCK_TIMEOUT = 120.0
PROBE_MARGIN = 64 * 1024  # room for the entries a write adds, on top of the file's size


def notice(message: str) -> None:
    """Tell the user something on stderr (stdout is for answers only)."""
    print(f"claude-persist: {message}", file=sys.stderr, flush=True)


def workspace_key(workspace: Path) -> str:
    """``<sanitised basename>-<md5 of the resolved path>``, exactly as the seed computes it."""
    resolved = str(workspace.resolve())
    base = Path(resolved).name or "workspace"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "workspace"
    return f"{base}-{hashlib.md5(resolved.encode('utf-8')).hexdigest()}"


def temp_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$TMPDIR``, else ``/tmp``.

    Not ``tempfile.gettempdir()``: when TMPDIR is unusable that quietly picks another folder,
    which would be another mapping file, every name seemingly lost. The store reports an
    unusable temp folder instead."""
    value = (os.environ if environ is None else environ).get("TMPDIR", "")
    return Path(os.path.abspath(value)) if value else Path("/tmp")


def default_mapping_file(workspace: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The seed's default location: ``<temp>/agent-sessions/<workspace key>/<file>``."""
    return (temp_root(environ) / SHARED_FOLDER_NAME / workspace_key(workspace)
            / MAPPING_FILE_NAME)


def state_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/claude-persist`` (an absolute one, as the XDG spec says), else
    ``~/.local/state/claude-persist``: where state that outlives a reboot belongs."""
    env = os.environ if environ is None else environ
    value = env.get("XDG_STATE_HOME", "")
    if value and os.path.isabs(value):
        return Path(value) / "claude-persist"
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / "claude-persist"


def durable_mapping_file(workspace: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The durable copy of the default mapping file: ``<state>/<workspace key>/<file>``."""
    return state_root(environ) / workspace_key(workspace) / MAPPING_FILE_NAME


class MappingStore:
    """One mapping file: read without a lock, change under one, never lose a committed entry."""

    def __init__(
        self,
        path: Path,
        workspace_dir: Path,
        *,
        shared_root: Path | None = None,
        durable: Path | None = None,
        notify: Callable[[str], None] = notice,
    ) -> None:
        self.path = path
        self.workspace_dir = workspace_dir
        self.folder = path.parent
        self.durable = durable
        """The durable copy (None: the mapping file has none)."""
        self._shared_root = shared_root
        self._notify = notify
        self._durable_failed = False

    @classmethod
    def for_workspace(
        cls,
        workspace: Path,
        mapping_file: Path | None = None,
        notify: Callable[[str], None] = notice,
    ) -> MappingStore:
        """The store for ``workspace``: ``mapping_file`` if given, else the seed's default."""
        resolved = workspace.resolve()
        if mapping_file is not None:
            return cls(Path(os.path.abspath(mapping_file)), resolved, notify=notify)
        path = default_mapping_file(resolved)
        return cls(path, resolved, shared_root=path.parent.parent,
                   durable=durable_mapping_file(resolved), notify=notify)

    # -- folders ------------------------------------------------------------------------------

    def _folder_ready(self, create: bool) -> bool:
        """Check (and with ``create``, make) the folders down to the mapping file's; False when
        its folder does not exist (nothing to read yet).

        A folder named with the mapping file is the caller's: made 0700 if missing, else left
        with its mode. The default path's own folder is ours alone: 0700 (the seed made it
        0755), and tightened to that when we write.
        """
        what = "the mapping file's folder"
        if self._shared_root is None:
            if create:
                fsio.ensure_folder(self.folder, what, allow_root=True)
                return True
            return fsio.check_folder(self.folder, what, allow_root=True)
        if not self._shared_root_ready(create):
            return False
        if create:
            fsio.make_folder(self.folder, what)
        st = fsio.checked_folder(self.folder, what)
        if st is None:
            return False
        if create and stat.S_IMODE(st.st_mode) != fsio.FOLDER_MODE:
            fsio.set_folder_mode(self.folder, fsio.FOLDER_MODE, what)
        return True

    def _shared_root_ready(self, create: bool) -> bool:
        """``<temp>/agent-sessions``: made 1777 (sticky, like /tmp) so that every user of the
        machine can keep their folders in it, and accepted only when its owner is us or root.

        Another user's folder is refused even when sticky: its owner may rename and replace
        anything in it, our folder too."""
        root = self._shared_root
        assert root is not None
        temp = root.parent
        source = "TMPDIR" if os.environ.get("TMPDIR") else "the default temp folder"
        temp_st = fsio.stat_followed(temp, "the temp folder")
        if temp_st is None or not stat.S_ISDIR(temp_st.st_mode):
            problem = "does not exist" if temp_st is None else "is not a folder"
            raise MappingFileError(
                f"the temp folder {temp} ({source}) {problem}, so the default mapping file "
                f"{self.path} cannot be used. Create that folder, set TMPDIR to a folder that "
                "exists, or use another mapping file.", path=temp)
        what = f"the shared sessions folder (in {source})"
        if create:
            fsio.make_folder(root, what, SHARED_FOLDER_MODE)
        st = fsio.lstat(root, what)
        if st is None:
            return False
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
            raise MappingFileError(
                f"refusing the shared sessions folder {root}: it is {kind}. Remove it, set "
                "TMPDIR to a folder of your own, or use another mapping file.", path=root)
        me = os.getuid()
        if st.st_uid not in {me, 0}:
            raise MappingFileError(
                f"refusing the shared sessions folder {root}: it is owned by uid {st.st_uid}, "
                f"not by you (uid {me}) or root, and its owner could rename or replace your "
                "sessions folder inside it, sticky bit or not. Ask its owner or an "
                f"administrator to give it to root (chown root {root}; it keeps mode 1777), "
                "or set TMPDIR to a folder of your own, or use another mapping file.",
                path=root)
        try:
            fsio.check_not_open_to_others(root, st, "the shared sessions folder")
        except UnsafeFileError as exc:
            raise MappingFileError(str(exc), path=root) from None
        return True

    # -- reading ------------------------------------------------------------------------------

    def _read_text(self) -> str | None:
        return fsio.read_text(self.path, "the mapping file")

    def read(self) -> mapping.MappingDoc:
        """The current document, without taking the lock (writes are atomic).

        A corrupt file is only moved aside under the lock, after a second look, so a reader
        can never quarantine a file that a writer is replacing.
        """
        if self._behind_durable():
            with self.update() as doc:  # restores it, under the lock
                return doc
        if not self._folder_ready(create=False):
            return self._parse(None)
        text = self._read_text()
        try:
            return self._parse(text)
        except mapping.CorruptMappingError:
            with self.update() as doc:
                return doc

    def may_hold(self, name: str) -> bool:
        """False only when the file surely has no entry ``name``: a text search, 1 ms where a
        parse of 10,000 sessions takes 20. (The entry is checked again under the lock.)"""
        if self._behind_durable():
            return True  # the durable copy may hold it: the reader restores and looks
        if not self._folder_ready(create=False):
            return False
        text = self._read_text()
        return text is not None and re.search(f'"{re.escape(name)}"\\s*:', text) is not None

    def _parse(self, text: str | None, for_writing: bool = False) -> mapping.MappingDoc:
        doc = (mapping.parse(text, for_writing=for_writing) if text is not None
               else mapping.MappingDoc())
        if not doc.workspace_dir:
            doc.workspace_dir = str(self.workspace_dir)
        doc.source = str(self.path)
        return doc

    # -- locking and writing ------------------------------------------------------------------

    @property
    def _lock_path(self) -> Path:
        return self.folder / (self.path.name + ".lock")

    def _mapping_lock(self, timeout: float) -> Lock:
        lock = Lock(self._lock_path, "the mapping file's lock")
        try:
            return lock.acquire(timeout=timeout)
        except LockTimeout as exc:
            raise MappingFileError(
                f"the mapping file {self.path} stayed locked for {timeout:g}s; is another "
                f"claude-persist stuck? Its lock file is {lock.path}.", path=self.path
            ) from exc

    def check_writable(self) -> None:
        """Fail now, before a claude call is spent, if its new name could not be saved: the
        folders exist or can be made, the folder takes a file the size of the mapping file
        (not full, not read-only, not immutable, ours to write), and the lock file opens."""
        self._folder_ready(create=True)
        current = fsio.lstat(self.path, "the mapping file")
        if current is not None:
            fsio.check_file(self.path, current, "the mapping file")
            fsio.probe_replace(self.path, "the mapping file")
        size = (current.st_size if current is not None else 0) + PROBE_MARGIN
        fsio.probe_write(self.folder, self.path.name, size, "the mapping file")
        Lock(self._lock_path, "the mapping file's lock").probe()

    @contextlib.contextmanager
    def update(self, timeout: float = MAPPING_LOCK_TIMEOUT, *,
               created: tuple[str, str] | None = None) -> Iterator[mapping.MappingDoc]:
        """Lock, read, hand out the document to change, and write it back if it changed.

        ``created`` is ``(name, session id)`` of a session claude has just made: a file error
        then carries it (``unmapped``), so that the caller can say how to adopt it.
        """
        try:
            with self._locked_doc(timeout) as doc:
                yield doc
        except UnsafeFileError as exc:
            if created is not None:
                exc.unmapped_name, exc.unmapped = created
            raise

    @contextlib.contextmanager
    def _locked_doc(self, timeout: float) -> Iterator[mapping.MappingDoc]:
        self._folder_ready(create=True)
        lock = self._mapping_lock(timeout)
        try:
            text = self._read_text()
            if self._behind_durable():
                text = self._restore(text, "missing" if text is None else "older")
            try:
                doc = self._parse(text, for_writing=True)
            except mapping.CorruptMappingError as exc:
                self._quarantine(str(exc))
                text = self._restore(None, "corrupt")
                doc = self._parse(text, for_writing=True) if text is not None \
                    else self._parse(None)
            yield doc
            after = mapping.dump(doc)
            if after != text:  # unchanged documents are not rewritten (ours dump the same)
                self._write(after)
            elif after.strip() and self.durable is not None \
                    and self._durable_stat() is None:
                self._write_durable(after)  # a copy made the first time one is missing
        finally:
            lock.release()

    # -- the durable copy ---------------------------------------------------------------------

    def _durable_stat(self) -> os.stat_result | None:
        if self.durable is None:
            return None
        try:
            return fsio.lstat(self.durable, "the durable copy of the mapping file")
        except UnsafeFileError:
            return None  # unusable: the working copy stands alone (said when writing)

    def _behind_durable(self) -> bool:
        """True when the working copy is missing, or older than the durable copy (which is
        given the working copy's time when written, so it is never the newer by our doing)."""
        durable = self._durable_stat()
        if durable is None:
            return False
        try:
            current = fsio.lstat(self.path, "the mapping file")
        except UnsafeFileError:
            return False  # the read reports it
        return current is None or current.st_mtime_ns < durable.st_mtime_ns

    def _restore(self, text: str | None, why: str) -> str | None:
        """Under the lock: put the durable copy back as the working copy; its text, or
        ``text`` when there is no usable durable copy."""
        assert self.durable is not None or why == "corrupt"
        if self.durable is None:
            return text
        try:
            saved = fsio.read_text(self.durable, "the durable copy of the mapping file")
            if saved is None:
                return text
            mapping.parse(saved)
        except (UnsafeFileError, mapping.CorruptMappingError) as exc:
            self._notify(f"warning: the durable copy {self.durable} of the mapping file is "
                         f"unusable ({exc}); keeping {self.path} as it is")
            return text
        self._write_working(saved)
        was = {"missing": "was missing (the temp folder was emptied?)",
               "older": "was older than its durable copy",
               "corrupt": "was corrupt"}[why]
        self._notify(f"the mapping file {self.path} {was}; restored it from {self.durable}")
        return saved

    def _quarantine(self, why: str) -> None:
        bad = self.path.with_name(f"{self.path.name}.bad.{os.getpid()}")
        fsio.rename(self.path, bad, "the corrupt mapping file")
        self._notify(f"warning: the mapping file {self.path} was corrupt ({why}); "
                     f"moved it aside to {bad} and started a new one.")

    def _write(self, text: str) -> None:
        self._write_working(text)
        self._write_durable(text)

    def _write_working(self, text: str) -> None:
        fsio.remove_stale_temps(self.path)
        fsio.atomic_write(self.path, text, "the mapping file")

    def _write_durable(self, text: str) -> None:
        """The durable copy; a failure (a read-only home, say) is a warning, once: the names
        then live in the temp folder only, as they always did."""
        if self.durable is None:
            return
        what = "the durable copy of the mapping file"
        try:
            fsio.write_in_folder(self.durable, text, what)
            working = fsio.lstat(self.path, "the mapping file")
            if working is not None:  # the same time: neither is older than the other
                fsio.set_mtime(self.durable, working.st_mtime_ns, what)
        except UnsafeFileError as exc:
            if not self._durable_failed:
                self._durable_failed = True
                self._notify(f"warning: {exc}; the names are kept in {self.path} only, which "
                             "a reboot or a temp cleaner may empty")

    def remove_file(self) -> bool:
        """Delete the mapping file (``delete --all``) and its durable copy, under the lock.
        True if either existed."""
        durable = self._durable_stat()
        if durable is not None and self.durable is not None:
            self._folder_ready(create=True)
        if not self._folder_ready(create=False):
            return False
        lock = self._mapping_lock(MAPPING_LOCK_TIMEOUT)
        try:
            found = False
            if durable is not None and self.durable is not None:
                fsio.check_file(self.durable, durable, "the durable copy of the mapping file")
                fsio.remove(self.durable, "the durable copy of the mapping file")
                found = True
            current = fsio.lstat(self.path, "the mapping file")
            if current is None:
                return found
            fsio.check_file(self.path, current, "the mapping file")
            fsio.remove(self.path, "the mapping file")
            return True
        finally:
            lock.release()

    @contextlib.contextmanager
    def session_lock(
        self, session_id: str, label: str, timeout: float | None = None
    ) -> Iterator[fsio.Lock]:
        """Hold the session's own lock while claude runs, so two turns never interleave.

        Waits (saying so on stderr) up to ``timeout`` seconds, forever when None, then raises
        :class:`SessionBusyError`. The id names the lock file, so it must be a UUID.
        """
        if not isinstance(session_id, str) or mapping.UUID_PATTERN.fullmatch(session_id) is None:
            raise CorruptEntryError(
                f"refusing to lock session {label}: its id {session_id!r} is not a UUID (is "
                f"its entry in {self.path} corrupt?)", path=self.path, name=label)
        self._folder_ready(create=True)
        locks = fsio.ensure_folder(self.folder / "locks", "the session locks folder")
        lock = Lock(locks / f"{session_id}.lock", "the session's lock file")
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            limit = "until it is free" if timeout is None else f"up to {timeout:g}s"
            self._notify(f"session {label} is in use by another process; waiting {limit} "
                         f"(lock {lock.path})")
            try:
                lock.acquire(timeout=timeout)
            except LockTimeout as exc:
                raise SessionBusyError(
                    f"session {label} is busy: another process is still running a turn on it "
                    f"(waited {timeout:g}s for {lock.path})"  # the faces add what to do
                ) from exc
        try:
            yield lock
        finally:
            lock.release()
