"""Edges of the shared store: one name per session, deleted names, several stores, a hung
server, unreadable records, missing blobs, bad settings. "Machines" as in ``machines.py``
(their own homes, temp folders and workspaces), but each command runs in the test's process
(the in-process runner of ``tests/conftest.py``) against a folder store, unless the S3 server
is the point."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from claude_persist.errors import StoreRecordError
from claude_persist.remote import SharedStore, open_store

from ..conftest import InProcessRunner, Ran
from .machines import Machine, make_machine, user_prompts


@dataclass
class Box:
    """A machine whose commands run in process."""

    machine: Machine
    runner: InProcessRunner

    def __call__(self, *args: str) -> Ran:
        return self.runner(*args, env=self.machine.env, cwd=self.machine.workspace)

    def transcript(self, sid: str) -> Path:
        return self.machine.transcript(sid)


def names(box: Box) -> list[str]:
    listed = box("list", "--json")
    return [s["name"] for s in listed.json()["sessions"]]


def made(ran: Ran) -> str:
    assert ran.code == 0, ran.err
    return ran.out.strip().splitlines()[-1]


@pytest.fixture
def folder(tmp_path: Path) -> str:
    store = tmp_path / "store"
    store.mkdir()
    return f"dir:{store}"


@pytest.fixture
def boxes(folder: str, tmp_path: Path, cp: InProcessRunner) -> tuple[Box, Box, Box]:
    a, b, c = (Box(make_machine(tmp_path, n, folder, f"ws-{n}"), cp) for n in "abc")
    return a, b, c


# -- 1. one name per session --------------------------------------------------------------------

def test_a_second_name_for_a_session_is_refused(boxes: tuple[Box, Box, Box]) -> None:
    a, b, c = boxes
    sid = made(a("create", "-n", "x", "-p", "one"))
    second = a("adopt", "-n", "y", "--session-id", sid)
    assert second.code == 2, second.err
    assert "already has the name 'x'" in second.err and "resume -n x" in second.err
    assert b("resolve", "-n", "y").code == 3  # nothing was pushed under y
    assert names(a) == ["x"]
    assert made(b("resume", "-n", "x", "-p", "two on b"))
    assert made(c("resume", "-n", "x", "-p", "three on c"))
    assert user_prompts(c.transcript(sid)) == ["one", "two on b", "three on c"]
    # Once x is deleted, the session may take another name.
    assert a("delete", "-n", "x").code == 0
    assert made(c("adopt", "-n", "y", "--session-id", sid)) and c("resolve", "-n", "y").code == 0


def test_an_import_under_a_second_name_is_refused(boxes: tuple[Box, Box, Box],
                                                  tmp_path: Path) -> None:
    a, b, _ = boxes
    made(a("create", "-n", "s1", "-p", "one"))
    bundle = tmp_path / "s1.tgz"
    assert a("export", "-n", "s1", "-o", str(bundle)).code == 0
    copied = b("import", str(bundle), "--as", "s1=s1copy")
    assert copied.code == 2, copied.err
    assert "already has the name 's1'" in copied.err
    assert b("resolve", "-n", "s1copy").code == 3


def test_two_names_claimed_at_once_for_one_session_one_wins(folder: str, tmp_path: Path) -> None:
    """Two machines naming one session at the same moment, each under its name's lease (as
    adopt does): exactly one name is recorded, the other is refused naming it."""
    from claude_persist.errors import UsageError
    from claude_persist.remote import acquire
    from claude_persist.remote.shared import SharedSessions
    from claude_persist.store import MappingStore

    from .conftest import race

    sid = "0b7e6c1e-0000-4000-8000-000000000001"
    stores = [open_store(folder) for _ in range(2)]
    leases = [acquire(store, name) for store, name in zip(stores, "xy", strict=True)]
    shared = {id(store): (SharedSessions(store, MappingStore.for_workspace(
        tmp_path, tmp_path / f"{name}.json"), tmp_path, {}, print), name)
        for store, name in zip(stores, "xy", strict=True)}

    def claim(store: SharedStore) -> object:
        sessions, name = shared[id(store)]
        sessions.claim(sid, name)
        return name

    for _ in range(5):
        outcomes = race(stores, claim)
        won = [o for o in outcomes if isinstance(o, str)]
        lost = [o for o in outcomes if isinstance(o, UsageError)]
        assert len(won) == 1 and len(lost) == 1, outcomes
        assert f"already has the name {won[0]!r}" in str(lost[0])
        stores[0].delete("session", sid, expect=stores[0].version("session", sid) or "")
    for lease in leases:
        lease.release()


def test_sync_does_not_push_a_second_local_name(boxes: tuple[Box, Box, Box]) -> None:
    a, b, _ = boxes
    sid = made(a("create", "-n", "x", "-p", "one"))
    made(b("resume", "-n", "x", "-p", "two"))  # b has the files
    store = b.machine.env.pop("CLAUDE_PERSIST_STORE")
    assert b("adopt", "-n", "y", "--session-id", sid).code == 0  # a name made without a store
    synced = b("sync", "--store", store)
    assert synced.code == 4, synced.err
    assert "y  conflict: session" in synced.out and "already has the name 'x'" in synced.out
    assert names(a) == ["x"]


# -- 2. sync respects deletes -------------------------------------------------------------------

def test_sync_drops_a_name_deleted_in_the_store(boxes: tuple[Box, Box, Box]) -> None:
    a, b, _ = boxes
    sid = made(a("create", "-n", "d1", "-p", "one"))
    made(b("resume", "-n", "d1", "-p", "two"))  # b has d1 cached
    assert a("delete", "-n", "d1").code == 0
    synced = b("sync")
    assert synced.code == 0, synced.err
    assert "d1  deleted in the store: dropped the name here" in synced.out
    assert names(a) == [] and a("resolve", "-n", "d1").code == 3
    assert b("sync").out == ""  # nothing left to bring back
    assert user_prompts(b.transcript(sid)) == ["one", "two"]  # the transcript stays


# -- 3. a name keeps to the store it came from --------------------------------------------------

def test_sync_never_pushes_another_stores_names(boxes: tuple[Box, Box, Box],
                                                tmp_path: Path) -> None:
    a, b, _ = boxes
    other = tmp_path / "other store"
    other.mkdir()
    made(a("create", "-n", "from-s1", "-p", "one"))
    made(b("resume", "-n", "from-s1", "-p", "two"))  # b caches it from the first store
    del b.machine.env["CLAUDE_PERSIST_STORE"]
    made(b("create", "-n", "local-only", "-p", "made without a store"))
    synced = b("sync", "--store", f"dir:{other}")
    assert synced.code == 0, synced.err
    assert "from-s1  left alone: this machine has it from dir:" in synced.out
    assert "local-only  pushed (new in the store)" in synced.out
    assert open_store(f"dir:{other}").names("entry") == ["local-only"]


# -- 4. a hung S3 server ------------------------------------------------------------------------

def test_a_hung_s3_server_fails_each_request_in_bounded_time(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A server that accepts connections and never answers (as a stopped one does): each
    request gives up after its attempts' read timeouts, with the store's error."""
    from claude_persist.errors import StoreError
    from claude_persist.remote import s3store

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: _accept(listener, accepted), daemon=True).start()
    for variable in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    store = open_store("s3://hung-bucket/p")
    config = store.client.meta.config  # type: ignore[attr-defined]
    assert (config.connect_timeout, config.read_timeout) == (5, 20)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    monkeypatch.setattr(s3store, "READ_TIMEOUT", 0.2)
    store = open_store("s3://hung-bucket/p")
    with pytest.raises(StoreError, match="hung-bucket"):
        store.get("entry", "x")
    deadline = time.monotonic() + 30  # the accepting thread may not have caught up yet
    while len(accepted) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(accepted) == 3  # every attempt timed out, and there were three
    listener.close()


