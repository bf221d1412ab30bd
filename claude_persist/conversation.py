"""A session's conversation, read from claude's transcript: what ``show`` prints.

The transcript's format is the CLI's own and changes between versions, so it is read
tolerantly: only the keys below, every other line and key passed over. A turn starts at a
user line carrying text (not a tool result, not the CLI's meta or sidechain lines); the
assistant lines after it give its tool calls (one summary line each) and its final answer (the
text of its last assistant message that has text). Lines that are not JSON, or longer than
:data:`MAX_LINE_BYTES` (a huge tool result, say), are skipped and counted, never read whole:
memory stays bounded by that limit and by the turns kept (``--turns N`` keeps the last N).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .terminal import printable

if TYPE_CHECKING:
    from .sessions import Sessions

#: A line longer than this is skipped (counted) without being held in memory.
MAX_LINE_BYTES = 8 << 20
#: The most of one prompt or answer kept (the rest is cut, with a mark).
MAX_TEXT_CHARS = 256 << 10
_CHUNK = 1 << 16
#: Tool input keys that say best what a call did, in order of preference.
_TOOL_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description",
              "prompt", "notebook_path", "skill")
TOOL_SUMMARY_CHARS = 160


@dataclass
class ToolCall:
    """One tool call, summarised: its name and the gist of its input."""

    name: str
    summary: str
    error: bool = False

    def line(self) -> str:
        return f"{self.name}: {self.summary}" + ("  (error)" if self.error else "") \
            if self.summary else self.name + ("  (error)" if self.error else "")


@dataclass
class Turn:
    """A user prompt and what came of it."""

    index: int
    prompt: str
    timestamp: str | None = None
    answer: str = ""
    model: str | None = None
    tools: list[ToolCall] = field(default_factory=list)
    _answer_id: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "timestamp": self.timestamp, "prompt": self.prompt,
                "tools": [{"name": t.name, "summary": t.summary, "error": t.error}
                          for t in self.tools],
                "answer": self.answer, "model": self.model}


@dataclass
class Reading:
    """What reading a transcript met besides turns: lines skipped, and why."""

    lines: int = 0
    malformed: int = 0
    too_long: int = 0
    turns: int = 0

    @property
    def skipped(self) -> int:
        return self.malformed + self.too_long


def _lines(handle: IO[bytes], reading: Reading, limit: int) -> Iterator[bytes]:
    """The file's lines, each at most ``limit`` bytes; a longer one is read through in chunks
    and dropped (counted in ``reading.too_long``). A line's pieces are joined once, when its
    end is found: no copying that grows with the square of a line's or a chunk's length."""
    pieces: list[bytes] = []
    size = 0
    dropping = False
    while chunk := handle.read(_CHUNK):
        start = 0
        while (cut := chunk.find(b"\n", start)) >= 0:
            if dropping:
                dropping = False
            else:
                size += cut - start
                reading.lines += 1
                if size > limit:
                    reading.too_long += 1
                else:
                    yield b"".join((*pieces, chunk[start:cut])) if pieces else chunk[start:cut]
            pieces, size = [], 0
            start = cut + 1
        if not dropping and start < len(chunk):
            pieces.append(chunk[start:])
            size += len(chunk) - start
            if size > limit:
                reading.lines += 1
                reading.too_long += 1
                dropping, pieces, size = True, [], 0
    if pieces:
        reading.lines += 1
        yield b"".join(pieces)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "\n[... cut]"


def _text_of(content: Any) -> str | None:
    """A user message's typed text (a string, or its text blocks), None when it holds none
    (tool results only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [str(b["text"]) for b in content
                 if isinstance(b, dict) and b.get("type") == "text"
                 and isinstance(b.get("text"), str)]
        if texts:
            return "\n".join(texts)
    return None


def tool_summary(name: str, given: Any) -> str:
    """The gist of a tool call's input, on one line."""
    if not isinstance(given, dict):
        return ""
    value = next((given[key] for key in _TOOL_KEYS if isinstance(given.get(key), str)), None)
    if value is None:
        value = next((v for v in given.values() if isinstance(v, str)), "")
    text = " ".join(str(value).split())
    return text if len(text) <= TOOL_SUMMARY_CHARS else text[:TOOL_SUMMARY_CHARS - 3] + "..."


def turns(path: Path, reading: Reading | None = None, *,
          max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Turn]:
    """The transcript's turns in order, each yielded once it is complete (so a caller that
    keeps only the last few holds only those)."""
    reading = reading if reading is not None else Reading()
    current: Turn | None = None
    calls: dict[str, ToolCall] = {}
    with path.open("rb") as handle:
        for raw in _lines(handle, reading, max_line_bytes):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                reading.malformed += 1
                continue
            if not isinstance(record, dict):
                reading.malformed += 1
                continue
            kind = record.get("type")
            if kind not in ("user", "assistant") or record.get("isSidechain"):
                continue  # titles, snapshots, summaries, a subagent's lines
            message = record.get("message")
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if kind == "user":
                if record.get("isMeta") or record.get("promptSource") == "system":
                    continue
                text = _text_of(content)
                if text is not None:
                    if current is not None:
                        yield current
                    reading.turns += 1
                    current = Turn(reading.turns, _cut(text), _string(record.get("timestamp")))
                    calls = {}
                elif isinstance(content, list):  # tool results: mark the calls that failed
                    for block in content:
                        if isinstance(block, dict) and block.get("type") == "tool_result" \
                                and block.get("is_error") is True:
                            call = calls.get(str(block.get("tool_use_id")))
                            if call is not None:
                                call.error = True
                continue
            if current is None:
                continue  # an answer before any prompt: nothing to hang it on
            blocks = content if isinstance(content, list) else (
                [{"type": "text", "text": content}] if isinstance(content, str) else [])
            texts = []
            for block in blocks:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    texts.append(block["text"])
                elif block.get("type") == "tool_use":
                    name = str(block.get("name") or "tool")
                    call = ToolCall(name, tool_summary(name, block.get("input")))
                    current.tools.append(call)
                    calls[str(block.get("id"))] = call
            if texts:
                # The CLI writes one line per content block, all under the message's id: text
                # blocks of one message add up; a later message's text replaces them.
                message_id = message.get("id") or record.get("uuid")
                joined = "\n".join(texts)
                if message_id is not None and message_id == current._answer_id:
                    current.answer = _cut(current.answer + "\n" + joined)
                else:
                    current.answer = _cut(joined)
                current._answer_id = message_id
                current.model = _string(message.get("model")) or current.model
    if current is not None:
        yield current


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def last_turns(path: Path, count: int | None, reading: Reading | None = None
               ) -> list[Turn]:
    """The last ``count`` turns (all with None)."""
    kept: deque[Turn] = deque(maxlen=count)
    kept.extend(turns(path, reading))
    return list(kept)


def text(turns_: list[Turn], header: str) -> str:
    """Turns as people read them: each prompt, its tool calls one line each, its answer."""
    out = [header]
    for turn in turns_:
        when = f"  {turn.timestamp}" if turn.timestamp else ""
        out.append(f"\n--- turn {turn.index}{when}")
        out += [f"> {line}" for line in turn.prompt.splitlines() or [""]]
        out += [f"  - {call.line()}" for call in turn.tools]
        if turn.answer:
            out += [f"< {line}" if i == 0 else f"  {line}"
                    for i, line in enumerate(turn.answer.splitlines())]
        else:
            out.append("< (no answer)")
    return printable("\n".join(out))


def transcript_of(sessions: Sessions, name: str | None, session_id: str | None
                  ) -> tuple[str | None, str, Path]:
    """The session's name (None for an id no name maps), id, and transcript: by
    ``session_id`` when given, else by ``name``. Raises ``SessionNotFoundError`` for an
    unknown name, ``TranscriptMissingError`` (exit 3) when claude has no transcript of it."""
    from . import transcripts, validate
    from .errors import TranscriptMissingError, UsageError

    if session_id is None and name is None:
        raise UsageError("show needs a session: -n NAME, or --session-id ID (list shows the "
                         "names)")
    if session_id is not None:
        sid = validate.session_id(session_id)
        entry = next((e for e in sessions.list() if e.session_id == sid), None)
    else:
        entry = sessions.resolve(validate.name(name))
        sid = entry.session_id
    mapped = entry.name if entry is not None else None
    cwd = (entry.cwd if entry is not None else None) or sessions.workspace
    path = transcripts.locate(sid, cwd, sessions.env)
    if path is None:
        expected = transcripts.transcript_path(sid, cwd, sessions.env)
        raise TranscriptMissingError(
            f"claude has no transcript of session {mapped or sid} ({sid}) on this machine; "
            f"it would be {expected}", name=mapped, session_id=sid, expected=expected)
    return mapped, sid, path
