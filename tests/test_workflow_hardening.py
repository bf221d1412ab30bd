"""Workflows against hostile or careless input and concurrent use: bounded YAML and files,
linear expressions, declared environment, resumption that notices changed inputs, one process
per run, a budget over all of a run's invocations, settings that add up, validation that
reports everything, and reports that carry the results."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from claude_persist import WorkflowError
from claude_persist.claude.command import Action
from claude_persist.settings import CallSettings
from claude_persist.workflow import expr, spec
from claude_persist.workflow.report import ProgressPrinter, money, table
from claude_persist.workflow.spec import load_workflow
from claude_persist.workflow.state import RunState, StepState, StepStatus

from .conftest import Runner


def write(folder: Path, text: str, name: str = "wf.yml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path | str, **kwargs: Any) -> list[str]:
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path, **kwargs)
    return caught.value.problems


@dataclass
class Validated:
    """What ``claude-persist validate`` would show: its exit code and what it printed."""

    returncode: int
    stdout: str


def validate_with_a_timeout(path: Path, seconds: float = 60) -> Validated:
    """The loader under an alarm, so that a regression (a blocking open, a runaway expansion)
    fails this test by its timeout instead of stalling the suite: the alarm's exception ends a
    blocking open and any loop in Python code (the YAML loader is pure Python)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"loading {path} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        load_workflow(path)
    except WorkflowError as exc:
        return Validated(2, f"{exc}\n")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return Validated(0, "")


# -- Part 1: a step's settings are one CallSettings ------------------------------------------


