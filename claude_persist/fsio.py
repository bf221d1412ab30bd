"""The only way claude-persist touches files it owns: safe folders, safe reads, atomic writes,
and locks.

Our files may sit in the shared system temp folder, where anybody can guess a path, so every
path is checked before use: no symlink followed where a folder or file of ours should be, no
folder or file owned by another user, and only regular files read. Writes go to a temp file in
the same folder, are fsynced and renamed into place, and the folder is fsynced, so a reader sees
the old file or the new one and a writer killed at any moment loses nothing committed.

Locks are ``filelock``'s (an ``flock`` on Unix: the kernel drops it when its holder dies, even
by ``kill -9``); ``filelock`` is imported only by the code paths that take a lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UnsafeFileError

if TYPE_CHECKING:
    from filelock import BaseFileLock

FOLDER_MODE = 0o700
FILE_MODE = 0o600


class LockTimeout(TimeoutError):
    """A lock stayed held by someone else for the whole wait."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def lstat(path: Path) -> os.stat_result | None:
    """``path.lstat()``, or None when nothing is there."""
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def _check_owner(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_uid != os.getuid():
        raise UnsafeFileError(
            f"refusing {what} {path}: it is owned by uid {st.st_uid}, not by you "
            f"(uid {os.getuid()}). Remove it, or use another path.", path=path)


def check_folder(path: Path, what: str = "the folder") -> bool:
    """True when ``path`` is a real folder of ours; False when nothing is there."""
    st = lstat(path)
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(f"refusing {what} {path}: it is a symlink. Remove it, or use "
                              "another path.", path=path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError(f"refusing {what} {path}: it is not a folder", path=path)
    _check_owner(path, st, what)
    return True


def check_file(path: Path, st: os.stat_result, what: str = "the file") -> None:
    """Refuse anything but a regular file of ours (a symlink, a FIFO, a device, another's)."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(f"refusing {what} {path}: it is a symlink. Remove it, or use "
                              "another path.", path=path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"refusing {what} {path}: it is not a regular file", path=path)
    _check_owner(path, st, what)


def ensure_folder(path: Path, what: str = "the folder") -> Path:
    """Make ``path`` (and missing parents) with mode 0700 unless it is there; then check it.

    A folder that already exists keeps its mode: we never change the mode of a folder we did not
    create (it may be a workspace, or a shared folder whose sticky bit matters).
    """
    if not check_folder(path, what):
        missing = [path, *(p for p in path.parents if lstat(p) is None)]
        try:
            for folder in reversed(missing):  # each one 0700, not only the last
                folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
        except OSError as exc:
            raise UnsafeFileError(f"cannot create {what} {path}: {exc.strerror}",
                                  path=path) from exc
        check_folder(path, what)
    return path


def read_text(path: Path, what: str = "the file", limit: int | None = None) -> str | None:
    """The text of a regular file of ours, None when it does not exist.

    Opened without following a symlink and checked on the open descriptor, so nothing can be
    swapped in between the check and the read. ``limit`` bounds the bytes read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(f"refusing {what} {path}: it is a symlink. Remove it, or "
                                  "use another path.", path=path) from exc
        raise UnsafeFileError(f"cannot read {what} {path}: {exc.strerror}", path=path) from exc
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        check_file(path, st, what)
        if limit is not None and st.st_size > limit:
            raise UnsafeFileError(f"refusing {what} {path}: {st.st_size} bytes is more than "
                                  f"the {limit} allowed", path=path)
        data = handle.read() if limit is None else handle.read(limit + 1)
    return data.decode("utf-8", errors="replace")


def _temp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp.{os.getpid()}")


def remove_stale_temps(path: Path) -> None:
    """Temp files of writers of ``path`` that were killed mid-write (their process is gone)."""
    for temp in path.parent.glob(f"{path.name}.tmp.*"):
        pid = temp.name.rsplit(".", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            st = lstat(temp)
            if st and stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                with contextlib.suppress(OSError):
                    temp.unlink()
        except PermissionError:
            pass  # alive, another user's


def fsync_folder(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: Path, data: str | bytes, what: str = "the file") -> None:
    """Replace ``path`` with ``data`` (mode 0600): temp file in the same folder, fsync, rename,
    fsync of the folder. The folder must exist and be checked already."""
    current = lstat(path)
    if current is not None:
        check_file(path, current, what)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temp = _temp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(temp, flags, FILE_MODE)
        except FileExistsError:
            st = temp.lstat()
            check_file(temp, st, "the temp file")
            temp.unlink()  # our own leftover from a writer that died with this pid
            fd = os.open(temp, flags, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except UnsafeFileError:
        raise
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(exc, OSError):
            raise UnsafeFileError(f"cannot write {what} {path}: {exc.strerror}",
                                  path=path) from exc
        raise
    fsync_folder(path.parent)


def write_in_folder(path: Path, data: str | bytes, what: str = "the file") -> None:
    """:func:`atomic_write` after :func:`ensure_folder` on its folder."""
    ensure_folder(path.parent, f"the folder of {what}")
    atomic_write(path, data, what)


class Lock:
    """An exclusive lock on a file: ``with Lock(path).acquire(timeout=5): ...``.

    ``timeout`` None waits forever; 0 tries once. Raises :class:`LockTimeout`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: BaseFileLock | None = None

    def acquire(self, timeout: float | None = None) -> Lock:
        import filelock  # only the paths that take a lock pay for the import

        lock = filelock.FileLock(str(self.path), mode=FILE_MODE, thread_local=False)
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout, poll_interval=0.01)
        except filelock.Timeout:
            raise LockTimeout(self.path) from None
        self._lock = lock
        return self

    @property
    def is_locked(self) -> bool:
        return self._lock is not None

    def release(self) -> None:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    def __enter__(self) -> Lock:
        if self._lock is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = None) -> Iterator[Lock]:
    """Hold the lock on ``path`` for the ``with`` block."""
    lock = Lock(path).acquire(timeout)
    try:
        yield lock
    finally:
        lock.release()
