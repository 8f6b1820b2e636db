"""Staged CSV rows → Esri JSON features for one layer: values converted by the layer's field types, keys and
content digests for comparing a staged row with a feature read back from the layer (upsert).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from ...config import AgoOptions
from ..esri_json import EsriGeometry, GeometryConversionError
from .client import AgoLoadError
from .item import LayerInfo

_HTML = re.compile(r"<\s*[A-Za-z/!?]|javascript:", re.I)


class RowConverter:
    """Staged CSV rows → Esri JSON features for one layer (values by the layer's field types)."""

    def __init__(self, dataset: Any, options: AgoOptions, layer: LayerInfo, table_schema: Any):
        self.dataset, self.options, self.layer = dataset, options, layer
        self.zone = ZoneInfo(getattr(dataset, "timezone", None) or "America/New_York")
        self.columns = list(table_schema.columns)
        self.geometry_column = table_schema.geometry.name if table_schema.geometry else None
        self.fields = layer.fields
        self.geometry = None
        if self.geometry_column and layer.json.get("geometryType"):
            self.geometry = EsriGeometry(layer.json["geometryType"], layer.wkid, bool(layer.json.get("hasZ")), bool(layer.json.get("hasM")),
                                         table_schema.geometry.srid)
        self.resolution = 1e-8 if layer.wkid == 4326 else 1e-4  # AGO's default xy resolution (degrees / projected units)

    def features(self, staged: Any) -> Iterator[tuple[int, dict[str, Any]]]:
        with staged.open_csv() as raw:
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            header = next(reader, None) or []
            for number, values in enumerate(reader, start=1):
                yield number, self.feature(number, dict(zip(header, values)))

    def batches(self, staged: Any, size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
        batch: list[tuple[int, dict[str, Any]]] = []
        for item in self.features(staged):
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def feature(self, row: int, values: dict[str, str]) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        geometry = None
        for column in self.columns:
            text = values.get(column.name, "")
            if column.name == self.geometry_column:
                if text and self.geometry is not None:
                    try:
                        geometry = self.geometry.convert(text)
                    except (GeometryConversionError, ValueError) as exc:
                        raise AgoLoadError(f"{self.dataset.id}: staged row {row}, column {column.name}: {exc}") from None
                continue
            if column.name.lower() == self.layer.oid_field.lower():
                continue  # AGO assigns OBJECTIDs; a staged objectid column is not sent
            f = self.fields[column.name.lower()]
            try:
                attrs[f["name"]] = self.value(f, column.type, text)
            except ValueError as exc:
                raise AgoLoadError(f"{self.dataset.id}: staged row {row}, column {column.name}: {exc}") from None
        feature: dict[str, Any] = {"attributes": attrs}
        if self.geometry is not None:
            feature["geometry"] = geometry
        return feature

    def value(self, f: dict[str, Any], staged_type: str, text: str) -> Any:
        if text == "":
            return None  # the CSV reader cannot tell NULL from "": both publish as null (as the City's tool does)
        t = f["type"]
        if t in ("esriFieldTypeString", "esriFieldTypeGUID"):
            if staged_type == "boolean":
                text = "true" if text.lower() in ("true", "t", "1") else "false"
            if _HTML.search(text):
                if self.options.html_text == "fail":
                    raise ValueError(f"{text[:40]!r} looks like HTML, which AGO rejects; set ago.html_text: clean to strip < > \" '")
                text = re.sub(r"[<>\"']", "", text)
            length = f.get("length")
            if length and len(text) > int(length):
                raise ValueError(f"{len(text)} characters, field {f['name']} holds {length}")
            return text
        if t in ("esriFieldTypeSmallInteger", "esriFieldTypeInteger", "esriFieldTypeBigInteger"):
            if staged_type == "boolean":
                return 1 if text.lower() in ("true", "t", "1") else 0
            number = float(text) if ("." in text or "e" in text.lower()) else int(text)
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(f"{text} is not an integer")
            return int(number)
        if t in ("esriFieldTypeDouble", "esriFieldTypeSingle"):
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(f"{text} cannot be stored in an AGO number field")
            return number
        if t == "esriFieldTypeDate":
            return _epoch_ms(text, self.zone)
        if t == "esriFieldTypeDateOnly":
            return text[:10]
        if t == "esriFieldTypeTimeOnly":
            return text[:8]
        if t == "esriFieldTypeTimestampOffset":
            moment = _parse_moment(text, self.zone)
            return moment.isoformat(timespec="seconds")
        return text

    def key_of(self, attrs: dict[str, Any], keys: list[str]) -> tuple[Any, ...]:
        lowered = {k.lower(): v for k, v in attrs.items()}
        return tuple(_norm(lowered.get(k)) for k in keys)

    def digest(self, attrs: dict[str, Any], geometry: dict[str, Any] | None) -> str:
        """What a row looks like on the layer: staged fields (names case-insensitive) and geometry rounded
        to the layer's resolution, so a row read back compares equal to the same row about to be sent."""
        lowered = {k.lower(): v for k, v in attrs.items()}
        oid = self.layer.oid_field.lower()
        values = [_norm(lowered.get(c.name.lower())) for c in self.columns if c.name != self.geometry_column and c.name.lower() != oid]
        shape = _round_geometry(geometry, self.resolution) if self.geometry is not None else None
        return hashlib.sha256(json.dumps([values, shape], sort_keys=True, default=str).encode()).hexdigest()


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _round_geometry(geometry: dict[str, Any] | None, resolution: float) -> Any:
    if not geometry:
        return None

    def r(v: Any) -> Any:
        if isinstance(v, list):
            return [r(x) for x in v]
        if isinstance(v, float) or isinstance(v, int):
            return round(round(v / resolution) * resolution, 10)
        return v

    return {k: r(v) for k, v in geometry.items() if k in ("x", "y", "z", "m", "points", "paths", "rings")}


def _parse_moment(text: str, zone: ZoneInfo) -> datetime:
    value = text.strip().replace(" ", "T", 1) if len(text) > 10 else text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    if len(value) == 10:
        moment = datetime.combine(date.fromisoformat(value), datetime.min.time())
    else:
        moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def _epoch_ms(text: str, zone: ZoneInfo) -> int:
    """Dates and timestamps → epoch milliseconds UTC (a date is midnight in the dataset's time zone)."""
    try:
        moment = _parse_moment(text, zone)
    except ValueError:
        raise ValueError(f"{text!r} is not a date or timestamp") from None
    return int(round(moment.timestamp() * 1000))
