"""The only way claude-persist touches files it owns: safe folders, safe reads, atomic writes,
and locks.

Our files may sit in the shared system temp folder, where anybody can guess a path, so every
path is checked before use: no symlink followed where a folder or file of ours should be, no
folder or file owned by another user, and only regular files read. Writes go to a temp file in
the same folder, are fsynced and renamed into place, and the folder is fsynced, so a reader sees
the old file or the new one and a writer killed at any moment loses nothing committed.

Every failure of the operating system here (a full disk, a read-only or immutable folder, an
I/O error) leaves as a :class:`~claude_persist.errors.FileSystemError` naming the file, what we
were doing and the system's reason: callers never see a bare ``OSError``.

Locks are ``filelock``'s (an ``flock`` on Unix: the kernel drops it when its holder dies, even
by ``kill -9``); ``filelock`` is imported only by the code paths that take a lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .errors import (
    DiskFullError,
    FilePermissionError,
    FileSystemError,
    ReadOnlyFileSystemError,
    UnsafeFileError,
)

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from filelock import BaseFileLock

FOLDER_MODE = 0o700
FILE_MODE = 0o600

_KINDS: dict[int, type[FileSystemError]] = {
    errno.ENOSPC: DiskFullError,
    errno.EDQUOT: DiskFullError,
    errno.EROFS: ReadOnlyFileSystemError,
    errno.EACCES: FilePermissionError,
    errno.EPERM: FilePermissionError,
}
_HINTS: dict[int, str] = {
    errno.ENOSPC: "the disk is full: free some space and try again",
    errno.EDQUOT: "your disk quota is used up: free some space and try again",
    errno.EROFS: "the file system is read-only: remount it writable, or use a path on a "
                 "writable disk",
    errno.EACCES: "you may not write there: check the permissions of the folder, or use "
                  "another path",
    errno.EPERM: "the folder or file may be immutable (lsattr shows an 'i'): check it, or use "
                 "another path",
    errno.EIO: "the disk reported an input/output error: check the disk",
}


def os_error(exc: OSError, operation: str, what: str, path: Path | str) -> FileSystemError:
    """The typed error for ``exc``, raised while doing ``operation`` ("write", "lock", ...) to
    ``what`` ("the mapping file") at ``path``: it names all three and the system's reason."""
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0)
    kind = _KINDS.get(exc.errno or 0, FileSystemError)
    message = f"cannot {operation} {what} {path}: {reason}" + (f"; {hint}" if hint else "")
    return kind(message, path=path, operation=operation, reason=reason, errno=exc.errno)


@contextlib.contextmanager
def translated(operation: str, what: str, path: Path | str) -> Iterator[None]:
    """Turn any ``OSError`` raised inside the block into :func:`os_error`'s typed error."""
    try:
        yield
    except FileSystemError:
        raise
    except OSError as exc:
        raise os_error(exc, operation, what, path) from exc


class LockTimeout(TimeoutError):
    """A lock stayed held by someone else for the whole wait."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def lstat(path: Path, what: str = "the file", *, follow: bool = False
          ) -> os.stat_result | None:
    """``path.lstat()`` (``path.stat()`` with ``follow``), or None when nothing is there."""
    try:
        return path.stat() if follow else path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise os_error(exc, "look up", what, path) from exc


def stat_followed(path: Path, what: str = "the folder") -> os.stat_result | None:
    """``path.stat()`` (a symlink followed: for folders that are not ours, like the temp
    folder), or None when nothing is there."""
    return lstat(path, what, follow=True)


def _refuse(path: Path, what: str, why: str, fix: str = "Remove it, or use another path.",
            ) -> UnsafeFileError:
    return UnsafeFileError(f"refusing {what} {path}: {why}. {fix}", path=path)


def _check_owner(path: Path, st: os.stat_result, what: str, allow_root: bool = False) -> None:
    if st.st_uid == os.getuid() or (allow_root and st.st_uid == 0):
        return
    raise _refuse(path, what, f"it is owned by uid {st.st_uid}, not by you (uid {os.getuid()})")


def check_folder(path: Path, what: str = "the folder", *, allow_root: bool = False) -> bool:
    """True when ``path`` is a real folder of ours; False when nothing is there.

    ``allow_root`` also accepts a folder of root's (``/tmp`` as the folder of a mapping file)
    unless others may write to it without its sticky bit (then they could rename our files).
    """
    return checked_folder(path, what, allow_root=allow_root) is not None


def checked_folder(path: Path, what: str = "the folder", *, allow_root: bool = False
                   ) -> os.stat_result | None:
    """:func:`check_folder`, giving the folder's ``lstat`` (None when nothing is there)."""
    st = lstat(path, what)
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, what, "it is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, what, "it is not a folder")
    _check_owner(path, st, what, allow_root)
    if st.st_uid != os.getuid():
        check_not_open_to_others(path, st, what)
    return st


