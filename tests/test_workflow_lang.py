"""The workflow language: shell steps, expressions, if:, loops, for_each, resumption inside
them, and the Python API -- through the fake claude CLI as a real subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from claude_persist import (
    Sessions,
    WorkflowError,
    WorkflowRunFailedError,
    dry_run_workflow,
    run_workflow,
    validate_workflow,
)
from claude_persist.testing import InProcessClaude
from claude_persist.workflow import expr

from .conftest import REPO, wait_for


def write(folder: Path, text: str, name: str = "wf.yml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def steps(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in report["steps"]}


def problems(path: Path, workspace: Path) -> str:
    with pytest.raises(WorkflowError) as caught:
        validate_workflow(path, workspace=workspace)
    return "\n".join(caught.value.problems)


# -- shell steps ------------------------------------------------------------------------------


def test_shell_steps_expose_stdout_stderr_and_exit_code(workspace: Path,
                                                        fake_claude: Any) -> None:
    (workspace / "sub").mkdir()
    path = write(workspace, """
        version: 1
        steps:
          - id: text
            run: echo "out $GREETING"; echo oops >&2; exit 3
            env: {GREETING: "${{ vars.who }}"}
            continue_on_error: true
          - id: argv
            run: [sh, -c, 'pwd; printf "%s|" "$@"', sh, "a b", "$HOME"]
            cwd: sub
            output: out/argv.txt
          - id: ask
            create: s
            prompt: "exit ${{ steps.text.exit_code }} said ${{ steps.text.result }}"
        vars: {who: world}
    """)
    report = run_workflow(path, workspace=workspace)
    found = steps(report)
    assert found["text"]["status"] == "failed" and found["text"]["exit_code"] == 3
    assert found["text"]["result"] == "out world\n" and found["text"]["stderr"] == "oops\n"
    # An argv is passed as it is: no shell splits or expands its items.
    assert found["argv"]["result"] == f"{workspace / 'sub'}\na b|$HOME|\n"
    assert (workspace / "out/argv.txt").read_text() == found["argv"]["result"]
    assert "exit 3 said out world" in found["ask"]["result"]
    assert report["status"] == "succeeded"


def test_a_non_zero_exit_fails_the_run_and_a_limit_gives_124(workspace: Path,
                                                              fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - {id: slow, run: sleep 30, deadline: 0.5}
          - {id: never, run: echo no}
    """)
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(path, workspace=workspace)
    found = steps(caught.value.report)
    assert found["slow"]["exit_code"] == 124 and "deadline" in found["slow"]["error"]
    assert found["never"]["status"] == "skipped"
    assert caught.value.report["stop_reason"] == "step slow failed"


# -- expressions and if: ----------------------------------------------------------------------


def test_if_skips_with_its_reason_and_always_runs_after_a_failure(workspace: Path,
                                                                  fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - {id: probe, run: "printf 'a\\nb\\n'"}
          - id: skipped
            if: not contains(lines(steps.probe.result), "b") or steps.probe.exit_code != 0
            run: echo never
          - id: taken
            if: startswith(steps.probe.result, "a") and steps.skipped.status == "skipped"
            run: echo taken
          - {id: broken, run: exit 1}
          - {id: after, run: echo after}
          - id: report
            if: always()
            run: echo "$S $B"
            env: {S: "${{ steps.taken.status }}", B: "${{ failure() }}"}
    """)
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(path, workspace=workspace)
    found = steps(caught.value.report)
    assert found["skipped"]["status"] == "skipped"
    assert "if: not contains(lines(steps.probe.result)" in found["skipped"]["error"]
    assert found["taken"]["status"] == "succeeded"
    assert found["after"]["status"] == "skipped"
    assert found["report"]["status"] == "succeeded"
    assert found["report"]["result"] == "succeeded true\n"


def test_expression_errors_are_validation_errors_with_line_and_column(
        workspace: Path, fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - id: a
            if: steps.a.result.upper() == "X"
            run: echo
          - id: b
            run: echo
            if: len(steps.a.result) > 1
          - id: c
            create: s
            prompt: "x ${{ steps.a.exit_code + 1 }}"
          - id: d
            create: t-${{ item }}
            prompt: "${{ loop.iteration }}"
          - id: e
            loop:
              max_iterations: 2
              until: steps.nope.exit_code == 0
              steps:
                - {id: a, run: echo}
    """)
    text = problems(path, workspace)
    assert "wf.yml:5:9: steps[0].if: steps.a.result.upper() == \"X\": that() is not a " \
           "function" in text
    assert "wf.yml:9:9: steps[1].if: len(steps.a.result) > 1: len() is not a function" in text
    assert "wf.yml:12:20: steps[2].prompt: ${{ steps.a.exit_code + 1 }}" in text
    assert "arithmetic is not part of the language" in text
    assert "a session name may use ${{ }} only in a for_each step" in text
    assert "loop.iteration is only known inside a loop's steps" in text
    assert "${{ steps.nope.exit_code }}: no step 'nope'" in text
    assert "duplicate id 'a' (first used by steps[0]; ids are unique across loops too)" in text


