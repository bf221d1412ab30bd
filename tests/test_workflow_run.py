"""Running workflows through the fake claude as real subprocesses: order, parallelism, failure,
retries, budget, resumption, dry runs, reports, Ctrl-C."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from claude_persist import Sessions
from claude_persist.workflow import RunSettings, load, run
from claude_persist.workflow.report import ProgressPrinter

from .conftest import REPO, Runner, barrier_claude, mapping_path, read_mapping


def write(folder: Path, text: str, name: str = "wf.yml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def run_lib(workspace: Path, path: Path, **settings: Any) -> Any:
    sessions = Sessions(workspace)
    workflow, the_plan = load(path, sessions, settings.pop("vars", None),
                              settings.get("max_parallel"))
    run_settings = RunSettings(max_parallel=settings.pop("max_parallel", None)
                               or workflow.max_parallel, **settings)
    state, _ = run(workflow, the_plan, sessions, run_settings,
                   ProgressPrinter(workflow, stream=sys.stderr))
    return state


def test_the_examples_run_end_to_end(cp: Runner, workspace: Path, fake_claude: Any) -> None:
    shutil.copytree(REPO / "workflows", workspace / "workflows")
    review = cp("run", "workflows/review.yml", "--json", "--report", "out/review.json")
    assert review.code == 0, review.err
    report = review.json()
    assert report["status"] == "succeeded" and report["totals"]["succeeded"] == 3
    assert json.loads((workspace / "out/review.json").read_text()) == report
    verdict = json.loads((workspace / "workflows/reports/verdict.json").read_text())
    assert set(verdict) == {"grade", "score", "summary"}
    assert report["total_cost_usd"] == pytest.approx(3 * 0.0125)
    deepen = next(s for s in report["steps"] if s["id"] == "deepen")
    assert (deepen["model"], deepen["effort"], deepen["cost_usd"]) == ("opus", "max", 0.0125)
    assert "[1/3] open  create reviewer  sonnet/high  started" in review.err
    assert "run " in review.err.splitlines()[-1] and "succeeded" in review.err
    plan = cp("run", "workflows/plan-feature.yml")
    assert plan.code == 0, plan.err
    final = (workspace / "workflows/reports/plan.md").read_text()
    assert "role: You are the architect" in final and "effort max" in final
    assert set(read_mapping(workspace)["aliases"]) == {"reviewer", "judge", "architect",
                                                       "skeptic", "tester"}


def test_four_independent_sessions_run_side_by_side(cp: Runner, workspace: Path,
                                                    fake_claude: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    steps = "".join(f"  - {{id: s{i}, create: w{i}, prompt: go}}\n" for i in range(4))
    write(workspace, "version: 1\nsteps:\n" + steps)
    # All four were running at one moment: each call is held until all four have started (a
    # call kept waiting for a minute fails its step). No clock is compared: the fake's start
    # and end times around a 1 s delay say the same only while no call starts a second late.
    monkeypatch.setenv("CLAUDE_CMD", barrier_claude(tmp_path, 4))
    ran = cp("run", "wf.yml", "--max-parallel", "4", "--json")
    assert ran.code == 0, ran.err
    assert len(fake_claude.calls()) == 4


def test_max_parallel_bounds_the_steps_at_once_and_keeps_file_order(
        cp: Runner, workspace: Path, fake_claude: Any) -> None:
    steps = "".join(f"  - {{id: s{i}, create: w{i}, prompt: '[fake delay=0.5] go'}}\n"
                    for i in range(5))
    write(workspace, "version: 1\nsteps:\n" + steps)
    ran = cp("run", "wf.yml", "--max-parallel", "2")
    assert ran.code == 0, ran.err
    started = [line.split()[1] for line in ran.err.splitlines() if line.endswith("started")]
    # The first two in file order take the two slots. (Steps let go together announce their
    # start from their own threads, so within one wave the lines may come in either order.)
    assert sorted(started) == ["s0", "s1", "s2", "s3", "s4"]
    assert set(started[:2]) == {"s0", "s1"}
    calls = fake_claude.calls()
    at_once = max(sum(1 for c in calls if c["started"] <= t < c["ended"])
                  for t in (c["started"] for c in calls))
    assert len(calls) == 5 and at_once <= 2


def test_sequential_runs_in_file_order_one_at_a_time(workspace: Path, fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - {id: a, create: x, prompt: "[fake delay=0.3] a"}
          - {id: b, create: y, prompt: "[fake delay=0.3] b"}
          - {id: c, resume: x, prompt: "c"}
    """)
    assert run_lib(workspace, path).status == "succeeded"
    calls = fake_claude.calls()
    assert [c["prompt_head"][-1] for c in calls] == ["a", "b", "c"]
    assert all(b["started"] >= a["ended"] for a, b in itertools.pairwise(calls))


