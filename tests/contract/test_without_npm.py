"""Without npm the contract suite is skipped, and says so where nobody can miss it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..conftest import REPO


def test_a_machine_without_npm_skips_loudly(tmp_path: Path) -> None:
    bare_path = tmp_path / "bin"
    bare_path.mkdir()  # a PATH with no npm on it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "tests/contract/test_real_claude.py::test_the_pinned_version_is_what_runs"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": str(bare_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout
    assert "CONTRACT SUITE SKIPPED" in proc.stdout
    assert "npm is not on PATH" in proc.stdout and "did NOT run" in proc.stdout