def _accept(listener: socket.socket, accepted: list[socket.socket]) -> None:
    with contextlib.suppress(OSError):
        while True:
            accepted.append(listener.accept()[0])  # kept open, never answered


# -- 5. one unreadable record blocks nothing else -----------------------------------------------

def _latest_version(folder: str, kind: str, name: str) -> Path:
    return sorted((Path(folder.removeprefix("dir:")) / kind / name).glob("*.json"))[-1]


def test_an_unreadable_entry_is_skipped_named_replaced_and_deleted(
        boxes: tuple[Box, Box, Box], folder: str, tmp_path: Path) -> None:
    a, _, _ = boxes
    made(a("create", "-n", "good", "-p", "one"))
    made(a("create", "-n", "bad", "-p", "one"))
    broken = _latest_version(folder, "entry", "bad")
    broken.write_bytes(b"{not json")
    listed = a("list", "--json")
    assert listed.code == 75 and [s["name"] for s in listed.json()["sessions"]] == ["good"]
    assert str(broken) in listed.err
    synced = a("sync")
    assert synced.code == 75 and "good  up to date" in synced.out
    assert "bad  skipped: " in synced.out and str(broken) in synced.out
    exported = a("export", "--all", "-o", str(tmp_path / "all.tgz"))
    assert exported.code == 0 and "bad left out" in exported.err and str(broken) in exported.err
    replaced = a("create", "-n", "bad", "--force", "-p", "again")
    assert replaced.code == 0, replaced.err
    assert names(a) == ["bad", "good"]
    _latest_version(folder, "entry", "bad").write_bytes(b"[]")
    deleted = a("delete", "-n", "bad")
    assert deleted.code == 0, deleted.err
    assert a("list").code == 0 and names(a) == ["good"]


