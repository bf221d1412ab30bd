"""A fake ``claude`` CLI for offline tests: ``python -m claude_persist.testing.fake_claude``.

It follows the observed facts of the real CLI in headless mode (flags, output shapes, errors,
signals) closely enough to drive claude-persist end to end, and keeps its transcripts where the
real CLI does: ``<config>/projects/<the cwd, encoded>/<session id>.jsonl`` (the config folder is
``$CLAUDE_CONFIG_DIR``, else ``~/.claude``), one JSON object per line, appended to, found by id
from any folder. So export and import can be tried offline: set ``CLAUDE_CONFIG_DIR`` to keep its
sessions out of your own ``~/.claude``. Each reply says how many user turns the session has, so
a test can see that a resume (or an import) carried the history. Point ``CLAUDE_CMD`` at it to
try a workflow without an account or a network. ``$FAKE_CLAUDE_HOME`` (default
``<temp>/claude-persist-fake-<uid>``) holds only the counts ``error_times`` needs.

Switches, from the environment (``FAKE_CLAUDE_<KEY>``) or per call from a ``[fake key=value ...]``
marker in the prompt (the marker wins; values have no spaces):

``delay=S``          sleep S seconds before answering (after the init line)
``hang=1``           print the init line, then never answer
``hang_after=1``     print the result, then never exit
``silence=S``        print part of the answer, fall silent for S seconds, then finish
``stderr_bytes=N``   write N bytes of noise to stderr first
``garbage=1``        print lines that are not JSON instead of stream-json, exit 0
``error=STATUS``     fail as an API error with that HTTP status (401, 429, 500, 529)
``error_times=N``    with ``error``: fail only the first N calls with this prompt, then answer
``lines=N``          add N assistant lines of ``line_bytes`` bytes (default 200) each
``line_interval=S``  sleep S seconds before each of those lines (a paced stream)
``tools=A,B``        before those lines, one assistant line per name with a ``tool_use`` block
                     (paced by ``line_interval`` too), as a turn that uses tools streams them
``cost=USD``         what the call costs (default 0.0125)
``cost_mode=M``      ``cumulative`` (2.1.330: a resume reports the session total) or ``call``
``version=V``        behave as that CLI version (default: the one below); 2.1.197 and older
                     report per-call costs, replay no system prompt, and have no
                     ``model_usage_since_last_result`` and no ``--system-prompt-snapshot``
``report_id=TEXT``   say TEXT as the session id in the init and result lines
``flood=BYTES``      print BYTES bytes without a newline before the answer (a runaway line)
``ignore_signals=1`` ignore SIGINT and SIGTERM (only SIGKILL stops it); ``=int``: SIGINT only
``exit_empty=1``     exit 0 with no output at all (what SIGINT leaves behind)
``child=1``          start a grandchild that sleeps in the same process group
``subagent=1``       leave a subagent's transcript in ``<id>/subagents/`` beside the transcript
``tool_output=N``    leave an N-byte tool output in ``<id>/tool-results/``, as a big one does

The system prompt snapshot of 2.1.330 and later is followed: the role of a session's first
call (``--append-system-prompt[-file]``) is recorded and is the one that reaches the "model" on
every later call, whatever role that call passes, unless it passes
``--system-prompt-snapshot=off`` (then its own role, for that call only). The reply names the
role that reached the model.

``FAKE_CLAUDE_LOG=FILE`` appends one JSON line per call (argv, pid, process group, cwd, the
prompt's size and start, times, the role passed and the role sent) so tests can check what was
run and when, and the W3C ``TRACEPARENT`` it was given (``traceparent``, None without).
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time (mypy reads this name as its own)
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
    from typing import Any, NoReturn
else:
    import _signal as signal  # what signal wraps in enums; importing enum costs more than a call

# Every test suite starts this fake hundreds of times, so it imports only what a call needs
# from the standard library: no pathlib, typing or uuid, and nothing of claude_persist (it models
# another program, the CLI, whose file layout it reads its own way: see project_folder). Not even
# json or re: json imports re, and re imports enum, functools and collections, which together
# took longer than the interpreter's own start; the fake speaks JSON through json's C half
# (see _lean_json) and reads its markers and ids without patterns.

VERSION = "2.1.332"
MARKER = "[fake "
EFFORTS = {"low", "medium", "high", "xhigh", "max"}
ALIASES = {"opus": "claude-opus-4-1", "sonnet": "claude-sonnet-4-5", "haiku": "claude-haiku-4-5"}
DEFAULT_MODEL = "claude-sonnet-4-5"
VALUE_FLAGS = {
    "--output-format", "--resume", "-r", "--session-id", "--name", "-n", "--model", "--effort",
    "--append-system-prompt", "--append-system-prompt-file", "--system-prompt",
    "--system-prompt-file", "--max-turns", "--max-budget-usd", "--json-schema",
    "--permission-mode", "--allowedTools", "--allowed-tools", "--tools", "--add-dir",
    "--settings", "--disallowedTools", "--disallowed-tools", "--mcp-config",
    "--system-prompt-snapshot",
}
BOOL_FLAGS = {
    "-p", "--print", "--verbose", "--include-partial-messages", "--fork-session", "--bare",
    "--no-session-persistence", "--dangerously-skip-permissions", "-c", "--continue",
}
API_ERRORS = {
    401: "Invalid API key · Please run /login",
    403: "API Error: 403 Forbidden",
    429: "API Error: 429 Rate limited. Please try again later.",
    500: "API Error: 500 Internal server error",
    529: "API Error: 529 Overloaded. Please try again later.",
}


def _lean_json() -> tuple[Callable[[str], Any], Callable[[Any], str]]:
    """``json.loads`` and ``json.dumps`` (their default arguments) made of json's C accelerator
    alone. Where it is missing, or answers differently (another Python), json itself."""
    try:
        from _json import encode_basestring_ascii, make_encoder, make_scanner
    except ImportError:
        import json

        return json.loads, json.dumps

    class Context:  # what the scanner reads from a json.JSONDecoder
        strict = True
        object_hook = object_pairs_hook = None
        parse_float, parse_int = float, int
        parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                          "NaN": float("nan")}.__getitem__

    scan = make_scanner(Context())  # type: ignore[arg-type]  # typeshed: the class itself

    def not_json(value: object) -> None:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    def loads(text: str) -> Any:
        text = text.strip(" \t\n\r")
        try:
            value, end = scan(text, 0)
        except StopIteration:
            raise ValueError(f"not JSON: {text[:80]!r}") from None
        if end != len(text):
            raise ValueError(f"not JSON: extra data after {text[:end][-80:]!r}")
        return value

    def dumps(value: Any) -> str:
        return "".join(make_encoder({}, not_json, encode_basestring_ascii, None, ": ", ", ",
                                    False, False, True)(value, 0))

    sample = {"a": [1, 2.5, "\u00e9\n\"", None, True, False], "b": {}}
    try:
        if dumps(sample) == '{"a": [1, 2.5, "\\u00e9\\n\\"", null, true, false], "b": {}}' \
                and loads(dumps(sample)) == sample:
            return loads, dumps
    except Exception:  # any difference: take the module that knows its Python
        pass
    import json

    return json.loads, json.dumps


json_loads, json_dumps = _lean_json()


def split_markers(prompt: str) -> tuple[list[str], str]:
    """The insides of the prompt's ``[fake ...]`` markers, and the prompt without them."""
    markers, rest, at = [], [], 0
    while (start := prompt.find(MARKER, at)) != -1:
        end = prompt.find("]", start + len(MARKER))
        if end == -1:
            break
        markers.append(prompt[start + len(MARKER):end])
        rest.append(prompt[at:start])
        at = end + 1
    rest.append(prompt[at:])
    return markers, "".join(rest)