def test_evaluation_is_bounded_and_calls_only_its_functions() -> None:
    with pytest.raises(expr.ExprError, match="longer than"):
        expr.parse("1 == 1 and " * 1000 + "true")
    for bad in ("__import__('os')", "steps.a.result.__class__", "[x for x in lines('a')]",
                "'a' * 1000000000", "vars.x.y"):
        with pytest.raises(expr.ExprError):
            expr.parse(bad)
    parsed = expr.parse("fromjson(steps.a.result) == [1, 'x'] and 2 in fromjson('[2]')")
    assert expr.evaluate(parsed, lambda ref: '[1, "x"]') is True
    with pytest.raises(expr.ExprError, match="not JSON"):
        expr.evaluate(expr.parse("fromjson(steps.a.result)"), lambda ref: "{")


# -- loops ------------------------------------------------------------------------------------


LOOP = """
    version: 1
    steps:
      - {id: plan, create: planner, prompt: Plan.}
      - id: green
        loop:
          max_iterations: 4
          until: steps.test.exit_code == 0
          steps:
            - id: test
              run: >-
                n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count;
                echo "pass $n"; test $n -ge 3
              continue_on_error: true
            - id: gate
              run: 'test ! -f stop-$N'
              env: {N: "${{ loop.iteration }}"}
            - id: fix
              if: steps.test.exit_code != 0
              resume: planner
              prompt: "Pass ${{ loop.iteration }}: ${{ steps.test.result }}"
"""


def test_a_loop_repeats_until_its_condition_holds(workspace: Path, fake_claude: Any) -> None:
    path = write(workspace, LOOP)
    report = run_workflow(path, workspace=workspace)
    found = steps(report)
    assert found["green"]["status"] == "succeeded" and found["green"]["iteration"] == 3
    assert found["test"]["result"] == "pass 3\n" and found["fix"]["status"] == "skipped"
    assert found["green"]["cost_usd"] == pytest.approx(2 * 0.0125)  # both passes' fixes
    prompts = [c["prompt_head"] for c in fake_claude.calls() if "Pass" in c["prompt_head"]]
    assert [p.split(":")[0] for p in prompts] == ["Pass 1", "Pass 2"]
    assert "pass 2" in prompts[1]


def test_an_exhausted_loop_fails_naming_its_last_until_value(workspace: Path,
                                                             fake_claude: Any) -> None:
    path = write(workspace, LOOP.replace("max_iterations: 4", "max_iterations: 2"))
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(path, workspace=workspace)
    error = steps(caught.value.report)["green"]["error"]
    assert error == ("loop green: until steps.test.exit_code == 0 was still false after 2 "
                     "iterations")


def test_resume_continues_inside_a_loop_without_repeating_claude_calls(
        workspace: Path, fake_claude: Any) -> None:
    path = write(workspace, LOOP)
    (workspace / "stop-2").touch()  # pass 2 fails at its gate, after its test
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(path, workspace=workspace)
    assert steps(caught.value.report)["green"]["iteration"] == 2
    calls = len(fake_claude.calls())
    assert calls == 2  # plan, fix of pass 1
    (workspace / "stop-2").unlink()
    (workspace / "count").write_text("1\n")  # as pass 1 left it: pass 2 runs its test again
    report = run_workflow(path, workspace=workspace, resume_run=True)
    found = steps(report)
    assert found["green"]["status"] == "succeeded" and found["green"]["iteration"] == 3
    assert found["plan"]["reused"] is True
    later = [c["prompt_head"] for c in fake_claude.calls()[calls:]]
    assert [p.split(":")[0] for p in later] == ["Pass 2"]  # pass 1 is not redone


# -- fan-out ----------------------------------------------------------------------------------


