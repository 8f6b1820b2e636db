"""The three load modes, each a different answer to what readers see while AGO, which has no transactions, loads.

* ``swap`` (default): readers use a hosted feature layer *view*; the data lives in two source layers. A
  publish truncates and loads the source the view does not point at, verifies its count, adds indexes, then
  re-points the view (``deleteFromDefinition`` + ``addToDefinition`` on the view's admin service). Readers
  see the old rows until the switch and the new rows after; between the two admin calls the view has no
  layer (requests error, they never answer empty or partial). That window is measured and logged.
* ``upsert`` (``primary_key``): the layer is read once (paged by OBJECTID), rows are compared by key and by
  content, and only new/changed/stale rows are sent with ``applyEdits`` (``rollbackOnFailure``), deletes
  last. Readers never see an empty layer; during the load they see a mix of old and new rows.
* ``truncate_append`` (asked for explicitly): truncate, add in batches. Readers see an empty, then a growing
  layer for the whole load — the City's way, kept for layers that cannot have a view.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from ...connections import redact
from .client import AgoApiError, AgoLoadError
from .item import LayerInfo
from .layer import LayerWriter
from .rows import RowConverter

log = logging.getLogger(__package__)  # one logger for the AGO destination


class LoadModes(LayerWriter):
    """``_swap_load``, ``_upsert_load`` and ``_truncate_append_load``: one staged table into the item's layer(s)."""

    # --- swap ------------------------------------------------------------------------------------------------

    def _swap_load(self, staged: Any, table_schema: Any, rows: int) -> tuple[dict[str, int], str, float]:
        view_item = self.item(str(self.options.item))
        view_url = str(view_item.get("url") or "").rstrip("/")
        sources = self.client.get(f"{view_url}/sources", "read view sources").get("services") or []
        current = {s["name"] for s in sources}
        candidates = [self.layer_of(item_id) for item_id in self.options.sources]
        live = [c for c in candidates if c.service_name in current]
        if len(live) != 1:
            raise AgoLoadError(f"{self.dataset.id}: view {view_url} points at {sorted(current)}, not at exactly one of the configured sources "
                               f"{[c.service_name for c in candidates]}; point the view at one of them once")
        idle = next(c for c in candidates if c is not live[0])
        view_layer = self.client.post(f"{re.sub('/rest/services/', '/rest/admin/services/', view_url, flags=re.I)}/{self.options.layer}",
                                      "read view definition")
        self._check_schema(idle, table_schema)
        self._check_same_fields(idle, live[0])
        self.status(f"loading {idle.service_name} (idle source of the view)")
        self._truncate(idle)
        self._append(idle, staged, table_schema, rows)
        self._verify_count(idle, rows, "after loading the idle source")
        self._indexes(idle, table_schema)
        self._check_lease(renew=True)
        window = self._swap_view(view_url, view_layer, idle, live[0])
        return {"inserted": rows, "updated": 0, "deleted": 0, "unchanged": 0}, idle.service_name, window

    def _check_same_fields(self, idle: LayerInfo, live: LayerInfo) -> None:
        def shape(layer: LayerInfo) -> dict[str, str]:
            return {n: f["type"] for n, f in layer.fields.items() if not n.startswith("shape__")}
        if shape(idle) != shape(live) or idle.json.get("geometryType") != live.json.get("geometryType") or idle.wkid != live.wkid:
            raise AgoLoadError(f"{self.dataset.id}: the two sources {idle.service_name} and {live.service_name} differ in fields, geometry type "
                               f"or spatial reference; the view cannot be swapped between them")

    def _swap_view(self, view_url: str, view_layer: dict[str, Any], new: LayerInfo, old: LayerInfo) -> float:
        admin = re.sub("/rest/services/", "/rest/admin/services/", view_url, flags=re.I)
        definition = dict(view_layer)
        view_def = dict((definition.get("adminLayerInfo") or {}).get("viewLayerDefinition") or {})
        old_source = view_def.get("sourceServiceName", old.service_name)

        def layer_def(source: str) -> dict[str, Any]:
            keep = {k: v for k, v in definition.items() if k not in ("adminLayerInfo", "url", "currentVersion", "serviceItemId", "editingInfo")}
            return {**keep, "id": self.options.layer, "adminLayerInfo": {"viewLayerDefinition": {
                **view_def, "sourceServiceName": source, "sourceLayerId": self.options.layer,
                "sourceLayerFields": view_def.get("sourceLayerFields", "*")}}}

        self.status(f"switching the view to {new.service_name}")
        removed = {"layers": [{"id": self.options.layer}], "tables": []}
        self.client.post(f"{admin}/deleteFromDefinition", "view swap: deleteFromDefinition", deleteFromDefinition=json.dumps(removed), **{"async": "false"})
        gap_started = time.monotonic()
        try:
            self.client.post(f"{admin}/addToDefinition", "view swap: addToDefinition",
                             addToDefinition=json.dumps({"layers": [layer_def(new.service_name)]}), **{"async": "false"})
        except Exception as exc:
            try:  # put the old source back so readers keep the previous data
                self.client.post(f"{admin}/addToDefinition", "view swap: revert",
                                 addToDefinition=json.dumps({"layers": [layer_def(old_source)]}), **{"async": "false"})
                outcome = f"the view points at {old_source} again"
            except Exception as revert:
                outcome = f"THE VIEW HAS NO LAYER: re-adding {old_source} failed too ({redact(str(revert))})"
            raise AgoLoadError(f"{self.dataset.id}: switching view {view_url} to {new.service_name} failed ({redact(str(exc))}); {outcome}") from exc
        window = time.monotonic() - gap_started
        for url in (admin,):
            try:
                self.client.post(f"{url}/refresh", "view refresh")
            except AgoApiError as exc:
                log.warning("%s: refresh of %s failed (harmless): %s", self.dataset.id, url, exc)
        log.info("%s: view %s now reads %s (was %s); the view had no layer for %.1f ms between the two admin calls",
                 self.dataset.id, view_url, new.service_name, old_source, window * 1000)
        return window

    # --- truncate-append -----------------------------------------------------------------------------------------

    def _truncate_append_load(self, staged: Any, table_schema: Any, rows: int) -> dict[str, int]:
        target = self.layer_of(str(self.options.item))
        self._check_schema(target, table_schema)
        log.warning("%s: truncate_append on %s: readers see an empty, then a partial layer until the load ends", self.dataset.id, target.url)
        self._truncate(target)
        self._append(target, staged, table_schema, rows)
        self._verify_count(target, rows, "after truncate and append")
        self._indexes(target, table_schema)
        return {"inserted": rows, "updated": 0, "deleted": 0, "unchanged": 0}

    # --- upsert ------------------------------------------------------------------------------------------------

    def _upsert_load(self, staged: Any, table_schema: Any, rows: int) -> dict[str, int]:
        target = self.layer_of(str(self.options.item))
        keys = list(self.options.primary_key or getattr(self.dataset, "primary_key", ()) or ())
        if not keys:
            raise AgoLoadError(f"{self.dataset.id}: upsert mode needs primary_key (in ago: or the dataset)")
        self._check_schema(target, table_schema)
        missing = [k for k in keys if k not in table_schema.names]
        if missing:
            raise AgoLoadError(f"{self.dataset.id}: primary_key column(s) {missing} are not staged columns")
        converter = RowConverter(self.dataset, self.options, target, table_schema)
        self.status(f"reading {target.service_name} to compare")
        existing: dict[tuple[Any, ...], tuple[int, str]] = {}
        duplicates: list[int] = []
        for feature in self._read_all(target):
            attrs = feature["attributes"]
            key = converter.key_of(attrs, keys)
            oid = int(attrs[target.oid_field])
            if key in existing:
                duplicates.append(oid)  # a duplicate key in the layer is stale
                continue
            existing[key] = (oid, converter.digest(attrs, feature.get("geometry")))
        counts = {"inserted": 0, "updated": 0, "deleted": 0, "unchanged": 0}
        seen: set[tuple[Any, ...]] = set()
        adds: list[tuple[int, dict[str, Any]]] = []
        updates: list[tuple[int, dict[str, Any]]] = []
        for row_number, feature in converter.features(staged):
            key = converter.key_of(feature["attributes"], keys)
            if key in seen:
                raise AgoLoadError(f"{self.dataset.id}: staged row {row_number} repeats primary key {dict(zip(keys, key))}")
            seen.add(key)
            found = existing.get(key)
            if found is None:
                adds.append((row_number, feature))
            elif found[1] != converter.digest(feature["attributes"], feature.get("geometry")):
                feature["attributes"][target.oid_field] = found[0]
                updates.append((row_number, feature))
            else:
                counts["unchanged"] += 1
            if len(adds) + len(updates) >= self.options.batch_size:
                self._apply(target, adds, updates, [], counts)
                adds, updates = [], []
        self._apply(target, adds, updates, [], counts)
        stale = [oid for key, (oid, _) in existing.items() if key not in seen] + duplicates
        for start in range(0, len(stale), self.options.batch_size):
            self._apply(target, [], [], stale[start:start + self.options.batch_size], counts)
        self._verify_count(target, rows, "after the upsert")
        self._indexes(target, table_schema)
        return counts