def test_an_unreadable_lease_is_broken(boxes: tuple[Box, Box, Box], folder: str) -> None:
    a, b, _ = boxes
    made(a("create", "-n", "s", "-p", "one"))
    latest = _latest_version(folder, "lease", "s")
    garbage = latest.with_name(f"{int(latest.stem) + 1:012d}.json")
    garbage.write_bytes(b"\xff garbage")
    shown = b("lease", "-n", "s")
    assert shown.code == 75 and str(garbage) in shown.err
    broken = b("lease", "-n", "s", "--break")
    assert broken.code == 0, broken.err
    assert "removed an unreadable lease record" in broken.out
    assert made(b("resume", "-n", "s", "-p", "two"))


def test_sync_goes_on_past_a_missing_blob(boxes: tuple[Box, Box, Box], folder: str) -> None:
    a, b, _ = boxes
    first = made(a("create", "-n", "first", "-p", "one"))
    made(a("create", "-n", "second", "-p", "one"))
    blob = next(p for p in Path(folder.removeprefix("dir:"), "blobs").glob("*/*")
                if p.read_bytes().count(first.encode()))
    blob.unlink()
    synced = b("sync")
    assert synced.code == 75, synced.err
    assert "first  skipped: " in synced.out and str(blob) in synced.out
    assert "second  pulled" in synced.out


def test_an_unreadable_record_is_listed_named_and_removable(
        store_url: str, store: SharedStore, request: pytest.FixtureRequest) -> None:
    if store_url.startswith("dir:"):
        path = Path(store_url.removeprefix("dir:"), "entry", "x", "000000000001.json")
        path.parent.mkdir(parents=True)
        path.write_bytes(b"{not json")
        where = str(path)
    else:
        bucket = store_url.removeprefix("s3://").split("/")[0]
        where = "team/sessions/entry/x.json"
        request.getfixturevalue("s3_admin").put_object(Bucket=bucket, Key=where, Body=b"{")
    with pytest.raises(StoreRecordError, match=re.escape(where)):
        store.get("entry", "x")
    assert store.names("entry") == ["x"]
    version = store.version("entry", "x")
    assert version is not None
    store.delete("entry", "x", expect=version)
    assert store.names("entry") == [] and store.version("entry", "x") is None


# -- 6. a removed blob comes back from a machine that has it ------------------------------------

def test_sync_uploads_blobs_the_store_lost(boxes: tuple[Box, Box, Box], folder: str) -> None:
    a, b, _ = boxes
    sid = made(a("create", "-n", "s", "-p", "one"))
    blobs = [p for p in Path(folder.removeprefix("dir:"), "blobs").glob("*/*")]
    for blob in blobs:
        blob.unlink()
    assert b("resume", "-n", "s", "-p", "two").code == 75  # the store cannot give it
    synced = a("sync")
    assert synced.code == 0, synced.err
    assert f"s  re-uploaded {len(blobs)} missing blob(s)" in synced.out
    assert a("sync").out == "s  up to date\n"
    assert made(b("resume", "-n", "s", "-p", "two"))
    assert user_prompts(b.transcript(sid)) == ["one", "two"]