def is_uuid(text: str) -> bool:
    """``8-4-4-4-12`` hex digits, either case, as the CLI takes a session id."""
    parts = text.split("-")
    return [len(part) for part in parts] == [8, 4, 4, 4, 12] and all(
        char in "0123456789abcdefABCDEF" for part in parts for char in part)


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    raise SystemExit(code)


def parse_args(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    opts: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            if key not in VALUE_FLAGS:
                fail(f"error: unknown option '{key}'")
            opts[key] = value
        elif arg in VALUE_FLAGS:
            if i + 1 >= len(argv):
                fail(f"error: option '{arg}' argument missing")
            opts[arg] = argv[i + 1]
            i += 1
        elif arg in BOOL_FLAGS:
            opts[arg] = True
        elif arg.startswith("-"):
            fail(f"error: unknown option '{arg}'")
        else:
            positional.append(arg)
        i += 1
    for short, long in (("-r", "--resume"), ("-n", "--name"), ("--print", "-p")):
        if short in opts:
            opts.setdefault(long, opts.pop(short))
    return opts, positional


def switches(prompt: str) -> dict[str, str]:
    found = {key[len("FAKE_CLAUDE_"):].lower(): value for key, value in os.environ.items()
             if key.startswith("FAKE_CLAUDE_")}
    for marker in split_markers(prompt)[0]:
        for token in marker.split():
            key, _, value = token.partition("=")
            found[key.lower()] = value or "1"
    return found


# subprocess, tempfile and hashlib are imported where needed, and ids are made without the uuid
# module (which loads platform).


def _new_id() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` makes it."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def home() -> str:
    """The fake's own folder, for what the real CLI has no file for (``error_times`` counts)."""
    root = os.environ.get("FAKE_CLAUDE_HOME")
    if not root:
        import tempfile

        root = os.path.join(tempfile.gettempdir(), f"claude-persist-fake-{os.getuid()}")
    os.makedirs(root, exist_ok=True)
    return root


# Sessions are kept where the real CLI keeps them: ``<config>/projects/<cwd encoded>/<id>.jsonl``,
# one JSON object per line, only ever appended to. The line types are the real CLI's where it
# has one (user, assistant, custom-title, cost-state); ``system-prompt-snapshot`` is the fake's
# own record of the role it replays.


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def projects_root() -> str:
    """``<config>/projects``: the config folder is ``CLAUDE_CONFIG_DIR``, else ``~/.claude``."""
    config = os.environ.get("CLAUDE_CONFIG_DIR")
    config = os.path.abspath(config) if config else os.path.join(
        os.environ.get("HOME") or os.path.expanduser("~"), ".claude")
    return os.path.join(config, "projects")


def project_folder(cwd: str) -> str:
    """The cwd's project folder, named as the CLI names it: each UTF-16 code unit of the path
    that is not an ASCII letter or digit becomes ``-``; a name past 200 characters is cut there
    and followed by ``-`` and the base-36 digits of the absolute value of the path's Java
    string hash. (claude_persist.transcripts reads the same rule on its own: the tests see
    the two agree, and the contract suite checks that one against the real CLI.)"""
    utf16 = cwd.encode("utf-16-le", "surrogatepass")
    codes = [utf16[i] | utf16[i + 1] << 8 for i in range(0, len(utf16), 2)]
    name = "".join(chr(c) if c < 0x80 and chr(c).isalnum() else "-" for c in codes)
    if len(name) > 200:
        java = 0
        for c in codes:
            java = (java * 31 + c) % (1 << 32)
        magnitude = abs(java - (1 << 32) if java >> 31 else java)
        digits = ""
        while True:
            magnitude, digit = divmod(magnitude, 36)
            digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
            if not magnitude:
                break
        name = f"{name[:200]}-{digits}"
    return os.path.join(projects_root(), name)


def find_transcript(session_id: str) -> str | None:
    """The transcript of ``session_id``: under the cwd's project folder, else in any project
    folder (the real CLI finds a session by id wherever it is), the first regular file in
    folder-name order."""
    file_name = session_id + ".jsonl"
    here = os.path.join(project_folder(os.getcwd()), file_name)
    if os.path.isfile(here) and not os.path.islink(here):
        return here
    try:
        projects = sorted(os.scandir(projects_root()), key=lambda entry: entry.name)
    except OSError:
        return None
    for project in projects:
        there = os.path.join(project.path, file_name)
        if project.is_dir(follow_symlinks=False) and os.path.isfile(there) \
                and not os.path.islink(there):
            return there
    return None


def read_session(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A transcript's lines folded into the session the fake works on."""
    path = os.fspath(path)
    session_id = os.path.basename(path).rsplit(".", 1)[0]
    session: dict[str, Any] = {"session_id": session_id, "turns": [], "name": None,
                               "model": None, "total_cost_usd": 0.0, "path": path,
                               "last_uuid": None}
    with open(path, encoding="utf-8") as handle:
        lines = [json_loads(line) for line in handle if line.strip()]
    session["lines"] = lines
    for record in lines:
        kind = record.get("type")
        if kind in ("user", "assistant"):
            message = record.get("message") or {}
            content = message.get("content")
            text = content if isinstance(content, str) else " ".join(
                block.get("text", "") for block in content or [] if isinstance(block, dict))
            session["turns"].append({"role": kind, "text": text})
            session["last_uuid"] = record.get("uuid")
            session.setdefault("cwd", record.get("cwd"))
            session["model"] = record.get("model") or message.get("model") or session["model"]
        elif kind == "custom-title":
            session["name"] = record.get("customTitle")
        elif kind == "system-prompt-snapshot":
            session["system_snapshot"] = record.get("text")
        elif kind == "cost-state":
            session["total_cost_usd"] = float(record.get("totalCostUSD") or 0.0)
            session["model_costs"] = {model: float(usage.get("costUSD") or 0.0) for model, usage
                                      in (record.get("modelUsage") or {}).items()}
    return session


def load(session_id: str) -> dict[str, Any] | None:
    path = find_transcript(session_id)
    return read_session(path) if path is not None else None


def append(session: dict[str, Any], *records: dict[str, Any]) -> None:
    """Append lines to the session's transcript (made 0600 in its project folder if new)."""
    path: str | None = session.get("path")
    if path is None:
        folder = project_folder(os.getcwd())
        os.makedirs(folder, exist_ok=True)
        path = session["path"] = os.path.join(folder, session["session_id"] + ".jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write("".join(json_dumps(record) + "\n" for record in records))


def message_line(session: dict[str, Any], role: str, text: str) -> dict[str, Any]:
    """A user or assistant line, shaped as the real CLI's (the keys the fake reads back)."""
    record_id = _new_id()
    content: Any = text if role == "user" else [{"type": "text", "text": text}]
    record = {"parentUuid": session.get("last_uuid"), "isSidechain": False, "type": role,
              "message": {"role": role, "content": content}, "uuid": record_id,
              "timestamp": _now_iso(), "cwd": os.getcwd(),
              "sessionId": session["session_id"], "version": VERSION,
              "model": session["model"]}
    if role == "assistant":
        record["message"]["model"] = session["model"]
    session["last_uuid"] = record_id
    session["turns"].append({"role": role, "text": text})
    return record


def cost_line(session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "cost-state", "sessionId": session["session_id"],
            "totalCostUSD": session.get("total_cost_usd", 0.0),
            "modelUsage": {model: {"costUSD": spent}
                           for model, spent in (session.get("model_costs") or {}).items()}}


def find_by_title(title: str) -> dict[str, Any] | None:
    import glob

    matches = []
    for path in glob.glob(os.path.join(glob.escape(projects_root()), "*", "*.jsonl")):
        session = read_session(path)
        if session.get("name") == title:
            matches.append((os.stat(path).st_mtime, session))
    return max(matches, key=lambda m: m[0])[1] if matches else None


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def session_folder(session: dict[str, Any], sw: dict[str, str]) -> None:
    """What a turn with a subagent (``subagent=1``) or a big tool output (``tool_output=N``)
    leaves in the folder of the session's id beside its transcript, as the real CLI does."""
    folder = os.path.join(os.path.dirname(session["path"]), session["session_id"])
    tag = _new_id().split("-")[0]
    if sw.get("subagent"):
        agents = os.path.join(folder, "subagents")
        os.makedirs(agents, exist_ok=True)
        _write(os.path.join(agents, f"agent-{tag}.jsonl"), json_dumps(
            {"type": "user", "isSidechain": True, "sessionId": session["session_id"],
             "message": {"role": "user", "content": "a subagent's task"}}) + "\n")
        _write(os.path.join(agents, f"agent-{tag}.meta.json"), json_dumps({"agentType": "fake"}))
    if int(sw.get("tool_output", "0") or 0):
        results = os.path.join(folder, "tool-results")
        os.makedirs(results, exist_ok=True)
        _write(os.path.join(results, f"{tag}.txt"), "o" * int(sw["tool_output"]))


def count_call(prompt: str) -> int:
    """How many calls (this one included) have carried this exact prompt."""
    import hashlib

    counts = os.path.join(home(), "counts")
    os.makedirs(counts, exist_ok=True)
    counter = os.path.join(counts, hashlib.sha256(prompt.encode()).hexdigest())
    with open(counter, "a", encoding="utf-8") as handle:
        handle.write(".")
    return os.path.getsize(counter)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def emit(line: dict[str, Any]) -> None:
    line.setdefault("fake_emitted_at", time.time())
    sys.stdout.write(json_dumps(line) + "\n")
    sys.stdout.flush()


def log(event: str, **fields: Any) -> None:
    target = os.environ.get("FAKE_CLAUDE_LOG")
    if not target:
        return
    record = {"event": event, "pid": os.getpid(), "pgid": os.getpgid(0), "time": time.time(),
              **fields}
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(json_dumps(record) + "\n")


def schema_example(schema: Any) -> Any:
    """A value that fits a (simple) JSON schema, for ``structured_output``."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return schema["enum"][0]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]  # what a schema says a value looks like
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {k: schema_example(v) for k, v in schema.get("properties", {}).items()}
    return {"string": "fake", "integer": 1, "number": 1.0, "boolean": True, "array": [],
            "null": None}.get(str(kind), "fake")


def read_prompt(positional: list[str]) -> str:
    """The positional prompt, then stdin (argument, newline, stdin). With a prompt argument and
    an open but silent stdin, wait 3 s for input, warn, and go on, as the real CLI does."""
    parts = list(positional[:1])
    if not sys.stdin.isatty():
        if positional:
            import select

            ready, _, _ = select.select([sys.stdin], [], [], 3.0)
            if not ready:
                sys.stderr.write("Warning: no stdin data received in 3s, proceeding without "
                                 "it\n")
                return "\n".join(parts)
        data = sys.stdin.read()
        if data:
            parts.append(data)
    return "\n".join(parts)


def model_usage(input_tokens: int, output_tokens: int, cost: float) -> dict[str, Any]:
    """One model's entry of ``modelUsage`` / ``model_usage_since_last_result`` (2.1.330+)."""
    return {"inputTokens": input_tokens, "outputTokens": output_tokens,
            "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0, "webSearchRequests": 0,
            "costUSD": cost, "contextWindow": 200000, "maxOutputTokens": 32000}


def result_line(session: dict[str, Any], text: str, cost: float, **extra: Any) -> dict[str, Any]:
    usage = {"input_tokens": 10 * len(session["turns"]), "output_tokens": 12}
    line: dict[str, Any] = {
        "type": "result", "subtype": "success", "is_error": False, "result": text,
        "session_id": session["session_id"], "num_turns": 1, "duration_ms": 70,
        "total_cost_usd": cost, "stop_reason": "end_turn", "terminal_reason": "completed",
        "usage": usage, "permission_denials": [],
        "modelUsage": {session["model"]: model_usage(usage["input_tokens"], 12, cost)},
    }
    line.update(extra)
    return line


def install_signals(sw: dict[str, str]) -> None:
    if sw.get("ignore_signals"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if sw["ignore_signals"] != "int":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return

    def on_sigint(_sig: int, _frame: object) -> None:
        os._exit(0)  # the real CLI: exit 0, nothing more printed

    def on_sigterm(_sig: int, _frame: object) -> None:
        os._exit(143)

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)


def open_session(opts: dict[str, Any], fmt: str) -> tuple[dict[str, Any], bool]:
    """The session this call works on, and whether it is new. ``pending`` holds the lines a
    new session's transcript starts with."""
    wanted = opts.get("--session-id")
    if wanted is not None and not is_uuid(wanted):
        fail("Error: Invalid session ID. Must be a valid UUID.")
    resume = opts.get("--resume")
    title = opts.get("--name")
    if resume is None:
        if wanted and find_transcript(wanted):
            fail(f"Error: Session ID {wanted} is already in use.")
        sid = wanted or _new_id()
        pending = [{"type": "custom-title", "customTitle": title, "sessionId": sid}] \
            if title else []
        return {"session_id": sid, "turns": [], "cwd": os.getcwd(), "name": title,
                "model": None, "total_cost_usd": 0.0, "pending": pending}, True
    if wanted and not opts.get("--fork-session"):
        fail("Error: --session-id can only be used with --resume if --fork-session is given.")
    found = load(resume) if is_uuid(resume) else find_by_title(resume)
    if found is None:
        message = f"No conversation found with session ID: {resume}"
        if fmt == "stream-json":
            emit({"type": "result", "subtype": "error_during_execution", "is_error": True,
                  "session_id": _new_id(), "errors": [message]})
        fail(message)
    if opts.get("--fork-session"):
        # A copy of the history under the new id, in this cwd's project folder; it keeps the
        # source's running total of cost, as 2.1.330 does.
        sid = wanted or _new_id()
        pending = [{**record, "sessionId": sid} for record in found["lines"]
                   if record.get("type") != "custom-title"]
        if title or found.get("name"):
            pending.insert(0, {"type": "custom-title", "customTitle": title or found["name"],
                               "sessionId": sid})
        forked = dict(found, session_id=sid, turns=list(found["turns"]), path=None,
                      name=title or found.get("name"), pending=pending,
                      model_costs=dict(found.get("model_costs") or {}))
        return forked, True
    return found, False


def main(argv: list[str] | None = None) -> None:
    opts, positional = parse_args(sys.argv[1:] if argv is None else argv)
    fmt = opts.get("--output-format", "text")
    if not opts.get("-p"):
        fail("Error: the fake claude only supports headless mode (-p)")
    if fmt == "stream-json" and not opts.get("--verbose"):
        fail("Error: When using --print, --output-format=stream-json requires --verbose")
    prompt = read_prompt(positional)
    if not prompt.strip():
        fail("Error: Input must be provided either through stdin or as a prompt argument "
             "when using --print")
    sw = switches(prompt)
    version = tuple(int(p) for p in sw.get("version", VERSION).split(".")[:3] if p.isdigit())
    snapshot = opts.get("--system-prompt-snapshot")
    if snapshot is not None and version <= (2, 1, 197):
        fail("error: unknown option '--system-prompt-snapshot'")
    if snapshot is not None and snapshot not in ("on", "off"):
        fail(f"error: option '--system-prompt-snapshot <on|off>' argument '{snapshot}' is "
             "invalid. Allowed choices are on, off.")
    install_signals(sw)
    log("start", argv=sys.argv, cwd=os.getcwd(), stdin_bytes=len(prompt.encode()),
        prompt_head=prompt[:200], effort=opts.get("--effort"), model=opts.get("--model"),
        role_file=opts.get("--append-system-prompt-file"),
        traceparent=os.environ.get("TRACEPARENT"))
    if sw.get("exit_empty"):
        raise SystemExit(0)
    if int(sw.get("stderr_bytes", "0") or 0):
        noise = ("fake claude stderr noise " * 8 + "\n").encode()
        left = int(sw["stderr_bytes"])
        while left > 0:
            sys.stderr.buffer.write(noise[:left])
            left -= len(noise)
        sys.stderr.flush()
    if sw.get("child"):
        import subprocess

        subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    if sw.get("garbage"):
        print("this is not json\n<html>oops</html>", flush=True)
        raise SystemExit(0)

    session, is_new = open_session(opts, fmt)
    model_flag = opts.get("--model")
    session["model"] = ALIASES.get(model_flag, model_flag) if model_flag else (
        session.get("model") or DEFAULT_MODEL)
    effort = (os.environ.get("CLAUDE_CODE_EFFORT_LEVEL") or opts.get("--effort") or "medium")
    if effort.lower() not in EFFORTS:
        sys.stderr.write(f"Warning: unknown effort level '{effort}', using medium\n")
        effort = "medium"
    role_file = opts.get("--append-system-prompt-file")
    role = _read(role_file) if role_file else opts.get("--append-system-prompt")
    sent_role = role  # what reaches the model: the recorded snapshot, unless it is off
    pending: list[dict[str, Any]] = session.pop("pending", [])
    if version > (2, 1, 197) and snapshot != "off":
        if "system_snapshot" in session:
            sent_role = session["system_snapshot"]
        else:
            session["system_snapshot"] = role
            pending.append({"type": "system-prompt-snapshot",
                            "sessionId": session["session_id"], "text": role})
    pending.append(message_line(session, "user", prompt))
    persist = not opts.get("--no-session-persistence")
    if persist:
        append(session, *pending)  # an interrupted turn stays in the transcript, as with the CLI

    reported_id = sw.get("report_id", session["session_id"])
    if fmt == "stream-json":
        emit({"type": "system", "subtype": "init", "session_id": reported_id,
              "model": session["model"], "cwd": os.getcwd(), "tools": [],
              "claude_code_version": sw.get("version", VERSION)})
    flood = int(sw.get("flood", "0") or 0)
    while flood > 0:
        block = min(flood, 1 << 20)
        sys.stdout.write("x" * block)
        flood -= block
    if sw.get("hang"):
        while True:
            time.sleep(3600)
    time.sleep(float(sw.get("delay", "0") or 0))

    user_turns = sum(1 for t in session["turns"] if t["role"] == "user")
    status = int(sw.get("error", "0") or 0)
    if status and sw.get("error_times"):
        status = status if count_call(prompt) <= int(sw["error_times"]) else 0
    cost = float(sw.get("cost", "0.0125"))
    budget = opts.get("--max-budget-usd")
    head = " ".join(split_markers(prompt)[1].split())[:80]
    text = (f"fake reply to turn {user_turns} of session {session['session_id']} "
            f"(model {session['model']}, effort {effort.lower()}"
            f"{', role: ' + sent_role.strip().splitlines()[0][:40] if sent_role else ''}): "
            f"{head}")
    if fmt == "stream-json":
        emit({"type": "assistant", "session_id": session["session_id"],
              "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}})
        if opts.get("--include-partial-messages"):
            emit({"type": "stream_event", "session_id": session["session_id"],
                  "event": {"type": "content_block_delta",
                            "delta": {"type": "text_delta", "text": text}}})
        filler = "x" * int(sw.get("line_bytes", "200"))
        interval = float(sw.get("line_interval", "0") or 0)
        for number, tool in enumerate(t for t in sw.get("tools", "").split(",") if t):
            if interval:
                time.sleep(interval)
            emit({"type": "assistant", "session_id": session["session_id"],
                  "message": {"role": "assistant", "content": [
                      {"type": "tool_use", "id": f"toolu_fake_{number}", "name": tool,
                       "input": {}}]}})
        for index in range(int(sw.get("lines", "0") or 0)):
            if interval:
                time.sleep(interval)
            emit({"type": "assistant", "session_id": session["session_id"], "index": index,
                  "message": {"role": "assistant", "content": [{"type": "text",
                                                                 "text": filler}]}})
        time.sleep(float(sw.get("silence", "0") or 0))

    cumulative = sw.get("cost_mode", "cumulative" if version > (2, 1, 197) else "call"
                        ) == "cumulative"
    extra: dict[str, Any] = {}
    exit_code = 0
    if status:
        extra = {"is_error": True, "api_error_status": status, "terminal_reason": "api_error",
                 "result": API_ERRORS.get(status, f"API Error: {status}")}
        exit_code = 1
        cost = 0.0
    elif budget is not None and cost > float(budget):
        extra = {"subtype": "error_max_budget_usd", "is_error": True}
        exit_code = 1
    else:
        answer = message_line(session, "assistant", text)
        session["total_cost_usd"] = session.get("total_cost_usd", 0.0) + cost
        costs = session.setdefault("model_costs", {})
        costs[session["model"]] = costs.get(session["model"], 0.0) + cost
        if persist:
            session_folder(session, sw)
            append(session, answer, cost_line(session))
    if opts.get("--json-schema") and not status:
        extra["structured_output"] = schema_example(json_loads(opts["--json-schema"]))
    reported = session["total_cost_usd"] if cumulative and not status else cost
    final = result_line(session, text, reported, **extra)
    final["session_id"] = reported_id
    if cumulative and session.get("model_costs"):
        final["modelUsage"] = {model: model_usage(0, 0, spent)  # the session's, per model
                               for model, spent in session["model_costs"].items()}
    if fmt == "stream-json" and version >= (2, 1, 330):
        # This call's own usage per model, in stream-json only (2.1.330+); empty after an error.
        final["model_usage_since_last_result"] = {} if status else {
            session["model"]: model_usage(final["usage"]["input_tokens"], 12, cost)}
    if fmt == "text":
        print(final.get("result", ""), flush=True)
    elif fmt == "json" and opts.get("--verbose"):
        print(json_dumps([{"type": "system", "subtype": "init",
                           "session_id": session["session_id"]},
                          {"type": "assistant", "session_id": session["session_id"]}, final]),
              flush=True)  # json with --verbose: an array of every message
    else:
        emit(final)
    log("end", session_id=session["session_id"], new=is_new, turns=user_turns,
        model=session["model"], effort=effort, role=role, role_sent=sent_role, exit=exit_code)
    if sw.get("hang_after"):
        while True:
            time.sleep(3600)
    raise SystemExit(exit_code)


if __name__ == "__main__":
    main()
