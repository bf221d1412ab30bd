"""A shared store in a folder (``dir:/mnt/shared/sessions``): a network disk, a Docker volume,
a CI cache folder.

Layout::

    <folder>/entry/<name>/000000000007.json    the record's versions, each written once
    <folder>/lease/<name>/000000000042.json
    <folder>/session/<session id>/000000000001.json   the session's one name
    <folder>/blobs/<ab>/<abcdef...>            content-addressed files

How the compare-and-swap works, and why it holds between machines: a record is a folder of
numbered, immutable versions, and the current record is the highest number. Every write,
whatever its kind (create, replace, delete as a tombstone), publishes version N+1 where N is the
version it read, by writing a temp file, fsyncing it and hard-linking it to its final name.
``link`` fails when the name exists, atomically, on local disks and on NFS (v2 and later) alike,
so of two writers that read version N, exactly one publishes N+1 and the other gets a conflict.
No lock is taken, so a writer that dies at any moment blocks nobody, and a reader never sees a
half-written version (it appears whole, by its link). On NFS a retried ``link`` may report a
failure though it succeeded: the temp file's link count (2 after a link) is what decides.

What it needs from the file system, and assumes:

* hard links (local file systems, NFS, SMB with Unix extensions); a file system without them
  (some FUSE mounts) is refused with a clear error;
* old versions are pruned once their successor is older than :data:`PRUNE_AGE`: a writer
  whose view of the folder is staler than that (NFS caches listings for a minute by default)
  could otherwise publish a number that was pruned. Reads walk past a stale listing by trying
  the next numbers by name.
* everyone who uses the store may read and write the whole folder: files and folders are made
  with the process's umask (a group-shared folder wants ``umask 002`` and a setgid group). Any
  such user can change any session; the store is as trusted as the folder's permissions.

The store folder itself must exist: a missing one (an unmounted disk, a typo) is an error, never
a new empty store on the local disk.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreRecordError
from .base import (
    RECORD_LIMIT,
    Document,
    Kind,
    SharedStore,
    check_digest,
    decode_name,
    digest_of,
    encode_name,
    envelope,
    new_token,
    open_envelope,
    what,
)

#: Versions whose successor is older than this are removed (see the module's docstring).
PRUNE_AGE = 15 * 60.0
#: A record folder is pruned when it holds more versions than this.
PRUNE_FROM = 16
_VERSION = re.compile(r"^(\d{12})\.json$")
_HINTS: dict[int, str] = {
    errno.EACCES: "permission denied: every user of the store needs to read and write the "
                  "whole folder; check its permissions (and the group of its files)",
    errno.EPERM: "operation not permitted: check the folder's permissions, or whether it is "
                 "immutable (lsattr)",
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.EROFS: "the file system is read-only: mount it writable",
    errno.ENOENT: "it does not exist: create it (mkdir -p), or mount the disk that holds it",
    errno.ENOTDIR: "it is not a folder",
    errno.ESTALE: "the network file system lost the file handle: try again",
    errno.EIO: "the disk or the network file system reported an input/output error",
}
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
             errno.ENOSYS}


class DirStore(SharedStore):
    """The folder backend; see the module's docstring for its guarantees."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = root
        self.url = url or f"dir:{root}"
        self.location = f"folder {root}"
        self._host = socket.gethostname().replace("/", "_")

    # -- errors ----------------------------------------------------------------------------

    def _error(self, exc: OSError, operation: str, path: Path | None = None) -> StoreError:
        reason = exc.strerror or str(exc)
        hint = _HINTS.get(exc.errno or 0, "")
        where = f" ({path})" if path is not None and path != self.root else ""
        return StoreError(
            f"cannot {operation} in the shared store folder {self.root}{where}: {reason}"
            + (f"; {hint}." if hint else "."),
            store=self.location, operation=operation, reason=reason)

    def _check_root(self, operation: str) -> None:
        try:
            st = os.stat(self.root)
        except OSError as exc:
            raise self._error(exc, operation) from None
        if not stat.S_ISDIR(st.st_mode):
            raise self._error(OSError(errno.ENOTDIR, "Not a directory"), operation)

    # -- paths -----------------------------------------------------------------------------

    def _folder(self, kind: Kind, name: str) -> Path:
        return self.root / kind / encode_name(name)

    @staticmethod
    def _file(folder: Path, number: int) -> Path:
        return folder / f"{number:012d}.json"

    @staticmethod
    def _token(number: int, raw: bytes) -> str:
        return f"{number}.{digest_of(raw)[:16]}"

    # -- reading ---------------------------------------------------------------------------

    def _read(self, path: Path, operation: str) -> bytes | None:
        try:
            with open(path, "rb") as handle:
                raw = handle.read(RECORD_LIMIT + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc, operation, path) from None
        if len(raw) > RECORD_LIMIT:
            raise StoreRecordError(f"the shared store folder {self.root} holds a record over "
                                   f"{RECORD_LIMIT} bytes: {path}. Remove it.",
                                   store=self.location, operation=operation, reason="too big",
                                   key=str(path))
        return raw

    def _numbers(self, folder: Path, operation: str) -> list[int] | None:
        """The version numbers in ``folder``, sorted; None when the folder is missing."""
        try:
            with os.scandir(folder) as it:
                found = [int(m.group(1)) for e in it if (m := _VERSION.match(e.name))]
        except FileNotFoundError:
            self._check_root(operation)
            return None
        except OSError as exc:
            raise self._error(exc, operation, folder) from None
        return sorted(found)

    def _latest(self, kind: Kind, name: str, operation: str) -> tuple[int, bytes] | None:
        """The highest version of the record and its bytes; None when it has none."""
        folder = self._folder(kind, name)
        for _ in range(100):
            numbers = self._numbers(folder, operation)
            if not numbers:
                return None
            number = numbers[-1]
            raw = self._read(self._file(folder, number), operation)
            if raw is None:
                continue  # pruned since the listing: list again
            # A listing may be stale (NFS caches it): a newer version found by name wins.
            while (newer := self._read(self._file(folder, number + 1), operation)) is not None:
                number, raw = number + 1, newer
            return number, raw
        raise StoreError(f"cannot {operation} in the shared store folder {self.root}: its "
                         "versions kept vanishing while being read. Try again.",
                         store=self.location, operation=operation, reason="unstable listing")

    def where(self, kind: Kind, name: str) -> str:
        return f"{what(kind, name)} ({self._folder(kind, name)})"

    def _open(self, kind: Kind, name: str, number: int, raw: bytes
              ) -> tuple[dict[str, Any] | None, str]:
        return open_envelope(raw, what(kind, name), self.location,
                             str(self._file(self._folder(kind, name), number)))

    def get(self, kind: Kind, name: str) -> Document | None:
        operation = f"read {what(kind, name)}"
        latest = self._latest(kind, name, operation)
        if latest is None:
            return None
        number, raw = latest
        data, write = self._open(kind, name, number, raw)
        if data is None:
            return None
        return Document(data, self._token(number, raw), write)

    def version(self, kind: Kind, name: str) -> str | None:
        latest = self._latest(kind, name, f"read {what(kind, name)}")
        if latest is None or self._live(kind, name, *latest) is False:
            return None
        return self._token(*latest)

    def _live(self, kind: Kind, name: str, number: int, raw: bytes) -> bool | None:
        """True: a record; False: a tombstone; None: unreadable (counts as a record)."""
        try:
            return self._open(kind, name, number, raw)[0] is not None
        except StoreRecordError:
            return None

    def names(self, kind: Kind) -> list[str]:
        operation = f"list the {kind} records"
        try:
            with os.scandir(self.root / kind) as it:
                folders = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            self._check_root(operation)
            return []
        except OSError as exc:
            raise self._error(exc, operation, self.root / kind) from None
        found = []
        for folder in folders:
            name = decode_name(folder)
            latest = self._latest(kind, name, operation)
            if latest is not None and self._live(kind, name, *latest) is not False:
                found.append(name)
        return sorted(found)

    # -- writing ---------------------------------------------------------------------------

    def put(self, kind: Kind, name: str, data: dict[str, Any], *,
            expect: str | None) -> str:
        return self._write(kind, name, data, expect)

    def delete(self, kind: Kind, name: str, *, expect: str) -> None:
        self._write(kind, name, None, expect)

    def _write(self, kind: Kind, name: str, data: dict[str, Any] | None,
               expect: str | None) -> str:
        verb = "create" if expect is None else "delete" if data is None else "replace"
        operation = f"{verb} {what(kind, name)}"
        latest = self._latest(kind, name, operation)
        live = latest is not None and self._live(kind, name, *latest) is not False
        if expect is None:
            if live:
                raise self.conflict(kind, name, verb, "it exists already")
        elif not live or latest is None:
            raise self.conflict(kind, name, verb, "it does not exist (any more)")
        elif self._token(*latest) != expect:
            raise self.conflict(kind, name, verb, "another writer changed it since it was read")
        number = (latest[0] if latest is not None else 0) + 1
        raw = envelope(data, new_token())
        folder = self._folder(kind, name)
        self._make_folders(folder, operation)
        if not self._publish(folder, self._file(folder, number), raw, operation):
            raise self.conflict(kind, name, verb, "another writer changed it at the same time")
        if number > PRUNE_FROM and number % PRUNE_FROM == 0:
            self._prune(folder)
        return self._token(number, raw)

    def _make_folders(self, folder: Path, operation: str) -> None:
        """The record's folder and its kind's folder, but never the store's own folder."""
        for path in (folder.parent, folder):
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            except FileNotFoundError:
                self._check_root(operation)
                raise self._error(OSError(errno.ENOENT, "No such file or directory"),
                                  operation, path) from None
            except OSError as exc:
                raise self._error(exc, operation, path) from None

    def _publish(self, folder: Path, target: Path, raw: bytes, operation: str) -> bool:
        """Make ``target`` hold ``raw`` unless it exists: True when we made it."""
        temp = folder / f".tmp.{self._host}.{os.getpid()}.{new_token()[:12]}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise self._error(exc, operation, folder) from None
        failure: OSError | None = None
        try:
            try:
                os.link(temp, target)
            except FileExistsError:
                pass
            except OSError as exc:
                failure = exc
            made = os.stat(temp).st_nlink >= 2
        except OSError as exc:
            raise self._error(exc, operation, target) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)
        if failure is not None and not made:
            if failure.errno in _NO_LINKS:
                raise StoreError(
                    f"cannot {operation} in the shared store folder {self.root}: its file "
                    f"system does not support hard links ({failure.strerror}), which the "
                    "folder store needs for its atomic writes. Use a folder on a local disk, "
                    "NFS or SMB, or an s3:// store.",
                    store=self.location, operation=operation,
                    reason=failure.strerror or str(failure))
            raise self._error(failure, operation, target)
        if made:
            with contextlib.suppress(OSError):
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return made

    def _prune(self, folder: Path) -> None:
        """Best effort: drop versions whose successor is older than PRUNE_AGE, and temp files
        of writers that died that long ago."""
        limit = time.time() - PRUNE_AGE
        with contextlib.suppress(OSError):
            numbers = self._numbers(folder, "prune") or []
            for older, newer in itertools.pairwise(numbers[:-1]):
                if os.stat(self._file(folder, newer)).st_mtime < limit:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._file(folder, older))
            with os.scandir(folder) as it:
                temps = [e.path for e in it if e.name.startswith(".tmp.")]
            for temp in temps:
                with contextlib.suppress(OSError):
                    if os.stat(temp).st_mtime < limit:
                        os.unlink(temp)

    def self_check(self) -> list[str]:
        operation = "check the store"
        folder = self.root / "probe"
        self._make_folders(folder, operation)
        target = folder / f"{self._host}.{os.getpid()}.{new_token()[:12]}"
        try:
            first = self._publish(folder, target, b"1", operation)
            second = self._publish(folder, target, b"2", operation)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(target)
        if not first or second:
            raise StoreError(f"the shared store folder {self.root} does not give atomic "
                             "create-only writes (a hard link made over an existing name "
                             "succeeded): its file system cannot hold a store.",
                             store=self.location, operation=operation, reason="link")
        return []

    # -- blobs -----------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "blobs" / digest[:2] / digest

    def put_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        path = self._blob_path(digest)
        operation = f"write the blob {digest[:12]}"
        if os.path.exists(path):
            return digest
        self._make_folders(path.parent, operation)
        self._publish(path.parent, path, data, operation)  # there already: the same bytes
        return digest

    def get_blob(self, digest: str) -> bytes:
        path = self._blob_path(digest)
        operation = f"read the blob {digest[:12]}"
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            self._check_root(operation)
            raise StoreRecordError(
                f"the shared store folder {self.root} has no blob {digest} ({path}), which an "
                "entry names: it was removed by hand. Run `claude-persist sync` on a machine "
                "that has the session: it uploads the missing blobs.",
                store=self.location, operation=operation, reason="missing",
                key=str(path)) from None
        except OSError as exc:
            raise self._error(exc, operation, path) from None
        if digest_of(data) != digest:
            raise StoreRecordError(f"the blob {path} in the shared store is damaged: its "
                                   "content does not match its sha256. Remove it, then run "
                                   "`claude-persist sync` on a machine that has the session.",
                                   store=self.location, operation=operation, reason="damaged",
                                   key=str(path))
        return data

    def has_blob(self, digest: str) -> bool:
        path = self._blob_path(digest)
        try:
            os.stat(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error(exc, f"look up the blob {digest[:12]}", path) from None
        return True
