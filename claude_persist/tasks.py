"""Invoke tasks: parse flags, call the library, print, map errors to exit codes. No logic.

Use them from your own ``tasks.py``::

    from claude_persist.tasks import ns   # the whole collection
    namespace = ns                        # or: Collection(..., ns) to nest it

Defaults come from Invoke configuration under ``claude_persist`` (``invoke.yaml`` or
``INVOKE_CLAUDE_PERSIST_*`` variables); explicit flags win.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from invoke.collection import Collection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.parser.argument import Argument
from invoke.tasks import Task

from . import validate
from .claude.command import resolve_claude_cmd
from .claude.result import TurnResult
from .errors import (
    BundleError,
    ClaudePersistError,
    ImportConflictError,
    InternalError,
    MappingFileError,
    NameExistsError,
    SessionBusyError,
    SessionNotFoundError,
    TranscriptMissingError,
    UsageError,
    WorkflowFailedError,
    exit_code_for,
)
from .sessions import Sessions
from .settings import CLI_FLAGS, CONFIG_KEYS, from_config, from_flags
from .settings import HELP as SETTINGS_HELP
from .terminal import printable

CONFIG_DEFAULTS: dict[str, Any] = {
    "workspace": None,
    "mapping_file": None,
    "claude_cmd": None,
    "store": None,  # a shared session store (see "shared store" below)
    **dict.fromkeys(CONFIG_KEYS),
}

HELP = {
    **SETTINGS_HELP,
    "name": "session name (letters, digits, '.', '_', '-')",
    "prompt": "the prompt text",
    "prompt_file": "read the prompt from FILE ('-' for stdin)",
    "force": "replace an existing name (the old id is kept in the entry's history)",
    "session_id": "a claude session id (UUID); wins over --name",
    "stream": "print claude's stream-json lines as they arrive",
    "json": "print one JSON object instead of text",
    "as_": "the name for the forked session",
    "all_": "every name of the workspace (with --yes)",
    "yes": "confirm --all",
    "workspace": "the workspace folder (default: the root of the git repository around the "
                 "current folder, else the current folder)",
    "mapping_file": "use this mapping file instead of the workspace's default",
    "claude_cmd": "the claude command to run, e.g. 'claude' or a wrapper (default: CLAUDE_CMD)",
    "file": "the workflow file (YAML)",
    "var": "set a workflow var: --var NAME=VALUE (repeatable)",
    "max_parallel": "run up to N independent steps at once (overrides max_parallel)",
    "dry_run": "print the plan, each step's argv and prompt; call and write nothing",
    "resume_run": "continue the latest unfinished run of this file (--run-id picks one)",
    "run_id": "the run to resume with --resume-run, or the id for a new run",
    "report": "also write the run's JSON report to FILE",
    "report_md": "also write the run's summary as Markdown to FILE (a CI page)",
    "quiet": "print only errors and the final line on stderr (no step lines, no heartbeat)",
    "more": "another workflow file to check (repeatable; claude-persist also takes them as "
            "words: validate a.yml b.yml)",
}
SHORT_FLAGS = {"prompt": "p", "name": "n", "output": "o"}


class PersistTask(Task):  # type: ignore[type-arg]
    """A task whose short flags are set explicitly: ``-p`` is --prompt, ``-n`` is --name.

    Invoke deep-copies every task each time it loads a tasks.py, and every flag on each parse
    (help texts, defaults and all). A task is not changed once made (its help texts are kept
    from Invoke's flag-making, below), and a parse sets only a flag's value, so both copy
    shallowly: a parse costs a few milliseconds less."""

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        if name in SHORT_FLAGS:
            opts["names"] = [*opts["names"], SHORT_FLAGS[name]]
        return opts

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        # Invoke pops each flag's help text out of ``self.help`` as it makes the flag; the task
        # (and every copy of it) lives on for the next parse, so Invoke gets a copy to empty.
        texts, self.help = self.help, dict(self.help)
        try:
            return [FlagArgument.like(arg) for arg in super().get_arguments(ignore_unknown_help)]
        finally:
            self.help = texts

    def __deepcopy__(self, memo: dict[int, Any]) -> PersistTask:
        return copy.copy(self)


class FlagArgument(Argument):
    """An Invoke flag whose copy shares all but its value (see PersistTask)."""

    @classmethod
    def like(cls, arg: Argument) -> FlagArgument:
        return cls(names=arg.names, kind=arg.kind, default=arg.default, help=arg.help,
                   positional=arg.positional, optional=arg.optional,
                   incrementable=arg.incrementable, attr_name=arg.attr_name)

    def __repr__(self) -> str:  # as Invoke's own, in its messages: "Flag <Argument: name (n)>"
        return super().__repr__().replace(f"<{type(self).__name__}:", "<Argument:", 1)

    def __deepcopy__(self, memo: dict[int, Any]) -> FlagArgument:
        new = copy.copy(self)
        new.raw_value, new._value = copy.copy(self.raw_value), copy.copy(self._value)  # a list's
        return new


def persist_task(
    body: Callable[..., Any], *, name: str | None = None, aliases: tuple[str, ...] = (),
    preset: dict[str, Any] | None = None, doc: str | None = None,
    positional: tuple[str, ...] = (), iterable: tuple[str, ...] = (),
    helps: dict[str, str] | None = None,
) -> PersistTask:
    """Make a task of ``body``: errors become exit codes; ``preset`` fixes some flags."""
    preset = preset or {}

    task_name = name or body.__name__.rstrip("_")

    @functools.wraps(body)
    def edge(c: Context, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            # A closed terminal (SIGHUP) or a kill (SIGTERM) stops like Ctrl-C: claude's
            # process groups are ended and a workflow's state is saved as interrupted.
            signal.signal(signal.SIGTERM, _terminate_as_interrupt)
            signal.signal(signal.SIGHUP, _terminate_as_interrupt)
        try:
            return body(c, *args, **kwargs, **preset)
        except ClaudePersistError as exc:
            hint = face_hint(exc, task_name)
            gap = "\n" if "\n" in str(exc) else " "  # a list of problems: the hint below it
            # A message may quote a path, a model's words or a command's output: escaped.
            raise Exit(printable(f"claude-persist: error: {exc}{gap + hint if hint else ''}"),
                       code=exit_code_for(exc)) from exc
        except KeyboardInterrupt as exc:
            raise Exit("claude-persist: interrupted", code=130) from exc
        except BrokenPipeError as exc:
            raise closed_stdout() from exc
        except Exception as exc:
            if os.environ.get("CLAUDE_PERSIST_TRACEBACK"):
                raise
            bug = InternalError(f"{type(exc).__name__}: {exc}")
            raise Exit(f"claude-persist: internal error: {bug} (this is a bug; run again with "
                       "CLAUDE_PERSIST_TRACEBACK=1 to see where)", code=exit_code_for(bug)
                       ) from exc

    signature = inspect.signature(body)
    params = [p for key, p in signature.parameters.items()
              if key not in preset and p.kind is not p.VAR_KEYWORD]
    body_of_task: Callable[..., Any] = edge
    if task_name in STORE_TASKS:  # --store: see "shared store" below
        body_of_task = _with_store_flag(edge, task_name)
        params.append(inspect.Parameter("store", inspect.Parameter.KEYWORD_ONLY, default=None))
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        # **flags: a flag for every per-call setting, from the settings dataclass
        params += [inspect.Parameter(flag, inspect.Parameter.KEYWORD_ONLY,
                                     default=False if flag == "partial" else None)
                   for flag in CLI_FLAGS if flag not in preset]
    shown = signature.replace(parameters=params)
    body_of_task.__signature__ = shown  # type: ignore[attr-defined]
    body_of_task.__doc__ = doc or body.__doc__
    flag_help = {key: text for key, text in {**HELP, **(helps or {})}.items()
                 if key in shown.parameters}
    return PersistTask(body_of_task, name=name or body.__name__.rstrip("_"), aliases=aliases,
                       help=flag_help, auto_shortflags=False, positional=list(positional),
                       iterable=list(iterable))


def command_prefix() -> str:
    """How the user called us, to name another task in a hint: ``claude-persist `` or, under
    Invoke, ``inv `` plus the collection's prefix as typed (``inv claude.``)."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("inv", "invoke") or Path(sys.argv[0]).parent.name == "invoke":
        names = {task.name for task in ns.tasks.values()} | {
            alias for task in ns.tasks.values() for alias in task.aliases}
        for word in sys.argv[1:]:
            head, _, last = word.rpartition(".")
            if last in names and not word.startswith("-"):
                return f"inv {head + '.' if head else ''}"
        return "inv "
    return "claude-persist "


def face_hint(error: ClaudePersistError, task: str) -> str:
    """What to type next, in this face's words (the library's messages name no flags)."""
    cmd = command_prefix()
    unmapped = getattr(error, "unmapped", None)
    adopt = (f" Name the new session with: {cmd}adopt -n OTHER --session-id {unmapped}"
             if unmapped else "")
    if isinstance(error, NameExistsError):
        return ("Pass --force to replace it (the old id is kept in the entry's history), or "
                f"choose another name.{adopt}")
    if adopt:
        return adopt.strip()
    if isinstance(error, TranscriptMissingError):
        from .transcripts import config_dir

        return (f"If it was exported elsewhere, bring it here with: {cmd}import BUNDLE (made "
                f"there by {cmd}export -n {error.name or 'NAME'} -o BUNDLE). Claude deletes "
                "transcripts unused for cleanupPeriodDays (30 days unless set in "
                f"{config_dir() / 'settings.json'}); raise it there to keep them longer.")
    if isinstance(error, ImportConflictError):
        return ("Pass --force to take the bundle's copies (a replaced transcript is kept "
                "beside it as <id>.jsonl.replaced-TIME), or --as NAME=OTHER to import a name "
                "that maps to another session here under another name.")
    if isinstance(error, BundleError):
        return "Make the bundle again with export; nothing was imported."
    if isinstance(error, SessionNotFoundError) and error.name and task not in (
            "delete", "delete-session"):
        return f"Create it with: {cmd}create -n {error.name}"
    if isinstance(error, SessionBusyError):
        return "Try again later, or raise --lock-timeout."
    if isinstance(error, MappingFileError):
        return "Or pass --mapping-file to use another path."
    return ""


def closed_stdout() -> Exit:
    """Whoever read our stdout stopped reading (``| head``): that is their choice, not an error,
    so say nothing (as ``yes | head`` does) and exit 141, as shells report a broken pipe."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return Exit(code=141)


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so a running claude call stops its process group cleanly


# -- shared edges -------------------------------------------------------------------------------


def settings(c: Context) -> dict[str, Any]:
    """The ``claude_persist`` configuration section, with every known key present; unknown
    keys and ``INVOKE_CLAUDE_PERSIST_*`` variables are named in a warning (a typo would
    otherwise be ignored without a word)."""
    section = c.config.get("claude_persist") or {}
    unknown = sorted(set(section) - set(CONFIG_DEFAULTS))
    unknown += sorted(key for key in os.environ if key.startswith(ENV_PREFIX)
                      and key[len(ENV_PREFIX):].lower() not in CONFIG_DEFAULTS)
    if unknown:
        _warn_once(f"warning: unknown configuration ignored: {', '.join(unknown)} (known under "
                   f"claude_persist: {', '.join(CONFIG_DEFAULTS)})")
    return {key: section.get(key, default) for key, default in CONFIG_DEFAULTS.items()}


ENV_PREFIX = "INVOKE_CLAUDE_PERSIST_"


@functools.cache
def _warn_once(message: str) -> None:
    print(f"claude-persist: {message}", file=sys.stderr, flush=True)


def open_sessions(
    c: Context, workspace: str | None, mapping_file: str | None, claude_cmd: str | None
) -> Sessions:
    """The library object for these flags, configuration filling in what they leave out."""
    cfg = settings(c)
    store, store_source = store_setting(cfg)
    sessions = Sessions(
        workspace or _configured_workspace(c, cfg["workspace"]),
        mapping_file=mapping_file or cfg["mapping_file"],
        claude_cmd=resolve_claude_cmd(claude_cmd, cfg["claude_cmd"], os.environ),
        store=store, store_source=store_source,
    )
    try:
        sessions.defaults = from_config(cfg).checked(sessions.workspace)
    except UsageError as exc:
        raise UsageError(f"the configuration under claude_persist (invoke.yaml, or an "
                         f"INVOKE_CLAUDE_PERSIST_* variable) is wrong: {exc}") from exc
    return sessions


def _configured_workspace(c: Context, value: str | None) -> str | None:
    """``workspace:`` from configuration; a relative one is relative to the project's
    ``invoke.yaml`` that sets it (else to the current folder)."""
    if value is not None and not isinstance(value, str):
        raise UsageError(f"the configured workspace {value!r} is not a folder path")
    if not value or Path(value).expanduser().is_absolute():
        return str(Path(value).expanduser()) if value else None
    project_file = getattr(c.config, "_project_path", None)
    project = getattr(c.config, "_project", None) or {}
    if project_file and (project.get("claude_persist") or {}).get("workspace") == value:
        return str(Path(project_file).parent / value)
    return value


def passthrough_args(c: Context) -> tuple[str, ...]:
    """What came after ``--``, to hand to claude as is.

    Invoke keeps it only as one space-joined string; take the exact words from ``sys.argv`` when
    they match it, so that an argument with spaces survives.
    """
    remainder = getattr(c, "remainder", "") or ""
    if not remainder:
        return ()
    if "--" in sys.argv:
        words = sys.argv[sys.argv.index("--") + 1:]
        if " ".join(words) == remainder:
            return tuple(words)
    return tuple(shlex.split(remainder))


def read_prompt(prompt: str | None, prompt_file: str | None, required: bool) -> str | None:
    """The prompt from ``-p``, or from ``--prompt-file`` (``-`` is stdin)."""
    if prompt is not None and prompt_file is not None:
        raise UsageError("give the prompt once: -p TEXT or --prompt-file FILE, not both")
    if prompt_file is not None:
        prompt = _read_prompt_file(prompt_file)
    if prompt is None and not required:
        return None
    return validate.prompt(prompt)


#: The most a prompt file (or stdin) may hold: far beyond any model's context.
MAX_PROMPT_BYTES = 16 * 1024 * 1024


def _read_prompt_file(prompt_file: str) -> str:
    """A file, a pipe or stdin (``-``), bounded and UTF-8; never a device such as /dev/zero."""
    import stat

    if prompt_file == "-" and not hasattr(sys.stdin, "buffer"):  # a text stream put in place
        text = sys.stdin.read(MAX_PROMPT_BYTES + 1)
        if len(text) > MAX_PROMPT_BYTES:
            raise UsageError(f"--prompt-file -: more than {MAX_PROMPT_BYTES} characters")
        return text
    try:
        handle = sys.stdin.buffer if prompt_file == "-" else open(prompt_file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"--prompt-file {prompt_file}: {exc.strerror}") from exc
    try:
        mode = os.fstat(handle.fileno()).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode):
            raise UsageError(f"--prompt-file {prompt_file}: not a file or a pipe")
        data = handle.read(MAX_PROMPT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--prompt-file {prompt_file}: {exc.strerror}") from exc
    finally:
        if prompt_file != "-":
            handle.close()
    if len(data) > MAX_PROMPT_BYTES:
        raise UsageError(f"--prompt-file {prompt_file}: more than {MAX_PROMPT_BYTES} bytes; "
                         "a prompt that long cannot fit a model's context")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--prompt-file {prompt_file}: not UTF-8 text (byte {exc.start})"
                         ) from exc


def check_output_flags(stream: bool, json: bool, partial: bool = False) -> None:
    if stream and json:
        raise UsageError("--stream and --json do not go together: --stream already ends with "
                         "the result object")
    if partial and not stream:
        raise UsageError("--partial adds partial message events to --stream's output; add "
                         "--stream, or drop --partial")


def show(result: TurnResult, *, json: bool, stream: bool, plain: str) -> None:
    """A turn's output: the result object (--json), nothing more (--stream printed it all), or
    ``plain``."""
    if json:
        print_json(result.to_json())
    elif not stream:
        print(plain, flush=True)


def print_line(line: str) -> None:
    """One stream line to stdout, flushed at once: it is the caller's heartbeat."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def print_json(data: Any) -> None:
    """One JSON object on one line."""
    print(json.dumps(data, ensure_ascii=False), flush=True)


def write_json(path: Path, data: Any) -> None:
    """A JSON report file (``--report``), its folder made if needed."""
    from . import fsio

    fsio.write_in_folder(path, json.dumps(data, indent=2) + "\n", "the --report file")


# -- the tasks ----------------------------------------------------------------------------------


def create(
    c: Context, name: str | None = None, prompt: str | None = None,
    prompt_file: str | None = None, force: bool = False, stream: bool = False,
    json: bool = False, workspace: str | None = None, mapping_file: str | None = None,
    claude_cmd: str | None = None, **flags: Any,
) -> None:
    """Start a new Claude Code session and remember it under --name; prints its session id.

    Without a prompt it sends a short init prompt. Refuses a name that exists unless --force.
    --stream prints claude's stream-json lines as they arrive; --json prints the result object.
    Anything after -- goes to claude as is.
    """
    check_output_flags(stream, json, bool(flags.get("partial")))
    sessions = open_sessions(c, workspace, mapping_file, claude_cmd)
    text = read_prompt(prompt, prompt_file, required=False)
    options = from_flags(flags, passthrough_args(c))
    result = sessions.create(validate.name(name), text, options, force=force,
                             on_line=print_line if stream else None)
    show(result, json=json, stream=stream, plain=result.session_id)


def resume(
    c: Context, name: str | None = None, prompt: str | None = None,
    prompt_file: str | None = None, session_id: str | None = None, stream: bool = False,
    json: bool = False, workspace: str | None = None, mapping_file: str | None = None,
    claude_cmd: str | None = None, **flags: Any,
) -> None:
    """Continue a named session with a prompt; prints the answer.

    --session-id wins over --name. The stored model, effort and role are used unless given.
    --stream prints claude's stream-json lines as they arrive; --json prints the result object.
    """
    check_output_flags(stream, json, bool(flags.get("partial")))
    sessions = open_sessions(c, workspace, mapping_file, claude_cmd)
    text = read_prompt(prompt, prompt_file, required=True)
    options = from_flags(flags, passthrough_args(c))
    if session_id is None:
        name = validate.name(name)
    result = sessions.resume(name, str(text), options, session_id=session_id,
                             on_line=print_line if stream else None)
    show(result, json=json, stream=stream, plain=result.text)


def fork(
    c: Context, name: str | None = None, as_: str | None = None, prompt: str | None = None,
    prompt_file: str | None = None, force: bool = False, stream: bool = False,
    json: bool = False, workspace: str | None = None, mapping_file: str | None = None,
    claude_cmd: str | None = None, **flags: Any,
) -> None:
    """Copy a session's history into a new session mapped as --as; prints the answer.

    --stream prints claude's stream-json lines as they arrive; --json prints the result object.
    """
    check_output_flags(stream, json, bool(flags.get("partial")))
    sessions = open_sessions(c, workspace, mapping_file, claude_cmd)
    text = read_prompt(prompt, prompt_file, required=True)
    options = from_flags(flags, passthrough_args(c))
    result = sessions.fork(validate.name(name), validate.name(as_, "--as"), str(text), options,
                           force=force, on_line=print_line if stream else None)
    show(result, json=json, stream=stream, plain=result.text)


def adopt(
    c: Context, name: str | None = None, session_id: str | None = None, force: bool = False,
    workspace: str | None = None, mapping_file: str | None = None,
) -> None:
    """Map an existing Claude session (made interactively, say) under --name; calls nothing."""
    if session_id is None:
        raise UsageError("adopt needs --session-id: the id of the claude session to name")
    entry = open_sessions(c, workspace, mapping_file, None).adopt(
        validate.name(name), session_id, force=force)
    print(entry.session_id, flush=True)


def resolve(
    c: Context, name: str | None = None, json: bool = False, workspace: str | None = None,
    mapping_file: str | None = None,
) -> None:
    """Print the session id of --name (--json: the whole entry)."""
    sessions = open_sessions(c, workspace, mapping_file, None)
    entry = sessions.resolve(validate.name(name))
    if json:
        print_json({**entry.to_json(), "mapping_file": str(sessions.mapping_file)})
    else:
        print(entry.session_id, flush=True)


def list_(
    c: Context, json: bool = False, workspace: str | None = None,
    mapping_file: str | None = None,
) -> None:
    """List the workspace's sessions: name, id, last model and effort, created, last used, and
    the state of claude's transcript: present, missing, or due for claude's cleanup within a
    week (with the day it is due)."""
    sessions = open_sessions(c, workspace, mapping_file, None)
    entries = sessions.list()
    try:
        _print_list(sessions, entries, json)
    finally:
        if sessions.skipped:  # the store's unreadable records: exit 75 once the rest is shown
            from .errors import StoreRecordError

            raise StoreRecordError(
                f"{len(sessions.skipped)} record(s) of the shared store could not be read and "
                "were left out (see the warnings above); remove them there (delete -n NAME) "
                "or restore them", store=sessions.shared.location if sessions.shared else "")


def _print_list(sessions: Sessions, entries: list[Any], json: bool) -> None:
    states = sessions.transcript_states(entries)
    if json:
        print_json({"workspace_dir": str(sessions.workspace),
                    "mapping_file": str(sessions.mapping_file),
                    "sessions": [{**e.to_json(), "transcript": state.to_json()}
                                 for e, state in zip(entries, states, strict=True)]})
        return
    if not entries:
        print(f"claude-persist: no sessions yet in {sessions.mapping_file}", file=sys.stderr)
        return
    rows = [("NAME", "SESSION ID", "MODEL", "EFFORT", "CREATED", "LAST USED", "TRANSCRIPT")]
    rows += [(e.name, e.session_id, e.last_model or "-", e.last_reasoning_effort or "-",
              (e.created_at or "-")[:19], (e.last_used_at or "-")[:19], _state_text(state))
             for e, state in zip(entries, states, strict=True)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def _state_text(state: Any) -> str:
    from .transcripts import TranscriptState

    if state.state is TranscriptState.DUE and state.cleanup_at is not None:
        return f"due {state.cleanup_at.date().isoformat()}"
    return str(state.state.value)


def export(
    c: Context, name: list[str] | None = None, all_: bool = False, output: str | None = None,
    workspace: str | None = None, mapping_file: str | None = None,
) -> None:
    """Write named sessions (-n NAME, repeatable, or --all) to one bundle: a gzip-compressed
    tar of a manifest, each transcript and the folder of the same id beside it.

    -o FILE writes it there (atomically); without -o, or with -o -, to stdout. Take it to
    another machine (or CI job) and run import there.
    """
    names = name or []
    if all_ == bool(names):
        raise UsageError("export needs the sessions to export: -n NAME (repeatable) or --all"
                         if not all_ else "--all exports every session; drop -n, or --all")
    sessions = open_sessions(c, workspace, mapping_file, None)
    if output is None or output == "-":
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None or sys.stdout.isatty():
            raise UsageError("a bundle is binary: write it to a file with -o FILE, or redirect "
                             "standard output (export ... > FILE)")
        sys.stdout.flush()
        report = sessions.export(buffer, None if all_ else names)
        buffer.flush()
        where = "standard output"
    else:
        report = sessions.export(output, None if all_ else names)
        where = output
    count = len(report.manifest.sessions)
    print(f"claude-persist: exported {count} session{'s' * (count != 1)} ({report.files} "
          f"files, {report.bytes / 1e6:.1f} MB) to {where}", file=sys.stderr, flush=True)


def import_(
    c: Context, file: str | None = None, force: bool = False, as_: list[str] | None = None,
    workspace: str | None = None, mapping_file: str | None = None,
) -> None:
    """Import a bundle made by export (FILE, or - for stdin): verify all of it, put each
    transcript where this machine's claude looks for it, and map the names.

    A transcript the bundle extends is fast-forwarded; one with turns the bundle lacks, or a
    name that maps to another session here, is refused unless --force. --as OLD=NEW imports
    the bundle's OLD under the name NEW (repeatable). Prints each name, what was done, and its
    session id.
    """
    from .bundle import parse_renames

    if file is None:
        raise UsageError("import needs the bundle: import FILE (or - for standard input)")
    renames = parse_renames(as_ or [])
    sessions = open_sessions(c, workspace, mapping_file, None)
    source: Any = file
    if file == "-":
        source = getattr(sys.stdin, "buffer", None)
        if source is None:
            raise UsageError("standard input takes no binary data here; give the bundle's file")
    done = sessions.import_bundle(source, force=force, renames=renames)
    rows = [(o.name, o.action.value + (f" +{o.turns_added} turn{'s' * (o.turns_added != 1)}"
                                       if o.turns_added else ""), o.session_id) for o in done]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip(), flush=True)
    if not done:
        print("claude-persist: the bundle holds no sessions", file=sys.stderr, flush=True)


def delete(
    c: Context, name: str | None = None, session_id: str | None = None, all_: bool = False,
    yes: bool = False, workspace: str | None = None, mapping_file: str | None = None,
) -> None:
    """Forget names: --name N, --session-id ID (every name of it), or --all --yes.

    Claude's own transcripts are never touched. Prints the names removed.
    """
    sessions = open_sessions(c, workspace, mapping_file, None)
    if all_:
        if name is not None or session_id is not None:
            raise UsageError("--all goes alone: drop --name and --session-id")
        if not yes:
            count = len(sessions.list())
            raise UsageError(f"--all forgets every name of this workspace ({count} in "
                             f"{sessions.mapping_file}); add --yes to confirm")
        removed = sessions.delete_all()
    else:
        removed = sessions.delete(name, session_id=session_id)
    for removed_name in removed:
        print(removed_name)


def run(
    c: Context, file: str | None = None, var: list[str] | None = None,
    max_parallel: str | None = None, dry_run: bool = False, resume_run: bool = False,
    run_id: str | None = None, report: str | None = None, json: bool = False,
    lock_timeout: str | None = None, workspace: str | None = None,
    mapping_file: str | None = None, claude_cmd: str | None = None,
    report_md: str | None = None, quiet: bool = False,
) -> None:
    """Run a workflow file: steps that create, resume and fork named sessions.

    Progress goes to stderr, a line per step start and end (and a heartbeat while a step runs
    long; on a terminal, a live view of the running steps), then a table with totals; --quiet
    leaves only errors and the table's final line. On
    success stdout gets the last step's result (its structured output as JSON if it has a
    schema); --json prints the run's report there instead, and --report F writes it to F (a
    path that cannot be written is refused before anything runs). Exit 1 if a step failed
    (continue it with --resume-run), 2 if the file is invalid, 4 if another process is running
    the same run. --report-md F writes a Markdown summary to F; in GitHub Actions the same
    summary is appended to GITHUB_STEP_SUMMARY and failed steps get ::error annotations.
    """
    from . import workflow  # lazily: yaml and the scheduler are for workflows only
    from .workflow import report as reports

    if file is None:
        raise UsageError("run needs a workflow file, e.g.: run workflows/review.yml")
    sessions = open_sessions(c, workspace, mapping_file, claude_cmd)
    parallel = _positive_int(max_parallel, "--max-parallel")
    loaded, plan = workflow.load(file, sessions, workflow.validate_var_assignments(var or []),
                                 parallel)
    if dry_run:
        if json or report is not None or resume_run or report_md is not None:
            raise UsageError("--dry-run prints the plan as text and runs nothing: drop --json, "
                             "--report, --report-md and --resume-run, or drop --dry-run")
        print(workflow.dry_run(loaded, plan, sessions), flush=True)
        return
    limit = validate.seconds(lock_timeout, "--lock-timeout", allow_zero=True)
    if run_id is not None:
        run_id = validate.name(run_id, "--run-id")
    reports.check_distinct(Path(file), {flag: Path(path) for flag, path in (
        ("--report", report), ("--report-md", report_md)) if path is not None})
    if report is not None:
        reports.check_writable(Path(report))
    if report_md is not None:
        reports.check_writable(Path(report_md), "--report-md")
    run_settings = workflow.RunSettings(max_parallel=parallel or loaded.max_parallel,
                                        resume_run=resume_run, run_id=run_id,
                                        lock_timeout=limit)
    from .workflow import progress

    live = progress.for_stream(loaded, sys.stderr, quiet=quiet)
    try:
        state, state_file = workflow.run(loaded, plan, sessions, run_settings, live,
                                          live.observer)
    except ClaudePersistError:  # interrupted (a cancelled CI job), or aborted: still a page
        _publish_stopped_run(sessions, loaded, file, report_md)
        raise
    finally:
        live.close()
    closing = reports.table(state)
    print(closing.rsplit("\n", 1)[-1] if quiet else closing, file=sys.stderr, flush=True)
    data = reports.as_json(state, str(state_file))
    if report is not None:
        write_json(Path(report), data)
    if report_md is not None:
        reports.write_markdown(Path(report_md), state, loaded, file)
    reports.publish_ci(state, loaded, os.environ, sys.stderr, sys.stderr)
    if json:
        print_json(data)
    elif (result := reports.final_result(state)) is not None:
        print(result, flush=True)
    if state.status != "succeeded":
        raise WorkflowFailedError(
            f"workflow {loaded.name} {state.status}: {state.stop_reason or 'not every step ran'}"
            f". Fix the cause, then continue with: run {file} --resume-run "
            f"(run {state.run_id}; state in {state_file})")


def validate_(
    c: Context, file: str | None = None, more: list[str] | None = None,
    var: list[str] | None = None, max_parallel: str | None = None,
    workspace: str | None = None, mapping_file: str | None = None,
    claude_cmd: str | None = None,
) -> None:
    """Check workflow files (schema, references, files, sessions, cycles); calls nothing.

    claude-persist validate a.yml b.yml checks both (under inv: validate a.yml --more b.yml).
    Prints every problem of every file with its file, line and column; exit 2 if there is any.
    """
    from . import workflow
    from .errors import WorkflowError

    if file is None:
        raise UsageError("validate needs a workflow file, e.g.: validate workflows/review.yml")
    sessions = open_sessions(c, workspace, mapping_file, claude_cmd)
    overrides = workflow.validate_var_assignments(var or [])
    parallel = _positive_int(max_parallel, "--max-parallel")
    problems: list[str] = []
    for path in [file, *(more or [])]:
        try:
            loaded, plan = workflow.load(path, sessions, overrides, parallel)
        except WorkflowError as exc:
            problems += exc.problems
            continue
        except UsageError as exc:  # a --var the file does not have
            problems.append(f"{path}: {exc}")
            continue
        mode = f"{len(plan.waves)} waves" if plan.parallel else "sequential"
        from .workflow.report import steps_text

        print(f"{path}: valid; {steps_text(len(loaded.steps))}, {mode}", flush=True)
    if problems:
        raise WorkflowError(problems)


#: The largest count a flag takes: a bigger one means nothing more, and Python's own
#: containers (a deque's length, a pool's size) refuse what does not fit a machine word.
MAX_COUNT = 1_000_000


def _positive_int(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError as exc:  # also a number of more digits than int() reads
        raise UsageError(f"{flag} {value!r} is not a whole number") from exc
    if number < 1:
        raise UsageError(f"{flag} must be at least 1, not {number}")
    if number > MAX_COUNT:
        raise UsageError(f"{flag} must be at most {MAX_COUNT}, not {value}")
    return number


# -- looking back: run history and transcripts -------------------------------------------------


def _runs_command(sub: str) -> str:
    """A sub-command of ``runs`` as this face spells it: ``claude-persist runs prune``, or
    ``inv runs-prune`` (Invoke reads ``runs prune`` as two tasks)."""
    cmd = command_prefix()
    return f"{cmd}runs-{sub}" if cmd.startswith("inv") else f"{cmd}runs {sub}"


def _unreadable_run_fix() -> str:
    """The advice for a run whose files cannot be read, naming this face's prune command."""
    from .workflow.history import UNREADABLE_FIX

    return UNREADABLE_FIX.format(prune=_runs_command("prune"))


def _runs_root(c: Context, workspace: str | None, mapping_file: str | None
               ) -> tuple[Sessions, Path]:
    from .workflow.history import runs_root

    sessions = open_sessions(c, workspace, mapping_file, None)
    return sessions, runs_root(sessions.store.folder)


def runs(
    c: Context, json: bool = False, workspace: str | None = None,
    mapping_file: str | None = None,
) -> None:
    """List the workspace's workflow runs, newest first: id, workflow, started, duration,
    status, cost (over all its invocations), steps done and failed.

    A run whose state says running but whose process is gone (killed, a reboot) shows as
    abandoned; --resume-run continues it. See one with `runs show RUN_ID`
    (`runs-show` under inv).
    """
    from .workflow import history

    _, root = _runs_root(c, workspace, mapping_file)
    listing = history.list_runs(root, fix=_unreadable_run_fix())
    for problem in listing.unreadable:
        print(f"claude-persist: warning: skipped a run: {problem}", file=sys.stderr, flush=True)
    if json:
        print_json({"runs_folder": str(root), "runs": listing.runs})
    elif listing.runs:
        print(history.listing_text(listing.runs), flush=True)
    else:
        print(f"claude-persist: no workflow runs yet in {root}", file=sys.stderr, flush=True)


def runs_show(
    c: Context, run_id: str | None = None, workflow: str | None = None, json: bool = False,
    workspace: str | None = None, mapping_file: str | None = None,
) -> None:
    """Show one run: each step, expansion and loop pass with its session, status, attempts,
    time, cost, tokens, result and output, and the command that continues its session.

    Text cuts long results short; --json gives everything. --workflow FILE picks the run when
    two workflow files have runs of the same id.
    """
    from .workflow import history

    if run_id is None:
        raise UsageError("runs-show needs a run id: runs-show RUN_ID (runs lists them)")
    sessions, root = _runs_root(c, workspace, mapping_file)
    saved, state = history.find(root, run_id, workflow, _unreadable_run_fix())
    mapped = {entry.name: entry.session_id for entry in sessions.list()}
    data = history.show(saved, state, mapped, command_prefix())
    if json:
        print_json(data)
    else:
        print(history.show_text(data), flush=True)


def runs_prune(
    c: Context, older_than: str | None = None, dry_run: bool = False, json: bool = False,
    workspace: str | None = None, mapping_file: str | None = None,
) -> None:
    """Remove the runs whose last change is older than --older-than (30d, 12h, 2w, ...).

    A run in progress (its process holds the run's lock) is never removed, however old.
    --dry-run only says what would go. Sessions and transcripts are not touched.
    """
    from .workflow import history

    if older_than is None:
        prune = _runs_command("prune")
        raise UsageError(f"{prune.split(' ', 1)[1]} needs --older-than AGE, e.g. {prune} "
                         "--older-than 30d")
    age = history.parse_age(older_than)
    _, root = _runs_root(c, workspace, mapping_file)
    done = history.prune(root, age, dry_run=dry_run)
    for problem in done.unreadable:
        print(f"claude-persist: warning: removing an unreadable run: {problem}",
              file=sys.stderr, flush=True)
    if json:
        print_json({"removed": done.removed, "in_progress": done.in_progress,
                    "dry_run": dry_run})
    else:
        print(history.pruned_text(done, older_than, dry_run), flush=True)


def show_session(
    c: Context, name: str | None = None, session_id: str | None = None,
    turns: str | None = None, json: bool = False, workspace: str | None = None,
    mapping_file: str | None = None,
) -> None:
    """Print a session's conversation from claude's transcript: each user prompt, the tool
    calls one line each, and the final answer. --turns N shows the last N turns.

    Calls nothing. Lines of the transcript that cannot be read are skipped and counted.
    """
    from . import conversation

    count = _positive_int(turns, "--turns")
    sessions = open_sessions(c, workspace, mapping_file, None)
    mapped, sid, path = conversation.transcript_of(sessions, name, session_id)
    label = mapped or sid
    reading = conversation.Reading()
    try:
        kept = conversation.last_turns(path, count, reading)
    except OSError as exc:
        raise UsageError(f"cannot read the transcript {path}: {exc.strerror or exc}") from exc
    if reading.skipped:
        print(f"claude-persist: warning: skipped {reading.skipped} of {reading.lines} lines of "
              f"{path} ({reading.malformed} not JSON, {reading.too_long} longer than "
              f"{conversation.MAX_LINE_BYTES >> 20} MiB)", file=sys.stderr, flush=True)
    if json:
        print_json({"name": mapped, "session_id": sid,
                    "transcript": str(path), "turns_total": reading.turns,
                    "skipped_lines": reading.skipped,
                    "turns": [turn.to_json() for turn in kept]})
        return
    shown = f" (the last {len(kept)})" if len(kept) < reading.turns else ""
    header = (f"session {label} ({sid}): {reading.turns} turn{'s' * (reading.turns != 1)}"
              f"{shown}; transcript {path}")
    print(conversation.text(kept, header), flush=True)


def _publish_stopped_run(sessions: Sessions, loaded: Any, file: str,
                         report_md: str | None) -> None:
    """The summary and annotations of a run that ended by an error or an interrupt, from the
    state it saved; a failure here is only a warning (the run's own error is the one to see)."""
    from .workflow import history
    from .workflow import report as reports

    try:
        state = history.own_run(sessions.store.folder, loaded.path, loaded.name, os.getpid())
        if state is None:  # it never started: another process drives it, say
            return
        if report_md is not None:
            reports.write_markdown(Path(report_md), state, loaded, file)
        reports.publish_ci(state, loaded, os.environ, sys.stderr, sys.stderr)
    except (ClaudePersistError, OSError) as exc:
        print(f"claude-persist: warning: no summary of the stopped run: {exc}",
              file=sys.stderr, flush=True)


RUNS_HELP = {
    "run_id": "the run to show (runs lists them)",
    "workflow": "the workflow file, when runs of two files share the id",
    "older_than": "remove runs whose last change is older than this: 30d, 12h, 90m, 2w",
    "dry_run": "say what would be removed; remove nothing",
    "turns": "show only the last N turns",
    "session_id": "a claude session id (UUID) instead of --name",
}


# -- shared store: --store, sync, lease ---------------------------------------------------------
#
# The store comes from --store URL, else CLAUDE_PERSIST_STORE, else store: in the configuration
# (flag > environment > configuration). The flag is added to the tasks below by persist_task
# and read by open_sessions, so that the task bodies stay as they are.

STORE_TASKS = frozenset({
    "create", "resume", "fork", "adopt", "resolve", "list", "delete", "run", "sync", "lease",
    "export", "import",
    "resume-json", "resume-stream", "create-session", "list-sessions", "delete-session"})
STORE_VARIABLE = "CLAUDE_PERSIST_STORE"
HELP["store"] = ("a shared session store every machine sees: s3://BUCKET/PREFIX or "
                 "dir:/FOLDER (default: CLAUDE_PERSIST_STORE, then store: in the "
                 "configuration)")
HELP["break_"] = "remove the lease, whoever holds it (its holder's next write fails)"
_STORE_FLAG: contextvars.ContextVar[str | None] = contextvars.ContextVar("store", default=None)


def store_setting(cfg: dict[str, Any]) -> tuple[str | None, str]:
    """The store URL and where it came from: --store, then the environment, then config."""
    flag = _STORE_FLAG.get()
    # Set but empty is refused, never read as "no store": an empty CI secret must not send a
    # job's sessions to this machine's mapping file alone.
    if flag is not None and not flag.strip():
        raise UsageError("--store is empty: give a store URL (s3://BUCKET/PREFIX or "
                         "dir:/FOLDER), or leave the flag out")
    if flag:
        return flag, "--store"
    value = os.environ.get(STORE_VARIABLE)
    if value is not None and not value.strip():
        raise UsageError(f"{STORE_VARIABLE} is set but empty (an empty CI secret?); set it to "
                         "a store URL (s3://BUCKET/PREFIX or dir:/FOLDER), or unset it to use "
                         "no store")
    if value:
        return value, STORE_VARIABLE
    value = cfg.get("store")
    if value is not None and not isinstance(value, str):
        raise UsageError(f"store: {value!r} in the configuration is not a store URL "
                         "(s3://BUCKET/PREFIX or dir:/FOLDER)")
    return (value or None), "store: in the configuration"


def _with_store_flag(edge: Callable[..., Any], task_name: str) -> Callable[..., Any]:
    """The task with a --store flag, which open_sessions reads; a turn that finished before
    its push to the store failed is still printed."""

    @functools.wraps(edge)
    def with_store(c: Context, *args: Any, store: str | None = None, **kwargs: Any) -> Any:
        token = _STORE_FLAG.set(store)
        try:
            return _print_kept_turn(edge, task_name, c, *args, **kwargs)
        finally:
            _STORE_FLAG.reset(token)

    return with_store


def _print_kept_turn(edge: Callable[..., Any], task_name: str, c: Context, *args: Any,
                     **kwargs: Any) -> Any:
    try:
        return edge(c, *args, **kwargs)
    except Exit as exc:
        finished = getattr(exc.__cause__, "result", None)
        streamed = kwargs.get("stream") or task_name == "resume-stream"
        if isinstance(finished, TurnResult) and not streamed:
            plain = finished.session_id if task_name.startswith("create") else finished.text
            with contextlib.suppress(BrokenPipeError):
                show(finished, json=bool(kwargs.get("json") or task_name == "resume-json"),
                     stream=False, plain=plain)
        raise


def sync(c: Context, workspace: str | None = None, mapping_file: str | None = None,
         json: bool = False) -> None:
    """With a shared store: push the sessions this machine has and the store lacks or is
    behind on (a push that failed after a turn), and pull those the store has and this machine
    lacks or is behind on. Prints each name and what was done; exit 75 if a record of the
    store could not be read (that name was skipped, the others done), else 4 if any
    conflicted."""
    from .errors import StoreConflictError, StoreRecordError

    sessions = open_sessions(c, workspace, mapping_file, None)
    done = sessions.sync()
    if json:
        print_json({"sessions": [{"name": n, "done": d} for n, d in done]})
    else:
        for name, what in done:
            print(f"{name}  {what}", flush=True)
    skipped = [n for n, d in done if d.startswith("skipped")]
    if skipped:
        raise StoreRecordError(f"sync skipped {len(skipped)} session(s) whose records the "
                               f"store could not read: {', '.join(skipped)} (see above)")
    conflicts = [n for n, d in done if d.startswith("conflict")]
    if conflicts:
        raise StoreConflictError(f"sync left {len(conflicts)} session(s) as they were: "
                                 f"{', '.join(conflicts)} (see above)")


def lease(c: Context, name: str | None = None, break_: bool = False, json: bool = False,
          workspace: str | None = None, mapping_file: str | None = None) -> None:
    """Show who holds a session's lease in the shared store and until when; --break removes
    it (for a holder that is gone; a live holder's next write then fails with exit 4)."""
    import time

    from .remote.lease import UNREADABLE, break_lease, read_lease

    sessions = open_sessions(c, workspace, mapping_file, None)
    if sessions.shared is None:
        raise UsageError("lease needs a shared store: --store URL, CLAUDE_PERSIST_STORE, or "
                         "store: in the configuration")
    from .remote.shared import store_name

    name = store_name(validate.name(name))
    store = sessions.shared.store
    info = break_lease(store, name) if break_ else read_lease(store, name)
    if break_ and info is not None and info.note == UNREADABLE:
        if json:
            print_json({"name": name, "broken": True, "lease": None})
        else:
            print(f"{name}: removed an unreadable lease record", flush=True)
        return
    if info is None and sessions.shared.entry(name) is None:
        raise sessions.shared.not_found(name)  # not "free": there is no such session
    if json:
        print_json({"name": name, "broken": break_ and info is not None,
                    "lease": None if info is None else info.to_json()})
        return
    if info is None:
        print(f"{name}: no lease (free)", flush=True)
        return
    left = info.expires_at - time.time()
    state = f"expires in {left:.0f}s" if left > 0 else f"expired {-left:.0f}s ago"
    verb = "broke the lease of" if break_ else "held by"
    print(f"{name}: {verb} {info.holder}, {state}"
          f"{f' ({info.note})' if info.note else ''}", flush=True)


# -- the collection -----------------------------------------------------------------------------

ns = Collection("claude_persist")
for _task in (
    persist_task(create, aliases=("create-session",)),
    persist_task(adopt),
    persist_task(resume),
    persist_task(fork),
    persist_task(resolve),
    persist_task(list_, name="list", aliases=("list-sessions",)),
    persist_task(delete, aliases=("delete-session",)),
    persist_task(resume, name="resume-json", preset={"json": True, "stream": False},
                 doc="Resume a session and print the result as one JSON object (seed stage)."),
    persist_task(resume, name="resume-stream", preset={"stream": True, "json": False},
                 doc="Resume a session, printing claude's stream-json lines as they arrive "
                     "(seed stage)."),
    persist_task(delete, name="delete-all-sessions",
                 preset={"all_": True, "name": None, "session_id": None},
                 doc="Forget every name of the workspace with --yes (seed stage; transcripts "
                     "stay)."),
    persist_task(export, iterable=("name",), helps={
        "name": "a session to export (repeatable)",
        "all_": "export every session of the workspace",
        "output": "write the bundle to FILE ('-', or no -o: standard output)"}),
    persist_task(import_, name="import", positional=("file",), iterable=("as_",), helps={
        "file": "the bundle (made by export), or '-' for standard input",
        "force": "take the bundle's copies even where this machine has turns it lacks (the "
                 "local transcript is kept beside it), and names that map elsewhere here",
        "as_": "import the bundle's session OLD under the name NEW: --as OLD=NEW "
               "(repeatable)"}),
    persist_task(run, positional=("file",), iterable=("var",)),
    persist_task(validate_, name="validate", positional=("file",), iterable=("var", "more")),
    persist_task(runs, helps=RUNS_HELP),
    persist_task(runs_show, name="runs-show", positional=("run_id",), helps=RUNS_HELP),
    persist_task(runs_prune, name="runs-prune", helps=RUNS_HELP),
    persist_task(show_session, name="show", helps=RUNS_HELP),
    persist_task(sync),
    persist_task(lease, helps={"json": "print the lease as one JSON object"}),
):
    ns.add_task(_task)
ns.configure({"claude_persist": dict(CONFIG_DEFAULTS)})
