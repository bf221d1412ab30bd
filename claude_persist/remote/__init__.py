"""Shared session stores: many machines, one set of named sessions.

* :mod:`.base`: the interface (:class:`SharedStore`: records read with a version and written
  compare-and-swap, content-addressed blobs);
* :mod:`.dirstore` (``dir:/path``) and :mod:`.s3store` (``s3://bucket/prefix``): the backends;
* :mod:`.url`: store URLs (``--store``, ``store:``, ``CLAUDE_PERSIST_STORE``);
* :mod:`.lease`: one holder per session across machines, renewed while a call runs.

Nothing here is imported by the rest of the package unless a store is configured; boto3 is
imported only when an ``s3://`` store is opened.
"""

from __future__ import annotations

from .base import Document, Kind, SharedStore
from .lease import DEFAULT_TTL, Lease, LeaseInfo, acquire, break_lease, held, read_lease
from .url import StoreURL, open_store, parse_store_url

__all__ = [
    "DEFAULT_TTL",
    "Document",
    "Kind",
    "Lease",
    "LeaseInfo",
    "SharedStore",
    "StoreURL",
    "acquire",
    "break_lease",
    "held",
    "open_store",
    "parse_store_url",
    "read_lease",
]