def test_a_steps_settings_are_its_keys_over_the_defaults_and_args_add_up(
        tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        defaults: {model: sonnet, effort: HIGH, max_turns: 3, args: [--permission-mode, plan]}
        steps:
          - {id: a, create: s, prompt: x, args: [--add-dir, src]}
          - {id: b, create: t, prompt: x, model: opus, args: [--add-dir, lib], args_replace: true}
          - {id: c, create: u, prompt: x}
    """)
    a, b, c = load_workflow(path).steps
    assert a.settings == CallSettings(model="sonnet", effort="high", max_turns=3, extra_args=(
        "--permission-mode", "plan", "--add-dir", "src"))
    assert b.settings == CallSettings(model="opus", effort="high", max_turns=3,
                                      extra_args=("--add-dir", "lib"))
    assert c.settings.extra_args == ("--permission-mode", "plan")


def test_every_settings_key_of_the_schema_names_a_call_setting() -> None:
    names = {f.name for f in CallSettings.__dataclass_fields__.values()}
    keys = spec.setting_keys()
    assert {node["x-setting"] for node in keys.values()} <= names
    assert set(keys) >= {"model", "effort", "role", "schema", "deadline", "idle_timeout",
                         "args", "max_turns", "max_budget_usd"}


def test_a_new_setting_needs_only_the_schema(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A settings property marked x-setting is read, merged and fingerprinted by the generic
    code: here a boolean ``partial`` for CallSettings.include_partial, which no workflow code
    names."""
    schema = json.loads(json.dumps(spec.schema()))
    schema["$defs"]["settings"]["properties"]["partial"] = {
        "type": "boolean", "title": "true or false", "x-setting": "include_partial"}
    schema["$defs"]["step"]["properties"]["partial"] = {
        "$ref": "#/$defs/settings/properties/partial"}
    monkeypatch.setattr(spec, "schema", lambda: schema)
    spec._validator.cache_clear()
    spec.setting_keys.cache_clear()
    try:
        path = write(tmp_path, """
            version: 1
            defaults: {partial: true}
            steps: [{id: a, create: s, prompt: x}, {id: b, create: s, prompt: x, partial: false}]
        """)
        a, b = load_workflow(path).steps
        assert (a.settings.include_partial, b.settings.include_partial) == (True, False)
        assert "--include-partial-messages" in a.settings.argv()
        assert a.fingerprint != replace(b, id="a", index=0).fingerprint
    finally:
        spec._validator.cache_clear()
        spec.setting_keys.cache_clear()


def test_the_fingerprint_follows_every_setting_and_the_role_files_text(tmp_path: Path) -> None:
    (tmp_path / "role.md").write_text("Be brief.")
    path = write(tmp_path, "version: 1\nsteps: [{id: a, create: s, role: role.md, prompt: x}]\n")
    before = load_workflow(path).steps[0].fingerprint
    (tmp_path / "role.md").write_text("Be thorough.")
    assert load_workflow(path).steps[0].fingerprint != before
    path.write_text(path.read_text().replace("prompt: x", "prompt: x, max_turns: 2"))
    assert load_workflow(path).steps[0].fingerprint not in (before, "")


def test_dry_run_shows_the_merged_args(cp: Runner, workspace: Path) -> None:
    write(workspace, """
        version: 1
        defaults: {args: [--permission-mode, plan]}
        steps: [{id: a, create: s, prompt: x, args: [--add-dir, src]}]
    """)
    ran = cp("run", "wf.yml", "--dry-run")
    assert ran.code == 0, ran.err
    assert "--permission-mode plan --add-dir src" in ran.out


# -- 3: bounded YAML and files ----------------------------------------------------------------

LAUGHS = """\
version: 1
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
steps: [{id: s, create: x, prompt: *i}]
"""


def test_an_alias_bomb_is_refused_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yml"
    path.write_text(LAUGHS)
    assert len(LAUGHS) < 600
    ran = validate_with_a_timeout(path)  # anything but a WorkflowError fails the test
    assert ran.returncode == 2, ran.stdout
    assert "aliases expand to more than 10000 values" in ran.stdout
    assert f"{path}:" in ran.stdout


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        defaults: &shared {model: sonnet}
        steps:
          - {id: a, create: s, prompt: &p hello}
          - {id: b, create: t, prompt: *p}
    """)
    assert [s.prompt for s in load_workflow(path).steps] == ["hello", "hello"]


def test_a_recursive_alias_is_refused_with_its_place(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nsteps: &s [{id: a, create: s, prompt: x, needs: *s}]\n")
    found = problems(path)
    assert found == [f"{path}:2:8: refused: an alias refers to a value that contains it, so "
                     "it would never end; remove the alias from its anchor"]


def test_deep_nesting_is_refused_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    # Under libyaml's own limit (1000 levels), so our bound refuses it on the libyaml path;
    # test_workflow_spec's 200,000 levels go past libyaml's to PyYAML's parser.
    path.write_text("version: 1\nsteps: " + "[" * 500 + "]" * 500 + "\n")
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}:2:")
    assert "nested more than 64 levels deep" in found[0]
    fine = tmp_path / "fine.yml"
    fine.write_text("version: 1\nvars: {}\nsteps: [{id: a, create: s, prompt: x}]\nx: "
                    + "[" * 60 + "]" * 60 + "\n")
    assert "unknown key" in problems(fine)[0]  # parsed: only the schema objects


def test_a_document_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yml"
    path.write_text("version: 1\n# " + "x" * (1 << 20) + "\nsteps: []\n")
    found = problems(path)
    assert len(found) == 1 and "more than the 1048576 allowed" in found[0]


@pytest.mark.parametrize("key", ["workflow", "prompt_file", "role", "schema"])
def test_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path, key: str) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    if key == "workflow":
        targets = [fifo, Path("/dev/zero")]
    else:
        prompt = "" if key == "prompt_file" else "prompt: x, "
        targets = [write(tmp_path, f"version: 1\nsteps: [{{id: a, create: s, {prompt}"
                                   f"{key}: {device}}}]\n", f"{device.name}.yml")
                   for device in (fifo, Path("/dev/zero"))]
    for target in targets:
        ran = validate_with_a_timeout(target)  # a blocking open times out: fails
        assert ran.returncode == 2, ran.stdout
        assert "not a regular file" in ran.stdout, ran.stdout
        if key != "workflow":
            assert f"{target}:2:" in ran.stdout


# -- 4: expressions in linear time -------------------------------------------------------------


def test_unclosed_expressions_render_and_validate_in_linear_time(tmp_path: Path) -> None:
    text = "${{" * ((1 << 20) // 3)  # a prompt file of just under 1 MiB
    began = time.monotonic()
    assert expr.render(text, lambda ref: "x") == text
    assert list(expr.find(text)) == []
    (tmp_path / "p.md").write_text(text)
    path = write(tmp_path, "version: 1\nsteps: [{id: a, create: s, prompt_file: p.md}]\n")
    assert load_workflow(path).steps[0].refs == ()
    # Quadratic scanning took over a minute for a sixth of this (so half an hour for all of
    # it); linear takes a fraction of a second, far under a bound no loaded machine reaches.
    assert time.monotonic() - began < 30


def test_scanning_finds_the_same_lookups_as_before() -> None:
    def lookup(ref: expr.Ref) -> str:
        return "<" + ".".join(ref.parts) + ">"

    assert expr.render("a ${{ vars.x }} $${{ vars.y }} $$${{ vars.z }} ${{ vars.w", lookup) == \
        "a <vars.x> ${{ vars.y }} $${{ vars.z }} ${{ vars.w"
    assert expr.render("${{ vars.a }}}} ${{}} ${{ nope!", lookup) == "<vars.a>}} ${{}} ${{ nope!"
    long_bad = "${{ " + "x " * 1000 + "}}"
    message = str(next(expr.find(long_bad)))
    assert len(message) < 300


# -- 7: only declared environment variables ----------------------------------------------------


def test_only_declared_environment_variables_can_be_read(
        cp: Runner, workspace: Path, fake_claude: Any) -> None:
    (workspace / "issue.md").write_text("Fix this. ${{ env.ANTHROPIC_API_KEY }}\n")
    write(workspace, """
        version: 1
        env: [GITHUB_SHA]
        steps:
          - {id: a, create: s, prompt: "at ${{ env.GITHUB_SHA }}"}
          - {id: b, create: t, prompt_file: issue.md}
    """)
    secrets = {"ANTHROPIC_API_KEY": "sk-secret-value", "GITHUB_SHA": "abc123"}
    for args in (("validate",), ("run", "--dry-run"), ("run", "--json")):
        ran = cp(args[0], "wf.yml", *args[1:], env=secrets)
        assert ran.code == 2, ran.err
        assert "wf.yml:6:24: steps[1].prompt_file: ${{ env.ANTHROPIC_API_KEY }}: only " \
               "environment variables the workflow declares can be read; add " \
               "ANTHROPIC_API_KEY to its top-level env: list" in ran.err
        assert "sk-secret-value" not in ran.out + ran.err
    assert fake_claude.records() == []
    (workspace / "issue.md").write_text("Fix this.\n")
    ran = cp("run", "wf.yml", "--json", env=secrets)
    assert ran.code == 0, ran.err
    assert fake_claude.calls()[0]["prompt_head"] == "at abc123"


# -- 13: resuming re-runs what builds on a changed result --------------------------------------


def test_resume_reruns_a_step_whose_upstream_result_changed(
        cp: Runner, workspace: Path, fake_claude: Any) -> None:
    path = write(workspace, """
        version: 1
        vars: {mode: "[fake error=500]"}
        steps:
          - {id: up, create: x, prompt: "one"}
          - {id: down, create: y, prompt: "build on ${{ steps.up.result }}"}
          - {id: same, resume: x, prompt: "continue"}
          - {id: other, create: z, prompt: "alone"}
          - {id: last, create: w, prompt: "${{ vars.mode }} last"}
    """)
    assert cp("run", "wf.yml").code == 1
    path.write_text(path.read_text().replace('"one"', '"one, edited"'))
    resumed = cp("run", "wf.yml", "--resume-run", "--json", "--var", "mode=")
    assert resumed.code == 0, resumed.err
    reused = {s["id"]: s["reused"] for s in resumed.json()["steps"]}
    # up changed; down reads its result, same continues its session: both run again.
    assert reused == {"up": False, "down": False, "same": False, "other": True, "last": False}
    down = [c["prompt_head"] for c in fake_claude.calls() if "build on" in c["prompt_head"]]
    assert len(down) == 2 and "one, edited" in down[-1]
    again = cp("run", "wf.yml", "--run-id", "second", "--json")  # a new run: all fresh
    assert [s["reused"] for s in again.json()["steps"]] == [False] * 5


# -- 14: one process drives a run --------------------------------------------------------------


def test_a_run_is_driven_by_one_process_at_a_time(cp: Runner, workspace: Path,
                                                   fake_claude: Any) -> None:
    write(workspace, """
        version: 1
        vars: {mode: "[fake error=500]"}
        steps:
          - {id: a, create: x, prompt: "a"}
          - {id: b, create: y, prompt: "${{ vars.mode }} b"}
    """)
    assert cp("run", "wf.yml", "--run-id", "r1").code == 1
    first = subprocess.Popen([sys.executable, "-m", "claude_persist.cli", "run", "wf.yml",
                              "--resume-run", "--var", "mode=[fake delay=60]"],
                             cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 30
        while len(fake_claude.records()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)  # a and b began and ended, b began again: the resume is at work
        assert len(fake_claude.records()) == 5
        second = cp("run", "wf.yml", "--resume-run", "--var", "mode=")
        assert second.code == 4, second.err
        assert f"run r1 is being run by process {first.pid}" in second.err
    finally:
        first.send_signal(signal.SIGINT)  # the first resume stops as on Ctrl-C
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert len(fake_claude.records()) == 5  # the second resume started no call


# -- 15: the latest run is the latest in time; run ids are names --------------------------------


def test_resume_run_continues_the_latest_run_by_time(cp: Runner, workspace: Path,
                                                     fake_claude: Any) -> None:
    write(workspace, """
        version: 1
        vars: {tag: x}
        steps: [{id: a, create: s, prompt: "${{ vars.tag }} [fake error=500]"}]
    """)
    assert cp("run", "wf.yml", "--run-id", "zzz-older", "--var", "tag=older").code == 1
    assert cp("run", "wf.yml", "--run-id", "aaa-newer", "--var", "tag=newer").code == 1
    runs = next((workspace.parent / "tmp").rglob("zzz-older.json")).parent
    os.utime(runs / "zzz-older.json", (1_000_000, 1_000_000))  # well before the other
    resumed = cp("run", "wf.yml", "--resume-run", "--json")
    assert resumed.json()["run_id"] == "aaa-newer"
    for bad in ("../escape", "a b", " ", "x/y"):
        ran = cp("run", "wf.yml", "--run-id", bad)
        assert ran.code == 2 and "--run-id" in ran.err and "Traceback" not in ran.err, bad


# -- 16: the budget covers the run, over all its invocations -----------------------------------


def test_the_budget_covers_every_invocation_of_a_run(cp: Runner, workspace: Path,
                                                     fake_claude: Any) -> None:
    write(workspace, """
        version: 1
        budget_usd: 0.05
        vars: {mode: "[fake error=500]"}
        steps:
          - {id: a, create: x, prompt: "[fake cost=0.03] a"}
          - {id: b, create: y, prompt: "${{ vars.mode }} [fake cost=0.03] b"}
          - {id: c, create: z, prompt: "[fake cost=0.03] c"}
    """)
    first = cp("run", "wf.yml", "--json")
    assert first.code == 1 and first.json()["run_cost_usd"] == pytest.approx(0.03)
    resumed = cp("run", "wf.yml", "--resume-run", "--json", "--var", "mode=")
    report = resumed.json()
    # b brings the run to $0.06 (the first invocation's $0.03 counts), so c never starts.
    assert [s["status"] for s in report["steps"]] == ["succeeded", "succeeded", "skipped"]
    assert "budget_usd 0.05 spent ($0.0600 over the run, $0.0300 of it by earlier " \
           "invocations)" in report["stop_reason"]
    assert report["total_cost_usd"] == pytest.approx(0.03)
    assert report["run_cost_usd"] == pytest.approx(0.06)
    assert "$0.0300 ($0.0600 over the run's invocations)" in resumed.err
    assert len(fake_claude.calls()) == 3


# -- 17: expressions only in prompts -----------------------------------------------------------


def test_expressions_outside_prompts_are_refused_at_validation(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        vars: {m: opus}
        defaults: {model: "${{ vars.m }}"}
        steps:
          - id: a
            create: s
            prompt: x
            args: ["--add-dir", "${{ steps.b.result }}"]
            output: "reports/${{ steps.b.result }}.md"
          - {id: b, create: t, prompt: x, role: "${{ vars.m }}.md"}
    """)
    text = "\n".join(problems(path))
    for where in (":4:12: defaults.model", ":9:25: steps[0].args[1]", ":10:5: steps[0].output",
                  ":11:35: steps[1].role"):
        assert where in text, text
    assert text.count("without ${{ }} (expressions are read in prompts only)") == 4


