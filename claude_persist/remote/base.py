"""The one small interface every shared session store implements, and what the backends share.

A store holds three kinds of things:

* **records**: one small JSON object per session name and kind (``"entry"``: the session's
  mapping entry and the manifest of its files; ``"lease"``: who may extend the session now).
  Each is read with a *version* token and written compare-and-swap: create-only (S3's
  ``If-None-Match: *``), only-if-unchanged (``If-Match: <version>``), and deleted only if
  unchanged. A writer that read an old version can never overwrite a newer one.
* **blobs**: a session's files, content-addressed by their sha256. A blob never changes once
  written, so it needs no compare-and-swap, and a push writes the blobs first and then the
  entry that names them: a reader that sees an entry finds every file it lists, and sees
  either the old set of files or the new one, never a mix.
* nothing else: leases (:mod:`.lease`) are records of kind ``"lease"``.

Every record is stored in an envelope, ``{"format": 1, "write": <random token>, "data": ...}``.
The token makes each write's bytes unique, so a version (an S3 ETag is an MD5 of the bytes) is
never reused by a later write of the same data, and a writer whose request was retried after a
lost answer can recognise its own write instead of reporting a conflict.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote

from ..errors import StoreConflictError, StoreRecordError

#: ``entry``: a named session; ``lease``: its holder; ``session``: which name a session id has
#: (a session has at most one name in a store, see ``shared.SharedSessions.claim``).
Kind = Literal["entry", "lease", "session"]
KINDS: tuple[Kind, ...] = ("entry", "lease", "session")
FORMAT = 1
#: Records are small (a mapping entry and a manifest); a bigger one is refused as unreadable.
RECORD_LIMIT = 4 << 20
DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Document:
    """A record as read: its data, its version token (for the next compare-and-swap), and the
    token of the write that made it."""

    data: dict[str, Any]
    version: str
    write: str


def new_token() -> str:
    """A random token: a lease holder's, or a write's."""
    return secrets.token_hex(16)


def encode_name(name: str) -> str:
    """A record name as one safe path segment or key part: percent-encoded, and never ``.``
    or ``..`` (a leading dot is encoded too)."""
    if not name:
        raise ValueError("a record name must not be empty")
    text = quote(name, safe="")
    return "%2E" + text[1:] if text.startswith(".") else text


def decode_name(text: str) -> str:
    return unquote(text)


def envelope(data: dict[str, Any] | None, write: str) -> bytes:
    """The bytes stored for a record (``data`` None: a tombstone, in stores that keep one)."""
    body: dict[str, Any] = {"format": FORMAT, "write": write}
    if data is None:
        body["deleted"] = True
    else:
        body["data"] = data
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def open_envelope(raw: bytes, where: str, store: str, key: str = ""
                  ) -> tuple[dict[str, Any] | None, str]:
    """``(data, write token)`` from stored bytes; data None for a tombstone. Anything else is
    a :class:`StoreRecordError` naming the record (``where``) and its ``key`` or path."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise unreadable(where, store, f"not JSON ({exc})", key) from None
    if not isinstance(body, dict) or not isinstance(body.get("write"), str):
        raise unreadable(where, store, "not a record of ours", key)
    if body.get("format") != FORMAT:
        raise unreadable(where, store, f"format {body.get('format')!r}, this version reads "
                         f"format {FORMAT}: upgrade claude-persist", key)
    if body.get("deleted") is True:
        return None, body["write"]
    data = body.get("data")
    if not isinstance(data, dict):
        raise unreadable(where, store, "its data is not a JSON object", key)
    return data, body["write"]


