"""The fake claude CLI, stopped at a gate the test opens: for tests that act while a call runs,
and wait for an event instead of a fixed delay.

As a claude command (``CLAUDE_CMD``, from :meth:`Gate.env`)::

    python gated_claude.py ARGS...      # the fake CLI's own arguments

``GATED_CLAUDE_BREAK_LEASE=NAME``: first break session NAME's lease in
``$CLAUDE_PERSIST_STORE``, as another machine's ``lease --break`` would while this call runs.
``GATED_CLAUDE_PORT=PORT``: once the fake has written ``GATED_CLAUDE_AFTER`` lines (default 0: at
once), connect to the test's :class:`Gate` on 127.0.0.1:PORT, tell it this process's pid and
group, and wait there until the test opens the gate; then carry on as the fake.

A call starts only once its caller holds the session's lease and its local lock, so a test that
sees the call at the gate knows that its caller holds them, and keeps holding them until the
test opens the gate (or kills the call).
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

COMMAND = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"


class Gate:
    """The test's side: a listening socket the gated call connects to."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._conn: socket.socket | None = None
        self.pid = 0
        self.pgid = 0

    def env(self, after_lines: int = 0) -> dict[str, str]:
        """The environment that runs claude through this gate, stopping it after that many
        lines of its output."""
        return {"CLAUDE_CMD": COMMAND, "GATED_CLAUDE_PORT": str(self._server.getsockname()[1]),
                "GATED_CLAUDE_AFTER": str(after_lines)}

    def wait(self, caller: subprocess.Popen[Any] | None = None, timeout: float = 120) -> None:
        """Return once the call is at the gate; fail if ``caller`` (the process that runs it)
        ends first, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self._server], [], [], 0.5)
            if ready:
                break
            if caller is not None and caller.poll() is not None:
                out, err = caller.communicate()
                raise AssertionError(f"the caller ended (exit {caller.returncode}) before its "
                                     f"call reached the gate:\n{out}\n{err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no call reached the gate in {timeout} s")
        self._conn, _ = self._server.accept()
        self._conn.settimeout(timeout)
        said = b""
        while not said.endswith(b"\n"):
            chunk = self._conn.recv(64)
            assert chunk, "the gated call hung up before saying who it is"
            said += chunk
        self.pid, self.pgid = (int(part) for part in said.split())

    def open(self) -> None:
        """Let the call carry on."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def kill(self) -> None:
        """SIGKILL the call's process group (the fake CLI's own: the runner starts it in one)."""
        if self.pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)

    def close(self) -> None:
        self.open()
        self._server.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the claude command's side -------------------------------------------------------------------


def _stop_at_gate(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"{os.getpid()} {os.getpgid(0)}\n".encode())
        conn.settimeout(None)
        while conn.recv(64):  # until the test closes its end
            pass


class _GatedOutput:
    """The fake's stdout: stops at the gate once ``after`` lines have been written (and
    flushed, so that the caller has read them)."""

    def __init__(self, out: IO[str], after: int, port: int) -> None:
        self._out = out
        self._left = after
        self._port = port

    def write(self, text: str) -> int:
        written = self._out.write(text)
        if self._left > 0:
            self._left -= text.count("\n")
            if self._left <= 0:
                self._out.flush()
                _stop_at_gate(self._port)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


def main() -> None:
    name = os.environ.get("GATED_CLAUDE_BREAK_LEASE")
    if name:
        from claude_persist.remote import break_lease, open_store

        store = open_store(os.environ["CLAUDE_PERSIST_STORE"])
        try:
            if break_lease(store, name) is None:
                sys.exit(f"gated claude: session {name!r} had no lease to break")
        finally:
            store.close()
    port = os.environ.get("GATED_CLAUDE_PORT")
    if port:
        after = int(os.environ.get("GATED_CLAUDE_AFTER") or 0)
        if after <= 0:
            _stop_at_gate(int(port))
        else:
            sys.stdout = _GatedOutput(sys.stdout, after, int(port))
    from claude_persist.testing import fake_claude

    fake_claude.main()


if __name__ == "__main__":
    main()
