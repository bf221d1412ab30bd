"""Names that survive a reboot: the default mapping file (in the temp folder, the working copy)
has a durable copy under the user's state folder, written in the same locked step, from which a
missing, older or corrupt working copy is restored."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from claude_persist.store import MappingStore, durable_mapping_file, state_root

from .conftest import Runner, mapping_path


def durable_path(workspace: Path) -> Path:
    return durable_mapping_file(workspace.resolve())


def test_where_the_durable_copy_lives(workspace: Path, tmp_path: Path) -> None:
    assert state_root({"XDG_STATE_HOME": "/s", "HOME": "/h"}) == Path("/s/claude-persist")
    assert state_root({"HOME": "/h"}) == Path("/h/.local/state/claude-persist")
    assert state_root({"XDG_STATE_HOME": "rel", "HOME": "/h"}) == \
        Path("/h/.local/state/claude-persist")  # a relative one is ignored, as XDG says
    assert durable_path(workspace).parent.name == mapping_path(workspace).parent.name
    assert durable_path(workspace).parent.parent == tmp_path / "state" / "claude-persist"


def test_an_emptied_temp_folder_loses_no_name(face: Runner, workspace: Path) -> None:
    sid = face("create", "-n", "kept").out.strip()
    working, durable = mapping_path(workspace), durable_path(workspace)
    assert durable.read_text() == working.read_text()
    assert durable.stat().st_mtime_ns == working.stat().st_mtime_ns
    assert oct(durable.stat().st_mode & 0o777) == "0o600"
    assert oct(durable.parent.stat().st_mode & 0o777) == "0o700"
    temp = Path(os.environ["TMPDIR"])
    for item in temp.iterdir():  # a reboot, or systemd-tmpfiles
        shutil.rmtree(item)
    resolved = face("resolve", "-n", "kept")
    assert resolved.code == 0 and resolved.out.strip() == sid
    assert f"the mapping file {working} was missing" in resolved.err
    assert f"restored it from {durable}" in resolved.err
    assert working.read_text() == durable.read_text()
    again = face("resolve", "-n", "kept")
    assert again.out.strip() == sid and again.err == ""  # restored once, said once
    resumed = face("resume", "-n", "kept", "-p", "still here?")
    assert resumed.out.startswith(f"fake reply to turn 2 of session {sid}")


def test_a_create_after_the_temp_folder_was_emptied_keeps_the_old_names(
        face: Runner, workspace: Path) -> None:
    face("create", "-n", "first")
    mapping_path(workspace).unlink()
    assert face("create", "-n", "second").code == 0
    names = set(json.loads(mapping_path(workspace).read_text())["aliases"])
    assert names == {"first", "second"}
    assert set(json.loads(durable_path(workspace).read_text())["aliases"]) == names
    refused = face("create", "-n", "first")  # the early check sees the restored name
    assert refused.code == 2 and "already exists" in refused.err


def test_an_older_or_corrupt_working_copy_is_restored(cp: Runner, workspace: Path) -> None:
    sid = cp("create", "-n", "a").out.strip()
    working = mapping_path(workspace)
    old_text = working.read_text()
    cp("create", "-n", "b")
    working.write_text(old_text)  # an old snapshot put back: it lacks b
    past = durable_path(workspace).stat().st_mtime - 60
    os.utime(working, (past, past))
    listed = cp("list", "--json")
    assert [s["name"] for s in listed.json()["sessions"]] == ["a", "b"]
    assert "was older than its durable copy" in listed.err
    working.write_text("{ not json")
    resolved = cp("resolve", "-n", "a")
    assert resolved.out.strip() == sid
    assert "was corrupt" in resolved.err and "restored it from" in resolved.err
    assert list(working.parent.glob(f"{working.name}.bad.*"))  # the corrupt one kept aside


def test_a_newer_working_copy_wins_and_its_entries_reach_the_durable_copy(
        cp: Runner, workspace: Path) -> None:
    """The seed script writes the working copy only: what it wrote is kept."""
    cp("create", "-n", "ours")
    working = mapping_path(workspace)
    data = json.loads(working.read_text())
    data["aliases"]["seeds"] = {"session_id": str(uuid.uuid4())}
    working.write_text(json.dumps(data))
    assert cp("resolve", "-n", "seeds").code == 0
    cp("create", "-n", "later")
    assert set(json.loads(durable_path(workspace).read_text())["aliases"]) == \
        {"ours", "seeds", "later"}


def test_delete_all_forgets_both_copies(face: Runner, workspace: Path) -> None:
    face("create", "-n", "gone")
    assert face("delete", "--all", "--yes").code == 0
    assert not durable_path(workspace).exists() and not mapping_path(workspace).exists()
    assert face("resolve", "-n", "gone").code == 3


def test_a_state_folder_that_cannot_be_written_is_a_warning(cp: Runner, workspace: Path,
                                                            tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "claude-persist").write_text("a file where a folder belongs")
    created = cp("create", "-n", "x")
    assert created.code == 0
    assert "warning:" in created.err and "a reboot or a temp cleaner may empty" in created.err
    assert json.loads(mapping_path(workspace).read_text())["aliases"]["x"]


def test_a_mapping_file_of_the_users_choice_has_no_copy(cp: Runner, workspace: Path,
                                                         tmp_path: Path) -> None:
    own = tmp_path / "mine.json"
    assert cp("create", "-n", "x", "--mapping-file", str(own)).code == 0
    assert own.is_file() and not (tmp_path / "state").exists()
    store = MappingStore.for_workspace(workspace, own)
    assert store.durable is None


def test_the_working_copy_is_written_first(workspace: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """A write that fails leaves no change in the durable copy to come back later."""
    from claude_persist import fsio
    from claude_persist.errors import DiskFullError, UnsafeFileError
    from claude_persist.sessions import Sessions

    sessions = Sessions(workspace)
    sessions.adopt("one", str(uuid.uuid4()))
    before = durable_path(workspace).read_text()
    real_write = fsio.atomic_write

    def full_disk(path: Path, data: str | bytes, what: str = "the file") -> None:
        if path == sessions.store.path:
            raise DiskFullError("cannot write the mapping file: the disk is full", path=path)
        real_write(path, data, what)

    with monkeypatch.context() as patched:
        patched.setattr(fsio, "atomic_write", full_disk)
        with pytest.raises(UnsafeFileError):
            sessions.adopt("two", str(uuid.uuid4()))
    assert durable_path(workspace).read_text() == before
    assert [e.name for e in sessions.list()] == ["one"]