# -- 19: validate reports everything at once, where it is ---------------------------------------


def test_validate_reports_ordering_problems_with_the_others(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        max_parallel: 2
        steps:
          - {id: a, create: s1, prompt: x, needs: [b]}
          - {id: b, create: s2, prompt: x, needs: [a]}
          - {id: c, create: s3, prompt: "${{ vars.nope }}", needs: [d]}
          - {id: d, create: s4, prompt: x, needs: [c]}
    """)
    found = problems(path)
    assert [p.split(": ", 2)[1] for p in found] == ["steps[0]", "steps[2]", "steps[2].prompt"]
    assert "dependency cycle among steps a (5:5) -> b (6:5) -> a (5:5)" in found[0]
    assert "dependency cycle among steps c (7:5) -> d (8:5) -> c (7:5)" in found[1]
    sequential = problems(path, max_parallel=1)
    assert sum("which come later in the file" in p for p in sequential) == 2


def test_a_bad_default_is_reported_once_at_its_own_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        defaults: {deadline: soon, role: missing.md}
        steps: [{id: a, create: s, prompt: x}, {id: b, create: t, prompt: x}]
    """)
    found = problems(path)
    assert len(found) == 2 and all(":3:" in p and "defaults." in p for p in found)


def test_messages_name_paths_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "version: 1\nsteps: [{id: a, create: s, prompt_file: nope.md, "
                            "needs: [a]}]\n")
    monkeypatch.chdir(tmp_path)
    found = problems("sub/wf.yml", max_parallel=2)
    assert found[0].startswith("sub/wf.yml:2:")
    assert "no such file: nope.md (looked for sub/nope.md;" in "\n".join(found)
    assert str(tmp_path) not in "\n".join(found)


