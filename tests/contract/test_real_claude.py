"""Everything claude-persist passes to and reads from claude, proved against the genuine binary.

The fake API answers ``turns=N``, N being the user turns the request carried, so a resume that
really sent the history shows it in the answer and in the request log.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_persist import ClaudeCallError
from claude_persist.claude.command import Action, CallSpec, build_argv
from claude_persist.claude.result import call_cost
from claude_persist.settings import CallSettings
from claude_persist.testing import FAKE_CLAUDE_CMD

from .conftest import MODEL, VERSION_UNDER_TEST, RealClaude
from .fake_api import Switches

pytestmark = pytest.mark.contract


def test_the_pinned_version_is_what_runs(real: RealClaude) -> None:
    version = subprocess.run([str(real.binary), "--version"], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
    assert version.stdout.startswith(VERSION_UNDER_TEST)


def test_create_stores_the_id_we_chose_and_the_name_is_accepted(real: RealClaude) -> None:
    lines = []
    ran = real.cp("create", "-n", "review-src", "--model", MODEL, "--stream")
    assert ran.code == 0, ran.err
    lines = [json.loads(line) for line in ran.out.splitlines()]
    sid = real.session_id("review-src")
    [request] = real.api.messages_requests()
    assert request["session_header"] == sid  # the id we passed with --session-id
    assert lines[-1]["type"] == "result" and lines[-1]["session_id"] == sid
    assert real.transcript(sid).is_file()
    titles = [line.get("title") for line in lines
              if line.get("subtype") == "session_title_changed"]
    assert titles == ["review-src"]  # --name reached the CLI as the session's title
    # The title is the CLI's own: claude itself resumes the session by it.
    by_title = subprocess.run([str(real.binary), "-p", "--output-format=json",
                               "--resume=review-src"], input="by title", capture_output=True,
                              text=True, cwd=real.workspace, env=real.env, timeout=60)
    assert json.loads(by_title.stdout)["session_id"] == sid


def test_resume_by_name_carries_the_history(real: RealClaude) -> None:
    created = real.cp("create", "-n", "chat", "--model", MODEL, "--json")
    sid = created.json()["session_id"]
    answers = []
    for n in range(3):
        ran = real.cp("resume", "-n", "chat", "-p", f"question {n}", "--json")
        assert ran.code == 0, ran.err
        answers.append(ran.json())
    assert [a["session_id"] for a in answers] == [sid] * 3
    assert [a["result"] for a in answers] == ["turns=2", "turns=3", "turns=4"]
    requests = real.api.for_session(sid)
    assert [r["turns"] for r in requests] == [1, 2, 3, 4]
    last = requests[-1]["messages"]
    assert [m["text"] for m in last if m["role"] == "assistant"] == \
        ["turns=1", "turns=2", "turns=3"]
    assert "question 2" in [m for m in last if m["role"] == "user"][-1]["text"]
    assert real.session_id("chat") == sid


def test_model_and_effort_are_sent_on_every_turn(real: RealClaude) -> None:
    real.cp("create", "-n", "tuned", "--model", MODEL, "--effort", "xhigh")
    real.cp("resume", "-n", "tuned", "-p", "no flags: the stored ones")
    real.cp("resume", "-n", "tuned", "-p", "new effort", "--effort", "low")
    real.cp("resume", "-n", "tuned", "-p", "no flags again")
    real.cp("resume", "-n", "tuned", "-p", "an alias", "--model", "sonnet")
    sent = [(r["model"], r["effort"]) for r in real.api.for_session(real.session_id("tuned"))]
    assert sent[:4] == [(MODEL, "xhigh"), (MODEL, "xhigh"), (MODEL, "low"), (MODEL, "low")]
    model, effort = sent[4]
    assert model.startswith("claude-sonnet-") and effort == "low"  # the CLI expands aliases
    entry = real.mapping()["aliases"]["tuned"]
    assert (entry["last_model"], entry["last_reasoning_effort"]) == ("sonnet", "low")


def test_a_level_the_model_lacks_is_lowered_by_the_cli(real: RealClaude) -> None:
    """We pass the effort asked for; the CLI itself sends ``high`` for ``xhigh`` on models that
    have no xhigh, saying nothing."""
    real.cp("create", "-n", "older", "--model", "claude-sonnet-4-6", "--effort", "xhigh")
    [request] = real.api.messages_requests()
    assert (request["model"], request["effort"]) == ("claude-sonnet-4-6", "high")
    assert real.mapping()["aliases"]["older"]["last_reasoning_effort"] == "xhigh"


def test_the_role_is_in_the_system_prompt_of_every_turn(real: RealClaude) -> None:
    role = real.workspace / "reviewer.md"
    marker = f"ROLE-{uuid.uuid4().hex}"
    role.write_text(f"You are a strict reviewer. {marker}\n")
    real.cp("create", "-n", "roled", "--model", MODEL, "--role", "reviewer.md")
    real.cp("resume", "-n", "roled", "-p", "one")
    real.cp("resume", "-n", "roled", "-p", "two")
    requests = real.api.for_session(real.session_id("roled"))
    assert len(requests) == 3
    assert all(marker in r["system"] for r in requests)
    assert all(marker not in m["text"] for r in requests for m in r["messages"])


def test_fork_copies_the_history_under_a_new_id(real: RealClaude) -> None:
    real.cp("create", "-n", "base", "--model", MODEL)
    real.cp("resume", "-n", "base", "-p", "two")
    source = real.session_id("base")
    before = real.transcript(source).read_bytes()
    forked = real.cp("fork", "-n", "base", "--as", "branch", "-p", "three", "--json")
    assert forked.code == 0, forked.err
    new_id = forked.json()["session_id"]
    assert new_id != source and real.session_id("branch") == new_id
    assert real.mapping()["aliases"]["branch"]["forked_from"] == source
    assert real.session_id("base") == source
    assert real.transcript(source).read_bytes() == before  # the original is untouched
    assert real.transcript(new_id).is_file()
    [fork_request] = real.api.for_session(new_id)
    assert fork_request["turns"] == 3 and forked.json()["result"] == "turns=3"
    again = real.cp("resume", "-n", "base", "-p", "three, in the original", "--json")
    assert again.json()["result"] == "turns=3"  # the fork's turn is not in the original


def test_costs_are_running_totals_and_a_fork_carries_the_sources(real: RealClaude) -> None:
    from claude_persist import Sessions, TurnOptions

    sessions = Sessions(real.workspace)
    first = sessions.create("priced", "one", TurnOptions(model=MODEL))
    second = sessions.resume("priced", "two")
    fork = sessions.fork("priced", "priced-copy", "three")
    assert first.cost_usd and second.cost_usd and fork.cost_usd
    # The CLI reports the session's running total; we report each call's own cost.
    assert second.raw["total_cost_usd"] == pytest.approx(first.cost_usd + second.cost_usd)
    assert second.cost_usd > first.cost_usd  # two turns of history cost more input than one
    assert fork.raw["total_cost_usd"] == pytest.approx(
        first.cost_usd + second.cost_usd + fork.cost_usd)
    assert fork.cost_usd > second.cost_usd  # three turns of history


def test_a_calls_cost_is_its_own_after_a_turn_made_outside(real: RealClaude) -> None:
    from claude_persist import Sessions, TurnOptions

    sessions = Sessions(real.workspace)
    first = sessions.create("outside", "one", TurnOptions(model=MODEL))
    direct = subprocess.run([str(real.binary), "-p", f"--resume={first.session_id}"],
                            input="made outside", capture_output=True, text=True,
                            cwd=real.workspace, env=real.env, timeout=60)
    assert direct.returncode == 0, direct.stderr
    third = sessions.resume("outside", "three")
    [own] = third.raw["model_usage_since_last_result"].values()
    assert third.cost_usd == pytest.approx(own["costUSD"])
    assert third.cost_usd < third.raw["total_cost_usd"] - first.raw["total_cost_usd"]


def test_stream_passes_lines_through_as_the_cli_prints_them(real: RealClaude) -> None:
    real.cp("create", "-n", "live", "--model", MODEL)
    before = real.mapping()["aliases"]["live"]["last_used_at"]
    real.api.switches = Switches(stall_after_start=1.5)
    proc = real.start("resume", "-n", "live", "-p", "stream it", "--stream")
    assert proc.stdout is not None
    arrivals = [(time.monotonic(), json.loads(line)) for line in proc.stdout]
    proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    [request] = real.api.for_session(real.session_id("live"))[1:]
    init_at = next(t for t, line in arrivals if line.get("subtype") == "init")
    # The init line reached our stdout while the server was still holding its answer back.
    assert init_at < request["ended"] - 1.0
    assert arrivals[-1][1]["type"] == "result" and arrivals[-1][1]["result"] == "turns=2"
    assert arrivals[-1][0] >= request["ended"]
    assert real.mapping()["aliases"]["live"]["last_used_at"] > before


@pytest.mark.parametrize(("status", "should_retry", "message"), [
    (529, None, "API Error: 529 Overloaded"),
    (529, False, "API Error: 529 Overloaded"),
    (401, None, "Invalid API key"),
    (401, False, "Invalid API key"),
    (429, False, "API Error: Request rejected (429)"),
    (500, None, "API Error: 500"),
])
def test_api_errors_exit_1_with_the_clis_message(
        real: RealClaude, status: int, should_retry: bool | None, message: str) -> None:
    real.cp("create", "-n", "err", "--model", MODEL)
    mapped = real.mapping()["aliases"]["err"]
    real.api.switches = Switches(status=status, should_retry=should_retry)
    ran = real.cp("resume", "-n", "err", "-p", "fails")
    assert ran.code == 1
    assert message in ran.err and "session err" in ran.err
    assert "Traceback" not in ran.err
    assert real.mapping()["aliases"]["err"] == mapped  # a failed turn records nothing
    assert len(real.api.messages_requests()) == 2  # CLAUDE_CODE_MAX_RETRIES=0: no retry


def test_an_answer_that_stops_half_way_is_a_failure(real: RealClaude) -> None:
    real.cp("create", "-n", "cut", "--model", MODEL)
    real.api.switches = Switches(stop_half_way=True)
    ran = real.cp("resume", "-n", "cut", "-p", "cut off", "--json")
    assert ran.code == 1 and "API Error" in ran.err, ran.err
    real.api.switches = Switches()
    assert real.cp("resume", "-n", "cut", "-p", "again").code == 0


def test_a_deleted_transcript_is_exit_3_never_a_new_session(real: RealClaude) -> None:
    real.cp("create", "-n", "gone", "--model", MODEL)
    sid = real.session_id("gone")
    real.transcript(sid).unlink()  # what cleanupPeriodDays does
    ran = real.cp("resume", "-n", "gone", "-p", "still there?")
    assert ran.code == 3, ran.err
    assert "no conversation" in ran.err and "create --force" in ran.err
    assert len(real.api.messages_requests()) == 1  # the resume asked the model nothing
    assert not real.transcript(sid).exists()
    assert real.session_id("gone") == sid
    unknown = real.cp("resume", "--session-id", str(uuid.uuid4()), "-p", "who?")
    assert unknown.code == 3 and "no conversation" in unknown.err


@pytest.mark.parametrize("limit", ["--deadline", "--idle-timeout"])
def test_a_slow_server_meets_the_limits(real: RealClaude, limit: str) -> None:
    real.cp("create", "-n", "slow", "--model", MODEL)
    real.api.switches = Switches(first_byte_delay=60)
    started = time.monotonic()
    ran = real.cp("resume", "-n", "slow", "-p", "wait", limit, "1.5")
    took = time.monotonic() - started
    assert ran.code == 124, ran.err
    assert f"of 1.5s ({limit})" in ran.err  # the time allowed, not the time it took
    assert took < 1.5 + 3 + 3  # the limit, plus at most the two grace periods
    assert real.claude_processes() == []


def test_ctrl_c_is_a_failure_and_the_session_resumes(real: RealClaude) -> None:
    real.cp("create", "-n", "intr", "--model", MODEL)
    sid = real.session_id("intr")
    real.api.switches = Switches(first_byte_delay=60)
    # Ctrl-C at a terminal reaches claude-persist, which stops the call.
    proc = real.start("resume", "-n", "intr", "-p", "interrupted turn")
    real.wait_for_claude_process()
    _wait_for_requests(real, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err
    assert real.claude_processes() == []
    # SIGINT sent straight to claude: it exits 0 with no result line, which is no success.
    proc = real.start("resume", "-n", "intr", "-p", "interrupted again")
    pid = real.wait_for_claude_process()
    _wait_for_requests(real, 3)
    time.sleep(0.3)
    os.kill(pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    # claude exits 0, mostly with no result line, now and then with an error result.
    assert proc.returncode == 1, err
    assert "exited 0 without a result line" in err or "error_during_execution" in err
    assert real.mapping()["aliases"]["intr"]["session_id"] == sid
    real.api.switches = Switches()
    ran = real.cp("resume", "-n", "intr", "-p", "after", "--json")
    assert ran.code == 0 and ran.json()["session_id"] == sid
    assert real.api.for_session(sid)[-1]["turns"] >= 2


def test_two_concurrent_resumes_reach_the_server_one_after_the_other(real: RealClaude) -> None:
    real.cp("create", "-n", "shared", "--model", MODEL)
    real.api.switches = Switches(first_byte_delay=0.7)
    procs = [real.start("resume", "-n", "shared", "-p", f"writer {n}") for n in range(2)]
    for proc in procs:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    requests = real.api.for_session(real.session_id("shared"))[1:]
    assert len(requests) == 2 and real.api.max_in_flight == 1
    for before, after in itertools.pairwise(requests):
        assert after["started"] >= before["ended"], "two turns were in flight at once"
    assert [r["turns"] for r in requests] == [2, 3]  # the second saw the first's turn


def test_a_workflow_runs_end_to_end_and_reports_the_clis_cost(real: RealClaude) -> None:
    workflow = real.workspace / "pair.yml"
    workflow.write_text(textwrap.dedent(f"""\
        version: 1
        name: pair
        defaults: {{model: {MODEL}, effort: high}}
        steps:
          - {{id: draft, create: writer, prompt: "Write a draft."}}
          - {{id: check, create: checker, prompt: "Check this: ${{{{ steps.draft.result }}}}"}}
          - {{id: revise, resume: writer, prompt: "Revise after: ${{{{ steps.check.result }}}}"}}
        """))
    ran = real.cp("run", "pair.yml", "--json")
    assert ran.code == 0, ran.err
    report = ran.json()
    steps = {step["id"]: step for step in report["steps"]}
    assert [s["status"] for s in steps.values()] == ["succeeded"] * 3
    writer, checker = real.session_id("writer"), real.session_id("checker")
    assert steps["revise"]["session_id"] == steps["draft"]["session_id"] == writer
    check_request = real.api.for_session(checker)[0]
    assert "Check this: turns=1" in check_request["messages"][-1]["text"]
    revise_request = real.api.for_session(writer)[-1]
    assert revise_request["turns"] == 2 and revise_request["effort"] == "high"
    # What the CLI reported: its running totals, kept in the mapping.
    aliases = real.mapping()["aliases"]
    writer_total = aliases["writer"]["last_total_cost_usd"]
    checker_total = aliases["checker"]["last_total_cost_usd"]
    assert steps["check"]["cost_usd"] == pytest.approx(checker_total)
    assert steps["draft"]["cost_usd"] + steps["revise"]["cost_usd"] == \
        pytest.approx(writer_total)
    assert report["total_cost_usd"] == pytest.approx(writer_total + checker_total)
    assert report["total_cost_usd"] > 0


def _wait_for_requests(real: RealClaude, count: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while len(real.api.messages_requests()) < count:
        assert time.monotonic() < end, "the CLI never called the API"
        time.sleep(0.02)


def _call(real: RealClaude, spec: CallSpec, *extra: str, prompt: str = "hi"
          ) -> tuple[int, list[dict[str, Any]]]:
    """Run the binary with the argv our command builder makes for ``spec``, plus ``extra``."""
    proc = subprocess.run([*build_argv([str(real.binary)], spec), *extra], input=prompt,
                          capture_output=True, text=True, cwd=real.workspace, env=real.env,
                          timeout=60)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line]


def _own_costs(result: dict[str, Any]) -> dict[str, float]:
    usage = result["model_usage_since_last_result"]
    assert isinstance(usage, dict)
    return {model: entry["costUSD"] for model, entry in usage.items()}


def test_the_result_line_carries_the_calls_own_usage(real: RealClaude, tmp_path: Path) -> None:
    """``model_usage_since_last_result``: this call's usage per model, where ``total_cost_usd``
    and ``modelUsage`` are the session's; empty after an API error; only in stream-json."""
    sid = str(uuid.uuid4())
    _, created = _call(real, CallSpec(Action.CREATE, sid, settings=CallSettings(model=MODEL)))
    first = created[-1]
    entry = first["model_usage_since_last_result"][MODEL]
    assert {"inputTokens", "outputTokens", "costUSD"} <= set(entry)
    assert _own_costs(first) == {MODEL: pytest.approx(first["total_cost_usd"])}
    _, resumed = _call(real, CallSpec(Action.RESUME, sid,
                                           settings=CallSettings(model="claude-sonnet-4-6")))
    second = resumed[-1]
    [(model, own)] = _own_costs(second).items()  # only the model this call used
    assert model == "claude-sonnet-4-6"
    assert own == pytest.approx(second["total_cost_usd"] - first["total_cost_usd"])
    assert set(second["modelUsage"]) == {MODEL, "claude-sonnet-4-6"}  # the session's
    assert second["model_usage_since_last_result"][model]["inputTokens"] == 200  # two turns
    # Ours: the CLI's own figure, right even when the last total we saw is stale (a turn was
    # made outside claude-persist), where the difference of the totals is not.
    version = VERSION_UNDER_TEST
    assert call_cost(second, first["total_cost_usd"], version) == pytest.approx(own)
    assert call_cost(second, 0.0, version) == pytest.approx(own)
    _, forked = _call(real, CallSpec(Action.FORK, sid, new_session_id=str(uuid.uuid4())))
    fork = forked[-1]
    assert sum(_own_costs(fork).values()) == pytest.approx(
        fork["total_cost_usd"] - second["total_cost_usd"])  # the fork carries the total on
    real.api.switches = Switches(status=529, should_retry=False)
    code, failed = _call(real, CallSpec(Action.RESUME, sid))
    assert code == 1 and failed[-1]["is_error"]
    assert failed[-1]["model_usage_since_last_result"] == {}
    assert failed[-1]["total_cost_usd"] == second["total_cost_usd"]
    real.api.switches = Switches()
    plain = subprocess.run([str(real.binary), "-p", "--output-format=json", f"--resume={sid}"],
                           input="hi", capture_output=True, text=True, cwd=real.workspace,
                           env=real.env, timeout=60)
    assert "model_usage_since_last_result" not in json.loads(plain.stdout)
    # The fake CLI says the same, in the same shape (its keys are a subset of the real ones).
    fake = subprocess.run([*shlex.split(FAKE_CLAUDE_CMD), "-p", "--output-format=stream-json",
                           "--verbose"], input="hi", capture_output=True, text=True,
                          env={**real.env, "FAKE_CLAUDE_HOME": str(tmp_path / "fake")},
                          timeout=60)
    fake_result = json.loads(fake.stdout.splitlines()[-1])
    [fake_entry] = fake_result["model_usage_since_last_result"].values()
    assert set(fake_entry) <= set(entry)
    assert set(fake_result) <= set(first) | {"fake_emitted_at"}


