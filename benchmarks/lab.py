"""A private place to measure in: a workspace, its own temp dir (so its own mapping file), the
fake CLI, and helpers that time real processes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FAKE = [PYTHON, "-m", "claude_persist.testing.fake_claude"]
CLAUDE_PERSIST = [PYTHON, "-m", "claude_persist.cli"]
INV = [PYTHON, "-m", "invoke", "--search-root", str(REPO)]


@dataclass
class Lab:
    """One isolated workspace; every command runs in it with the fake CLI as ``claude``."""

    root: Path
    workspace: Path = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.workspace = self.root / "workspace"
        self.workspace.mkdir(parents=True, exist_ok=True)
        temp = self.root / "tmp"
        temp.mkdir(exist_ok=True)
        # As users run it: bytecode cached (PYTHONDONTWRITEBYTECODE would make every process
        # compile our modules again, 25 ms a call), no leftover settings of ours.
        self.env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("FAKE_CLAUDE_", "INVOKE_CLAUDE_PERSIST_", "CLAUDE_"))
               and k != "PYTHONDONTWRITEBYTECODE"},
            "TMPDIR": str(temp),
            "CLAUDE_CMD": " ".join(FAKE),
            "FAKE_CLAUDE_HOME": str(self.root / "fake-home"),
            # The fake keeps transcripts where claude does: here, not in ~/.claude.
            "CLAUDE_CONFIG_DIR": str(self.root / "claude-config"),
            "XDG_STATE_HOME": str(self.root / "state"),  # the mapping's durable copy
        }

    @classmethod
    def make(cls, name: str) -> Lab:
        return cls(Path(tempfile.mkdtemp(prefix=f"claude-persist-bench-{name}-")))

    @property
    def mapping_file(self) -> Path:
        from claude_persist.store import default_mapping_file

        return default_mapping_file(self.workspace, self.env)

    def run(self, argv: Sequence[str], input: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                              cwd=self.workspace, env=self.env,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def cp(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([*CLAUDE_PERSIST, *args], check=check)

    def mapping(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.mapping_file.read_text())
        return data

    def session_id(self, name: str) -> str:
        return str(self.mapping()["aliases"][name]["session_id"])


def wall(action: Callable[[], Any]) -> float:
    """Seconds that ``action`` took."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def interleaved(actions: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Each action once per round, in turn, so drift in the machine hits all of them alike."""
    for _ in range(warmup):
        for action in actions.values():
            action()
    times: dict[str, list[float]] = {key: [] for key in actions}
    for _ in range(rounds):
        for key, action in actions.items():
            times[key].append(wall(action))
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class RssSampler:
    """Samples a process's resident set size (``VmRSS``) every few milliseconds."""

    def __init__(self, pid: int, every: float = 0.01) -> None:
        self.pid = pid
        self.every = every
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.samples.append(int(line.split()[1]) * 1024)
            except OSError:
                return
            self._stop.wait(self.every)

    @property
    def peak_mb(self) -> float:
        return max(self.samples, default=0) / 2**20