def test_for_each_runs_one_session_per_element_from_structured_output(
        workspace: Path, fake_claude: Any) -> None:
    (workspace / "plan.json").write_text(json.dumps({
        "type": "object", "properties": {"tasks": {
            "type": "array", "items": {"type": "object"},
            "examples": [[{"id": "parse", "title": "Parse"}, {"id": "print", "title": "Print"},
                          {"id": "test", "title": "Test"}]]}}}))
    path = write(workspace, """
        version: 1
        max_parallel: 4
        steps:
          - {id: plan, create: planner, schema: plan.json, prompt: Plan.}
          - id: implement
            for_each: ${{ steps.plan.output.tasks }}
            max_parallel: 2
            create: impl-${{ item.id }}
            prompt: Implement ${{ item.title }} (${{ item_index }}).
          - id: count
            run: echo "$N"
            env: {N: "${{ tojson(steps.implement.result) }}"}
    """)
    report = run_workflow(path, workspace=workspace)
    found = steps(report)
    assert [found[f"implement[{i}]"]["session"] for i in range(3)] == \
        ["impl-parse", "impl-print", "impl-test"]
    assert found["implement"]["status"] == "succeeded"
    assert len(found["implement"]["result"]) == 3
    assert "Implement Print (1)" in found["implement[1]"]["result"]
    assert {e.name for e in Sessions(workspace).list()} >= {"impl-parse", "impl-print"}
    # At most 2 expansions at once: the fake's log shows when each call ran.
    calls = [c for c in fake_claude.calls() if "Implement" in c["prompt_head"]]
    for call in calls:
        overlapping = [o for o in calls if o["started"] < call["ended"]
                       and call["started"] < o["ended"]]
        assert len(overlapping) <= 2


def test_expansions_must_name_distinct_sessions_before_any_runs(workspace: Path,
                                                                fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - id: fan
            for_each: ${{ fromjson('["a", "b", "A"]') }}
            create: s-${{ lines(item) == ["a"] }}
            prompt: x
    """)
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(path, workspace=workspace)
    error = steps(caught.value.report)["fan"]["error"]
    assert "fan[1] and fan[2] both name session 's-false'" in error
    assert fake_claude.calls() == []
    literal = write(workspace, """
        version: 1
        steps:
          - {id: fan, for_each: [a, b, A], create: 's-${{ item == "b" }}', prompt: x}
    """, "literal.yml")
    assert "wf.yml" not in (text := problems(literal, workspace))
    assert "literal.yml:4:32: steps[0].for_each[2]: elements 0 and 2 both name session " \
           "'s-false' in step fan" in text
    path = write(workspace, """
        version: 1
        steps:
          - {id: fan, for_each: [a, b], create: "same-${{ vars.x }}", prompt: x}
        vars: {x: "1"}
    """)
    assert "use ${{ item... }} or ${{ item_index }} in the name" in problems(path, workspace)
    fixed = write(workspace, """
        version: 1
        steps:
          - {id: fan, for_each: [a, b], resume: planner, prompt: x}
    """, "fixed.yml")
    assert "fixed.yml:4:33: steps[0].resume: each expansion of a for_each needs its own " \
           "session" in problems(fixed, workspace)


def test_resume_reruns_only_the_expansions_that_failed_or_did_not_run(
        workspace: Path, fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - id: impl
            for_each: [a, b, c, d]
            loop:
              max_iterations: 1
              until: steps.check.exit_code == 0
              steps:
                - {id: work, create: "w-${{ item }}", prompt: "Work on ${{ item }}."}
                - id: check
                  run: 'test ! -f fail-$X'
                  env: {X: "${{ item }}"}
    """)
    (workspace / "fail-b").touch()
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(path, workspace=workspace)
    found = steps(caught.value.report)
    assert found["impl[0]"]["status"] == "succeeded" and found["impl[1]"]["status"] == "failed"
    assert found["impl[2]"]["status"] == "skipped"  # the run stopped starting work
    assert found["impl[1]/check"]["exit_code"] == 1
    (workspace / "fail-b").unlink()
    before = len(fake_claude.calls())
    report = run_workflow(path, workspace=workspace, resume_run=True)
    assert report["status"] == "succeeded"
    again = sorted(c["prompt_head"] for c in fake_claude.calls()[before:])
    assert again == ["Work on c.", "Work on d."]  # b's claude call had succeeded