def check_not_open_to_others(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a folder that others may write to without a sticky bit: they could rename or
    replace what we keep in it."""
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise _refuse(path, what, "other users may write to it and it has no sticky bit, so "
                      "they could replace files in it",
                      f"Set its sticky bit (chmod +t {path}) or take away their write "
                      "permission, or use another path.")


def check_file(path: Path, st: os.stat_result, what: str = "the file") -> None:
    """Refuse anything but a regular file of ours (a symlink, a FIFO, a device, another's)."""
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, what, "it is a symlink")
    if not stat.S_ISREG(st.st_mode):
        # Removing a folder or a device is not the way out: naming a file is.
        raise _refuse(path, what, f"it is {file_kind(st.st_mode)}, not a regular file",
                      "Give the path of a file instead.")
    _check_owner(path, st, what)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in a person's words (``a folder``, ``a device``, ...)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"


def make_folder(path: Path, what: str = "the folder", mode: int = FOLDER_MODE) -> bool:
    """Create ``path`` (its parent must exist) with exactly ``mode``; False when something was
    there already (the caller checks it). The mode is set on the new folder's own descriptor,
    since ``mkdir`` masks it with the umask (a sticky 1777 would lose its bits)."""
    try:
        os.mkdir(path, FOLDER_MODE)
    except FileExistsError:
        return False
    except OSError as exc:
        raise os_error(exc, "create", what, path) from exc
    set_folder_mode(path, mode, what)  # a no-op unless the umask took bits away
    return True


def set_folder_mode(path: Path, mode: int, what: str = "the folder") -> None:
    """Give a folder of ours ``mode``, through a descriptor opened without following a link."""
    with translated("change the mode of", what, path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            _check_owner(path, st, what)
            if stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)


def ensure_folder(path: Path, what: str = "the folder", *, allow_root: bool = False) -> Path:
    """Make ``path`` (and missing parents) with mode 0700 unless it is there; then check it.

    A folder that already exists keeps its mode: we never change the mode of a folder we did not
    create (it may be a workspace, or a shared folder whose sticky bit matters).
    """
    if not check_folder(path, what, allow_root=allow_root):
        missing = [path, *(p for p in path.parents if lstat(p, "a parent folder") is None)]
        for folder in reversed(missing):  # each one 0700, not only the last
            make_folder(folder, what if folder == path else f"a parent folder of {what}")
        check_folder(path, what, allow_root=allow_root)
    return path


def read_text(path: Path, what: str = "the file", limit: int | None = None) -> str | None:
    """The text of a regular file of ours, None when it does not exist.

    Opened without following a symlink and checked on the open descriptor, so nothing can be
    swapped in between the check and the read. ``limit`` bounds the bytes read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, what, "it is a symlink") from exc
        raise os_error(exc, "read", what, path) from exc
    with translated("read", what, path), os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        check_file(path, st, what)
        if limit is not None and st.st_size > limit:
            raise _refuse(path, what, f"{st.st_size} bytes is more than the {limit} allowed")
        data = handle.read() if limit is None else handle.read(limit + 1)
    return data.decode("utf-8", errors="replace")


def _temp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp.{os.getpid()}")


def remove_stale_temps(path: Path) -> None:
    """Temp files of writers of ``path`` that were killed mid-write (their process is gone).

    Best effort: a folder that cannot be listed or a temp file that cannot be removed is left
    for the write itself to report."""
    try:
        temps = list(path.parent.glob(f"{path.name}.tmp.*"))
    except OSError:
        return
    for temp in temps:
        if writer_is_gone(temp.name.rsplit(".", 1)[-1]):
            with contextlib.suppress(OSError):
                st = temp.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                    temp.unlink()


def writer_is_gone(pid: str) -> bool:
    """True when ``pid`` (the process id a temp file or folder is named after) names another
    process of ours that has exited, so what it left half-written can go."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def fsync_folder(folder: Path, what: str = "the folder") -> None:
    """Make a rename or unlink in ``folder`` durable."""
    with translated("sync", what, folder):
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write(path: Path, data: str | bytes, what: str = "the file") -> None:
    """Replace ``path`` with ``data`` (mode 0600): temp file in the same folder, fsync, rename,
    fsync of the folder. The folder must exist and be checked already."""
    current = lstat(path, what)
    if current is not None:
        check_file(path, current, what)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temp = _temp_path(path)
    try:
        with translated("write", what, path):
            fd = _create_exclusive(temp, f"the temp file of {what}")
        with translated("write", what, path), os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        with translated("rename into place", what, path):
            os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_folder(path.parent, f"the folder of {what}")


def _create_exclusive(path: Path, what: str) -> int:
    """A new file of ours at ``path`` (0600), opened for writing; a leftover of a writer that
    died with our pid is replaced. (OSError left to the caller to type.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, FILE_MODE)
    except FileExistsError:
        st = path.lstat()
        check_file(path, st, what)
        path.unlink()
        return os.open(path, flags, FILE_MODE)


def probe_write(folder: Path, name: str, size: int, what: str) -> None:
    """Check that ``what`` (of ``size`` bytes, named ``name``) can be written in ``folder``
    now: create a temp file, reserve its space, remove it. Fails as the write would (no
    space, read-only, immutable, no permission), naming the folder."""
    # Unique per thread (parallel workflow steps probe at once), and ending in the pid like a
    # writer's temp file, so that remove_stale_temps clears one left by a killed process.
    temp = folder / f"{name}.tmp.probe-{threading.get_ident()}.{os.getpid()}"
    where = f"the folder of {what}"
    with translated("write a file in", where, folder):
        fd = _create_exclusive(temp, f"the temp file of {what}")
        try:
            try:
                os.posix_fallocate(fd, 0, max(size, 1))
            except OSError as exc:
                if exc.errno not in {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}:
                    raise
                os.write(fd, b"\0" * min(max(size, 1), 1 << 16))  # no fallocate here
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                temp.unlink()


def probe_replace(path: Path, what: str) -> None:
    """Check that the file at ``path`` may be changed (not immutable, not on a read-only
    disk): open it for appending, write nothing, close it."""
    with translated("write", what, path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
        os.close(fd)


def rename(source: Path, target: Path, what: str = "the file") -> None:
    """``os.replace``, with the system's failure typed."""
    with translated("move", what, source):
        os.replace(source, target)


def remove(path: Path, what: str = "the file") -> None:
    """Unlink a file of ours, with the system's failure typed; gone already is fine."""
    with translated("remove", what, path), contextlib.suppress(FileNotFoundError):
        path.unlink()


def set_mtime(path: Path, mtime_ns: int, what: str = "the file") -> None:
    """Give a file of ours this modification time (its access time is left as it is)."""
    with translated("set the time of", what, path):
        st = os.stat(path, follow_symlinks=False)
        os.utime(path, ns=(st.st_atime_ns, mtime_ns), follow_symlinks=False)


def write_in_folder(path: Path, data: str | bytes, what: str = "the file") -> None:
    """:func:`atomic_write` after :func:`ensure_folder` on its folder."""
    ensure_folder(path.parent, f"the folder of {what}", allow_root=True)
    atomic_write(path, data, what)


class Lock:
    """An exclusive lock on a file: ``with Lock(path).acquire(timeout=5): ...``.

    ``timeout`` None waits forever; 0 tries once. Raises :class:`LockTimeout`, and a
    :class:`~claude_persist.errors.FileSystemError` when the lock file cannot be opened.
    """

    def __init__(self, path: Path, what: str = "the lock file") -> None:
        self.path = path
        self.what = what
        self._lock: BaseFileLock | None = None

    def probe(self) -> None:
        """Check that the lock file can be opened for locking (created if missing; no lock is
        taken): a missing folder, no permission or a read-only disk fail here."""
        with translated("open", self.what, self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, FILE_MODE)
            try:
                check_file(self.path, os.fstat(fd), self.what)
            finally:
                os.close(fd)

    def acquire(self, timeout: float | None = None) -> Lock:
        import filelock  # only the paths that take a lock pay for the import

        current = lstat(self.path, self.what)
        if current is not None:
            check_file(self.path, current, self.what)
        lock = filelock.FileLock(str(self.path), mode=FILE_MODE, thread_local=False)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout, poll_interval=0.01)
        except filelock.Timeout:  # an OSError too: caught first
            raise LockTimeout(self.path) from None
        except OSError as exc:
            raise os_error(exc, "lock", self.what, self.path) from exc
        self._lock = lock
        return self

    @property
    def is_locked(self) -> bool:
        return self._lock is not None

    def fileno(self) -> int | None:
        """The descriptor the lock is held on, while held (None where filelock hides it).

        A child given a copy of it holds the lock too, until it exits: a claude process left
        running by a killed parent then still keeps other turns off its session."""
        context = getattr(self._lock, "_context", None)
        fd = getattr(context, "lock_file_fd", None)
        return fd if isinstance(fd, int) else None

    def release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            with translated("unlock", self.what, self.path):
                lock.release()

    def __enter__(self) -> Lock:
        if self._lock is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = None, what: str = "the lock file"
           ) -> Iterator[Lock]:
    """Hold the lock on ``path`` for the ``with`` block."""
    lock = Lock(path, what).acquire(timeout)
    try:
        yield lock
    finally:
        lock.release()


