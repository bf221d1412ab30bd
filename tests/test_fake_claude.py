"""The fake CLI follows the observed facts of the real one (shared docs/claude-cli.md), so that
tests through it mean something. Each test is one fact, run as a real process."""

from __future__ import annotations

import ast
import json
import re
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_persist.testing import FAKE_CLAUDE_CMD

FAKE = shlex.split(FAKE_CLAUDE_CMD)


def claude(*args: str, prompt: str | None = "hi", cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FAKE, *args], input=prompt, capture_output=True, text=True,
                          cwd=cwd, timeout=30)


def test_json_is_one_result_line_and_stream_json_needs_verbose(fake_claude: Any) -> None:
    out = claude("-p", "--output-format=json")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1
    assert json.loads(out.stdout)["type"] == "result"
    refused = claude("-p", "--output-format=stream-json")
    assert refused.returncode == 1 and "requires --verbose" in refused.stderr


def test_no_prompt_is_an_error(fake_claude: Any) -> None:
    out = claude("-p", prompt="")
    assert out.returncode == 1 and "Input must be provided" in out.stderr


def test_resume_keeps_the_id_and_sees_the_history(fake_claude: Any) -> None:
    sid = str(uuid.uuid4())
    claude("-p", f"--session-id={sid}", "--output-format=json")
    again = json.loads(claude("-p", f"--resume={sid}", "--output-format=json").stdout)
    assert again["session_id"] == sid and "turn 2" in again["result"]


def test_session_id_reuse_and_non_uuid_are_errors(fake_claude: Any) -> None:
    sid = str(uuid.uuid4())
    claude("-p", f"--session-id={sid}")
    reused = claude("-p", f"--session-id={sid}")
    assert reused.returncode == 1 and f"Session ID {sid} is already in use" in reused.stderr
    assert claude("-p", "--session-id=nope").returncode == 1


def test_unknown_session_in_each_format(fake_claude: Any) -> None:
    sid = str(uuid.uuid4())
    plain = claude("-p", f"--resume={sid}", "--output-format=json")
    assert plain.returncode == 1 and plain.stdout == ""
    assert f"No conversation found with session ID: {sid}" in plain.stderr
    streamed = claude("-p", f"--resume={sid}", "--output-format=stream-json", "--verbose")
    line = json.loads(streamed.stdout.splitlines()[-1])
    assert line["is_error"] and line["subtype"] == "error_during_execution"
    assert "result" not in line and "No conversation found" in line["errors"][0]


def test_fork_makes_a_new_id_with_the_history(fake_claude: Any) -> None:
    sid = str(uuid.uuid4())
    claude("-p", f"--session-id={sid}")
    forked = json.loads(claude("-p", f"--resume={sid}", "--fork-session",
                               "--output-format=json").stdout)
    assert forked["session_id"] != sid and "turn 2" in forked["result"]


def test_model_is_kept_on_resume_but_effort_is_not(fake_claude: Any) -> None:
    sid = str(uuid.uuid4())
    claude("-p", f"--session-id={sid}", "--model=opus", "--effort=max")
    again = json.loads(claude("-p", f"--resume={sid}", "--output-format=json").stdout)
    assert "model claude-opus-4-1" in again["result"] and "effort medium" in again["result"]


def test_api_errors_exit_1_with_a_success_subtype_and_is_error(fake_claude: Any) -> None:
    out = claude("-p", "--output-format=json", prompt="[fake error=529] hi")
    line = json.loads(out.stdout)
    assert out.returncode == 1 and out.stderr == ""
    assert line["subtype"] == "success" and line["is_error"] is True
    assert line["api_error_status"] == 529 and "Overloaded" in line["result"]


