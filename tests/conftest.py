"""Shared fixtures: an isolated temp dir (so the default mapping path is the test's own), the fake
claude CLI as a real subprocess, and runners for both command-line faces.

The faces (``cp``, ``inv``, ``face``) run the program inside the test's process, as Invoke's own
tests do: the same ``Program`` over the same argv, with the test's stdin, environment and working
folder, stdout and stderr captured, and the exit code taken from ``SystemExit`` as the
interpreter would. Every claude call still starts the fake CLI as a real process. What needs a
real process of our own (signals, pipes, process groups, the start-up itself) takes
``cp_process`` or ``subprocess_face`` instead.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import pytest

pytest_plugins = ["claude_persist.testing.pytest_plugin"]

REPO = Path(__file__).resolve().parent.parent
CP_PREFIX = [sys.executable, "-m", "claude_persist.cli"]
INV_PREFIX = [sys.executable, "-m", "invoke", "--search-root", str(REPO)]


def pytest_configure(config: pytest.Config) -> None:
    _hear_ctrl_c()
    _compile_bytecode()


def _hear_ctrl_c() -> None:
    """Started as a background job of a script, the run ignores Ctrl-C, and so would every
    process it starts: the Ctrl-C tests' commands would never see their SIGINT."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _compile_bytecode() -> None:
    """Byte-compile the package and tasks.py once, before any test: the suite starts hundreds of
    ``python -m claude_persist...`` processes (every fake claude call is one), and where
    ``PYTHONDONTWRITEBYTECODE`` is set each of them would compile every module it imports from
    source, again and again. The test modules themselves get the same: their rewritten,
    compiled form is cached instead of rebuilt by every xdist worker on every run. (Caches go to
    the usual ``__pycache__`` folders, which git ignores.)"""
    import compileall

    sys.dont_write_bytecode = False  # from here on: the test modules pytest imports
    compileall.compile_dir(REPO / "claude_persist", quiet=2)
    compileall.compile_file(REPO / "tasks.py", quiet=2)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: two workers per core. Most tests spend much of their time waiting for a
    process (the fake CLI, a claude-persist, a shell step), so one worker per core would leave
    the cores idle that long. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still decides when set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 * (cores or 1)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection built (modules, test items, fixtures' definitions) lives until the run
    ends: moved out of the garbage collector's sight, it is not walked again by each of the
    run's full collections."""
    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stress tests run only when ``-m`` names them (``-m stress``, as CI's stage of its own
    does): a plain ``pytest``, or ``-m 'not contract'``, leaves them out. (``addopts = -m 'not
    stress'`` would not do: any ``-m`` on the command line replaces it.)"""
    if re.search(r"\bstress\b", config.getoption("markexpr") or ""):
        return
    stress = [item for item in items if item.get_closest_marker("stress")]
    if stress:
        config.hook.pytest_deselected(items=stress)
        items[:] = [item for item in items if not item.get_closest_marker("stress")]


@dataclass
class Ran:
    """A finished command: exit code and both streams."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace folder, with TMPDIR pointed into the test so mappings stay private."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    # The mapping file's durable copy: the test's own state folder, never the user's.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    ws = tmp_path / "workspace"
    ws.mkdir()
    for key in [k for k in os.environ if k.startswith("INVOKE_CLAUDE_PERSIST_")]:
        monkeypatch.delenv(key)
    # Run inside GitHub Actions, the suite's deliberately failing workflows would otherwise
    # write to the job's real summary and annotate it; the tests that want them set them.
    for key in ("GITHUB_STEP_SUMMARY", "GITHUB_ACTIONS"):
        monkeypatch.delenv(key, raising=False)
    return ws


@dataclass
class Runner:
    """Runs one command-line face as a real process (``prefix`` + args), in the workspace."""

    name: str
    prefix: list[str]
    workspace: Path

    def __call__(self, *args: str, input: str | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 60) -> Ran:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([*self.prefix, *args], input=input, capture_output=True,
                              text=True, cwd=cwd or self.workspace, env=full_env,
                              timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        return Ran(proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: str, stdout: int | IO[Any] = subprocess.PIPE,
              stderr: int | IO[Any] = subprocess.PIPE) -> subprocess.Popen[str]:
        """Start the command as a real process in the workspace and return at once."""
        return subprocess.Popen([*self.prefix, *args], stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=stderr, text=True, cwd=self.workspace)


class FaceTimedOut(BaseException):
    """An in-process command ran past its timeout (a BaseException: no ``except Exception`` in
    the code under test may swallow it)."""


@dataclass
class InProcessRunner(Runner):
    """The same face run inside the test's process: ``entry()`` is what ``python -m MODULE``
    runs, with ``sys.argv`` as that process would see it: the module's file, then what follows
    the module in ``prefix``, then the args.
    """

    entry: Callable[[], None] = field(kw_only=True)
    #: ``env`` is the command's whole environment, as ``subprocess.run(env=...)`` takes it,
    #: instead of additions to the test's own.
    whole_env: bool = field(default=False, kw_only=True)

    def __call__(self, *args: str, input: str | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 60) -> Ran:
        module = self.prefix[self.prefix.index("-m") + 1]
        argv = [_module_file(module), *self.prefix[self.prefix.index("-m") + 2:], *args]
        out, err = io.StringIO(), io.StringIO()
        with _process_state(argv, input or "", out, err, env or {}, cwd or self.workspace,
                            timeout, whole_env=self.whole_env):
            code = _exit_code(self.entry, err)
        return Ran(code, out.getvalue(), err.getvalue())


def _module_file(module: str) -> str:
    """``sys.argv[0]`` under ``python -m module``: the file that runs as ``__main__``."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:  # a package: its __main__
        spec = importlib.util.find_spec(f"{module}.__main__")
    assert spec is not None and spec.origin is not None, module
    return spec.origin


def _exit_code(entry: Callable[[], None], err: IO[str]) -> int:
    """Run ``entry`` and return the exit status the interpreter would give it."""
    try:
        entry()
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=err)  # sys.exit("message"): printed, status 1
        return 1
    except Exception:
        traceback.print_exc(file=err)  # what an uncaught exception does to a process
        return 1
    return 0


@contextlib.contextmanager
def _process_state(argv: list[str], stdin: str, out: IO[str], err: IO[str],
                   env: dict[str, str], cwd: Path, timeout: float,
                   whole_env: bool = False) -> Iterator[None]:
    """Give the command the process-wide state a process of its own would have, and put back
    everything it may change: argv, the three standard streams, the environment (Invoke reads
    ``INVOKE_*`` from it at each run), the working folder, signal handlers (the tasks install
    theirs for SIGTERM and SIGHUP), ``sys.path`` and the ``tasks`` module (Invoke's loader adds
    both when it loads a tasks.py), and bytecode writing (Invoke turns it off). With
    ``whole_env``, ``env`` replaces the environment, and ``tempfile``'s cached temp folder is
    forgotten for the call, so that it follows the command's ``TMPDIR``."""
    import tempfile

    saved_env = dict(os.environ)
    saved_tempdir = tempfile.tempdir
    saved_cwd = os.getcwd()
    saved_streams = (sys.argv, sys.stdin, sys.stdout, sys.stderr)
    saved_path = list(sys.path)
    saved_tasks = sys.modules.get("tasks")
    saved_bytecode = sys.dont_write_bytecode
    main_thread = threading.current_thread() is threading.main_thread()
    saved_handlers = {sig: signal.getsignal(sig)
                      for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)} \
        if main_thread else {}

    def timed_out(signum: int, frame: FrameType | None) -> None:
        raise FaceTimedOut(f"{' '.join(argv)} ran for more than {timeout} s")

    if whole_env:
        os.environ.clear()
        tempfile.tempdir = None
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = list(argv)
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    if main_thread:
        signal.signal(signal.SIGALRM, timed_out)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        if main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, handler in saved_handlers.items():
                signal.signal(sig, handler)
        sys.argv, sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        if dict(os.environ) != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)
        tempfile.tempdir = saved_tempdir
        sys.path[:] = saved_path
        if saved_tasks is None:
            sys.modules.pop("tasks", None)
        else:
            sys.modules["tasks"] = saved_tasks
        sys.dont_write_bytecode = saved_bytecode


