"""Loading and checking workflow files: every problem, with file, line, column and key, at once;
never a traceback. Plus expressions and planning (pure)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claude_persist import WorkflowError
from claude_persist.workflow import SCHEMA_PATH, expr, plan
from claude_persist.workflow.spec import load_workflow, parse_duration

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "wf.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path, **kwargs)  # type: ignore[arg-type]
    return caught.value.problems


def test_a_valid_file_loads_with_defaults_applied(tmp_path: Path) -> None:
    (tmp_path / "role.md").write_text("role")
    path = write(tmp_path, """
        version: 1
        name: demo
        vars: {target: src/}
        defaults: {model: sonnet, effort: HIGH, deadline: 15m, retries: 1}
        steps:
          - id: a
            create: s
            role: role.md
            prompt: look at ${{ vars.target }}
          - id: b
            resume: s
            deadline: 90
            idle_timeout: 2h
            prompt: "again: ${{ steps.a.result }}"
    """)
    wf = load_workflow(path)
    a, b = wf.steps
    assert (a.model, a.effort, a.deadline, a.retries) == ("sonnet", "high", 900.0, 1)
    assert (b.deadline, b.idle_timeout) == (90.0, 7200.0)
    assert a.role == (tmp_path / "role.md").resolve()
    assert [r.parts for r in b.refs] == [("steps", "a", "result")]


def test_every_problem_is_reported_at_once_with_positions(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 2
        colour: blue
        steps:
          - id: one
            create: s
            resume: t
            prompt: x
          - id: two
            resume: nobody
            effort: extreme
            deadline: soon
            prompt: ${{ steps.nope.result }} ${{ vars.missing }} ${{ os.system }}
          - id: two
            create: bad name
            prompt_file: missing.md
            needs: [ghost]
            retries: -1
    """)
    found = problems(path)
    text = "\n".join(found)
    assert all(line.startswith(f"{path}:") for line in found)
    expected = [
        ":2:1: version: must be 1",
        ":3:1: colour: unknown key",
        "needs exactly one of create: NAME, resume: NAME or fork: NAME",
        ":11:5: steps.1.effort: 'extreme' is not an effort level",
        ":12:5: steps.1.deadline: 'soon' is not a duration",
        "no step 'nope'", "no var 'missing'", "${{ os.system }} is not a known lookup",
        "session 'nobody' is neither created by an earlier step nor in the workspace",
        ":14:5: steps.2.id: duplicate id 'two'",
        "'bad name' is not a valid session name",
        ":16:5: steps.2.prompt_file: no such file: missing.md",
        "needs 'ghost', which is no step id",
        "steps.2.retries: must be a whole number >= 0",
    ]
    for fragment in expected:
        assert fragment in text, f"missing {fragment!r} in:\n{text}"


def test_env_lookups_need_the_variable_set(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "version: 1\nsteps: [{id: a, create: s, prompt: '${{ env.WHO }}'}]\n")
    monkeypatch.delenv("WHO", raising=False)
    assert "the environment variable WHO is not set" in problems(path)[0]
    monkeypatch.setenv("WHO", "me")
    assert load_workflow(path).steps[0].refs[0].parts == ("env", "WHO")


def test_resume_of_a_mapped_session_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, """
        version: 1
        steps: [{id: a, resume: known, prompt: hi}]
    """)
    assert "neither created" in problems(path)[0]
    assert load_workflow(path, known_sessions=["known"]).steps[0].session == "known"


def test_output_needs_a_schema_and_prompt_needs_exactly_one_source(tmp_path: Path) -> None:
    (tmp_path / "p.md").write_text("hi")
    path = write(tmp_path, """
        version: 1
        steps:
          - {id: a, create: s, prompt: hi, prompt_file: p.md}
          - {id: b, create: t}
          - {id: c, create: u, prompt: "${{ steps.a.output.x }}"}
          - {id: d, fork: s, prompt: x}
          - {id: e, create: v, as: w, prompt: x}
    """)
    text = "\n".join(problems(path))
    assert text.count("needs exactly one of prompt: TEXT or prompt_file: FILE") == 2
    assert "step 'a' has no schema, so no output" in text
    assert "fork: needs as: NEW" in text
    assert "as: goes only with fork:" in text


def test_yaml_syntax_errors_and_odd_documents(tmp_path: Path) -> None:
    bad = write(tmp_path, "version: 1\nsteps: [\n")
    assert "YAML syntax error" in problems(bad)[0] and ":3:1:" in problems(bad)[0]
    for text, fragment in (("", "empty"), ("- a\n- b\n", "must be a mapping"),
                           ("version: 1\nsteps: []\n", "non-empty list"),
                           ("version: 1\nversion: 1\nsteps: [x]\n", "duplicate key"),
                           ("!!python/object:os.system {}\n", "unsupported value")):
        assert fragment in "\n".join(problems(write(tmp_path, text))), text
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in problems(binary)[0]


def test_var_overrides_must_name_known_vars(tmp_path: Path) -> None:
    from claude_persist import UsageError

    path = write(tmp_path, "version: 1\nvars: {a: 1}\nsteps: [{id: s, create: x, prompt: "
                           "'${{ vars.a }}'}]\n")
    assert load_workflow(path, var_overrides={"a": "2"}).vars == {"a": "2"}
    with pytest.raises(UsageError, match="has no var 'b'"):
        load_workflow(path, var_overrides={"b": "2"})


