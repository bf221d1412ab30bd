"""Per-call settings, and the one merge of their defaults.

A claude call is decided by its session, its prompt and a :class:`CallSettings`: model, effort,
role, structured-output schema, turn and budget caps, extra claude arguments, and the limits
(deadline, idle timeout, lock timeout). The API's options, the argv builder, workflow steps, their
fingerprints, the dry run and the tasks' help all read this one dataclass; each field's metadata
says how it reaches claude (``argv``), whether a session remembers it (``stored``), whether
configuration may set it (``config``), and its help text. Adding a claude flag is a field here,
a parameter of the tasks that take it, and a key in the workflow schema.

The merge has one precedence, used by the tasks, the API, workflow runs and dry runs alike:
explicit flag, then the workflow step, then the session's stored value, then configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import UsageError


def _meta(help: str, *, argv: str | None = None, stored: str | None = None,
          config: bool = False, flag: str | None = None, cli: bool = True) -> dict[str, Any]:
    return {"help": help, "argv": argv, "stored": stored, "config": config, "flag": flag,
            "cli": cli}


@dataclass(frozen=True)
class CallSettings:
    """Everything that decides one claude call besides its session and prompt.

    ``None`` (or an empty ``extra_args``) means "not set here": :func:`merge` takes the value
    from the next layer down.
    """

    model: str | None = field(default=None, metadata=_meta(
        "model for this call and the session's default from now on",
        argv="--model", stored="last_model", config=True))
    effort: str | None = field(default=None, metadata=_meta(
        "reasoning effort: low, medium, high, xhigh, max (kept for later turns)",
        argv="--effort", stored="last_reasoning_effort", config=True))
    role: str | None = field(default=None, metadata=_meta(
        "role file (.md) appended to the system prompt on every turn",
        argv="--append-system-prompt-file", stored="role", config=True))
    json_schema: str | None = field(default=None, metadata=_meta(
        "a JSON Schema the answer must follow (structured output)", argv="--json-schema"))
    max_turns: int | None = field(default=None, metadata=_meta(
        "stop claude after N agentic turns", argv="--max-turns"))
    max_budget_usd: float | None = field(default=None, metadata=_meta(
        "stop claude when this call has spent USD", argv="--max-budget-usd"))
    include_partial: bool | None = field(default=None, metadata=_meta(
        "with --stream: include partial message events", argv="--include-partial-messages",
        flag="partial"))
    extra_args: tuple[str, ...] = field(default=(), metadata=_meta(
        "arguments handed to claude as they are (after -- on the command line)", cli=False))
    deadline: float | None = field(default=None, metadata=_meta(
        "stop the call after this long (exit 124): seconds, or 90s, 15m, 2h",
        config=True))
    idle_timeout: float | None = field(default=None, metadata=_meta(
        "stop the call after this long without output (exit 124)", config=True))
    lock_timeout: float | None = field(default=None, metadata=_meta(
        "wait at most this long for a session another process is using (exit 4)",
        config=True))

    def checked(self, base: Path) -> CallSettings:
        """Checked and normalised (effort lower-cased, role made absolute against ``base``), so
        that a bad value fails before any lock is waited for or any process started."""
        from . import validate  # validate needs the claude command's constants, which need us

        return replace(
            self,
            model=validate.model(self.model, "model"),
            effort=validate.effort(self.effort, "effort"),
            role=validate.role_file(self.role, base, "role"),
            deadline=validate.seconds(self.deadline, "deadline"),
            idle_timeout=validate.seconds(self.idle_timeout, "idle timeout"),
            lock_timeout=validate.seconds(self.lock_timeout, "lock timeout", allow_zero=True),
            max_turns=_positive_int(self.max_turns, "max turns"),
            max_budget_usd=_positive_number(self.max_budget_usd, "max budget (USD)"),
            extra_args=_extra_args(self.extra_args),
            json_schema=_json_schema(self.json_schema),
        )

    def argv(self) -> list[str]:
        """The claude flags for these settings, each as ``--flag=value`` (a value starting with
        ``-`` can then never be read as a flag), then ``extra_args``."""
        out: list[str] = []
        for spec in FIELDS:
            flag, value = spec.metadata["argv"], getattr(self, spec.name)
            if flag is None or value is None or value is False:
                continue
            if value is True:
                out.append(flag)
            elif isinstance(value, float):
                out.append(f"{flag}={value:g}")
            else:
                out.append(f"{flag}={value}")
        out.extend(self.extra_args)
        return out

    def fingerprint_data(self) -> dict[str, Any]:
        """What a workflow step's fingerprint covers: every setting that changes the answer
        (limits do not)."""
        return {spec.name: getattr(self, spec.name) for spec in FIELDS
                if spec.metadata["argv"] is not None or spec.name == "extra_args"}

    def to_json(self) -> dict[str, Any]:
        """The settings that are set, as JSON."""
        return {spec.name: (list(value) if isinstance(value, tuple) else value)
                for spec in FIELDS
                if (value := getattr(self, spec.name)) not in (None, ())}


FIELDS = fields(CallSettings)
#: Settings a session remembers, and the mapping entry's key for each.
STORED_KEYS: dict[str, str] = {f.name: f.metadata["stored"] for f in FIELDS
                               if f.metadata["stored"]}
#: Settings that configuration (invoke.yaml, INVOKE_CLAUDE_PERSIST_*) may set.
CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.metadata["config"])
#: Help text of each setting, by the task parameter that sets it.
HELP: dict[str, str] = {(f.metadata["flag"] or f.name): f.metadata["help"] for f in FIELDS}
#: The settings that are flags of the calling tasks (create, resume, fork), by parameter name.
CLI_FLAGS: dict[str, str] = {(f.metadata["flag"] or f.name): f.name for f in FIELDS
                             if f.metadata["cli"]}


def from_flags(flags: Mapping[str, Any], extra_args: tuple[str, ...] = ()) -> CallSettings:
    """The explicit layer, from the calling tasks' flags (as :data:`CLI_FLAGS` names them);
    a flag left at its default sets nothing."""
    values: dict[str, Any] = {name: flags.get(flag) or None for flag, name in CLI_FLAGS.items()}
    return CallSettings(**values, extra_args=extra_args)


def merge(*layers: CallSettings | None) -> CallSettings:
    """The one merge: the first layer that sets a value wins, in the order given
    (explicit flag, workflow step, the session's stored value, configuration).

    ``extra_args`` add up instead, lowest layer first, so that a step's ``args`` extend the
    workflow's and configuration's rather than replace them.
    """
    present = [layer for layer in layers if layer is not None]
    values: dict[str, Any] = {}
    for spec in FIELDS:
        if spec.name == "extra_args":
            values[spec.name] = tuple(arg for layer in reversed(present)
                                      for arg in layer.extra_args)
            continue
        values[spec.name] = next((v for layer in present
                                  if (v := getattr(layer, spec.name)) is not None), None)
    return CallSettings(**values)


def from_stored(entry: object | None) -> CallSettings:
    """The settings a session's mapping entry (a ``SessionEntry``) remembers: model, effort,
    role."""
    if entry is None:
        return CallSettings()
    values: dict[str, Any] = {name: value for name, key in STORED_KEYS.items()
                              if isinstance(value := getattr(entry, key, None), str) and value}
    return CallSettings(**values)


def to_stored(settings: CallSettings) -> dict[str, str]:
    """The mapping entry's keys for the settings a session remembers."""
    return {key: value for name, key in STORED_KEYS.items()
            if (value := getattr(settings, name))}


def remembered(settings: CallSettings) -> CallSettings:
    """Only the settings a session remembers after a call made with ``settings``."""
    return CallSettings(**{name: getattr(settings, name) for name in STORED_KEYS})


def from_config(section: Mapping[str, Any]) -> CallSettings:
    """The configuration layer, from Invoke's ``claude_persist`` section (or any mapping)."""
    values: dict[str, Any] = {key: section.get(key) for key in CONFIG_KEYS}
    return CallSettings(**values)


def digest(settings: CallSettings) -> str:
    """A short, stable hash of the settings that change a call's answer."""
    text = json.dumps(settings.fingerprint_data(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Flags claude-persist itself sets on every call: extra arguments may not change them (the
#: output must stay stream-json, the session the one named).
MANAGED_FLAGS = ("-p", "--print", "--output-format", "--input-format", "--verbose", "-r",
                 "--resume", "-c", "--continue", "--session-id", "--fork-session")


def _extra_args(args: tuple[str, ...]) -> tuple[str, ...]:
    out = tuple(str(arg) for arg in args)
    for arg in out:
        if arg.split("=", 1)[0] in MANAGED_FLAGS:
            raise UsageError(f"extra claude argument {arg}: claude-persist sets that flag "
                             "itself on every call; leave it out")
    return out


def _json_schema(schema: str | None) -> str | None:
    if schema is None:
        return None
    try:
        json.loads(schema)
    except ValueError as exc:
        raise UsageError(f"the JSON schema is not valid JSON: {exc}") from exc
    return schema


def _positive_int(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{what} must be a whole number of at least 1, not {value!r}")
    return value


def _positive_number(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UsageError(f"{what} must be a number above 0, not {value!r}")
    return float(value)
