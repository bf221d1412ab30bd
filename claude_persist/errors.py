"""The typed errors of claude-persist, and the one table that maps them to exit codes.

Every error says what is wrong, where, and how to fix it. The library raises them; only the
edges (the Invoke tasks and the ``claude-persist`` program) turn them into exit codes, through
:func:`exit_code_for`.
"""

from __future__ import annotations


class ClaudePersistError(Exception):
    """Base of every error claude-persist raises on purpose."""


class UsageError(ClaudePersistError):
    """A bad flag, value or input file: the call cannot start as given."""


class NameExistsError(UsageError):
    """``create`` (or ``fork``, ``adopt``) of a name the mapping already holds, not forced.

    ``unmapped`` is the id of a session that was created but could not be named."""

    def __init__(self, message: str, *, name: str, session_id: str,
                 unmapped: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.session_id = session_id
        self.unmapped = unmapped


class UnsafeFileError(ClaudePersistError):
    """A file or folder of ours is unsafe or unusable (symlink, foreign owner, not a regular
    file, I/O error); ``path`` names it.

    When it stopped a session that claude had already created from being named, ``unmapped``
    (its id, as on :class:`NameExistsError`) and ``unmapped_name`` say which, so that it can be
    adopted later.
    """

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path
        self.unmapped: str | None = None
        self.unmapped_name: str | None = None

    def __str__(self) -> str:
        text = super().__str__()
        if self.unmapped is None:
            return text
        return (f"{text.rstrip('.')}. Session {self.unmapped} was created, but its name "
                f"{self.unmapped_name!r} could not be saved: adopt that session id under the "
                "name once the mapping file can be written.")


class MappingFileError(UnsafeFileError):
    """The mapping file or its folder is unsafe or unusable (symlink, foreign owner, I/O)."""


class CorruptEntryError(MappingFileError):
    """An entry of the mapping file is unusable (its session id is missing or not a UUID);
    ``name`` is the entry's name."""

    def __init__(self, message: str, *, path: object = None, name: str | None = None) -> None:
        super().__init__(message, path=path)
        self.name = name


class FileSystemError(UnsafeFileError):
    """The operating system refused an operation on a file, folder or lock of ours.

    ``operation`` is what we were doing ("write", "create", "lock", ...), ``reason`` the
    system's own words, ``errno`` its code; the subclasses name the common causes.
    """

    def __init__(self, message: str, *, path: object = None, operation: str = "",
                 reason: str = "", errno: int | None = None) -> None:
        super().__init__(message, path=path)
        self.operation = operation
        self.reason = reason
        self.errno = errno


class DiskFullError(FileSystemError):
    """No space left on the device, or the user's disk quota is used up (ENOSPC, EDQUOT)."""


class ReadOnlyFileSystemError(FileSystemError):
    """The file system is mounted read-only (EROFS)."""


class FilePermissionError(FileSystemError):
    """Permission denied (EACCES, EPERM): a folder not writable by us, or made immutable."""


class SessionNotFoundError(ClaudePersistError):
    """No such name in the mapping (``name``), or claude has no transcript for the session id."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class TranscriptMissingError(SessionNotFoundError):
    """The name is mapped, but claude has no transcript for its session (``session_id``): the
    CLI's cleanup deleted it, or it was made on another machine or under another config folder
    (``expected`` is where this machine's CLI would keep it)."""

    def __init__(self, message: str, *, name: str | None = None, session_id: str = "",
                 expected: object = None) -> None:
        super().__init__(message, name=name)
        self.session_id = session_id
        self.expected = expected


class BundleError(UsageError):
    """A bundle cannot be imported as it is: not a gzip tar, no valid manifest, or a member that
    is unsafe (an absolute path, ``..``, a link or device), unlisted, missing, of the wrong size
    or checksum, or past a limit. ``member`` names the archive member at fault, if one is."""

    def __init__(self, message: str, *, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class ImportConflictError(UsageError):
    """An import would lose something here: a local transcript has turns the bundle lacks, or
    a name maps to another session. ``conflicts`` holds one line per session; ``imported`` the
    names that were imported all the same (only when a turn changed a session while its import
    ran; otherwise nothing is)."""

    def __init__(self, conflicts: list[str], imported: list[str] | None = None) -> None:
        done = (f"imported only {', '.join(imported)}" if imported
                else "nothing was imported")
        super().__init__(f"the import would lose work on this machine, so {done}:\n  "
                         + "\n  ".join(conflicts))
        self.conflicts = conflicts
        self.imported = imported or []


class SessionBusyError(ClaudePersistError):
    """Another process holds the session's lock and ``--lock-timeout`` ran out."""


class ClaudeCallError(ClaudePersistError):
    """The claude call failed: non-zero exit, ``is_error: true``, or no result at all.

    Besides its message it carries what the CLI said, each ``None`` (or empty) when the call
    did not say it: ``exit_code`` (negative: killed by that signal; ``None`` when we stopped the
    process ourselves), ``stderr_tail`` (its last lines), and from its result line ``subtype``,
    ``api_error_status``, ``terminal_reason`` and ``session_id``.
    """

    def __init__(
        self, message: str, *, exit_code: int | None = None, stderr_tail: str = "",
        subtype: str | None = None, api_error_status: int | None = None,
        terminal_reason: str | None = None, session_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.subtype = subtype
        self.api_error_status = api_error_status
        self.terminal_reason = terminal_reason
        self.session_id = session_id

    @property
    def transient(self) -> bool:
        """True when a retry may succeed (rate limit, server error, overload)."""
        return self.api_error_status in {429, 500, 502, 503, 504, 529}


class CallTimeoutError(ClaudePersistError):
    """The call ran past its ``--deadline`` or was silent past its ``--idle-timeout``.

    ``limit`` says which (``"deadline"`` or ``"idle timeout"``), ``seconds`` how long it allowed.
    """

    def __init__(self, message: str, *, limit: str, seconds: float | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.seconds = seconds


class ClaudeNotFoundError(ClaudePersistError):
    """The claude command (or ``--claude-cmd`` / ``CLAUDE_CMD``) cannot be started."""


class InternalError(ClaudePersistError):
    """A bug of ours: an exception nobody expected. The faces print one line, not a traceback
    (set ``CLAUDE_PERSIST_TRACEBACK=1`` to see it)."""


class InterruptedByUserError(ClaudePersistError):
    """The user interrupted us (Ctrl-C or SIGTERM); children were stopped."""


class LeaseBusyError(SessionBusyError):
    """Another machine (or process) holds the session's lease in the shared store and the wait
    ran out. ``holder`` says who (host, pid), ``expires_at`` when its lease runs out unless it
    is renewed (seconds since the epoch, by the holder's clock)."""

    def __init__(self, message: str, *, name: str, holder: str,
                 expires_at: float | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.holder = holder
        self.expires_at = expires_at


class StoreError(ClaudePersistError):
    """The shared session store failed: unreachable, refused (permission, credentials), missing
    (no such bucket or folder), or holding something unreadable.

    ``store`` names the store (the bucket and prefix, or the folder), ``operation`` what we were
    doing ("read the entry 'x'", ...), ``reason`` what the store or the system said.
    """

    def __init__(self, message: str, *, store: str = "", operation: str = "",
                 reason: str = "") -> None:
        super().__init__(message)
        self.store = store
        self.operation = operation
        self.reason = reason


class StoreRecordError(StoreError):
    """The shared store holds a record it cannot read (not JSON, not ours, too big, incomplete)
    or lacks a blob an entry names. ``key`` is the record's key or path. Commands that go
    through many records (``list``, ``sync``, ``export --all``) skip it, say so, and go on;
    ``delete -n NAME``, ``create --force`` and ``lease --break`` replace or remove it."""

    def __init__(self, message: str, *, store: str = "", operation: str = "",
                 reason: str = "", key: str = "") -> None:
        super().__init__(message, store=store, operation=operation, reason=reason)
        self.key = key


class StoreConflictError(ClaudePersistError):
    """A compare-and-swap write to the shared store lost: the record was created, changed or
    removed by another writer since it was read. Nothing was written; read it again and decide.

    ``store`` and ``key`` say which record, ``operation`` what we tried.
    """

    def __init__(self, message: str, *, store: str = "", key: str = "",
                 operation: str = "") -> None:
        super().__init__(message)
        self.store = store
        self.key = key
        self.operation = operation


class LeaseLostError(StoreConflictError):
    """Our lease on a session was taken over (it expired and another holder took it) or broken,
    so we may no longer write the session's entry."""


class WorkflowError(UsageError):
    """A workflow file is invalid; holds every problem found, each with file, line and column."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class WorkflowFailedError(ClaudePersistError):
    """A workflow step failed (after its retries), so the run failed."""


#: The one table from error type to exit code. Looked up along the class's MRO, so a
#: subclass inherits its parent's code unless it has its own row.
EXIT_CODES: dict[type[BaseException], int] = {
    ClaudeCallError: 1,
    WorkflowFailedError: 1,
    UsageError: 2,
    BundleError: 2,
    ImportConflictError: 2,
    UnsafeFileError: 2,
    FileSystemError: 2,
    SessionNotFoundError: 3,
    SessionBusyError: 4,
    StoreConflictError: 4,
    StoreError: 75,
    CallTimeoutError: 124,
    ClaudeNotFoundError: 127,
    InternalError: 70,
    InterruptedByUserError: 130,
    KeyboardInterrupt: 130,
    BrokenPipeError: 141,
}


def exit_code_for(error: BaseException) -> int:
    """Return the documented exit code for ``error`` (1 for anything unexpected)."""
    for klass in type(error).__mro__:
        if klass in EXIT_CODES:
            return EXIT_CODES[klass]
    return 1