def test_an_unquoted_prompt_with_a_colon_gets_a_hint(tmp_path: Path) -> None:
    as_mapping = write(tmp_path, """
        version: 1
        steps:
          - id: a
            create: s
            prompt:
              Review this: the code
    """)
    assert "put the text in quotes, or write it as a | block" in problems(as_mapping)[0]
    syntax = write(tmp_path, "version: 1\nsteps:\n  - id: a\n    create: s\n"
                             "    prompt: Grade it: well\n", "syntax.yml")
    assert "put the text in quotes, or write it as a | block" in problems(syntax)[0]


def test_validate_checks_several_files_and_reports_them_all(face: Runner,
                                                            workspace: Path) -> None:
    write(workspace, "version: 1\nsteps: [{id: a, create: x, prompt: hi}]\n", "good.yml")
    write(workspace, "version: 1\nsteps: [{id: a, resume: y, prompt: hi}]\n", "bad.yml")
    write(workspace, "version: 2\nsteps: [{id: a, create: x, prompt: hi}]\n", "worse.yml")
    files = ["good.yml", "bad.yml", "worse.yml"]
    ran = face("validate", files[0], *[w for f in files[1:] for w in
                                       (("--more", f) if face.name == "inv" else (f,))])
    assert ran.code == 2, ran.err
    assert "good.yml: valid; 1 step, sequential" in ran.out
    assert "bad.yml:2:17: steps[0].resume" in ran.err and "worse.yml:1:1: version" in ran.err


