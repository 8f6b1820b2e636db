"""Writing one layer: truncate, add in batches, ``applyEdits``, paged reads, counts, the schema check, indexes.

An edit that may have gone through (a timeout, a gateway error, a dropped connection) is never resent blindly:
the layer is counted first, and the edit is resent only if it is certain that it was not applied.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

from ..esri_json import ESRI_GEOMETRY_FOR
from .client import MAX_ATTEMPTS, AgoApiError, AgoLoadError
from .item import AgoItem, LayerInfo
from .rows import RowConverter

log = logging.getLogger(__package__)  # one logger for the AGO destination

RECOUNT_WAIT = 2.0  # AGO "has begun reporting the wrong number sometimes" right after a change (CITY)
SYSTEM_TYPES = ("esriFieldTypeOID", "esriFieldTypeGlobalID")

# Staged (Frictionless) type → the layer field types that can hold it.
COMPATIBLE = {
    "string": {"esriFieldTypeString", "esriFieldTypeGUID"},
    "integer": {"esriFieldTypeSmallInteger", "esriFieldTypeInteger", "esriFieldTypeBigInteger", "esriFieldTypeDouble"},
    "number": {"esriFieldTypeDouble", "esriFieldTypeSingle"},
    "float": {"esriFieldTypeDouble", "esriFieldTypeSingle"},
    "boolean": {"esriFieldTypeSmallInteger", "esriFieldTypeInteger", "esriFieldTypeString"},
    "date": {"esriFieldTypeDate", "esriFieldTypeDateOnly", "esriFieldTypeString"},
    "datetime": {"esriFieldTypeDate", "esriFieldTypeTimestampOffset", "esriFieldTypeString"},
    "timestamp": {"esriFieldTypeDate", "esriFieldTypeTimestampOffset", "esriFieldTypeString"},
    "time": {"esriFieldTypeTimeOnly", "esriFieldTypeString"},
    "object": {"esriFieldTypeString"},
    "array": {"esriFieldTypeString"},
}


class LayerWriter(AgoItem):
    """The operations the load modes are made of, on one layer of the dataset's item or sources."""

    # --- truncate and append -------------------------------------------------------------------------------------

    def _truncate(self, layer: LayerInfo) -> None:
        if not layer.json.get("supportsTruncate", False):
            raise AgoLoadError(f"{self.dataset.id}: {layer.url} does not support truncate (a view, or sync enabled)")
        self.status(f"truncating {layer.service_name}")
        body = self.client.post(f"{layer.admin_url}/truncate", "truncate", attachmentOnly="false", **{"async": "false"})
        if body.get("statusURL") or body.get("statusUrl"):
            self._wait_job(str(body.get("statusURL") or body.get("statusUrl")), f"truncate {layer.url}")
        elif not body.get("success"):
            raise AgoLoadError(f"{self.dataset.id}: truncate {layer.url} answered {body}")
        self._verify_count(layer, 0, "after truncate")

    def _wait_job(self, url: str, operation: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.2
        while time.monotonic() < deadline:
            status = str(self.client.get(url, f"{operation} status").get("status", "")).lower()
            if status in ("completed", "esrijobsucceeded"):
                return
            if status in ("failed", "esrijobfailed", "cancelled", "timedout"):
                raise AgoLoadError(f"{self.dataset.id}: {operation} job ended {status}")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AgoLoadError(f"{self.dataset.id}: {operation} job still running after {timeout:.0f}s")

    def count(self, layer: LayerInfo) -> int:
        return int(self.client.get(f"{layer.url}/query", "count", where="1=1", returnCountOnly="true")["count"])

    def _verify_count(self, layer: LayerInfo, expected: int, when: str) -> None:
        found = self.count(layer)
        if found != expected:  # AGO sometimes reports a stale count right after a change: look once more
            time.sleep(RECOUNT_WAIT)
            found = self.count(layer)
        if found != expected:
            raise AgoLoadError(f"{self.dataset.id}: {layer.url} holds {found} features {when}, expected {expected}")

    def _append(self, layer: LayerInfo, staged: Any, table_schema: Any, rows: int) -> None:
        converter = RowConverter(self.dataset, self.options, layer, table_schema)
        sent = 0
        for batch in converter.batches(staged, self.options.batch_size):
            features = [f for _, f in batch]
            self._add_batch(layer, features, batch[0][0], sent)
            sent += len(features)
            self.status(f"added {sent} of {rows} rows to {layer.service_name}")
            self._check_lease()

    def _add_batch(self, layer: LayerInfo, features: list[dict[str, Any]], first_row: int, before: int) -> None:
        payload = json.dumps(features, separators=(",", ":"), allow_nan=False)
        last_row = first_row + len(features) - 1
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                body = self.client.post(f"{layer.url}/addFeatures", f"addFeatures rows {first_row}–{last_row}",
                                        edit=True, features=payload, rollbackOnFailure="true")
            except AgoApiError as exc:
                if not exc.uncertain:
                    raise AgoLoadError(f"{self.dataset.id}: staged rows {first_row}–{last_row} were refused by {layer.url} "
                                       f"(batch rolled back): {exc}") from exc
                # It may have gone through (AGO answers "timed out" after committing): count before resending.
                time.sleep(RECOUNT_WAIT * (attempt - 1))
                found = self.count(layer)
                if found == before + len(features):
                    log.warning("%s: addFeatures rows %d–%d answered %s but went through", self.dataset.id, first_row, last_row, exc.message)
                    return
                if found != before:
                    raise AgoLoadError(f"{self.dataset.id}: after an uncertain addFeatures (rows {first_row}–{last_row}: {exc.message}) "
                                       f"{layer.url} holds {found} features, neither {before} nor {before + len(features)}") from exc
                log.warning("%s: addFeatures rows %d–%d did not go through (%s); resending", self.dataset.id, first_row, last_row, exc.message)
                continue
            results = body.get("addResults") or []
            failed = [(i, r) for i, r in enumerate(results) if not r.get("success")]
            if failed or len(results) != len(features):
                i, r = failed[0] if failed else (len(results), {"error": {"description": f"{len(results)} results for {len(features)} features"}})
                raise AgoLoadError(f"{self.dataset.id}: staged row {first_row + i} was refused by {layer.url}: "
                                   f"{(r.get('error') or {}).get('description')} (code {(r.get('error') or {}).get('code')})")
            return
        raise AgoLoadError(f"{self.dataset.id}: addFeatures rows {first_row}–{last_row} at {layer.url}/addFeatures did not go through after {MAX_ATTEMPTS} tries")

    # --- upsert edits --------------------------------------------------------------------------------------------

    def _read_all(self, layer: LayerInfo) -> Iterator[dict[str, Any]]:
        offset, page_size = 0, layer.max_records
        while True:
            page = self.client.get(f"{layer.url}/query", "read features", where="1=1", outFields="*", returnGeometry="true",
                                   orderByFields=layer.oid_field, resultOffset=str(offset), resultRecordCount=str(page_size),
                                   outSR=str(layer.wkid))
            features = page.get("features") or []
            yield from features
            offset += len(features)
            if not features or not page.get("exceededTransferLimit"):
                return

    def _apply(self, layer: LayerInfo, adds: list[tuple[int, dict[str, Any]]], updates: list[tuple[int, dict[str, Any]]],
               deletes: list[int], counts: dict[str, int]) -> None:
        if not (adds or updates or deletes):
            return
        data = {"adds": json.dumps([f for _, f in adds], allow_nan=False), "updates": json.dumps([f for _, f in updates], allow_nan=False),
                "deletes": ",".join(str(d) for d in deletes), "rollbackOnFailure": "true"}
        rows = [r for r, _ in adds + updates]
        label = f"applyEdits ({len(adds)} adds, {len(updates)} updates, {len(deletes)} deletes" + (f", staged rows {min(rows)}–{max(rows)})" if rows else ")")
        before = self.count(layer)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                body = self.client.post(f"{layer.url}/applyEdits", label, edit=True, **data)
            except AgoApiError as exc:
                if not exc.uncertain:
                    raise AgoLoadError(f"{self.dataset.id}: {label} refused by {layer.url} (rolled back): {exc}") from exc
                time.sleep(RECOUNT_WAIT * (attempt - 1))
                if self._edits_applied(layer, adds, updates, deletes, before):
                    log.warning("%s: %s answered %s but went through", self.dataset.id, label, exc.message)
                    break
                continue
            for kind, results, sent in (("add", body.get("addResults") or [], adds), ("update", body.get("updateResults") or [], updates)):
                for i, result in enumerate(results):
                    if not result.get("success"):
                        raise AgoLoadError(f"{self.dataset.id}: staged row {sent[i][0]} ({kind}) was refused by {layer.url}: "
                                           f"{(result.get('error') or {}).get('description')}")
            bad = [r for r in body.get("deleteResults") or [] if not r.get("success")]
            if bad:
                raise AgoLoadError(f"{self.dataset.id}: deleting OBJECTID {bad[0].get('objectId')} from {layer.url} failed: {(bad[0].get('error') or {}).get('description')}")
            break
        else:
            raise AgoLoadError(f"{self.dataset.id}: {label} at {layer.url}/applyEdits did not go through after {MAX_ATTEMPTS} tries")
        counts["inserted"] += len(adds)
        counts["updated"] += len(updates)
        counts["deleted"] += len(deletes)

    def _edits_applied(self, layer: LayerInfo, adds: list[Any], updates: list[Any], deletes: list[int], before: int) -> bool:
        """After an uncertain applyEdits (rollback on: all or nothing): did it go through?"""
        after = self.count(layer)
        if after == before + len(adds) - len(deletes) and (adds or deletes):
            return True
        if after != before:
            raise AgoLoadError(f"{self.dataset.id}: after an uncertain applyEdits {layer.url} holds {after} features, "
                               f"neither {before} nor {before + len(adds) - len(deletes)}")
        if adds or deletes or not updates:
            return False
        oid_field = layer.oid_field
        sample = updates[0][1]
        got = self.client.get(f"{layer.url}/query", "re-read edited feature", objectIds=str(sample["attributes"][oid_field]), outFields="*", returnGeometry="false")
        current = (got.get("features") or [{}])[0].get("attributes", {})
        return all(_same(current.get(k), v) for k, v in sample["attributes"].items())

    # --- schema and indexes --------------------------------------------------------------------------------

    def _check_schema(self, layer: LayerInfo, table_schema: Any) -> None:
        """Field names and types and the geometry type of the layer against the staged schema: a mismatch
        fails before anything changes."""
        fields = layer.fields
        problems = []
        geometry = table_schema.geometry
        for column in table_schema.columns:
            if (geometry is not None and column.name == geometry.name) or column.name.lower() == layer.oid_field.lower():
                continue  # the source's OBJECTID is not sent: AGO numbers features itself (ignored on add)
            found = fields.get(column.name.lower())
            if found is None:
                problems.append(f"no field {column.name}")
            elif found["type"] not in COMPATIBLE.get(column.type, {"esriFieldTypeString"}):
                problems.append(f"{column.name} is {found['type']}, staged as {column.type}")
        staged = {c.name.lower() for c in table_schema.columns}
        extra = [f["name"] for n, f in fields.items() if n not in staged and f["type"] not in SYSTEM_TYPES
                 and not n.startswith("shape__") and f.get("editable", True)]
        if extra:
            problems.append(f"fields not staged: {', '.join(extra)}")
        layer_geometry = layer.json.get("geometryType")
        if geometry is None and layer_geometry:
            problems.append(f"the layer has {layer_geometry} geometry, the staged table none")
        elif geometry is not None:
            base = (geometry.geometry_type or "geometry").lower().rstrip("zm") if geometry.geometry_type else "geometry"
            base = base if base in ESRI_GEOMETRY_FOR else (geometry.geometry_type or "").lower()
            for suffix in ("zm", "z", "m"):
                if base.endswith(suffix) and base[: -len(suffix)] in ESRI_GEOMETRY_FOR:
                    base = base[: -len(suffix)]
            wanted = ESRI_GEOMETRY_FOR.get(base)
            if not layer_geometry:
                problems.append("the layer is a table, the staged data has geometry")
            elif wanted is not None and wanted != layer_geometry:
                problems.append(f"the layer holds {layer_geometry}, staged geometry is {geometry.geometry_type}")
        if problems:
            raise AgoLoadError(f"{self.dataset.id}: schema of {layer.url} does not match the staged table — {'; '.join(problems)}. "
                               "Nothing was changed; fix the layer (addToDefinition) or the dataset's columns")

    def _indexes(self, layer: LayerInfo, table_schema: Any) -> None:
        existing = {str(i.get("fields", "")).replace(" ", "").lower() for i in layer.json.get("indexes") or []}
        for spec in getattr(self.dataset, "indexes", ()) or ():
            columns = [c.lower() for c in spec.split("+")]
            if any(c not in layer.fields for c in columns):
                log.warning("%s: index %s skipped: not a field of %s", self.dataset.id, spec, layer.url)
                continue
            names = [layer.fields[c]["name"] for c in columns]
            if ",".join(names).lower() in existing:
                continue
            index = {"name": f"{'_'.join(columns)}_idx"[:60], "fields": ",".join(names), "isUnique": False, "isAscending": True,
                     "description": "databridge-luigi"}
            try:
                self.client.post(f"{layer.admin_url}/addToDefinition", f"addToDefinition index {index['name']}",
                                 addToDefinition=json.dumps({"indexes": [index]}), **{"async": "false"})
            except AgoApiError as exc:
                if "invalid definition" not in exc.message.lower():
                    raise
                log.info("%s: index %s already on %s", self.dataset.id, index["name"], layer.url)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return bool(a == b)
