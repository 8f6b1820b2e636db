"""Loading a version of changed rows only (an incremental extract, ``manifest.delta``; see change/delta.py).

Such a version completes a table that holds its base version, so it is refused by one that does not; it is
merged by key, never swapped in; and with ``delete_stale`` its key set — every key the source held, staged as
``<dataset_id>__keys/<version>`` — is copied into a second shadow so the merge can delete the live rows whose key
is gone. The key table is named like a shadow (``<table>__shadow_<run>``), so a crashed run's is dropped by the
next loader of the table, as its shadow is.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ..staging import Manifest, StagedTable
from . import sql
from .lease import new_run_id


def base_problem(dataset_id: str, version: str, delta: dict[str, Any], latest: str | None, where: str) -> str | None:
    """Why ``where``, which holds version ``latest``, cannot take this version of changed rows (None: it can).
    Versions are fixed-width UTC timestamps, so a later one sorts after."""
    base = str(delta.get("base_version"))
    if latest is not None and latest >= base:
        return None
    now = f"holds version {latest}" if latest else "has no published version"
    return (f"{dataset_id}: version {version} holds only the rows changed since version {base} ({delta.get('column')} "
            f"newer than {delta.get('newest')}), but {where} {now}; publish the whole table first (Publish --force "
            "extracts every row); live table unchanged")


@dataclass(frozen=True)
class KeyTable:
    name: str  # in the load's schema
    rows: int


def staged_keys(staged: StagedTable, manifest: Manifest) -> StagedTable | None:
    """The version's staged key set, or None (no ``delete_stale``). An unchanged version names the data of the
    version it repeats, key set included."""
    keys = (manifest.delta or {}).get("keys")
    if not keys:
        return None
    return StagedTable(staged.store, str(keys["staged_as"]), manifest.extracted_version)


def copy_keys(transport: Any, schema: str, table: str, keys: StagedTable, unlogged: bool) -> KeyTable:
    """Create the key table and COPY the staged key set into it; the caller drops it (or the next loader does)."""
    key_schema = keys.schema()
    name = sql.shadow_name(table, new_run_id())
    transport.query(sql.create_table(schema, name, key_schema, unlogged))
    copied = transport.copy_in(sql.copy_from_stdin(schema, name, key_schema.names), keys)
    expected = keys.manifest().rows
    if copied != expected:
        raise RuntimeError(f"key set of {keys.describe()}: staged {expected} keys, copied {copied}")
    transport.query(f"ANALYZE {sql.qualified(schema, name)}")
    return KeyTable(name, copied)


def fingerprint(manifest: Manifest, keys: StagedTable | None) -> str:
    """What the marker records and a later load compares: the staged data's sha256 — and, with a key set
    (``staged_keys``), both together, so the same changed rows with fewer keys (a delete) are not taken for
    unchanged data."""
    if keys is None:
        return manifest.sha256
    return hashlib.sha256(f"{manifest.sha256}+keys:{keys.manifest().sha256}".encode()).hexdigest()
