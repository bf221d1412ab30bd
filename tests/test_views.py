"""Looking back at what ran: run history (runs, runs-show, runs-prune), CI pages (the Markdown
summary, GITHUB_STEP_SUMMARY, ::error annotations, --report-md), against runs the fake claude
made: a failed run, the same run resumed, a fan-out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from claude_persist.workflow import history, report
from claude_persist.workflow.state import RunState, RunStatus, RunStore, StepState, StepStatus

from .conftest import Runner, mapping_path

FAILING = """\
version: 1
name: checks
steps:
  - id: plan
    create: planner
    prompt: Plan the work.
  - id: review
    resume: planner
    prompt: "Review it. [fake error=401]"
  - id: after
    create: writer
    prompt: Write it down.
"""


def write(folder: Path, text: str, name: str = "wf.yml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def table_rows(markdown: str) -> list[list[str]]:
    """The rendered table's rows (header first), each cell's inline content as text, after
    a real Markdown parser has read the page: what GitHub's renderer would lay out."""
    from markdown_it import MarkdownIt  # here: most test processes need no Markdown parser

    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    rows: list[list[str]] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "inline" and rows and token.level >= 4:
            rows[-1].append("".join(child.content if child.type != "softbreak" else "\n"
                                    for child in token.children or []))
    return rows


def rendered(markdown: str) -> str:
    from markdown_it import MarkdownIt

    return str(MarkdownIt("commonmark").enable("table").render(markdown))


def runs_folder(workspace: Path) -> Path:
    return mapping_path(workspace).parent / "runs"


# -- a failed run, then the same run resumed ----------------------------------------------------


def test_a_failed_run_on_every_view_then_resumed(cp: Runner, workspace: Path,
                                                 tmp_path: Path) -> None:
    wf = write(workspace, FAILING)
    summary = tmp_path / "summary.md"
    summary.write_text("# an earlier step's summary\n")
    ran = cp("run", "wf.yml", "--report-md", "out/summary.md",
             env={"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_ACTIONS": "true",
                  "GITHUB_WORKSPACE": str(workspace)})
    assert ran.code == 1, ran.err
    # The CI page: appended after what the job's earlier steps wrote, never truncated.
    page = summary.read_text()
    assert page.startswith("# an earlier step's summary\n### checks: failed\n")
    assert page.split("\n", 1)[1] == (workspace / "out/summary.md").read_text()
    rows = table_rows(page)
    assert rows[0] == ["Step", "Session", "Status", "Attempts", "Time (s)", "Cost"]
    assert [row[:4] for row in rows[1:4]] == [["plan", "planner", "succeeded", "1"],
                                             ["review", "planner", "failed", "1"],
                                             ["after", "writer", "skipped", "0"]]
    assert rows[1][5] == "$0.0125" and rows[3][5] == "-"
    assert rows[4][0] == "Total" and rows[4][2] == "1 succeeded, 1 failed, 1 skipped"
    assert "#### Failed steps" in page and "**review** (wf.yml:7):" in page
    assert "Invalid API key" in page
    # The annotation points at the step's line in the file, relative to the checkout.
    assert wf.read_text().splitlines()[6] == "  - id: review"
    annotations = [line for line in ran.err.splitlines() if line.startswith("::error ")]
    assert len(annotations) == 1
    assert annotations[0].startswith("::error file=wf.yml,line=7,title=step review failed::")
    assert "::error" not in ran.out

    listed = cp("runs", "--json")
    assert listed.code == 0, listed.err
    [run] = listed.json()["runs"]
    assert (run["name"], run["status"], run["succeeded"], run["failed"], run["skipped"],
            run["steps_total"]) == ("checks", "failed", 1, 1, 1, 3)
    assert run["cost_usd"] == pytest.approx(0.0125)
    assert run["stop_reason"] == "step review failed"
    text = cp("runs")
    assert re.search(rf"^{run['run_id']}\s+checks\s+\S+\s+\S+s\s+failed\s+\$0\.0125\s+1/3\s+1$",
                     text.out, re.M), text.out

    shown = cp("runs", "show", run["run_id"], "--json").json()
    steps = {step["id"]: step for step in shown["steps"]}
    plan = steps["plan"]
    assert plan["status"] == "succeeded" and plan["attempts"] == 1
    assert plan["tokens"] == {"input": 20, "output": 12, "cache_read": 0, "cache_creation": 0}
    assert plan["result"].startswith("fake reply to turn 1 of session " + plan["session_id"])
    assert plan["resume_command"] == "claude-persist resume -n planner -p PROMPT"
    assert plan["finished_at"] is not None and plan["duration_s"] > 0
    assert steps["review"]["status"] == "failed" and "Invalid API key" in steps["review"]["error"]
    assert steps["after"]["status"] == "skipped" and steps["after"]["resume_command"] is None
    as_text = cp("runs", "show", run["run_id"]).out
    assert "review  resume planner  failed  1 try" in as_text
    assert "  resume: claude-persist resume -n planner -p PROMPT" in as_text
    assert "  error: " in as_text and "tokens 20 in / 12 out" in as_text
    after = as_text.split("\nafter  ")[1]
    assert f"\n  skipped: {steps['after']['error']}" in after and "error:" not in after

    # The resume command it gives works as written.
    resumed_session = cp(*plan["resume_command"].split()[1:-1], "Go on.")
    assert resumed_session.code == 0, resumed_session.err
    assert "turn 3 of session " + plan["session_id"] in resumed_session.out

    # Fixed, the run is continued: the same run id, the plan step reused.
    wf.write_text(FAILING.replace(" [fake error=401]", ""))
    again = cp("run", "wf.yml", "--resume-run")
    assert again.code == 0, again.err
    [run2] = cp("runs", "--json").json()["runs"]
    assert (run2["run_id"], run2["status"], run2["succeeded"], run2["failed"]) == (
        run["run_id"], "succeeded", 3, 0)
    assert run2["cost_usd"] == pytest.approx(3 * 0.0125)  # over both invocations
    steps = {s["id"]: s for s in cp("runs", "show", run["run_id"], "--json").json()["steps"]}
    assert steps["plan"]["reused"] is True and steps["review"]["reused"] is False
    # The fake counts the session's lines as input: the later turn carried more history.
    assert steps["review"]["attempts"] == 1 and steps["review"]["tokens"]["input"] > 20
    # The planner session was resumed by hand in between: its name still maps to it.
    assert steps["review"]["session_id"] == plan["session_id"]