def test_an_api_error_gives_the_clis_facts_as_fields(real: RealClaude) -> None:
    from claude_persist import Sessions, TurnOptions

    sessions = Sessions(real.workspace)
    sid = sessions.create("facts", "one", TurnOptions(model=MODEL)).session_id
    real.api.switches = Switches(status=529, should_retry=False)
    with pytest.raises(ClaudeCallError) as caught:
        sessions.resume("facts", "two")
    error = caught.value
    assert (error.exit_code, error.api_error_status, error.subtype, error.terminal_reason,
            error.session_id, error.stderr_tail) == (1, 529, "success", "api_error", sid, "")
    assert error.transient and "529 Overloaded" in str(error)


SECOND = CallSettings(role="second.md")


def _roles(real: RealClaude) -> tuple[str, str, str]:
    marks = []
    for name in ("first", "second"):
        mark = f"ROLE-{name}-{uuid.uuid4().hex}"
        (real.workspace / f"{name}.md").write_text(f"You are the {name} role. {mark}\n")
        marks.append(mark)
    sid = str(uuid.uuid4())
    code, _ = _call(real, CallSpec(Action.CREATE, sid, settings=CallSettings(
        model=MODEL, role="first.md")))
    assert code == 0
    return sid, marks[0], marks[1]


def _system_of_last_request(real: RealClaude) -> str:
    return str(real.api.messages_requests()[-1]["system"])


