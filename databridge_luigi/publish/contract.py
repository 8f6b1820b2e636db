"""What a load takes and gives, whatever the transport: the ``Transport`` interface (a direct PostGIS connection
or CARTO's HTTP APIs), the per-run ``LoadSettings``, the ``LoadResult`` and the ``LoadError`` of a load that stopped
before its commit. The protocol itself is protocol.py."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Dataset
from ..schema import TableSchema
from ..staging import StagedTable
from .locks import LockPolicy


class LoadError(RuntimeError):
    """A load that stopped before the commit; the live table is unchanged."""


class Transport(Protocol):
    """How SQL reaches a destination: a direct PostGIS connection or CARTO's HTTP APIs."""

    name: str
    default_schema: str

    def query(self, statement: str) -> list[dict[str, Any]]: ...
    def long_query(self, statement: str) -> None: ...
    def transaction(self, statements: list[str]) -> None: ...
    # create: the statement that makes the table, run in the COPY's own transaction where the transport can
    # (PostgreSQL skips the free-space map of a table new in the transaction: ~8 ms less per 10k rows), else first
    def copy_in(self, copy_statement: str, staged: StagedTable, create: str | None = None) -> int: ...
    def finish_shadow(self, schema: str, shadow: str, table_schema: TableSchema) -> None: ...
    def post_swap(self, schema: str, table: str, table_schema: TableSchema, dataset: Dataset) -> None: ...
    def index_columns(self, dataset: Dataset, table_schema: TableSchema) -> list[list[str]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class LoadSettings:
    """Per-run knobs (luigi.cfg ``[databridge]``; see tasks.py)."""

    default_mode: str = "replace"  # for datasets without load_mode (merge when a primary_key is named)
    lease_seconds: float = 120.0
    lease_wait: float = 300.0  # how long a second loader of a table waits for the first
    locks: LockPolicy = field(default_factory=LockPolicy)


@dataclass(frozen=True)
class LoadResult:
    dataset_id: str
    version: str
    where: str  # transport:schema.table
    rows: int
    rewritten: bool
    seconds: float
    mode: str = ""
    counts: dict[str, int | None] = field(default_factory=dict)  # inserted, updated, deleted, unchanged

    def summary(self) -> str:
        shown = ", ".join(f"{v} {k}" for k, v in self.counts.items() if v is not None)
        return f"{self.mode}: {shown}" if shown else self.mode


Status = Callable[[str], None]
