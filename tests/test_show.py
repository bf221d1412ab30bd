"""``show``: a session's conversation from claude's transcript, for sessions the fake CLI made
and for a transcript laid out as the real CLI writes one (a line per content block, tool
calls and their results, meta and sidechain lines, lines we cannot read)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_persist import conversation, terminal, transcripts

from .conftest import Runner

SID = "3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"


def line(kind: str, content: Any, **extra: Any) -> str:
    message: dict[str, Any] = {"role": kind, "content": content}
    if "message_id" in extra:
        message["id"] = extra.pop("message_id")
    if "model" in extra:
        message["model"] = extra.pop("model")
    record = {"type": kind, "message": message, "uuid": str(uuid.uuid4()), "sessionId": SID,
              "timestamp": extra.pop("timestamp", "2026-11-26T10:00:00.000Z"), **extra}
    return json.dumps(record)


def real_layout() -> list[str]:
    """Two turns as the real CLI writes them (the keys it uses; unknown ones are ignored)."""
    return [
        json.dumps({"type": "custom-title", "customTitle": "fixer", "sessionId": SID}),
        line("user", "Fix the failing test.", timestamp="2026-11-26T10:00:00.000Z"),
        line("assistant", [{"type": "thinking", "thinking": "hmm"}], message_id="m1",
             model="claude-opus-4-1"),
        line("assistant", [{"type": "text", "text": "Let me run the tests."}], message_id="m1",
             model="claude-opus-4-1"),
        line("assistant", [{"type": "tool_use", "id": "t1", "name": "Bash",
                            "input": {"command": "make   test\n  -k slow",
                                      "description": "run them"}}], message_id="m1"),
        line("user", [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                       "content": "1 failed"}], toolUseResult={"stdout": "1 failed"}),
        line("assistant", [{"type": "tool_use", "id": "t2", "name": "Edit",
                            "input": {"file_path": "src/calc.py", "old_string": "a",
                                      "new_string": "b"}}], message_id="m2"),
        line("user", [{"type": "tool_result", "tool_use_id": "t2", "content": "ok"}]),
        line("user", "<local-command-stdout>noise</local-command-stdout>", isMeta=True),
        line("user", "a subagent's task", isSidechain=True),
        "{this is not json",
        "[1, 2]",
        line("assistant", [{"type": "text", "text": "Fixed: the sum was off by one."},
                           {"type": "text", "text": "All tests pass now."}],
             message_id="m3", model="claude-opus-4-1"),
        json.dumps({"type": "summary", "summary": "fixing tests", "leafUuid": "x"}),
        line("user", [{"type": "text", "text": "Now explain why."}],
             timestamp="2026-11-26T10:05:00.000Z"),
        line("assistant", [{"type": "text", "text": "Because range() stops early."}],
             message_id="m4", model="claude-sonnet-4-5"),
    ]


def place(workspace: Path, lines: list[str], tail: bytes = b"") -> Path:
    path = transcripts.transcript_path(SID, workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("\n".join(lines).encode() + b"\n" + tail)
    return path


def test_a_transcript_in_the_real_layout(cp: Runner, workspace: Path) -> None:
    place(workspace, real_layout())
    assert cp("adopt", "-n", "fixer", "--session-id", SID).code == 0
    shown = cp("show", "-n", "fixer", "--json")
    assert shown.code == 0, shown.err
    data = shown.json()
    assert (data["name"], data["session_id"], data["turns_total"], data["skipped_lines"]) == (
        "fixer", SID, 2, 2)
    first, second = data["turns"]
    assert first["prompt"] == "Fix the failing test."
    assert first["answer"] == "Fixed: the sum was off by one.\nAll tests pass now."
    assert first["tools"] == [
        {"name": "Bash", "summary": "make test -k slow", "error": True},
        {"name": "Edit", "summary": "src/calc.py", "error": False}]
    assert first["model"] == "claude-opus-4-1"
    assert second == {"index": 2, "timestamp": "2026-11-26T10:05:00.000Z",
                      "prompt": "Now explain why.", "tools": [],
                      "answer": "Because range() stops early.", "model": "claude-sonnet-4-5"}
    assert "skipped 2 of" in shown.err and "2 not JSON" in shown.err
    text = cp("show", "-n", "fixer").out
    assert text.splitlines()[0].startswith(f"session fixer ({SID}): 2 turns; transcript ")
    assert "> Fix the failing test.\n  - Bash: make test -k slow  (error)\n" \
        "  - Edit: src/calc.py\n< Fixed: the sum was off by one.\n  All tests pass now." in text
    last = cp("show", "-n", "fixer", "--turns", "1")
    assert "(the last 1)" in last.out and "Fix the failing" not in last.out
    assert "--- turn 2  2026-11-26T10:05:00.000Z\n> Now explain why." in last.out
    by_id = cp("show", "--session-id", SID, "--turns", "1", "--json").json()
    assert by_id["turns"] == [second]


def test_a_huge_line_is_skipped_not_held(cp: Runner, workspace: Path) -> None:
    huge = line("user", [{"type": "tool_result", "tool_use_id": "t1",
                          "content": "x" * (conversation.MAX_LINE_BYTES + 10)}])
    lines = real_layout()
    place(workspace, [*lines[:6], huge, *lines[6:]])
    assert cp("adopt", "-n", "fixer", "--session-id", SID).code == 0
    shown = cp("show", "-n", "fixer", "--json")
    assert shown.code == 0, shown.err
    data = shown.json()
    assert data["skipped_lines"] == 3 and data["turns_total"] == 2
    assert "1 longer than 8 MiB" in shown.err
    assert data["turns"][0]["answer"].startswith("Fixed:")


@pytest.mark.parametrize("limit", [1, 7, 40, 41, 200, 1 << 20])
def test_line_limits_at_every_boundary(tmp_path: Path, limit: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines cut by the reader's chunks, lines of exactly the limit, a last line without a
    newline: each line is either read whole or skipped, never spliced with its neighbour."""
    monkeypatch.setattr(conversation, "_CHUNK", 16)
    prompts = [f"prompt {i} " + "p" * (i * 7) for i in range(12)]
    records = [line("user", p) for p in prompts]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(records))  # no newline at the end
    reading = conversation.Reading()
    got = [t.prompt for t in conversation.turns(path, reading, max_line_bytes=limit)]
    kept = [p for p, r in zip(prompts, records, strict=True) if len(r.encode()) <= limit]
    assert got == kept
    assert reading.too_long == len(prompts) - len(kept) and reading.malformed == 0
    assert reading.lines == len(prompts)


