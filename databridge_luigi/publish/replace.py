"""Replace in place: the live table keeps its identity (OID, grants, row-level security and policies,
triggers, views, materialized views, comments, sequences, CARTO's registration) and gets the new rows.

One statement in the commit transaction deletes every old row and inserts the shadow's. DELETE and INSERT
take ROW EXCLUSIVE, which no reader's ACCESS SHARE conflicts with: readers keep seeing the old rows until
the commit and never wait. The data-modifying CTEs share one snapshot, so the DELETE never sees the
inserted rows, and the marker row records the counts in the same statement.
"""
from __future__ import annotations

from .plan import CommitPlan

MODE = "replace"


def statements(plan: CommitPlan) -> list[str]:
    columns = plan.column_list()
    data = (f"WITH deleted AS (DELETE FROM {plan.live} RETURNING 1), "
            f"inserted AS (INSERT INTO {plan.live} ({columns}) SELECT {columns} FROM {plan.staged} RETURNING 1) ")
    counts = "(SELECT count(*) FROM inserted), 0, (SELECT count(*) FROM deleted), 0"
    return [data + plan.marker(MODE, counts), *plan.grant_statements()]
