"""The luigi wiring, used by ``tasks.LoadAgo`` and the CLI: one client per connection per process, the
publisher of a dataset, ``publish_to_ago`` and the completion target ``AgoPublishedTarget``.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from ...connections import resolve
from ..catalog import webhook_url
from .client import AgoClient, AgoLoadError, parse_connection
from .publisher import AgoPublisher, AgoResult

_clients: dict[tuple[int, str, str], AgoClient] = {}


def client_for(conn: str) -> AgoClient:
    """One client (one token) per connection per process, so completion checks do not each log in."""
    url = resolve(conn)
    key = (os.getpid(), conn, hashlib.sha256(url.encode()).hexdigest())  # a rotated secret gets a new client
    if key not in _clients:
        _clients[key] = AgoClient(parse_connection(conn, url))
    return _clients[key]


def publisher_for(dataset: Any, status: Callable[[str], None] = lambda m: None) -> AgoPublisher:
    if dataset.ago is None:
        raise AgoLoadError(f"{dataset.id}: no ago: block (upload_to_ago needs one)")
    return AgoPublisher(dataset, dataset.ago, client_for(dataset.ago.conn), status, webhook_url(dataset))


def publish_to_ago(dataset: Any, staged: Any, version: str, force: bool = False,
                   status: Callable[[str], None] = lambda m: None) -> AgoResult:
    """Publish ``staged`` unless this version is already recorded (then only a pending catalog push runs)."""
    publisher = publisher_for(dataset, status)
    if not force:
        _, state = publisher._state()
        if version in (state.get("versions") or {}).get(dataset.id, []):
            pushed = publisher.push_pending()
            return AgoResult(dataset.id, version, publisher.where(), int((state.get("published") or {}).get("rows", 0)), False, 0.0, pushed=pushed)
    return publisher.load(staged, force=force)


class AgoPublishedTarget:
    """Exists when the item's properties record this dataset version and no catalog push is pending."""

    def __init__(self, dataset: Any, version: str):
        self.dataset, self.version = dataset, version

    def exists(self) -> bool:
        return publisher_for(self.dataset).is_published(self.version)

    def __repr__(self) -> str:
        ago = self.dataset.ago
        return f"AgoPublishedTarget({ago.conn if ago else '-'}:item {ago.item if ago else '-'}@{self.version})"
