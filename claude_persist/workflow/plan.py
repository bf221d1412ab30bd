"""Pure: which step waits for which, in what order, in which waves."""

from __future__ import annotations

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
                    f"{workflow.path}:{step.line}: steps.{step.index}: step {step.id!r} needs "
                    f"{', '.join(later)}, which come later in the file; move it after them, or "
                    "run with max_parallel > 1 so needs decide the order"])
    order: list[str] = []
    waves: list[tuple[str, ...]] = []
    done: set[str] = set()
    remaining = [s.id for s in workflow.steps]
    while remaining:
        wave = tuple(s for s in remaining if deps[s] <= done)
        if not wave:
            raise WorkflowError([f"{workflow.path}: dependency cycle among steps "
                                 f"{' -> '.join(_cycle(deps, remaining))}"])
        waves.append(wave)
        order.extend(wave)
        done |= set(wave)
        remaining = [s for s in remaining if s not in done]
    return Plan(deps=deps, order=tuple(order), waves=tuple(waves), parallel=parallel)


def _cycle(deps: dict[str, frozenset[str]], among: list[str]) -> list[str]:
    """One cycle among ``among``, as a path that returns to its start."""
    start = among[0]
    path = [start]
    seen = {start}
    node = start
    while True:
        node = sorted(d for d in deps[node] if d in among)[0]
        if node in seen:
            return [*path[path.index(node):], node]
        path.append(node)
        seen.add(node)
