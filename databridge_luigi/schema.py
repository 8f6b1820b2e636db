"""Table schema: the old system's JSON schema format (Frictionless-like, plus ``geometry_type`` and ``srid``)
and the map from it to PostgreSQL column types.

Producers (sources) describe columns with the types below; the load protocol turns them into DDL. Old
schema files may carry raw PostgreSQL type names (``text``, ``numeric``): those pass through unchanged.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

# Frictionless types we produce → PostgreSQL types. Unknown names pass through (the old loader did the same).
PG_TYPES = {
    "string": "text",
    "integer": "bigint",
    "number": "numeric",
    "float": "numeric",
    "double precision": "numeric",
    "boolean": "boolean",
    "date": "date",
    "time": "time",
    "datetime": "timestamptz",
    "timestamp": "timestamptz",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamptz",
    "object": "jsonb",
    "array": "jsonb",
}
GEOMETRY_TYPES = {
    "point": "Point",
    "multipoint": "MultiPoint",
    "line": "LineString",
    "linestring": "LineString",
    "multilinestring": "MultiLineString",
    "polygon": "Polygon",
    "multipolygon": "MultiPolygon",
    "geometrycollection": "GeometryCollection",
    "geometry": "Geometry",
}


class SchemaError(ValueError):
    """A schema that cannot be turned into a table."""


# A PostgreSQL type name as a schema file may spell it: words, an optional (precision[, scale]), array brackets
# ("numeric(12,2)", "character varying(20)", "timestamp(3) with time zone", "text[]"). Anything else — quotes,
# semicolons, comments — would be SQL pasted into CREATE TABLE and is refused.
_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?[A-Za-z0-9_ ]*(\[\d*\])*$")


def check_type_name(column: str, type_name: str) -> str:
    if not _TYPE_NAME.match(type_name) or "--" in type_name:
        raise SchemaError(f"column {column!r}: {type_name!r} is not a type name (e.g. string, integer, numeric(12,2), text[])")
    return type_name


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool = False
    geometry_type: str | None = None  # lower-case key of GEOMETRY_TYPES, optionally suffixed z/m/zm
    srid: int | None = None

    @property
    def is_geometry(self) -> bool:
        return self.type in ("geometry", "geom")

    def pg_type(self) -> str:
        if self.is_geometry:
            if self.srid is None:
                raise SchemaError(f"geometry column {self.name!r} has no srid")
            return f"geometry({geometry_typmod(self.geometry_type or 'geometry')}, {int(self.srid)})"
        return check_type_name(self.name, PG_TYPES.get(self.type, self.type))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.required:
            out["constraints"] = {"required": True}
        if self.is_geometry:
            out["geometry_type"] = self.geometry_type or "geometry"
            out["srid"] = self.srid
        return out


def split_dimensions(geometry_type: str) -> tuple[str, str]:
    """``multipolygonz`` → (``multipolygon``, ``z``); the base must be a known geometry type."""
    name = geometry_type.lower().replace(" ", "")
    for suffix in ("zm", "z", "m"):
        if name.endswith(suffix) and name[: -len(suffix)] in GEOMETRY_TYPES:
            return name[: -len(suffix)], suffix
    if name not in GEOMETRY_TYPES:
        raise SchemaError(f"unknown geometry_type {geometry_type!r}")
    return name, ""


def geometry_typmod(geometry_type: str) -> str:
    """``multipolygonz`` → ``MultiPolygonZ`` (the PostGIS typmod spelling)."""
    base, dims = split_dimensions(geometry_type)
    return GEOMETRY_TYPES[base] + dims.upper()


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def geometry(self) -> Column | None:
        return next((c for c in self.columns if c.is_geometry), None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fields": [c.to_json() for c in self.columns], "missingValues": [""]}
        if self.primary_key:
            out["primaryKey"] = list(self.primary_key)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TableSchema":
        try:
            fields = data["fields"]
            columns = tuple(
                Column(
                    name=str(f["name"]),
                    type=str(f["type"]),
                    required=bool((f.get("constraints") or {}).get("required", False)),
                    geometry_type=f.get("geometry_type"),
                    srid=int(f["srid"]) if f.get("srid") is not None else None,
                )
                for f in fields
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"not a table schema (fields with name and type): {exc}") from None
        for column in columns:
            if not column.is_geometry:
                check_type_name(column.name, PG_TYPES.get(column.type, column.type))
            elif column.geometry_type:
                split_dimensions(column.geometry_type)
        return cls(columns=columns, primary_key=tuple(data.get("primaryKey") or ()))

    @classmethod
    def loads(cls, text: str) -> "TableSchema":
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"schema is not JSON: {exc}") from None

    def with_overrides(self, override: "TableSchema") -> "TableSchema":
        """Apply a per-dataset override file: fields named there replace type/geometry facts, order is kept."""
        by_name = {c.name: c for c in override.columns}
        unknown = set(by_name) - set(self.names)
        if unknown:
            raise SchemaError(f"schema override names columns the source does not have: {sorted(unknown)}")
        columns = tuple(
            replace(c, type=o.type, geometry_type=o.geometry_type or c.geometry_type, srid=o.srid or c.srid) if (o := by_name.get(c.name)) else c
            for c in self.columns
        )
        return replace(self, columns=columns, primary_key=override.primary_key or self.primary_key)


def geometry_type_from_seen(seen: set[str]) -> str:
    """The typmod for a column from the geometry types seen in the data (``point``, ``polygonz``…): one type
    keeps it, a mix (e.g. Polygon + MultiPolygon) becomes generic ``geometry``; Z/M dimensions are kept."""
    split = {split_dimensions(t) for t in seen}
    bases = {base for base, _ in split}
    dims = {dim for _, dim in split}
    if len(dims) > 1:  # a PostGIS column has one dimensionality: 2-D and Z (or M) shapes cannot share it
        raise SchemaError(
            f"geometries of different dimensions in one column ({', '.join(sorted(seen))}); PostGIS cannot store them "
            "in one column — make them uniform in the source (e.g. ST_Force2D)"
        )
    base = bases.pop() if len(bases) == 1 else "geometry"
    dim = dims.pop() if dims else ""
    return base + dim
