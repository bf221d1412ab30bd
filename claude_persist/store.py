"""The mapping file on disk: where it lives, its locks, safe reads and atomic writes.

The default path sits in the shared system temp folder, where anybody can guess it, so every
path is checked before use: no symlinks where the folder, the file or the temp file should be,
and no folder or file owned by another user. Writes go to ``<file>.tmp.<pid>`` in the same
folder, are fsynced and ``os.replace``d under a ``flock`` lock, so a reader sees the old file
or the new one, never half of one, and a writer killed at any moment loses nothing committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import fsio, mapping
from .errors import MappingFileError, SessionBusyError, UnsafeFileError
from .fsio import Lock, LockTimeout

MAPPING_FILE_NAME = "claude-code-alias-mapping.json"
MAPPING_LOCK_TIMEOUT = 120.0


def notice(message: str) -> None:
    """Tell the user something on stderr (stdout is for answers only)."""
    print(f"claude-persist: {message}", file=sys.stderr, flush=True)


def workspace_key(workspace: Path) -> str:
    """``<sanitised basename>-<md5 of the resolved path>``, exactly as the seed computes it."""
    resolved = str(workspace.resolve())
    base = Path(resolved).name or "workspace"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "workspace"
    return f"{base}-{hashlib.md5(resolved.encode('utf-8')).hexdigest()}"


def default_mapping_file(workspace: Path) -> Path:
    """The seed's default location under the system temp folder."""
    root = Path(tempfile.gettempdir()) / "agent-sessions"
    return root / workspace_key(workspace) / MAPPING_FILE_NAME


