"""A "machine" for the multi-process tests: one process using a shared store.

    worker.py count URL NAME N SHARED   N times: +1 on the entry NAME and on the entry SHARED
                                        (read-modify-write, retried on conflicts)
    worker.py turns URL NAME N TTL      N turns on session NAME, each under its lease and
                                        without any retry: append "<pid>:<i>" to its entry
    worker.py hold URL NAME TTL         take NAME's lease (renewed), write a turn, say "ready",
                                        then wait to be killed

Each prints one JSON line when done (``hold``: when ready). The store's settings come from the
environment (AWS_* for s3://).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from claude_persist.remote import SharedStore, held, open_store
from claude_persist.remote.base import Document


def plus_one(current: Document | None) -> dict[str, Any]:
    return {"count": (current.data["count"] if current else 0) + 1}


def count(store: SharedStore, name: str, n: int, shared: str) -> dict[str, Any]:
    for _ in range(n):
        # Many attempts: what is tested is that no update is lost, not when one gives up.
        store.update("entry", name, plus_one, attempts=10_000)
        store.update("entry", shared, plus_one, attempts=10_000)
    return {"done": n}


def turns(store: SharedStore, name: str, n: int, ttl: float) -> dict[str, Any]:
    for i in range(n):
        with held(store, name, ttl=ttl, timeout=120) as lease:
            current = store.get("entry", name)
            log = list(current.data["turns"]) if current else []
            lease.write_entry({"turns": [*log, f"{os.getpid()}:{i}"]},
                              expect=current.version if current else None)
    return {"done": n}


def hold(store: SharedStore, name: str, ttl: float) -> None:
    with held(store, name, ttl=ttl, timeout=60) as lease:
        current = store.get("entry", name)
        lease.write_entry({"turn": 1, "by": os.getpid()},
                          expect=current.version if current else None)
        print(json.dumps({"ready": os.getpid(), "token": lease.token}), flush=True)
        time.sleep(600)


def main(argv: list[str]) -> None:
    command, url, name = argv[:3]
    store = open_store(url)
    if command == "count":
        print(json.dumps(count(store, name, int(argv[3]), argv[4])), flush=True)
    elif command == "turns":
        print(json.dumps(turns(store, name, int(argv[3]), float(argv[4]))), flush=True)
    elif command == "hold":
        hold(store, name, float(argv[3]))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