def test_sessions_made_by_the_fake(cp: Runner) -> None:
    assert cp("create", "-n", "talk", "-p", "Hello there.").code == 0
    assert cp("resume", "-n", "talk", "-p", "And again.").code == 0
    failed = cp("resume", "-n", "talk", "-p", "Once more. [fake error=529]")
    assert failed.code == 1
    data = cp("show", "-n", "talk", "--json").json()
    assert [t["prompt"] for t in data["turns"]] == ["Hello there.", "And again.",
                                                    "Once more. [fake error=529]"]
    assert data["turns"][1]["answer"].startswith("fake reply to turn 2 of session")
    assert data["turns"][2]["answer"] == ""  # the failed call left its prompt only
    assert data["skipped_lines"] == 0
    assert "< (no answer)" in cp("show", "-n", "talk").out


def test_missing_things(cp: Runner, workspace: Path) -> None:
    unknown = cp("show", "-n", "nobody")
    assert unknown.code == 3 and "no session named 'nobody'" in unknown.err
    assert cp("adopt", "-n", "gone", "--session-id", SID).code == 0
    gone = cp("show", "-n", "gone")
    assert gone.code == 3 and "claude has no transcript of session gone" in gone.err
    assert "import BUNDLE" in gone.err
    bad = cp("show", "-n", "gone", "--turns", "0")
    assert bad.code == 2 and "--turns must be at least 1" in bad.err
    assert cp("show", "--session-id", "not-a-uuid").code == 2


def test_control_characters_are_escaped_in_text_not_in_json(cp: Runner,
                                                             workspace: Path) -> None:
    place(workspace, [line("user", "Paint it.\x9b2J"),
                      line("assistant", [{"type": "text", "text": "\x1b[31mred\x1b[0m\nok\tx"}],
                           message_id="m1")])
    assert cp("adopt", "-n", "painter", "--session-id", SID).code == 0
    text = cp("show", "-n", "painter").out
    assert "\x1b" not in text and "\x9b" not in text
    assert "< \\x1b[31mred\\x1b[0m\n  ok\tx" in text and "> Paint it.\\x9b2J" in text
    data = cp("show", "-n", "painter", "--json").json()
    assert data["turns"][0]["answer"] == "\x1b[31mred\x1b[0m\nok\tx"


def test_printable() -> None:
    assert terminal.printable("a\x1b]0;pwned\x07\x1b[2J\nb\tc\r\x7f\x9b") == \
        "a\\x1b]0;pwned\\x07\\x1b[2J\nb\tc\\x0d\\x7f\\x9b"
    assert terminal.printable("a\nb\tc", lines=False) == "a\\x0ab\\x09c"
    assert terminal.printable("plain ünïcode") == "plain ünïcode"


def test_a_count_too_big_is_a_usage_error(cp: Runner, workspace: Path) -> None:
    place(workspace, real_layout())
    assert cp("adopt", "-n", "fixer", "--session-id", SID).code == 0
    for count in ("99999999999999999999", "9" * 5000):
        ran = cp("show", "-n", "fixer", "--turns", count)
        assert ran.code == 2 and "--turns" in ran.err and "internal" not in ran.err, ran.err
    assert cp("show", "-n", "fixer", "--turns", "1000000").code == 0
    (workspace / "wf.yml").write_text("version: 1\nname: w\nsteps:\n  - id: s\n"
                                      "    run: [\"true\"]\n")
    for task in ("run", "validate"):
        ran = cp(task, "wf.yml", "--max-parallel", "99999999999999999999")
        assert ran.code == 2 and "--max-parallel must be at most" in ran.err, ran.err


def test_usage_messages_name_the_faces_own_commands(cp: Runner, inv: Runner) -> None:
    bare = cp("show")
    assert bare.code == 2 and "-n NAME, or --session-id ID" in bare.err, bare.err
    prune = cp("runs", "prune")
    assert prune.code == 2, prune.err
    assert "runs prune needs --older-than AGE, e.g. claude-persist runs prune --older-than " \
        "30d" in prune.err and "runs-prune" not in prune.err
    assert "inv runs-prune --older-than 30d" in inv("runs-prune").err


def test_an_error_message_quoting_control_characters_is_escaped(cp: Runner) -> None:
    ran = cp("run", "a\x1b[2Jb.yml")
    assert ran.code == 2 and "\x1b" not in ran.err and "a\\x1b[2Jb.yml" in ran.err, ran.err
