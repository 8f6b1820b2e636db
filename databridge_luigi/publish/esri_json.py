"""EWKT (what staging holds) → Esri JSON geometry in a layer's spatial reference.

Esri polygons are one flat ``rings`` list: exterior rings clockwise, holes counter-clockwise, every part's
rings together (arcgis-online.md §3.1). OGC WKT guarantees no winding, so every ring is re-oriented here.
Coordinates are reprojected client-side with pyproj (``always_xy``) when the staged SRID differs from the
layer's; a server-side projection of edits is only a user report (§3.2), so we do not rely on it.
Z and M are kept when the layer has them and dropped when it does not.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

# Esri's own codes for EPSG ones (wkid → latestWkid) that layers report.
WKID_LATEST = {102100: 3857, 102113: 3857, 900913: 3857, 102729: 2272, 102728: 2271}
_SRID = re.compile(r"^\s*SRID=(\d+);", re.I)
_TOKEN = re.compile(r"\s*([A-Za-z]+|\(|\)|,|[-+0-9.eE]+|NaN)")


class GeometryConversionError(ValueError):
    """A geometry that cannot be sent to the layer (the caller adds dataset, row and column)."""


def latest_wkid(wkid: int) -> int:
    return WKID_LATEST.get(wkid, wkid)


@lru_cache(maxsize=16)
def _transformer(source: int, target: int) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs(f"EPSG:{source}", f"EPSG:{target}", always_xy=True)


def parse_ewkt(text: str) -> tuple[int | None, str, str, Any]:
    """``SRID=n;WKT`` → (srid, base type upper-case, dims '', 'Z', 'M' or 'ZM', nested coordinate lists).
    EMPTY geometries give coordinates None."""
    srid = None
    match = _SRID.match(text)
    if match:
        srid, text = int(match.group(1)), text[match.end():]
    tokens = [t for t in _TOKEN.findall(text) if t]
    if not tokens:
        raise GeometryConversionError(f"not WKT: {text[:60]!r}")
    pos = 0
    name = tokens[pos].upper()
    pos += 1
    dims = ""
    if name.endswith("ZM") and name != "ZM":
        name, dims = name[:-2], "ZM"
    elif name.endswith("M") and name[:-1] in ("POINT", "LINESTRING", "POLYGON", "MULTIPOINT", "MULTILINESTRING", "MULTIPOLYGON"):
        name, dims = name[:-1], "M"
    if pos < len(tokens) and tokens[pos].upper() in ("Z", "M", "ZM"):
        dims = tokens[pos].upper()
        pos += 1
    if pos < len(tokens) and tokens[pos].upper() == "EMPTY":
        return srid, name, dims, None
    if name == "GEOMETRYCOLLECTION":
        raise GeometryConversionError("a GEOMETRYCOLLECTION has no Esri JSON form for a feature layer")

    def nested() -> Any:
        nonlocal pos
        if tokens[pos] != "(":
            raise GeometryConversionError(f"bad WKT near {' '.join(tokens[pos:pos + 5])!r}")
        pos += 1
        items: list[Any] = []
        while True:
            if tokens[pos] == "(":
                items.append(nested())
            elif tokens[pos].upper() == "EMPTY":
                items.append(None)
                pos += 1
            else:
                coord = []
                while tokens[pos] not in (",", ")"):
                    coord.append(float(tokens[pos]))
                    pos += 1
                items.append(coord)
            if tokens[pos] == ",":
                pos += 1
                continue
            if tokens[pos] == ")":
                pos += 1
                return items
            raise GeometryConversionError("bad WKT")

    try:
        coords = nested()
    except (IndexError, ValueError) as exc:
        raise GeometryConversionError(f"bad WKT {text[:60]!r}: {exc}") from None
    if not dims and coords:  # EWKT writes 3-D without a tag: POINT(1 2 3)
        first = coords
        while first and isinstance(first[0], list):
            first = first[0]
        dims = {3: "Z", 4: "ZM"}.get(len(first), "")
    return srid, name, dims, coords


def signed_area(ring: list[list[float]]) -> float:
    """Positive for counter-clockwise rings (shoelace over x, y)."""
    return sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:])) / 2.0


def _oriented(ring: list[list[float]], clockwise: bool) -> list[list[float]]:
    area = signed_area(ring)
    if (area < 0) == clockwise or area == 0:
        return ring
    return list(reversed(ring))


class EsriGeometry:
    """Converts EWKT values for one layer: its geometry type, spatial reference and Z/M support."""

    def __init__(self, geometry_type: str, wkid: int, has_z: bool = False, has_m: bool = False, source_srid: int | None = None):
        self.geometry_type, self.wkid, self.has_z, self.has_m = geometry_type, wkid, has_z, has_m
        self.source_srid = source_srid

    def _point(self, coord: list[float], dims: str, transform: Any) -> list[float]:
        x, y = coord[0], coord[1]
        if transform is not None:
            x, y = transform.transform(x, y)
        rest = coord[2:]
        z = rest[0] if "Z" in dims and rest else None
        m = rest[-1] if "M" in dims and rest else None
        out = [x, y]
        if self.has_z:
            out.append(z if z is not None else 0.0)
        if self.has_m:
            out.append(m)  # type: ignore[arg-type]
        return out

    def convert(self, ewkt: str) -> dict[str, Any] | None:
        srid, name, dims, coords = parse_ewkt(ewkt)
        srid = srid or self.source_srid
        if srid is None:
            raise GeometryConversionError("geometry has no SRID")
        transform = None if latest_wkid(srid) == latest_wkid(self.wkid) else _transformer(latest_wkid(srid), latest_wkid(self.wkid))
        flags: dict[str, Any] = {}
        if self.has_z:
            flags["hasZ"] = True
        if self.has_m:
            flags["hasM"] = True
        sr = {"spatialReference": {"wkid": self.wkid}}
        expected = {"POINT": "esriGeometryPoint", "MULTIPOINT": "esriGeometryMultipoint", "LINESTRING": "esriGeometryPolyline",
                    "MULTILINESTRING": "esriGeometryPolyline", "POLYGON": "esriGeometryPolygon",
                    "MULTIPOLYGON": "esriGeometryPolygon"}.get(name)
        if expected is None:
            raise GeometryConversionError(f"unsupported geometry type {name}")
        if expected != self.geometry_type:
            raise GeometryConversionError(f"a {name} cannot go into a layer of {self.geometry_type}")
        if coords is None:
            return None  # EMPTY: no geometry
        if name == "POINT":
            p = self._point(coords[0] if coords and isinstance(coords[0], list) else coords, dims, transform)
            out: dict[str, Any] = {"x": p[0], "y": p[1]}
            if self.has_z:
                out["z"] = p[2]
            if self.has_m:
                out["m"] = p[-1]
            return {**out, **sr}
        if name == "MULTIPOINT":
            points = [c[0] if c and isinstance(c[0], list) else c for c in coords if c]
            return {**flags, "points": [self._point(c, dims, transform) for c in points], **sr}
        if name == "LINESTRING":
            return {**flags, "paths": [[self._point(c, dims, transform) for c in coords]], **sr}
        if name == "MULTILINESTRING":
            return {**flags, "paths": [[self._point(c, dims, transform) for c in path] for path in coords if path], **sr}
        polygons = [coords] if name == "POLYGON" else [p for p in coords if p]
        rings: list[list[list[float]]] = []
        for polygon in polygons:
            for index, ring in enumerate(r for r in polygon if r):
                points = [self._point(c, dims, transform) for c in ring]
                if points[0][:2] != points[-1][:2]:
                    points.append(list(points[0]))
                rings.append(_oriented(points, clockwise=index == 0))
        return {**flags, "rings": rings, **sr}


ESRI_GEOMETRY_FOR = {
    "point": "esriGeometryPoint", "multipoint": "esriGeometryMultipoint", "linestring": "esriGeometryPolyline",
    "line": "esriGeometryPolyline", "multilinestring": "esriGeometryPolyline", "polygon": "esriGeometryPolygon",
    "multipolygon": "esriGeometryPolygon",
}
