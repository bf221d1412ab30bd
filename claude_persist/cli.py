"""The ``claude-persist`` command: Invoke's ``Program`` over the same task collection.

``claude-persist resume -n x -p hi`` behaves as ``inv resume -n x -p hi``, with the differences
a standalone tool needs: Invoke's own parse errors exit 2 (usage), not 1; ``./invoke.yaml``
(``.yml``, ``.json``) in the current directory is read, but never ``invoke.py``, so running in an
untrusted checkout runs no code from it, and a broken file is a usage error naming its line; and
only the core flags that mean something here are shown and accepted (no ``--dry``, which would
not stop claude, and no ``--pty`` beside ``-p/--prompt``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from invoke.config import AmbiguousMergeError
from invoke.exceptions import Exit, ParseError
from invoke.parser import Parser
from invoke.parser.context import ParserContext
from invoke.program import Program

from . import __version__
from .tasks import closed_stdout, ns


@contextlib.contextmanager
def _usage_errors(program: PersistProgram | None = None) -> Iterator[None]:
    try:
        yield
    except ParseError as exc:
        raise Exit(f"claude-persist: usage error: {_explain(exc, program)} (see claude-persist "
                   "--help)", code=2) from exc


def _explain(error: ParseError, program: PersistProgram | None) -> str:
    """Invoke's parse error in words that say what to type instead."""
    text = str(error)
    context = getattr(error, "context", None)
    flags = sorted(getattr(context, "flags", {}) or {})
    tasks = sorted(program.collection.task_names) if program and program.collection else []
    needed = re.match(r"Flag <Argument: ([\w-]+)(?: \((\w)\))?> needed value", text)
    if needed:
        long, short = needed.groups()
        names = f"-{short}/--{long}" if short else f"--{long}"
        return f"{names} needs a value, e.g. --{long}=VALUE"
    unknown = re.match(r"No idea what '(.*)' is!", text)
    if not unknown:
        return text
    word = unknown.group(1)
    if word.startswith("-"):
        close = difflib.get_close_matches(word, flags, n=1)
        return f"{word} is not an option here" + (f"; did you mean {close[0]}?" if close else "")
    close = difflib.get_close_matches(word, tasks, n=1)
    if close:
        return f"{word!r} is not a task; did you mean {close[0]}?"
    if context is not None and "--name" in flags:
        return f"{word!r} is not an option or a task; to name the session, write -n {word}"
    return f"{word!r} is not a task or an option"


#: Invoke's core flags that mean something for claude-persist; the others (--dry, --pty, --echo,
#: --hide, --warn-only, ...) are about ``c.run`` shell commands, which our tasks never run.
CORE_FLAGS = {"help", "version", "list", "list-depth", "list-format", "complete",
              "print-completion-script", "debug", "config"}


class PersistProgram(Program):
    """Invoke's Program for a standalone command: see the module's docstring."""

    def parse_core(self, argv: list[str] | None) -> None:
        writes_bytecode = sys.dont_write_bytecode
        with _usage_errors(self):
            super().parse_core(argv)
        # Invoke stops bytecode caching to keep it out of a tasks.py folder; there is none here,
        # and without the cache every module imported from now on compiles on every call.
        sys.dont_write_bytecode = writes_bytecode
        self._help_after_task()
        for flag in self.args.values():
            if flag.name not in CORE_FLAGS and flag.name != "write-pyc" and flag.got_value:
                raise Exit(f"claude-persist: usage error: --{flag.name} is not an option of "
                           "claude-persist (see claude-persist --help)", code=2)

    def _help_after_task(self) -> None:
        """``claude-persist run --help`` is read as ``--help run``: Invoke would take the flag
        for ``run``'s file argument."""
        words = self.core.unparsed
        cut = words.index("--") if "--" in words else len(words)
        asked = [i for i, word in enumerate(words[:cut]) if word in ("-h", "--help")]
        if asked and words and not words[0].startswith("-"):
            self.args.help.value = words[0]
            self.core.unparsed = [w for i, w in enumerate(words) if i not in asked]

    def print_help(self) -> None:
        print(f"Usage: {self.binary} [--core-opts] <task> [--task-opts] ...\n")
        print("Core options:\n")
        self.print_columns([row for row in self.initial_context.help_tuples()
                            if _names_core(row[0])])
        self.list_tasks()

    def parse_collection(self) -> None:
        with _usage_errors(self):
            super().parse_collection()
        self.config.set_project_location(os.getcwd())
        # Data files only: invoke.py would run code from whatever folder we are started in.
        self.config._set(_file_suffixes=("yaml", "yml", "json"))
        try:
            self.config.load_project()
        except Exception as exc:  # a YAML or JSON error, with its line when the parser has it
            raise Exit(f"claude-persist: error: the configuration file in {os.getcwd()} is "
                       f"broken: {' '.join(str(exc).split())}. Fix it or remove it.",
                       code=2) from exc

    def _make_parser(self) -> Parser:
        # Invoke's parser builds, then deep-copies, every task's flags on each parse; only the
        # tasks named on the command line are needed. With none named, keep them all so that
        # Invoke's own messages stay as they are.
        ignore = self.config.tasks.ignore_unknown_help
        words = set(self.core.unparsed)
        names = self.collection.task_names
        named = [ParserContext(name=name, aliases=aliases,
                               args=self.collection[name].get_arguments(
                                   ignore_unknown_help=ignore))
                 for name, aliases in names.items()
                 if name in words or words.intersection(aliases)]
        return Parser(initial=self.initial_context,
                      contexts=named or self.collection.to_contexts(ignore_unknown_help=ignore))

    def parse_tasks(self) -> None:
        asked = self.args.help.value
        if isinstance(asked, str) and asked:  # before a missing positional is complained of
            self.parser = self._make_parser()
            if asked in self.parser.contexts:
                self.print_task_help(asked)
                raise Exit
        self.core.unparsed = _two_words(self.core.unparsed)
        takes_more = {name for name, task in self.collection.tasks.items()
                      if _takes_more(task.body)}
        if takes_more.intersection(self.core.unparsed):
            self.core.unparsed = _more_words(self.core.unparsed, self._make_parser().contexts)
        with _usage_errors(self):
            super().parse_tasks()


