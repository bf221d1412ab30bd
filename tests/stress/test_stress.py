"""The benchmark's figures in a short form: CI runs them as a stage of their own
(``python -m pytest -m stress``); a plain ``python -m pytest`` leaves them out.

Loss and corruption are asserted exactly. Time is compared only within one run, against a
regression of kind, with a margin a loaded 2-core machine cannot use up: a lost parallelism
(8 one-second steps run one after another take 8 times as long), a quadratic mapping (the cost
per entry grows 10 times from 1,000 to 10,000 entries). Absolute figures (stream delay, per-call
and per-step overhead, command times with a big mapping) are the benchmark's:
``python -m benchmarks``.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import figures
from claude_persist import Sessions

pytestmark = pytest.mark.stress


def test_concurrent_creates_lose_nothing() -> None:
    figure = figures.concurrent_creates(processes=8, creates=5)
    assert figure.ok, figure.context
    assert figure.value == 40


def test_killed_writers_never_corrupt_or_lose_entries() -> None:
    rounds = 25
    figure = figures.kill_writers(rounds=rounds)
    assert figure.ok, figure.context
    # Every writer is killed only after its first committed write, so the kills land in the
    # write loop: the lab's own entry plus at least one per round.
    assert figure.context["committed_entries"] >= rounds + 1, figure.context


def test_stream_lines_all_pass_and_memory_stays_flat() -> None:
    latency = figures.stream_latency(lines=100)  # raises if a line is missing or the run fails
    assert latency.context["lines"] >= 100, latency.context
    memory = figures.stream_memory(megabytes=20)
    assert memory.value <= 1.25, memory.context  # peak memory, not time: a buffered copy grows


@pytest.mark.timing
def test_independent_workflow_steps_run_side_by_side() -> None:
    sessions = 8
    parallel = figures.parallel_workflow(sessions=sessions, step_seconds=1.0, runs=1)
    # One after another they take `sessions` times the critical path; side by side about 1x,
    # and under 2x on a busy 2-core machine (eight Python start-ups share the cores).
    assert parallel.value <= sessions / 2, parallel.context


def _filled(folder: Path, size: int) -> Sessions:
    template = {"session_id": "", "created_at": "2026-01-01T00:00:00Z", "cwd": str(folder),
                "last_model": "claude-opus-4-7", "last_reasoning_effort": "high",
                "last_used_at": "2026-01-01T00:00:00Z", "history": []}
    path = folder / f"m{size}.json"
    path.write_text(json.dumps({"workspace_dir": str(folder), "aliases": {
        f"s-{i:05d}": {**template, "session_id": str(uuid.uuid4())} for i in range(size)}}))
    return Sessions(folder, mapping_file=path)


@pytest.mark.timing
def test_mapping_operations_cost_the_same_per_entry_at_1000_and_10000_sessions(
        tmp_path: Path) -> None:
    """In-process, what ``list --json``, ``resolve`` and a write (``adopt``) do, best of 5, the
    two sizes alternating so that a busy moment hits both. Linear: about the same cost per entry
    (the big file fits the caches less well; the small one carries more of the fixed costs);
    quadratic: 10 times as much."""
    small, big = 1_000, 10_000
    sessions = {size: _filled(tmp_path, size) for size in (small, big)}
    assert len(sessions[big].list()) == big
    new_names = (f"new-{n}" for n in itertools.count())
    operations: dict[str, Callable[[Sessions], Any]] = {
        "list --json": lambda s: json.dumps({"sessions": [e.to_json() for e in s.list()]}),
        "resolve": lambda s: s.resolve("s-00042"),
        "adopt": lambda s: s.adopt(next(new_names), str(uuid.uuid4())),
    }
    growth = {}
    for name, operation in operations.items():
        best = {small: float("inf"), big: float("inf")}
        for _ in range(5):
            for size, target in sessions.items():
                started = time.perf_counter()
                operation(target)
                best[size] = min(best[size], time.perf_counter() - started)
        growth[name] = (best[big] / big) / (best[small] / small)
    assert all(value <= 3.0 for value in growth.values()), growth