def test_durations() -> None:
    assert [parse_duration(v) for v in (5, 2.5, "90s", "15m", "2h", "7")] == \
        [5, 2.5, 90, 900, 7200, 7]
    for bad in (0, -1, "1d", "soon", True, "0s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_expressions_render_once_and_escape() -> None:
    def lookup(ref: expr.Ref) -> str | None:
        return {"vars.x": "${{ vars.y }}", "vars.y": "NO"}.get(".".join(ref.parts))

    assert expr.render("a ${{ vars.x }} b", lookup) == "a ${{ vars.y }} b"
    assert expr.render("literal $${{ vars.x }}", lookup) == "literal ${{ vars.x }}"
    assert expr.render("${{ steps.s.result }} stays", lambda ref: None) == \
        "${{ steps.s.result }} stays"
    assert expr.as_text({"a": [1]}) == '{"a": [1]}' and expr.as_text(None) == ""
    found = list(expr.find("${{ steps.a.result.x }} ${{ run.id }}"))
    assert isinstance(found[0], expr.ExprError) and isinstance(found[1], expr.Ref)


def _plan_of(tmp_path: Path, steps: str, parallel: int = 4) -> plan.Plan:
    path = write(tmp_path, f"version: 1\nmax_parallel: {parallel}\nsteps:\n{steps}")
    return plan.build(load_workflow(path))


def test_planning_sequential_and_parallel(tmp_path: Path) -> None:
    steps = """
  - {id: a, create: s1, prompt: x}
  - {id: b, create: s2, prompt: x}
  - {id: c, resume: s1, prompt: x}
  - {id: d, create: s3, prompt: "${{ steps.b.result }}"}
  - {id: e, create: s4, prompt: x, needs: [c]}
  - {id: f, fork: s1, as: s5, prompt: x}
"""
    waves = _plan_of(tmp_path, steps).waves
    assert waves == (("a", "b"), ("c", "d"), ("e", "f"))
    sequential = _plan_of(tmp_path, steps, parallel=1)
    assert sequential.order == ("a", "b", "c", "d", "e", "f") and not sequential.parallel
    assert sequential.deps["b"] == {"a"}


def test_cycles_and_forward_needs_are_reported(tmp_path: Path) -> None:
    cyclic = """
  - {id: a, create: s1, prompt: x, needs: [b]}
  - {id: b, create: s2, prompt: x, needs: [a]}
"""
    with pytest.raises(WorkflowError, match="dependency cycle among steps a -> b -> a"):
        _plan_of(tmp_path, cyclic)
    with pytest.raises(WorkflowError, match="which come later in the file"):
        _plan_of(tmp_path, cyclic, parallel=1)


def test_examples_validate_against_the_shipped_schema() -> None:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for example in (REPO / "workflows").glob("*.yml"):
        first = example.read_text().splitlines()[0]
        assert first == \
            "# yaml-language-server: $schema=../claude_persist/schemas/workflow.schema.json"
        jsonschema.validate(yaml.safe_load(example.read_text()), schema)
        assert load_workflow(example).steps


@pytest.mark.parametrize("doc", [
    {"version": 1, "steps": [{"id": "a", "create": "s", "resume": "t", "prompt": "x"}]},
    {"version": 1, "steps": [{"id": "a", "create": "s"}]},
    {"version": 1, "steps": [{"id": "a", "create": "s", "prompt": "x", "colour": 1}]},
    {"version": 1, "steps": [{"id": "a", "fork": "s", "prompt": "x"}]},
    {"version": 1, "steps": [{"id": "a", "create": "s", "prompt": "x", "effort": "huge"}]},
    {"version": 1, "steps": [{"id": "a", "create": "s", "prompt": "x", "deadline": "1d"}]},
    {"version": 2, "steps": [{"id": "a", "create": "s", "prompt": "x"}]},
    {"version": 1, "steps": []},
])
def test_schema_and_loader_agree_on_broken_files(tmp_path: Path, doc: dict[str, object]) -> None:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    assert not jsonschema.Draft202012Validator(schema).is_valid(doc)
    path = tmp_path / "doc.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(WorkflowError):
        load_workflow(path)


KEYS = ["version", "name", "steps", "vars", "defaults", "max_parallel", "budget_usd", "id",
        "create", "resume", "fork", "as", "prompt", "prompt_file", "role", "schema", "model",
        "effort", "deadline", "needs", "retries", "output", "${{", "}}", "- ", ": ", "\n",
        "  ", "[", "]", "{", "}", "'", '"', "&a", "*a", "!!", "#", "|", ">", "1", "-1", "x"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(KEYS), max_size=40) | st.text(max_size=200))
def test_fuzzed_files_never_raise_anything_but_workflow_errors(tmp_path: Path,
                                                               pieces: list[str] | str) -> None:
    text = pieces if isinstance(pieces, str) else "".join(pieces)
    path = tmp_path / "fuzz.yml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        wf = load_workflow(path)
        plan.build(wf)
    except WorkflowError as exc:
        assert exc.problems and all(p.startswith(str(path)) for p in exc.problems)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["id", "create", "resume", "fork", "as", "prompt",
                                        "needs", "effort", "deadline", "retries", "model"]),
                       st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=8),
                                 st.lists(st.text(max_size=3), max_size=2), st.booleans()),
                       max_size=6))
def test_fuzzed_steps_never_raise_anything_but_workflow_errors(tmp_path: Path,
                                                               step: dict[str, object]) -> None:
    path = tmp_path / "step.yml"
    path.write_text(yaml.safe_dump({"version": 1, "steps": [step]}))
    try:
        plan.build(load_workflow(path))
    except WorkflowError as exc:
        assert exc.problems