# -- 20, 21: reports ---------------------------------------------------------------------------


def test_an_unwritable_report_fails_before_the_run(cp: Runner, workspace: Path,
                                                   fake_claude: Any) -> None:
    write(workspace, "version: 1\nsteps: [{id: a, create: x, prompt: hi}]\n")
    (workspace / "afile").write_text("")
    (workspace / "adir").mkdir()
    bad = ["afile/r.json", "afile/new/r.json", "adir"]
    if os.geteuid() != 0:  # root may write anywhere
        (workspace / "locked").mkdir(mode=0o500)
        bad += ["locked/r.json", "locked/new/r.json"]
    for report in bad:
        ran = cp("run", "wf.yml", "--report", report)
        assert ran.code == 2, ran.err
        assert "--report file" in ran.err and report in ran.err, ran.err
    assert fake_claude.records() == []
    fine = cp("run", "wf.yml", "--report", "out/deep/r.json")
    assert fine.code == 0 and (workspace / "out/deep/r.json").exists()


def test_reports_carry_results_and_a_plain_run_prints_the_last_one(
        cp: Runner, workspace: Path, fake_claude: Any) -> None:
    (workspace / "v.json").write_text('{"type": "object", "properties": {"grade": '
                                      '{"enum": ["B"]}}}')
    write(workspace, """
        version: 1
        steps:
          - {id: a, create: x, prompt: first}
          - {id: b, create: y, prompt: second, schema: v.json}
    """)
    reported = cp("run", "wf.yml", "--json", "--report", "r.json")
    steps = reported.json()["steps"]
    assert "fake reply" in steps[0]["result"] and steps[0]["output"] is None
    assert steps[1]["output"] == {"grade": "B"}
    assert json.loads((workspace / "r.json").read_text())["steps"] == steps
    plain = cp("run", "wf.yml")
    assert plain.code == 0 and json.loads(plain.out) == {"grade": "B"}
    write(workspace, "version: 1\nsteps: [{id: a, create: x, prompt: hello}]\n", "one.yml")
    text = cp("run", "one.yml")
    assert text.out.startswith("fake reply") and "STEP" not in text.out
    assert "last step's result" in cp("--help", "run").out


