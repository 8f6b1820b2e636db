"""Destinations: one load protocol (protocol.py) over two transports (postgis.py, carto.py)."""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from ..connections import resolve
from .contract import Transport


class UnsupportedDestination(ValueError):
    """A connection URL whose scheme no transport serves."""


def open_transport(name: str) -> Transport:
    """A transport for destination connection ``name``, chosen by its URL scheme."""
    url = resolve(name)
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from .postgis import PostgisTransport

        return PostgisTransport(name, url)
    if scheme in ("carto", "carto+http", "carto+https"):
        try:
            from .carto import CartoTransport
        except ImportError:
            raise UnsupportedDestination(f"connection {name!r}: the CARTO transport is not installed in this build") from None
        return CartoTransport(name, url)
    raise UnsupportedDestination(f"connection {name!r}: unsupported destination scheme {scheme!r} (use postgresql:// or carto://)")


class TransportPool:
    """One open transport per destination per process (never shared across a fork)."""

    def __init__(self) -> None:
        self._open: dict[tuple[int, str], Transport] = {}

    def get(self, name: str) -> Transport:
        key = (os.getpid(), name)
        if key not in self._open:
            self._open[key] = open_transport(name)
        return self._open[key]

    def discard(self, name: str) -> None:
        transport = self._open.pop((os.getpid(), name), None)
        if transport is not None:
            try:
                transport.close()
            except Exception:  # closing a broken connection must not mask the error that broke it
                pass

    def close_all(self) -> None:
        for _, name in list(self._open):
            self.discard(name)


transports = TransportPool()
# The loads' lease connections (lease.py: taking, renewing while the loader's connection COPYs, releasing), kept
# like the loaders' own: a PublishAll in one process opens one, not one per dataset.
keepers = TransportPool()