def test_resume_command_uses_the_id_once_the_name_moved_on(cp: Runner, workspace: Path) -> None:
    write(workspace, FAILING.replace(" [fake error=401]", ""))
    assert cp("run", "wf.yml").code == 0
    [run] = cp("runs", "--json").json()["runs"]
    first = {s["id"]: s for s in cp("runs", "show", run["run_id"], "--json").json()["steps"]}
    assert cp("create", "-n", "planner", "--force").code == 0  # the name now maps elsewhere
    moved = {s["id"]: s for s in cp("runs", "show", run["run_id"], "--json").json()["steps"]}
    assert moved["plan"]["resume_command"] == (
        f"claude-persist resume --session-id {first['plan']['session_id']} -p PROMPT")
    ran = cp(*moved["plan"]["resume_command"].split()[1:-1], "Still there?")
    assert ran.code == 0 and first["plan"]["session_id"] in ran.out


def test_the_invoke_face_names_its_own_commands(inv: Runner, workspace: Path) -> None:
    write(workspace, FAILING.replace(" [fake error=401]", ""))
    assert inv("run", "wf.yml").code == 0
    listed = inv("runs", "--json")
    assert listed.code == 0, listed.err
    [run] = listed.json()["runs"]
    shown = inv("runs-show", run["run_id"], "--json").json()
    assert shown["steps"][0]["resume_command"] == "inv resume -n planner -p PROMPT"
    talk = inv("show", "-n", "planner", "--turns", "1", "--json")
    assert talk.code == 0, talk.err
    assert [t["prompt"] for t in talk.json()["turns"]] == ["Review it."]
    pruned = inv("runs-prune", "--older-than", "1d")
    assert pruned.code == 0 and "removed 0 runs older than 1d" in pruned.out


# -- a fan-out ----------------------------------------------------------------------------------