def unreadable(where: str, store: str, why: str, key: str = "") -> StoreRecordError:
    at = f" ({key})" if key else ""
    return StoreRecordError(f"the shared store {store} holds {where}, which is unreadable: "
                            f"{why}. Remove it there{at}, or restore it from a backup.",
                            store=store, operation=f"read {where}", reason=why,
                            key=key or where)


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not DIGEST_PATTERN.match(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest


def what(kind: Kind, name: str) -> str:
    """How a message names a record: ``the entry 'x'``."""
    return f"the {kind} {name!r}"


class SharedStore(ABC):
    """A shared session store. Implementations: :class:`~.dirstore.DirStore` (``dir:/path``)
    and :class:`~.s3store.S3Store` (``s3://bucket/prefix``).

    Every method raises :class:`~claude_persist.errors.StoreError` when the store cannot be
    reached or refuses, naming the store and the operation; the compare-and-swap methods raise
    :class:`~claude_persist.errors.StoreConflictError` when they lose. Methods may be called
    from several threads at once.
    """

    #: The URL it was opened from, for messages and configuration.
    url: str
    #: How messages name it: "bucket 'b' (prefix 'p/')", "folder /srv/sessions".
    location: str

    # -- records ---------------------------------------------------------------------------

    @abstractmethod
    def get(self, kind: Kind, name: str) -> Document | None:
        """The record, or None when there is none."""

    @abstractmethod
    def put(self, kind: Kind, name: str, data: dict[str, Any], *,
            expect: str | None) -> str:
        """Write the record; give its new version.

        ``expect`` None: only if there is no record (create-only); else only if the record's
        current version is ``expect``. Otherwise :class:`StoreConflictError`, nothing written.
        """

    @abstractmethod
    def delete(self, kind: Kind, name: str, *, expect: str) -> None:
        """Remove the record if its current version is ``expect``; else
        :class:`StoreConflictError` (also when it is gone already)."""

    @abstractmethod
    def names(self, kind: Kind) -> list[str]:
        """The names that have a record of ``kind``, sorted (an unreadable record's too)."""

    @abstractmethod
    def version(self, kind: Kind, name: str) -> str | None:
        """The record's current version without reading its content (None: no record), so
        that an unreadable record can be replaced or removed compare-and-swap."""

    def where(self, kind: Kind, name: str) -> str:
        """How a message names a record, with its key or path: ``the entry 'x' (key ...)``."""
        return what(kind, name)

    # -- blobs -----------------------------------------------------------------------------

    @abstractmethod
    def put_blob(self, data: bytes) -> str:
        """Store ``data`` (once: a blob already there is not written again); give its sha256
        (hex), the key to read it back with."""

    @abstractmethod
    def get_blob(self, digest: str) -> bytes:
        """The blob's bytes, checked against the digest; a missing or damaged blob is a
        :class:`StoreError`."""

    @abstractmethod
    def has_blob(self, digest: str) -> bool:
        """True when the blob is stored."""

    @abstractmethod
    def self_check(self) -> list[str]:
        """Prove on a probe object that the store's compare-and-swap works here (the server
        honours the conditions, the file system has hard links): a :class:`StoreError` when it
        does not; a list of warnings about weaker guarantees (empty: none). Leaves nothing
        behind but, in a folder, an empty probe folder."""

    def close(self) -> None:  # noqa: B027  (a no-op unless a backend holds something)
        """Let go of connections; the store is not used afterwards."""

    # -- shared helpers --------------------------------------------------------------------

    def update(self, kind: Kind, name: str,
               change: Callable[[Document | None], dict[str, Any] | None], *,
               attempts: int = 50) -> Document | None:
        """Read, change and write back one record, retrying when another writer got in
        between: ``change(current)`` gives the new data (None: remove the record). It may be
        called several times, so it must not have side effects. Gives the record as written
        (None when removed or left absent)."""
        for attempt in range(attempts):
            current = self.get(kind, name)
            new = change(current)
            try:
                if new is None:
                    if current is not None:
                        self.delete(kind, name, expect=current.version)
                    return None
                version = self.put(kind, name, new,
                                   expect=None if current is None else current.version)
                return Document(new, version, "")
            except StoreConflictError:
                backoff = min(0.001 * 2 ** min(attempt, 6), 0.05)
                time.sleep(backoff * (0.5 + secrets.randbelow(100) / 100))
        raise StoreConflictError(
            f"gave up updating {what(kind, name)} in the shared store {self.location} after "
            f"{attempts} attempts: other writers kept changing it. Try again.",
            store=self.location, key=name, operation=f"update {what(kind, name)}")

    def conflict(self, kind: Kind, name: str, operation: str, why: str) -> StoreConflictError:
        return StoreConflictError(
            f"cannot {operation} {what(kind, name)} in the shared store {self.location}: {why}",
            store=self.location, key=name, operation=f"{operation} {what(kind, name)}")
