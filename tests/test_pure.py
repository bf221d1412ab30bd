"""Pure decisions, no processes: argv building, result verdicts, cost, mapping documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_persist import (
    CallTimeoutError,
    ClaudeCallError,
    InterruptedByUserError,
    SessionNotFoundError,
    UsageError,
    exit_code_for,
)
from claude_persist.claude.command import Action, CallSpec, build_argv, resolve_claude_cmd
from claude_persist.claude.result import (
    STDERR_TAIL_CHARS,
    StreamCollector,
    call_cost,
    turn_cost,
    verdict,
)
from claude_persist.claude.runner import LINE_TOO_LONG, NO_EXIT, Limits, ProcessOutcome, StopReason
from claude_persist.errors import EXIT_CODES, NameExistsError
from claude_persist.mapping import CorruptMappingError, MappingDoc, dump, parse
from claude_persist.settings import CallSettings
from claude_persist.workflow.state import RunState, RunStatus, StepState, StepStatus, state_text

SID = "11111111-2222-4333-8444-555555555555"


def test_create_argv_uses_flag_equals_value_and_never_the_prompt() -> None:
    settings = CallSettings(model="-odd", effort="high", role="/r.md")
    argv = build_argv(["claude"], CallSpec(Action.CREATE, SID, title="review", settings=settings))
    assert argv == ["claude", "-p", "--output-format=stream-json", "--verbose",
                    f"--session-id={SID}", "--name=review", "--model=-odd", "--effort=high",
                    "--append-system-prompt-file=/r.md"]


def test_resume_and_fork_argv() -> None:
    resume = build_argv(["w", "--x"], CallSpec(Action.RESUME, SID, title="ignored",
                                                settings=CallSettings(include_partial=True,
                                                                      extra_args=("--bare",))))
    assert resume == ["w", "--x", "-p", "--output-format=stream-json", "--verbose",
                      f"--resume={SID}", "--include-partial-messages", "--bare"]
    fork = build_argv(["claude"], CallSpec(Action.FORK, SID, new_session_id="N", title="b",
                                           settings=CallSettings(json_schema="{}", max_turns=3,
                                                                 max_budget_usd=0.5)))
    assert fork[4:] == [f"--resume={SID}", "--fork-session", "--session-id=N", "--name=b",
                        "--json-schema={}", "--max-turns=3", "--max-budget-usd=0.5"]


def test_claude_cmd_precedence() -> None:
    env = {"CLAUDE_CMD": "from-env --a"}
    assert resolve_claude_cmd("flag 'x y'", "cfg", env) == ["flag", "x y"]
    assert resolve_claude_cmd(None, "cfg", env) == ["from-env", "--a"]  # env over a project file
    assert resolve_claude_cmd(None, "cfg", {}) == ["cfg"]
    assert resolve_claude_cmd(None, None, env) == ["from-env", "--a"]
    assert resolve_claude_cmd(None, "  ", {}) == ["claude"]
    with pytest.raises(UsageError, match="cannot split"):
        resolve_claude_cmd("'unclosed", None, {})


def _outcome(code: int = 0, stopped: StopReason | None = None, stderr: str = "",
             duration: float = 1.0) -> ProcessOutcome:
    return ProcessOutcome(returncode=code, stopped_by=stopped, stderr=stderr, duration=duration,
                          lines=0)


def _collect(*lines: dict[str, object] | str) -> StreamCollector:
    collector = StreamCollector()
    for line in lines:
        collector.feed(line if isinstance(line, str) else json.dumps(line))
    return collector


OK = {"type": "result", "subtype": "success", "is_error": False, "result": "hi",
      "session_id": SID}


def test_verdict_success_and_hang_after_result() -> None:
    assert verdict(_collect(OK), _outcome(), Limits(), "s")["result"] == "hi"
    assert verdict(_collect(OK), _outcome(-9, NO_EXIT), Limits(), "s")["result"] == "hi"


def test_verdict_api_error_is_judged_by_is_error_not_subtype() -> None:
    line = {**OK, "is_error": True, "api_error_status": 529, "result": "API Error: 529 x"}
    with pytest.raises(ClaudeCallError, match="529") as caught:
        verdict(_collect(line), _outcome(1), Limits(), "s")
    assert caught.value.transient


def test_verdict_not_found_from_stderr_and_from_the_stream_result() -> None:
    stream_error = {"type": "result", "subtype": "error_during_execution", "is_error": True,
                    "errors": [f"No conversation found with session ID: {SID}"]}
    with pytest.raises(SessionNotFoundError):
        verdict(_collect(stream_error), _outcome(1), Limits(), "s")
    with pytest.raises(SessionNotFoundError):
        verdict(_collect(), _outcome(1, stderr=f"No conversation found with session ID: {SID}"),
                Limits(), "s")


def test_verdict_empty_exit_0_is_a_failure_and_limits_are_timeouts() -> None:
    with pytest.raises(ClaudeCallError, match="exited 0 without a result"):
        verdict(_collect(), _outcome(0), Limits(), "s")
    with pytest.raises(ClaudeCallError, match="killed by SIGKILL"):
        verdict(_collect(), _outcome(-9), Limits(), "s")
    with pytest.raises(CallTimeoutError, match="deadline of 5s"):
        verdict(_collect(OK), _outcome(0, StopReason.DEADLINE), Limits(deadline=5), "s")
    with pytest.raises(CallTimeoutError, match="idle timeout of 2s"):
        verdict(_collect(), _outcome(0, StopReason.IDLE_TIMEOUT), Limits(idle_timeout=2), "s")
    with pytest.raises(InterruptedByUserError):
        verdict(_collect(), _outcome(0, StopReason.INTERRUPT), Limits(), "s")
    # What 2.1.330 sometimes prints when SIGINT lands as the request starts: exit 0, an error.
    interrupted = {"type": "result", "subtype": "error_during_execution", "is_error": True,
                   "errors": ["[ede_diagnostic] result_type=user"]}
    with pytest.raises(ClaudeCallError, match="error_during_execution: \\[ede_diagnostic"):
        verdict(_collect(interrupted), _outcome(0), Limits(), "s")


def test_a_call_error_carries_the_clis_facts_as_fields() -> None:
    line = {**OK, "is_error": True, "api_error_status": 529, "result": "API Error: 529 x",
            "terminal_reason": "api_error"}
    with pytest.raises(ClaudeCallError) as caught:
        verdict(_collect(line), _outcome(1, stderr="warn one\n\nwarn two\n"), Limits(), "s")
    error = caught.value
    assert (error.exit_code, error.subtype, error.api_error_status, error.terminal_reason,
            error.session_id) == (1, "success", 529, "api_error", SID)
    assert error.stderr_tail == "warn one\nwarn two" and error.transient
    assert exit_code_for(error) == 1


def test_a_call_error_without_a_result_has_the_exit_and_a_bounded_stderr_tail() -> None:
    init: dict[str, object] = {"type": "system", "subtype": "init", "session_id": SID}
    noise = "".join(f"line {n} " + "z" * 1000 + "\n" for n in range(50))
    with pytest.raises(ClaudeCallError, match="exited with status 3") as caught:
        verdict(_collect(init), _outcome(3, stderr=noise + "boom: it broke\n"), Limits(), "s")
    error = caught.value
    assert (error.exit_code, error.subtype, error.api_error_status, error.session_id) == \
        (3, None, None, SID)
    assert error.stderr_tail.endswith("boom: it broke")
    assert len(error.stderr_tail) <= STDERR_TAIL_CHARS + 3
    assert len(str(error)) < 2 * STDERR_TAIL_CHARS
    with pytest.raises(ClaudeCallError) as killed:
        verdict(_collect(), _outcome(-9), Limits(), "s")
    assert killed.value.exit_code == -9 and killed.value.session_id is None
    # An error result after which we had to stop claude: it exited, but not by itself.
    with pytest.raises(ClaudeCallError) as stopped:
        verdict(_collect({**OK, "is_error": True}), _outcome(-2, NO_EXIT), Limits(), "s")
    assert stopped.value.exit_code is None


def test_timeouts_say_the_time_allowed_not_the_time_taken() -> None:
    with pytest.raises(CallTimeoutError) as deadline:
        verdict(_collect(), _outcome(0, StopReason.DEADLINE, duration=603.4),
                Limits(deadline=600), "s")
    assert "ran past its deadline of 600s (--deadline)" in str(deadline.value)
    assert "603" not in str(deadline.value)
    assert (deadline.value.limit, deadline.value.seconds) == ("deadline", 600)
    with pytest.raises(CallTimeoutError) as idle:
        verdict(_collect(), _outcome(0, StopReason.IDLE_TIMEOUT, duration=33.1),
                Limits(deadline=600, idle_timeout=30), "s")
    assert "idle timeout of 30s (--idle-timeout)" in str(idle.value)
    assert "33" not in str(idle.value) and "600" not in str(idle.value)
    assert (idle.value.limit, idle.value.seconds) == ("idle timeout", 30)
    assert exit_code_for(idle.value) == 124


@pytest.mark.parametrize("where", ["init", "result"])
@pytest.mark.parametrize("bad", ["../../etc/passwd", "", "not-a-uuid", 42, None,
                                 SID + "\n", SID[:-1]])
def test_a_session_id_that_is_not_a_uuid_fails_the_call(where: str, bad: object) -> None:
    init = {"type": "system", "subtype": "init", "session_id": SID}
    lines = [{**init, "session_id": bad}, OK] if where == "init" else [init, {**OK,
                                                                           "session_id": bad}]
    with pytest.raises(ClaudeCallError, match=f"not a UUID.*{where}|{where} line.*not a UUID"
                       ) as caught:
        verdict(_collect(*lines), _outcome(0), Limits(), "session s")
    assert caught.value.exit_code == 0 and exit_code_for(caught.value) == 1
    assert caught.value.session_id in (None, SID)  # never the bad one
    assert "session s" in str(caught.value)


def test_an_upper_case_uuid_is_a_session_id_and_a_missing_one_is_no_error() -> None:
    upper = {**OK, "session_id": SID.upper()}
    assert verdict(_collect(upper), _outcome(), Limits(), "s")["session_id"] == SID.upper()
    without = {k: v for k, v in OK.items() if k != "session_id"}
    assert verdict(_collect(without), _outcome(), Limits(), "s")["result"] == "hi"


def test_a_line_past_the_limit_fails_the_call_and_names_the_limit() -> None:
    with pytest.raises(ClaudeCallError, match="longer than 64 MiB") as caught:
        verdict(_collect(), _outcome(0, LINE_TOO_LONG), Limits(), "session s")
    assert caught.value.exit_code is None and "session s" in str(caught.value)
    with pytest.raises(ClaudeCallError, match="longer than 1000 bytes"):
        verdict(_collect(OK), _outcome(0, LINE_TOO_LONG), Limits(max_line_bytes=1000), "s")


def test_collector_keeps_only_what_it_needs() -> None:
    collector = _collect({"type": "system", "subtype": "init", "claude_code_version": "2.1.330"},
                         "not json", {"type": "assistant"}, OK)
    assert collector.cli_version == "2.1.330" and collector.garbage_lines == 1
    assert collector.result == OK


def test_turn_cost_takes_the_difference_only_for_running_totals() -> None:
    assert turn_cost(0.5, None, "2.1.330") == 0.5             # first call of a session
    assert turn_cost(0.75, 0.5, "2.1.330") == pytest.approx(0.25)  # cumulative CLI
    assert turn_cost(0.75, 0.5, "2.1.197") == 0.75             # per-call CLI
    assert turn_cost(0.2, 0.5, None) == 0.2                    # below the total: per call
    assert turn_cost(None, 0.5, "2.1.330") is None


def _usage(**costs: object) -> dict[str, object]:
    return {model: {"inputTokens": 200, "outputTokens": 5, "costUSD": cost}
            for model, cost in costs.items()}


def test_call_cost_is_the_clis_own_figure_when_the_line_has_one() -> None:
    line = {**OK, "total_cost_usd": 0.9, "model_usage_since_last_result": _usage(a=0.25, b=0.5)}
    assert call_cost(line, 0.1, "2.1.332") == pytest.approx(0.75)  # not 0.9 - 0.1
    assert call_cost(line, None, None) == pytest.approx(0.75)
    after_an_error = {**OK, "total_cost_usd": 0.9, "model_usage_since_last_result": {}}
    assert call_cost(after_an_error, 0.9, "2.1.332") == 0.0
    # Without a usable figure, the difference of the running totals, as before.
    usage: object
    for usage in (None, [], _usage(a="0.25"), _usage(a=True), _usage(a=-1.0), {"a": 0.25}):
        line = {**OK, "total_cost_usd": 0.75, "model_usage_since_last_result": usage}
        assert call_cost(line, 0.5, "2.1.332") == pytest.approx(0.25), usage
    assert call_cost({**OK, "total_cost_usd": 0.75}, 0.5, "2.1.197") == 0.75
    assert call_cost(OK, 0.5, "2.1.332") is None


def test_every_error_has_a_documented_exit_code() -> None:
    assert exit_code_for(NameExistsError("x", name="x", session_id=SID)) == 2
    assert exit_code_for(KeyboardInterrupt()) == 130
    assert exit_code_for(RuntimeError("unexpected")) == 1
    assert sorted(set(EXIT_CODES.values())) == [1, 2, 3, 4, 70, 75, 124, 127, 130, 141]


def test_mapping_round_trip_keeps_unknown_keys() -> None:
    text = json.dumps({"workspace_dir": "/w", "future": 1,
                       "aliases": {"a": {"session_id": SID, "someday": [1, 2]}, "b": 7}})
    doc = parse(text)
    assert [e.name for e in doc.entries()] == ["a"]
    again = json.loads(dump(doc))
    assert again["future"] == 1 and again["aliases"]["a"]["someday"] == [1, 2]


@pytest.mark.parametrize("text", ["[1, 2]", "{", "null", '"x"'])
def test_mapping_corrupt_text_is_reported(text: str) -> None:
    with pytest.raises(CorruptMappingError):
        parse(text)


def test_a_run_state_round_trips_one_step_per_line() -> None:
    steps = {f"s{i}": StepState(id=f"s{i}", action="resume", session="one",
                                status=StepStatus.SUCCEEDED,
                                result="line one\nünïcode, \"quoted\"", output={"n": [i, None]},
                                cost_usd=0.5) for i in range(3)}
    state = RunState(run_id="r1", workflow="w.yml", workflow_name="w", started_at="now",
                     vars={"target": "src/"}, steps=steps)
    text = state_text(state)
    again = RunState.from_json(json.loads(text))
    assert again == state and again.status is RunStatus.RUNNING
    assert all(s.status is StepStatus.SUCCEEDED for s in again.steps.values())
    # The enums write the words state files have always held, so old files still load.
    assert '"status": "running"' in text and text.count('"status": "succeeded"') == 3
    assert json.loads(text)["total_cost_usd"] == 1.5
    step_lines = [line for line in text.splitlines() if line.startswith('    {"id": ')]
    assert len(step_lines) == 3 and all(json.loads(line.rstrip(",")) for line in step_lines)


def test_empty_mapping_text_is_an_empty_doc() -> None:
    assert parse("  \n").aliases == {} and isinstance(parse(""), MappingDoc)


def test_what_counts_as_transient_for_retries() -> None:
    from claude_persist.workflow.execute import is_transient

    assert is_transient(ClaudeCallError("x", api_error_status=529))
    assert is_transient(ClaudeCallError("x", api_error_status=429))
    assert not is_transient(ClaudeCallError("x", api_error_status=401))
    assert not is_transient(ClaudeCallError("no result"))
    assert is_transient(CallTimeoutError("x", limit=StopReason.IDLE_TIMEOUT))
    assert not is_transient(CallTimeoutError("x", limit=StopReason.DEADLINE))


def test_state_files_hold_plain_words_and_an_unknown_status_is_unreadable(tmp_path: Path
                                                                          ) -> None:
    from claude_persist.workflow.state import RunStore

    store = RunStore(tmp_path)
    old = {"run_id": "r1", "workflow": "w.yml", "workflow_name": "w", "started_at": "now",
           "vars": {}, "status": "interrupted", "steps": [
               {"id": "a", "action": "create", "session": "x", "status": "skipped"}]}
    (tmp_path / "r1.json").write_text(json.dumps(old))
    loaded = store.load("r1")
    assert loaded.status is RunStatus.INTERRUPTED
    assert loaded.steps["a"].status is StepStatus.SKIPPED
    assert f"{loaded.status}/{loaded.steps['a'].status}" == "interrupted/skipped"
    (tmp_path / "r1.json").write_text(json.dumps({**old, "status": "exploded"}))
    with pytest.raises(UsageError, match="unreadable"):
        store.load("r1")


def test_stop_reasons_read_as_the_words_messages_use() -> None:
    assert [str(r) for r in StopReason] == ["deadline", "idle timeout", "interrupt", "no exit",
                                            "error", "line too long"]
    assert f"the {StopReason.IDLE_TIMEOUT} of 2s" == "the idle timeout of 2s"
    assert StopReason("deadline") is StopReason.DEADLINE and NO_EXIT is StopReason.NO_EXIT