def test_the_snapshot_replays_the_first_role_on_a_resume_that_passes_another(
        real: RealClaude) -> None:
    """What our argv does today when a resume's role differs from the creation role: the CLI
    replays the system prompt it recorded on the first call, and the new role never reaches
    the model."""
    sid, first, second = _roles(real)
    assert first in _system_of_last_request(real)
    for action in (Action.RESUME, Action.FORK):
        code, lines = _call(real, CallSpec(action, sid, settings=SECOND))
        assert code == 0 and lines[-1]["type"] == "result"
        system = _system_of_last_request(real)
        assert first in system and second not in system, action


def test_snapshot_off_makes_a_changed_role_reach_the_model(real: RealClaude) -> None:
    """``--system-prompt-snapshot=off`` on a resume (or fork) sends that call's own role. It
    records nothing: the next call without it gets the first role again."""
    sid, first, second = _roles(real)
    off = "--system-prompt-snapshot=off"
    for action in (Action.RESUME, Action.FORK):
        code, lines = _call(real, CallSpec(action, sid, settings=SECOND), off)
        assert code == 0 and lines[-1]["result"].startswith("turns=")
        system = _system_of_last_request(real)
        assert second in system and first not in system, action
    _call(real, CallSpec(Action.RESUME, sid, settings=SECOND))
    system = _system_of_last_request(real)
    assert first in system and second not in system
    refused = subprocess.run([str(real.binary), "-p", f"--resume={sid}",
                              "--system-prompt-snapshot=maybe"], input="hi",
                             capture_output=True, text=True, cwd=real.workspace, env=real.env,
                             timeout=60)
    assert refused.returncode == 1 and "Allowed choices are on, off" in refused.stderr
