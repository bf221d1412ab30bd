"""The ``claude-persist`` command: Invoke's ``Program`` over the same task collection.

``claude-persist resume -n x -p hi`` behaves as ``inv resume -n x -p hi``, with two differences
a standalone tool needs: Invoke's own parse errors exit 2 (usage), not 1, and ``./invoke.yaml``
in the current directory is read even though no ``tasks.py`` is loaded.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

from invoke.exceptions import Exit, ParseError
from invoke.program import Program

from .tasks import closed_stdout, ns


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except ParseError as exc:
        raise Exit(f"claude-persist: usage error: {exc} (see claude-persist --help)",
                   code=2) from exc


class PersistProgram(Program):
    """Invoke's Program with usage errors mapped to exit 2 and ./invoke.yaml honoured."""

    def parse_core(self, argv: list[str] | None) -> None:
        with _usage_errors():
            super().parse_core(argv)

    def parse_collection(self) -> None:
        with _usage_errors():
            super().parse_collection()
        self.config.set_project_location(os.getcwd())
        self.config.load_project()

    def parse_tasks(self) -> None:
        with _usage_errors():
            super().parse_tasks()


def _version() -> str:
    try:
        return dist_version("claude-persist")
    except PackageNotFoundError:
        return "unknown"


program = PersistProgram(namespace=ns, name="claude-persist", binary="claude-persist",
                         version=_version())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``claude-persist`` console script."""
    try:
        program.run(argv if argv is not None else sys.argv)
    except BrokenPipeError:  # in Invoke's own output, such as --help or --list
        exit_ = closed_stdout()
        sys.stderr.write(f"{exit_.message}\n")
        sys.exit(exit_.code)


if __name__ == "__main__":
    main()
