"""The README's GitHub Actions recipe for a shared store, run as it is written on three fresh
"runners" in turn (each its own HOME, temp folder and checkout), with the job's env: pointed at
a folder store instead of the bucket (the S3 side is the same code, tested against the local
server in test_shared_sessions)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..conftest import REPO
from ..test_ci_recipes import REPO_FILES, Runner


def _recipe() -> dict[str, Any]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## A shared session store"):]
    section = section[:section.index("\n## ")]
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", section, flags=re.S) if "jobs:" in b]
    job: dict[str, Any] = yaml.safe_load(block)["jobs"]["build"]
    return job


def test_the_store_recipe_continues_one_session_on_every_runner(tmp_path: Path) -> None:
    job = _recipe()
    env = dict(job["env"])
    assert env["CLAUDE_PERSIST_STORE"].startswith("s3://")
    assert any("pip install 'claude-persist[s3]'" in s.get("run", "") for s in job["steps"])
    folder = tmp_path / "shared"
    folder.mkdir()
    env["CLAUDE_PERSIST_STORE"] = f"dir:{folder}"
    [script] = [s["run"] for s in job["steps"]
                if "run" in s and "pip install" not in s["run"]]
    answers = []
    for number in range(3):
        runner = Runner(tmp_path / f"runner-{number}", REPO_FILES)
        answers.append(runner.bash(script, env).strip())
    sid = answers[0]
    assert re.fullmatch(r"[0-9a-f-]{36}", sid)  # the first run creates it
    assert answers[1].startswith(f"fake reply to turn 2 of session {sid}")
    assert answers[2].startswith(f"fake reply to turn 3 of session {sid}")