#: Commands of two words, as a user types them (``runs show ID``), and the task each is. Invoke
#: would read the second word as a task of its own.
TWO_WORDS = {("runs", "show"): "runs-show", ("runs", "prune"): "runs-prune"}


def _two_words(words: list[str]) -> list[str]:
    """``runs show ID`` -> ``runs-show ID`` when the command starts with one of TWO_WORDS."""
    if len(words) >= 2 and (task := TWO_WORDS.get((words[0], words[1]))) is not None:
        return [task, *words[2:]]
    return words


#: The parameter that takes a task's further bare words (``validate a.yml b.yml``).
MORE = "more"


@functools.cache
def _takes_more(body: Callable[..., Any]) -> bool:
    return MORE in inspect.signature(body).parameters


def _more_words(words: list[str], contexts: Any) -> list[str]:
    """Invoke reads a bare word after a task's positional argument as another task; for a task
    with a ``more`` parameter, make it one more value of that (``validate a.yml --more b.yml``).
    """
    out: list[str] = []
    context = None
    filled = 0
    taking_value = False
    for i, word in enumerate(words):
        if word == "--":
            out += words[i:]
            break
        if taking_value:
            taking_value = False
        elif word.startswith("-") and context is not None:
            flag = context.flags.get(word)
            taking_value = flag is not None and flag.takes_value and "=" not in word
        elif context is None or filled < len(context.positional_args):
            if context is None and word in contexts and MORE in contexts[word].args:
                context, filled = contexts[word], -1
            filled += context is not None
        else:
            out.append(f"--{MORE}")
        out.append(word)
    return out


def _names_core(column: str) -> bool:
    """True when a help row's flag column (``-h [STRING], --help[=STRING]``) names a core flag
    we keep."""
    words = column.replace(",", " ").split()
    return any(word.lstrip("-").split("=")[0].split("[")[0] in CORE_FLAGS for word in words
               if word.startswith("--"))


program = PersistProgram(namespace=ns, name="claude-persist", binary="claude-persist",
                         version=__version__)


def main(argv: list[str] | None = None, *, run_with: Program | None = None) -> None:
    """Entry point of the ``claude-persist`` console script.

    ``run_with`` runs another copy of ``program``: a Program keeps the state of its last run, so
    tests that run many commands in one process give each a fresh one.
    """
    try:
        (run_with or program).run(argv if argv is not None else sys.argv)
    except BrokenPipeError:  # in Invoke's own output, such as --help or --list
        sys.exit(closed_stdout().code)
    except KeyboardInterrupt:  # before a task took over its signals: start-up, parsing
        sys.exit(130)
    except AmbiguousMergeError as exc:  # say claude_persist: 5 in invoke.yaml
        sys.stderr.write(f"claude-persist: error: the configuration cannot be merged: "
                         f"{' '.join(str(exc).split())}. Under claude_persist, give a mapping "
                         "of settings (see the README's Configuration).\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
