"""The tasks as a user runs them: both faces (``claude-persist`` and ``inv``), the fake claude
behind them. Each test is one behaviour a user would see.

Most run the program inside the test's process (``cp``, ``inv``, ``face``); the fake claude is a
real process either way. Real processes of our own (``cp_process``, ``subprocess_face``) are kept
for what only they show: Ctrl-C, a pipe closed by ``| head``, a stream read through a pipe, two
processes competing for a session, and one smoke test per face of the command users start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from claude_persist.testing import FAKE_CLAUDE_CMD

from .conftest import Runner, mapping_path, read_mapping, wait_for


def test_create_prints_the_new_id_and_maps_it(face: Runner, workspace: Path,
                                               fake_claude: Any) -> None:
    ran = face("create", "-n", "review-src", "--model", "opus", "--effort", "High")
    assert ran.code == 0, ran.err
    session_id = ran.out.strip()
    assert uuid.UUID(session_id)
    entry = read_mapping(workspace)["aliases"]["review-src"]
    assert entry["session_id"] == session_id
    assert entry["last_model"] == "opus"
    assert entry["last_reasoning_effort"] == "high"
    assert entry["cwd"] == str(workspace.resolve())
    call = fake_claude.calls()[-1]
    assert f"--session-id={session_id}" in call["argv"]
    assert "--name=review-src" in call["argv"]
    assert "Initialize a new session named 'review-src'" in fake_claude.records()[0][
        "prompt_head"]


def test_resume_by_name_keeps_the_id_and_the_history(face: Runner, fake_claude: Any) -> None:
    sid = face("create", "-n", "s1").out.strip()
    first = face("resume", "-n", "s1", "-p", "one")
    second = face("resume", "--name", "s1", "--prompt", "two")
    assert first.code == 0 and second.code == 0, first.err + second.err
    assert f"turn 2 of session {sid}" in first.out
    assert f"turn 3 of session {sid}" in second.out
    assert second.out.strip().endswith(": two")


def test_stored_model_and_effort_are_sent_on_every_turn(face: Runner, fake_claude: Any,
                                                         workspace: Path) -> None:
    face("create", "-n", "m", "--model", "opus", "--effort", "max")
    face("resume", "-n", "m", "-p", "plain")
    face("resume", "-n", "m", "-p", "switch", "--model", "haiku", "--effort", "low")
    face("resume", "-n", "m", "-p", "plain again")
    efforts = [c["effort"] for c in fake_claude.calls()]
    models = [c["model"] for c in fake_claude.calls()]
    assert efforts == ["max", "max", "low", "low"]
    assert models == ["claude-opus-4-1"] * 2 + ["claude-haiku-4-5"] * 2
    entry = read_mapping(workspace)["aliases"]["m"]
    assert (entry["last_model"], entry["last_reasoning_effort"]) == ("haiku", "low")


def test_role_goes_with_every_turn(cp: Runner, fake_claude: Any, workspace: Path) -> None:
    role = workspace / "roles" / "reviewer.md"
    role.parent.mkdir()
    role.write_text("You are a strict reviewer.\n")
    assert cp("create", "-n", "r", "--role", "roles/reviewer.md").code == 0
    out = cp("resume", "-n", "r", "-p", "go").out
    assert "role: You are a strict reviewer." in out
    assert all(c["role"] == "You are a strict reviewer.\n" for c in fake_claude.calls())
    assert read_mapping(workspace)["aliases"]["r"]["role"] == str(role.resolve())


def test_fork_maps_a_new_session_with_the_history(face: Runner, fake_claude: Any,
                                                   workspace: Path) -> None:
    sid = face("create", "-n", "base").out.strip()
    face("resume", "-n", "base", "-p", "context")
    ran = face("fork", "-n", "base", "--as", "branch", "-p", "try another way")
    assert ran.code == 0, ran.err
    aliases = read_mapping(workspace)["aliases"]
    new_id = aliases["branch"]["session_id"]
    assert new_id != sid and aliases["base"]["session_id"] == sid
    assert aliases["branch"]["forked_from"] == sid
    assert f"turn 3 of session {new_id}" in ran.out
    assert len(fake_claude.transcript(sid)["turns"]) == 4  # the original is untouched


def test_adopt_resolve_list_and_delete(face: Runner, workspace: Path) -> None:
    sid = str(uuid.uuid4())
    assert face("adopt", "-n", "hand-made", "--session-id", sid).code == 0
    assert face("resolve", "-n", "hand-made").out.strip() == sid
    entry = face("resolve", "-n", "hand-made", "--json").json()
    assert entry["session_id"] == sid and entry["mapping_file"] == str(mapping_path(workspace))
    listed = face("list", "--json").json()
    assert [s["name"] for s in listed["sessions"]] == ["hand-made"]
    table = face("list").out.splitlines()
    assert table[0].split()[:2] == ["NAME", "SESSION"] and "hand-made" in table[1]
    assert face("delete", "-n", "hand-made").out.strip() == "hand-made"
    assert face("list", "--json").json()["sessions"] == []


def test_delete_by_session_id_and_all(cp: Runner, workspace: Path) -> None:
    sid = str(uuid.uuid4())
    cp("adopt", "-n", "a", "--session-id", sid)
    cp("adopt", "-n", "b", "--session-id", sid)
    cp("adopt", "-n", "c", "--session-id", str(uuid.uuid4()))
    assert cp("delete", "--session-id", sid).out.split() == ["a", "b"]
    refused = cp("delete", "--all")
    assert refused.code == 2 and "--yes" in refused.err
    assert cp("delete", "--all", "--yes").out.split() == ["c"]
    assert not mapping_path(workspace).exists()


def test_seed_stage_names_work(cp: Runner, workspace: Path) -> None:
    sid = cp("create-session", "-n", "seed").out.strip()
    as_json = cp("resume-json", "-n", "seed", "-p", "hi")
    assert as_json.json()["session_id"] == sid and as_json.json()["name"] == "seed"
    streamed = cp("resume-stream", "-n", "seed", "-p", "hi").out.splitlines()
    assert json.loads(streamed[0])["type"] == "system"
    assert json.loads(streamed[-1])["type"] == "result"
    assert cp("list-sessions").out.splitlines()[1].split()[0] == "seed"
    assert cp("delete-session", "-n", "seed").code == 0
    cp("adopt", "-n", "x", "--session-id", str(uuid.uuid4()))
    refused = cp("delete-all-sessions")
    assert refused.code == 2 and "--yes" in refused.err
    assert cp("delete-all-sessions", "--yes").out.split() == ["x"]


def test_json_output_is_the_result_object_plus_name_and_mapping(cp: Runner,
                                                                  workspace: Path) -> None:
    created = cp("create", "-n", "j", "--json").json()
    assert created["type"] == "result" and created["name"] == "j"
    resumed = cp("resume", "-n", "j", "-p", "x", "--json").json()
    assert resumed["session_id"] == created["session_id"]
    assert resumed["mapping_file"] == str(mapping_path(workspace))
    assert resumed["is_error"] is False and "total_cost_usd" in resumed


def test_prompt_from_file_and_stdin(cp: Runner, workspace: Path) -> None:
    cp("create", "-n", "p")
    (workspace / "ask.md").write_text("from a file")
    assert cp("resume", "-n", "p", "--prompt-file", "ask.md").out.strip().endswith("from a file")
    assert cp("resume", "-n", "p", "--prompt-file", "-", input="from stdin").out.strip() \
        .endswith("from stdin")


def test_args_after_double_dash_go_to_claude(face: Runner, fake_claude: Any) -> None:
    face("create", "-n", "d")
    ran = face("resume", "-n", "d", "-p", "x", "--", "--allowedTools", "Read Grep")
    assert ran.code == 0, ran.err
    argv = fake_claude.calls()[-1]["argv"]
    assert argv[-2:] == ["--allowedTools", "Read Grep"]


def test_session_id_wins_over_name(cp: Runner, fake_claude: Any) -> None:
    first = cp("create", "-n", "one").out.strip()
    second = cp("create", "-n", "two").out.strip()
    out = cp("resume", "-n", "one", "--session-id", second, "-p", "x").out
    assert f"session {second}" in out and first not in out


def test_config_from_environment_and_invoke_yaml(cp: Runner, inv: Runner, fake_claude: Any,
                                                 workspace: Path) -> None:
    env = {"INVOKE_CLAUDE_PERSIST_MODEL": "haiku", "INVOKE_CLAUDE_PERSIST_EFFORT": "xhigh"}
    assert cp("create", "-n", "cfg", env=env).code == 0
    assert fake_claude.calls()[-1]["model"] == "claude-haiku-4-5"
    assert fake_claude.calls()[-1]["effort"] == "xhigh"
    (workspace / "invoke.yaml").write_text("claude_persist:\n  model: opus\n")
    assert cp("create", "-n", "cfg2").code == 0
    assert fake_claude.calls()[-1]["model"] == "claude-opus-4-1"
    assert cp("create", "-n", "cfg3", "--model", "sonnet").code == 0
    assert fake_claude.calls()[-1]["model"] == "claude-sonnet-4-5"  # the flag wins


def test_claude_cmd_flag_beats_the_environment(cp: Runner, workspace: Path) -> None:
    ran = cp("create", "-n", "c", "--claude-cmd", FAKE_CLAUDE_CMD,
             env={"CLAUDE_CMD": "/nonexistent/claude"})
    assert ran.code == 0, ran.err


def test_stream_lines_arrive_as_they_are_printed(cp: Runner, cp_process: Runner) -> None:
    """Through a real pipe, where a buffered stdout would hold the line back: claude prints its
    first line and then never answers, so that line can only come while the call runs."""
    cp("create", "-n", "live")
    proc = cp_process.start("resume", "-n", "live", "--stream", "--deadline", "30",
                            "-p", "[fake hang=1] never finishes")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert json.loads(first)["type"] == "system"
    assert still_running, "the first stream line came only when the command ended"
    assert proc.returncode == 130, err


def test_create_and_fork_stream_too(face: Runner, workspace: Path) -> None:
    created = face("create", "-n", "s", "--stream")
    lines = [json.loads(line) for line in created.out.splitlines()]
    assert created.code == 0 and lines[-1]["type"] == "result"
    assert lines[-1]["session_id"] == read_mapping(workspace)["aliases"]["s"]["session_id"]
    forked = face("fork", "-n", "s", "--as", "t", "-p", "go", "--stream")
    last = json.loads(forked.out.splitlines()[-1])
    assert last["session_id"] == read_mapping(workspace)["aliases"]["t"]["session_id"]
    both = face("create", "-n", "u", "--stream", "--json")
    assert both.code == 2 and "--stream and --json do not go together" in both.err


# -- exit codes and messages ----------------------------------------------------------------


def test_exit_2_for_usage_errors(face: Runner, workspace: Path) -> None:
    cases = [
        (["resume", "-n", "x", "--no-such-flag"], "--no-such-flag"),
        (["create", "-n", "bad name!"], "not a valid session name"),
        (["create"], "--name is required"),
        (["create", "-n", "e", "--effort", "huge"], "not an effort level"),
        (["create", "-n", "e", "--deadline", "0"], "deadline must be more than 0 seconds"),
        (["create", "-n", "e", "--deadline", "soon"], "not a duration: write seconds, or 90s"),
        (["create", "-n", "e", "--role", "missing.md"], "no such file"),
        (["adopt", "-n", "a", "--session-id", "not-a-uuid"], "not a session id"),
        (["resume", "-n", "x"], "the prompt is empty"),
        (["resume", "-n", "x", "-p", "a", "--prompt-file", "f"], "not both"),
        (["resume", "-n", "x", "-p", "a", "--json", "--stream"], "do not go together"),
        (["resume", "-n", "x", "--prompt-file", "nope.txt"], "nope.txt"),
    ]
    for args, message in cases:
        ran = face(*args)
        if args[-1] == "--no-such-flag" and face.name == "inv":
            # Stock `inv` exits 1 on its own parse errors; only claude-persist can map them.
            assert ran.code == 1, (args, ran.err)
        else:
            assert ran.code == 2, (args, ran.code, ran.err)
        assert message in ran.err, (args, ran.err)
        assert "Traceback" not in ran.err


def test_exit_2_for_an_existing_name_and_force_keeps_history(
        face: Runner, workspace: Path, fake_claude: Any) -> None:
    old = face("create", "-n", "dup").out.strip()
    calls = len(fake_claude.calls())
    refused = face("create", "-n", "dup")
    assert refused.code == 2 and "--force" in refused.err and old in refused.err
    assert len(fake_claude.calls()) == calls  # refused before any claude call
    new = face("create", "-n", "dup", "--force").out.strip()
    entry = read_mapping(workspace)["aliases"]["dup"]
    assert entry["session_id"] == new != old
    assert entry["history"][-1]["session_id"] == old


def test_exit_3_for_unknown_names_and_vanished_transcripts(face: Runner, fake_claude: Any,
                                                            workspace: Path) -> None:
    missing = face("resume", "-n", "ghost", "-p", "x")
    assert missing.code == 3 and "no session named 'ghost'" in missing.err
    sid = face("create", "-n", "gone").out.strip()
    transcript = fake_claude.transcript_path(sid)
    transcript.unlink()  # claude's cleanup deleted it
    vanished = face("resume", "-n", "gone", "-p", "x")
    assert vanished.code == 3 and "no conversation" in vanished.err
    assert "create --force" in vanished.err
    assert not transcript.exists()  # no silent new one
    assert face("resolve", "-n", "ghost").code == 3


def test_exit_1_when_the_claude_call_fails(cp: Runner, workspace: Path) -> None:
    cp("create", "-n", "f")
    overloaded = cp("resume", "-n", "f", "-p", "[fake error=529] hi")
    assert overloaded.code == 1 and "529 Overloaded" in overloaded.err
    empty = cp("resume", "-n", "f", "-p", "[fake exit_empty=1] hi")
    assert empty.code == 1 and "without a result" in empty.err
    garbage = cp("resume", "-n", "f", "-p", "[fake garbage=1] hi")
    assert garbage.code == 1 and "not stream-json" in garbage.err
    before = read_mapping(workspace)["aliases"]["f"]
    cp("resume", "-n", "f", "-p", "[fake error=401] hi", "--model", "opus")
    assert read_mapping(workspace)["aliases"]["f"] == before  # a failure changes nothing


def test_exit_4_when_the_session_stays_busy(cp: Runner, cp_process: Runner,
                                            fake_claude: Any) -> None:
    """Another process holds the session for as long as its claude runs; that claude never
    answers, so the session is busy for the whole wait, however slow the machine."""
    cp("create", "-n", "busy")
    holder = cp_process.start("resume", "-n", "busy", "-p", "[fake hang=1] long",
                              "--deadline", "60", stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(r["event"] == "start" and "long" in r.get("prompt_head", "")
                             for r in fake_claude.records()), "the holder's claude to start")
        waited = cp("resume", "-n", "busy", "-p", "me too", "--lock-timeout", "0.5")
    finally:
        holder.send_signal(signal.SIGINT)
        _, holder_err = holder.communicate(timeout=60)
    assert waited.code == 4, waited.err
    assert "in use by another process" in waited.err and "busy" in waited.err
    assert holder.returncode == 130, holder_err


def test_exit_124_on_deadline_and_idle_timeout(cp: Runner) -> None:
    cp("create", "-n", "t")
    late = cp("resume", "-n", "t", "-p", "[fake delay=30] x", "--deadline", "0.5")
    assert late.code == 124 and "deadline of 0.5s" in late.err
    quiet = cp("resume", "-n", "t", "-p", "[fake silence=30] x", "--idle-timeout", "0.5")
    assert quiet.code == 124 and "idle timeout of 0.5s" in quiet.err


def test_exit_127_when_claude_is_missing(cp: Runner) -> None:
    ran = cp("create", "-n", "x", env={"CLAUDE_CMD": "no-such-claude-binary"})
    assert ran.code == 127
    assert "--claude-cmd" in ran.err and "CLAUDE_CMD" in ran.err


def test_exit_130_on_ctrl_c_and_the_session_stays_usable(workspace: Path, fake_claude: Any,
                                                         cp: Runner, cp_process: Runner,
                                                         group_alive: Any) -> None:
    cp("create", "-n", "ctrl-c")
    proc = cp_process.start("resume", "-n", "ctrl-c", "-p", "[fake delay=30] x")
    sid = read_mapping(workspace)["aliases"]["ctrl-c"]["session_id"]

    def turns_saved() -> int:  # the fake saves the prompt before it starts its delay
        with contextlib.suppress(FileNotFoundError, ValueError):
            return sum(t["role"] == "user" for t in fake_claude.transcript(sid)["turns"])
        return 0

    wait_for(lambda: turns_saved() >= 2, "claude to save the prompt")
    child_group = fake_claude.records()[-1]["pgid"]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not group_alive(child_group)
    again = cp("resume", "-n", "ctrl-c", "-p", "after")
    assert again.code == 0 and "turn 3" in again.out  # the interrupted turn stayed


def test_no_traceback_for_an_unsafe_mapping_file(cp: Runner, workspace: Path,
                                                 tmp_path: Path) -> None:
    target = mapping_path(workspace)
    target.parent.mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere.json", target)
    ran = cp("create", "-n", "x")
    assert ran.code == 2 and "symlink" in ran.err and "Traceback" not in ran.err


def test_help_lists_every_task(cp: Runner) -> None:
    listed = cp("--list").out
    for name in ("create", "adopt", "resume", "fork", "resolve", "list", "delete",
                 "resume-json", "resume-stream", "delete-all-sessions"):
        assert f"  {name}" in listed
    helped = cp("resume", "--help").out
    assert "-p STRING, --prompt=STRING" in helped and "-n STRING, --name=STRING" in helped
    assert "--idle-timeout" in helped and "--lock-timeout" in helped


def test_a_closed_stdout_is_no_traceback(workspace: Path, cp: Runner) -> None:
    cp("create", "-n", "pipe")
    proc = subprocess.run(
        f"{sys.executable} -m claude_persist.cli resume -n pipe --stream "
        "-p '[fake lines=2000]' | head -1", shell=True, cwd=workspace, capture_output=True,
        text=True, timeout=60)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr
    # Invoke's own output (--help) into a pipe nobody reads: exit 141, no traceback either.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        helped = subprocess.run([sys.executable, "-m", "claude_persist.cli", "--help"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True,
                                cwd=workspace, timeout=60)
    finally:
        os.close(write_end)
    assert helped.returncode == 141, helped.stderr
    assert helped.stderr == ""


def test_stale_temp_files_of_killed_writers_are_cleaned(cp: Runner, workspace: Path) -> None:
    cp("adopt", "-n", "a", "--session-id", str(uuid.uuid4()))
    stale = mapping_path(workspace).with_name("claude-code-alias-mapping.json.tmp.999999999")
    stale.write_text("{half")
    cp("adopt", "-n", "b", "--session-id", str(uuid.uuid4()))
    assert not stale.exists()


# -- the commands users start, as real processes ----------------------------------------------


def test_each_face_as_a_real_process(subprocess_face: Runner, fake_claude: Any) -> None:
    """A smoke test of what the in-process tests stand in for: the command started by Python,
    its streams, stdin and exit codes."""
    face = subprocess_face
    created = face("create", "-n", "smoke", "--model", "opus")
    assert created.code == 0, created.err
    sid = created.out.strip()
    resumed = face("resume", "-n", "smoke", "--prompt-file", "-", input="from stdin")
    assert resumed.code == 0, resumed.err
    assert f"turn 2 of session {sid}" in resumed.out and "from stdin" in resumed.out
    assert [c["model"] for c in fake_claude.calls()] == ["claude-opus-4-1"] * 2
    missing = face("resume", "-n", "ghost", "-p", "x")
    assert missing.code == 3 and "no session named 'ghost'" in missing.err
    assert "Traceback" not in missing.err


def test_in_process_runs_leave_the_test_process_as_it_was(cp: Runner, inv: Runner,
                                                          workspace: Path) -> None:
    """The in-process faces put back what a command changes: a leak would make later tests
    depend on the order they run in."""
    before = (os.getcwd(), list(sys.argv), sys.stdout, sys.stdin, dict(os.environ),
              signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP),
              list(sys.path), sys.modules.get("tasks"), sys.dont_write_bytecode)
    for face in (cp, inv):
        assert face("create", "-n", f"leak-{face.name}", "--json",
                    env={"INVOKE_CLAUDE_PERSIST_MODEL": "haiku"}).code == 0
        assert face("resume", "-n", "nobody", "-p", "x").code == 3
    after = (os.getcwd(), list(sys.argv), sys.stdout, sys.stdin, dict(os.environ),
             signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP),
             list(sys.path), sys.modules.get("tasks"), sys.dont_write_bytecode)
    assert after == before
    assert os.getcwd() != str(workspace)


def test_two_word_commands_are_their_tasks_only_at_the_start() -> None:
    from claude_persist.cli import _two_words

    assert _two_words(["runs", "show", "ID", "--json"]) == ["runs-show", "ID", "--json"]
    assert _two_words(["runs", "prune", "--older-than", "3d"]) == \
        ["runs-prune", "--older-than", "3d"]
    for kept in (["runs"], ["runs", "--json"], ["show", "-n", "runs"], ["list", "runs", "show"]):
        assert _two_words(kept) == kept


def test_runs_show_reads_as_one_command(cp: Runner) -> None:
    ran = cp("runs", "show", "no-such-run")
    assert ran.code == 2 and "no run no-such-run" in ran.err, ran.err
    assert cp("runs", "prune").code == 2  # runs-prune's own refusal: --older-than is needed


def test_a_parse_writes_only_its_own_copies_of_the_flags() -> None:
    """Tasks and flags copy shallowly (Invoke copies them on every load and parse): what one
    parse sets, a list flag's values included, is not seen by the collection or the next."""
    import copy

    from invoke.parser import Parser

    from claude_persist.tasks import ns

    contexts = ns.to_contexts()
    first = Parser(contexts=contexts).parse_argv(["export", "-n", "a", "-n", "b", "-o", "x"])
    assert first[0].args["name"].value == ["a", "b"] and first[0].args["output"].value == "x"
    second = Parser(contexts=contexts).parse_argv(["export", "--all"])
    assert second[0].args["name"].value == [] and second[0].args["output"].value is None
    assert [ctx.args["name"].value for ctx in contexts if ctx.name == "export"] == [[]]
    task = ns["export"]
    task_copy = copy.deepcopy(task)
    task_copy.times_called += 1
    assert task.times_called == 0 and task_copy.body is task.body
    assert repr(first[0].args["name"]) == "<Argument: name (n) [list]>"  # Invoke's messages


def test_flag_help_survives_every_parse(inv: Runner, cp: Runner) -> None:
    """Invoke takes each flag's help text out of the task as it makes the flag: the second
    command in a process (or the second parse in one) still shows it."""
    from claude_persist.tasks import ns

    for face in (inv, cp, inv, cp):
        shown = face("export", "--help")
        assert shown.code == 0 and "write the bundle to FILE" in shown.out, shown.out
    for _ in range(2):
        [export] = [ctx for ctx in ns.to_contexts() if ctx.name == "export"]
        assert export.args["output"].help.startswith("write the bundle to FILE")
