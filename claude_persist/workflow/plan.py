"""Pure: which step waits for which, in what order, in which waves."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import WorkflowError

if TYPE_CHECKING:
    from .spec import Step, Workflow
    from .yamlmarks import Path_


@dataclass(frozen=True)
class Plan:
    """The steps' dependencies and a valid order; ``waves`` groups what may run together.

    ``inputs`` is what each step reads: the steps whose results its expressions use, its
    ``needs``, and the previous step on a session it continues. A step whose inputs changed
    runs again on ``--resume-run``; in sequential mode ``deps`` adds the previous step in the
    file, which orders the run but is not read.
    """

    deps: dict[str, frozenset[str]]
    order: tuple[str, ...]
    waves: tuple[tuple[str, ...], ...]
    parallel: bool
    inputs: dict[str, frozenset[str]]


def dependencies(workflow: Workflow, parallel: bool) -> dict[str, frozenset[str]]:
    """What each step waits for.

    In parallel mode: its ``needs``, the steps its expressions read, and the previous step on
    any session it touches (so one session never runs two turns at once). In sequential mode,
    additionally the previous step in the file: steps run one after another in file order.
    References to steps that do not exist, and a step's references to itself, are left out
    (the loader reports them).
    """
    ids = {step.id for step in workflow.steps}
    deps: dict[str, set[str]] = {}
    last_on_session: dict[str, str] = {}
    previous: str | None = None
    for step in workflow.steps:
        if step.id in deps:
            continue  # a duplicate id, reported by the loader
        # Lookups and needs of the steps inside a loop count for the loop; a step inside a
        # loop counts as its top-level step.
        inner = list(step.walk())
        named = {need for s in inner for need in s.needs} | \
            {r.step for s in inner for r in s.refs if r.step}
        wanted = {workflow.top.get(name, name) for name in named}
        wanted |= {last_on_session[s] for s in step.sessions if s in last_on_session}
        if not parallel and previous is not None:
            wanted.add(previous)
        deps[step.id] = (wanted & ids) - {step.id}
        for session in step.sessions:
            last_on_session[session] = step.id
        previous = step.id
    return {k: frozenset(v) for k, v in deps.items()}


def sorter(deps: Mapping[str, Iterable[str]]) -> graphlib.TopologicalSorter[str]:
    """A prepared sorter over ``deps`` (step -> the steps it waits for)."""
    graph: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(deps)
    graph.prepare()
    return graph


def problems(workflow: Workflow, parallel: bool) -> list[tuple[Path_, str]]:
    """Every ordering problem, each at its step: in sequential mode each step that waits for a
    later one; in parallel mode each dependency cycle."""
    deps = dependencies(workflow, parallel)
    first = {step.id: step for step in reversed(workflow.steps)}  # the first of each id
    index = {step_id: step.index for step_id, step in first.items()}
    found: list[tuple[Path_, str]] = []
    if not parallel:
        # Sequential runs keep file order; a step may only wait for earlier ones.
        for step_id, wanted in deps.items():
            later = sorted(d for d in wanted if index[d] > index[step_id])
            if later:
                found.append((("steps", index[step_id]), f"step {step_id!r} needs "
                              f"{', '.join(later)}, which come later in the file; move it "
                              "after them, or run with max_parallel > 1 so needs decide the "
                              "order"))
        return found
    remaining = dict(deps)
    while True:  # one cycle at a time; its steps are then left out, to find the next
        try:
            sorter(remaining)
            return found
        except graphlib.CycleError as exc:
            cycle: list[str] = exc.args[1]
        found.append(_cycle_problem(first, cycle))
        remaining = {k: v - set(cycle) for k, v in remaining.items() if k not in cycle}


def build(workflow: Workflow, max_parallel: int | None = None) -> Plan:
    """The plan for ``workflow``; an ordering problem is a :class:`WorkflowError`."""
    parallel = (max_parallel or workflow.max_parallel) > 1
    found = problems(workflow, parallel)
    if found:
        where: dict[Path_, str] = {("steps", step.index): step.where for step in workflow.steps}
        raise WorkflowError([f"{workflow.source or workflow.path}:{where[path]}: "
                             f"steps[{path[1]}]: {message}" for path, message in found])
    deps = dependencies(workflow, parallel)
    graph = sorter(deps)
    position = {s.id: s.index for s in workflow.steps}
    waves: list[tuple[str, ...]] = []
    while graph.is_active():
        wave = tuple(sorted(graph.get_ready(), key=position.__getitem__))
        waves.append(wave)
        graph.done(*wave)
    order = tuple(step_id for wave in waves for step_id in wave)
    inputs = deps if parallel else dependencies(workflow, parallel=True)
    return Plan(deps=deps, order=order, waves=tuple(waves), parallel=parallel, inputs=inputs)


def _cycle_problem(steps: Mapping[str, Step], cycle: list[str]) -> tuple[Path_, str]:
    """graphlib lists a cycle along its edges, from a step to the one waiting for it, and back
    to where it began; the message reads the other way: each step, then what it waits for."""
    ring = list(reversed(cycle))[:-1]
    start = min(range(len(ring)), key=lambda i: steps[ring[i]].index)
    names = [*ring[start:], *ring[:start], ring[start]]  # from the step that comes first
    loop = " -> ".join(f"{name} ({steps[name].where})" for name in names)
    return (("steps", steps[names[0]].index),
            f"dependency cycle among steps {loop}, where -> means 'waits for' (through needs, "
            "${{ steps... }} lookups, or an earlier step on the same session); remove one of "
            "these links")
