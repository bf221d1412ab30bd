"""The observer seam: what the sessions layer and the scheduler tell an observer, in which order
and under which parent, and the environment an observer adds to the claude process."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from claude_persist import Sessions
from claude_persist.errors import ClaudeCallError
from claude_persist.observe import (
    NULL_OBSERVER,
    CallInfo,
    CallOutcome,
    FanOut,
    NullObserver,
    RunInfo,
    RunOutcome,
    StepInfo,
    StepOutcome,
    call_succeeded,
    fan_out,
)
from claude_persist.testing import InProcessClaude
from claude_persist.workflow import WorkflowRunFailedError, run_workflow


class Recorder(NullObserver):
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.events: list[tuple[str, Any, Any]] = []
        self.env = dict(env or {})
        self.lock = threading.Lock()

    def _add(self, kind: str, what: Any, outcome: Any = None) -> None:
        with self.lock:
            self.events.append((kind, what, outcome))

    def run_started(self, run: RunInfo) -> None:
        self._add("run_started", run)

    def run_finished(self, run: RunInfo, outcome: RunOutcome) -> None:
        self._add("run_finished", run, outcome)

    def step_started(self, step: StepInfo) -> None:
        self._add("step_started", step)

    def step_finished(self, step: StepInfo, outcome: StepOutcome) -> None:
        self._add("step_finished", step, outcome)

    def call_started(self, call: CallInfo) -> Mapping[str, str]:
        self._add("call_started", call)
        return self.env

    def call_finished(self, call: CallInfo, outcome: CallOutcome) -> None:
        self._add("call_finished", call, outcome)

    def of(self, kind: str) -> list[tuple[Any, Any]]:
        return [(what, outcome) for k, what, outcome in self.events if k == kind]


def test_a_call_is_told_with_its_outcome_and_its_environment_reaches_claude(
        workspace: Path) -> None:
    claude = InProcessClaude()
    recorder = Recorder({"TRACEPARENT": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    sessions = Sessions(workspace, turn_runner=claude, observer=recorder)
    made = sessions.create("solo", "Hi.")
    ((call, _),) = recorder.of("call_started")
    assert (call.action, call.name, call.step) == ("create", "solo", None)
    ((_, outcome),) = recorder.of("call_finished")
    assert outcome.ok and outcome.exit_code == 0 and outcome.session_id == made.session_id
    assert outcome.cost_usd == pytest.approx(0.0125) and outcome.num_turns == 1
    env = claude.calls[0].turn.env
    assert env is not None and env["TRACEPARENT"] == recorder.env["TRACEPARENT"]
    assert "PATH" in env  # added to the process's own environment, not instead of it
    claude.fail_next(ClaudeCallError("API Error: 500", api_error_status=500))
    with pytest.raises(ClaudeCallError):
        sessions.resume("solo", "Again.")
    call, failed = recorder.of("call_finished")[-1]
    assert call.action == "resume" and call.session_id == made.session_id
    assert not failed.ok and failed.exit_code == 1 and failed.error_type == "ClaudeCallError"
    assert failed.error == "API Error: 500"


def test_without_an_observer_the_environment_is_left_alone(workspace: Path) -> None:
    claude = InProcessClaude()
    Sessions(workspace, turn_runner=claude, observer=NULL_OBSERVER).create("solo", "Hi.")
    assert claude.calls[0].turn.env is None and claude.calls[0].turn.on_event is None


WORKFLOW = """\
version: 1
name: observed
steps:
  - {id: plan, create: planner, prompt: Plan.}
  - id: each
    for_each: ["a", "b"]
    create: impl-${{ item }}
    prompt: Do ${{ item }}.
  - id: passes
    loop:
      max_iterations: 2
      until: loop.iteration == 2
      steps:
        - {id: fix, resume: planner, prompt: "Pass ${{ loop.iteration }}"}
  - {id: never, if: "false", resume: planner, prompt: No.}