def _run_claude_persist() -> None:
    from claude_persist import cli

    # A Program keeps the state of its last run; each command gets a fresh one, as a process
    # would.
    cli.main(run_with=copy.copy(cli.program))


def _run_inv() -> None:
    from invoke.main import program

    copy.copy(program).run()


@pytest.fixture
def cp(workspace: Path, fake_claude: Any) -> InProcessRunner:
    """Run the ``claude-persist`` program in this process, in the workspace."""
    return InProcessRunner("claude-persist", CP_PREFIX, workspace, entry=_run_claude_persist)


@pytest.fixture
def inv(workspace: Path, fake_claude: Any) -> InProcessRunner:
    """Run ``inv --search-root REPO`` (the project's root tasks.py) in this process."""
    return InProcessRunner("inv", INV_PREFIX, workspace, entry=_run_inv)


@pytest.fixture(params=["claude-persist", "inv"])
def face(request: pytest.FixtureRequest, cp: Runner, inv: Runner) -> Runner:
    """Both command-line faces, in process, so each behaviour is checked through each."""
    return cp if request.param == "claude-persist" else inv


@pytest.fixture
def cp_process(workspace: Path, fake_claude: Any) -> Runner:
    """``python -m claude_persist.cli`` as a real process: for signals, pipes, process groups."""
    return Runner("claude-persist", CP_PREFIX, workspace)


