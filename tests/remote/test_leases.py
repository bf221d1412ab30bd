"""Leases, against both backends: one holder at a time, expiry and takeover, renewal, break,
fenced writes, and a holder killed with SIGKILL.

No assertion depends on how fast the machine is: waits are "until it happens, within a
generous limit", and a lease that must stay held is one nobody else tries to take early."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from claude_persist.errors import (
    LeaseBusyError,
    LeaseLostError,
    SessionBusyError,
    StoreConflictError,
    exit_code_for,
)
from claude_persist.remote import (
    LeaseInfo,
    SharedStore,
    acquire,
    break_lease,
    held,
    open_store,
    read_lease,
)
from claude_persist.remote.lease import Lease

from ..conftest import wait_for
from .conftest import WORKER, race


@pytest.fixture
def other(store_url: str) -> Iterator[SharedStore]:
    """A second connection to the same store: another machine."""
    opened = open_store(store_url)
    yield opened
    opened.close()


def test_one_holder_at_a_time_and_the_second_is_told_who(store: SharedStore,
                                                         other: SharedStore) -> None:
    lease = acquire(store, "s", ttl=60, note="resume")
    info = read_lease(other, "s")
    assert info is not None
    assert (info.host, info.pid, info.token) == (socket.gethostname(), os.getpid(), lease.token)
    assert info.expires_at > time.time() + 30 and info.note == "resume"
    seen: list[LeaseInfo] = []
    with pytest.raises(LeaseBusyError) as busy:
        acquire(other, "s", timeout=0.3, on_wait=seen.append)
    assert isinstance(busy.value, SessionBusyError) and exit_code_for(busy.value) == 4
    assert f"{socket.gethostname()} (pid {os.getpid()})" in str(busy.value)
    assert "'s'" in str(busy.value) and store.location in str(busy.value)
    assert busy.value.holder == info.holder and seen == [info]
    assert lease.release() is True
    assert read_lease(other, "s") is None
    again = acquire(other, "s", timeout=0)
    assert again.token != lease.token
    assert again.release() is True and again.release() is True


def test_a_waiter_gets_the_lease_when_it_is_released(store: SharedStore,
                                                     other: SharedStore) -> None:
    lease = acquire(store, "s", ttl=60)
    got: list[Lease] = []
    waiting = threading.Event()
    waiter = threading.Thread(target=lambda: got.append(
        acquire(other, "s", timeout=60, on_wait=lambda _: waiting.set())))
    waiter.start()
    assert waiting.wait(60)  # it found the lease held and waits
    lease.release()
    waiter.join()
    assert len(got) == 1 and read_lease(store, "s") is not None
    assert read_lease(store, "s").token == got[0].token  # type: ignore[union-attr]


def test_an_expired_lease_is_taken_over_and_its_old_holder_cannot_write(
        store: SharedStore, other: SharedStore) -> None:
    stale = acquire(store, "s", ttl=0.3)  # never renewed
    entry = stale.write_entry({"turns": ["a1"]}, expect=None)
    fresh = acquire(other, "s", ttl=60, timeout=60)  # waits out the expiry
    current = other.get("entry", "s")
    assert current is not None and current.version == entry
    newer = fresh.write_entry({"turns": ["a1", "b1"]}, expect=current.version)
    # The old holder comes back: its lease is gone, and so is the version it read.
    with pytest.raises(LeaseLostError) as lost:
        stale.renew()
    assert fresh.info.holder in str(lost.value) and exit_code_for(lost.value) == 4
    with pytest.raises(LeaseLostError):
        stale.write_entry({"turns": ["a1", "a2"]}, expect=entry)
    with pytest.raises(StoreConflictError):  # even a write that skips the fence
        store.put("entry", "s", {"turns": ["a1", "a2"]}, expect=entry)
    final = other.get("entry", "s")
    assert final is not None and final.version == newer
    assert final.data["turns"] == ["a1", "b1"]
    assert final.data["written_under"]["lease"] == fresh.token
    assert stale.release() is False  # nothing of the new holder's is removed
    assert read_lease(store, "s").token == fresh.token  # type: ignore[union-attr]


def test_a_lease_long_expired_by_the_clock_is_taken_at_once(store: SharedStore) -> None:
    long_ago = time.time() - 3600
    store.put("lease", "s", {"holder": {"host": "gone", "pid": 1, "token": "t"},
                             "acquired_at": long_ago, "renewed_at": long_ago,
                             "expires_at": long_ago + 30, "ttl": 30}, expect=None)
    lease = acquire(store, "s", timeout=0)
    assert read_lease(store, "s").token == lease.token  # type: ignore[union-attr]
    # A record nobody can make sense of blocks nobody either.
    store.put("lease", "t", {"holder": "?"}, expect=None)
    taken = acquire(store, "t", timeout=0)
    assert read_lease(store, "t").token == taken.token  # type: ignore[union-attr]


def test_a_renewal_whose_answer_was_lost_keeps_the_lease(store: SharedStore) -> None:
    """The store wrote a renewal but the holder never learnt the new version (the answer was
    lost): the next renewal finds its own token and goes on, instead of giving up."""
    lease = acquire(store, "s", ttl=60)
    landed = {"holder": {"host": lease.info.host, "pid": lease.info.pid, "token": lease.token},
              "acquired_at": lease.info.acquired_at, "renewed_at": time.time(),
              "expires_at": time.time() + 60, "ttl": 60}
    store.put("lease", "s", landed, expect=lease.info.version)
    lease.renew()
    assert lease.lost is None and read_lease(store, "s").version == lease.info.version  # type: ignore[union-attr]
    assert lease.release() is True


def _take(name: str, store: SharedStore) -> Lease:
    return acquire(store, name, ttl=60, timeout=0)


def test_of_two_taking_over_one_expired_lease_one_wins(store: SharedStore, store_url: str
                                                       ) -> None:
    long_ago = time.time() - 3600
    stores = [open_store(store_url) for _ in range(2)]
    for round_ in range(5):
        name = f"s{round_}"
        store.put("lease", name, {"holder": {"host": "gone", "pid": 1, "token": "t"},
                                  "acquired_at": long_ago, "renewed_at": long_ago,
                                  "expires_at": long_ago + 30, "ttl": 30}, expect=None)
        outcomes = race(stores, functools.partial(_take, name))
        assert all(isinstance(o, (Lease, LeaseBusyError)) for o in outcomes), outcomes
        winners = [o for o in outcomes if isinstance(o, Lease)]
        assert len(winners) == 1, outcomes
        assert read_lease(store, name).token == winners[0].token  # type: ignore[union-attr]
    for one in stores:
        one.close()


def test_held_renews_while_the_block_runs_and_releases_after(store: SharedStore,
                                                             other: SharedStore) -> None:
    with held(store, "s", ttl=2.0, renew_every=0.05) as lease:
        first = read_lease(other, "s")
        assert first is not None and first.token == lease.token
        wait_for(lambda: read_lease(other, "s").renewed_at  # type: ignore[union-attr]
                 > first.renewed_at, "the holder to renew its lease")
        renewed = read_lease(other, "s")
        assert renewed is not None and renewed.token == lease.token
        assert renewed.expires_at > first.expires_at and renewed.version != first.version
        assert lease.lost is None
        lease.ensure()  # a fenced write's proof: still ours
    assert read_lease(other, "s") is None


def test_a_broken_lease_is_lost_to_its_holder(store: SharedStore, other: SharedStore) -> None:
    assert break_lease(other, "s") is None
    lease = acquire(store, "s", ttl=60)
    broken = break_lease(other, "s")
    assert broken is not None and broken.token == lease.token
    with pytest.raises(LeaseLostError, match="broken"):
        lease.write_entry({"turns": []}, expect=None)
    assert other.get("entry", "s") is None
    mine = acquire(other, "s", timeout=0)
    assert lease.release() is False
    assert read_lease(store, "s").token == mine.token  # type: ignore[union-attr]


def test_bad_ttl_is_refused(store: SharedStore) -> None:
    with pytest.raises(ValueError):
        acquire(store, "s", ttl=0)


def test_a_killed_holder_frees_the_session_after_the_expiry(store: SharedStore,
                                                            store_url: str) -> None:
    """``kill -9`` of a process holding a lease (renewed by its thread): the session is
    usable again after the expiry, and the turn it had pushed is there."""
    holder = subprocess.Popen([sys.executable, str(WORKER), "hold", store_url, "s", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, holder.stderr.read() if holder.stderr else ""
        ready = json.loads(line)
        info = read_lease(store, "s")
        assert info is not None and info.pid == holder.pid == ready["ready"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lease = acquire(store, "s", ttl=60, timeout=120)
    entry = store.get("entry", "s")
    assert entry is not None and entry.data["turn"] == 1 and entry.data["by"] == holder.pid
    assert entry.data["written_under"]["lease"] == ready["token"]
    lease.write_entry({"turn": 2}, expect=entry.version)
    lease.release()


def test_four_machines_taking_turns_on_one_session_never_overlap(store: SharedStore,
                                                                 store_url: str) -> None:
    """Each turn reads the entry and writes it back under the lease, with no retry: a second
    holder at any moment would make one of those writes fail its compare-and-swap."""
    turns = 6
    workers = [subprocess.Popen([sys.executable, str(WORKER), "turns", store_url, "s",
                                 str(turns), "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        assert json.loads(out) == {"done": turns}
    entry = store.get("entry", "s")
    assert entry is not None
    log = entry.data["turns"]
    assert len(log) == 4 * turns
    for worker in workers:
        mine = [int(t.split(":")[1]) for t in log if t.startswith(f"{worker.pid}:")]
        assert mine == list(range(turns))
    assert read_lease(store, "s") is None
