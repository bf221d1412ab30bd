"""``show`` and the run history against the genuine binary: what we read of its transcript
(prompts, tool calls and whether they failed, the final answer) and of its result line (the
call's own tokens) is pinned here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import MODEL, RealClaude
from .fake_api import Switches

pytestmark = pytest.mark.contract


def test_show_reads_the_real_transcript(real: RealClaude) -> None:
    notes = real.workspace / "notes.txt"
    notes.write_text("hello\n")
    # One tool call per request: a Read that works, then a Bash the headless CLI may not run
    # (no permission given), then the answer.
    real.api.switches = Switches(tool_calls=[
        {"name": "Read", "input": {"file_path": str(notes)}},
        {"name": "Bash", "input": {"command": "rm -rf build", "description": "clean up"}}])
    made = real.cp("create", "-n", "tools", "--model", MODEL, "-p",
                   "Read the notes, then clean up.")
    assert made.code == 0, made.err
    again = real.cp("resume", "-n", "tools", "-p", "And now?")
    assert again.code == 0, again.err
    shown = real.cp("show", "-n", "tools", "--json")
    assert shown.code == 0, shown.err
    data = shown.json()
    assert (data["turns_total"], data["skipped_lines"]) == (2, 0), shown.err
    first, second = data["turns"]
    assert first["prompt"] == "Read the notes, then clean up."
    assert first["tools"] == [
        {"name": "Read", "summary": str(notes), "error": False},
        {"name": "Bash", "summary": "rm -rf build", "error": True}]
    assert first["answer"] == "turns=1"  # the fake API's text after the tool results
    assert first["model"] == MODEL and first["timestamp"]
    assert (second["prompt"], second["tools"], second["answer"]) == ("And now?", [], "turns=2")
    text = real.cp("show", "-n", "tools").out
    assert "> Read the notes, then clean up.\n  - Read: " in text
    assert "  - Bash: rm -rf build  (error)\n< turns=1" in text


def test_a_workflow_run_records_the_calls_tokens(real: RealClaude, tmp_path: Path) -> None:
    (real.workspace / "wf.yml").write_text(
        f"version: 1\nname: tokens\ndefaults: {{model: {MODEL}}}\nsteps:\n"
        "  - {id: a, create: t, prompt: One.}\n  - {id: b, resume: t, prompt: Two.}\n")
    ran = real.cp("run", "wf.yml")
    assert ran.code == 0, ran.err
    [run] = json.loads(real.cp("runs", "--json").out)["runs"]
    steps = json.loads(real.cp("runs-show", run["run_id"], "--json").out)["steps"]
    first, second = (s["tokens"] for s in steps)
    assert first is not None and second is not None
    # The call's own input: the second call carried the first turn too, so it sent more.
    assert 0 < first["input"] < second["input"] and first["output"] > 0
