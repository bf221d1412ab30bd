"""Store URLs: the value of ``--store``, of ``store:`` in the configuration and of
``CLAUDE_PERSIST_STORE``.

* ``s3://BUCKET`` or ``s3://BUCKET/PREFIX``: an S3-compatible bucket (endpoint, region and
  credentials the standard AWS way);
* ``dir:/ABSOLUTE/FOLDER`` (also ``dir:~/FOLDER``, ``file:///ABSOLUTE/FOLDER``, or the absolute
  path alone): a folder every machine mounts at the same path.

A bad URL is a :class:`~claude_persist.errors.UsageError` (exit 2) saying what is wrong and what
the forms are. Parsing touches nothing; :func:`open_store` imports the backend (boto3 only for
``s3://``) but does not connect either: the first operation does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from ..errors import UsageError
from .base import SharedStore

FORMS = "s3://BUCKET[/PREFIX] or dir:/ABSOLUTE/FOLDER"
# S3's bucket naming rules: 3 to 63 lower-case letters, digits, dots and hyphens, starting and
# ending with a letter or digit, no two dots in a row, not an IP address.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9!_.*'()=+,;:@ -]+$")


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL; ``text`` is its normal form (what ``open`` reports)."""

    scheme: Literal["s3", "dir"]
    text: str
    bucket: str = ""
    prefix: str = ""  # "" or "a/b/"
    folder: Path | None = None

    def open(self) -> SharedStore:
        if self.scheme == "s3":
            from .s3store import S3Store

            return S3Store(self.bucket, self.prefix, self.text)
        from .dirstore import DirStore

        assert self.folder is not None
        return DirStore(self.folder, self.text)


def _bad(value: str, source: str, why: str) -> UsageError:
    return UsageError(f"{source}: bad store URL {value!r}: {why}. Use {FORMS}.")


def parse_store_url(value: str, source: str = "--store") -> StoreURL:
    """Parse a store URL; ``source`` (the flag, the configuration key or the variable) is named
    in the error."""
    text = value.strip()
    if not text:
        raise _bad(value, source, "it is empty")
    if "\0" in text or any(ord(c) < 32 for c in text):
        raise _bad(value, source, "it holds control characters")
    if text.startswith("s3://"):
        return _parse_s3(value, text, source)
    if text.startswith(("dir:", "file:")):
        scheme, _, rest = text.partition(":")
        if scheme == "file" or rest.startswith("//"):
            split = urlsplit(text)
            if split.netloc not in ("", "localhost"):
                raise _bad(value, source, f"a folder on host {split.netloc!r} cannot be "
                           "reached by path: mount it and give the mounted path")
            rest = split.path
        return _parse_dir(value, rest, source)
    if text.startswith(("/", "~")):
        return _parse_dir(value, text, source)
    scheme = text.split(":", 1)[0] if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) else ""
    if scheme in {"gs", "gcs"}:
        raise _bad(value, source, "Google Cloud Storage is reached as s3:// with its "
                   "interoperability endpoint (AWS_ENDPOINT_URL=https://storage.googleapis.com "
                   "and an HMAC key)")
    if scheme:
        raise _bad(value, source, f"the scheme {scheme!r} is not supported")
    raise _bad(value, source, "a relative folder would differ from machine to machine")


def _parse_s3(value: str, text: str, source: str) -> StoreURL:
    split = urlsplit(text)
    if split.query or split.fragment:
        raise _bad(value, source, "it has a query or fragment (? or #); endpoint and region "
                   "come from AWS_ENDPOINT_URL and AWS_REGION")
    bucket = split.netloc
    if "@" in bucket or ":" in bucket:
        raise _bad(value, source, "credentials or a port do not belong in the URL; use the "
                   "AWS variables or profile, and AWS_ENDPOINT_URL")
    if not bucket:
        raise _bad(value, source, "no bucket named")
    if not _BUCKET.match(bucket) or ".." in bucket or _IP_ADDRESS.match(bucket):
        raise _bad(value, source, f"{bucket!r} is not a valid bucket name (3 to 63 lower-case "
                   "letters, digits, dots and hyphens, starting and ending with a letter or "
                   "digit, no '..', not an IP address)")
    segments = [s for s in split.path.split("/") if s]
    for segment in segments:
        if segment in {".", ".."} or not _PREFIX_SEGMENT.match(segment):
            raise _bad(value, source, f"the prefix part {segment!r} is not allowed (use "
                       "letters, digits and - _ . between slashes)")
    prefix = "".join(f"{s}/" for s in segments)
    return StoreURL("s3", f"s3://{bucket}/{prefix}", bucket=bucket, prefix=prefix)


def _parse_dir(value: str, path: str, source: str) -> StoreURL:
    if path.startswith("~"):
        expanded = os.path.expanduser(path)
        if expanded.startswith("~"):
            raise _bad(value, source, f"{path.split('/', 1)[0]!r} is not a known home folder")
        path = expanded
    if not path.startswith("/"):
        raise _bad(value, source, "the folder must be absolute (every machine must see the "
                   "same folder at the same path)")
    folder = Path(os.path.normpath(path))
    if folder == Path("/"):
        raise _bad(value, source, "the root folder cannot be a store; give a folder of its own")
    return StoreURL("dir", f"dir:{folder}", folder=folder)


def open_store(value: str, source: str = "--store") -> SharedStore:
    """The store a URL names (parsed as :func:`parse_store_url` does)."""
    return parse_store_url(value, source).open()
