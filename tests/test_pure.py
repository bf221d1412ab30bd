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
from claude_persist.claude.result import StreamCollector, turn_cost, verdict
from claude_persist.claude.runner import NO_EXIT, Limits, ProcessOutcome, StopReason
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


def _outcome(code: int = 0, stopped: StopReason | None = None, stderr: str = ""
             ) -> ProcessOutcome:
    return ProcessOutcome(returncode=code, stopped_by=stopped, stderr=stderr, duration=1.0,
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


def test_every_error_has_a_documented_exit_code() -> None:
    assert exit_code_for(NameExistsError("x", name="x", session_id=SID)) == 2
    assert exit_code_for(KeyboardInterrupt()) == 130
    assert exit_code_for(RuntimeError("unexpected")) == 1
    assert sorted(set(EXIT_CODES.values())) == [1, 2, 3, 4, 70, 124, 127, 130, 141]


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
                                            "error"]
    assert f"the {StopReason.IDLE_TIMEOUT} of 2s" == "the idle timeout of 2s"
    assert StopReason("deadline") is StopReason.DEADLINE and NO_EXIT is StopReason.NO_EXIT