@pytest.fixture(params=["claude-persist", "inv"])
def subprocess_face(request: pytest.FixtureRequest, workspace: Path,
                    fake_claude: Any) -> Runner:
    """Both faces as real processes: the smoke tests of what users start."""
    prefix = CP_PREFIX if request.param == "claude-persist" else INV_PREFIX
    return Runner(request.param, prefix, workspace)


def mapping_path(workspace: Path) -> Path:
    from claude_persist.store import default_mapping_file

    return default_mapping_file(workspace)


def read_mapping(workspace: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(mapping_path(workspace).read_text())
    return data


def live_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that have not ended, found without the runner's code:
    every pid's group from ``getpgid``, its state from ``/proc/PID/status`` (a zombie, ``Z``, or
    a dead task, ``X``, has ended even while it waits to be reaped)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getpgid(pid) != pgid:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except (ProcessLookupError, FileNotFoundError):
            continue  # it ended while we looked
        state = next(line.split()[1] for line in status.splitlines()
                     if line.startswith("State:"))
        if state not in ("Z", "X"):
            members.append(pid)
    return members


@pytest.fixture
def group_alive() -> Iterator[Callable[[int], bool]]:
    """``alive(pgid)``: True while a process of that group has not ended. The tests' own check,
    written apart from ``runner.group_alive`` so that a bug there cannot hide itself;
    ``test_runner`` checks both against the kernel. Without /proc, the kernel's own answer
    (which counts zombies, so it can only err towards "alive")."""
    if os.path.isdir("/proc"):
        yield lambda pgid: bool(live_members(pgid))
    else:
        yield _group_exists


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True



def wait_for(condition: Callable[[], object], what: str, limit: float = 60) -> None:
    """Poll until ``condition()`` holds; the limit only bounds a failing test."""
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, f"still waiting after {limit} s for {what}"
        time.sleep(0.02)


def barrier_claude(folder: Path, parties: int, limit: float = 60) -> str:
    """A claude command (for ``CLAUDE_CMD`` or ``claude_cmd``) that holds each call until
    ``parties`` calls have started, counting every call it was ever given, then runs the fake
    CLI. A test that must see calls run side by side waits for nothing else: the call that
    came first cannot end before the others came, however slow the machine. When they do not
    come (the calls run one at a time), the waiting call fails after ``limit`` seconds."""
    from claude_persist.testing import FAKE_CLAUDE_CMD

    arrived = folder / "barrier-arrivals"
    arrived.mkdir()
    script = folder / "barrier-claude.sh"
    here = shlex.quote(str(arrived))
    script.write_text(f"""#!/bin/sh
mktemp {here}/call.XXXXXX > /dev/null || exit 1
end=$(( $(date +%s) + {int(limit)} ))
count() {{ set -- {here}/*; came=$#; }}  # a function's own "$@": the script's stays
polls=0
while count; [ "$came" -lt {parties} ]; do
    polls=$((polls + 1))
    if [ $((polls % 50)) -eq 0 ] && [ "$(date +%s)" -gt "$end" ]; then
        echo "barrier-claude: $came of {parties} calls came in {int(limit)} s" >&2
        exit 1
    fi
    sleep 0.01
done
exec {FAKE_CLAUDE_CMD} "$@"
""")
    script.chmod(0o755)
    return str(script)
