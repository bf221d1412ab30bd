"""Fixtures of the shared-store tests: a real S3-compatible server (moto's, over HTTP on
127.0.0.1, started once per test run), AWS settings pointing at it and at nothing of this
machine's, and one store of each backend for the conformance tests."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_persist.remote import SharedStore, open_store

HERE = Path(__file__).parent
SERVER = HERE / "serial_moto.py"
WORKER = HERE / "worker.py"
_SHARED_SERVER: list[subprocess.Popen[bytes]] = []


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[str]:
    """The URL of moto's S3 server, run as a process of its own for the whole test run.

    Under xdist the workers share one server, so the run pays moto's start-up once: the first
    worker to need it starts it under a file lock and leaves its URL beside the workers'
    temporary folders; the server stops itself once the run's main process is gone."""
    if worker_id == "master":  # and should the run be killed, the server goes with it
        server, endpoint = _start_moto(tmp_path_factory.getbasetemp(), os.getpid())
        try:
            yield endpoint
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        return
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # this run's, common to its workers
    url_file = shared / "moto.url"
    with FileLock(str(shared / "moto.lock")):
        if not url_file.exists():
            server, endpoint = _start_moto(shared, os.getppid())
            _SHARED_SERVER.append(server)  # outlives this worker, which must not reap it
            url_file.write_text(endpoint)
    yield url_file.read_text()


def _start_moto(folder: Path, parent: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server, which stops itself once the process ``parent`` is gone."""
    log = folder / "moto-server.log"
    with open(log, "wb") as errors:
        server = subprocess.Popen([sys.executable, str(SERVER), "127.0.0.1", str(parent)],
                                  stdout=subprocess.PIPE, stderr=errors)
    assert server.stdout is not None
    ready, _, _ = select.select([server.stdout], [], [], 60)
    line = server.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        server.kill()
        pytest.fail(f"moto's server did not start: {log.read_text()[-2000:]}")
    endpoint = f"http://127.0.0.1:{int(line)}"
    deadline = time.monotonic() + 60
    while True:  # it answers (any HTTP status) once it serves
        try:
            urllib.request.urlopen(endpoint + "/", timeout=5).close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"moto's server does not answer: {log.read_text()[-2000:]}")
            time.sleep(0.05)
    return server, endpoint


@pytest.fixture
def aws_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The standard AWS variables pointing at the local server, with test credentials and no
    config or credentials file of this machine; gives the endpoint. Subprocesses inherit them."""
    for variable in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return s3_endpoint


@pytest.fixture(scope="session")
def s3_admin(s3_endpoint: str) -> Iterator[Any]:
    """One client of the tests' own for making buckets (made once: a client costs 0.2 s)."""
    import boto3

    client = boto3.session.Session().client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing")
    yield client
    client.close()


@pytest.fixture
def bucket(aws_env: str, s3_admin: Any) -> str:
    """A new, empty bucket on the local server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["dir", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of each backend: a new folder, or a new bucket with a prefix."""
    if request.param == "dir":
        folder = tmp_path / "shared store"
        folder.mkdir()
        return f"dir:{folder}"
    bucket = request.getfixturevalue("bucket")
    return f"s3://{bucket}/team/sessions"


@pytest.fixture
def store(store_url: str) -> Iterator[SharedStore]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def race(stores: list[SharedStore], attempt: Callable[[SharedStore], object]) -> list[object]:
    """Run ``attempt(store)`` for each store, in threads released at once; gives each outcome
    (its value, or the error it raised)."""
    barrier = threading.Barrier(len(stores))
    outcomes: list[object] = [None] * len(stores)

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = attempt(stores[i])
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


#: Many processes against the S3 server, which serves one request at a time: tens of seconds.
#: They run in CI's stress stage; their folder-store twins stay in the default run.
SLOW_ON_S3 = ("test_eight_processes_lose_no_update",
              "test_four_machines_taking_turns_on_one_session_never_overlap")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.name.split("[")[0] in SLOW_ON_S3 and "[s3" in item.name:
            item.add_marker(pytest.mark.stress)
