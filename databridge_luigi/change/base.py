"""What the signal readers share: ``SignalUnavailable`` (no trustworthy signal, and why) and quoting an
identifier for the source's SQL (PostgreSQL and Oracle quote alike)."""
from __future__ import annotations


class SignalUnavailable(Exception):
    """The source gives no trustworthy signal for this dataset (the reason is the message)."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
