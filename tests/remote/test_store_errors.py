"""Store URLs, and the store's failures as typed errors: each names the bucket or folder and the
operation, with its documented exit code (75), and no boto3 or OS exception leaks out."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_persist.errors import StoreError, UsageError, exit_code_for
from claude_persist.remote import open_store, parse_store_url
from claude_persist.remote.dirstore import DirStore

from ..test_fsio import OTHER_UID, as_user

# -- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "scheme", "text"), [
    ("s3://my-bucket", "s3", "s3://my-bucket/"),
    ("s3://my-bucket/", "s3", "s3://my-bucket/"),
    ("s3://my.bucket/team/sessions/", "s3", "s3://my.bucket/team/sessions/"),
    ("s3://my-bucket//a//b", "s3", "s3://my-bucket/a/b/"),
    ("dir:/mnt/shared/sessions", "dir", "dir:/mnt/shared/sessions"),
    ("dir:///mnt/shared/sessions/", "dir", "dir:/mnt/shared/sessions"),
    ("file:///mnt/shared", "dir", "dir:/mnt/shared"),
    ("/mnt/shared/./sessions", "dir", "dir:/mnt/shared/sessions"),
    ("  dir:/srv/x  ", "dir", "dir:/srv/x"),
])
def test_good_store_urls(value: str, scheme: str, text: str) -> None:
    url = parse_store_url(value)
    assert (url.scheme, url.text) == (scheme, text)
    assert parse_store_url(url.text) == url  # the normal form parses to itself


def test_a_home_folder_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_store_url("dir:~/sessions").folder == tmp_path / "sessions"


@pytest.mark.parametrize(("value", "why"), [
    ("", "it is empty"),
    ("   ", "it is empty"),
    ("s3://", "no bucket"),
    ("s3:///prefix", "no bucket"),
    ("s3://ab", "not a valid bucket name"),
    ("s3://-bucket", "not a valid bucket name"),
    ("s3://bucket..x", "not a valid bucket name"),
    ("s3://key:secret@bucket/p", "credentials or a port"),
    ("s3://bucket:9000/p", "credentials or a port"),
    ("s3://bucket/p?region=eu-west-1", "AWS_REGION"),
    ("s3://bucket/a/../b", "'..' is not allowed"),
    ("s3://bucket/a\\b", "is not allowed"),
    ("gs://bucket/p", "interoperability endpoint"),
    ("http://example.com/x", "'http' is not supported"),
    ("dir:relative/path", "must be absolute"),
    ("sessions", "relative folder"),
    ("dir:/", "root folder"),
    ("file://server/share", "mount it"),
    ("dir:~nosuchuser-xyz/s", "not a known home folder"),
    ("dir:/a\nb", "control characters"),
])
def test_bad_store_urls_are_usage_errors(value: str, why: str) -> None:
    with pytest.raises(UsageError) as bad:
        parse_store_url(value, "CLAUDE_PERSIST_STORE")
    message = str(bad.value)
    assert exit_code_for(bad.value) == 2
    assert message.startswith("CLAUDE_PERSIST_STORE: bad store URL"), message
    assert why in message and "s3://BUCKET[/PREFIX] or dir:/ABSOLUTE/FOLDER" in message


def test_an_s3_store_without_boto3_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    with pytest.raises(UsageError, match=r"needs boto3.*pip install 'claude-persist\[s3\]'"):
        open_store("s3://some-bucket/p")


def test_a_folder_store_imports_no_boto3() -> None:
    import subprocess

    code = ("import sys; from claude_persist.remote import open_store; "
            "open_store('dir:/tmp'); print('boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


# -- S3 failures -------------------------------------------------------------------------------


def test_a_missing_bucket_names_the_bucket_and_the_operation(aws_env: str) -> None:
    store = open_store("s3://no-such-bucket-here/team")
    checks: list[tuple[Callable[[], object], str]] = [
        (lambda: store.get("entry", "review"), "read the entry 'review'"),
        (lambda: store.put("entry", "review", {}, expect=None), "create the entry 'review'"),
        (lambda: store.names("entry"), "list the entry records"),
        (lambda: store.has_blob("0" * 64), "look up the blob 000000000000"),
    ]
    for act, operation in checks:
        with pytest.raises(StoreError) as failed:
            act()
        message = str(failed.value)
        assert exit_code_for(failed.value) == 75
        assert f"cannot {operation}" in message, message
        assert "'no-such-bucket-here'" in message and "does not exist" in message, message
        assert failed.value.store == "bucket 'no-such-bucket-here' (prefix 'team/')"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on (bound, never listening, while the test
    runs, so nobody else takes it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def test_an_unreachable_endpoint_names_it(aws_env: str, closed_port: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # honoured: no retries
    store = open_store("s3://team-bucket/sessions")
    with pytest.raises(StoreError) as failed:
        store.get("lease", "review")
    message = str(failed.value)
    assert exit_code_for(failed.value) == 75
    assert "cannot read the lease 'review'" in message and "'team-bucket'" in message
    assert endpoint in message and "cannot be reached" in message, message
    assert "Traceback" not in message


def test_missing_credentials_are_named(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store("s3://team-bucket/sessions")
    with pytest.raises(StoreError, match="no usable AWS credentials") as failed:
        store.get("entry", "x")
    assert exit_code_for(failed.value) == 75 and "'team-bucket'" in str(failed.value)


def test_a_refusal_by_the_server_is_typed(aws_env: str) -> None:
    """What S3 answers for a denied request (which moto does not enforce), through the same
    translation as every call."""
    from botocore.exceptions import ClientError

    from claude_persist.remote.s3store import S3Store

    s3 = open_store("s3://team-bucket/p")
    assert isinstance(s3, S3Store)
    answer: Any = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                   "ResponseMetadata": {"HTTPStatusCode": 403}}
    denied = ClientError(answer, "PutObject")
    with pytest.raises(StoreError) as failed, s3._calling("create the entry 'x'"):
        raise denied
    message = str(failed.value)
    assert "cannot create the entry 'x'" in message and "access denied" in message
    assert "'team-bucket'" in message and "s3:PutObject" in message
    assert exit_code_for(failed.value) == 75


# -- folder failures ---------------------------------------------------------------------------


def test_a_missing_folder_is_never_created(tmp_path: Path) -> None:
    store = open_store(f"dir:{tmp_path / 'not mounted'}")
    checks: list[tuple[Callable[[], object], str]] = [
        (lambda: store.get("entry", "x"), "read the entry 'x'"),
        (lambda: store.put("entry", "x", {}, expect=None), "create the entry 'x'"),
        (lambda: store.names("lease"), "list the lease records"),
        (lambda: store.put_blob(b"data"), "write the blob"),
    ]
    for act, operation in checks:
        with pytest.raises(StoreError) as failed:
            act()
        message = str(failed.value)
        assert exit_code_for(failed.value) == 75
        assert f"cannot {operation}" in message and str(tmp_path / "not mounted") in message
        assert "does not exist" in message, message
    assert not (tmp_path / "not mounted").exists()


def test_a_file_where_the_folder_should_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="Not a directory") as failed:
        open_store(f"dir:{tmp_path / 'file'}").get("entry", "x")
    assert exit_code_for(failed.value) == 75


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A store folder that only its owner may write to, in a folder others can reach."""
    root = Path(tempfile.mkdtemp(prefix="claude-persist-store-", dir="/tmp"))
    root.chmod(0o755)
    folder = root / "store"
    folder.mkdir()
    DirStore(folder).put("entry", "x", {"n": 1}, expect=None)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield folder
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def test_permission_denied_on_the_folder(shared_folder: Path) -> None:
    """Another user who may read the folder but not write to it: reads work, writes fail with
    a typed error naming the folder, the operation and what to check."""
    def attempt() -> object:
        store = DirStore(shared_folder)
        read = store.get("entry", "x")
        assert read is not None
        return store.put("entry", "x", {"n": 2}, expect=read.version)

    if os.getuid() == 0:
        outcome = as_user(OTHER_UID, None, attempt)
    else:
        shared_folder.chmod(0o555)
        for path in shared_folder.rglob("*"):
            if path.is_dir():
                path.chmod(0o555)
        try:
            attempt()
            outcome = {"value": "written"}
        except StoreError as exc:
            outcome = {"error": type(exc).__name__, "message": str(exc),
                       "code": exit_code_for(exc)}
    assert outcome.get("error") == "StoreError", outcome
    assert outcome["code"] == 75
    message = outcome["message"]
    assert "cannot replace the entry 'x'" in message and str(shared_folder) in message
    assert "permission denied" in message.lower(), message
    assert DirStore(shared_folder).get("entry", "x").data == {"n": 1}  # type: ignore[union-attr]
