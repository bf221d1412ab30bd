"""Leases: one holder per session at a time, across machines.

A lease is a record of kind ``"lease"`` under the session's name, written with the store's
compare-and-swap, so every step is atomic in both backends:

* **acquire**: create the record (create-only). When one is there, read it: ours (a retried
  request) is taken; an expired one is replaced (only-if-unchanged: of two machines taking over
  the same expired lease, one wins); a live one is waited for, up to the timeout, then
  :class:`~claude_persist.errors.LeaseBusyError` (exit 4) names its holder.
* **renew**: replace our record with a later expiry, only if it is still the version we wrote.
  Anything else means the lease was taken over or broken: :class:`LeaseLostError`.
* **release**: delete our record, only if it is still the version we wrote.
* **break**: delete whatever record is there (``lease -n NAME --break``).

When is a lease expired? Either its version has not changed for longer than its TTL while we
watched (our own monotonic clock: holds whatever the machines' clocks say), or its
``expires_at`` is past by more than :data:`CLOCK_SKEW` times its TTL by our clock (so that a
lease whose holder died long ago is taken at once, while clocks that disagree by less than that
never cut a live holder short). A holder renews every third of its TTL (:func:`held` runs a
thread that does it while the call runs), so a live holder's record changes well within it.

A lease alone cannot stop a holder that stalled past its expiry from writing late. What does is
that its writes are fenced: :meth:`Lease.write_entry` first renews (proving the lease is still
ours at that moment, or raising :class:`LeaseLostError`), then writes the entry
compare-and-swap on the version the holder read. A stale holder therefore either finds its lease
gone, or finds the entry changed by the newer holder; it never overwrites a newer turn.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import (
    LeaseBusyError,
    LeaseLostError,
    StoreConflictError,
    StoreError,
    StoreRecordError,
)
from .base import SharedStore, new_token

#: Seconds a lease lasts unless renewed: how long a session stays unusable after its holder's
#: machine dies.
DEFAULT_TTL = 30.0
#: The note of a lease whose record cannot be made sense of.
UNREADABLE = "unreadable"
#: A lease whose ``expires_at`` is past by more than this many TTLs by our clock is expired,
#: whether or not we watched it.
CLOCK_SKEW = 1.0


@dataclass(frozen=True)
class LeaseInfo:
    """A lease record as read from the store."""

    name: str
    host: str
    pid: int
    token: str
    acquired_at: float
    renewed_at: float
    expires_at: float
    ttl: float
    version: str
    note: str = ""

    @property
    def holder(self) -> str:
        """Who holds it, for messages: ``build-7 (pid 4242)``."""
        return f"{self.host} (pid {self.pid})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "pid": self.pid,
                "acquired_at": self.acquired_at, "renewed_at": self.renewed_at,
                "expires_at": self.expires_at, "ttl": self.ttl, "note": self.note}


def _data(host: str, pid: int, token: str, acquired_at: float, now: float, ttl: float,
          note: str) -> dict[str, Any]:
    return {"holder": {"host": host, "pid": pid, "token": token}, "acquired_at": acquired_at,
            "renewed_at": now, "expires_at": now + ttl, "ttl": ttl, "note": note}


def _info(name: str, data: dict[str, Any], version: str) -> LeaseInfo:
    """The record's fields; a record we cannot make sense of reads as expired long ago, so that
    it can be taken over (it blocks nobody)."""
    holder = data.get("holder")
    try:
        assert isinstance(holder, dict)
        return LeaseInfo(name, str(holder["host"]), int(holder["pid"]), str(holder["token"]),
                         float(data["acquired_at"]), float(data["renewed_at"]),
                         float(data["expires_at"]), float(data["ttl"]), version,
                         str(data.get("note", "")))
    except (AssertionError, KeyError, TypeError, ValueError):
        return LeaseInfo(name, "?", 0, "", 0.0, 0.0, 0.0, 0.0, version, UNREADABLE)


def read_lease(store: SharedStore, name: str) -> LeaseInfo | None:
    """The session's lease as the store holds it (expired or not), or None."""
    document = store.get("lease", name)
    return None if document is None else _info(name, document.data, document.version)


