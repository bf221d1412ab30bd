"""Run history and the CI summary over a run of 1,000 steps: each view under a second (the
issue's figure; they take tens of milliseconds, so a loaded machine does not trip it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_persist.workflow import history, report
from tests.test_views import big_run

pytestmark = pytest.mark.stress


def best_of(repeats: int, job: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        job()
        times.append(time.perf_counter() - began)
    return min(times)


def views(root: Path) -> dict[str, Callable[[], object]]:
    saved, _ = history.find(root, "big")
    return {
        "runs": lambda: history.listing_text(history.list_runs(root).runs),
        "runs-show": lambda: history.show_text(history.show(*history.find(root, "big"), {})),
        "summary": lambda: report.markdown(saved.store.load("big")),
    }


def test_views_of_a_thousand_steps_take_under_a_second(tmp_path: Path) -> None:
    big_run(tmp_path / "large" / "big-0", 1000)
    large = {name: best_of(3, job) for name, job in views(tmp_path / "large").items()}
    for name, seconds in large.items():
        assert seconds < 1.0, (name, large)
