"""One "machine" of the hammer: random turns on a few shared sessions through the API.

    session_worker.py MACHINE SESSIONS TURNS SECONDS SEED

Runs in the machine's own environment (HOME, TMPDIR, CLAUDE_CONFIG_DIR, CLAUDE_PERSIST_STORE,
CLAUDE_CMD); the workspace is the current folder. Takes TURNS turns, or as many as fit in
SECONDS when TURNS is 0, each on one of the sessions s0..s{SESSIONS-1} picked at random, with
the prompt ``MACHINE:i``; prints one JSON line per turn (session, prompt, reply or error).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

from claude_persist import Sessions, TurnOptions
from claude_persist.errors import ClaudePersistError, exit_code_for


def main(argv: list[str]) -> None:
    machine, sessions, turns, seconds, seed = argv[0], int(argv[1]), int(argv[2]), \
        float(argv[3]), int(argv[4])
    rng = random.Random(seed)
    api = Sessions(os.getcwd(), store=os.environ["CLAUDE_PERSIST_STORE"],
                   notify=lambda message: None)
    stop = time.monotonic() + seconds
    i = 0
    while (i < turns) if turns else (time.monotonic() < stop):
        name = f"s{rng.randrange(sessions)}"
        prompt = f"{machine}:{i}"
        started = time.monotonic()
        try:
            reply = api.resume(name, prompt, TurnOptions(lock_timeout=300)).text
            line: dict[str, object] = {"session": name, "prompt": prompt, "reply": reply}
        except ClaudePersistError as exc:
            line = {"session": name, "prompt": prompt, "error": str(exc),
                    "code": exit_code_for(exc)}
        line["seconds"] = time.monotonic() - started
        print(json.dumps(line), flush=True)
        i += 1
        time.sleep(rng.random() * 0.05)


if __name__ == "__main__":
    main(sys.argv[1:])