"""


def test_a_run_reports_every_node_under_its_parent_and_calls_under_their_step(
        workspace: Path) -> None:
    recorder = Recorder()
    sessions = Sessions(workspace, turn_runner=InProcessClaude(), observer=recorder)
    (workspace / "wf.yml").write_text(WORKFLOW)
    report = run_workflow(workspace / "wf.yml", workspace=sessions)
    assert report["status"] == "succeeded"
    kinds = [kind for kind, _, _ in recorder.events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    run, outcome = recorder.of("run_finished")[0]
    assert run.workflow == "observed" and run.run_id == report["run_id"]
    assert outcome.status == "succeeded" and outcome.cost_usd == pytest.approx(5 * 0.0125)
    started = {info.key: info for info, _ in recorder.of("step_started")}
    finished = {info.key: out for info, out in recorder.of("step_finished")}
    assert {k: (v.kind, v.parent) for k, v in started.items()} == {
        "plan": ("claude", None), "each": ("for_each", None),
        "each[0]": ("claude", "each"), "each[1]": ("claude", "each"),
        "passes": ("loop", None), "passes#1": ("pass", "passes"),
        "passes#2": ("pass", "passes"), "fix": ("claude", "passes#2")}  # the last pass's
    fixes = [info.parent for info, _ in recorder.of("step_started") if info.key == "fix"]
    assert fixes == ["passes#1", "passes#2"]
    assert started["each[1]"].item_index == 1 and started["passes#2"].iteration == 2
    # a step skipped by its if: ends without a start
    assert "never" not in started and finished["never"].status == "skipped"
    assert finished["passes#1"].status == finished["passes#2"].status == "succeeded"
    assert finished["each[0]"].cost_usd == pytest.approx(0.0125)
    calls = [call.step for call, _ in recorder.of("call_started")]
    assert sorted(calls, key=str) == ["each[0]", "each[1]", "fix", "fix", "plan"]
    # each call is told between its step's start and end
    order = [(kind, what.key if isinstance(what, StepInfo) else getattr(what, "step", None))
             for kind, what, _ in recorder.events]
    plan_span = order.index(("step_started", "plan")), order.index(("step_finished", "plan"))
    assert plan_span[0] < order.index(("call_started", "plan")) < \
        order.index(("call_finished", "plan")) < plan_span[1]


def test_a_failed_loop_pass_and_run_are_reported_failed(workspace: Path) -> None:
    claude = InProcessClaude()
    recorder = Recorder()
    sessions = Sessions(workspace, turn_runner=claude, observer=recorder)
    (workspace / "wf.yml").write_text(WORKFLOW)
    def fine(turn: Any) -> None:
        return None

    # plan and the two expansions answer; the first pass's fix fails (not transient)
    claude.fail_next(fine, fine, fine, ClaudeCallError("API Error: 400"))
    with pytest.raises(WorkflowRunFailedError):
        run_workflow(workspace / "wf.yml", workspace=sessions)
    finished = {info.key: out for info, out in recorder.of("step_finished")}
    assert finished["passes#1"].status == "failed"
    assert "a step failed in pass 1" in (finished["passes#1"].error or "")
    assert finished["passes"].status == "failed"
    assert recorder.of("run_finished")[0][1].status == "failed"


def test_fan_out_drops_no_ops_and_merges_environments() -> None:
    first, second = Recorder({"A": "1", "B": "1"}), Recorder({"B": "2"})
    assert fan_out(None, NULL_OBSERVER) is NULL_OBSERVER
    assert fan_out(None, first) is first
    both = fan_out(first, None, second)
    assert isinstance(both, FanOut) and both.observers == (first, second)
    again = fan_out(both, NULL_OBSERVER)  # flattened, not nested
    assert isinstance(again, FanOut) and again.observers == (first, second)
    call = CallInfo("create", "x", "id")
    assert both.call_started(call) == {"A": "1", "B": "2"}
    both.call_finished(call, CallOutcome(ok=True))
    assert len(first.events) == len(second.events) == 2


def test_input_tokens_count_the_cache_as_the_genai_conventions_do() -> None:
    outcome = call_succeeded({"session_id": "s", "num_turns": 2, "usage": {
        "input_tokens": 3, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20,
        "output_tokens": 7}, "modelUsage": {"claude-opus-4-6": {}}}, 0.5)
    assert (outcome.input_tokens, outcome.cache_read_tokens, outcome.cache_creation_tokens,
            outcome.output_tokens) == (123, 100, 20, 7)
    assert outcome.response_model == "claude-opus-4-6" and outcome.num_turns == 2
    bare = call_succeeded({"usage": "odd", "num_turns": True}, None)
    assert bare.input_tokens is None and bare.num_turns is None and bare.session_id is None
