"""``AgoPublisher``: one staged version of one dataset onto AGO, under the lease, by the dataset's mode.

The load takes the lease, sends a catalog push left pending by an earlier run, records an unchanged table
without loading it, runs the mode (``modes.py``), writes the marker and then pushes to the catalog
(``push.py``). The pieces it is made of are its base classes: ``LoadModes`` (on ``LayerWriter`` and
``AgoItem``) and ``CatalogPush``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .client import AgoApiError, AgoLoadError
from .modes import LoadModes
from .push import CatalogPush

log = logging.getLogger(__package__)  # one logger for the AGO destination


@dataclass
class AgoResult:
    dataset_id: str
    version: str
    where: str
    rows: int
    rewritten: bool
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    swap_window: float | None = None
    pushed: bool = True


class AgoPublisher(LoadModes, CatalogPush):
    """Publishes one staged version of one dataset to AGO with the dataset's ``ago:`` options."""

    # --- the load ---------------------------------------------------------------------------------------------

    def load(self, staged: Any, force: bool = False) -> AgoResult:
        started = time.monotonic()
        manifest, table_schema = staged.manifest(), staged.schema()
        self._acquire_lease()
        try:
            _, state = self._state()
            # A push left over from an earlier run goes first; a failure is recorded again, never raised.
            self._retry_pending_push(state)
            published = state.get("published") or {}
            if not force and published.get("dataset") == self.dataset.id and published.get("fingerprint") == manifest.sha256:
                item, state = self._state()
                state = self._marker_state(state, manifest.version, manifest.sha256, manifest.rows, {}, published.get("source"))
                state["published"]["fingerprint"] = manifest.sha256
                state.pop("lease", None)
                self._write_state(item, state)
                log.info("%s: data unchanged since the last publish (sha256 %s…); recorded version %s in %s",
                         self.dataset.id, manifest.sha256[:12], manifest.version, self.where())
                return AgoResult(self.dataset.id, manifest.version, self.where(), manifest.rows, False, time.monotonic() - started)
            if manifest.rows == 0 and not self.dataset.allow_empty:
                raise AgoLoadError(f"{self.dataset.id}: refusing to publish an empty table to {self.where()} (set allow_empty: true)")
            if self.options.mode == "swap":
                counts, source, window = self._swap_load(staged, table_schema, manifest.rows)
            elif self.options.mode == "upsert":
                counts, source, window = self._upsert_load(staged, table_schema, manifest.rows), None, None
            else:
                counts, source, window = self._truncate_append_load(staged, table_schema, manifest.rows), None, None
            item, state = self._state()
            state = self._marker_state(state, manifest.version, manifest.sha256, manifest.rows, counts, source)
            changed = self.options.mode != "upsert" or any(counts.get(k) for k in ("inserted", "updated", "deleted"))
            if changed:
                state["pending_push"] = {"version": manifest.version, "rows": manifest.rows, "counts": counts,
                                         "webhook": bool(self.webhook_url), "revise": True}
            state.pop("lease", None)
            self._write_state(item, state)
        except BaseException as exc:
            self._release_quietly()
            if isinstance(exc, AgoApiError):
                raise AgoLoadError(f"{self.dataset.id}: {exc} (publish to {self.where()} stopped; {self._what_readers_see()})") from exc
            raise
        pushed = self._push(state) if changed else True
        elapsed = time.monotonic() - started
        log.info("%s: published %d rows to %s as version %s in %.1fs (%s)", self.dataset.id, manifest.rows, self.where(),
                 manifest.version, elapsed, ", ".join(f"{k} {v}" for k, v in counts.items()))
        return AgoResult(self.dataset.id, manifest.version, self.where(), manifest.rows, True, elapsed, counts, window, pushed)

    def _what_readers_see(self) -> str:
        return {"swap": "the view still shows the previous data", "upsert": "the layer holds the rows applied so far",
                "truncate_append": "the layer holds a partial load until the next run"}[self.options.mode]