def test_the_budget_covers_expansions(workspace: Path) -> None:
    claude = InProcessClaude(cost=0.01)
    path = write(workspace, """
        version: 1
        budget_usd: 0.025
        steps:
          - {id: fan, for_each: [1, 2, 3, 4, 5, 6], create: "s${{ item }}", prompt: x}
    """)
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(path, workspace=Sessions(workspace, turn_runner=claude))
    report = caught.value.report
    assert len(claude.calls) == 3 and report["stop_reason"].startswith("budget_usd 0.025 spent")
    assert [s["status"] for s in report["steps"] if s["parent"] == "fan"] == \
        ["succeeded"] * 3 + ["skipped"] * 3


def test_the_runs_max_parallel_covers_the_expansions_of_every_fan_out(workspace: Path) -> None:
    """Two fan-outs side by side, each allowed 3 at once, under a run limit of 4: the calls
    block until released, so the peak of calls in flight is the limit that held."""
    inner = InProcessClaude()
    gate = threading.Event()
    lock = threading.Lock()
    active, peak = [0], [0]

    def turn_runner(turn: Any) -> Any:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            gate.wait(30)
            return inner(turn)
        finally:
            with lock:
                active[0] -= 1

    path = write(workspace, """
        version: 1
        max_parallel: 4
        steps:
          - {id: left, for_each: [1, 2, 3, 4, 5], max_parallel: 3, create: "l${{ item }}",
             prompt: "l ${{ item }}"}
          - {id: right, for_each: [1, 2, 3, 4, 5], max_parallel: 3, create: "r${{ item }}",
             prompt: "r ${{ item }}"}
    """)
    reports: list[dict[str, Any]] = []
    runner = threading.Thread(target=lambda: reports.append(run_workflow(
        path, workspace=Sessions(workspace, turn_runner=turn_runner), progress=io.StringIO())))
    runner.start()
    deadline = time.monotonic() + 60  # bounds a failing test only
    while active[0] < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room for a fifth call, were the limit not held
    assert active[0] == 4 and peak[0] == 4
    gate.set()
    runner.join(120)
    assert not runner.is_alive(), "the run did not finish"
    assert reports[0]["status"] == "succeeded" and len(inner.calls) == 10
    found = steps(reports[0])
    assert found["left"]["result"] == [found[f"left[{i}]"]["result"] for i in range(5)]


# -- validate and dry run ---------------------------------------------------------------------


def test_dry_run_shows_conditions_and_what_is_decided_at_run_time(workspace: Path,
                                                                  fake_claude: Any) -> None:
    path = write(workspace, LOOP + """
      - id: fan
        for_each: ${{ lines(steps.test.result) }}
        create: f-${{ item_index }}
        prompt: x
    """)
    text = dry_run_workflow(path, workspace=workspace)
    assert "if: steps.test.exit_code != 0  (decided at run time)" in text
    assert "loop: up to 4 passes, until steps.test.exit_code == 0" in text
    assert "the list is decided at run time" in text
    assert fake_claude.calls() == []


