"""The hammer, shared by the default suite (short) and the stress stage (long): machines taking
random turns on a few sessions of one store, then every session checked turn by turn."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .machines import make_machine, replies, user_prompts

WORKER = Path(__file__).with_name("session_worker.py")
REPLY = re.compile(r"fake reply to turn (\d+) of session (\S+)")


def hammer(store: str, root: Path, machines: int, sessions: int, turns: int,
           seconds: float) -> dict[str, Any]:
    """Run it; assert that every turn is in its session once, in each machine's order, with
    none lost and none overlapping another; give figures."""
    first = make_machine(root, "m0", store)
    for k in range(sessions):
        made = first.run("create", "-n", f"s{k}", "-p", "start")
        assert made.code == 0, made.err
    crew = [first] + [make_machine(root, f"m{i}", store) for i in range(1, machines)]
    started = time.monotonic()
    workers = [subprocess.Popen(
        [sys.executable, str(WORKER), m.name, str(sessions), str(turns), str(seconds),
         str(i)], cwd=m.workspace, env=m.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i, m in enumerate(crew)]
    done: list[dict[str, Any]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=seconds + 600)
        assert worker.returncode == 0, err[-3000:]
        done += [json.loads(line) for line in out.splitlines()]
    elapsed = time.monotonic() - started
    failed = [d for d in done if "error" in d]
    assert not failed, failed[:3]
    checker = make_machine(root, "checker", store)
    synced = checker.run("sync")
    assert synced.code == 0, synced.err
    for k in range(sessions):
        name = f"s{k}"
        sid = checker.run("resolve", "-n", name).out.strip()
        path = checker.transcript(sid)
        prompts = user_prompts(path)
        said = replies(path)
        expected = [d["prompt"] for d in done if d["session"] == name]
        # none lost, none twice
        assert prompts[0] == "start" and sorted(prompts[1:]) == sorted(expected)
        # each machine's turns in the order it took them
        for m in crew:
            mine = [int(p.split(":")[1]) for p in prompts[1:] if p.split(":")[0] == m.name]
            assert mine == sorted(mine)
        # none overlapping: turn n of the session answered the n-th prompt, each once
        numbers = [int(REPLY.search(r).group(1)) for r in said]  # type: ignore[union-attr]
        assert numbers == list(range(1, len(prompts) + 1))
        for d in done:
            if d["session"] == name:
                n = prompts.index(d["prompt"]) + 1
                assert f"turn {n} of session {sid}" in d["reply"]
    return {"turns": len(done), "seconds": elapsed, "turns_per_second": len(done) / elapsed,
            "machines": machines, "sessions": sessions}
