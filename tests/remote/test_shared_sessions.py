"""Named sessions through a shared store, on several "machines" (separate homes, temp folders,
state and config folders and workspace paths; the ``claude-persist`` program, run in process
one machine at a time, or as real processes where machines must run at once; the fake CLI),
against a folder store and the local S3 server.

Every test runs against the folder store. Against the S3 server, the default run keeps what
only S3 can get wrong: a session made on one machine and resumed on another (the whole round
trip of entries, blobs and leases over HTTP), and a store that fails before the call. The
others' S3 forms run in CI's stress stage: the store's own behaviour under them (compare-and-
swap, leases) is proved for both backends by the conformance and lease tests."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen

import pytest

from claude_persist.remote import open_store, read_lease

from .gated_claude import COMMAND as GATED_CLAUDE
from .gated_claude import Gate
from .machines import Machine, make_machine, replies, user_prompts

BOTH = pytest.mark.parametrize("store_url", ["dir", "s3"], indirect=True)
S3_IN_STRESS = pytest.mark.parametrize(
    "store_url", ["dir", pytest.param("s3", marks=pytest.mark.stress)], indirect=True)

#: The lease TTL of the expiry test's machines: short, so that a dead holder's session is free
#: soon; the holder renews every third of it, and no other machine competes while it lives.
SHORT_TTL = "1"


@pytest.fixture
def two(store_url: str, tmp_path: Path) -> tuple[Machine, Machine]:
    return (make_machine(tmp_path, "a", store_url, "work space"),
            make_machine(tmp_path, "b", store_url, "elsewhere-ß"))


def sid_of(out: str) -> str:
    return out.strip().splitlines()[-1]


@contextmanager
def holding(machine: Machine, name: str) -> Iterator[tuple[Popen[str], Gate]]:
    """``machine`` resumes session ``name`` in a real process whose claude call stops at a
    gate: yields (the process, the gate) once the call is there, so the machine holds the
    session's lease until the test opens the gate. At the end, the process and its call are
    killed (SIGKILL: the machine dies)."""
    with Gate() as gate:
        running = machine.start("resume", "-n", name, "-p", "held", env=gate.env())
        try:
            gate.wait(running)
            yield running, gate
        finally:
            if running.poll() is None:
                os.killpg(running.pid, signal.SIGKILL)
            gate.kill()
            running.communicate()


@BOTH
def test_create_on_one_machine_resume_by_name_on_another(two: tuple[Machine, Machine]) -> None:
    a, b = two
    # A process of its own, as users run it (the rest run in process, one machine at a time).
    made = a.process("create", "-n", "plan", "-p", "one", "--model", "opus")
    assert made.code == 0, made.err
    sid = sid_of(made.out)
    assert not b.transcript(sid).exists()
    listed = b.run("list", "--json")
    assert listed.code == 0, listed.err
    assert [s["name"] for s in json.loads(listed.out)["sessions"]] == ["plan"]
    assert b.run("resolve", "-n", "plan").out.strip() == sid
    turn = b.run("resume", "-n", "plan", "-p", "two, on b")
    assert turn.code == 0, turn.err
    assert f"turn 2 of session {sid}" in turn.out  # the fake saw the first turn
    assert user_prompts(b.transcript(sid)) == ["one", "two, on b"]
    entry = json.loads(b.run("resolve", "-n", "plan", "--json").out)
    assert entry["cwd"] == str(b.workspace) and entry["last_model"] == "opus"
    back = a.run("resume", "-n", "plan", "-p", "three, on a")  # a fast-forwards first
    assert back.code == 0, back.err
    assert f"turn 3 of session {sid}" in back.out
    assert user_prompts(a.transcript(sid)) == ["one", "two, on b", "three, on a"]


@S3_IN_STRESS
def test_names_the_store_holds_are_refused_and_deleted_for_everyone(
        two: tuple[Machine, Machine]) -> None:
    a, b = two
    assert a.run("create", "-n", "x", "-p", "one").code == 0
    again = b.run("create", "-n", "x", "-p", "mine")
    assert again.code == 2 and "already exists" in again.err and "shared store" in again.err
    forked = b.run("fork", "-n", "x", "--as", "y", "-p", "branch")
    assert forked.code == 0, forked.err
    assert "turn 2" in forked.out
    assert a.run("resolve", "-n", "y").code == 0
    gone = b.run("delete", "-n", "x")
    assert gone.code == 0 and gone.out.split() == ["x"]
    missing = a.run("resume", "-n", "x", "-p", "more")
    assert missing.code == 3 and "shared store" in missing.err
    assert a.run("list", "--json").out.count('"name"') == 1
    refused = a.run("delete", "--all", "--yes")
    assert refused.code == 2 and "one at a time" in refused.err
    y = a.run("resolve", "-n", "y").out.strip()
    elsewhere = a.run("adopt", "-n", "z", "--session-id", y)  # its files are on b only
    assert elsewhere.code == 3 and "adopt it on the machine that has them" in elsewhere.err
    second = b.run("adopt", "-n", "z", "--session-id", y)  # one name per session in a store
    assert second.code == 2 and "already has the name 'y'" in second.err
    assert b.run("delete", "-n", "y").code == 0  # the name goes; b keeps the session's files
    adopted = b.run("adopt", "-n", "z", "--session-id", y)
    assert adopted.code == 0, adopted.err
    assert a.run("resolve", "-n", "z").out.strip() == y  # adopted into the store
    assert b.run("adopt", "-n", "z", "--session-id", y).code == 2  # the store has it


@S3_IN_STRESS
def test_lease_shows_its_holder_and_break_frees_it(two: tuple[Machine, Machine]) -> None:
    a, b = two
    assert a.run("create", "-n", "s", "-p", "one").code == 0
    free = b.run("lease", "-n", "s")
    assert free.code == 0 and "no lease" in free.out
    store = open_store(a.env["CLAUDE_PERSIST_STORE"])
    try:
        with holding(a, "s") as (running, _):
            shown = b.run("lease", "-n", "s", "--json")
            info = json.loads(shown.out)["lease"]
            assert info["note"] == "resume" and info["pid"] == running.pid
            busy = b.run("resume", "-n", "s", "-p", "x", "--lock-timeout", "0")
            assert busy.code == 4 and f"pid {running.pid}" in busy.err
            broken = b.run("lease", "-n", "s", "--break")
            assert broken.code == 0 and "broke" in broken.out
            assert read_lease(store, "s") is None
    finally:
        store.close()


@S3_IN_STRESS
def test_a_push_that_fails_keeps_the_turn_and_sync_pushes_it(
        two: tuple[Machine, Machine]) -> None:
    a, b = two
    sid = sid_of(a.run("create", "-n", "s", "-p", "one").out)
    # The lease is broken while a's call runs (by the claude command, before the fake
    # answers): a's push must fail.
    failed = a.run("resume", "-n", "s", "-p", "two",
                   env={"CLAUDE_CMD": GATED_CLAUDE, "GATED_CLAUDE_BREAK_LEASE": "s"})
    assert failed.code == 4, failed.err
    assert "turn 2 of session" in failed.out  # the paid answer is still printed
    assert "claude-persist sync" in failed.err and "kept on this machine" in failed.err
    assert user_prompts(a.transcript(sid))[-1].endswith("two")
    synced = a.run("sync")
    assert synced.code == 0, synced.err
    assert "s  pushed" in synced.out
    turn = b.run("resume", "-n", "s", "-p", "three")
    assert turn.code == 0 and "turn 3 of session" in turn.out, turn.err


@S3_IN_STRESS
def test_a_holder_killed_frees_the_session_after_the_expiry_and_loses_nothing_pushed(
        store_url: str, tmp_path: Path) -> None:
    ttl = {"CLAUDE_PERSIST_LEASE_TTL": SHORT_TTL}
    a = make_machine(tmp_path, "a", store_url, **ttl)
    b = make_machine(tmp_path, "b", store_url, **ttl)
    sid = sid_of(a.run("create", "-n", "s", "-p", "one").out)
    assert a.run("resume", "-n", "s", "-p", "two").code == 0
    store = open_store(store_url)
    try:
        with holding(a, "s"):  # its turn is never pushed: a dies in the middle of the call
            pass
        assert read_lease(store, "s") is not None  # the dead holder's lease is still there
    finally:
        store.close()
    turn = b.run("resume", "-n", "s", "-p", "three", "--lock-timeout", "60")
    assert turn.code == 0, turn.err
    assert f"turn 3 of session {sid}" in turn.out
    assert user_prompts(b.transcript(sid)) == ["one", "two", "three"]


@S3_IN_STRESS
def test_sync_pulls_the_names_a_machine_lacks(two: tuple[Machine, Machine]) -> None:
    a, b = two
    sid = sid_of(a.run("create", "-n", "p", "-p", "one").out)
    pulled = b.run("sync")
    assert pulled.code == 0, pulled.err
    assert "p  pulled" in pulled.out
    assert b.transcript(sid).read_bytes() == a.transcript(sid).read_bytes()
    assert b.run("sync").out.strip() == "p  up to date"


@S3_IN_STRESS
def test_a_workflow_run_takes_its_sessions_from_the_store(
        two: tuple[Machine, Machine]) -> None:
    a, b = two
    assert a.run("create", "-n", "rev", "-p", "one").code == 0
    flow = b.workspace / "flow.yml"
    flow.write_text("version: 1\nname: flow\nsteps:\n"
                    "  - id: more\n    resume: rev\n    prompt: two from a workflow\n"
                    "  - id: fresh\n    create: other\n    prompt: hello\n")
    ran = b.run("run", str(flow))
    assert ran.code == 0, ran.err
    assert "fake reply to turn 1 of session" in ran.out  # the last step's: a new session
    turn = a.run("resume", "-n", "rev", "-p", "three")
    assert turn.code == 0 and "turn 3 of session" in turn.out, turn.err
    assert a.run("resolve", "-n", "other").code == 0


def test_without_a_store_nothing_of_remote_is_imported(tmp_path: Path) -> None:
    m = make_machine(tmp_path, "m", None)
    probe = ("import sys; from claude_persist.cli import main\n"
             "try:\n    main(['claude-persist', 'list'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(k for k in sys.modules if 'remote' in k or k.startswith('boto')),"
             " file=sys.stderr)")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", probe], cwd=m.workspace, env=m.env,
                          capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "[]"


@S3_IN_STRESS
def test_replies_are_in_order(two: tuple[Machine, Machine]) -> None:
    a, b = two
    sid = sid_of(a.run("create", "-n", "o", "-p", "one").out)
    for i, m in enumerate([b, a, b]):
        assert m.run("resume", "-n", "o", "-p", f"t{i}").code == 0
    said = replies(b.transcript(sid))
    assert [int(r.split("turn ")[1].split()[0]) for r in said] == [1, 2, 3, 4]


def test_machines_hammering_sessions_lose_and_overlap_no_turn(tmp_path: Path) -> None:
    """The short form: four machines on two sessions. tests/stress runs eight machines on four
    sessions for seconds on both stores, and the benchmark for a minute."""
    from .hammer import hammer

    folder = tmp_path / "store"
    folder.mkdir()
    figures = hammer(f"dir:{folder}", tmp_path, machines=4, sessions=2, turns=2, seconds=0)
    assert figures["turns"] == 8


@BOTH
def test_a_store_that_fails_before_the_call_spends_no_call(store_url: str, tmp_path: Path,
                                                           aws_env: str) -> None:
    """A missing folder, a missing bucket: exit 75 naming it and the operation; claude is never
    started (the fake logs every call it gets)."""
    log = tmp_path / "calls.log"
    missing = (f"dir:{tmp_path / 'not mounted'}" if store_url.startswith("dir:")
               else "s3://no-such-bucket-here/team")
    m = make_machine(tmp_path, "m", missing, FAKE_CLAUDE_LOG=str(log))
    for args in (["create", "-n", "x", "-p", "one"], ["resume", "-n", "x", "-p", "two"]):
        failed = m.run(*args)
        assert failed.code == 75, failed.err
        where = "not mounted" if store_url.startswith("dir:") else "no-such-bucket-here"
        assert where in failed.err and "Traceback" not in failed.err
    assert not log.exists() or not log.read_text().strip()


def test_the_store_setting_flag_over_environment_over_configuration(tmp_path: Path) -> None:
    stores = {}
    for key in ("flag", "env", "config"):
        stores[key] = tmp_path / f"store-{key}"
        stores[key].mkdir()
    m = make_machine(tmp_path, "m", f"dir:{stores['env']}")
    (m.workspace / "invoke.yaml").write_text(
        f"claude_persist:\n  store: dir:{stores['config']}\n")
    assert m.run("create", "-n", "by-flag", "--store", f"dir:{stores['flag']}").code == 0
    assert m.run("create", "-n", "by-env").code == 0
    del m.env["CLAUDE_PERSIST_STORE"]
    assert m.run("create", "-n", "by-config").code == 0
    for key, name in (("flag", "by-flag"), ("env", "by-env"), ("config", "by-config")):
        store = open_store(f"dir:{stores[key]}")
        assert store.names("entry") == [name]
        store.close()
    m.env["CLAUDE_PERSIST_STORE"] = "ftp://nope"
    bad = m.run("list")
    assert bad.code == 2 and "CLAUDE_PERSIST_STORE" in bad.err and "s3://" in bad.err


@S3_IN_STRESS
def test_export_and_import_work_against_the_store(store_url: str, tmp_path: Path) -> None:
    """A bundle made without a store is imported into it; another machine exports a session
    it never had locally (fetched from the store first)."""
    alone = make_machine(tmp_path, "alone", None)
    sid = sid_of(alone.run("create", "-n", "old", "-p", "one").out)
    bundle = tmp_path / "old.tgz"
    assert alone.run("export", "-n", "old", "-o", str(bundle)).code == 0
    a = make_machine(tmp_path, "a", store_url)
    b = make_machine(tmp_path, "b", store_url)
    imported = a.run("import", str(bundle))
    assert imported.code == 0, imported.err
    turn = b.run("resume", "-n", "old", "-p", "two")
    assert turn.code == 0 and f"turn 2 of session {sid}" in turn.out, turn.err
    c = make_machine(tmp_path, "c", store_url)
    again = tmp_path / "again.tgz"
    exported = c.run("export", "--all", "-o", str(again))
    assert exported.code == 0, exported.err
    assert alone.run("import", str(again)).out.split()[:2] == ["old", "fast-forward"]
    assert user_prompts(alone.transcript(sid)) == ["one", "two"]
    clash = make_machine(tmp_path, "d", None)
    assert clash.run("create", "-n", "old", "-p", "other").code == 0
    other = tmp_path / "other.tgz"
    assert clash.run("export", "-n", "old", "-o", str(other)).code == 0
    refused = c.run("import", str(other), "--force")
    assert refused.code == 4 and "maps it to session" in refused.err
    assert b.run("resume", "-n", "old", "-p", "three").out.count(sid) == 1


@S3_IN_STRESS
def test_resume_by_session_id_goes_through_the_store(two: tuple[Machine, Machine]) -> None:
    a, b = two
    sid = sid_of(a.run("create", "-n", "byid", "-p", "one").out)
    assert b.run("resume", "-n", "byid", "-p", "two").code == 0
    turn = a.run("resume", "--session-id", sid, "-p", "three")  # a knows the id's name
    assert turn.code == 0 and f"turn 3 of session {sid}" in turn.out, turn.err
    unknown = b.run("resume", "--session-id", "123e4567-e89b-42d3-a456-426614174000",
                    "-p", "x")
    assert unknown.code == 2 and "by name" in unknown.err


@S3_IN_STRESS
def test_a_sessions_own_folder_travels_with_it(two: tuple[Machine, Machine]) -> None:
    """A subagent's transcript and a big tool output, beside the transcript, are fetched too."""
    a, b = two
    sid = sid_of(a.run("create", "-n", "agents", "-p", "[fake subagent=1 tool_output=5000] go").out)
    assert b.run("resume", "-n", "agents", "-p", "more").code == 0
    mine = sorted(p.relative_to(a.transcript(sid).parent)
                  for p in (a.transcript(sid).parent / sid).rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(b.transcript(sid).parent)
                    for p in (b.transcript(sid).parent / sid).rglob("*") if p.is_file())
    assert mine and mine == theirs
    for rel in mine:
        assert (a.transcript(sid).parent / rel).read_bytes() == \
            (b.transcript(sid).parent / rel).read_bytes()