def test_ctrl_c_stops_shell_steps_and_claude_calls_and_the_state_says_where(
        workspace: Path, fake_claude: Any, group_alive: Any) -> None:
    write(workspace, """
        version: 1
        max_parallel: 2
        steps:
          - {id: ask, create: x, prompt: "[fake delay=30] a"}
          - id: build
            run: echo $$ > shell.pid; sleep 30 & echo $! > child.pid; wait
    """)
    proc = subprocess.Popen([sys.executable, "-m", "claude_persist.cli", "run", "wf.yml"],
                            cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60  # bounds a failing test only
    while (not fake_claude.records() or not (workspace / "child.pid").exists()
           or not (workspace / "child.pid").read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    groups = [r["pgid"] for r in fake_claude.records()]
    assert groups and (workspace / "child.pid").read_text().strip(), "the steps never started"
    shell = int((workspace / "shell.pid").read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert not any(group_alive(g) for g in [*groups, shell])  # the shell's group is its pid
    states = list((next(workspace.parent.glob("tmp/**/runs/*"))).glob("*.json"))
    saved = json.loads(states[0].read_text())
    found = {s["id"]: s for s in saved["steps"]}
    assert saved["status"] == "interrupted"
    assert found["build"]["status"] == "failed" and found["build"]["error"] == "interrupted"


def test_the_new_examples_run_offline(workspace: Path, fake_claude: Any) -> None:
    shutil.copytree(REPO / "workflows", workspace / "workflows")
    fan = run_workflow(workspace / "workflows/fan-out.yml", workspace=workspace)
    found = steps(fan)
    assert [found[f"implement[{i}]"]["session"] for i in range(3)] == \
        ["impl-parse-args", "impl-read-config", "impl-write-report"]
    assert found["review"]["status"] == "succeeded" and fan["status"] == "succeeded"
    # The fake edits nothing, so the real test command stays red for every pass.
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(workspace / "workflows/fix-until-green.yml", workspace=workspace)
    green = steps(caught.value.report)
    assert green["green"]["error"] == ("loop green: until steps.test.exit_code == 0 was "
                                       "still false after 3 iterations")
    assert green["test"]["exit_code"] == 1 and "test_mean" in green["test"]["stderr"]
    assert green["summary"]["result"] == "loop: failed; last exit code: 1\n"
    fixes = [c for c in fake_claude.calls() if "the tests fail" in c["prompt_head"]]
    assert len(fixes) == 3 and "Pass 3: the tests fail (exit 1)" in fixes[-1]["prompt_head"]
    # With the bug fixed (as claude would), the loop ends after its first pass.
    calc = workspace / "workflows/example-project/calc.py"
    calc.write_text(calc.read_text().replace("(len(values) + 1)", "len(values)"))
    fixed = run_workflow(workspace / "workflows/fix-until-green.yml", workspace=workspace)
    assert steps(fixed)["green"]["iteration"] == 1 and fixed["status"] == "succeeded"


def test_after_a_kill_resume_goes_on_at_the_step_where_the_loop_stopped(
        workspace: Path, fake_claude: Any, group_alive: Any) -> None:
    write(workspace, """
        version: 1
        steps:
          - {id: plan, create: planner, prompt: Plan.}
          - id: passes
            loop:
              max_iterations: 3
              until: loop.iteration == 3
              steps:
                - {id: fix, resume: planner, prompt: "Pass ${{ loop.iteration }}"}
                - id: gate
                  run: >-
                    test -f go || test "$N" != 2 ||
                    { echo $$ > gate.tmp && mv gate.tmp gate.pid && exec sleep 60; }
                  env: {N: "${{ loop.iteration }}"}
    """)
    proc = subprocess.Popen([sys.executable, "-m", "claude_persist.cli", "run", "wf.yml"],
                            cwd=workspace, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Only the gate of pass 2 writes gate.pid, whole (a rename), as it starts to sleep: the
    # journal has recorded every step before it, whatever the machine's load.
    wait_for((workspace / "gate.pid").exists, "the gate of pass 2 to start")
    proc.kill()  # SIGKILL: no handler runs, the state is as the journal left it
    proc.wait()
    gate = int((workspace / "gate.pid").read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(gate, signal.SIGKILL)  # what a kill -9 of the driver leaves running
    assert [c["prompt_head"] for c in fake_claude.calls()] == ["Plan.", "Pass 1", "Pass 2"]
    (workspace / "go").touch()
    report = run_workflow(workspace / "wf.yml", workspace=workspace, resume_run=True)
    found = steps(report)
    assert found["passes"]["iteration"] == 3 and report["status"] == "succeeded"
    assert [c["prompt_head"] for c in fake_claude.calls()][3:] == ["Pass 3"]
    assert found["plan"]["reused"] is True


def test_what_an_invocation_did_not_reach_is_kept_for_the_next(workspace: Path) -> None:
    claude = InProcessClaude()
    path = write(workspace, """
        version: 1
        steps:
          - {id: gate, run: test ! -f stop}
          - {id: fan, for_each: [a, b], create: "s-${{ item }}", prompt: "do ${{ item }}"}
          - {id: last, run: test -f done}
    """)
    sessions = Sessions(workspace, turn_runner=claude)
    with pytest.raises(WorkflowRunFailedError):
        run_workflow(path, workspace=sessions)  # the fan-out ran; last failed
    assert len(claude.calls) == 2
    (workspace / "stop").touch()
    with pytest.raises(WorkflowRunFailedError) as caught:
        run_workflow(path, workspace=sessions, resume_run=True)  # stops before the fan-out
    assert steps(caught.value.report)["fan[1]"]["reused"] is True
    (workspace / "stop").unlink()
    (workspace / "done").touch()
    report = run_workflow(path, workspace=sessions, resume_run=True)
    assert report["status"] == "succeeded" and len(claude.calls) == 2  # none repeated
