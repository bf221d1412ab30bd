"""Portable sessions: where transcripts live, export, import (verified, fast-forward or refuse),
and what ``list`` and ``resume`` say about transcripts. Two "machines" are two config folders,
two mapping files and two workspaces; the fake CLI keeps transcripts where the real one does."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from claude_persist import Sessions, TurnOptions
from claude_persist import transcripts as tr
from claude_persist.bundle import Limits
from claude_persist.errors import (
    BundleError,
    ClaudePersistError,
    ImportConflictError,
    TranscriptMissingError,
    UsageError,
    exit_code_for,
)
from claude_persist.testing import fake_claude as fake_cli
from claude_persist.testing.pytest_plugin import FakeClaude

from .conftest import Runner, read_mapping

# -- where the CLI keeps a session ----------------------------------------------------------------

# The genuine CLI's folder names for these paths (2.1.332; tests/contract checks the rule).
LONG = ("/tmp/pexp/" + "/".join(f"a-very-long-folder-name-é-{i}" for i in range(9))
        + "/x\U0001F600y")
LONG_NAME = ("-tmp-pexp-a-very-long-folder-name---0-a-very-long-folder-name---1-a-very-long-"
             "folder-name---2-a-very-long-folder-name---3-a-very-long-folder-name---4-a-very-"
             "long-folder-name---5-a-very-long-folder-nam-dhi7")


@pytest.mark.parametrize(("cwd", "name"), [
    ("/home/me/repo", "-home-me-repo"),
    ("/tmp/pexp/ws é x", "-tmp-pexp-ws---x"),   # a space and é: one dash each
    ("/w/a_b.c\U0001F600", "-w-a-b-c--"),        # outside the BMP: two UTF-16 units, two dashes
    (LONG, LONG_NAME),                          # past 200 characters: cut, and a hash added
])
def test_project_folder_names_are_the_clis(cwd: str, name: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert tr.project_folder_name(cwd) == name
    assert len(tr.project_folder_name(cwd)) <= 200 + 1 + 7
    # The fake CLI's own reading of the rule (it imports nothing of ours) gives the same name.
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", "/cfg")
    assert fake_cli.project_folder(cwd) == f"/cfg/projects/{name}"


@pytest.mark.parametrize("layout", list(itertools.product(
    ("file", "symlink", "folder", None), repeat=3)), ids=lambda layout: "-".join(map(str, layout)))
def test_a_session_away_from_its_folder_is_found_where_the_fake_cli_finds_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        layout: tuple[str | None, str | None, str | None]) -> None:
    """Copies of one transcript in other project folders, some of them not regular files: we
    and the fake CLI (which reads the layout its own way) pick the same one, or none."""
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "cfg"))
    projects = tmp_path / "cfg" / "projects"
    sid = "0b7e8a52-5c1f-4c43-9f6e-1c6f3b0d2a11"
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("{}\n")
    for folder, kind in zip(("-b", "-a", "-c"), layout, strict=True):
        path = projects / folder / f"{sid}.jsonl"
        path.parent.mkdir(parents=True)
        if kind == "file":
            path.write_text("{}\n")
        elif kind == "symlink":
            path.symlink_to(elsewhere)
        elif kind == "folder":
            path.mkdir()
    cwd = tmp_path / "workspace"  # its own project folder is empty
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ours = tr.locate(sid, cwd)
    theirs = fake_cli.find_transcript(sid)
    assert (str(ours) if ours else None) == theirs
    regular = [f for f, kind in sorted(zip(("-b", "-a", "-c"), layout, strict=True))
               if kind == "file"]
    assert theirs == (str(projects / regular[0] / f"{sid}.jsonl") if regular else None)


def test_the_config_folder_is_claude_config_dir_else_home() -> None:
    assert tr.config_dir({"CLAUDE_CONFIG_DIR": "/x/conf", "HOME": "/h"}) == Path("/x/conf")
    assert tr.config_dir({"HOME": "/h"}) == Path("/h/.claude")
    assert tr.config_dir({"HOME": "/h", "CLAUDE_CONFIG_DIR": ""}) == Path("/h/.claude")
    sid = "123e4567-e89b-42d3-a456-426614174000"
    assert tr.transcript_path(sid, "/r", {"HOME": "/h"}) == \
        Path(f"/h/.claude/projects/-r/{sid}.jsonl")


def test_the_fake_keeps_transcripts_where_the_cli_does(fake_claude: FakeClaude,
                                                       workspace: Path) -> None:
    sessions = Sessions(workspace)
    first = sessions.create("here", "[fake subagent=1 tool_output=300] one")
    sessions.resume("here", "two")
    path = tr.transcript_path(first.session_id, workspace)
    assert path.parent.parent == fake_claude.config_dir / "projects"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # one object a line
    assert [line["type"] for line in lines if line["type"] in ("user", "assistant")] == \
        ["user", "assistant", "user", "assistant"]
    assert tr.user_turns(path.read_bytes()) == 2
    files = tr.session_files(first.session_id, workspace)
    assert files is not None and files.transcript == path
    kinds = sorted(rel.split("/")[1] for rel in files.extra)
    assert kinds == ["subagents", "subagents", "tool-results"]


# -- two machines ---------------------------------------------------------------------------------


@dataclass
class Machine:
    """One machine: its workspace, config folder, mapping file, and Sessions over them."""

    workspace: Path
    config: Path
    env: dict[str, str]
    sessions: Sessions

    def transcript(self, sid: str) -> Path:
        return tr.transcript_path(sid, self.workspace, self.env)

    def reply(self, name: str, prompt: str) -> str:
        return self.sessions.resume(name, prompt).text


def machine(root: Path, workspace_name: str) -> Machine:
    workspace = root / workspace_name
    workspace.mkdir(parents=True)
    config = root / "claude-config"
    env = {**os.environ, "CLAUDE_CONFIG_DIR": str(config)}
    sessions = Sessions(workspace, mapping_file=root / "mapping" / "map.json", env=env,
                        notify=lambda message: None)
    return Machine(workspace, config, env, sessions)


@pytest.fixture
def two(fake_claude: FakeClaude, tmp_path: Path) -> tuple[Machine, Machine]:
    return machine(tmp_path / "a", "work space"), machine(tmp_path / "b", "elsewhere-ß")


def test_a_session_moves_to_another_machine_with_its_history(
        two: tuple[Machine, Machine], tmp_path: Path) -> None:
    a, b = two
    role = a.workspace / "roles" / "planner.md"
    role.parent.mkdir()
    role.write_text("You plan.\n")
    (b.workspace / "roles").mkdir()
    (b.workspace / "roles" / "planner.md").write_text("You plan.\n")
    created = a.sessions.create("plan", "[fake subagent=1] one",
                                TurnOptions(model="opus", effort="high", role=str(role)))
    a.reply("plan", "two")
    bundle = tmp_path / "plan.tgz"
    report = a.sessions.export(bundle, ["plan"])
    assert report.files == 3 and oct(bundle.stat().st_mode & 0o777) == "0o600"
    [done] = b.sessions.import_bundle(bundle)
    assert (done.name, done.action.value) == ("plan", "new")
    sid = created.session_id
    assert done.transcript == b.transcript(sid)
    assert b.transcript(sid).read_bytes() == a.transcript(sid).read_bytes()
    entry = b.sessions.resolve("plan")
    assert entry.session_id == sid and entry.cwd == str(b.workspace)
    assert entry.role == str(b.workspace / "roles" / "planner.md")  # moved with the workspace
    assert (entry.last_model, entry.last_reasoning_effort) == ("opus", "high")
    answer = b.reply("plan", "three, on b")
    assert answer.startswith(f"fake reply to turn 3 of session {sid} (model claude-opus-4-1, "
                             "effort high, role: You plan.)")
    folder = b.transcript(sid).parent / sid / "subagents"
    assert len(list(folder.iterdir())) == 2


def test_fast_forward_nothing_to_do_and_refusals(two: tuple[Machine, Machine],
                                                 tmp_path: Path) -> None:
    a, b = two
    sid = a.sessions.create("x", "one").session_id
    first = tmp_path / "1.tgz"
    a.sessions.export(first, ["x"])
    assert b.sessions.import_bundle(first)[0].action.value == "new"
    assert b.sessions.import_bundle(first)[0].action.value == "unchanged"
    b.reply("x", "two, on b")
    back = tmp_path / "2.tgz"
    b.sessions.export(back, ["x"])
    [ff] = a.sessions.import_bundle(back)
    assert (ff.action.value, ff.turns_added) == ("fast-forward", 1)
    assert a.transcript(sid).read_bytes() == b.transcript(sid).read_bytes()
    assert a.reply("x", "three").startswith("fake reply to turn 3 ")
    # a is now ahead of the bundle b made: importing that on a would lose a turn.
    with pytest.raises(ImportConflictError) as ahead:
        a.sessions.import_bundle(back)
    assert "this machine has 1 turn(s) the bundle lacks" in str(ahead.value)
    assert "nothing was imported" in str(ahead.value) and exit_code_for(ahead.value) == 2
    # A turn on both sides: diverged, said both ways; nothing changes without --force.
    b.reply("x", "three, on b")
    b.sessions.export(back, ["x"])
    before = a.transcript(sid).read_bytes()
    with pytest.raises(ImportConflictError) as diverged:
        a.sessions.import_bundle(back)
    assert "the bundle has 1 turn(s) this machine lacks, and this machine 1" in \
        str(diverged.value)
    assert a.transcript(sid).read_bytes() == before
    [forced] = a.sessions.import_bundle(back, force=True)
    assert forced.action.value == "replaced"
    assert a.transcript(sid).read_bytes() == b.transcript(sid).read_bytes()
    [kept] = a.transcript(sid).parent.glob(f"{sid}.jsonl.replaced-*")
    assert kept.read_bytes() == before  # the local turn is not lost


def test_a_fast_forward_keeps_a_local_side_file_the_bundle_would_shorten(
        two: tuple[Machine, Machine], tmp_path: Path) -> None:
    a, b = two
    sid = a.sessions.create("x", "[fake subagent=1 tool_output=300] one").session_id
    bundle = tmp_path / "x.tgz"
    a.sessions.export(bundle, ["x"])
    b.sessions.import_bundle(bundle)
    folder = b.transcript(sid).parent / sid
    extended, rewritten = sorted(p for p in folder.rglob("*") if p.is_file())[:2]
    theirs = {p: p.read_bytes() for p in (extended, rewritten)}
    a.reply("x", "two")  # the bundle's transcript extends b's: a fast-forward
    for side in (extended, rewritten):  # and a's side files: one grows, one is rewritten
        counterpart = a.transcript(sid).parent / sid / side.relative_to(folder)
        counterpart.write_bytes(theirs[side] + b"more\n" if side == extended else b"other\n")
    a.sessions.export(bundle, ["x"])
    [ff] = b.sessions.import_bundle(bundle)
    assert ff.action.value == "fast-forward"
    assert extended.read_bytes() == theirs[extended] + b"more\n"
    assert list(extended.parent.glob(f"{extended.name}.replaced-*")) == []  # nothing to keep
    assert rewritten.read_bytes() == b"other\n"
    [kept] = rewritten.parent.glob(f"{rewritten.name}.replaced-*")
    assert kept.read_bytes() == theirs[rewritten]  # b's bytes are not lost


def test_a_name_that_maps_elsewhere_is_refused_unless_forced_or_renamed(
        two: tuple[Machine, Machine], tmp_path: Path) -> None:
    a, b = two
    theirs = a.sessions.create("x", "one").session_id
    ours = b.sessions.create("x", "mine").session_id
    bundle = tmp_path / "x.tgz"
    a.sessions.export(bundle, ["x"])
    with pytest.raises(ImportConflictError) as refused:
        b.sessions.import_bundle(bundle)
    assert f"x: here it names session {ours}" in str(refused.value)
    assert not b.transcript(theirs).exists()  # verified, planned, refused: nothing written
    [renamed] = b.sessions.import_bundle(bundle, renames={"x": "x-from-a"})
    assert renamed.name == "x-from-a" and b.sessions.resolve("x").session_id == ours
    b.sessions.import_bundle(bundle, force=True)
    entry = b.sessions.resolve("x")
    assert entry.session_id == theirs
    assert entry.history[-1]["session_id"] == ours
    assert entry.history[-1]["reason"] == "import --force"
    with pytest.raises(UsageError, match="does not hold"):
        b.sessions.import_bundle(bundle, renames={"nope": "y"})


def test_a_fork_and_a_subfolder_cwd_travel(two: tuple[Machine, Machine],
                                           tmp_path: Path) -> None:
    a, b = two
    base = a.sessions.create("base", "one").session_id
    a.reply("base", "two")
    fork = a.sessions.fork("base", "alt", "three, forked").session_id
    bundle = tmp_path / "all.tgz"
    a.sessions.export(bundle)  # every session
    done = {o.name: o for o in b.sessions.import_bundle(bundle)}
    assert (done["base"].session_id, done["alt"].session_id) == (base, fork)
    assert b.reply("alt", "four").startswith(f"fake reply to turn 4 of session {fork}")
    assert b.reply("base", "three").startswith(f"fake reply to turn 3 of session {base}")
    # A session made in a folder inside the workspace lands in the same folder inside b's.
    deep = a.sessions.create("deep", "one").session_id
    sub = a.workspace / "pkg" / "sub"
    sub.mkdir(parents=True)
    with a.sessions.store.update() as doc:
        doc.put("deep", {**doc.aliases["deep"], "cwd": str(sub)})
    target = tr.transcript_path(deep, sub, a.env)
    target.parent.mkdir(parents=True)
    a.transcript(deep).rename(target)
    a.sessions.export(bundle, ["deep"])
    [placed] = b.sessions.import_bundle(bundle)
    assert placed.transcript == tr.transcript_path(deep, b.workspace / "pkg" / "sub", b.env)
    assert b.sessions.resolve("deep").cwd == str(b.workspace / "pkg" / "sub")


def test_export_of_a_session_without_transcript(two: tuple[Machine, Machine],
                                                tmp_path: Path) -> None:
    a, _ = two
    sid = a.sessions.create("gone", "one").session_id
    a.sessions.create("here", "one")
    a.transcript(sid).unlink()
    with pytest.raises(TranscriptMissingError) as missing:
        a.sessions.export(tmp_path / "x.tgz", ["gone"])
    assert exit_code_for(missing.value) == 3 and str(a.transcript(sid)) in str(missing.value)
    assert not (tmp_path / "x.tgz").exists()
    report = a.sessions.export(tmp_path / "x.tgz")  # --all leaves it out, with a warning
    assert [s.name for s in report.manifest.sessions] == ["here"]


# -- hostile and broken bundles ------------------------------------------------------------------


def _members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(bundle, "r:gz") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _write(members: list[tuple[tarfile.TarInfo, bytes]], path: Path) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o600
    return info


def _with_manifest(members: list[tuple[tarfile.TarInfo, bytes]],
                   change: Callable[[dict[str, Any]], None]
                   ) -> list[tuple[tarfile.TarInfo, bytes]]:
    manifest = json.loads(members[0][1])
    change(manifest)
    return [(members[0][0], json.dumps(manifest).encode()), *members[1:]]


def _extra(members: list[tuple[tarfile.TarInfo, bytes]], info: tarfile.TarInfo,
           data: bytes = b"") -> list[tuple[tarfile.TarInfo, bytes]]:
    return [*members, (info, data)]


def _list_extra(path: str, data: bytes) -> Callable[[dict[str, Any]], None]:
    import hashlib

    def change(manifest: dict[str, Any]) -> None:
        manifest["sessions"][0]["files"].append(
            {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return change


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        for one in changes:
            one(manifest)
    return change


HOSTILE: dict[str, tuple[Callable[[list[tuple[tarfile.TarInfo, bytes]], str]
                                  , list[tuple[tarfile.TarInfo, bytes]]], str]] = {
    "absolute path": (lambda m, sid: _extra(m, _info("/etc/evil"), b"x"), "absolute path"),
    "dot-dot": (lambda m, sid: _extra(m, _info(f"sessions/{sid}/../../evil"), b"x"), "'..'"),
    "symlink": (lambda m, sid: _extra(m, _info(f"sessions/{sid}/l", tarfile.SYMTYPE,
                                               "/etc/passwd")), "symbolic link"),
    "hard link": (lambda m, sid: _extra(m, _info(f"sessions/{sid}/h", tarfile.LNKTYPE,
                                                 f"sessions/{sid}.jsonl")), "hard link"),
    "device": (lambda m, sid: _extra(m, _info(f"sessions/{sid}/d", tarfile.CHRTYPE)),
               "a device"),
    "fifo": (lambda m, sid: _extra(m, _info(f"sessions/{sid}/f", tarfile.FIFOTYPE)),
             "a FIFO"),
    "unlisted": (lambda m, sid: _extra(m, _info(f"sessions/{sid}/more.txt"), b"x"),
                 "does not list"),
    "checksum": (lambda m, sid: [m[0], (m[1][0], m[1][1][:-2] + b"X\n"), *m[2:]],
                 "sha256 does not match"),
    "size": (lambda m, sid: [m[0], (m[1][0], m[1][1] + b"{}\n"), *m[2:]],
             "the manifest says"),
    "missing file": (lambda m, sid: m[:2], "lacks 1 file(s)"),
    "twice": (lambda m, sid: [*m, m[1]], "twice"),
    "manifest not first": (lambda m, sid: [*m[1:], m[0]], "does not start with"),
    "newer format": (lambda m, sid: _with_manifest(m, lambda d: d.update(format_version=9)),
                     "made by a newer claude-persist"),
    "not ours": (lambda m, sid: _with_manifest(m, lambda d: d.update(format="zip")),
                 "does not describe"),
    "listed unsafe": (lambda m, sid: _with_manifest(m, _list_extra("sessions/../x", b"x")),
                      "not a safe relative path"),
    "listed outside the session": (lambda m, sid: _with_manifest(
        m, _list_extra("sessions/other/x", b"x")), "not in the session's folder"),
    "a file and a folder": (lambda m, sid: _with_manifest(
        _extra(_extra(m, _info(f"sessions/{sid}/a"), b"pwned"), _info(f"sessions/{sid}/a/b"),
               b"x"),
        _both(_list_extra(f"sessions/{sid}/a", b"pwned"),
              _list_extra(f"sessions/{sid}/a/b", b"x"))),
        "listed as a file and as a folder"),
    "deep manifest": (lambda m, sid: [(m[0][0], b"[" * 100000 + b"]" * 100000), *m[1:]],
                      "not valid JSON"),
    "upper-case id": (lambda m, sid: _with_manifest(
        m, lambda d: d["sessions"][0].update(session_id=sid.upper())), "lower case"),
    "entry of wrong types": (lambda m, sid: _with_manifest(
        m, lambda d: d["sessions"][0]["entry"].update(history="notalist")),
        "history is 'notalist'"),
    "junk history": (lambda m, sid: _with_manifest(
        m, lambda d: d["sessions"][0]["entry"].update(history=[{"session_id": "zz"}, 5])),
        "not a replaced session"),
}


@pytest.fixture
def good_bundle(two: tuple[Machine, Machine], tmp_path: Path) -> tuple[Path, str]:
    a, _ = two
    sid = a.sessions.create("x", "[fake tool_output=100] one").session_id
    bundle = tmp_path / "good.tgz"
    a.sessions.export(bundle, ["x"])
    return bundle, sid


def _nothing_written(b: Machine, sid: str) -> None:
    projects = b.config / "projects"
    assert not list(projects.glob(f"*/{sid}*")) if projects.exists() else True
    assert not list(projects.glob(".claude-persist-import*")) if projects.exists() else True
    assert b.sessions.list() == []


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_or_broken_bundle_is_refused_whole(
        case: str, two: tuple[Machine, Machine], good_bundle: tuple[Path, str],
        tmp_path: Path) -> None:
    _, b = two
    bundle, sid = good_bundle
    build, message = HOSTILE[case]
    bad = _write(build(_members(bundle), sid), tmp_path / "bad.tgz")
    with pytest.raises(BundleError) as refused:
        b.sessions.import_bundle(bad)
    assert message in str(refused.value) and exit_code_for(refused.value) == 2
    _nothing_written(b, sid)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "evil").exists()


def test_not_a_bundle_truncated_and_past_the_limits(
        two: tuple[Machine, Machine], good_bundle: tuple[Path, str], tmp_path: Path) -> None:
    _, b = two
    bundle, sid = good_bundle
    plain = tmp_path / "plain.txt"
    plain.write_text("hello")
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(bundle.read_bytes()[:-40])
    raw_tar = tmp_path / "raw.tar"
    raw_tar.write_bytes(gzip.decompress(bundle.read_bytes()))
    for path, message in [(plain, "not a readable bundle"), (cut, "not a readable bundle"),
                          (raw_tar, "not a readable bundle")]:
        with pytest.raises(BundleError, match=message):
            b.sessions.import_bundle(path)
        _nothing_written(b, sid)
    with pytest.raises(BundleError, match="more than the 10 an import accepts for one file"):
        b.sessions.import_bundle(bundle, limits=Limits(max_file_bytes=10))
    with pytest.raises(BundleError, match="lists 2 files, more than the 1"):
        b.sessions.import_bundle(bundle, limits=Limits(max_files=1))
    with pytest.raises(BundleError, match="more than the 100 an import accepts"):
        b.sessions.import_bundle(bundle, limits=Limits(max_total_bytes=100))
    _nothing_written(b, sid)
    with pytest.raises(UsageError, match="cannot read the bundle"):
        b.sessions.import_bundle(tmp_path / "no-such.tgz")


def test_a_symlink_where_a_transcript_goes_is_refused(
        two: tuple[Machine, Machine], good_bundle: tuple[Path, str], tmp_path: Path) -> None:
    _, b = two
    bundle, sid = good_bundle
    dest = b.transcript(sid)
    dest.parent.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    dest.symlink_to(victim)
    with pytest.raises(Exception, match="symlink"):
        b.sessions.import_bundle(bundle)
    assert victim.read_text() == "keep me" and b.sessions.list() == []


# -- list and resume ------------------------------------------------------------------------------


def test_transcript_states_and_the_cleanup_setting(two: tuple[Machine, Machine]) -> None:
    a, _ = two
    sids = [a.sessions.create(name, "one").session_id for name in ("fresh", "old", "gone")]
    a.transcript(sids[2]).unlink()
    day = 86400
    old = time.time() - 25 * day
    os.utime(a.transcript(sids[1]), (old, old))
    states = {e.name: s for e, s in zip(a.sessions.list(), a.sessions.transcript_states(),
                                        strict=True)}
    assert states["fresh"].state is tr.TranscriptState.PRESENT
    assert states["old"].state is tr.TranscriptState.DUE  # 30 days after use, 5 left
    assert states["gone"].state is tr.TranscriptState.MISSING
    assert states["fresh"].path == a.transcript(sids[0])
    (a.config / "settings.json").write_text(json.dumps({"cleanupPeriodDays": 60}))

    def state(name: str) -> tr.TranscriptState:
        entries = a.sessions.list()
        found = dict(zip((e.name for e in entries), a.sessions.transcript_states(entries),
                         strict=True))
        return found[name].state

    assert state("old") is tr.TranscriptState.PRESENT
    local = a.workspace / ".claude" / "settings.local.json"
    local.parent.mkdir()
    local.write_text(json.dumps({"cleanupPeriodDays": 3}))  # the smallest wins
    assert tr.cleanup_period_days(a.workspace, a.env) == 3
    assert state("fresh") is tr.TranscriptState.DUE


def test_list_shows_the_transcript_state(face: Runner, fake_claude: FakeClaude,
                                         workspace: Path) -> None:
    sid = face("create", "-n", "kept").out.strip()
    gone = face("create", "-n", "gone").out.strip()
    fake_claude.transcript_path(gone).unlink()
    listed = {s["name"]: s["transcript"] for s in face("list", "--json").json()["sessions"]}
    assert listed["kept"]["state"] == "present"
    assert listed["kept"]["path"] == str(fake_claude.transcript_path(sid))
    assert listed["gone"] == {"state": "missing", "path": None, "cleanup_at": None}
    table = face("list").out.splitlines()
    assert table[0].split()[-1] == "TRANSCRIPT"
    assert table[1].split()[0] == "gone" and table[1].split()[-1] == "missing"
    assert table[2].split()[-1] == "present"


def test_resume_of_a_missing_transcript_hints_import(face: Runner, fake_claude: FakeClaude,
                                                     workspace: Path) -> None:
    sid = face("create", "-n", "lost").out.strip()
    fake_claude.transcript_path(sid).unlink()
    ran = face("resume", "-n", "lost", "-p", "still there?")
    assert ran.code == 3
    assert f"{face.name.split('-')[0]}" in ran.err
    assert "import BUNDLE" in ran.err and "export -n lost" in ran.err
    assert "cleanupPeriodDays" in ran.err and str(fake_claude.config_dir) in ran.err
    assert "Traceback" not in ran.err


# -- the faces ------------------------------------------------------------------------------------


def test_export_and_import_through_both_faces(face: Runner, fake_claude: FakeClaude,
                                              workspace: Path, tmp_path: Path) -> None:
    sid = face("create", "-n", "one", "-p", "hi").out.strip()
    face("create", "-n", "two", "-p", "hi")
    ran = face("export", "-n", "one", "-n", "two", "-o", str(tmp_path / "b.tgz"))
    assert ran.code == 0 and ran.out == "", ran.err
    assert "exported 2 sessions" in ran.err
    other = tmp_path / "other-config"
    env = {"CLAUDE_CONFIG_DIR": str(other)}
    face("delete", "--all", "--yes")
    imported = face("import", str(tmp_path / "b.tgz"), "--as", "one=uno", env=env)
    assert imported.code == 0, imported.err
    assert [line.split()[:2] for line in imported.out.splitlines()] == \
        [["uno", "new"], ["two", "new"]]
    assert (other / "projects" / tr.project_folder_name(workspace) / f"{sid}.jsonl").is_file()
    resumed = face("resume", "-n", "uno", "-p", "again", env=env)
    assert resumed.out.startswith(f"fake reply to turn 2 of session {sid}")
    again = face("import", str(tmp_path / "b.tgz"), "--as", "one=uno", env=env)
    assert again.code == 2 and "this machine has 1 turn(s) the bundle lacks" in again.err
    assert "--force" in again.err and "Traceback" not in again.err


def test_the_faces_refuse_bad_flags_and_bad_bundles(face: Runner, workspace: Path,
                                                     tmp_path: Path) -> None:
    face("create", "-n", "x")
    assert face("export").code == 2
    assert face("export", "--all", "-n", "x", "-o", "f").code == 2
    assert "-o FILE" in face("export", "--all").err  # no binary to a captured text stream
    assert face("export", "-n", "nope", "-o", str(tmp_path / "f")).code == 3
    # (Invoke's own parse errors are exit 1 under inv, 2 under claude-persist.)
    assert face("import").code == (2 if face.name == "claude-persist" else 1)
    assert face("import", "f", "--as", "noequals").code == 2
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"\x1f\x8b not really")
    ran = face("import", str(junk))
    assert ran.code == 2 and "not a readable bundle" in ran.err and "Traceback" not in ran.err


def test_export_to_stdout_and_import_from_stdin(cp: Runner, cp_process: Runner,
                                                workspace: Path, tmp_path: Path) -> None:
    import subprocess

    sid = cp("create", "-n", "piped").out.strip()  # the pipes are what need real processes
    exported = subprocess.run([*cp_process.prefix, "export", "--all"], capture_output=True,
                              cwd=workspace, timeout=60, stdin=subprocess.DEVNULL)
    assert exported.returncode == 0, exported.stderr
    other = tmp_path / "other-config"
    imported = subprocess.run([*cp_process.prefix, "import", "-", "--force"],
                              input=exported.stdout, capture_output=True, cwd=workspace,
                              env={**os.environ, "CLAUDE_CONFIG_DIR": str(other)}, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.decode().split()[:2] == ["piped", "new"]
    assert (other / "projects" / tr.project_folder_name(workspace) / f"{sid}.jsonl").is_file()
    assert read_mapping(workspace)["aliases"]["piped"]["session_id"] == sid


def test_a_cwd_moves_with_the_workspace_or_lands_at_its_root() -> None:
    from claude_persist.bundle import moved_path

    here = Path("/dest/ws")
    assert moved_path("/src/ws", "/src/ws", here) == here
    assert moved_path("/src/ws/pkg/sub", "/src/ws", here) == here / "pkg" / "sub"
    assert moved_path("/src/other", "/src/ws", here) is None  # then: the workspace itself
    assert moved_path("/src/wsx/a", "/src/ws", here) is None  # a prefix is not a parent
    assert moved_path("/src/ws/../etc", "/src/ws", here) is None


def test_renames_are_checked_against_the_bundle() -> None:
    import uuid

    from claude_persist.bundle import FileRecord, Manifest, SessionRecord, parse_renames

    def record(name: str) -> SessionRecord:
        sid = str(uuid.uuid4())
        return SessionRecord(name, sid, "/w", {"session_id": sid},
                             (FileRecord(f"sessions/{sid}.jsonl", 0, "0" * 64),))

    manifest = Manifest("0", "now", "/w", (record("a"), record("b")))
    assert parse_renames(["a=b", "b=a"], manifest) == {"a": "b", "b": "a"}  # a swap is fine
    with pytest.raises(UsageError, match="would be named 'b'"):
        parse_renames(["a=b"], manifest)
    with pytest.raises(UsageError, match="not OLD=NEW"):
        parse_renames(["a"])
    with pytest.raises(UsageError, match="twice"):
        parse_renames(["a=x", "a=y"])
    with pytest.raises(UsageError, match="does not hold"):
        parse_renames(["c=d"], manifest)


def test_an_import_whose_names_cannot_be_saved_places_no_file(
        two: tuple[Machine, Machine], good_bundle: tuple[Path, str]) -> None:
    from .test_fsio import immutable

    _, b = two
    bundle, sid = good_bundle
    b.sessions.list()  # the mapping's folder exists, and can be read
    folder = b.sessions.store.folder
    folder.mkdir(parents=True, exist_ok=True)
    with immutable(folder), pytest.raises(ClaudePersistError) as refused:
        b.sessions.import_bundle(bundle)
    assert exit_code_for(refused.value) == 2
    projects = b.config / "projects"
    assert not (projects.exists() and list(projects.glob(f"*/{sid}*")))
