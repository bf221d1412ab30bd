"""The mapping file's folders and the system's failures: typed errors naming the file, the
operation and the reason (never a traceback); folder modes left alone unless we made the folder;
the shared folder safe for several users; the temp folder never switched silently; session ids
checked before they name a file.

Real failures where the machine allows them: ``chattr +i`` for an immutable folder, a small or
read-only tmpfs in a private mount namespace (``unshare -m``) for a full or read-only disk, and a
second user (a child process under another uid) for permissions. Each is skipped where it cannot
be made; the translation of every errno is also checked directly.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_persist import Sessions
from claude_persist.errors import (
    ClaudePersistError,
    CorruptEntryError,
    DiskFullError,
    FilePermissionError,
    FileSystemError,
    MappingFileError,
    ReadOnlyFileSystemError,
    exit_code_for,
)
from claude_persist.fsio import os_error
from claude_persist.store import MappingStore, default_mapping_file

from .conftest import REPO, Runner, mapping_path

OTHER_UID = 4242
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root (chown, another uid)")


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i path`` for the block (skips the test where the file system cannot)."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True,
                          check=False) if shutil.which("chattr") else None
    if made is None or made.returncode != 0:
        pytest.skip("cannot make a folder immutable here (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def open_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder another uid can reach (pytest's own are private to us), as TMPDIR, and a
    workspace in it."""
    root = Path(tempfile.mkdtemp(prefix="claude-persist-test-", dir="/tmp"))
    root.chmod(0o755)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "workspace").mkdir()
    monkeypatch.setenv("TMPDIR", str(root / "tmp"))
    (root / "state").mkdir()  # where each user keeps the durable copy of a mapping file
    (root / "state").chmod(0o1777)
    monkeypatch.setenv("XDG_STATE_HOME", str(root / "state"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def as_user(uid: int, temp: Path | None, action: Callable[[], object]) -> dict[str, Any]:
    """Run ``action`` in a forked child under ``uid`` (with ``TMPDIR=temp``): the value it
    returns, or the error it raised, with its message and exit code.

    A fork, not a new interpreter: the other user may not be able to reach ours."""
    # Imported here: the child may not be able to read the library, nor Python's own modules
    # (filelock reads a /proc file as "ascii", whose codec may not be loaded yet).
    import encodings.ascii  # noqa: F401

    import filelock  # noqa: F401

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if temp is not None:
                os.environ["TMPDIR"] = str(temp)
            try:
                out: dict[str, Any] = {"value": action()}
            except ClaudePersistError as exc:
                out = {"error": type(exc).__name__, "message": str(exc),
                       "code": exit_code_for(exc)}
            os.write(write_end, json.dumps(out, default=str).encode())
        except BaseException:  # reported to the parent, whatever it is
            import traceback

            os.write(write_end, json.dumps({"error": traceback.format_exc(), "code": -1})
                     .encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    return result


def assert_clean_error(code: int, err: str, *words: str) -> None:
    """Exit 2, the given words in the message, and no traceback."""
    assert code == 2, err
    assert "Traceback" not in err and "claude-persist: error:" in err, err
    for word in words:
        assert word in err, (word, err)


# -- B: the system's failures, typed ------------------------------------------------------------


@pytest.mark.parametrize(("code", "kind", "hint"), [
    (errno.ENOSPC, DiskFullError, "disk is full"),
    (errno.EDQUOT, DiskFullError, "quota"),
    (errno.EROFS, ReadOnlyFileSystemError, "read-only"),
    (errno.EACCES, FilePermissionError, "permissions"),
    (errno.EPERM, FilePermissionError, "immutable"),
    (errno.EIO, FileSystemError, "input/output error"),
])
def test_each_system_failure_becomes_a_typed_error_naming_file_operation_and_reason(
        code: int, kind: type[FileSystemError], hint: str) -> None:
    exc = os_error(OSError(code, os.strerror(code)), "write", "the mapping file", "/x/m.json")
    assert type(exc) is kind and exit_code_for(exc) == 2
    assert (exc.operation, exc.errno, exc.path, exc.reason) == ("write", code, "/x/m.json",
                                                                os.strerror(code))
    message = str(exc)
    assert message.startswith("cannot write the mapping file /x/m.json: " + os.strerror(code))
    assert hint in message and "--" not in message


def test_an_immutable_mapping_folder_fails_before_claude_is_called(
        cp: Runner, workspace: Path, fake_claude: Any) -> None:
    sid = str(uuid.uuid4())
    assert cp("adopt", "-n", "kept", "--session-id", sid).code == 0
    folder = mapping_path(workspace).parent
    with immutable(folder):
        created = cp("create", "-n", "new")
        assert_clean_error(created.code, created.err, str(folder), "Operation not permitted",
                           "immutable")
        assert fake_claude.calls() == []  # no call spent on a name we could not save
        adopted = cp("adopt", "-n", "other", "--session-id", str(uuid.uuid4()))
        assert_clean_error(adopted.code, adopted.err, "the mapping file")
        resumed = cp("resume", "-n", "kept", "-p", "hi")  # its lock folder cannot be made
        assert_clean_error(resumed.code, resumed.err, "the session locks folder")
        assert cp("resolve", "-n", "kept").out.strip() == sid  # reading still works
    assert cp("create", "-n", "new").code == 0


def test_a_failed_write_after_the_call_carries_the_new_session_id(
        workspace: Path, fake_claude: Any) -> None:
    """The folder turns immutable while claude runs: the session exists, its name cannot be
    saved, and the error says which session to adopt."""
    sessions = Sessions(workspace)
    sessions.adopt("first", str(uuid.uuid4()))
    folder = sessions.mapping_file.parent
    with immutable(folder):
        pass  # skips here, not inside the call, where chattr cannot
    with contextlib.ExitStack() as stack:
        locked: list[str] = []

        def lock_the_folder(line: str) -> None:
            if not locked:  # at the first line claude prints
                locked.append(line)
                stack.enter_context(immutable(folder))

        with pytest.raises(FilePermissionError) as caught:
            sessions.create("second", "hi", on_line=lock_the_folder)
    sid = fake_claude.calls()[-1]["session_id"]
    assert caught.value.unmapped == sid
    assert caught.value.unmapped_name == "second"
    assert sid in str(caught.value) and "adopt" in str(caught.value)
    sessions.adopt("second", sid)  # what the message says to do
    assert sessions.resolve("second").session_id == sid


PRIVATE_MOUNT = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    mount_at, options = sys.argv[1], sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mount_at], check=True)
    sys.path.insert(0, sys.argv[3])  # the repository: the tests' own in-process runner
    from tests.conftest import CP_PREFIX, InProcessRunner, _run_claude_persist
    run_cp = InProcessRunner("claude-persist", CP_PREFIX, Path.cwd(), entry=_run_claude_persist)

    def cp(*args):
        ran = run_cp(*args)  # the command run in this process, as the cp fixture does
        return {"code": ran.code, "out": ran.out, "err": ran.err}

    def fill(folder):
        with open(os.path.join(folder, "filler"), "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"x" * 4096)
            except OSError:
                pass
""")


def in_private_mount(script: str, mount_at: Path, options: str, cwd: Path
                     ) -> dict[str, Any]:
    """Run ``script`` (after :data:`PRIVATE_MOUNT`) with a tmpfs mounted at ``mount_at`` in a
    mount namespace of its own: the mount vanishes with the process."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "mount", "-t", "tmpfs", "tmpfs", str(mount_at)],
            capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs in a private mount namespace here")
    ran = subprocess.run(["unshare", "-m", sys.executable, "-c", PRIVATE_MOUNT + script,
                          str(mount_at), options, str(REPO)], cwd=cwd, capture_output=True,
                         text=True, timeout=120, check=False)
    assert ran.returncode == 0, ran.stderr
    result: dict[str, Any] = json.loads(ran.stdout.splitlines()[-1])
    return result


def test_a_full_disk_is_a_clear_error_and_loses_nothing(
        workspace: Path, fake_claude: Any) -> None:
    temp = Path(os.environ["TMPDIR"])
    sid = str(uuid.uuid4())
    result = in_private_mount(textwrap.dedent(f"""
        first = cp("adopt", "-n", "first", "--session-id", "{sid}")
        fill(mount_at)
        second = cp("adopt", "-n", "second", "--session-id", "{uuid.uuid4()}")
        created = cp("create", "-n", "third")
        kept = cp("resolve", "-n", "first")
        print(json.dumps({{"first": first, "second": second, "created": created,
                          "kept": kept}}))
    """), temp, "size=256k,mode=1777", workspace)
    assert result["first"]["code"] == 0, result["first"]["err"]
    for key in ("second", "created"):
        assert_clean_error(result[key]["code"], result[key]["err"], "No space left on device",
                           "the mapping file", "disk is full")
    assert fake_claude.calls() == []  # the create failed before its call
    assert result["kept"]["out"].strip() == sid  # the last good file is intact


def test_a_read_only_disk_still_reads_and_refuses_writes_clearly(
        workspace: Path, fake_claude: Any) -> None:
    temp = Path(os.environ["TMPDIR"])
    sid = str(uuid.uuid4())
    result = in_private_mount(textwrap.dedent(f"""
        first = cp("adopt", "-n", "first", "--session-id", "{sid}")
        subprocess.run(["mount", "-o", "remount,ro", mount_at], check=True)
        second = cp("adopt", "-n", "second", "--session-id", "{uuid.uuid4()}")
        created = cp("create", "-n", "third")
        kept = cp("resolve", "-n", "first")
        listed = cp("list")
        print(json.dumps({{"first": first, "second": second, "created": created,
                          "kept": kept, "listed": listed}}))
    """), temp, "size=1m,mode=1777", workspace)
    assert result["first"]["code"] == 0, result["first"]["err"]
    for key in ("second", "created"):
        assert_clean_error(result[key]["code"], result[key]["err"], "Read-only file system",
                           str(temp))
    assert fake_claude.calls() == []
    assert result["kept"]["out"].strip() == sid and result["listed"]["code"] == 0


# -- C: folder modes ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o1777, 0o755, 0o2775, 0o777])
def test_a_named_mapping_file_never_changes_the_mode_of_its_folder(
        tmp_path: Path, workspace: Path, fake_claude: Any, mode: int) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    sessions = Sessions(workspace, mapping_file=folder / "names.json")
    sessions.create("a", "hi")
    sessions.resume("a", "again")  # takes a session lock: makes a locks folder inside
    sessions.delete("a")
    assert stat.S_IMODE(folder.stat().st_mode) == mode
    assert stat.S_IMODE((folder / "names.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "locks").stat().st_mode) == 0o700  # ours: private


def test_missing_folders_of_a_named_mapping_file_are_made_private(
        tmp_path: Path, workspace: Path) -> None:
    Sessions(workspace, mapping_file=tmp_path / "a" / "b" / "m.json").adopt(
        "x", str(uuid.uuid4()))
    assert [stat.S_IMODE((tmp_path / p).stat().st_mode) for p in ("a", "a/b")] == [0o700] * 2


# -- D: the shared folder and two users ---------------------------------------------------------


def test_the_shared_folder_is_made_sticky_and_open_to_all(workspace: Path) -> None:
    Sessions(workspace).adopt("x", str(uuid.uuid4()))
    path = mapping_path(workspace)
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o1777
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@needs_root
def test_a_shared_folder_of_another_user_is_refused_even_when_sticky(workspace: Path) -> None:
    shared = mapping_path(workspace).parent.parent
    shared.mkdir()
    shared.chmod(0o1777)
    os.chown(shared, OTHER_UID, -1)
    with pytest.raises(MappingFileError) as caught:
        Sessions(workspace).adopt("x", str(uuid.uuid4()))
    message = str(caught.value)
    assert f"owned by uid {OTHER_UID}" in message and f"chown root {shared}" in message
    assert "TMPDIR" in message and "--" not in message
    assert list(shared.iterdir()) == []
    with pytest.raises(MappingFileError):
        Sessions(workspace).list()  # nor read through it


def test_a_shared_folder_open_to_all_without_its_sticky_bit_is_refused(workspace: Path) -> None:
    shared = mapping_path(workspace).parent.parent
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(MappingFileError, match=r"no sticky bit.*chmod \+t"):
        Sessions(workspace).adopt("x", str(uuid.uuid4()))


@needs_root
def test_two_users_keep_their_own_folders_in_the_shared_folder(open_tmp: Path) -> None:
    workspace = open_tmp / "workspace"
    my_id, their_id = str(uuid.uuid4()), str(uuid.uuid4())
    Sessions(workspace).adopt("me", my_id)  # we make the shared folder: 1777, ours
    theirs = open_tmp / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER_UID, OTHER_UID)
    temp = Path(os.environ["TMPDIR"])
    adopted = as_user(OTHER_UID, temp, lambda: Sessions(theirs).adopt("them", their_id).name)
    assert adopted == {"value": "them"}
    resolved = as_user(OTHER_UID, temp, lambda: Sessions(theirs).resolve("them").session_id)
    assert resolved == {"value": their_id}
    shared = temp / "agent-sessions"
    their_folder = default_mapping_file(theirs).parent
    assert their_folder.parent == shared
    assert (their_folder.stat().st_uid, stat.S_IMODE(their_folder.stat().st_mode)) == \
        (OTHER_UID, 0o700)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert Sessions(workspace).resolve("me").session_id == my_id
    peek = as_user(OTHER_UID, temp, lambda: Sessions(workspace).list())
    assert peek["code"] == 2 and f"owned by uid {os.getuid()}" in peek["message"]  # not theirs


@needs_root
def test_a_user_refuses_a_shared_folder_of_another_user(open_tmp: Path) -> None:
    """The other side of the rule: a shared folder owned by a user who is not root is refused,
    with what to do."""
    workspace = open_tmp / "workspace"
    shared = mapping_path(workspace).parent.parent
    shared.mkdir()
    shared.chmod(0o1777)
    os.chown(shared, 4343, -1)  # neither root nor the user below
    temp = Path(os.environ["TMPDIR"])
    ran = as_user(OTHER_UID, temp, lambda: Sessions(workspace).list())
    assert ran["code"] == 2 and ran["error"] == "MappingFileError"
    assert "owned by uid 4343" in ran["message"] and "chown root" in ran["message"]


@needs_root
def test_a_temp_folder_we_may_not_write_is_a_clear_error(open_tmp: Path) -> None:
    temp = open_tmp / "roots"
    temp.mkdir(mode=0o755)
    workspace = open_tmp / "workspace"
    ran = as_user(OTHER_UID, temp, lambda: Sessions(workspace).adopt("x", str(uuid.uuid4())))
    assert ran["code"] == 2 and ran["error"] == "FilePermissionError", ran
    assert ran["message"].startswith(
        f"cannot create the shared sessions folder (in TMPDIR) {temp / 'agent-sessions'}: "
        "Permission denied")


@needs_root
def test_a_mapping_file_may_live_in_a_sticky_folder_of_root(open_tmp: Path) -> None:
    """``--mapping-file /tmp/names.json``: /tmp is root's and sticky; fine for any user."""
    shared = open_tmp / "tmp"  # root's, 1777
    names = shared / "names.json"
    workspace = open_tmp / "workspace"
    ran = as_user(OTHER_UID, None, lambda: Sessions(workspace, mapping_file=names).adopt(
        "x", str(uuid.uuid4())).name)
    assert ran == {"value": "x"}
    assert names.stat().st_uid == OTHER_UID and stat.S_IMODE(shared.stat().st_mode) == 0o1777


# -- E: the temp folder ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_an_unusable_tmpdir_is_an_error_never_another_temp_folder(
        cp: Runner, workspace: Path, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad-tmp"
    if kind == "a file":
        bad.write_text("")
    fallback = default_mapping_file(workspace, {})  # where gettempdir() would have gone
    for args in (["list"], ["adopt", "-n", "x", "--session-id", str(uuid.uuid4())]):
        ran = cp(*args, env={"TMPDIR": str(bad)})
        assert_clean_error(ran.code, ran.err, f"the temp folder {bad} (TMPDIR)", "TMPDIR")
    assert not fallback.parent.exists()


def test_the_write_check_before_a_call_changes_nothing_it_should_not(workspace: Path) -> None:
    store = MappingStore.for_workspace(workspace)
    store.check_writable()
    folder = store.path.parent
    assert sorted(p.name for p in folder.iterdir()) == [store.path.name + ".lock"]
    assert not store.path.exists()


def test_write_checks_of_parallel_steps_in_one_process_never_trip_on_each_other(
        workspace: Path) -> None:
    """Workflow steps run in threads of one process: their checks share a pid, not a file."""
    import threading

    store = MappingStore.for_workspace(workspace)
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def check() -> None:
        start.wait()
        for _ in range(40):
            try:
                store.check_writable()
            except BaseException as exc:  # collected: a thread's exception is otherwise lost
                failures.append(exc)

    threads = [threading.Thread(target=check) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(p.name for p in store.folder.iterdir()) == [store.path.name + ".lock"]


# -- F: session ids in paths ----------------------------------------------------------------------


def test_a_session_lock_refuses_an_id_that_is_not_a_uuid(workspace: Path) -> None:
    store = MappingStore.for_workspace(workspace)
    with pytest.raises(CorruptEntryError, match="not a UUID"), \
            store.session_lock("../../../escaped", "evil"):
        pass
    assert not list(Path(os.environ["TMPDIR"]).rglob("escaped*"))


def test_an_entry_whose_id_is_a_path_is_corrupt_and_names_no_file(
        cp: Runner, workspace: Path, fake_claude: Any) -> None:
    path = mapping_path(workspace)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"workspace_dir": str(workspace), "aliases": {
        "evil": {"session_id": "../../../escaped"}}}))
    for args in (["resume", "-n", "evil", "-p", "hi"], ["resolve", "-n", "evil"],
                 ["fork", "-n", "evil", "--as", "copy", "-p", "hi"]):
        ran = cp(*args)
        assert_clean_error(ran.code, ran.err, "'evil'", "corrupt", "not a UUID")
    assert fake_claude.calls() == []
    assert not list(Path(os.environ["TMPDIR"]).rglob("escaped*"))
    assert cp("adopt", "-n", "evil", "--session-id", str(uuid.uuid4()), "--force").code == 0