# -- 7. bad settings and inputs are usage errors ------------------------------------------------

def test_an_endpoint_that_is_not_a_url_is_a_usage_error(cp: InProcessRunner) -> None:
    ran = cp("list", "--store", "s3://bucket/p", env={
        "AWS_ENDPOINT_URL": "not-a-url", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_REGION": "us-east-1"})
    assert ran.code == 2, ran.err
    assert "'not-a-url'" in ran.err and "AWS_ENDPOINT_URL" in ran.err


@pytest.mark.parametrize("bucket", ["Team_Bk", "team_bucket", "TeamBucket", "192.168.1.10"])
def test_bucket_names_follow_s3s_rules(cp: InProcessRunner, bucket: str) -> None:
    ran = cp("list", "--store", f"s3://{bucket}/p")
    assert ran.code == 2 and "not a valid bucket name" in ran.err, ran.err


def test_a_name_too_long_for_the_store_is_a_usage_error(boxes: tuple[Box, Box, Box]) -> None:
    a, _, _ = boxes
    long = "n" * 300
    for args in (("create", "-n", long, "-p", "one"), ("resolve", "-n", long),
                 ("lease", "-n", long)):
        ran = a(*args)
        assert ran.code == 2 and "at most 200" in ran.err, (args, ran.err)
    assert made(a("create", "-n", "n" * 200, "-p", "one"))


def test_an_empty_store_setting_is_refused(cp: InProcessRunner) -> None:
    flag = cp("list", "--store", "")
    assert flag.code == 2 and "--store is empty" in flag.err, flag.err
    variable = cp("list", env={"CLAUDE_PERSIST_STORE": " "})
    assert variable.code == 2 and "set but empty" in variable.err
    assert "unset it to use no store" in variable.err


def test_a_lost_lease_says_what_may_have_happened_and_how_to_push(folder: str,
                                                                  tmp_path: Path) -> None:
    from claude_persist.errors import LeaseLostError
    from claude_persist.remote import acquire, break_lease
    from claude_persist.remote.shared import SharedSessions
    from claude_persist.store import MappingStore

    store = open_store(folder)
    lease = acquire(store, "s")
    break_lease(store, "s")
    with pytest.raises(LeaseLostError) as lost:
        lease.renew()
    assert "broken with lease --break, or it expired" in str(lost.value)
    shared = SharedSessions(store, MappingStore.for_workspace(tmp_path, tmp_path / "m.json"),
                            tmp_path, {}, print)
    text = str(shared.push_failed("s", lost.value))
    assert "To push it: run `claude-persist sync` (it pushes the turn," in text
    assert text.lower().count("push it") == 1


def test_lease_of_a_name_the_store_lacks_is_not_found(boxes: tuple[Box, Box, Box]) -> None:
    a, _, _ = boxes
    for args in (("lease", "-n", "nosuch"), ("lease", "-n", "nosuch", "--break")):
        ran = a(*args)
        assert ran.code == 3 and "no session named 'nosuch'" in ran.err, ran.err
    made(a("create", "-n", "s", "-p", "one"))
    assert a("lease", "-n", "s").out == "s: no lease (free)\n"


# -- 8. the recipe's jobs take turns on a session -----------------------------------------------

def test_the_store_recipe_runs_one_job_at_a_time_per_session() -> None:
    from .test_store_recipe import _recipe

    job = _recipe()
    script = next(s["run"] for s in job["steps"] if "create -n" in s.get("run", ""))
    name = script.split("create -n ")[1].split()[0]
    assert job["concurrency"] == {"group": f"claude-session-{name}",
                                  "cancel-in-progress": False}


@pytest.mark.parametrize(("variables", "region"), [
    ({"AWS_REGION": "eu-west-1"}, "eu-west-1"),  # botocore alone would ignore it
    ({"AWS_DEFAULT_REGION": "eu-central-1", "AWS_REGION": "eu-west-1"}, "eu-central-1"),
    ({}, "us-west-2"),  # neither: the profile's region in the config file
])
def test_the_region_comes_from_aws_default_region_then_aws_region_then_the_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str],
        region: str) -> None:
    for variable in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-west-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    store = open_store("s3://regional-bucket/p")
    assert store.client.meta.region_name == region  # type: ignore[attr-defined]
