"""The per-call settings and their one merge: flag > workflow step > stored > configuration,
through the API (in process, behind the turn runner seam) and through a workflow run."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from claude_persist import Sessions
from claude_persist.claude.command import Action
from claude_persist.errors import CallTimeoutError, UsageError
from claude_persist.settings import CallSettings, from_config, merge
from claude_persist.testing import InProcessClaude


def test_the_first_layer_that_sets_a_value_wins() -> None:
    flag = CallSettings(model="opus")
    step = CallSettings(model="haiku", effort="low", deadline=5)
    stored = CallSettings(model="sonnet", effort="high", role="/r.md")
    config = CallSettings(effort="max", idle_timeout=9, deadline=60)
    merged = merge(flag, step, stored, config)
    assert (merged.model, merged.effort, merged.role) == ("opus", "low", "/r.md")
    assert (merged.deadline, merged.idle_timeout) == (5, 9)


def test_extra_args_add_up_lowest_layer_first() -> None:
    merged = merge(CallSettings(extra_args=("--c",)), None,
                   CallSettings(extra_args=("--a", "1")))
    assert merged.extra_args == ("--a", "1", "--c")


def test_settings_become_flag_equals_value_argv() -> None:
    settings = CallSettings(model="-x", max_budget_usd=0.5, include_partial=True,
                            extra_args=("--bare",), deadline=3)
    assert settings.argv() == ["--model=-x", "--max-budget-usd=0.5",
                               "--include-partial-messages", "--bare"]


def test_configuration_is_read_for_every_configurable_setting() -> None:
    config = from_config({"model": "m", "deadline": "30", "idle_timeout": 4, "other": 1})
    assert [config.model, config.deadline, config.idle_timeout] == ["m", "30", 4]
    assert config.checked(Path.cwd()).deadline == 30.0


def test_bad_values_are_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="deadline"):
        CallSettings(deadline="soon").checked(tmp_path)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="max turns"):
        CallSettings(max_turns=0).checked(tmp_path)


def test_stored_values_and_defaults_reach_each_call_in_order(tmp_path: Path) -> None:
    fake = InProcessClaude()
    sessions = Sessions(tmp_path, mapping_file=tmp_path / "m.json", turn_runner=fake,
                        defaults=CallSettings(model="cfg-model", effort="low"))
    sessions.create("a", "first", CallSettings(effort="high"))
    sessions.resume("a", "second")
    sessions.resume("a", "third", CallSettings(model="flag-model"))
    sessions.resume("a", "fourth")
    seen = [(c.turn.spec.settings.model, c.turn.spec.settings.effort) for c in fake.calls]
    assert seen == [("cfg-model", "high"), ("cfg-model", "high"), ("flag-model", "high"),
                    ("flag-model", "high")]
    assert fake.turns(sessions.resolve("a").session_id) == ["first", "second", "third",
                                                           "fourth"]


def test_the_in_process_fake_forks_and_refuses_unknown_sessions(tmp_path: Path) -> None:
    fake = InProcessClaude()
    sessions = Sessions(tmp_path, mapping_file=tmp_path / "m.json", turn_runner=fake)
    sessions.create("a", "one")
    fork = sessions.fork("a", "b", "two")
    assert fake.calls[-1].action is Action.FORK
    assert fake.turns(fork.session_id) == ["one", "two"]
    fake.fail_next(CallTimeoutError("too slow", limit="deadline"))
    with pytest.raises(CallTimeoutError):
        sessions.resume("b", "three")
    assert sessions.resolve("b").session_id == fork.session_id


def test_a_configured_deadline_stops_a_workflow_step(workspace: Path, fake_claude: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from claude_persist import workflow

    (workspace / "wf.yml").write_text(textwrap.dedent("""\
        version: 1
        steps:
          - id: slow
            create: s
            prompt: "[fake delay=30] take your time"
        """))
    sessions = Sessions(workspace, defaults=CallSettings(deadline=1))
    loaded, plan = workflow.load(workspace / "wf.yml", sessions)
    state, _ = workflow.run(loaded, plan, sessions, workflow.RunSettings())
    step = state.steps["slow"]
    assert step.status == "failed"
    assert "deadline" in (step.error or "")


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0),
                                               ("2h", 7200.0), (1.5, 1.5)])
def test_durations_are_spelled_one_way_everywhere(tmp_path: Path, text: object,
                                                  seconds: float) -> None:
    checked = CallSettings(deadline=text, idle_timeout=text,  # type: ignore[arg-type]
                           lock_timeout=text).checked(tmp_path)  # type: ignore[arg-type]
    assert checked.deadline == checked.idle_timeout == checked.lock_timeout == seconds


def test_numbers_from_the_command_line_are_read_as_numbers(tmp_path: Path) -> None:
    checked = CallSettings(max_turns="3", max_budget_usd="0.5").checked(  # type: ignore[arg-type]
        tmp_path)
    assert (checked.max_turns, checked.max_budget_usd) == (3, 0.5)
