"""The shared store's figures: what a store adds to a resume, and eight machines' throughput.

Against the local S3 server the tests use (moto's, serving one request at a time, on
127.0.0.1) and a folder store. Needs the test extra (``pip install -e '.[test]'``: moto, boto3).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .figures import Figure, _ms
from .lab import PYTHON, REPO, Lab, interleaved, median

SERVER = REPO / "tests" / "remote" / "serial_moto.py"


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """The local S3 server, and the AWS variables that point at it."""
    server = subprocess.Popen([PYTHON, str(SERVER), "127.0.0.1"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 60)
        port = int(server.stdout.readline()) if ready else 0
        if not port:
            raise RuntimeError("the local S3 server did not start")
        folder = tempfile.mkdtemp(prefix="claude-persist-bench-aws-")
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_CONFIG_FILE": f"{folder}/none", "AWS_SHARED_CREDENTIALS_FILE":
               f"{folder}/none"}
    finally:
        server.terminate()
        server.wait()


def _bucket(aws: dict[str, str]) -> str:
    import boto3

    name = f"bench-{uuid.uuid4().hex[:12]}"
    client = boto3.session.Session().client(
        "s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=aws["AWS_REGION"],
        aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=name)
    client.close()
    return name


def _round_trips(lab: Lab, url: str, aws: dict[str, str], turns: int) -> float:
    """Requests to the server per resume, counted in process on boto3's own event."""
    from claude_persist import Sessions
    from claude_persist.remote import open_store

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in lab.env.items() if k.startswith(("CLAUDE", "FAKE"))})
    os.environ.update(aws)
    try:
        store = open_store(url)
        count = [0]

        def one(**_: Any) -> None:
            count[0] += 1

        store.client.meta.events.register("before-send.s3", one)  # type: ignore[attr-defined]
        sessions = Sessions(lab.workspace, env=lab.env, store=store, notify=lambda m: None,
                            mapping_file=lab.root / "api-mapping.json")
        sessions.resume("shared", "warm up")  # this mapping file fetches once
        count[0] = 0
        for _ in range(turns):
            sessions.resume("shared", "hi")
        store.close()
        return count[0] / turns
    finally:
        os.environ.clear()
        os.environ.update(saved)


def store_resume(rounds: int = 20) -> list[Figure]:
    """``claude-persist resume`` with an S3 store against the same without a store, alternating;
    and the requests a resume makes."""
    with s3_server() as aws:
        lab = Lab.make("store-resume")
        try:
            lab.env.update(aws)
            url = f"s3://{_bucket(aws)}/team"
            lab.cp("create", "-n", "local")
            lab.cp("create", "-n", "shared", "--store", url)
            folder = lab.root / "folder-store"
            folder.mkdir()
            lab.cp("create", "-n", "shared", "--store", f"dir:{folder}", "--force")
            start_client = "import boto3; boto3.session.Session().client('s3').close()"
            times = interleaved({
                "boto3 client start-up": lambda: lab.run([PYTHON, "-c", start_client]),
                "python start-up": lambda: lab.run([PYTHON, "-c", "pass"]),
                "no store": lambda: lab.cp("resume", "-n", "local", "-p", "hi"),
                "s3 store": lambda: lab.cp("resume", "-n", "shared", "-p", "hi", "--store", url),
                "folder store": lambda: lab.cp("resume", "-n", "shared", "-p", "hi", "--store",
                                               f"dir:{folder}"),
            }, rounds)
            trips = _round_trips(lab, url, aws, 5)
        finally:
            shutil.rmtree(lab.root, ignore_errors=True)
    medians = {k: median(v) for k, v in times.items()}
    figures = []
    # boto3's import and client (its service model) is a fixed start-up cost of an s3 store,
    # paid once per process: the target allows for it.
    boto = medians["boto3 client start-up"] - medians["python start-up"]
    for kind, limit in (("s3 store", 3.0), ("folder store", 1.5)):
        ratio = median([own / plain for own, plain in zip(times[kind], times["no store"],
                                                          strict=True)])
        figures.append(Figure(
            key=f"store-resume-{kind.split()[0]}",
            what=f"claude-persist resume with a{'n' if kind[0] == 's' else ''} {kind}",
            value=round(ratio, 2), unit="x", target=f"<= {limit:g}x", ok=ratio <= limit,
            baseline="the same resume without a store (median of the rounds' ratios)",
            context={"median_ms": {k: _ms(v) for k, v in medians.items()},
                     "added_ms": _ms(medians[kind] - medians["no store"]),
                     "boto3_start_up_ms": _ms(boto) if kind == "s3 store" else None,
                     "requests_per_resume": trips if kind == "s3 store" else None,
                     "rounds": rounds}))
    return figures


def store_throughput(machines: int = 8, sessions: int = 4, seconds: float = 60) -> list[Figure]:
    """``machines`` machines taking random turns on ``sessions`` sessions for ``seconds``,
    on a folder store and on the S3 server; every turn then checked (none lost, in order, none
    overlapping)."""
    from tests.remote.hammer import hammer

    figures = []
    with s3_server() as aws:
        saved = dict(os.environ)
        os.environ.update(aws)
        try:
            for kind in ("dir", "s3"):
                root = Path(tempfile.mkdtemp(prefix=f"claude-persist-bench-hammer-{kind}-"))
                try:
                    if kind == "dir":
                        (root / "store").mkdir()
                        url = f"dir:{root / 'store'}"
                    else:
                        url = f"s3://{_bucket(aws)}/team"
                    ok, why = True, ""
                    try:
                        found = hammer(url, root, machines, sessions, 0, seconds)
                    except AssertionError as exc:
                        ok, why, found = False, str(exc)[:300], {"turns": 0, "seconds": 1.0,
                                                                 "turns_per_second": 0.0}
                finally:
                    shutil.rmtree(root, ignore_errors=True)
                figures.append(Figure(
                    key=f"store-throughput-{kind}",
                    what=f"{machines} machines x {sessions} sessions, random turns, "
                         f"{'folder' if kind == 'dir' else 'S3'} store",
                    value=round(found["turns_per_second"], 2), unit="turns/s",
                    target="every turn kept, in order", ok=ok,
                    baseline="none (turns checked one by one afterwards)",
                    context={"turns": found["turns"], "seconds": round(found["seconds"], 1),
                             "failure": why or None}))
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return figures
