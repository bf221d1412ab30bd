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

from invoke.exceptions import Exit, ParseError
from invoke.parser import Parser
from invoke.program import Program

from . import __version__
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
        writes_bytecode = sys.dont_write_bytecode
        with _usage_errors():
            super().parse_core(argv)
        # Invoke stops bytecode caching to keep it out of a tasks.py folder; there is none here,
        # and without the cache every module imported from now on compiles on every call.
        sys.dont_write_bytecode = writes_bytecode

    def parse_collection(self) -> None:
        with _usage_errors():
            super().parse_collection()
        self.config.set_project_location(os.getcwd())
        self.config.load_project()

    def _make_parser(self) -> Parser:
        # Invoke's parser deep-copies every task's flags on each parse (10 ms for our tasks);
        # only the tasks named on the command line are needed. With none named, keep them all
        # so that Invoke's own messages stay as they are.
        contexts = self.collection.to_contexts(
            ignore_unknown_help=self.config.tasks.ignore_unknown_help)
        words = set(self.core.unparsed)
        named = [c for c in contexts if c.name in words or words.intersection(c.aliases)]
        return Parser(initial=self.initial_context, contexts=named or contexts)

    def parse_tasks(self) -> None:
        with _usage_errors():
            super().parse_tasks()


program = PersistProgram(namespace=ns, name="claude-persist", binary="claude-persist",
                         version=__version__)


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
