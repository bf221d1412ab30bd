"""Named sessions: create, resume, fork, adopt, resolve, list, delete.

Each call is ``store`` + ``command`` + ``runner``: resolve the name, take the session's lock,
build the argv, run it, judge the result, record it. The runner knows nothing of names, the
store nothing of processes.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import validate
from .claude import runner
from .claude.command import Action, CallSpec, build_argv, resolve_claude_cmd
from .claude.result import StreamCollector, TurnResult, turn_cost, verdict
from .claude.runner import NO_EXIT
from .errors import NameExistsError, SessionNotFoundError, UsageError
from .mapping import MappingDoc, SessionEntry, replaced_history
from .store import MappingStore, notice


def init_prompt(name: str) -> str:
    """The first prompt of a session created without one (the seed's)."""
    return f"Initialize a new session named '{name}'. Reply only: OK"


def _new_session_id() -> str:
    import uuid  # only create and fork need it; resume starts faster without

    return str(uuid.uuid4())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class TurnOptions:
    """Per-call settings. Model, effort and role default to the session's stored ones."""

    model: str | None = None
    effort: str | None = None
    role: str | Path | None = None
    deadline: float | None = None
    idle_timeout: float | None = None
    lock_timeout: float | None = None
    include_partial: bool = False
    json_schema: str | None = None
    max_turns: int | None = None
    max_budget_usd: float | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    on_line: Callable[[str], None] | None = None
    """Called with each raw stream-json line as it arrives (a heartbeat, or ``--stream``)."""
    cancel: threading.Event | None = None
    """Set it from another thread to stop the call as Ctrl-C would (used by workflows)."""


def checked(options: TurnOptions | None, base: Path) -> TurnOptions:
    """``options`` checked and normalised (effort lower-cased, role made absolute), so that a
    bad value fails before any lock is waited for or any process started."""
    options = options or TurnOptions()
    return replace(
        options,
        model=validate.model(options.model),
        effort=validate.effort(options.effort),
        role=validate.role_file(options.role, base),
        deadline=validate.seconds(options.deadline, "--deadline"),
        idle_timeout=validate.seconds(options.idle_timeout, "--idle-timeout"),
        lock_timeout=validate.seconds(options.lock_timeout, "--lock-timeout", allow_zero=True),
    )


@dataclass(frozen=True)
class _Target:
    """A resolved call: which session, under which name, with which effective settings."""

    session_id: str
    name: str | None
    cwd: Path
    model: str | None
    effort: str | None
    role: str | None
    previous_total: float | None


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
        default_model: str | None = None,
        default_effort: str | None = None,
        env: Mapping[str, str] | None = None,
        notify: Callable[[str], None] = notice,
    ) -> None:
        self.workspace = Path(workspace or os.getcwd()).resolve()
        if not self.workspace.is_dir():
            raise UsageError(f"--workspace {workspace}: no such folder")
        self.store = MappingStore.for_workspace(
            self.workspace, Path(mapping_file) if mapping_file else None, notify=notify
        )
        environ = os.environ if env is None else env
        if claude_cmd is None or isinstance(claude_cmd, str):
            self.claude_cmd = resolve_claude_cmd(claude_cmd, None, environ)
        else:
            self.claude_cmd = list(claude_cmd)
        if not self.claude_cmd:
            raise UsageError("the claude command is empty: name one with --claude-cmd")
        self.default_model = validate.model(default_model, "the default model")
        self.default_effort = validate.effort(default_effort, "the default effort")
        self.env = env
        self.notify = notify

    @property
    def mapping_file(self) -> Path:
        """Where this workspace's names are kept."""
        return self.store.path

    # -- reading ------------------------------------------------------------------------------

    def list(self) -> list[SessionEntry]:
        """Every named session of the workspace, sorted by name."""
        return self.store.read().entries()

    def resolve(self, name: str) -> SessionEntry:
        """The entry for ``name``; :class:`SessionNotFoundError` if there is none."""
        return self._entry(self.store.read(), validate.name(name))

    def _entry(self, doc: MappingDoc, name: str) -> SessionEntry:
        entry = doc.entry(name)
        if entry is None:
            known = ", ".join(doc.aliases) or "none yet"
            raise SessionNotFoundError(
                f"no session named {name!r} in {self.store.path} (known names: {known}). "
                f"Create it with: create --name {name}"
            )
        return entry

    # -- calls --------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        prompt: str | None = None,
        options: TurnOptions | None = None,
        *,
        force: bool = False,
    ) -> TurnResult:
        """Start a new session and map ``name`` to it (``force`` replaces an existing name)."""
        options = checked(options, self.workspace)
        name = validate.name(name)
        text = validate.prompt(prompt) if prompt is not None else init_prompt(name)
        if not force:
            self._refuse_early(name)
        target = self._settings(_new_session_id(), name, options, entry=None)
        spec = self._spec(Action.CREATE, target, options, title=name)
        result = self._run(spec, text, target, options)
        self._record(name, target, result, fresh=True, force=force, reason="create --force")
        return result

    def resume(
        self,
        name: str | None,
        prompt: str,
        options: TurnOptions | None = None,
        *,
        session_id: str | None = None,
    ) -> TurnResult:
        """Continue a session by name (or by ``session_id``, which wins over the name)."""
        options = checked(options, self.workspace)
        text = validate.prompt(prompt)
        sid, mapped_name = self._locate(name, session_id)
        with self.store.session_lock(sid, mapped_name or sid, options.lock_timeout):
            target = self._target(mapped_name, sid, options)
            spec = self._spec(Action.RESUME, target, options)
            result = self._run(spec, text, target, options)
            if target.name is not None:  # under the lock: the next turn sees these defaults
                self._record(target.name, target, result)
        return result

    def fork(
        self,
        name: str,
        new_name: str,
        prompt: str,
        options: TurnOptions | None = None,
        *,
        force: bool = False,
    ) -> TurnResult:
        """Copy ``name``'s history into a new session mapped as ``new_name``."""
        options = checked(options, self.workspace)
        text = validate.prompt(prompt)
        new_name = validate.name(new_name, "--as")
        source = self.resolve(name)
        if not force:
            self._refuse_early(new_name)
        with self.store.session_lock(source.session_id, source.name, options.lock_timeout):
            # The CLI's running total of a fork carries on from the source's (2.1.330), so the
            # source's last total is the base the fork's own cost is taken from.
            target = self._target(source.name, source.session_id, options)
            spec = self._spec(Action.FORK, target, options, title=new_name,
                              new_session_id=_new_session_id())
            result = self._run(spec, text, target, options)
            self._record(new_name, replace(target, name=new_name), result, fresh=True,
                         force=force, reason="fork --force", forked_from=source.session_id)
        return result

    def adopt(self, name: str, session_id: str, *, force: bool = False) -> SessionEntry:
        """Map an existing Claude session (made interactively, say) under ``name``; no call."""
        name = validate.name(name)
        session_id = validate.session_id(session_id)
        with self.store.update() as doc:
            if not force:
                self._refuse_existing(doc, name)
            raw = doc.aliases.get(name, {})
            when = _now()
            doc.aliases[name] = {
                "session_id": session_id,
                "created_at": when,
                "cwd": str(self.workspace),
                "adopted": True,
                "history": replaced_history(raw, "adopt --force", when) if raw else [],
            }
            return self._entry(doc, name)

    def delete(
        self, name: str | None = None, *, session_id: str | None = None
    ) -> builtins.list[str]:
        """Remove the entry for ``name`` (or every name of ``session_id``); transcripts stay."""
        if (name is None) == (session_id is None):
            raise UsageError("delete needs exactly one of --name, --session-id or --all --yes")
        with self.store.update() as doc:
            if name is not None:
                name = validate.name(name)
                self._entry(doc, name)
                removed = [name]
            else:
                removed = doc.names_for_session(validate.session_id(str(session_id)))
                if not removed:
                    raise SessionNotFoundError(
                        f"no name in {self.store.path} maps to session {session_id}"
                    )
            for key in removed:
                del doc.aliases[key]
        return removed

    def delete_all(self) -> builtins.list[str]:
        """Delete the workspace's mapping file (every name); Claude's transcripts stay."""
        names = [entry.name for entry in self.list()]
        self.store.remove_file()
        return names

    def preview_argv(
        self, action: Action, name: str, options: TurnOptions | None = None,
        new_name: str | None = None, session_id: str | None = None,
    ) -> builtins.list[str]:
        """The argv a call would run, without running it or writing anything.

        Ids not known yet are placeholders; ``session_id`` stands in for the session's id (a
        dry run passes the placeholder of a session an earlier step will create).
        """
        options = checked(options, self.workspace)
        stored = action is not Action.CREATE and session_id is None
        entry = self.store.read().entry(name) if stored else None
        target = self._settings(
            session_id or (entry.session_id if entry else "<new session id>"), name, options,
            entry)
        title = new_name if action is not Action.RESUME else None
        new_id = "<new session id>" if action is Action.FORK else None
        return build_argv(self.claude_cmd, self._spec(action, target, options, title=title,
                                                      new_session_id=new_id))

    # -- internals ----------------------------------------------------------------------------

    def _refuse_early(self, name: str) -> None:
        """Refuse an existing name before any claude call is spent on it."""
        if self.store.may_hold(name):
            self._refuse_existing(self.store.read(), name)

    def _refuse_existing(self, doc: MappingDoc, name: str, created: str | None = None) -> None:
        entry = doc.entry(name)
        if entry is None:
            return
        lost = (f" Session {created} was created but not mapped; map it with: adopt --name "
                f"<other-name> --session-id {created}.") if created else ""
        raise NameExistsError(
            f"a session named {name!r} already exists (id {entry.session_id}) in "
            f"{self.store.path}. Pass --force to replace it (the old id is kept in the entry's "
            f"history), or choose another name.{lost}"
        )

    def _locate(self, name: str | None, session_id: str | None) -> tuple[str, str | None]:
        """The session id to resume and the name it is mapped under (if any)."""
        doc = self.store.read()
        if session_id is not None:
            sid = validate.session_id(session_id)
            names = doc.names_for_session(sid)
            return sid, names[0] if names else None
        entry = self._entry(doc, validate.name(name))
        return entry.session_id, entry.name

    def _target(self, name: str | None, session_id: str, options: TurnOptions) -> _Target:
        """Effective settings, read after the session lock is held (so they are current)."""
        entry = self.store.read().entry(name) if name is not None else None
        if entry is not None and entry.session_id != session_id:
            entry = None  # the name was re-pointed meanwhile; use nothing stale
        stored_role = entry.role if entry else None
        if options.role is None and stored_role and not Path(stored_role).is_file():
            raise UsageError(
                f"the role file {stored_role} of session {name} no longer exists; restore it, "
                "or pass --role with a new one"
            )
        return self._settings(session_id, name, options, entry)

    def _settings(self, session_id: str, name: str | None, options: TurnOptions,
                  entry: SessionEntry | None) -> _Target:
        """The one precedence rule: the explicit option, else the session's stored value, else
        the configured default."""
        return _Target(
            session_id=session_id,
            name=name,
            cwd=Path(entry.cwd) if entry and entry.cwd else self.workspace,
            model=options.model or (entry.last_model if entry else None) or self.default_model,
            effort=options.effort or (entry.last_reasoning_effort if entry else None)
            or self.default_effort,
            role=str(options.role) if options.role else (entry.role if entry else None),
            previous_total=entry.last_total_cost_usd if entry else None,
        )

    def _spec(
        self, action: Action, target: _Target, options: TurnOptions, *, title: str | None = None,
        new_session_id: str | None = None,
    ) -> CallSpec:
        return CallSpec(
            action=action,
            session_id=target.session_id,
            new_session_id=new_session_id,
            title=title,
            model=target.model,
            effort=target.effort,
            role_file=target.role,
            include_partial=options.include_partial,
            json_schema=options.json_schema,
            max_turns=options.max_turns,
            max_budget_usd=options.max_budget_usd,
            extra_args=tuple(options.extra_args),
        )

    def _run(self, spec: CallSpec, prompt: str, target: _Target, options: TurnOptions
             ) -> TurnResult:
        limits = runner.Limits(deadline=options.deadline, idle_timeout=options.idle_timeout)
        collector = StreamCollector()
        user_callback = options.on_line

        def on_line(line: str) -> bool:
            done = collector.feed(line)
            if user_callback is not None:
                user_callback(line)
            return done

        label = f"session {target.name or target.session_id}"
        outcome = runner.run(build_argv(self.claude_cmd, spec), prompt=prompt, cwd=target.cwd,
                             limits=limits, on_line=on_line, env=self.env,
                             cancel=options.cancel)
        raw = verdict(collector, outcome, limits, label)
        notes: tuple[str, ...] = ()
        if outcome.stopped_by == NO_EXIT:
            notes = ("claude did not exit after its result; its process group was stopped",)
            self.notify(f"warning: {notes[0]}")
        reported_id = raw.get("session_id")
        expected = spec.new_session_id or spec.session_id
        return TurnResult(
            session_id=reported_id if isinstance(reported_id, str) and reported_id else expected,
            text=str(raw.get("result") or ""),
            raw=raw,
            name=target.name,
            mapping_file=str(self.store.path),
            model=target.model,
            effort=target.effort,
            cost_usd=turn_cost(raw.get("total_cost_usd"), target.previous_total,
                               collector.cli_version),
            structured_output=raw.get("structured_output"),
            num_turns=raw.get("num_turns") if isinstance(raw.get("num_turns"), int) else None,
            duration_ms=raw.get("duration_ms") if isinstance(raw.get("duration_ms"), int)
            else None,
            notes=notes,
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
        with self.store.update() as doc:
            raw: dict[str, Any] = dict(doc.aliases.get(name, {}))  # a new dict: see MappingDoc
            if fresh:
                if raw and not force:
                    self._refuse_existing(doc, name, created=result.session_id)
                history = replaced_history(raw, reason, when) if raw else []
                raw = {"created_at": when, "cwd": str(target.cwd), "history": history}
                if forked_from:
                    raw["forked_from"] = forked_from
            elif not raw:
                raw = {"created_at": when, "cwd": str(target.cwd)}
            raw["session_id"] = result.session_id
            raw["last_used_at"] = when
            for key, value in (("last_model", target.model),
                               ("last_reasoning_effort", target.effort),
                               ("role", target.role)):
                if value:
                    raw[key] = value
            total = result.raw.get("total_cost_usd")
            if isinstance(total, (int, float)):
                raw["last_total_cost_usd"] = float(total)
            doc.aliases[name] = raw
