"""What a commit needs to know, whatever the mode: the live table, the verified shadow, the columns the load
writes and the marker row. Each mode (replace.py, merge.py, swap.py) turns a plan into SQL statements."""
from __future__ import annotations

from dataclasses import dataclass

from . import sql


@dataclass(frozen=True)
class CommitPlan:
    dataset_id: str
    version: str
    schema: str
    table: str
    shadow: str
    columns: tuple[str, ...]  # written into the live table (the transport's own columns, e.g. cartodb_id, left out)
    rows: int  # staged = copied = counted rows
    fingerprint: str
    run_id: str
    seconds: float  # time spent up to the commit (recorded in the marker)
    grants: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    delete_stale: bool = True
    types: tuple[str, ...] = ()  # format_type of each column, aligned with ``columns`` (merge compares by type)
    changed_rows_only: bool = False  # the shadow holds an incremental extract's rows, not the whole table
    key_table: str | None = None  # then: every key the source holds (qualified), for delete_stale

    @property
    def live(self) -> str:
        return sql.qualified(self.schema, self.table)

    @property
    def staged(self) -> str:
        return sql.qualified(self.schema, self.shadow)

    def column_list(self, alias: str = "") -> str:
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + sql.ident(c) for c in self.columns)

    def marker(self, mode: str, counts: str, row_count_sql: str | None = None) -> str:
        return sql.insert_marker(self.schema, self.dataset_id, self.version, self.table, self.fingerprint, self.rows, True,
                                 mode=mode, run_id=self.run_id, seconds=self.seconds, counts=counts, row_count_sql=row_count_sql)

    def grant_statements(self) -> list[str]:
        return [f"GRANT SELECT ON {self.live} TO {sql.ident(user)}" for user in self.grants]