FAN_OUT = """\
version: 1
name: fan
steps:
  - id: check
    run: ["sh", "-c", "echo 'bad | thing'; exit 3"]
    continue_on_error: true
  - id: impl
    for_each: [{n: a, p: ""}, {n: b, p: "[fake error=401 error_times=1]"}, {n: c, p: ""}]
    create: impl-${{ item.n }}
    prompt: "Implement ${{ item.n }}. ${{ item.p }}"
"""


def test_a_fan_out_run_then_resumed(cp: Runner, workspace: Path) -> None:
    write(workspace, FAN_OUT)
    ran = cp("run", "wf.yml", "--report-md", "sum.md", env={"GITHUB_ACTIONS": "true",
                                                          "GITHUB_WORKSPACE": str(workspace)})
    assert ran.code == 1, ran.err
    [run] = cp("runs", "--json").json()["runs"]
    # After impl[1] failed no new step starts: impl[2] is skipped.
    assert (run["succeeded"], run["failed"], run["skipped"], run["steps_total"]) == (
        1, 3, 1, 5)
    shown = cp("runs", "show", run["run_id"], "--json").json()
    assert [s["id"] for s in shown["steps"]] == ["check", "impl", "impl[0]", "impl[1]",
                                                  "impl[2]"]
    expansions = shown["steps"][2:]
    assert {s["parent"] for s in expansions} == {"impl"}
    assert [s["session"] for s in expansions[:2]] == ["impl-a", "impl-b"]
    assert [s["status"] for s in expansions] == ["succeeded", "failed", "skipped"]
    assert expansions[0]["resume_command"] == "claude-persist resume -n impl-a -p PROMPT"
    assert expansions[1]["resume_command"] is None  # its session was never made
    assert shown["steps"][1]["cost_usd"] == pytest.approx(0.0125)
    check = shown["steps"][0]
    assert (check["kind"], check["exit_code"], check["result"]) == ("shell", 3, "bad | thing\n")
    text = cp("runs", "show", run["run_id"]).out
    assert "\n  impl[1]  create impl-b  failed  1 try" in text  # indented under its fan-out
    page = (workspace / "sum.md").read_text()
    rows = table_rows(page)
    assert [row[0] for row in rows[1:-1]] == ["check", "impl", "impl[0]", "impl[1]", "impl[2]"]
    assert all(len(row) == 6 for row in rows)
    assert "**check** (wf.yml:4):" in page and "exit code 3" in page
    assert "**impl\\[1\\]** (wf.yml:7):" in page  # an expansion: its step's line
    assert "::warning file=wf.yml,line=4,title=step check failed::exit code 3" in ran.err
    assert "::error file=wf.yml,line=7,title=step impl[1] failed::" in ran.err
    assert "::error file=wf.yml,line=7,title=step impl failed::" in ran.err

    again = cp("run", "wf.yml", "--resume-run")  # the fake fails that prompt only once
    assert again.code == 0, again.err
    steps = {s["id"]: s for s in cp("runs", "show", run["run_id"], "--json").json()["steps"]}
    assert [steps[f"impl[{i}]"]["reused"] for i in range(3)] == [True, False, False]
    assert steps["impl[1]"]["status"] == "succeeded"
    [run2] = cp("runs", "--json").json()["runs"]
    assert run2["status"] == "succeeded" and run2["cost_usd"] == pytest.approx(3 * 0.0125)


# -- the Markdown and the annotations, character by character ----------------------------------


def made_state(steps: list[StepState], **fields: Any) -> RunState:
    return RunState(**{"run_id": "r1", "workflow": "/w/wf.yml", "workflow_name": "w",
                       "started_at": "2026-11-26T10:00:00+0000", "vars": {},
                       "steps": {s.id: s for s in steps}, "status": RunStatus.FAILED,
                       "duration_s": 2.5, "spent_usd": 0.5, **fields})


