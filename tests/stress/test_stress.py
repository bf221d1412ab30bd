"""The benchmark's figures in a short form, on every CI run.

Loss and corruption are asserted exactly; timings get looser bounds than the benchmark's targets
(CI machines are noisy), tight enough to catch a regression of kind: a lost parallelism, a
buffered stream, a quadratic mapping. The full figures: ``python -m benchmarks``.
"""

from __future__ import annotations

import json
import timeit
import uuid
from pathlib import Path

import pytest

from benchmarks import figures
from claude_persist import Sessions

pytestmark = pytest.mark.stress


def test_concurrent_creates_lose_nothing() -> None:
    figure = figures.concurrent_creates(processes=8, creates=5)
    assert figure.ok, figure.context
    assert figure.value == 40


def test_killed_writers_never_corrupt_or_lose_entries() -> None:
    figure = figures.kill_writers(rounds=25)
    assert figure.ok, figure.context
    assert figure.context["committed_entries"] > 25  # the kills did land mid-loop


def test_stream_lines_pass_at_once_and_memory_stays_flat() -> None:
    latency = figures.stream_latency(lines=100)
    assert latency.ok, latency.context
    memory = figures.stream_memory(megabytes=20)
    assert memory.value <= 1.25, memory.context


def test_workflows_run_in_parallel_and_steps_cost_little() -> None:
    parallel = figures.parallel_workflow(sessions=8, step_seconds=1.0, runs=1)
    assert parallel.value <= 1.6, parallel.context  # 8 steps in a row would be 8x
    sequential = figures.sequential_workflow(steps=20, rounds=1)
    assert sequential.context["per_step_in_run_ms"] < 15, sequential.context


def test_a_big_mapping_file_stays_fast() -> None:
    resolve, create, _listing = figures.big_mapping(sizes=(10, 5_000, 10_000), rounds=3)
    assert resolve.value < 2.0, resolve.context
    assert create.value < 2.0, create.context


def test_list_costs_the_same_per_entry_at_5000_and_10000_sessions(tmp_path: Path) -> None:
    """In-process: what ``list --json`` does, best of 5. (The command's figure compares 50 ms of
    work at 5,000 sessions across start-ups that vary by 20 ms; 3 rounds cannot tell that.)"""
    template = {"session_id": "", "created_at": "2026-01-01T00:00:00Z", "cwd": str(tmp_path),
                "last_model": "claude-opus-4-7", "last_reasoning_effort": "high",
                "last_used_at": "2026-01-01T00:00:00Z", "history": []}
    per_entry = {}
    for size in (5_000, 10_000):
        path = tmp_path / f"m{size}.json"
        path.write_text(json.dumps({"workspace_dir": str(tmp_path), "aliases": {
            f"s-{i:05d}": {**template, "session_id": str(uuid.uuid4())} for i in range(size)}}))
        sessions = Sessions(tmp_path, mapping_file=path)

        def listing(s: Sessions = sessions) -> str:
            return json.dumps({"sessions": [entry.to_json() for entry in s.list()]})

        assert len(json.loads(listing())["sessions"]) == size
        per_entry[size] = min(timeit.repeat(listing, number=1, repeat=5)) / size
    growth = per_entry[10_000] / per_entry[5_000]
    assert 0.5 <= growth <= 1.6, {k: f"{v * 1e6:.2f} us" for k, v in per_entry.items()}


def test_call_overhead_stays_near_pythons_own_start_up() -> None:
    for figure in figures.call_overhead(rounds=5):
        assert figure.value < 2.0, figure.context
