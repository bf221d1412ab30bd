"""The README's CI recipes, run as they are written: each ``run:`` step through bash, on two
"runners" (two temp homes: HOME, temp folder, claude's config folder, checkout folder), with the
fake CLI as claude. The ``uses:`` steps are played by hand: a checkout makes the repository's
files, an artifact or a cache is a folder both runners see."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from claude_persist.testing import FAKE_CLAUDE_CMD

from .conftest import REPO


def _readme_blocks(language: str) -> list[str]:
    """The README's ``language`` blocks in the CI part of its Portable sessions section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Portable sessions"):]
    section = section[section.index("### In CI\n"):]
    section = section[:section.index("\n## ")]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


class Runner:
    """A fresh machine: nothing of claude's or ours on it until a step puts it there."""

    def __init__(self, root: Path, repo_files: dict[str, str]) -> None:
        self.home = root / "home"
        self.temp = root / "tmp"
        self.checkout = root / "checkout"
        for folder in (self.home, self.temp, self.checkout):
            folder.mkdir(parents=True)
        for name, text in repo_files.items():
            (self.checkout / name).parent.mkdir(parents=True, exist_ok=True)
            (self.checkout / name).write_text(text)
        bin_dir = str(Path(sys.executable).parent)  # where pip put claude-persist
        self.env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("CLAUDE_", "FAKE_CLAUDE_", "INVOKE_CLAUDE_PERSIST_"))
               and k != "XDG_STATE_HOME"},  # the runner's own, under its HOME
            "HOME": str(self.home), "TMPDIR": str(self.temp),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "CLAUDE_CMD": FAKE_CLAUDE_CMD, "FAKE_CLAUDE_HOME": str(root / "fake"),
        }

    def bash(self, script: str, env: dict[str, Any] | None = None) -> str:
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=self.checkout,
                              env={**self.env, **{k: str(v) for k, v in (env or {}).items()}},
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{script}\nexit {proc.returncode}: {proc.stderr}"
        return proc.stdout


REPO_FILES = {"roles/planner.md": "You plan changes.\n", "ISSUE.md": "Add a flag.\n"}


def _run_job(job: dict[str, Any], runner: Runner, artifacts: Path) -> list[str]:
    outputs = []
    for step in job["steps"]:
        uses = step.get("uses", "")
        if uses.startswith("actions/checkout@"):
            continue  # the runner's checkout folder already holds the repository's files
        if uses.startswith("actions/upload-artifact@"):
            store = artifacts / step["with"]["name"]
            store.mkdir(parents=True)
            shutil.copy(runner.checkout / step["with"]["path"], store)
        elif uses.startswith("actions/download-artifact@"):
            for item in (artifacts / step["with"]["name"]).iterdir():
                shutil.copy(item, runner.checkout)
        elif step.get("name") == "Install":
            assert "pip install" in step["run"]  # what is skipped: the test's venv has it
        elif "run" in step:
            outputs.append(runner.bash(step["run"], step.get("env")))
        else:
            raise AssertionError(f"a step the test does not know how to play: {step}")
    return outputs


def test_the_two_job_pipeline(tmp_path: Path) -> None:
    pipeline = yaml.safe_load(_readme_blocks("yaml")[0])
    plan, build = pipeline["jobs"]["plan"], pipeline["jobs"]["build"]
    assert build["needs"] == "plan"
    artifacts = tmp_path / "artifacts"
    first = Runner(tmp_path / "runner-1", REPO_FILES)
    second = Runner(tmp_path / "runner-2", REPO_FILES)
    created = _run_job(plan, first, artifacts)
    sid = created[0].strip()
    outputs = _run_job(build, second, artifacts)
    assert outputs[-1].startswith(f"fake reply to turn 2 of session {sid} (model "
                                  "claude-opus-4-1, effort high, role: You plan changes.)")
    assert list((second.home / ".claude" / "projects").glob(f"*/{sid}.jsonl"))
    assert not list(second.home.glob(".claude/projects/*/*.replaced-*"))


def test_the_cache_recipe_keeps_a_session_across_runs(tmp_path: Path) -> None:
    steps = yaml.safe_load(_readme_blocks("yaml")[1])
    [cache] = [s for s in steps if s.get("uses", "").startswith("actions/cache@")]
    [script] = [s for s in steps if "run" in s]
    path = cache["with"]["path"]
    saved = tmp_path / "cache"
    answers, bundles = [], []
    # Two pipeline runs, each on a fresh runner: the first creates, the second restores,
    # imports and resumes. (That a session imported, resumed and exported again travels on is
    # the library's to prove: tests/test_portable.py's fast-forward test.)
    for number in range(2):
        runner = Runner(tmp_path / f"run-{number}", REPO_FILES)
        if saved.exists():
            shutil.copytree(saved, runner.checkout / path)
        answers.append(runner.bash(script["run"], script.get("env")))
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(runner.checkout / path, saved)
        bundles.append((saved / "sessions.tgz").read_bytes())
    sid = answers[0].strip()  # create prints the new id
    imported, reply = answers[1].splitlines()
    assert imported.split() == ["branch-notes", "new", sid]
    assert reply.startswith(f"fake reply to turn 2 of session {sid}")
    assert bundles[1] != bundles[0]  # the second run saved its turn for the next


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_makefile(tmp_path: Path) -> None:
    [makefile] = _readme_blocks("make")
    first = Runner(tmp_path / "machine-1", {**REPO_FILES, "Makefile": makefile})
    second = Runner(tmp_path / "machine-2", {**REPO_FILES, "Makefile": makefile})
    first.bash("make plan")
    (second.checkout / "build").mkdir()
    shutil.copy(first.checkout / "build" / "sessions.tgz", second.checkout / "build")
    sid = first.bash("claude-persist resolve -n plan-x").strip()
    out = second.bash("make build")
    assert f"fake reply to turn 2 of session {sid}" in out
