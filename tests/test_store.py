"""The mapping file: seed compatibility, permissions, refusals, quarantine, and no lost entries
under concurrency or kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_persist import Sessions, TurnOptions, mapping
from claude_persist.errors import UnsafeFileError
from claude_persist.store import MappingStore, default_mapping_file, workspace_key

from .conftest import Runner, mapping_path, read_mapping

SEED_FILE: dict[str, Any] = {
    "aliases": {
        "review-src": {
            "created_at": "2026-01-02T03:04:05.000000+00:00",
            "last_model": "sonnet",
            "last_reasoning_effort": "high",
            "session_id": "11111111-2222-4333-8444-555555555555",
        }
    },
    "workspace_dir": "/somewhere",
}


def seed_load(path: Path) -> dict[str, Any]:
    """The seed script's reader, restated: what it keeps of each entry."""
    data = json.loads(path.read_text())
    aliases = data["aliases"] if isinstance(data.get("aliases"), dict) else data
    out = {}
    for name, entry in aliases.items():
        if isinstance(entry, dict) and isinstance(entry.get("session_id"), str):
            out[name] = entry["session_id"]
        elif isinstance(entry, str):
            out[name] = entry
    return out


def test_default_path_is_the_seeds(workspace: Path) -> None:
    import hashlib

    odd = workspace / "my repo (v2)"
    odd.mkdir()
    digest = hashlib.md5(str(odd.resolve()).encode()).hexdigest()
    assert workspace_key(odd) == f"my_repo_v2-{digest}"
    assert default_mapping_file(odd) == (Path(os.environ["TMPDIR"]) / "agent-sessions"
                                         / f"my_repo_v2-{digest}"
                                         / "claude-code-alias-mapping.json")
    assert default_mapping_file(odd, {}).parts[:3] == ("/", "tmp", "agent-sessions")


def test_reads_a_seed_file_and_tightens_it_on_write(workspace: Path) -> None:
    path = mapping_path(workspace)
    path.parent.mkdir(parents=True, mode=0o755)
    os.chmod(path.parent, 0o755)
    path.write_text(json.dumps(SEED_FILE, indent=2))
    os.chmod(path, 0o644)
    sessions = Sessions(workspace)
    entry = sessions.resolve("review-src")
    assert (entry.last_model, entry.last_reasoning_effort) == ("sonnet", "high")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # reading changes nothing
    sessions.adopt("other", str(uuid.uuid4()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = read_mapping(workspace)
    assert data["aliases"]["review-src"] == SEED_FILE["aliases"]["review-src"]
    assert set(seed_load(path)) == {"review-src", "other"}  # the seed still reads ours


def test_reads_the_seeds_legacy_flat_map(workspace: Path) -> None:
    path = mapping_path(workspace)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"old": "11111111-2222-4333-8444-555555555555",
                                "older": {"session_id": "21111111-2222-4333-8444-555555555555"}}))
    sessions = Sessions(workspace)
    assert [e.name for e in sessions.list()] == ["old", "older"]
    sessions.adopt("new", str(uuid.uuid4()))
    data = read_mapping(workspace)
    assert set(data["aliases"]) == {"old", "older", "new"}


def test_new_files_are_private(workspace: Path) -> None:
    Sessions(workspace).adopt("x", str(uuid.uuid4()))
    path = mapping_path(workspace)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("where", ["folder", "file", "temp file", "shared root"])
def test_symlinks_are_refused(workspace: Path, tmp_path: Path, where: str) -> None:
    path = mapping_path(workspace)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    if where == "shared root":
        path.parent.parent.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(decoy, path.parent.parent)
    elif where == "folder":
        path.parent.parent.mkdir(parents=True)
        os.symlink(decoy, path.parent)
    else:
        path.parent.mkdir(parents=True)
        link = path if where == "file" else path.with_name(f"{path.name}.tmp.{os.getpid()}")
        os.symlink(decoy / "target.json", link)
    with pytest.raises(UnsafeFileError, match="symlink"):
        Sessions(workspace).adopt("x", str(uuid.uuid4()))
    assert list(decoy.iterdir()) == []  # nothing was written through the link


@pytest.mark.skipif(os.getuid() != 0, reason="making a file owned by another user needs root")
@pytest.mark.parametrize("what", ["folder", "file"])
def test_files_of_another_user_are_refused(workspace: Path, what: str) -> None:
    path = mapping_path(workspace)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(SEED_FILE))
    os.chown(path.parent if what == "folder" else path, 4242, -1)
    with pytest.raises(UnsafeFileError, match="owned by uid 4242"):
        Sessions(workspace).adopt("x", str(uuid.uuid4()))