class Lease:
    """A lease we hold. Thread-safe: a renewing thread and the caller may use it at once."""

    def __init__(self, store: SharedStore, info: LeaseInfo) -> None:
        self.store = store
        self.info = info
        self._lock = threading.Lock()
        self._valid_until = time.monotonic() + info.ttl
        self.lost: LeaseLostError | None = None
        self.released = False

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def token(self) -> str:
        return self.info.token

    def _lost(self, why: str) -> LeaseLostError:
        error = LeaseLostError(
            f"the lease on session {self.name!r} in the shared store {self.store.location} "
            f"is no longer ours: {why}. Nothing was written to the store; the local copy is "
            "intact.", store=self.store.location, key=self.name, operation="renew the lease")
        self.lost = error
        return error

    def renew(self) -> None:
        """Extend the lease by its TTL from now, if it is still ours; else
        :class:`LeaseLostError` (a :class:`StoreError` when the store cannot be reached)."""
        with self._lock:
            if self.lost is not None:
                raise self.lost
            if self.released:
                raise self._lost("it was released")
            for _ in range(3):
                info = self.info
                started = time.monotonic()
                now = time.time()
                data = _data(info.host, info.pid, info.token, info.acquired_at, now, info.ttl,
                             info.note)
                try:
                    version = self.store.put("lease", self.name, data, expect=info.version)
                except StoreConflictError:
                    current = read_lease(self.store, self.name)
                    if current is not None and current.token == info.token:
                        # Our own earlier renewal landed though its answer was lost (the
                        # store failed after writing): only we write our token.
                        self.info = current
                        continue
                    # Gone: broken, or expired, taken over and released since; we cannot
                    # tell which, so the message says both.
                    raise self._lost(
                        "its record is gone (it was broken with lease --break, or it expired "
                        "and another holder took it and let it go)" if current is None else
                        f"{current.holder} holds it now (it expired, or was broken, and was "
                        "taken over)") from None
                self.info = LeaseInfo(info.name, info.host, info.pid, info.token,
                                      info.acquired_at, now, now + info.ttl, info.ttl, version,
                                      info.note)
                self._valid_until = started + info.ttl
                return
            raise self._lost("its record kept changing under us")

    def ensure(self) -> None:
        """Prove the lease is ours right now (by renewing it): call before writing."""
        self.renew()

    @property
    def remaining(self) -> float:
        """Seconds the lease surely lasts by our own clock, from the last renewal."""
        return self._valid_until - time.monotonic()

    def write_entry(self, data: dict[str, Any], *, expect: str | None) -> str:
        """Write the session's entry, fenced: renew the lease first (raising
        :class:`LeaseLostError` if it is not ours any more), then compare-and-swap the entry on
        ``expect`` (the version read under this lease; None: create). The entry records the
        lease token it was written under. Gives the entry's new version."""
        self.ensure()
        stamped = {**data, "written_under": {"host": self.info.host, "pid": self.info.pid,
                                             "lease": self.token, "at": time.time()}}
        return self.store.put("entry", self.name, stamped, expect=expect)

    def delete_entry(self, *, expect: str) -> None:
        """Delete the session's entry, fenced as :meth:`write_entry`."""
        self.ensure()
        self.store.delete("entry", self.name, expect=expect)

    def release(self) -> bool:
        """Give the lease back; False when it was not ours any more (taken over, broken)."""
        with self._lock:
            if self.released:
                return True
            self.released = True
            if self.lost is not None:
                return False
            try:
                self.store.delete("lease", self.name, expect=self.info.version)
            except StoreConflictError:
                return False
            return True


def _expired(info: LeaseInfo, watched_since: float, now: float, mono: float) -> bool:
    if mono - watched_since > info.ttl:
        return True
    return now > info.expires_at + CLOCK_SKEW * info.ttl


