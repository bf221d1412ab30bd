"""The benchmark's figures in a short form, on every CI run.

Loss and corruption are asserted exactly; timings get looser bounds than the benchmark's targets
(CI machines are noisy), tight enough to catch a regression of kind: a lost parallelism, a
buffered stream, a quadratic mapping. The full figures: ``python -m benchmarks``.
"""

from __future__ import annotations

import pytest

from benchmarks import figures

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
    resolve, create, listing = figures.big_mapping(sizes=(10, 5_000, 10_000), rounds=3)
    assert resolve.value < 2.0, resolve.context
    assert create.value < 2.0, create.context
    assert 0.33 <= listing.value <= 3.0, listing.context


def test_call_overhead_stays_near_pythons_own_start_up() -> None:
    for figure in figures.call_overhead(rounds=5):
        assert figure.value < 2.0, figure.context