# -- big files: written through a handle, or staged and moved into place -----------------------


@contextlib.contextmanager
def atomic_file(path: Path, what: str = "the file") -> Iterator[BinaryIO]:
    """Write ``path`` through a handle, for data too big to hold in memory (a bundle): a temp
    file in the same folder (0600), fsynced and renamed into place when the block ends; removed,
    and ``path`` untouched, when it raises. The folder is made if it is missing."""
    ensure_folder(path.parent, f"the folder of {what}", allow_root=True)
    current = lstat(path, what)
    if current is not None:
        check_file(path, current, what)
    temp = _temp_path(path)
    with translated("write", what, path):
        handle = os.fdopen(_create_exclusive(temp, f"the temp file of {what}"), "wb")
    try:
        with handle:
            yield handle
            with translated("write", what, path):
                handle.flush()
                os.fsync(handle.fileno())
        with translated("rename into place", what, path):
            os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, (BrokenPipeError, FileSystemError)):
            raise os_error(exc, "write", what, path) from exc
        raise
    fsync_folder(path.parent, f"the folder of {what}")


def _sync_and_close(handle: BinaryIO) -> None:
    try:
        os.fsync(handle.fileno())
    finally:
        handle.close()


class Staging:
    """A private folder (0700) of files that are complete but not yet in place. Each moves into
    place by a rename, so a reader of the destination sees no file or the whole file, and
    nothing at all when the work is abandoned: :meth:`remove` (or leaving the ``with`` block)
    deletes what was not placed. Put it on the destinations' file system (a rename across file
    systems falls back to a copy)."""

    def __init__(self, parent: Path, label: str) -> None:
        import secrets

        ensure_folder(parent, "the folder of the staging area")
        self._remove_stale(parent, label)
        self.root = parent / f"{label}.{os.getpid()}.{secrets.token_hex(4)}"
        make_folder(self.root, "the staging folder")
        self._count = 0
        self._touched: set[Path] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._syncing: list[Future[None]] = []

    @staticmethod
    def _remove_stale(parent: Path, label: str) -> None:
        """Staging folders of runs that were killed (their process is gone); best effort."""
        import shutil

        try:
            folders = list(parent.glob(f"{label}.*.*"))
        except OSError:
            return
        for folder in folders:
            if writer_is_gone(folder.name[len(label) + 1:].split(".", 1)[0]):
                with contextlib.suppress(OSError):
                    st = folder.lstat()
                    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
                        shutil.rmtree(folder, ignore_errors=True)

    def new_file(self) -> tuple[Path, BinaryIO]:
        """A new empty file in the staging folder, open for writing."""
        self._count += 1
        path = self.root / f"f{self._count:07d}"
        with translated("write", "a staged file", path):
            return path, os.fdopen(_create_exclusive(path, "a staged file"), "wb")

    def seal(self, handle: BinaryIO) -> None:
        """Flush a staged file, then fsync and close it on a worker thread (the disk writes
        while the next file is read); :meth:`place` waits until every file is on disk."""
        from concurrent.futures import ThreadPoolExecutor

        with translated("write", "a staged file", self.root):
            handle.flush()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fsync")
        self._syncing.append(self._pool.submit(_sync_and_close, handle))

    def _wait_for_disk(self) -> None:
        syncing, self._syncing = self._syncing, []
        with translated("write", "a staged file", self.root):
            for future in syncing:
                future.result()

    def place(self, staged: Path, dest: Path, what: str = "the file",
              keep_old_as: Path | None = None) -> None:
        """Move a sealed staged file to ``dest`` (its folder made 0700 if missing), replacing
        what is there; ``keep_old_as`` first keeps the old file under that name. The folders
        written to are fsynced by :meth:`finish`."""
        import shutil

        self._wait_for_disk()
        ensure_folder(dest.parent, f"the folder of {what}")
        current = lstat(dest, what)
        if current is not None:
            check_file(dest, current, what)
            if keep_old_as is not None:
                with translated("keep a copy of", what, dest):
                    try:
                        os.link(dest, keep_old_as)
                    except OSError:
                        shutil.copy2(dest, keep_old_as)
        try:
            os.replace(staged, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise os_error(exc, "move into place", what, dest) from exc
            with staged.open("rb") as source, atomic_file(dest, what) as target:
                shutil.copyfileobj(source, target, 1 << 20)
        self._touched.add(dest.parent)

    def finish(self) -> None:
        """Make every rename into place durable."""
        for folder in sorted(self._touched):
            fsync_folder(folder, "a folder of placed files")
        self._touched.clear()

    def remove(self) -> None:
        import shutil

        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True)  # a Ctrl-C may land here: still remove the rest
                self._pool = None
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