def test_sigint_exits_0_with_nothing_and_sigterm_exits_143(fake_claude: Any) -> None:
    for sig, code in ((signal.SIGINT, 0), (signal.SIGTERM, 143)):
        proc = subprocess.Popen([*FAKE, "-p", "--output-format=json"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        proc.stdin.write("[fake delay=30] hi")
        proc.stdin.close()
        # Its start record is logged once its handlers are in place: signal it then, not after
        # a guessed delay that a loaded machine can outlast.
        deadline = time.monotonic() + 60
        while not any(r["event"] == "start" and r["pid"] == proc.pid
                      for r in fake_claude.records()):
            assert time.monotonic() < deadline, "the fake never logged its start"
            time.sleep(0.01)
        proc.send_signal(sig)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=10)
        assert (proc.returncode, out) == (code, "")


def test_unknown_effort_is_only_a_warning(fake_claude: Any) -> None:
    out = claude("-p", "--effort=extreme")
    assert out.returncode == 0 and "Warning" in out.stderr


def test_cost_is_cumulative_for_2_1_330_and_per_call_for_2_1_197(fake_claude: Any) -> None:
    for version, second in (("2.1.330", 0.2), ("2.1.197", 0.1)):
        sid = str(uuid.uuid4())
        marker = f"[fake version={version} cost=0.1] hi"
        claude("-p", f"--session-id={sid}", prompt=marker)
        again = json.loads(claude("-p", f"--resume={sid}", "--output-format=json",
                                  prompt=marker).stdout)
        assert abs(again["total_cost_usd"] - second) < 1e-9, version


def test_json_schema_gives_structured_output(fake_claude: Any) -> None:
    schema = json.dumps({"type": "object", "properties": {"grade": {"enum": ["A", "B"]},
                                                          "score": {"type": "integer"}}})
    out = json.loads(claude("-p", "--output-format=json", f"--json-schema={schema}").stdout)
    assert out["structured_output"] == {"grade": "A", "score": 1}


def test_json_with_verbose_is_an_array_and_text_errors_go_to_stdout(fake_claude: Any) -> None:
    out = claude("-p", "--output-format=json", "--verbose")
    messages = json.loads(out.stdout)
    assert isinstance(messages, list) and messages[-1]["type"] == "result"
    failed = claude("-p", "--output-format=text", prompt="[fake error=401] hi")
    assert failed.returncode == 1 and "Invalid API key" in failed.stdout


def test_a_prompt_argument_with_a_silent_stdin_waits_3_s(fake_claude: Any) -> None:
    proc = subprocess.Popen([*FAKE, "-p", "--output-format=json", "from argv"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    started = time.monotonic()
    out = proc.stdout.read()  # stdin stays open (and silent) until the fake has answered
    took = time.monotonic() - started
    proc.stdin.close()
    err = proc.stderr.read()
    proc.wait(timeout=10)
    assert took >= 2.9 and "no stdin data received in 3s" in err
    assert json.loads(out)["result"].endswith(": from argv")


def _stream(*args: str, prompt: str = "hi") -> dict[str, Any]:
    out = claude("-p", "--output-format=stream-json", "--verbose", *args, prompt=prompt)
    line: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return line


def test_stream_json_carries_the_calls_own_usage_since_2_1_330(fake_claude: Any) -> None:
    sid = str(uuid.uuid4())
    first = _stream(f"--session-id={sid}", "--model=opus", prompt="[fake cost=0.1] hi")
    second = _stream(f"--resume={sid}", "--model=sonnet", prompt="[fake cost=0.25] hi")
    assert first["model_usage_since_last_result"]["claude-opus-4-1"]["costUSD"] == 0.1
    [(model, own)] = second["model_usage_since_last_result"].items()
    assert (model, own["costUSD"]) == ("claude-sonnet-4-5", 0.25)
    assert abs(second["total_cost_usd"] - 0.35) < 1e-9  # the running total
    assert {m: u["costUSD"] for m, u in second["modelUsage"].items()} == \
        {"claude-opus-4-1": 0.1, "claude-sonnet-4-5": 0.25}  # the session's, per model
    failed = _stream(f"--resume={sid}", prompt="[fake error=529] hi")
    assert failed["model_usage_since_last_result"] == {}
    plain = json.loads(claude("-p", f"--resume={sid}", "--output-format=json").stdout)
    assert "model_usage_since_last_result" not in plain  # stream-json only
    older = _stream(prompt="[fake version=2.1.197] hi")
    assert "model_usage_since_last_result" not in older


def _role_sent(*args: str, version: str = "2.1.332") -> str:
    out = claude("-p", "--output-format=json", *args, prompt=f"[fake version={version}] hi")
    assert out.returncode == 0, out.stderr
    text = str(json.loads(out.stdout)["result"])
    return text.split("role: ")[1].split(")")[0] if "role: " in text else ""


def test_the_first_calls_role_is_replayed_unless_the_snapshot_is_off(
        fake_claude: Any, tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / f"{name}.md").write_text(f"Role {name}.\n")
    one, two = f"--append-system-prompt-file={tmp_path / 'one.md'}", \
        f"--append-system-prompt-file={tmp_path / 'two.md'}"
    sid = str(uuid.uuid4())
    off = "--system-prompt-snapshot=off"
    assert _role_sent(f"--session-id={sid}", one) == "Role one."
    assert _role_sent(f"--resume={sid}", two) == "Role one."
    assert _role_sent(f"--resume={sid}", two, off) == "Role two."
    assert _role_sent(f"--resume={sid}", two) == "Role one."  # off records nothing
    assert _role_sent(f"--resume={sid}", "--fork-session", two) == "Role one."
    assert _role_sent(f"--resume={sid}", "--fork-session", two, off) == "Role two."
    bad = claude("-p", f"--resume={sid}", "--system-prompt-snapshot=maybe")
    assert bad.returncode == 1 and "Allowed choices are on, off" in bad.stderr
    old = str(uuid.uuid4())
    assert _role_sent(f"--session-id={old}", one, version="2.1.197") == "Role one."
    assert _role_sent(f"--resume={old}", two, version="2.1.197") == "Role two."
    unknown = claude("-p", f"--resume={old}", off, prompt="[fake version=2.1.197] hi")
    assert unknown.returncode == 1 and "unknown option" in unknown.stderr


def test_transcripts_live_where_the_real_clis_do(fake_claude: Any, tmp_path: Path,
                                                 monkeypatch: Any) -> None:
    """``$HOME/.claude/projects/<cwd encoded>/<id>.jsonl`` (or under ``CLAUDE_CONFIG_DIR``),
    one JSON object a line, appended to; a resume from another folder finds it by id and
    appends there; a fork starts its own in the cwd's folder."""
    home = tmp_path / "home"
    monkeypatch.delenv("CLAUDE_CONFIG_DIR")
    monkeypatch.setenv("HOME", str(home))
    made_in = tmp_path / "made in é"
    elsewhere = tmp_path / "elsewhere"
    made_in.mkdir()
    elsewhere.mkdir()
    sid = str(uuid.uuid4())
    claude("-p", f"--session-id={sid}", "--name=titled", cwd=made_in)
    encoded = "".join(c if c.isascii() and c.isalnum() else "-" for c in str(made_in))
    path = home / ".claude" / "projects" / encoded / f"{sid}.jsonl"
    first = path.read_bytes()
    assert [json.loads(line)["type"] for line in first.splitlines()] == \
        ["custom-title", "system-prompt-snapshot", "user", "assistant", "cost-state"]
    again = json.loads(claude("-p", f"--resume={sid}", "--output-format=json",
                              cwd=elsewhere).stdout)
    assert "turn 2" in again["result"]
    assert path.read_bytes().startswith(first) and len(path.read_bytes()) > len(first)
    assert not (home / ".claude" / "projects" / elsewhere.name).exists()
    fork = json.loads(claude("-p", f"--resume={sid}", "--fork-session", "--output-format=json",
                             cwd=elsewhere).stdout)
    forked = list((home / ".claude" / "projects").glob(f"*/{fork['session_id']}.jsonl"))
    assert [p.parent.name for p in forked] == [
        "".join(c if c.isascii() and c.isalnum() else "-" for c in str(elsewhere))]
    assert "turn 3" in fork["result"]
    by_title = json.loads(claude("-p", "--resume=titled", "--output-format=json").stdout)
    assert by_title["session_id"] in (sid, fork["session_id"])


# -- what the fake does without json, re or shlex -----------------------------------------------

VALUES: list[Any] = [
    {}, [], "", 0, -7, 2**70, 0.1, -1e-300, 1e300, float("inf"), float("-inf"), True, None,
    "é\n\t\"\\ \u2028 \U0001f600 \x00", {"a": [1, 2.5, {"b": None}], "": "x", "é": []},
    [[[[]]]], {"n": -0.0},
]


def test_the_lean_json_reads_and_writes_as_json_does() -> None:
    from claude_persist.testing import fake_claude

    assert fake_claude.json_dumps.__module__ == fake_claude.__name__  # the C half was taken
    for value in VALUES:
        text = json.dumps(value)
        assert fake_claude.json_dumps(value) == text
        assert fake_claude.json_dumps(fake_claude.json_loads(text)) == text
        assert fake_claude.json_loads(f" {json.dumps(value, indent=2)}\n") == json.loads(text)
    assert str(fake_claude.json_loads("NaN")) == "nan"
    for broken in ("", "  ", "{", '{"a": 1} x', "[1,]", "nope", '"open'):
        with pytest.raises(ValueError):
            fake_claude.json_loads(broken)
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        fake_claude.json_dumps({"a": {1}})


@pytest.mark.parametrize("prompt", [
    "no marker", "[fake delay=1] go", "a [fake x=1 y=2] b [fake z] c", "[fake open", "[fake ]",
    "[fake a=1]]", "[fake [fake b=2] c", "x\n[fake cost=0.1\nversion=2]\ny", "[fakeish] [ fake a]",
])
def test_markers_are_read_as_the_pattern_read_them(prompt: str) -> None:
    from claude_persist.testing import fake_claude

    pattern = re.compile(r"\[fake ([^\]]*)\]")
    assert fake_claude.split_markers(prompt) == (pattern.findall(prompt), pattern.sub("", prompt))


def test_session_ids_are_checked_as_the_pattern_checked_them() -> None:
    from claude_persist.testing import fake_claude

    pattern = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
    sid = str(uuid.uuid4())
    for text in (sid, sid.upper(), sid[:-1], sid + "0", sid.replace("-", ""), "", "-" * 4,
                 sid.replace("a", "g"), sid[:8] + "_" + sid[9:], f"{sid[:8]}-{sid[9:]}-"):
        assert fake_claude.is_uuid(text) == bool(pattern.fullmatch(text)), text


def test_a_call_imports_neither_json_nor_re_nor_enum(fake_claude: Any, tmp_path: Path) -> None:
    """Each suite starts the fake hundreds of times: its start-up is the standard library's
    bare minimum (json imports re, and re imports enum; together they doubled a call's time)."""
    *python, code = FAKE
    code = code.replace("fake_claude.main()", "import atexit; atexit.register("
                        "lambda: print(sorted(sys.modules))); fake_claude.main()")
    out = subprocess.run([*python, code, "-p", "hi", "--output-format=stream-json",
                          "--verbose"], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    modules = set(ast.literal_eval(out.stdout.splitlines()[-1]))
    assert "fake_claude" in modules
    assert not modules & {"json", "re", "enum", "shlex", "signal", "typing", "pathlib"}


def test_without_jsons_c_half_the_fake_takes_json_itself(fake_claude: Any, tmp_path: Path) -> None:
    *python, code = FAKE
    code = code.replace("import fake_claude", "sys.modules['_json'] = None; import fake_claude; "
                        "assert fake_claude.json_loads.__module__ == 'json'")
    out = subprocess.run([*python, code, "-p", "hi", "--output-format=json"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"].startswith("fake reply to turn 1")