def acquire(store: SharedStore, name: str, *, ttl: float = DEFAULT_TTL,
            timeout: float | None = 0.0, note: str = "",
            on_wait: Callable[[LeaseInfo], None] | None = None,
            poll: float = 0.05) -> Lease:
    """Take the session's lease, waiting up to ``timeout`` seconds (None: for ever) while
    another holder has it; ``on_wait(info)`` is called when the wait starts and whenever the
    holder changes. Raises :class:`LeaseBusyError` naming the holder when the wait runs out."""
    if ttl <= 0:
        raise ValueError("a lease's ttl must be positive")
    host, pid, token = socket.gethostname(), os.getpid(), new_token()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    watched: tuple[str, float] | None = None  # (version, since when) of the holder's record
    told: str | None = None
    delay = poll
    while True:
        now = time.time()
        data = _data(host, pid, token, now, now, ttl, note)
        try:
            version = store.put("lease", name, data, expect=None)
            return Lease(store, LeaseInfo(name, host, pid, token, now, now, now + ttl, ttl,
                                          version, note))
        except StoreConflictError:
            pass
        current = read_lease(store, name)
        if current is None:
            time.sleep(min(poll, 0.01))
            continue  # released in between: try again
        if current.token == token:  # our own create, answered late
            return Lease(store, current)
        mono = time.monotonic()
        if watched is None or watched[0] != current.version:
            watched = (current.version, mono)
        if _expired(current, watched[1], time.time(), mono):
            data = _data(host, pid, token, time.time(), time.time(), ttl, note)
            try:
                version = store.put("lease", name, data, expect=current.version)
            except StoreConflictError:
                continue  # another machine took it over first, or the holder renewed
            return Lease(store, _info(name, data, version))
        if on_wait is not None and told != current.token:
            told = current.token
            on_wait(current)
        if deadline is not None and mono >= deadline:
            raise LeaseBusyError(
                f"session {name!r} is in use: {current.holder} holds its lease in the shared "
                f"store {store.location} (it expires in "
                f"{max(current.expires_at - time.time(), 0):.0f} s unless renewed)",
                name=name, holder=current.holder, expires_at=current.expires_at)
        # Wake in time for the expiry we are watching for, and for the deadline.
        wake = min(delay, max(ttl, current.ttl) / 4)
        if deadline is not None:
            wake = min(wake, max(deadline - mono, 0.0))
        time.sleep(wake)
        delay = min(delay * 2, 1.0)


def break_lease(store: SharedStore, name: str) -> LeaseInfo | None:
    """Remove the session's lease, whoever holds it; gives what was broken (None: nothing
    was there). Its holder's next renewal or fenced write fails with
    :class:`LeaseLostError`."""
    for _ in range(20):
        try:
            current = read_lease(store, name)
        except StoreRecordError:  # not JSON, not ours: remove it all the same
            version = store.version("lease", name)
            current = None if version is None else _info(name, {}, version)
        if current is None:
            return None
        try:
            store.delete("lease", name, expect=current.version)
            return current
        except StoreConflictError:
            continue  # renewed or replaced in between: break that one
    raise StoreConflictError(
        f"cannot break the lease on session {name!r} in the shared store {store.location}: "
        "it keeps changing. Try again.", store=store.location, key=name,
        operation="break the lease")


class _Renewer(threading.Thread):
    """Renews a lease every third of its TTL until stopped or the lease is lost."""

    def __init__(self, lease: Lease, interval: float) -> None:
        super().__init__(name=f"lease-renewer-{lease.name}", daemon=True)
        self.lease = lease
        self.interval = interval
        self.stop = threading.Event()
        self.failure: StoreError | None = None

    def run(self) -> None:
        wait = self.interval
        while not self.stop.wait(wait):
            try:
                self.lease.renew()
                wait = self.interval
                self.failure = None
            except LeaseLostError:
                return
            except StoreError as exc:  # the store is unreachable for now: try again sooner
                self.failure = exc
                wait = max(self.interval / 4, 0.05)


@contextlib.contextmanager
def held(store: SharedStore, name: str, *, ttl: float = DEFAULT_TTL,
         timeout: float | None = 0.0, note: str = "",
         on_wait: Callable[[LeaseInfo], None] | None = None,
         renew_every: float | None = None) -> Iterator[Lease]:
    """Hold the session's lease for the ``with`` block: acquire it (as :func:`acquire`),
    renew it in a thread every ``renew_every`` seconds (a third of the TTL), release it at the
    end. A release that fails (the store unreachable) is left to expire by itself."""
    lease = acquire(store, name, ttl=ttl, timeout=timeout, note=note, on_wait=on_wait)
    renewer = _Renewer(lease, renew_every if renew_every is not None else ttl / 3)
    renewer.start()
    try:
        yield lease
    finally:
        renewer.stop.set()
        renewer.join()
        with contextlib.suppress(StoreError):
            lease.release()
