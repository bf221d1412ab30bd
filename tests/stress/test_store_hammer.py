"""The shared store's hammer, long form: eight machines (processes with their own homes, temp
folders and workspaces) taking random turns on four sessions for a while, against a folder
store and the local S3 server; every turn must be in its session once, in order, none lost and
none overlapping another. The default suite runs a short form
(``tests/remote/test_shared_sessions.py``)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.remote.conftest import aws_env, bucket, s3_admin, s3_endpoint  # noqa: F401
from tests.remote.hammer import hammer

pytestmark = pytest.mark.stress


def test_eight_machines_on_a_folder_store(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    figures = hammer(f"dir:{folder}", tmp_path, machines=8, sessions=4, turns=0, seconds=15)
    assert figures["turns"] >= 8


def test_eight_machines_on_the_s3_server(tmp_path: Path, aws_env: str,  # noqa: F811
                                         s3_admin: Any) -> None:  # noqa: F811
    name = f"hammer-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    figures = hammer(f"s3://{name}/team", tmp_path, machines=8, sessions=4, turns=0,
                     seconds=10)
    assert figures["turns"] >= 8