def test_one_session_never_runs_two_steps_at_once(workspace: Path, fake_claude: Any,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(workspace, """
        version: 1
        max_parallel: 4
        steps:
          - {id: a, create: x, prompt: "[fake delay=0.5] a"}
          - {id: b, resume: x, prompt: "[fake delay=0.5] b"}
          - {id: c, fork: x, as: y, prompt: "c"}
          - {id: d, create: z, prompt: "[fake delay=0.5] d"}
    """)
    # Another session runs side by side: the first calls are held until two have started,
    # and only d can start while a runs (b and c wait for a's session), so the run gets past
    # a only if d started while a ran. (Comparing d's start with a's end, 0.5 s later, fails
    # when d starts late.)
    monkeypatch.setenv("CLAUDE_CMD", barrier_claude(tmp_path, 2))
    assert run_lib(workspace, path).status == "succeeded"
    by_step = {c["prompt_head"][-1]: c for c in fake_claude.calls()}
    assert by_step["b"]["started"] >= by_step["a"]["ended"]
    assert by_step["c"]["started"] >= by_step["b"]["ended"]


def test_a_failed_step_fails_the_run_and_skips_the_rest(cp: Runner, workspace: Path,
                                                         fake_claude: Any) -> None:
    write(workspace, """
        version: 1
        max_parallel: 2
        steps:
          - {id: slow, create: a, prompt: "[fake delay=1.5] slow"}
          - {id: bad, create: b, prompt: "[fake error=401] bad"}
          - {id: later, resume: b, prompt: "later"}
          - {id: after-slow, resume: a, prompt: "after"}
    """)
    ran = cp("run", "wf.yml", "--json")
    assert ran.code == 1
    steps = {s["id"]: s for s in ran.json()["steps"]}
    assert steps["bad"]["status"] == "failed" and "Invalid API key" in steps["bad"]["error"]
    assert steps["slow"]["status"] == "succeeded"  # already running: it finished
    assert steps["later"]["status"] == "skipped" and steps["after-slow"]["status"] == "skipped"
    assert "--resume-run" in ran.err and "Traceback" not in ran.err


def test_continue_on_error_lets_later_steps_see_the_failure(workspace: Path,
                                                            fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - {id: a, create: x, prompt: "[fake error=500] a", continue_on_error: true}
          - id: b
            create: y
            prompt: "status=${{ steps.a.status }} result=[${{ steps.a.result }}]"
    """)
    state = run_lib(workspace, path)
    assert state.status == "succeeded" and state.steps["a"].status == "failed"
    assert fake_claude.calls()[-1]["prompt_head"] == "status=failed result=[]"


def test_transient_failures_are_retried_with_backoff(workspace: Path, fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - {id: a, create: x, retries: 2, prompt: "[fake error=529 error_times=2] a"}
          - {id: b, create: y, retries: 2, prompt: "[fake error=401] b"}
    """)
    state = run_lib(workspace, path, backoff_seconds=0.05)
    assert state.steps["a"].status == "succeeded" and state.steps["a"].attempts == 3
    assert state.steps["b"].status == "failed" and state.steps["b"].attempts == 1  # not transient


def test_the_budget_stops_new_steps(cp: Runner, workspace: Path, fake_claude: Any) -> None:
    write(workspace, """
        version: 1
        budget_usd: 0.02
        steps:
          - {id: a, create: x, prompt: "[fake cost=0.015] a"}
          - {id: b, resume: x, prompt: "[fake cost=0.015] b"}
          - {id: c, resume: x, prompt: "c"}
    """)
    ran = cp("run", "wf.yml", "--json")
    report = ran.json()
    assert ran.code == 1 and "budget_usd 0.02 spent" in report["stop_reason"]
    assert [s["status"] for s in report["steps"]] == ["succeeded", "succeeded", "skipped"]
    assert report["total_cost_usd"] == pytest.approx(0.03)  # per-call costs, never doubled


def test_resume_run_skips_unchanged_successes(cp: Runner, workspace: Path,
                                              fake_claude: Any) -> None:
    write(workspace, """
        version: 1
        vars: {mode: ""}
        steps:
          - {id: a, create: x, prompt: "first"}
          - {id: b, resume: x, prompt: "${{ vars.mode }} second"}
          - {id: c, resume: x, prompt: "third after ${{ steps.a.session_id }}"}
    """)
    failed = cp("run", "wf.yml", "--var", "mode=[fake error=500]", "--json")
    assert failed.code == 1
    first_id = failed.json()["steps"][0]["session_id"]
    resumed = cp("run", "wf.yml", "--resume-run", "--json")
    assert resumed.code == 0, resumed.err
    report = resumed.json()
    assert report["run_id"] == failed.json()["run_id"]
    assert [s["reused"] for s in report["steps"]] == [True, False, False]
    assert report["steps"][0]["session_id"] == first_id  # same session, not re-created
    calls = fake_claude.calls()
    assert len(calls) == 4 and calls[-1]["prompt_head"] == f"third after {first_id}"
    assert [s["status"] for s in report["steps"]] == ["succeeded"] * 3
    nothing_left = cp("run", "wf.yml", "--resume-run")
    assert nothing_left.code == 2 and "no unfinished run" in nothing_left.err


def test_a_changed_step_runs_again_on_resume(cp: Runner, workspace: Path,
                                             fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        steps:
          - {id: a, create: x, prompt: "one"}
          - {id: b, resume: x, prompt: "[fake error=500] two"}
    """)
    assert cp("run", "wf.yml").code == 1
    path.write_text(path.read_text().replace('prompt: "one"', 'prompt: "one, edited"'))
    assert cp("run", "wf.yml", "--resume-run").code == 1
    assert [c["prompt_head"] for c in fake_claude.calls()][-2] == "one, edited"


def test_dry_run_calls_nothing_and_writes_nothing(cp: Runner, workspace: Path,
                                                  fake_claude: Any) -> None:
    write(workspace, """
        version: 1
        vars: {who: world}
        steps:
          - {id: a, create: x, model: opus, prompt: "hello ${{ vars.who }}"}
          - {id: b, resume: x, prompt: "then ${{ steps.a.result }}"}
    """)
    ran = cp("run", "wf.yml", "--dry-run")
    assert ran.code == 0, ran.err
    assert "hello world" in ran.out and "then ${{ steps.a.result }}" in ran.out
    assert "'--resume=<session id of x from step a>'" in ran.out and "--model=opus" in ran.out
    assert fake_claude.records() == []
    assert not mapping_path(workspace).parent.exists()


def test_results_are_rendered_once(workspace: Path, fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        vars: {x: SECRET}
        steps:
          - {id: a, create: s, prompt: "echo $${{ vars.x }}"}
          - {id: b, create: t, prompt: "got ${{ steps.a.result }}"}
    """)
    assert run_lib(workspace, path).status == "succeeded"
    second = fake_claude.calls()[-1]["prompt_head"]
    assert "echo ${{ vars.x }}" in second and "SECRET" not in second


def test_a_role_on_a_resume_step_replaces_the_sessions_role(workspace: Path,
                                                            fake_claude: Any) -> None:
    (workspace / "one.md").write_text("First role.")
    (workspace / "two.md").write_text("Second role.")
    path = write(workspace, """
        version: 1
        steps:
          - {id: a, create: s, role: one.md, prompt: a}
          - {id: b, resume: s, role: two.md, prompt: b}
          - {id: c, resume: s, prompt: c}
    """)
    assert run_lib(workspace, path).status == "succeeded"
    assert [c["role"] for c in fake_claude.calls()] == ["First role.", "Second role.",
                                                        "Second role."]


def test_ctrl_c_stops_the_children_and_exits_130(workspace: Path, fake_claude: Any,
                                                 cp: Runner, group_alive: Any) -> None:
    write(workspace, """
        version: 1
        max_parallel: 2
        steps:
          - {id: a, create: x, prompt: "[fake delay=30] a"}
          - {id: b, create: y, prompt: "[fake delay=30] b"}
    """)
    proc = subprocess.Popen([sys.executable, "-m", "claude_persist.cli", "run", "wf.yml"],
                            cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60  # bounds a failing test only
    while len(fake_claude.records()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    groups = [r["pgid"] for r in fake_claude.records()]
    assert len(groups) == 2, "the fakes never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "--resume-run" in err
    assert not any(group_alive(g) for g in groups)


def test_validate_and_run_through_both_faces(face: Runner, workspace: Path) -> None:
    write(workspace, "version: 1\nsteps: [{id: a, create: x, prompt: hi}]\n")
    ok = face("validate", "wf.yml")
    assert ok.code == 0 and "valid; 1 step, sequential" in ok.out
    ran = face("run", "wf.yml", "--run-id", "nightly-1", "--json")
    assert ran.code == 0 and ran.json()["run_id"] == "nightly-1"
    again = face("run", "wf.yml", "--run-id", "nightly-1")
    assert again.code == 2 and "exists already" in again.err
    write(workspace, "version: 1\nsteps: [{id: a, resume: y, prompt: hi}]\n", "bad.yml")
    bad = face("validate", "bad.yml")
    assert bad.code == 2 and "bad.yml:2:" in bad.err and "Traceback" not in bad.err
    assert face("validate", "missing.yml").code == 2
    no_file = face("run")  # a missing positional is Invoke's own parse error
    assert no_file.code == (1 if face.name == "inv" else 2) and "file" in no_file.err
    assert face("run", "wf.yml", "--var", "novalue").code == 2


def test_a_missing_claude_aborts_the_run_with_127(cp: Runner, workspace: Path) -> None:
    write(workspace, "version: 1\nsteps: [{id: a, create: x, prompt: hi}]\n")
    ran = cp("run", "wf.yml", env={"CLAUDE_CMD": "no-such-claude"})
    assert ran.code == 127 and "CLAUDE_CMD" in ran.err


def test_structured_output_feeds_later_steps_and_files(workspace: Path,
                                                       fake_claude: Any) -> None:
    (workspace / "verdict.json").write_text(json.dumps(
        {"type": "object", "properties": {"grade": {"enum": ["B", "C"]},
                                          "notes": {"type": "object",
                                                    "properties": {"n": {"type": "integer"}}}}}))
    path = write(workspace, """
        version: 1
        steps:
          - {id: v, create: judge, schema: verdict.json, output: out/v.json, prompt: grade}
          - id: w
            create: writer
            output: out/w.txt
            prompt: "grade=${{ steps.v.output.grade }} n=${{ steps.v.output.notes.n }} all=${{ steps.v.output }} cost=${{ steps.v.cost_usd }}"
    """)  # noqa: E501
    assert run_lib(workspace, path).status == "succeeded"
    prompt = fake_claude.calls()[-1]["prompt_head"]
    assert prompt.startswith('grade=B n=1 all={"grade": "B", "notes": {"n": 1}} cost=0.0125')
    assert json.loads((workspace / "out/v.json").read_text()) == {"grade": "B",
                                                                  "notes": {"n": 1}}
    assert "fake reply" in (workspace / "out/w.txt").read_text()
