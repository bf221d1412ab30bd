"""A shared store in an S3-compatible bucket (``s3://bucket/prefix``), through boto3.

Layout under the prefix::

    entry/<name>.json     lease/<name>.json     session/<session id>.json     blobs/<sha256>

Compare-and-swap is S3's conditional writes: a create is ``PutObject`` with
``If-None-Match: *``, a replace ``PutObject`` with ``If-Match: <ETag read>``, a delete
``DeleteObject`` with ``If-Match``; the server answers 412 (or 409 when two conditional writes
race) to the loser, and we raise :class:`~claude_persist.errors.StoreConflictError`. The server
evaluates the condition and stores the object as one step: AWS S3 (conditional deletes in
general purpose buckets since September 2025), MinIO, Cloudflare R2 and Ceph RGW do. A server
that ignores ``If-Match`` on ``DeleteObject`` makes a delete unconditional: a lease released
late could then remove its successor's lease, and a concurrent call would be caught only by
the entry's own compare-and-swap at its push.

boto3 is imported only when such a store is opened (``pip install 'claude-persist[s3]'``).
Endpoint, region and credentials come the standard AWS way: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_DEFAULT_REGION`` (else ``AWS_REGION``), ``AWS_PROFILE``, the
access key variables, the shared config and credentials files, instance roles. Retries follow
``AWS_RETRY_MODE`` and ``AWS_MAX_ATTEMPTS`` when set, else three attempts in the standard mode.

Every request is bounded: a connection that does not open within :data:`CONNECT_TIMEOUT`, or an
answer that stops for :data:`READ_TIMEOUT`, fails the attempt, so a hung server costs at most
about ``attempts x READ_TIMEOUT`` (one minute with the defaults) per request before the store's
error (exit 75), instead of minutes past ``--lock-timeout``.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from ..errors import StoreError, StoreRecordError, UsageError
from .base import (
    RECORD_LIMIT,
    Document,
    Kind,
    SharedStore,
    check_digest,
    decode_name,
    digest_of,
    encode_name,
    envelope,
    new_token,
    open_envelope,
    what,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Seconds to open a connection, and to wait for the next bytes of an answer (per attempt).
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
#: Attempts per request (the first and the retries) unless AWS_MAX_ATTEMPTS says otherwise.
ATTEMPTS = 3

# botocore's loader of its data files (the S3 model, the endpoint rules), one per data path and
# process: a fresh session would parse them again for every store a process opens, which costs
# more than the requests of a resume. Everything else (credentials, endpoint, region) is still
# read afresh by each store's own session.
_loaders: dict[str, Any] = {}
_loaders_lock = threading.Lock()


def _shared_loader(session: Any) -> Any:
    from botocore.loaders import create_loader

    data_path = session.get_config_variable("data_path") or ""
    with _loaders_lock:
        if data_path not in _loaders:
            _loaders[data_path] = create_loader(data_path or None)
        return _loaders[data_path]

_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                     "InvalidToken", "TokenRefreshRequired"}
_UNSUPPORTED_CODES = {"NotImplemented", "501"}


class _Missing(Exception):
    """The key is not there (404), when the caller has something to say about it."""


class _Conflict(Exception):
    """The condition of a conditional request failed (412, 409)."""


class S3Store(SharedStore):
    """The S3 backend; see the module's docstring."""

    def __init__(self, bucket: str, prefix: str, url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix  # "" or ending in "/"
        self.url = url or f"s3://{bucket}/{prefix}"
        self.location = f"bucket {bucket!r}" + (f" (prefix {prefix!r})" if prefix else "")
        self._requests = itertools.count()
        self._sent = 0
        self.client = self._client(url or self.url)
        self.endpoint = self.client.meta.endpoint_url

    def _client(self, url: str) -> S3Client:
        try:
            import boto3  # noqa: F401  (the [s3] extra: botocore alone is not what we ask for)
            import botocore.session
            from botocore.config import Config
        except ImportError:
            raise UsageError(f"the store {url} needs boto3, which is not installed: "
                             "pip install 'claude-persist[s3]'") from None
        from botocore.exceptions import BotoCoreError

        config = Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                        user_agent_extra="claude-persist")
        if not os.environ.get("AWS_RETRY_MODE") and not os.environ.get("AWS_MAX_ATTEMPTS"):
            config = config.merge(Config(retries={"mode": "standard",
                                                  "total_max_attempts": ATTEMPTS}))
        try:
            session = botocore.session.get_session()
            session.register_component("data_loader", _shared_loader(session))
            # botocore reads AWS_DEFAULT_REGION only; AWS_REGION is what the other SDKs and
            # many CI set-ups set, so it counts too (after AWS_DEFAULT_REGION).
            region = None if os.environ.get("AWS_DEFAULT_REGION") else (
                os.environ.get("AWS_REGION") or None)
            client = cast("S3Client", session.create_client("s3", config=config,
                                                            region_name=region))
        except ValueError as exc:  # boto3's word for an endpoint that is not a URL
            endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3")
                        or os.environ.get("AWS_ENDPOINT_URL") or "the configured endpoint")
            raise UsageError(f"cannot open the shared store {self.location}: {exc}. The "
                             f"endpoint {endpoint!r} (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL "
                             "or endpoint_url in the AWS config) must be a URL such as "
                             "https://s3.example.com") from None
        except BotoCoreError as exc:  # a bad profile, a bad endpoint URL, ...
            raise StoreError(f"cannot open the shared store {self.location}: {exc}. Check "
                             "AWS_PROFILE, AWS_ENDPOINT_URL and the AWS config files.",
                             store=self.location, operation="open the store",
                             reason=str(exc)) from None
        client.meta.events.register("before-send.s3", self._count)
        return client

    def _count(self, **_: Any) -> None:
        self._sent = next(self._requests) + 1

    @property
    def requests(self) -> int:
        """HTTP requests sent so far (retries included): the round trips."""
        return self._sent

    def close(self) -> None:
        self.client.close()

    # -- errors ----------------------------------------------------------------------------

    @contextmanager
    def _calling(self, operation: str, *, conflicts: bool = False,
                 missing: bool = False) -> Iterator[None]:
        """Turn boto3's failures into ours: ``_Conflict`` / ``_Missing`` when the caller asked
        for them, a :class:`StoreError` naming the bucket and the operation otherwise."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if conflicts and (code in _CONFLICT_CODES or status in {"412", "409"}):
                raise _Conflict(code) from None
            if missing and (code in _MISSING_CODES or (status == "404"
                                                       and code != "NoSuchBucket")):
                raise _Missing(code) from None
            raise self._client_error(operation, code, status,
                                     str(error.get("Message", "") or exc)) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreError(
                f"cannot {operation} in the shared store {self.location}: no usable AWS "
                f"credentials ({exc}). Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE, or give the machine a role.",
                store=self.location, operation=operation, reason=str(exc)) from None
        except (ConnectionError, HTTPClientError) as exc:
            raise StoreError(
                f"cannot {operation} in the shared store {self.location}: the endpoint "
                f"{self.endpoint} cannot be reached ({exc}). Check AWS_ENDPOINT_URL and the "
                "network, then try again.",
                store=self.location, operation=operation, reason=str(exc)) from None
        except BotoCoreError as exc:
            raise StoreError(f"cannot {operation} in the shared store {self.location}: {exc}",
                             store=self.location, operation=operation,
                             reason=str(exc)) from None

    def _client_error(self, operation: str, code: str, status: str, message: str
                      ) -> StoreError:
        if code == "NoSuchBucket":
            why = (f"the bucket {self.bucket!r} does not exist at {self.endpoint}: create it, "
                   "or check the store URL and AWS_ENDPOINT_URL")
        elif code in _DENIED_CODES or status == "403":
            why = (f"access denied ({code}: {message}): the credentials in use may not do "
                   f"this in the bucket {self.bucket!r}; check their policy (the store needs "
                   "s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket)")
        elif code in _CREDENTIAL_CODES:
            why = f"the credentials were refused ({code}: {message}): check them"
        elif code in _UNSUPPORTED_CODES:
            why = (f"the server does not support this request ({code}: {message}); the "
                   "store needs conditional writes (If-None-Match and If-Match on PutObject, "
                   "If-Match on DeleteObject)")
        else:
            why = f"the server answered {code or status}: {message}"
        return StoreError(f"cannot {operation} in the shared store {self.location}: {why}.",
                          store=self.location, operation=operation, reason=f"{code} {message}")

    # -- records ---------------------------------------------------------------------------

    def _key(self, kind: Kind, name: str) -> str:
        return f"{self.prefix}{kind}/{encode_name(name)}.json"

    def _read(self, kind: Kind, name: str, operation: str) -> tuple[bytes, str] | None:
        try:
            with self._calling(operation, missing=True):
                answer = self.client.get_object(Bucket=self.bucket, Key=self._key(kind, name))
                with answer["Body"] as body:
                    raw = body.read(RECORD_LIMIT + 1)
        except _Missing:
            return None
        if len(raw) > RECORD_LIMIT:
            raise StoreRecordError(f"the shared store {self.location} holds a record over "
                                   f"{RECORD_LIMIT} bytes: {self._key(kind, name)}. Remove it.",
                                   store=self.location, operation=operation, reason="too big",
                                   key=self._key(kind, name))
        return raw, answer["ETag"]

    def where(self, kind: Kind, name: str) -> str:
        return f"{what(kind, name)} (key {self._key(kind, name)})"

    def get(self, kind: Kind, name: str) -> Document | None:
        read = self._read(kind, name, f"read {what(kind, name)}")
        if read is None:
            return None
        raw, etag = read
        data, write = open_envelope(raw, what(kind, name), self.location,
                                    f"key {self._key(kind, name)}")
        if data is None:
            return None
        return Document(data, etag, write)

    def version(self, kind: Kind, name: str) -> str | None:
        try:
            with self._calling(f"look up {what(kind, name)}", missing=True):
                answer = self.client.head_object(Bucket=self.bucket, Key=self._key(kind, name))
        except _Missing:
            return None
        return str(answer["ETag"])

    def put(self, kind: Kind, name: str, data: dict[str, Any], *,
            expect: str | None) -> str:
        verb = "create" if expect is None else "replace"
        operation = f"{verb} {what(kind, name)}"
        token = new_token()
        raw = envelope(data, token)
        key = self._key(kind, name)
        try:
            with self._calling(operation, conflicts=True, missing=expect is not None):
                if expect is None:
                    answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=raw,
                                                    ContentType="application/json",
                                                    IfNoneMatch="*")
                else:
                    answer = self.client.put_object(Bucket=self.bucket, Key=key, Body=raw,
                                                    ContentType="application/json",
                                                    IfMatch=expect)
            return answer["ETag"]
        except (_Conflict, _Missing) as lost:
            # A retried request whose first attempt went through meets its own write.
            current = self._read(kind, name, operation)
            if current is not None and _write_token(current[0]) == token:
                return current[1]
            why = ("it exists already" if expect is None
                   else "it does not exist (any more)" if isinstance(lost, _Missing)
                   else "another writer changed it since it was read")
            raise self.conflict(kind, name, verb, why) from None

    def delete(self, kind: Kind, name: str, *, expect: str) -> None:
        operation = f"delete {what(kind, name)}"
        try:
            with self._calling(operation, conflicts=True, missing=True):
                self.client.delete_object(Bucket=self.bucket, Key=self._key(kind, name),
                                          IfMatch=expect)
        except _Missing:
            raise self.conflict(kind, name, "delete", "it does not exist (any more)") from None
        except _Conflict:
            raise self.conflict(kind, name, "delete",
                                "another writer changed it since it was read") from None

    def names(self, kind: Kind) -> list[str]:
        operation = f"list the {kind} records"
        start = f"{self.prefix}{kind}/"
        found: list[str] = []
        with self._calling(operation):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    rest = item["Key"][len(start):]
                    if rest.endswith(".json") and "/" not in rest:
                        found.append(decode_name(rest[:-len(".json")]))
        return sorted(found)

    def self_check(self) -> list[str]:
        """Conditional writes on a probe object: a server that ignores ``If-None-Match`` or
        ``If-Match`` on PutObject cannot hold a store; one that ignores ``If-Match`` on
        DeleteObject gives a warning (deletes and lease releases become unconditional)."""
        operation = "check conditional writes"
        key = f"{self.prefix}probe/{new_token()}"
        wrong = '"00000000000000000000000000000000"'
        client = self.client

        def refused(call: Any) -> bool:
            try:
                with self._calling(operation, conflicts=True, missing=True):
                    call()
            except (_Conflict, _Missing):
                return True
            return False

        warnings: list[str] = []
        with self._calling(operation):
            client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
        try:
            problems = []
            if not refused(lambda: client.put_object(Bucket=self.bucket, Key=key, Body=b"2",
                                                     IfNoneMatch="*")):
                problems.append("If-None-Match: * on PutObject")
            if not refused(lambda: client.put_object(Bucket=self.bucket, Key=key, Body=b"3",
                                                     IfMatch=wrong)):
                problems.append("If-Match on PutObject")
            if problems:
                raise StoreError(
                    f"the S3 server at {self.endpoint} ignores {' and '.join(problems)}, so "
                    f"the shared store {self.location} could lose writes: use a server with "
                    "conditional writes (AWS S3, MinIO, Cloudflare R2, Ceph RGW).",
                    store=self.location, operation=operation, reason="no conditional writes")
            if not refused(lambda: client.delete_object(Bucket=self.bucket, Key=key,
                                                        IfMatch=wrong)):
                warnings.append(f"the S3 server at {self.endpoint} ignores If-Match on "
                                "DeleteObject: deletes and lease releases are unconditional")
        finally:
            with self._calling(operation):
                client.delete_object(Bucket=self.bucket, Key=key)
        return warnings

    # -- blobs -----------------------------------------------------------------------------

    def _blob_key(self, digest: str) -> str:
        return f"{self.prefix}blobs/{check_digest(digest)}"

    def put_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        try:
            with self._calling(f"write the blob {digest[:12]}", conflicts=True):
                self.client.put_object(Bucket=self.bucket, Key=self._blob_key(digest),
                                       Body=data, IfNoneMatch="*")
        except _Conflict:
            pass  # there already: the same bytes
        return digest

    def get_blob(self, digest: str) -> bytes:
        operation = f"read the blob {digest[:12]}"
        try:
            with self._calling(operation, missing=True):
                answer = self.client.get_object(Bucket=self.bucket, Key=self._blob_key(digest))
                with answer["Body"] as body:
                    data = body.read()
        except _Missing:
            raise StoreRecordError(
                f"the shared store {self.location} has no blob {self._blob_key(digest)}, "
                "which an entry names: it was removed (a lifecycle rule?). Run `claude-persist "
                "sync` on a machine that has the session: it uploads the missing blobs.",
                store=self.location, operation=operation, reason="missing",
                key=self._blob_key(digest)) from None
        if digest_of(data) != digest:
            raise StoreRecordError(
                f"the blob {self._blob_key(digest)} in the shared store {self.location} is "
                "damaged: its content does not match its sha256. Remove it, then run "
                "`claude-persist sync` on a machine that has the session.",
                store=self.location, operation=operation, reason="damaged",
                key=self._blob_key(digest))
        return data

    def has_blob(self, digest: str) -> bool:
        operation = f"look up the blob {digest[:12]}"
        try:
            with self._calling(operation, missing=True):
                self.client.head_object(Bucket=self.bucket, Key=self._blob_key(digest))
        except _Missing:
            # A HEAD's 404 has no body: tell a missing bucket from a missing blob.
            try:
                with self._calling(operation, missing=True):
                    self.client.head_bucket(Bucket=self.bucket)
            except _Missing:
                raise self._client_error(operation, "NoSuchBucket", "404", "") from None
            return False
        return True


def _write_token(raw: bytes) -> str | None:
    """The write token of stored bytes, or None when they are not a record of ours."""
    try:
        return open_envelope(raw, "", "")[1]
    except StoreError:
        return None
