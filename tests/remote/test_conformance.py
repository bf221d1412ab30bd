"""The conformance suite of the shared store interface: every test runs against both backends,
a folder and a bucket on a real S3-compatible server (moto's, over HTTP, one request at a time:
see serial_moto.py)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_persist.errors import StoreConflictError, StoreError, exit_code_for
from claude_persist.remote import SharedStore, open_store
from claude_persist.remote.base import Document, digest_of

from .conftest import WORKER, race


def test_a_record_is_created_once_and_read_with_its_version(store: SharedStore) -> None:
    assert store.get("entry", "a") is None
    version = store.put("entry", "a", {"session_id": "s1", "n": 1}, expect=None)
    read = store.get("entry", "a")
    assert read is not None and read.data == {"session_id": "s1", "n": 1}
    assert read.version == version
    with pytest.raises(StoreConflictError) as again:
        store.put("entry", "a", {"session_id": "s2"}, expect=None)
    assert exit_code_for(again.value) == 4
    assert "exists already" in str(again.value) and "'a'" in str(again.value)
    assert again.value.store == store.location
    assert store.get("entry", "a") == read  # the loser wrote nothing


def test_a_replace_needs_the_current_version(store: SharedStore) -> None:
    v1 = store.put("entry", "a", {"n": 1}, expect=None)
    v2 = store.put("entry", "a", {"n": 2}, expect=v1)
    assert v2 != v1
    with pytest.raises(StoreConflictError, match="changed it since it was read"):
        store.put("entry", "a", {"n": 99}, expect=v1)
    # The same data again still makes a new version: an old one is never valid again.
    v3 = store.put("entry", "a", {"n": 2}, expect=v2)
    assert v3 != v2
    with pytest.raises(StoreConflictError):
        store.put("entry", "a", {"n": 99}, expect=v2)
    read = store.get("entry", "a")
    assert read is not None and read.data == {"n": 2} and read.version == v3
    with pytest.raises(StoreConflictError, match="does not exist"):
        store.put("entry", "never-made", {"n": 1}, expect=v3)


def test_a_delete_needs_the_current_version(store: SharedStore) -> None:
    v1 = store.put("entry", "a", {"n": 1}, expect=None)
    v2 = store.put("entry", "a", {"n": 2}, expect=v1)
    with pytest.raises(StoreConflictError):
        store.delete("entry", "a", expect=v1)
    assert store.get("entry", "a") is not None
    store.delete("entry", "a", expect=v2)
    assert store.get("entry", "a") is None
    with pytest.raises(StoreConflictError):
        store.delete("entry", "a", expect=v2)
    with pytest.raises(StoreConflictError):
        store.put("entry", "a", {"n": 3}, expect=v2)  # a replace cannot resurrect it
    v3 = store.put("entry", "a", {"n": 3}, expect=None)  # a create can
    assert v3 not in (v1, v2)
    assert store.names("entry") == ["a"]


def test_names_list_live_records_of_one_kind(store: SharedStore) -> None:
    odd = [".", "..", ".hidden", "a b", "slash/inside", "per%cent", "ünï", "x" * 120]
    for name in ["b", "a", *odd]:
        store.put("entry", name, {"name": name}, expect=None)
    store.put("lease", "only-a-lease", {"x": 1}, expect=None)
    gone = store.put("entry", "gone", {"x": 1}, expect=None)
    store.delete("entry", "gone", expect=gone)
    assert store.names("entry") == sorted(["a", "b", *odd])
    assert store.names("lease") == ["only-a-lease"]
    for name in odd:
        read = store.get("entry", name)
        assert read is not None and read.data == {"name": name}


def test_blobs_are_content_addressed(store: SharedStore) -> None:
    data = os.urandom(3 << 20) + b"\n".join(b'{"turn": %d}' % i for i in range(1000))
    digest = store.put_blob(data)
    assert digest == digest_of(data)
    assert store.has_blob(digest)
    assert store.get_blob(digest) == data
    assert store.put_blob(data) == digest  # again: nothing changes
    assert store.put_blob(b"") == digest_of(b"") and store.get_blob(digest_of(b"")) == b""
    missing = digest_of(b"never stored")
    assert not store.has_blob(missing)
    with pytest.raises(StoreError, match="no blob") as absent:
        store.get_blob(missing)
    assert exit_code_for(absent.value) == 75
    with pytest.raises(ValueError):
        store.get_blob("../../etc/passwd")


@pytest.fixture
def racers(store_url: str) -> Iterator[list[SharedStore]]:
    """Three more connections to the same store, one per racing writer."""
    opened = [open_store(store_url) for _ in range(3)]
    yield opened
    for one in opened:
        one.close()


def test_the_self_check_passes_and_leaves_no_record(store: SharedStore) -> None:
    assert store.self_check() == []
    assert store.self_check() == []  # again: nothing of the first one is in the way
    assert store.names("entry") == [] and store.names("lease") == []


def _strip(headers: tuple[str, ...]) -> Callable[..., None]:
    """An event handler that removes ``headers`` from a request before it is signed and sent:
    the real server then sees what a server that ignores them would act on."""
    def handler(request: Any, **_: Any) -> None:
        for header in headers:
            if header in request.headers:
                del request.headers[header]
    return handler


def test_the_self_check_refuses_a_server_that_ignores_conditions(bucket: str) -> None:
    from claude_persist.remote.s3store import S3Store

    store = open_store(f"s3://{bucket}/p")
    assert isinstance(store, S3Store)
    store.client.meta.events.register("before-sign.s3.DeleteObject", _strip(("If-Match",)))
    warnings = store.self_check()
    assert len(warnings) == 1 and "ignores If-Match on DeleteObject" in warnings[0]
    store.client.meta.events.register("before-sign.s3.PutObject",
                                      _strip(("If-None-Match", "If-Match")))
    with pytest.raises(StoreError) as refused:
        store.self_check()
    message = str(refused.value)
    assert "ignores If-None-Match: * on PutObject and If-Match on PutObject" in message
    assert f"'{bucket}'" in message and exit_code_for(refused.value) == 75


def _put(name: str, expect: str | None, store: SharedStore) -> str:
    return store.put("entry", name, {"by": id(store)}, expect=expect)


def _delete(name: str, expect: str, store: SharedStore) -> None:
    store.delete("entry", name, expect=expect)


def test_of_writers_racing_on_one_version_exactly_one_wins(
        store: SharedStore, racers: list[SharedStore]) -> None:
    for round_ in range(15):
        name = f"race-{round_}"
        created = race(racers, functools.partial(_put, name, None))
        assert sum(isinstance(o, str) for o in created) == 1, created
        assert sum(isinstance(o, StoreConflictError) for o in created) == 2, created
        current = store.get("entry", name)
        assert current is not None
        replaced = race(racers, functools.partial(_put, name, current.version))
        winners = [o for o in replaced if isinstance(o, str)]
        assert len(winners) == 1, replaced
        after = store.get("entry", name)
        assert after is not None and after.version == winners[0]
        deleted = race(racers, functools.partial(_delete, name, after.version))
        assert sum(o is None for o in deleted) == 1, deleted
        assert store.get("entry", name) is None


def test_update_retries_until_every_increment_lands(store: SharedStore,
                                                   racers: list[SharedStore]) -> None:
    def add(current: Document | None) -> dict[str, Any]:
        return {"count": (current.data["count"] if current else 0) + 1}

    def ten(s: SharedStore) -> None:
        for _ in range(10):
            s.update("entry", "counter", add)

    outcomes = race(racers, ten)
    assert outcomes == [None] * 3
    final = store.get("entry", "counter")
    assert final is not None and final.data == {"count": 30}


def test_eight_processes_lose_no_update(store: SharedStore, store_url: str) -> None:
    """Eight processes ("machines"), each updating its own entry and one shared entry at once:
    every update of each lands."""
    rounds = 6
    workers = [subprocess.Popen([sys.executable, str(WORKER), "count", store_url, f"own-{i}",
                                 str(rounds), "shared"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(8)]
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        assert json.loads(out) == {"done": rounds}
    for i in range(8):
        own = store.get("entry", f"own-{i}")
        assert own is not None and own.data == {"count": rounds}
    shared = store.get("entry", "shared")
    assert shared is not None and shared.data == {"count": 8 * rounds}
    assert store.names("entry") == sorted(["shared", *(f"own-{i}" for i in range(8))])


# -- the folder backend's own mechanics --------------------------------------------------------


@pytest.fixture
def folder_store(tmp_path: Path) -> SharedStore:
    (tmp_path / "s").mkdir()
    return open_store(f"dir:{tmp_path / 's'}")


def test_folder_versions_are_pruned_and_the_record_stays_exact(
        folder_store: SharedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from claude_persist.remote import dirstore

    monkeypatch.setattr(dirstore, "PRUNE_AGE", -60.0)  # every successor counts as old
    version = folder_store.put("lease", "x", {"n": 0}, expect=None)
    first = version
    for n in range(1, 70):
        version = folder_store.put("lease", "x", {"n": n}, expect=version)
    files = sorted(p.name for p in (tmp_path / "s" / "lease" / "x").iterdir())
    assert len(files) < 70 // 2, files  # pruned
    assert files[-1] == f"{70:012d}.json"
    read = folder_store.get("lease", "x")
    assert read is not None and read.data == {"n": 69} and read.version == version
    with pytest.raises(StoreConflictError):  # a long-gone version is still refused
        folder_store.put("lease", "x", {"n": -1}, expect=first)


def test_folder_reads_walk_past_a_stale_listing_and_ignore_temp_files(
        folder_store: SharedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing that misses the newest version (as NFS's cached listings can) still reads
    the newest version, and a writer that read the stale one loses its compare-and-swap."""
    from claude_persist.remote import dirstore

    v1 = folder_store.put("entry", "x", {"n": 1}, expect=None)
    v2 = folder_store.put("entry", "x", {"n": 2}, expect=v1)
    record = tmp_path / "s" / "entry" / "x"
    (record / ".tmp.deadhost.1.abc").write_bytes(b'{"half')  # a writer killed mid-write
    real = dirstore.DirStore._numbers

    def stale(self: dirstore.DirStore, folder: Path, operation: str) -> list[int] | None:
        found = real(self, folder, operation)
        return found[:-1] if found else found  # the newest version not listed yet

    monkeypatch.setattr(dirstore.DirStore, "_numbers", stale)
    read = folder_store.get("entry", "x")
    assert read is not None and read.data == {"n": 2} and read.version == v2
    with pytest.raises(StoreConflictError):
        folder_store.put("entry", "x", {"n": 99}, expect=v1)


def test_folder_store_refuses_an_unreadable_record(folder_store: SharedStore,
                                                   tmp_path: Path) -> None:
    folder_store.put("entry", "x", {"n": 1}, expect=None)
    (tmp_path / "s" / "entry" / "x" / f"{2:012d}.json").write_text("{not json")
    with pytest.raises(StoreError, match="the entry 'x', which is unreadable") as bad:
        folder_store.get("entry", "x")
    assert exit_code_for(bad.value) == 75 and str(tmp_path / "s") in str(bad.value)