def test_costs_are_rounded_for_display() -> None:
    assert money(0.012499999999) == "$0.0125" and money(0.0) == "$0.0000"
    assert money(0.00001) == "<$0.0001"
    state = RunState(run_id="r", workflow="w", workflow_name="w", started_at="t", vars={},
                     steps={"a": StepState(id="a", action="create", session="s",
                                           status=StepStatus.SUCCEEDED,
                                           cost_usd=0.025 - 0.0125000001)})
    assert "$0.0125" in table(state) and "0.01249" not in table(state)
    printed = io.StringIO()
    workflow = spec.Workflow(path=Path("w"), name="w", description="", vars={},
                             max_parallel=1, budget_usd=None, steps=())
    step = spec.Step(id="a", index=0, action=Action.CREATE, session="s", target="s",
                     prompt="p", prompt_source="prompt", line=1)
    ProgressPrinter(workflow, stream=printed).step_finished(step, state.steps["a"])
    assert "$0.0125" in printed.getvalue()


# -- an interrupt at the very start of a run ---------------------------------------------------


def _interrupted_run(workspace: Path, turn_runner: Any) -> tuple[RunState, Path]:
    """Run a one-step workflow in process; the run must end as interrupted. Its saved state,
    and its journal's path."""
    from claude_persist import InterruptedByUserError, Sessions, run_workflow
    from claude_persist.workflow.state import RunStore

    path = write(workspace, "version: 1\nsteps:\n  - {id: a, create: x, prompt: hi}\n")
    try:
        with pytest.raises(InterruptedByUserError):
            run_workflow(path, workspace=Sessions(workspace, turn_runner=turn_runner),
                         progress=io.StringIO())
    except KeyboardInterrupt:  # left as it is, it would stop the whole test session
        pytest.fail("the Ctrl-C escaped the run as it was, with no state saved for it")
    [saved] = list(Sessions(workspace).store.folder.glob("runs/*/*.json"))
    store = RunStore(saved.parent)
    return store.load(saved.stem), store.journal(saved.stem)


def test_an_interrupt_during_the_first_save_still_ends_in_a_saved_state(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from claude_persist.testing import InProcessClaude
    from claude_persist.workflow.state import RunStore

    real_save = RunStore.save
    saves: list[str] = []

    def save(self: RunStore, state: RunState) -> None:
        real_save(self, state)
        saves.append(str(state.status))
        if len(saves) == 1:
            raise KeyboardInterrupt  # as Ctrl-C or SIGTERM would, the moment the run began

    monkeypatch.setattr(RunStore, "save", save)
    claude = InProcessClaude()
    state, _ = _interrupted_run(workspace, claude)
    assert str(state.status) == "interrupted" and saves == ["running", "interrupted"]
    assert claude.calls == [] and state.steps["a"].status is StepStatus.SKIPPED


def test_an_interrupt_as_a_step_is_handed_over_waits_for_that_step(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after a step was given to a worker thread, before the run noted it as running:
    stopping still cancels and waits for that step, so nothing it records comes after the
    final state (which would leave a journal line behind the compacted state)."""
    from concurrent.futures import ThreadPoolExecutor

    from claude_persist import InterruptedByUserError

    started: list[str] = []

    def turn_runner(turn: Any) -> Any:
        started.append(turn.prompt)
        assert turn.cancel is not None
        if not turn.cancel.wait(60):  # a stop that did not cancel it ends the test here
            raise AssertionError("the step was never cancelled")
        raise InterruptedByUserError("interrupted; the claude call was stopped")

    real_submit = ThreadPoolExecutor.submit
    handed: list[bool] = []

    def submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        future = real_submit(self, fn, *args, **kwargs)
        if not handed:
            handed.append(True)
            while not started:  # the step is running in its worker
                time.sleep(0.01)
            raise KeyboardInterrupt
        return future

    monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
    state, journal = _interrupted_run(workspace, turn_runner)
    monkeypatch.undo()
    assert str(state.status) == "interrupted" and started == ["hi"]
    assert state.steps["a"].status is StepStatus.FAILED
    assert not journal.exists()  # compacted into the state, and nothing written after it
