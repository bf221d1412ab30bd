"""Hypothesis strategies of the workflow property tests, in a module of their own: imported by
a property test when it runs, so that Hypothesis is loaded only by the test processes that
run one, not by every xdist worker that merely collects the tests."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import strategies as st

from claude_persist.settings import MANAGED_FLAGS

KEYS = ["version", "name", "steps", "vars", "defaults", "max_parallel", "budget_usd", "id",
        "create", "resume", "fork", "as", "prompt", "prompt_file", "role", "schema", "model",
        "effort", "deadline", "needs", "retries", "output", "${{", "}}", "- ", ": ", "\n",
        "  ", "[", "]", "{", "}", "'", '"', "&a", "*a", "!!", "#", "|", ">", "1", "-1", "x"]


FUZZED_FILES = st.lists(st.sampled_from(KEYS), max_size=40) | st.text(max_size=200)


FUZZED_STEPS = st.dictionaries(
    st.sampled_from(["id", "create", "resume", "fork", "as", "prompt", "needs", "effort",
                     "deadline", "retries", "model"]),
    st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=8),
              st.lists(st.text(max_size=3), max_size=2), st.booleans()),
    max_size=6)


SETTINGS = ("model", "effort", "deadline", "idle_timeout", "retries", "args", "max_turns",
            "max_budget_usd")
# Values of every type and none: some are right for some keys, wrong for others.
JUNK = st.sampled_from((None, True, False, 0, 1, -1, 2.0, 0.5, -0.5, "", " ", "x", "HIGH",
                        "15m", "0s", "1 d", "bad name", "a\nb", (), (1,), ("x",), "{}",
                        "{a: 1}")).map(lambda v: yaml.safe_load(v) if v in ("{}", "{a: 1}")
                                       else list(v) if isinstance(v, tuple) else v)
# Wrong values for keys whose right values carry meaning (ids, sessions, files, needs): a
# right one could break a reference, which is a matter of meaning, not of shape.
BAD_NAMES = st.sampled_from(("", " ", "bad name", "a/b", "ok\n", "é", 5, None, True))
BAD_FILES = st.sampled_from(("", "  ", "a\0b", 5, None, True))
BAD_NEEDS = st.sampled_from(("s0", 5, None, (5,), ("bad name",), (None,))).map(
    lambda v: list(v) if isinstance(v, tuple) else v)
NAME_KEYS = ("id", "create", "resume", "fork", "as")
FILE_KEYS = ("role", "prompt_file", "schema")
STEP_KEYS = (*SETTINGS, *NAME_KEYS, *FILE_KEYS, "prompt", "output", "needs",
             "continue_on_error")
WORDS = st.text(alphabet="abcXYZ019 _-.:#'\"\n\té", min_size=1, max_size=12).filter(
    lambda t: bool(t.strip()) and "$" not in t)
POSITIVE = st.floats(min_value=0.001, max_value=1e6) | st.integers(1, 10**6)
DURATION = POSITIVE | st.builds(lambda n, unit, pad: f"{pad}{n}{pad}{unit}",
                                st.integers(1, 999), st.sampled_from(("", "s", "m", "h")),
                                st.sampled_from(("", " ")))
WHOLE = st.integers(0, 50) | st.integers(0, 50).map(float)
SETTINGS_VALUES = st.fixed_dictionaries({}, optional={
    "model": WORDS, "effort": st.sampled_from(("low", "medium", "high", "xhigh", "max", "HIGH")),
    "deadline": DURATION, "idle_timeout": DURATION, "retries": WHOLE,
    # Not a flag claude-persist manages (-p, -r, ...): refusing those is a matter of meaning.
    "args": st.lists(st.text(max_size=5).filter(
        lambda a: a.split("=", 1)[0] not in MANAGED_FLAGS), max_size=3),
    "max_turns": WHOLE.filter(lambda n: n >= 1), "max_budget_usd": POSITIVE,
})
TOP_VALUES = st.fixed_dictionaries({}, optional={
    "name": WORDS, "description": st.text(max_size=10), "max_parallel": st.integers(1, 8),
    "budget_usd": POSITIVE, "defaults": SETTINGS_VALUES})
VAR_VALUES = st.text(max_size=6) | st.integers() | st.booleans() | \
    st.floats(allow_nan=False, allow_infinity=False)
STEP_VALUES = st.fixed_dictionaries({}, optional={
    "role": st.just("role.md"), "schema": st.just("schema.json"),
    "output": st.sampled_from(("out.txt", "reports/v.json")), "continue_on_error": st.booleans()})
LOOKUP_FIELDS = st.sampled_from(("result", "status", "session_id", "cost_usd"))


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A workflow whose meaning is fine: ids unique, needs and lookups name earlier steps and
    existing vars, every resumed or forked session made before, every file there."""
    var_names = draw(st.lists(st.sampled_from(("target", "mode", "n")), unique=True,
                              max_size=3))
    doc: dict[str, Any] = {"version": 1, **draw(TOP_VALUES)}
    if var_names:
        doc["vars"] = {name: draw(VAR_VALUES) for name in var_names}
    steps: list[dict[str, Any]] = []
    made = 0  # sessions w0 .. w{made-1} exist
    for index in range(draw(st.integers(1, 3))):
        step: dict[str, Any] = {"id": f"s{index}"}
        action = draw(st.sampled_from(("create", "resume", "fork"))) if made else "create"
        if action == "create":
            step["create"], made = f"w{made}", made + 1
        else:
            step[action] = f"w{draw(st.integers(0, made - 1))}"
        if action == "fork":
            step["as"], made = f"w{made}", made + 1
        if draw(st.booleans()):
            lookups = [f"${{{{ vars.{draw(st.sampled_from(var_names))} }}}}"
                       for _ in range(draw(st.integers(0, 1)) if var_names else 0)]
            lookups += [f"${{{{ steps.s{draw(st.integers(0, index - 1))}."
                        f"{draw(LOOKUP_FIELDS)} }}}}"
                        for _ in range(draw(st.integers(0, 1)) if index else 0)]
            step["prompt"] = " ".join([draw(WORDS), *lookups])
        else:
            step["prompt_file"] = "p.md"
        if index and draw(st.booleans()):
            step["needs"] = [f"s{i}" for i in sorted(draw(st.sets(st.integers(0, index - 1),
                                                                   max_size=2)))]
        step.update(draw(STEP_VALUES))
        if draw(st.booleans()):
            step.update(draw(SETTINGS_VALUES))
        steps.append(step)
    doc["steps"] = steps
    return doc


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Valid workflows, and workflows broken in one to three ways: wrong types and values,
    unknown, missing and clashing keys. A breakage never touches meaning without breaking
    shape too."""
    doc = draw(valid_documents())
    steps: list[dict[str, Any]] = doc["steps"]
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 1, 2, 3)))):
        kind = draw(st.sampled_from(("top", "default", "step", "drop", "unknown", "var",
                                     "clash", "whole")))
        step = steps[draw(st.integers(0, len(steps) - 1))]
        if kind == "top":
            key = draw(st.sampled_from(("version", "name", "description", "defaults",
                                        "max_parallel", "budget_usd", "steps")))
            doc[key] = draw(JUNK)
            if key == "steps":
                return doc
        elif kind == "default":
            defaults = doc.setdefault("defaults", {})
            if isinstance(defaults, dict):
                defaults[draw(st.sampled_from(SETTINGS))] = draw(JUNK)
        elif kind == "step":
            key = draw(st.sampled_from(STEP_KEYS))
            if key in NAME_KEYS:
                step[key if key in step else "id"] = draw(BAD_NAMES)
            else:
                step[key] = draw(BAD_FILES if key in FILE_KEYS else
                                 BAD_NEEDS if key == "needs" else JUNK)
        elif kind == "drop":
            holder = doc if draw(st.booleans()) else step
            keys = sorted(k for k in holder if k != "vars")
            if keys:
                holder.pop(keys[draw(st.integers(0, len(keys) - 1))])
        elif kind == "unknown":
            mapping = (doc, step, doc.get("defaults"))[draw(st.integers(0, 2))]
            if isinstance(mapping, dict):
                mapping[draw(st.sampled_from(("colour", "Model", "step", "x-note")))] = \
                    draw(JUNK)
        elif kind == "var":
            variables = doc.setdefault("vars", {})
            if isinstance(variables, dict):
                variables[draw(st.sampled_from(("extra", "bad.name", "with space", "")))] = \
                    draw(JUNK)
        elif kind == "clash":
            extra = draw(st.sampled_from(("create", "resume", "fork", "as", "prompt",
                                          "prompt_file")))
            step.setdefault(extra, "p.md" if extra == "prompt_file" else "w0")
        else:
            return draw(JUNK)
    return doc


YAML_DATA = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=24)