def test_cells_and_messages_survive_markdown() -> None:
    nasty = "a | b\r\nline two $5 and $6 <b>bold</b> `tick` *star* \\ back"
    state = made_state([
        StepState(id="s1", action="create", session="x|y", status=StepStatus.FAILED,
                  attempts=2, duration_s=1.25, cost_usd=0.5, error=nasty + "\n```\nfence"),
        StepState(id="s2", action="create", session="two\r\nlines *not* <i>html</i> $1 $2",
                  status=StepStatus.SKIPPED),
    ], stop_reason="step s1 | failed")
    page = report.markdown(state)
    rows = table_rows(page)
    assert len(rows) == 4 and all(len(row) == 6 for row in rows)
    assert rows[1] == ["s1", "x|y", "failed", "2", "1.2", "$0.5000"]
    assert rows[2][:3] == ["s2", "two<br>lines *not* <i>html</i> $1 $2", "skipped"]
    html = rendered(page)
    # The message is shown as it was, in a code block no backtick run inside it can close.
    assert "a | b\nline two $5 and $6 &lt;b&gt;bold&lt;/b&gt; `tick` *star* \\ back\n```\n" \
        "fence\n</code></pre>" in html
    assert "<b>bold" not in html and "<em>" not in html
    assert "step s1 | failed" in html  # the stop reason, escaped in the paragraph
    assert "\\$0.5000" in page  # never $...$ math on GitHub


def test_annotation_escapes() -> None:
    state = made_state([StepState(id="s1", action="create", session="x",
                                  status=StepStatus.FAILED, error="100% bad\r\nnext: a, b")])
    [line] = report.error_annotations(state, None, "dir, with: colon/wf.yml")
    assert line == ("::error file=dir%2C with%3A colon/wf.yml,title=step s1 failed::"
                    "100%25 bad%0D%0Anext: a, b")


def test_a_summary_file_that_cannot_be_written_is_a_warning(cp: Runner, workspace: Path,
                                                            tmp_path: Path) -> None:
    write(workspace, FAILING.replace(" [fake error=401]", ""))
    ran = cp("run", "wf.yml", env={"GITHUB_STEP_SUMMARY": str(tmp_path)})  # a folder
    assert ran.code == 0, ran.err
    assert f"warning: cannot append the run's summary to GITHUB_STEP_SUMMARY={tmp_path}" \
        in ran.err
    assert "fake reply" in ran.out


def test_report_md_refused_before_anything_runs(cp: Runner, workspace: Path,
                                                fake_claude: Any) -> None:
    write(workspace, FAILING)
    (workspace / "file").write_text("")
    ran = cp("run", "wf.yml", "--report-md", "file/sum.md")
    assert ran.code == 2 and "cannot write the --report-md file file/sum.md" in ran.err
    assert fake_claude.calls() == []
    assert cp("run", "wf.yml", "--dry-run", "--report-md", "x.md").code == 2


# -- prune --------------------------------------------------------------------------------------


def old_run(store: RunStore, run_id: str, age: float, status: RunStatus = RunStatus.SUCCEEDED,
            pid: int | None = None) -> None:
    state = made_state([StepState(id="s", action="create", session="x",
                                  status=StepStatus.SUCCEEDED)], run_id=run_id, status=status,
                       pid=pid)
    store.save(state)
    then = time.time() - age
    os.utime(store.path(run_id), (then, then))


