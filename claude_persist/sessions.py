"""Named sessions: create, resume, fork, adopt, resolve, list, delete.

Orchestration only: resolve the name, take the session's lock, merge the settings
(``settings.merge``), hand the turn to the turn runner (``claude.call``: argv, process, verdict),
record what it reported. The runner knows nothing of names, the store nothing of processes.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import fsio, observe, validate
from .claude.call import Turn, TurnRunner, run_turn
from .claude.command import Action, CallSpec, build_argv, resolve_claude_cmd
from .claude.result import TurnResult
from .errors import (
    ImportConflictError,
    NameExistsError,
    SessionNotFoundError,
    TranscriptMissingError,
    UnsafeFileError,
    UsageError,
)
from .mapping import MappingDoc, SessionEntry, replaced_history
from .settings import CallSettings, from_stored, merge, to_stored
from .store import MappingStore, notice

if TYPE_CHECKING:
    from .bundle import ExportReport, Limits, Outcome
    from .remote.base import SharedStore
    from .remote.lease import Lease
    from .remote.shared import Fetched, SharedSessions
    from .transcripts import TranscriptStatus


def init_prompt(name: str) -> str:
    """The first prompt of a session created without one (the seed's)."""
    return f"Initialize a new session named '{name}'. Reply only: OK"


def find_workspace(start: Path) -> Path:
    """The default workspace: the root of the git repository holding ``start`` (a ``.git``
    folder, or the ``.git`` file of a worktree or submodule), else ``start`` itself. So names
    made at a repository's top are found from any folder inside it, as ``inv`` finds
    ``tasks.py`` upwards."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


def _new_session_id() -> str:
    import uuid  # only create and fork need it; resume starts faster without

    return str(uuid.uuid4())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


#: Seconds ``sync`` waits for a session another machine is using (unless a lock timeout is set).
SYNC_WAIT = 60.0

#: The API's name for per-call settings (model, effort, role, limits...): see ``settings``.
TurnOptions = CallSettings


@dataclass(frozen=True)
class _Target:
    """A resolved call: which session, under which name, with which effective settings."""

    session_id: str
    name: str | None
    cwd: Path
    settings: CallSettings
    previous_total: float | None
    system_prompt_role: str | None = None
    """What the session's system prompt snapshot holds (see ``role_digest``)."""

    @property
    def role_changed(self) -> bool:
        """The role to send differs from the one the CLI would replay."""
        wanted = role_digest(self.settings.role)
        if self.system_prompt_role is None:  # not known: send a role fresh, if there is one
            return wanted != ""
        return wanted != self.system_prompt_role


def role_digest(role: str | None) -> str:
    """The sha256 of a role file's text ("" for no role): a role edited in place counts as
    changed, as a role file swapped for another does."""
    if not role:
        return ""
    import hashlib

    try:
        return hashlib.sha256(Path(role).read_bytes()).hexdigest()
    except OSError as exc:
        raise UsageError(f"the role file {role} cannot be read: {exc.strerror}") from exc


class Sessions:
    """The public API over one workspace's mapping file.

    >>> sessions = Sessions("path/to/repo", claude_cmd="claude")
    >>> sessions.create("review-src", "Review src/ and list problems.").session_id  # doctest: +SKIP
    """

    def __init__(
        self,
        workspace: str | Path | None = None,
        *,
        mapping_file: str | Path | None = None,
        claude_cmd: str | Sequence[str] | None = None,
        defaults: CallSettings | None = None,
        default_model: str | None = None,
        default_effort: str | None = None,
        env: Mapping[str, str] | None = None,
        notify: Callable[[str], None] = notice,
        turn_runner: TurnRunner = run_turn,
        observer: observe.RunObserver | None = None,
        store: str | SharedStore | None = None,
        store_source: str = "store",
    ) -> None:
        """``defaults`` is the configuration layer of the settings merge (the lowest: a flag,
        a workflow step and the session's stored value all win over it); ``default_model`` and
        ``default_effort`` are shorthands for two of its fields. ``turn_runner`` runs each
        claude call (``claude_persist.testing.InProcessClaude`` answers without a process).
        ``observer`` is told of each call (default: OpenTelemetry when the ``OTEL_*``
        variables ask for it and the ``otel`` extra is installed, else nothing).

        ``store``: a shared session store (its URL, ``s3://...`` or ``dir:/...``, or an opened
        :class:`~claude_persist.remote.SharedStore`); the store is then the truth and the
        mapping file a cache (see :mod:`claude_persist.remote.shared`). ``store_source`` names
        where a URL came from in a usage error (``--store``, ``CLAUDE_PERSIST_STORE``)."""
        self.workspace = (Path(workspace).resolve() if workspace
                          else find_workspace(Path(os.getcwd())))
        if not self.workspace.is_dir():
            raise UsageError(f"the workspace folder {workspace} does not exist")
        self.store = MappingStore.for_workspace(
            self.workspace, Path(mapping_file) if mapping_file else None, notify=notify
        )
        environ = os.environ if env is None else env
        if claude_cmd is None or isinstance(claude_cmd, str):
            self.claude_cmd = resolve_claude_cmd(claude_cmd, None, environ)
        else:
            self.claude_cmd = list(claude_cmd)
        if not self.claude_cmd:
            raise UsageError("the claude command is empty: name one (claude, or a wrapper)")
        shorthand = CallSettings(model=default_model, effort=default_effort)
        self.defaults = merge(shorthand, defaults).checked(self.workspace)
        self.env = env
        self.notify = notify
        self.turn_runner = turn_runner
        if observer is None:
            observer = observe.NULL_OBSERVER
            if any(key.startswith("OTEL_") for key in os.environ):  # else not even loaded
                from . import telemetry  # imports OpenTelemetry only if the variables ask

                observer = telemetry.from_environment(os.environ, notify)
        self.observer = observer
        self.shared: SharedSessions | None = None
        self.skipped: builtins.list[Exception] = []
        """What the last ``list`` left out: the store's records it could not read."""
        if store is not None:  # only then: nothing of remote/ is imported without a store
            from .remote.shared import SharedSessions
            from .remote.url import parse_store_url

            opened = parse_store_url(store, store_source).open() if isinstance(store, str) \
                else store
            self.shared = SharedSessions(opened, self.store, self.workspace, env, notify)

    @property
    def mapping_file(self) -> Path:
        """Where this workspace's names are kept."""
        return self.store.path

    # -- reading ------------------------------------------------------------------------------

    def list(self) -> list[SessionEntry]:
        """Every named session of the workspace (of the store, when one is set), sorted by
        name; a corrupt entry is left out and named in a warning."""
        if self.shared is not None:
            from .errors import StoreRecordError

            found, self.skipped = [], []
            for name in self.shared.names():
                try:
                    entry = self._shared_entry(name)
                except StoreRecordError as exc:
                    self.notify(f"warning: {name} left out: {exc}")
                    self.skipped.append(exc)
                    continue
                if entry is not None:
                    found.append(entry)
            return found
        doc = self.store.read()
        broken = doc.unusable()
        if broken:
            shown = ", ".join(broken[:10]) + (f" and {len(broken) - 10} more"
                                              if len(broken) > 10 else "")
            self.notify(f"warning: {len(broken)} corrupt entr{'y' if len(broken) == 1 else 'ies'}"
                        f" in {self.store.path} left out: {shown} (resolve a name to see what "
                        "is wrong with it; adopt it again with force, or delete it)")
        return doc.entries()

    def resolve(self, name: str) -> SessionEntry:
        """The entry for ``name``; :class:`SessionNotFoundError` if there is none."""
        if self.shared is not None:
            name = validate.name(name)
            entry = self._shared_entry(name)
            if entry is None:
                raise self.shared.not_found(name)
            return entry
        return self._entry(self.store.read(), validate.name(name))

    def _shared_entry(self, name: str) -> SessionEntry | None:
        """The store's entry ``name``, as this workspace would keep it."""
        from .mapping import entry_from_raw

        assert self.shared is not None
        document = self.shared.entry(name)
        if document is None:
            return None
        return entry_from_raw(name, self.shared.localized(document.data))

    def _entry(self, doc: MappingDoc, name: str) -> SessionEntry:
        entry = doc.entry(name)
        if entry is None:
            known = ", ".join(doc.aliases) or "none yet"
            raise SessionNotFoundError(
                f"no session named {name!r} in {self.store.path} (known names: {known})",
                name=name)
        return entry

    # -- calls --------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        prompt: str | None = None,
        options: CallSettings | None = None,
        *,
        force: bool = False,
        on_line: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> TurnResult:
        """Start a new session and map ``name`` to it (``force`` replaces an existing name).

        ``on_line`` is called with each raw stream-json line as it arrives; setting ``cancel``
        from another thread stops the call as Ctrl-C would."""
        options = self._checked(options)
        name = validate.name(name)
        text = validate.prompt(prompt) if prompt is not None else init_prompt(name)
        if self.shared is not None:
            with self._leased(name, options, "create", unreadable_ok=force) as (lease,
                                                                                 document):
                if document is not None and not force:
                    raise self._exists_in_store(name, document)
                result = self._local_create(name, text, options, True, on_line, cancel)
                return self._pushed(name, lease, document, result)
        return self._local_create(name, text, options, force, on_line, cancel)

    def _local_create(self, name: str, text: str, options: CallSettings, force: bool,
                      on_line: Callable[[str], None] | None, cancel: threading.Event | None
                      ) -> TurnResult:
        if not force:
            self._refuse_early(name)
        self.store.check_writable()  # before a call is spent on a name we could not save
        target = self._settings(_new_session_id(), name, options, entry=None)
        spec = self._spec(Action.CREATE, target, title=name)
        result = self._run(spec, text, target, on_line, cancel)
        self._record(name, target, result, fresh=True, force=force, reason="create --force")
        return result

    def resume(
        self,
        name: str | None,
        prompt: str,
        options: CallSettings | None = None,
        *,
        session_id: str | None = None,
        on_line: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> TurnResult:
        """Continue a session by name (or by ``session_id``, which wins over the name)."""
        options = self._checked(options)
        text = validate.prompt(prompt)
        if self.shared is not None:
            if session_id is not None:
                names = self.store.read().names_for_session(validate.session_id(session_id))
                if not names:
                    raise UsageError(f"with a shared store, sessions are resumed by name: no "
                                     f"name maps to session {session_id} here")
                name = names[0]
            shared_name = validate.name(name)
            with self._leased(shared_name, options, "resume", fetch=True) as (lease, document):
                result = self._local_resume(shared_name, text, options, None, on_line, cancel)
                return self._pushed(shared_name, lease, document, result)
        return self._local_resume(name, text, options, session_id, on_line, cancel)

    def _local_resume(self, name: str | None, text: str, options: CallSettings,
                      session_id: str | None, on_line: Callable[[str], None] | None,
                      cancel: threading.Event | None) -> TurnResult:
        sid, mapped_name = self._locate(name, session_id)
        lock_timeout = merge(options, self.defaults).lock_timeout
        with self.store.session_lock(sid, mapped_name or sid, lock_timeout) as lock:
            target = self._target(mapped_name, sid, options)
            spec = self._spec(Action.RESUME, target)
            result = self._run_existing(spec, text, target, on_line, cancel, lock)
            if target.name is not None:  # under the lock: the next turn sees these defaults
                try:
                    self._record(target.name, target, result)
                except UnsafeFileError as exc:
                    # The turn is done and paid for: hand its answer back. The name still maps
                    # to this session; only the last-used details could not be saved.
                    self.notify(f"warning: the turn succeeded, but {exc}")
                    result = replace(result, notes=(*result.notes, str(exc)))
        return result

    def fork(
        self,
        name: str,
        new_name: str,
        prompt: str,
        options: CallSettings | None = None,
        *,
        force: bool = False,
        on_line: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> TurnResult:
        """Copy ``name``'s history into a new session mapped as ``new_name``."""
        options = self._checked(options)
        text = validate.prompt(prompt)
        new_name = validate.name(new_name, "--as")
        if self.shared is not None:
            with self._leased(validate.name(name), options, "fork", fetch=True), \
                    self._leased(new_name, options, "fork") as (lease, document):
                if document is not None and not force:
                    raise self._exists_in_store(new_name, document)
                result = self._local_fork(name, new_name, text, options, True, on_line, cancel)
                return self._pushed(new_name, lease, document, result)
        return self._local_fork(name, new_name, text, options, force, on_line, cancel)

    def _local_fork(self, name: str, new_name: str, text: str, options: CallSettings,
                    force: bool, on_line: Callable[[str], None] | None,
                    cancel: threading.Event | None) -> TurnResult:
        source = self._entry(self.store.read(), validate.name(name))
        if not force:
            self._refuse_early(new_name)
        self.store.check_writable()  # before a call is spent on a name we could not save
        lock_timeout = merge(options, self.defaults).lock_timeout
        with self.store.session_lock(source.session_id, source.name, lock_timeout) as lock:
            # The CLI's running total of a fork carries on from the source's (2.1.330), so the
            # source's last total is the base the fork's own cost is taken from.
            target = self._target(source.name, source.session_id, options)
            spec = self._spec(Action.FORK, target, title=new_name,
                              new_session_id=_new_session_id())
            result = self._run_existing(spec, text, target, on_line, cancel, lock)
            self._record(new_name, replace(target, name=new_name), result, fresh=True,
                         force=force, reason="fork --force", forked_from=source.session_id)
        return result

    def adopt(self, name: str, session_id: str, *, force: bool = False) -> SessionEntry:
        """Map an existing Claude session (made interactively, say) under ``name``; no call."""
        name = validate.name(name)
        session_id = validate.session_id(session_id)
        if self.shared is not None:
            from . import transcripts

            if transcripts.locate(session_id, self.workspace, self.env) is None:
                missing = self._missing_transcript(name, session_id, self.workspace)
                raise TranscriptMissingError(
                    f"{missing} With a shared store, adopt pushes the session's files: adopt it "
                    "on the machine that has them.", name=name, session_id=session_id,
                    expected=missing.expected)
            with self._leased(name, CallSettings(), "adopt") as (lease, document):
                if document is not None and not force:
                    raise self._exists_in_store(name, document)
                if self.shared.stored_sid(document) != session_id:
                    self.shared.claim(session_id, name)  # before anything is written here
                entry = self._local_adopt(name, session_id, True)
                self._push_or_explain(name, lease, document)
                return entry
        return self._local_adopt(name, session_id, force)

    def _local_adopt(self, name: str, session_id: str, force: bool) -> SessionEntry:
        with self.store.update() as doc:
            if not force:
                self._refuse_existing(doc, name)
            raw = doc.aliases.get(name, {})
            when = _now()
            doc.put(name, {
                "session_id": session_id,
                "created_at": when,
                "cwd": str(self.workspace),
                "adopted": True,
                "history": replaced_history(raw, "adopt --force", when) if raw else [],
            })
            return self._entry(doc, name)

    def delete(
        self, name: str | None = None, *, session_id: str | None = None
    ) -> builtins.list[str]:
        """Remove the entry for ``name`` (or every name of ``session_id``); transcripts stay."""
        if (name is None) == (session_id is None):
            raise UsageError("delete needs exactly one of a name or a session id")
        if self.shared is not None:
            if name is not None:
                wanted = [validate.name(name)]
            else:
                wanted = self.store.read().names_for_session(validate.session_id(str(session_id)))
                if not wanted:
                    raise SessionNotFoundError(
                        f"no name in {self.store.path} maps to session {session_id}")
            for each in wanted:
                self._shared_delete(each)
            return wanted
        with self.store.update() as doc:
            if name is not None:
                name = validate.name(name)
                if not doc.has(name):  # a corrupt entry can be deleted; a missing one cannot
                    self._entry(doc, name)
                removed = [name]
            else:
                removed = doc.names_for_session(validate.session_id(str(session_id)))
                if not removed:
                    raise SessionNotFoundError(
                        f"no name in {self.store.path} maps to session {session_id}"
                    )
            for key in removed:
                doc.remove(key)
        return removed

    def delete_all(self) -> builtins.list[str]:
        """Delete the workspace's mapping file (every name); Claude's transcripts stay."""
        if self.shared is not None:
            raise UsageError(f"with a shared store, delete the store's names one at a time "
                             f"(delete -n NAME): --all would remove them for every machine "
                             f"({self.shared.location})")
        names = [entry.name for entry in self.list()]
        self.store.remove_file()
        return names

    # -- portable sessions --------------------------------------------------------------------

    def transcript_states(self, entries: Sequence[SessionEntry] | None = None
                          ) -> builtins.list[TranscriptStatus]:
        """Each session's transcript: present, missing, or due for Claude's cleanup within a
        week (``cleanupPeriodDays`` from the CLI's settings; 30 days otherwise)."""
        from . import transcripts

        entries = self.list() if entries is None else entries
        return transcripts.statuses(
            ((e.session_id, e.cwd or str(self.workspace)) for e in entries), self.workspace,
            self.env)

    def export(self, out: str | Path | IO[bytes], names: Sequence[str] | None = None
               ) -> ExportReport:
        """Write a bundle (a gzip-compressed tar with a manifest) of the named sessions, or of
        every session when ``names`` is None, to the file ``out`` (replaced atomically) or to
        a binary stream. A named session without a transcript is an error; with ``names``
        None it is left out with a warning."""
        from . import __version__, bundle, fsio, transcripts

        if self.shared is not None:  # the store's sessions, brought here first
            from .errors import StoreRecordError

            every = names is None
            names = [validate.name(n) for n in names] if names is not None \
                else self.shared.names()
            for name in builtins.list(names):
                try:
                    with self._leased(name, self.defaults, "export", fetch=True):
                        pass
                except StoreRecordError as exc:
                    if not every:
                        raise
                    self.notify(f"warning: {name} left out: {exc}")
                    names.remove(name)
        doc = self.store.read()
        wanted = [validate.name(n) for n in names] if names is not None else sorted(doc.aliases)
        sources = []
        lock_timeout = self.defaults.lock_timeout
        for name in dict.fromkeys(wanted):
            entry = self._entry(doc, name)
            cwd = entry.cwd or str(self.workspace)
            files = transcripts.session_files(entry.session_id, cwd, self.env)
            if files is None:
                missing = self._missing_transcript(entry.name, entry.session_id, cwd)
                if names is not None:
                    raise missing
                self.notify(f"warning: {name} left out: {missing}")
                continue
            sources.append(bundle.ExportSource(name, dict(doc.aliases[name]), cwd, files))

        def guard(session_id: str) -> Any:
            return self.store.session_lock(session_id, session_id, lock_timeout)

        if isinstance(out, (str, Path)):
            with fsio.atomic_file(Path(out), "the bundle") as handle:
                return bundle.write(handle, sources, self.workspace, __version__, guard=guard)
        return bundle.write(out, sources, self.workspace, __version__, guard=guard)

    def import_bundle(self, source: str | Path | IO[bytes], *, force: bool = False,
                      renames: Mapping[str, str] | None = None, limits: Limits | None = None
                      ) -> builtins.list[Outcome]:
        """Import a bundle from a file or a binary stream: verify all of it, then place each
        transcript where this machine's CLI looks for it (for the session's cwd moved into this
        workspace) and map the names (``renames``: bundle name -> name here).

        A transcript the bundle extends is fast-forwarded; one with turns the bundle lacks,
        or a name that maps to another session, is refused (:class:`ImportConflictError`,
        nothing written) unless ``force``. A bad bundle is a :class:`BundleError`."""
        from . import bundle

        stream, label, opened = bundle.open_source(source)
        lock_timeout = self.defaults.lock_timeout
        late: builtins.list[str] = []
        try:
            with bundle.staging_for(self.env) as staging:
                staged = bundle.read(stream, staging, label, limits or bundle.DEFAULT_LIMITS)
                plan = bundle.plan(staged, self.store.read(), self.workspace, self.env,
                                   force=force, renames=renames)
                for note in plan.notes:
                    self.notify(f"warning: {note}")
                if self.shared is not None:  # a session has one name in a store
                    for named in plan.names:
                        other = self.shared.owner(named.session.session_id)
                        if other is not None and other != named.name:
                            raise self.shared.taken(named.session.session_id, named.name,
                                                    other)
                self.store.check_writable()  # names that cannot be saved: place no file
                placed = set()
                for session in plan.sessions:
                    # A session new here has no turn of ours to wait for; the others are
                    # compared again and written under their lock.
                    with self.store.session_lock(
                            session.session_id, session.session_id, lock_timeout
                    ) if session.local is not None else contextlib.nullcontext():
                        problem = bundle.place(session, staging, force)
                    if problem:
                        late.append(problem)
                        continue
                    placed.add(session.session_id)
                    if session.keep_old_as is not None:
                        self.notify(f"the replaced transcript of session {session.session_id}"
                                    f" is kept as {session.keep_old_as}")
                staging.finish()
                names = [n for n in plan.names if n.session.session_id in placed]
                with self.store.update() as doc:
                    late += bundle.map_names(doc, names, force)
        finally:
            if opened:
                stream.close()
        done = bundle.outcomes(names)
        if late:
            raise ImportConflictError(late, imported=[o.name for o in done])
        if self.shared is not None:
            self._push_imported([o.name for o in done])
        return done

    def _push_imported(self, names: Sequence[str]) -> None:
        """Push what an import brought to the store: a name the store lacks, or one whose
        transcript the import extended past the store's. A name the store maps to another
        session, or whose copies diverged, is left as it is there and reported."""
        from .errors import StoreConflictError

        assert self.shared is not None
        lock_timeout = self.defaults.lock_timeout
        problems = []
        for name in names:
            with self._leased(name, self.defaults, "import") as (lease, document):
                local = self.store.read().aliases.get(name)
                local_sid = local.get("session_id") if isinstance(local, dict) else None
                if document is not None:
                    remote_sid = (document.data.get("entry") or {}).get("session_id")
                    if remote_sid != local_sid:
                        problems.append(
                            f"{name}: the store maps it to session {remote_sid}, the bundle to "
                            f"{local_sid}; import it under another name (--as), or delete it "
                            "from the store first")
                        continue
                    try:
                        fetched = self.shared.fetch(name, lambda sid: self.store.session_lock(
                            sid, sid, lock_timeout))
                    except StoreConflictError as exc:
                        problems.append(f"{name}: {exc}")
                        continue
                    if not fetched.ahead:
                        continue  # the store had every turn already
                self._push_or_explain(name, lease, document)
        if problems:
            raise StoreConflictError(
                "imported here, but not pushed to the shared store "
                f"{self.shared.location}:\n" + "\n".join(problems),
                store=self.shared.location, operation="push imported sessions")

    def _missing_transcript(self, name: str | None, session_id: str, cwd: str | Path
                            ) -> TranscriptMissingError:
        from . import transcripts

        expected = transcripts.transcript_path(session_id, cwd, self.env)
        return TranscriptMissingError(
            f"claude has no transcript of session {name or session_id} ({session_id}) on this "
            f"machine; it would be {expected}", name=name, session_id=session_id,
            expected=expected)

    def preview_argv(
        self, action: Action, name: str, options: CallSettings | None = None,
        new_name: str | None = None, session_id: str | None = None,
        stored: CallSettings | None = None,
    ) -> builtins.list[str]:
        """The argv a call would run, without running it or writing anything.

        Ids not known yet are placeholders; ``session_id`` stands in for the session's id (a
        dry run passes the placeholder of a session an earlier step will create, with what that
        step will have ``stored``).
        """
        options = self._checked(options)
        known = action is not Action.CREATE and session_id is None
        entry = self.store.read().entry(name) if known else None
        target = self._settings(
            session_id or (entry.session_id if entry else "<new session id>"), name, options,
            entry, stored)
        title = new_name if action is not Action.RESUME else None
        new_id = "<new session id>" if action is Action.FORK else None
        return build_argv(self.claude_cmd, self._spec(action, target, title=title,
                                                      new_session_id=new_id))

    # -- a shared store -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _leased(self, name: str, options: CallSettings, note: str, *, fetch: bool = False,
                unreadable_ok: bool = False) -> Iterator[tuple[Lease, Any]]:
        """Hold ``name``'s lease in the store (waiting up to the lock timeout); with ``fetch``
        bring the session's entry and files here first (a name the store lacks is not found).
        Yields the lease and the entry record as read (None: the store has no such name).
        ``unreadable_ok``: an entry the store cannot read is yielded as an empty record of its
        version (to be replaced or removed), with a warning."""
        assert self.shared is not None
        shared = self.shared
        lock_timeout = merge(options, self.defaults).lock_timeout
        with shared.lease(name, lock_timeout, note) as lease:
            if fetch:
                fetched: Fetched = shared.fetch(
                    name, lambda sid: self.store.session_lock(sid, name, lock_timeout))
                if fetched.document is None:
                    raise shared.not_found(name)
                yield lease, fetched.document
            else:
                yield lease, self._entry_record(name, unreadable_ok)

    def _entry_record(self, name: str, unreadable_ok: bool) -> Any:
        from .errors import StoreRecordError
        from .remote.base import Document

        assert self.shared is not None
        try:
            return self.shared.entry(name)
        except StoreRecordError as exc:
            version = self.shared.store.version("entry", name) if unreadable_ok else None
            if version is None:
                raise
            self.notify(f"warning: replacing an unreadable record: {exc}")
            return Document({}, version, "")

    def _exists_in_store(self, name: str, document: Any) -> NameExistsError:
        assert self.shared is not None
        sid = str((document.data.get("entry") or {}).get("session_id"))
        return NameExistsError(
            f"a session named {name!r} already exists (id {sid}) in the shared store "
            f"{self.shared.location}.", name=name, session_id=sid)

    def _pushed(self, name: str, lease: Lease, document: Any, result: TurnResult
                ) -> TurnResult:
        """Push the session after a call; a failure keeps the turn here and says how to push it
        later (the error carries the finished turn as ``result``)."""
        try:
            self._push_or_explain(name, lease, document)
        except Exception as exc:
            exc.result = result  # type: ignore[attr-defined]
            raise
        return result

    def _push_or_explain(self, name: str, lease: Lease, document: Any) -> None:
        from .errors import StoreConflictError, StoreError

        assert self.shared is not None
        try:
            self.shared.push(name, lease, None if document is None else document.version,
                             None if document is None else document.data.get("files"),
                             self.shared.stored_sid(document))
        except (StoreError, StoreConflictError) as exc:
            raise self.shared.push_failed(name, exc) from exc

    def _shared_delete(self, name: str) -> None:
        assert self.shared is not None
        with self._leased(name, self.defaults, "delete", unreadable_ok=True) as (lease,
                                                                                 document):
            if document is None:
                raise self.shared.not_found(name)
            lease.delete_entry(expect=document.version)
            sid = self.shared.stored_sid(document)
            if sid is not None:
                self.shared.unclaim(sid, name)
        with self.store.update() as doc:
            if name in doc.aliases:
                doc.remove(name)

    def sync(self) -> builtins.list[tuple[str, str]]:
        """With a store: push the local sessions the store lacks or is behind on (a push that
        failed after a call), pull those this machine lacks or is behind on. Gives ``(name,
        what was done)`` per name."""
        if self.shared is None:
            raise UsageError("sync needs a shared store: --store URL, CLAUDE_PERSIST_STORE, "
                             "or store: in the configuration")
        # A session in use is reported and left for the next sync, not waited on for ever.
        lock_timeout = self.defaults.lock_timeout
        lock_timeout = SYNC_WAIT if lock_timeout is None else lock_timeout
        return self.shared.sync(
            lock_timeout, lambda sid: self.store.session_lock(sid, sid, lock_timeout))

    # -- internals ----------------------------------------------------------------------------

    def _refuse_early(self, name: str) -> None:
        """Refuse an existing name before any claude call is spent on it."""
        if self.store.may_hold(name):
            self._refuse_existing(self.store.read(), name)

    def _refuse_existing(self, doc: MappingDoc, name: str, created: str | None = None) -> None:
        entry = doc.entry(name)
        if entry is None:
            return
        lost = (f" Session {created} was created but could not be named; it is not lost: "
                "adopt it under another name.") if created else ""
        raise NameExistsError(
            f"a session named {name!r} already exists (id {entry.session_id}) in "
            f"{self.store.path}.{lost}", name=name, session_id=entry.session_id,
            unmapped=created)

    def _locate(self, name: str | None, session_id: str | None) -> tuple[str, str | None]:
        """The session id to resume and the name it is mapped under (if any)."""
        doc = self.store.read()
        if session_id is not None:
            sid = validate.session_id(session_id)
            names = doc.names_for_session(sid)
            return sid, names[0] if names else None
        entry = self._entry(doc, validate.name(name))
        return entry.session_id, entry.name

    def _checked(self, options: CallSettings | None) -> CallSettings:
        return (options or CallSettings()).checked(self.workspace)

    def _target(self, name: str | None, session_id: str, options: CallSettings) -> _Target:
        """Effective settings, read after the session lock is held (so they are current)."""
        entry = self.store.read().entry(name) if name is not None else None
        if entry is not None and entry.session_id != session_id:
            entry = None  # the name was re-pointed meanwhile; use nothing stale
        stored_role = entry.role if entry else None
        if options.role is None and stored_role and not Path(stored_role).is_file():
            raise UsageError(
                f"the role file {stored_role} of session {name} no longer exists; restore it, "
                "or give a new role"
            )
        return self._settings(session_id, name, options, entry)

    def _settings(self, session_id: str, name: str | None, options: CallSettings,
                  entry: SessionEntry | None, stored: CallSettings | None = None) -> _Target:
        """The one merge: the explicit options (a flag, or a workflow step), then the session's
        stored values, then configuration."""
        return _Target(
            session_id=session_id,
            name=name,
            cwd=Path(entry.cwd) if entry and entry.cwd else self.workspace,
            settings=merge(options, stored or from_stored(entry), self.defaults),
            previous_total=entry.last_total_cost_usd if entry else None,
            system_prompt_role=entry.system_prompt_role if entry else None,
        )

    @staticmethod
    def _spec(action: Action, target: _Target, *, title: str | None = None,
              new_session_id: str | None = None) -> CallSpec:
        return CallSpec(action=action, session_id=target.session_id,
                        new_session_id=new_session_id, title=title, settings=target.settings,
                        fresh_system_prompt=action is not Action.CREATE and target.role_changed)

    def _run_existing(self, spec: CallSpec, prompt: str, target: _Target,
                      on_line: Callable[[str], None] | None, cancel: threading.Event | None,
                      lock: fsio.Lock) -> TurnResult:
        """A turn on an existing session, under its ``lock`` (which the claude process holds
        too); a missing transcript says where it would be."""
        try:
            return self._run(spec, prompt, target, on_line, cancel, lock.fileno())
        except TranscriptMissingError:
            raise
        except SessionNotFoundError as exc:
            from . import transcripts

            expected = transcripts.transcript_path(spec.session_id, target.cwd, self.env)
            raise TranscriptMissingError(
                f"{exc} Where this machine's claude would keep it: {expected}",
                name=target.name, session_id=spec.session_id, expected=expected) from exc

    def _run(self, spec: CallSpec, prompt: str, target: _Target,
             on_line: Callable[[str], None] | None, cancel: threading.Event | None,
             lock_fd: int | None = None) -> TurnResult:
        observer, step = observe.active(self.observer)
        call = observe.CallInfo(
            action=spec.action.value, name=target.name, session_id=spec.session_id,
            new_session_id=spec.new_session_id, model=target.settings.model,
            effort=target.settings.effort, step=step)
        env = self.env
        if observer is not observe.NULL_OBSERVER:
            extra = observer.call_started(call)
            if extra:  # the call's trace context, for claude's own telemetry
                env = {**(os.environ if env is None else env), **extra}
        turn = Turn(claude_cmd=self.claude_cmd, spec=spec, prompt=prompt, cwd=target.cwd,
                    label=f"session {target.name or target.session_id}",
                    previous_total=target.previous_total, env=env, on_line=on_line,
                    cancel=cancel, hold_open=() if lock_fd is None else (lock_fd,),
                    on_event=None if observer is observe.NULL_OBSERVER
                    else functools.partial(observer.step_event, call))
        try:
            answer = self.turn_runner(turn)
        except BaseException as exc:
            observer.call_finished(call, observe.call_failed(exc))
            raise
        observer.call_finished(call, observe.call_succeeded(answer.raw, answer.cost_usd))
        for note in answer.notes:
            self.notify(f"warning: {note}")
        raw = answer.raw
        reported_id = raw.get("session_id")
        expected = spec.new_session_id or spec.session_id
        settings = target.settings
        return TurnResult(
            session_id=reported_id if isinstance(reported_id, str) and reported_id else expected,
            text=str(raw.get("result") or ""),
            raw=raw,
            name=target.name,
            mapping_file=str(self.store.path),
            model=settings.model,
            effort=settings.effort,
            cost_usd=answer.cost_usd,
            structured_output=raw.get("structured_output"),
            num_turns=raw.get("num_turns") if isinstance(raw.get("num_turns"), int) else None,
            duration_ms=raw.get("duration_ms") if isinstance(raw.get("duration_ms"), int)
            else None,
            notes=answer.notes,
        )

    def _record(
        self, name: str, target: _Target, result: TurnResult, *, fresh: bool = False,
        force: bool = False, reason: str = "", forked_from: str | None = None,
    ) -> None:
        """Store what the call reported: its session id, model, effort, role and time.

        ``fresh`` entries (create, fork) replace the name only with ``force``; the old id then
        goes to the entry's history.
        """
        when = _now()
        created = (name, result.session_id) if fresh else None  # a failed write names it
        with self.store.update(created=created) as doc:
            raw: dict[str, Any] = doc.aliases.get(name, {})  # a copy: changed, then put back
            if fresh:
                if raw and not force:
                    self._refuse_existing(doc, name, created=result.session_id)
                history = replaced_history(raw, reason, when) if raw else []
                raw = {"created_at": when, "cwd": str(target.cwd), "history": history}
                if forked_from:
                    raw["forked_from"] = forked_from
                # What the CLI's system prompt snapshot now holds: the role of a create; for a
                # fork, the source's (copied with its history).
                snapshot = (role_digest(target.settings.role) if forked_from is None
                            else target.system_prompt_role)
                if snapshot is not None:
                    raw["system_prompt_role"] = snapshot
            elif raw.get("session_id") != target.session_id:
                # Re-pointed (create/adopt --force) or deleted while the turn ran: keep that.
                now_points = (f"now maps to {raw['session_id']}" if raw
                              else "was deleted meanwhile")
                self.notify(f"warning: the name {name!r} {now_points}; the finished turn "
                            f"belongs to session {target.session_id}, which stays unnamed "
                            "unless you map it again")
                return
            raw["session_id"] = result.session_id
            raw["last_used_at"] = when
            raw.update(to_stored(target.settings))
            total = result.raw.get("total_cost_usd")
            if isinstance(total, (int, float)):
                raw["last_total_cost_usd"] = float(total)
            doc.put(name, raw)