def test_a_corrupt_file_is_moved_aside_with_a_warning(cp: Runner, workspace: Path) -> None:
    path = mapping_path(workspace)
    path.parent.mkdir(parents=True)
    path.write_text('{"aliases": {"half": ')
    ran = cp("adopt", "-n", "fresh", "--session-id", str(uuid.uuid4()))
    assert ran.code == 0
    assert "corrupt" in ran.err and ".bad." in ran.err
    bad = list(path.parent.glob(f"{path.name}.bad.*"))
    assert len(bad) == 1 and bad[0].read_text() == '{"aliases": {"half": '
    assert list(read_mapping(workspace)["aliases"]) == ["fresh"]


def test_a_reader_during_a_write_sees_the_last_committed_file(workspace: Path) -> None:
    store = MappingStore.for_workspace(workspace)
    with store.update() as doc:
        doc.put("a", {"session_id": str(uuid.uuid4())})
    with store.update() as doc:
        doc.put("b", {"session_id": str(uuid.uuid4())})
        assert [e.name for e in store.read().entries()] == ["a"]
    assert [e.name for e in store.read().entries()] == ["a", "b"]


def test_a_reader_quarantines_only_after_a_second_look_under_the_lock(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MappingStore.for_workspace(workspace)
    with store.update() as doc:
        doc.put("a", {"session_id": str(uuid.uuid4())})
    real_read = store._read_text
    reads = iter(['{"torn', None])  # first look: torn; second look (under the lock): real

    def flaky() -> str | None:
        first = next(reads, None)
        return first if first is not None else real_read()

    monkeypatch.setattr(store, "_read_text", flaky)
    assert [e.name for e in store.read().entries()] == ["a"]
    assert not list(store.folder.glob("*.bad.*"))


CREATOR = textwrap.dedent("""
    import sys
    from claude_persist import Sessions
    print(Sessions(sys.argv[1]).create(sys.argv[2]).session_id)
""")


def test_concurrent_creates_lose_no_entry(workspace: Path, fake_claude: Any) -> None:
    # 8 processes at once (the stress set runs 32 x 25), each a create through the API: the
    # store is what is tested, and a process that need not load the command line starts
    # sooner, so more of the 8 overlap.
    procs = [subprocess.Popen([sys.executable, "-c", CREATOR, str(workspace), f"s{i:02d}"],
                              cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(8)]
    ids = {}
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        ids[f"s{i:02d}"] = out.strip()
    aliases = read_mapping(workspace)["aliases"]
    assert {name: entry["session_id"] for name, entry in aliases.items()} == ids


WRITER = textwrap.dedent("""
    import sys, uuid
    from claude_persist import Sessions
    sessions = Sessions(sys.argv[1])
    i = 0
    while True:
        name = f"{sys.argv[2]}-{i}"
        sessions.adopt(name, str(uuid.uuid4()))
        print(name, flush=True)   # printed only once the write is committed
        i += 1
""")


def test_kill_9_of_writers_loses_no_committed_entry(workspace: Path) -> None:
    rng = random.Random(7)
    committed: list[str] = []
    for round_ in range(5):  # the stress set runs 200 rounds
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(workspace), f"r{round_}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # started and committed one
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        committed += [f"r{round_}-0", *out.split()]
        data = json.loads(mapping_path(workspace).read_text())  # always parses
        missing = set(committed) - set(data["aliases"])
        assert not missing, f"round {round_}: lost {sorted(missing)}"
    assert len(committed) >= 5  # at least the one each round waited for


def test_a_lock_waits_times_out_and_dies_with_its_holder(tmp_path: Path) -> None:
    from claude_persist.fsio import Lock, LockTimeout

    path = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from claude_persist.fsio import Lock\n"
         f"held = Lock(Path({str(path)!r})).acquire()\nprint('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    started = time.monotonic()
    with pytest.raises(LockTimeout):
        Lock(path).acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.3
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with Lock(path).acquire(timeout=5) as lock:  # the kernel let go of the dead holder's
        assert lock.is_locked
    assert not lock.is_locked and oct(path.stat().st_mode & 0o777) == "0o600"


def test_the_early_name_check_finds_every_spelling_of_a_key(tmp_path: Path) -> None:
    from claude_persist.store import MappingStore

    store = MappingStore.for_workspace(tmp_path, tmp_path / "m.json")
    assert not store.may_hold("a")  # no file yet
    for text in ('{"aliases": {"a": {"session_id": "x"}}}', '{"a" : "x"}',
                 '{\n  "aliases": {\n    "a":\n {}}}'):
        (tmp_path / "m.json").write_text(text)
        assert store.may_hold("a"), text
    (tmp_path / "m.json").write_text('{"aliases": {"ab": {"role": "a"}}}')
    assert not store.may_hold("a") and not store.may_hold("b")


def test_every_change_reaches_a_big_file_whose_other_lines_are_kept(
        workspace: Path, fake_claude: Any) -> None:
    """Each command's write encodes the entries it changed and keeps the other lines as read."""
    sessions = Sessions(workspace)
    sessions.create("s-main", "hi")
    path = mapping_path(workspace)
    data = read_mapping(workspace)
    for index in range(300):
        data["aliases"][f"other-{index:03d}"] = {"session_id": str(uuid.uuid4()),
                                                 "note": f"ünïcode {index}"}
    path.write_text(json.dumps(data))
    with sessions.store.update():
        pass  # rewritten once in our layout, one entry per line
    before = path.read_text().splitlines()

    sessions.resume("s-main", "again", TurnOptions(model="opus", effort="low"))
    after = read_mapping(workspace)["aliases"]
    assert after["s-main"]["last_model"] == "opus"
    assert after["s-main"]["last_reasoning_effort"] == "low"
    sessions.fork("s-main", "s-fork", "branch")
    assert read_mapping(workspace)["aliases"]["s-fork"]["forked_from"] == \
        after["s-main"]["session_id"]
    sessions.create("s-main", "over", force=True)
    assert len(read_mapping(workspace)["aliases"]["s-main"]["history"]) == 1
    sessions.adopt("s-adopted", str(uuid.uuid4()))
    sessions.delete("other-150")
    after = read_mapping(workspace)["aliases"]
    assert after["s-adopted"]["adopted"] and "other-150" not in after
    assert len(after) == 300 - 1 + 3
    text = path.read_text()
    assert text == mapping.dump(mapping.parse(text, for_writing=True))  # our layout, exactly
    kept = set(before) & set(text.splitlines())
    assert sum(line.startswith('    "other-') for line in kept) == 299


def test_dump_of_a_read_document_is_the_full_encoding(tmp_path: Path) -> None:
    """Reusing rows gives the text of encoding every entry afresh, whatever the layout read;
    a line spaced by hand is kept as it is (still the same JSON)."""
    doc = mapping.MappingDoc(workspace_dir="/w", aliases={
        f"s{i}": {"session_id": str(uuid.uuid4()), "n": i} for i in range(40)})
    ours = mapping.dump(doc)
    for text in (ours, json.dumps(json.loads(ours), indent=2), json.dumps(json.loads(ours)),
                 ours.replace('"n": 7', '"n":7')):
        read = mapping.parse(text, for_writing=True)
        if '"n":7' in text:
            assert json.loads(mapping.dump(read)) == json.loads(ours)
        else:
            assert mapping.dump(read) == ours
        read.put("s3", {**read.aliases["s3"], "n": -3})
        read.remove("s5")
        changed = json.loads(mapping.dump(read))["aliases"]
        assert changed["s3"]["n"] == -3 and "s5" not in changed and len(changed) == 39


def test_a_corrupt_entry_is_named_by_list_kept_by_writes_and_deletable(
        cp: Runner, workspace: Path) -> None:
    good = str(uuid.uuid4())
    path = mapping_path(workspace)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"workspace_dir": str(workspace),
                                "aliases": {"five": 5, "fine": {"session_id": good}}}))
    listed = cp("list")
    assert listed.code == 0 and "fine" in listed.out and "five" not in listed.out
    assert "1 corrupt entry" in listed.err and "five" in listed.err
    assert cp("adopt", "-n", "new", "--session-id", str(uuid.uuid4())).code == 0
    assert read_mapping(workspace)["aliases"]["five"] == 5  # a write loses nothing
    resolved = cp("resolve", "-n", "five")
    assert resolved.code == 2 and "is 5, not an object" in resolved.err
    deleted = cp("delete", "-n", "five")
    assert deleted.code == 0, deleted.err
    assert sorted(read_mapping(workspace)["aliases"]) == ["fine", "new"]
    assert cp("delete", "-n", "five").code == 3