def test_prune_never_removes_a_run_in_progress(cp: Runner, cp_process: Runner,
                                               workspace: Path, tmp_path: Path,
                                               fake_claude: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """And the run, stopped as a cancelled CI job is (SIGTERM), still leaves its page."""
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    write(workspace, """\
        version: 1
        name: slow
        steps:
          - id: wait
            create: waiter
            prompt: "Take your time. [fake delay=60]"
        """)
    proc = cp_process.start("run", "wf.yml")
    try:
        # Until the step's claude has started: the state file is written as the run begins,
        # before its step, and a SIGTERM that came that early (on a machine that stalled the
        # run while this test went on) left no failed step on the page, or no page at all.
        deadline = time.monotonic() + 60
        while not fake_claude.records() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert fake_claude.records(), "the step's claude never started"
        [state_file] = list(runs_folder(workspace).glob("*/*.json"))
        store = RunStore(state_file.parent)
        old_run(store, "old-done", 40 * 86400)
        old_run(store, "young", 3600)
        # The live run looks ancient, and its state says nothing of a process we could see.
        then = time.time() - 90 * 86400
        os.utime(state_file, (then, then))
        listed = {r["run_id"]: r for r in cp("runs", "--json").json()["runs"]}
        assert listed[state_file.stem]["status"] == "running"
        pruned = cp("runs", "prune", "--older-than", "30d", "--json")
        assert pruned.code == 0, pruned.err
        result = pruned.json()
        assert result["in_progress"] == [state_file.stem]
        assert [r["run_id"] for r in result["removed"]] == ["old-done"]
        assert state_file.exists() and store.exists("young") and not store.exists("old-done")
        assert not store.path("old-done").with_suffix(".lock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    page = summary.read_text()
    assert page.startswith("### slow: interrupted\n")
    assert table_rows(page)[1][:3] == ["wait", "waiter", "failed"]
    assert "::error file=wf.yml,line=4,title=step wait failed::interrupted" in err
    then = time.time() - 90 * 86400
    os.utime(state_file, (then, then))
    gone = cp("runs-prune", "--older-than", "30d")
    assert gone.code == 0 and f"removed {state_file.stem} (slow, interrupted" in gone.out
    assert not state_file.exists() and store.exists("young")


def test_prune_dry_run_and_bad_ages(cp: Runner, workspace: Path) -> None:
    store = RunStore(runs_folder(workspace) / "w-0")
    store.folder.mkdir(parents=True)
    old_run(store, "old", 10 * 86400)
    dry = cp("runs", "prune", "--older-than", "1w", "--dry-run")
    assert dry.code == 0 and "would remove old (w, succeeded" in dry.out
    assert store.exists("old")
    for bad in ("30", "30 days", "-1d", "d"):
        ran = cp("runs-prune", "--older-than", bad)
        assert ran.code == 2 and "is not an age" in ran.err, bad
    assert cp("runs-prune").code == 2
    assert store.exists("old")


def test_a_dead_run_is_abandoned_and_old_states_still_read(cp: Runner, workspace: Path) -> None:
    store = RunStore(runs_folder(workspace) / "w-0")
    store.folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    old_run(store, "crashed", 60, RunStatus.RUNNING, pid=dead.pid)
    # A state written before tokens and step end times were kept.
    legacy = json.loads(store.path("crashed").read_text())
    legacy["run_id"] = "legacy"
    for step in legacy["steps"]:
        del step["tokens"], step["finished_at"]
    store.path("legacy").write_text(json.dumps(legacy))
    listed = {r["run_id"]: r for r in cp("runs", "--json").json()["runs"]}
    assert listed["crashed"]["status"] == "abandoned"
    shown = cp("runs", "show", "legacy", "--json").json()
    assert shown["steps"][0]["tokens"] is None and shown["steps"][0]["finished_at"] is None
    missing = cp("runs", "show", "nope")
    assert missing.code == 2 and "no run nope" in missing.err
    store.path("broken").write_text("{not json")
    partly = cp("runs")
    assert partly.code == 0 and "warning: skipped a run" in partly.err
    assert "crashed" in partly.out


def test_no_runs_yet(cp: Runner) -> None:
    ran = cp("runs")
    assert ran.code == 0 and ran.out == "" and "no workflow runs yet" in ran.err
    assert cp("runs", "--json").json()["runs"] == []


# -- 1,000 steps --------------------------------------------------------------------------------


def big_run(folder: Path, count: int = 1000) -> tuple[RunStore, RunState]:
    store = RunStore(folder)
    folder.mkdir(parents=True)
    steps = [StepState(id="fan", action="for_each", session="", kind="for_each",
                       status=StepStatus.FAILED, error="1 of 999 expansions failed")]
    steps += [StepState(id=f"fan[{i}]", action="create", session=f"s-{i}", parent="fan",
                        session_id=f"00000000-0000-4000-8000-{i:012d}", attempts=1,
                        status=StepStatus.FAILED if i == 7 else StepStatus.SUCCEEDED,
                        error="API Error: 529" if i == 7 else None, duration_s=1.5,
                        cost_usd=0.0125, tokens={"input": 100, "output": 20},
                        result="an answer of a few words | with a pipe\n" * 5)
              for i in range(count - 1)]
    state = made_state(steps[:1], run_id="big")
    store.save(state)
    for step in steps[1:]:  # as a run writes them: one journal line each
        state.steps[step.id] = step
        store.append("big", step)
    return store, state


def test_a_thousand_steps_in_every_view(cp: Runner, workspace: Path) -> None:
    """What the views give for a run of 1,000 steps (their time is checked by the stress
    set, tests/stress/test_views_stress.py, away from a loaded machine's noise)."""
    root = runs_folder(workspace)
    big_run(root / "big-0")
    [listed] = cp("runs", "--json").json()["runs"]
    assert (listed["steps_total"], listed["succeeded"], listed["failed"]) == (1000, 998, 2)
    shown = cp("runs", "show", "big", "--json").json()
    assert len(shown["steps"]) == 1000 and shown["steps"][8]["error"] == "API Error: 529"
    text = cp("runs", "show", "big").out
    assert text.count("\n  fan[") == 999
    _, state = history.find(root, "big")
    rows = table_rows(report.markdown(state))
    assert len(rows) == 1002 and rows[9][:3] == ["fan[7]", "s-7", "failed"]


def test_tokens_are_the_calls_own() -> None:
    from claude_persist.workflow.state import usage_tokens

    own = {"model_usage_since_last_result": {
        "claude-opus-4-1": {"inputTokens": 100, "outputTokens": 7, "cacheReadInputTokens": 50,
                            "cacheCreationInputTokens": 3, "costUSD": 0.1},
        "claude-haiku-4-5": {"inputTokens": 20, "outputTokens": 1}},
        "usage": {"input_tokens": 99999, "output_tokens": 99999}}  # not used beside them
    assert usage_tokens(own) == {"input": 120, "output": 8, "cache_read": 50,
                                 "cache_creation": 3}
    older = {"model_usage_since_last_result": {}, "usage": {
        "input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 2}}
    assert usage_tokens(older) == {"input": 10, "output": 4, "cache_read": 2,
                                   "cache_creation": 0}
    assert usage_tokens({"usage": {"input_tokens": "many", "output_tokens": True}}) is None
    assert usage_tokens({"result": "no usage at all"}) is None
    assert usage_tokens(None) is None


def test_a_loop_run(cp: Runner, workspace: Path) -> None:
    write(workspace, """\
        version: 1
        name: looped
        steps:
          - id: start
            create: fixer
            prompt: Start.
          - id: green
            loop:
              max_iterations: 2
              until: steps.test.exit_code == 0
              steps:
                - id: test
                  run: ["sh", "-c", "echo 'it broke' >&2; exit 1"]
                  continue_on_error: true
                - id: fix
                  resume: fixer
                  prompt: "Pass ${{ loop.iteration }}: fix it."
        """)
    ran = cp("run", "wf.yml", "--report-md", "sum.md")
    assert ran.code == 1, ran.err
    [run] = cp("runs", "--json").json()["runs"]
    shown = cp("runs", "show", run["run_id"], "--json").json()
    steps = {s["id"]: s for s in shown["steps"]}
    assert [s["id"] for s in shown["steps"]] == ["start", "green", "test", "fix"]
    assert (steps["green"]["iteration"], steps["test"]["iteration"],
            steps["fix"]["iteration"]) == (2, 2, 2)
    assert steps["green"]["cost_usd"] == pytest.approx(2 * 0.0125)  # both passes' calls
    assert steps["test"]["stderr"] == "it broke\n"
    assert steps["fix"]["result"].startswith("fake reply to turn 3 of session")
    text = cp("runs", "show", run["run_id"]).out
    assert "\ngreen  loop  failed  " in text and "  pass 2  ended " in text
    assert "\n  test  run  failed  1 try  " in text and "    stderr: it broke" in text
    rows = table_rows((workspace / "sum.md").read_text())
    assert [row[:3] for row in rows[1:-1]] == [["start", "fixer", "succeeded"],
                                              ["green", "-", "failed"],
                                              ["test", "-", "failed"],
                                              ["fix", "fixer", "succeeded"]]


def test_a_report_path_that_is_the_workflow_or_the_other_report_is_refused(
        cp: Runner, workspace: Path, fake_claude: Any) -> None:
    wf = write(workspace, FAILING)
    (workspace / "link.yml").symlink_to("wf.yml")
    for args in (["--report-md", "wf.yml"], ["--report", "./wf.yml"],
                 ["--report-md", "link.yml"], ["--report", str(wf)]):
        ran = cp("run", "wf.yml", *args)
        assert ran.code == 2, (args, ran.err)
        assert "is the workflow file" in ran.err and "nothing has run" in ran.err
    ran = cp("run", "wf.yml", "--report", "out", "--report-md", "./out")
    assert ran.code == 2 and "name the same file" in ran.err, ran.err
    assert fake_claude.calls() == []
    assert wf.read_text() == textwrap.dedent(FAILING)
    assert not (workspace / "out").exists()


def test_control_characters_are_escaped_in_text_views(cp: Runner, workspace: Path) -> None:
    write(workspace, """\
        version: 1
        name: "paint\\e]0;t\\a"
        steps:
          - id: s
            run: ["printf", "\\\\033]0;pwned\\\\007\\\\033[2J\\\\nline two\\\\n"]
        """)
    ran = cp("run", "wf.yml")
    assert ran.code == 0, ran.err
    assert "\x1b" not in ran.err and "\x07" not in ran.err  # progress lines and table
    assert "\x1b]0;pwned\x07" in ran.out  # the result on stdout is the program's output
    listed = cp("runs")
    assert "\x1b" not in listed.out and "paint\\x1b]0;t\\x07" in listed.out
    [run] = cp("runs", "--json").json()["runs"]
    assert run["name"] == "paint\x1b]0;t\x07"
    text = cp("runs", "show", run["run_id"]).out
    assert "\x1b" not in text and "\x07" not in text
    assert "result: \\x1b]0;pwned\\x07\\x1b[2J\n" in text and "line two" in text
    step = cp("runs", "show", run["run_id"], "--json").json()["steps"][0]
    assert step["result"] == "\x1b]0;pwned\x07\x1b[2J\nline two\n"


def test_an_unreadable_run_names_its_file_and_what_is_wrong(cp: Runner, workspace: Path,
                                                           inv: Runner) -> None:
    write(workspace, FAILING.replace(" [fake error=401]", ""))
    assert cp("run", "wf.yml").code == 0
    [run] = cp("runs", "--json").json()["runs"]
    state_file = Path(run["state_file"])
    journal = state_file.with_suffix(".journal")
    good = state_file.read_bytes()
    cases = [
        (journal, b'{"id": "plan", "action": "create", "session": "p"}\n\xff\xfe\n',
         "line 2 is not UTF-8 text"),
        (journal, b'{"id": 5}\n', "line 1: a step has no action, session"),
        (journal, b'{"id": 5, "action": "create", "session": "p"}\n',
         "line 1: a step's id is a number, not a name"),
        (state_file, b"[1, 2, 3]", "it holds a list, not a run's state"),
        (state_file, b"\xff", "it is not UTF-8 text"),
    ]
    for path, content, why in cases:
        state_file.write_bytes(good)
        path.write_bytes(content)
        shown = cp("runs", "show", run["run_id"])
        assert shown.code == 2, shown.err
        assert f"{path} is unreadable: {why}" in shown.err, shown.err
        assert "delete that file, or remove the run with: claude-persist runs prune " \
            "--older-than AGE" in shown.err
        assert "missing" not in shown.err and "--resume-run" not in shown.err
        listed = cp("runs")
        assert listed.code == 0 and f"skipped a run: {why}" not in listed.err
        assert f"{path} is unreadable: {why}" in listed.err, listed.err
        journal.unlink(missing_ok=True)
    state_file.write_bytes(b"[1, 2, 3]")
    assert "remove the run with: inv runs-prune --older-than AGE" in inv(
        "runs-show", run["run_id"]).err
    resumed = cp("run", "wf.yml", "--resume-run", "--run-id", run["run_id"])
    assert resumed.code == 2 and "start a new run without --resume-run" in resumed.err


def test_a_failed_resume_keeps_its_session_and_resume_command(cp: Runner,
                                                             workspace: Path) -> None:
    write(workspace, FAILING.replace("fake error=401", "fake error=500"))
    assert cp("run", "wf.yml").code == 1
    [run] = cp("runs", "--json").json()["runs"]
    steps = {s["id"]: s for s in cp("runs", "show", run["run_id"], "--json").json()["steps"]}
    review = steps["review"]
    assert review["status"] == "failed"
    assert (review["session"], review["session_id"]) == ("planner",
                                                         steps["plan"]["session_id"])
    assert review["resume_command"] == "claude-persist resume -n planner -p PROMPT"
    text = cp("runs", "show", run["run_id"]).out
    assert f"session planner ({review['session_id']})" in text.split("\nreview")[1]


def test_the_summary_starts_on_a_line_of_its_own(tmp_path: Path) -> None:
    page = tmp_path / "summary.md"
    page.write_text("an earlier step's words")
    report.append_text(page, "### run\n")
    report.append_text(page, "### again\n")
    assert page.read_text() == "an earlier step's words\n### run\n### again\n"
    fresh = tmp_path / "fresh.md"
    report.append_text(fresh, "### run\n")
    assert fresh.read_text() == "### run\n"
    page.chmod(0o200)  # write-only: appended as before, unread
    report.append_text(page, "x")
    page.chmod(0o600)
    assert page.read_text().endswith("### again\nx")


def test_a_report_path_that_is_a_device_or_a_folder_asks_for_a_file(
        cp: Runner, workspace: Path, fake_claude: Any) -> None:
    write(workspace, FAILING)
    (workspace / "folder").mkdir()
    for path, kind in (("/dev/null", "a device"), ("folder", "a folder")):
        ran = cp("run", "wf.yml", "--report-md", path)
        assert ran.code == 2, ran.err
        assert f"{path}: it is {kind}, not a regular file. Give the path of a file " \
            "instead." in ran.err
        assert "Remove it" not in ran.err
    assert fake_claude.calls() == []


def test_a_shell_steps_stderr_tail_is_shown_whatever_its_status(cp: Runner,
                                                                workspace: Path) -> None:
    write(workspace, """\
        version: 1
        name: warned
        steps:
          - id: s
            run: ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo warn $i >&2; done; echo ok"]
        """)
    assert cp("run", "wf.yml").code == 0
    [run] = cp("runs", "--json").json()["runs"]
    text = cp("runs", "show", run["run_id"]).out
    assert "  stderr: warn 3\n          warn 4" in text and "warn 8" in text
    assert "warn 2" not in text  # the tail only: --json has it whole


def test_an_abandoned_run_lasted_until_its_last_write(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "w-0")
    store.folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    state = made_state([StepState(id="s", action="create", session="x")], status=RunStatus.RUNNING,
                       pid=dead.pid, duration_s=0.0)
    store.save(state)
    store.append("r1", StepState(id="s", action="create", session="x",
                                 status=StepStatus.SUCCEEDED))
    began = datetime.strptime(state.started_at, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    os.utime(store.path("r1"), (began + 10, began + 10))
    os.utime(store.journal("r1"), (began + 95, began + 95))
    [run] = history.list_runs(tmp_path).runs
    assert run["status"] == "abandoned" and run["duration_s"] == 95.0
    assert re.search(r"  1m35s +abandoned", history.listing_text([run]))


def test_prune_removes_a_folder_it_emptied_and_only_that(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    emptied, kept, busy = (RunStore(root / name) for name in ("a-1", "b-2", "c-3"))
    for store in (emptied, kept, busy):
        store.folder.mkdir(parents=True)
        old_run(store, "old", 40 * 86400)
    old_run(kept, "young", 3600)
    (busy.folder / "new.lock").write_text("")  # a run starting there holds its lock
    dry = history.prune(root, 30 * 86400, dry_run=True)
    assert len(dry.removed) == 3 and emptied.folder.is_dir()
    then = time.time() - 40 * 86400
    for store in (emptied, kept, busy):
        os.utime(store.folder, (then, then))
    done = history.prune(root, 30 * 86400)
    assert sorted(Path(r["state_file"]).parent.name for r in done.removed) == [
        "a-1", "b-2", "c-3"]
    assert not emptied.folder.exists()
    assert kept.exists("young") and (busy.folder / "new.lock").exists()
    fresh = RunStore(root / "d-4")  # emptied, but changed lately: a run may be starting
    fresh.folder.mkdir()
    old_run(fresh, "old", 40 * 86400)
    assert len(history.prune(root, 30 * 86400).removed) == 1 and fresh.folder.is_dir()
