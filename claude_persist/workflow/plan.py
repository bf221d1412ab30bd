"""Pure: which step waits for which, in what order, in which waves."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import WorkflowError
from .spec import Workflow


@dataclass(frozen=True)
class Plan:
    """The steps' dependencies and a valid order; ``waves`` groups what may run together."""

    deps: dict[str, frozenset[str]]
    order: tuple[str, ...]
    waves: tuple[tuple[str, ...], ...]
    parallel: bool


def dependencies(workflow: Workflow, parallel: bool) -> dict[str, frozenset[str]]:
    """What each step waits for.

    In parallel mode: its ``needs``, the steps its expressions read, and the previous step on
    any session it touches (so one session never runs two turns at once). In sequential mode,
    additionally the previous step in the file: steps run one after another in file order.
    """
    deps: dict[str, set[str]] = {}
    last_on_session: dict[str, str] = {}
    previous: str | None = None
    for step in workflow.steps:
        wanted = set(step.needs) | {r.step for r in step.refs if r.step}
        wanted |= {last_on_session[s] for s in step.sessions if s in last_on_session}
        if not parallel and previous is not None:
            wanted.add(previous)
        deps[step.id] = wanted
        for session in step.sessions:
            last_on_session[session] = step.id
        previous = step.id
    return {k: frozenset(v) for k, v in deps.items()}


def sorter(deps: Mapping[str, Iterable[str]]) -> graphlib.TopologicalSorter[str]:
    """A prepared sorter over ``deps`` (step -> the steps it waits for)."""
    graph: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(deps)
    graph.prepare()
    return graph


def build(workflow: Workflow, max_parallel: int | None = None) -> Plan:
    """The plan for ``workflow``; a dependency cycle is a :class:`WorkflowError`."""
    parallel = (max_parallel or workflow.max_parallel) > 1
    deps = dependencies(workflow, parallel)
    if not parallel:
        # Sequential runs keep file order; a step may only wait for earlier ones.
        for step in workflow.steps:
            later = sorted(d for d in deps[step.id] if workflow.step(d).index > step.index)
            if later:
                raise WorkflowError([
                    f"{workflow.path}:{step.where}: steps[{step.index}]: step {step.id!r} "
                    f"needs {', '.join(later)}, which come later in the file; move it after "
                    "them, or run with max_parallel > 1 so needs decide the order"])
    try:
        graph = sorter(deps)
    except graphlib.CycleError as exc:
        raise WorkflowError([_cycle_problem(workflow, exc.args[1])]) from None
    position = {s.id: s.index for s in workflow.steps}
    waves: list[tuple[str, ...]] = []
    while graph.is_active():
        wave = tuple(sorted(graph.get_ready(), key=position.__getitem__))
        waves.append(wave)
        graph.done(*wave)
    order = tuple(step_id for wave in waves for step_id in wave)
    return Plan(deps=deps, order=order, waves=tuple(waves), parallel=parallel)


def _cycle_problem(workflow: Workflow, cycle: list[str]) -> str:
    """graphlib lists a cycle along its edges, from a step to the one waiting for it, and back
    to where it began; the message reads the other way: each step, then what it waits for."""
    ring = list(reversed(cycle))[:-1]
    start = min(range(len(ring)), key=lambda i: workflow.step(ring[i]).index)
    names = [*ring[start:], *ring[:start], ring[start]]  # from the step that comes first
    first = workflow.step(names[0])
    loop = " -> ".join(f"{name} ({workflow.step(name).where})" for name in names)
    return (f"{workflow.path}:{first.where}: steps[{first.index}]: dependency cycle among "
            f"steps {loop}, where -> means 'waits for' (through needs, ${{{{ steps... }}}} "
            "lookups, or an earlier step on the same session); remove one of these links")