class MappingStore:
    """One mapping file: read without a lock, change under one, never lose a committed entry."""

    def __init__(
        self,
        path: Path,
        workspace_dir: Path,
        *,
        shared_root: Path | None = None,
        notify: Callable[[str], None] = notice,
    ) -> None:
        self.path = path
        self.workspace_dir = workspace_dir
        self.folder = path.parent
        self._shared_root = shared_root
        self._notify = notify

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
        return cls(path, resolved, shared_root=path.parent.parent, notify=notify)

    # -- checks -------------------------------------------------------------------------------

    def _check_folder(self, create: bool) -> bool:
        """Check (and with ``create``, make) the folder; False when it does not exist."""
        if self._shared_root is not None:
            self._check_shared_root(create)
        try:
            if create:
                fsio.ensure_folder(self.folder, "the mapping folder")
                return True
            return fsio.check_folder(self.folder, "the mapping folder")
        except UnsafeFileError as exc:
            raise MappingFileError(str(exc),
                                   path=exc.path) from exc

    def _check_shared_root(self, create: bool) -> None:
        root = self._shared_root
        assert root is not None
        st = fsio.lstat(root)
        if st is None:
            if create:
                root.mkdir(mode=0o700, parents=True, exist_ok=True)
            return
        if stat.S_ISLNK(st.st_mode):
            raise MappingFileError(
                f"refusing {root}: it is a symlink in the shared temp folder. "
                "Remove it, or pass --mapping-file to use another path.", path=root
            )
        # Another user's folder is only safe if its sticky bit stops them renaming ours.
        if st.st_uid != os.getuid() and not st.st_mode & stat.S_ISVTX:
            raise MappingFileError(
                f"refusing the shared sessions folder {root}: it is owned by uid {st.st_uid}, "
                f"not by you (uid {os.getuid()}), and has no sticky bit. Remove it, or pass "
                "--mapping-file to use another path.", path=root)

    def _tighten_folder(self) -> None:
        """The default path's own folder (the seed's, which made it 0755) becomes 0700; a folder
        named by --mapping-file is the user's and keeps its mode."""
        if self._shared_root is None:
            return
        mode = stat.S_IMODE(self.folder.lstat().st_mode)
        if mode != 0o700:
            os.chmod(self.folder, 0o700)

    # -- reading ------------------------------------------------------------------------------

    def _read_text(self) -> str | None:
        return fsio.read_text(self.path, "the mapping file")

    def read(self) -> mapping.MappingDoc:
        """The current document, without taking the lock (writes are atomic).

        A corrupt file is only moved aside under the lock, after a second look, so a reader
        can never quarantine a file that a writer is replacing.
        """
        if not self._check_folder(create=False):
            return mapping.MappingDoc(workspace_dir=str(self.workspace_dir))
        text = self._read_text()
        try:
            return self._parse(text)
        except mapping.CorruptMappingError:
            with self.update() as doc:
                return doc

    def may_hold(self, name: str) -> bool:
        """False only when the file surely has no entry ``name``: a text search, 1 ms where a
        parse of 10,000 sessions takes 20. (The entry is checked again under the lock.)"""
        if not self._check_folder(create=False):
            return False
        text = self._read_text()
        return text is not None and re.search(f'"{re.escape(name)}"\\s*:', text) is not None

    def _parse(self, text: str | None, for_writing: bool = False) -> mapping.MappingDoc:
        doc = (mapping.parse(text, for_writing=for_writing) if text is not None
               else mapping.MappingDoc())
        if not doc.workspace_dir:
            doc.workspace_dir = str(self.workspace_dir)
        return doc

    # -- locking and writing ------------------------------------------------------------------

    def _lock(self, path: Path) -> Lock:
        return Lock(path)

    @contextlib.contextmanager
    def update(self, timeout: float = MAPPING_LOCK_TIMEOUT) -> Iterator[mapping.MappingDoc]:
        """Lock, read, hand out the document to change, and write it back if it changed."""
        self._check_folder(create=True)
        self._tighten_folder()
        lock = self._lock(self.folder / (self.path.name + ".lock"))
        try:
            lock.acquire(timeout=timeout)
        except LockTimeout as exc:
            raise MappingFileError(
                f"the mapping file {self.path} stayed locked for {timeout:g}s; is another "
                f"claude-persist stuck? Its lock file is {lock.path}."
            ) from exc
        try:
            text = self._read_text()
            try:
                doc = self._parse(text, for_writing=True)
            except mapping.CorruptMappingError as exc:
                self._quarantine(str(exc))
                doc = self._parse(None)
                text = None
            yield doc
            after = mapping.dump(doc)
            if after != text:  # unchanged documents are not rewritten (ours dump the same)
                self._write(after)
        finally:
            lock.release()

    def _quarantine(self, why: str) -> None:
        bad = self.path.with_name(f"{self.path.name}.bad.{os.getpid()}")
        os.replace(self.path, bad)
        self._notify(f"warning: the mapping file {self.path} was corrupt ({why}); "
                     f"moved it aside to {bad} and started a new one.")

    def _write(self, text: str) -> None:
        fsio.remove_stale_temps(self.path)
        fsio.atomic_write(self.path, text, "the mapping file")

    def remove_file(self) -> bool:
        """Delete the mapping file (``delete --all``), under the lock. True if it existed."""
        if not self._check_folder(create=False):
            return False
        lock = self._lock(self.folder / (self.path.name + ".lock"))
        with lock.acquire(timeout=MAPPING_LOCK_TIMEOUT):
            current = fsio.lstat(self.path)
            if current is None:
                return False
            fsio.check_file(self.path, current, "the mapping file")
            self.path.unlink()
            return True

    @contextlib.contextmanager
    def session_lock(
        self, session_id: str, label: str, timeout: float | None = None
    ) -> Iterator[None]:
        """Hold the session's own lock while claude runs, so two turns never interleave.

        Waits (saying so on stderr) up to ``timeout`` seconds, forever when None, then raises
        :class:`SessionBusyError`.
        """
        self._check_folder(create=True)
        self._tighten_folder()
        locks = fsio.ensure_folder(self.folder / "locks", "the session locks folder")
        lock = self._lock(locks / f"{session_id}.lock")
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
                    f"(waited {timeout:g}s for {lock.path})"
                ) from exc
        try:
            yield
        finally:
            lock.release()
