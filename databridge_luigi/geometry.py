"""EWKT text: the one geometry form that leaves a source (``SRID=n;WKT``, the SRID exactly once)."""
from __future__ import annotations

import re

_SRID_PREFIX = re.compile(r"^\s*SRID=(\d+);", re.I)
_TYPE = re.compile(r"^\s*([A-Za-z]+)\s*(ZM|Z|M)?\s*(\(|EMPTY)", re.I)
ESRI_NAN = re.compile(r"-?1\.#(?:QNAN|IND)[0-9]*", re.I)
_FIRST_COORD = re.compile(r"\(\s*\(*\s*([^,()]+)")


class GeometryError(ValueError):
    """A geometry value that cannot be published (named with its SRID and text)."""


def to_ewkt(value: str, srid: int | None) -> str | None:
    """Normalize WKT or EWKT to ``SRID=n;WKT``. Idempotent: a value that already has ``SRID=`` (even twice,
    as the old geocoder + loader produced) keeps one. Blank and EMPTY geometries become None (NULL). Esri's
    text for a null measure or Z (``1.#QNAN000``, ``-1.#IND00``: Windows' printf of NaN, seen from Oracle SDE
    ZM shapes) becomes ``NaN``, which PostGIS stores."""
    text = value.strip()
    if "#" in text:
        text = ESRI_NAN.sub("NaN", text)
    found: int | None = None
    while (match := _SRID_PREFIX.match(text)):
        prefix_srid = int(match.group(1))
        if found is not None and prefix_srid != found:
            raise GeometryError(f"conflicting SRIDs {found} and {prefix_srid} in {value[:60]!r}")
        found = prefix_srid
        text = text[match.end():].lstrip()
    if not text or text.upper().endswith("EMPTY"):
        return None
    if found is not None and srid is not None and found != srid:
        raise GeometryError(f"geometry has SRID {found} but the column is declared SRID {srid}")
    final = found if found is not None else srid
    if final is None:
        raise GeometryError("geometry has no SRID and none is configured (set geometry.srid)")
    return f"SRID={final};{text}"


def ewkt_type(ewkt: str) -> str:
    """Lower-case geometry type with dimension suffix, e.g. ``multipolygon``, ``pointz``, ``linestringzm``.
    EWKT writes 3-D without a Z tag (``POINT(1 2 3)``), so an untagged value's dimension is counted."""
    text = _SRID_PREFIX.sub("", ewkt, count=1)
    match = _TYPE.match(text)
    if not match:
        raise GeometryError(f"not WKT: {ewkt[:60]!r}")
    name, tag = match.group(1).lower(), (match.group(2) or "").lower()
    if not tag and (coord := _FIRST_COORD.search(text, match.start(3))):
        ordinates = len(coord.group(1).split())
        tag = {3: "m" if name.endswith("m") else "z", 4: "zm"}.get(ordinates, "")
    if name.endswith("m") and name[:-1] in ("point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon", "geometrycollection"):
        name, tag = name[:-1], "m"  # POINTM(…) is EWKT's spelling of a measured point
    return name + tag
