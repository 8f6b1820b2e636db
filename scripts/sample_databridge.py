#!/usr/bin/env python3
"""Build the bundled sample "Databridge": a SQLite file standing in for the city's Oracle warehouse.

Three tables, deterministic (seeded) so reruns produce identical data:
  violations        2,000 points in EPSG:2272 (PA State Plane South, US ft), dates, timestamps across DST,
                    numbers, non-ASCII text
  zoning_districts  40 polygons mixing POLYGON and MULTIPOLYGON (EPSG:2272)
  permit_types      a lookup table without geometry
Geometry is WKT text; an OGC-style ``geometry_columns`` table records each layer's column and SRID.

Usage: python scripts/sample_databridge.py PATH.sqlite [--rows N]
"""
from __future__ import annotations

import argparse
import random
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path

STREETS = ["Market St", "Broad St", "Girard Ave", "Passyunk Ave", "Frankford Ave", "Germantown Ave", "Calle Peña", "Rue Café"]
STATUSES = ["OPEN", "CLOSED", "COMPLIED", "IN VIOLATION"]
NOTES = ["", "Owner notified — façade repair", "Señora García called", "Résumé of case: \"stairs\", rails, etc.", "multi-line\nnote", "中文注释", None]
PERMIT_TYPES = [
    ("BP_NEWCNST", "New construction", "Building", 350.0),
    ("BP_ALTER", "Alteration — interior", "Building", 125.5),
    ("EP_ELECTRL", "Electrical", "Trade", 80.25),
    ("PP_PLUMBNG", "Plumbing", "Trade", 80.25),
    ("ZP_USE", "Zoning use registration", "Zoning", 150.0),
    ("DM_DEMO", "Demolition", "Building", 410.0),
]


def build(path: Path, rows: int = 2000) -> Path:
    rng = random.Random(20190530)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE geometry_columns (f_table_name TEXT, f_geometry_column TEXT, geometry_type TEXT, srid INTEGER);
        CREATE TABLE violations (
            objectid INTEGER NOT NULL PRIMARY KEY, casenumber TEXT NOT NULL, violation_date DATE,
            inspected_at TIMESTAMP, address TEXT, fine_amount NUMERIC(12, 2), status TEXT, notes TEXT, shape TEXT);
        CREATE TABLE zoning_districts (objectid INTEGER NOT NULL PRIMARY KEY, code TEXT, long_code TEXT, pending BOOLEAN, shape TEXT);
        CREATE TABLE permit_types (code TEXT NOT NULL PRIMARY KEY, description TEXT, category TEXT, base_fee REAL, updated_at TIMESTAMP);
        INSERT INTO geometry_columns VALUES ('violations', 'shape', 'POINT', 2272), ('zoning_districts', 'shape', 'GEOMETRY', 2272);
        """
    )
    start = datetime(2024, 3, 9, 22, 0)  # spans the 2024-03-10 spring-forward in America/New_York
    for i in range(1, rows + 1):
        x, y = 2660000 + rng.random() * 70000, 210000 + rng.random() * 100000
        db.execute(
            "INSERT INTO violations VALUES (?,?,?,?,?,?,?,?,?)",
            (
                i, f"CF-24-{i:06d}", (date(2024, 1, 1) + timedelta(days=rng.randrange(300))).isoformat(),
                (start + timedelta(minutes=17 * i)).isoformat(sep=" "), f"{rng.randrange(100, 9999)} {rng.choice(STREETS)}",
                round(rng.random() * 2000, 2), rng.choice(STATUSES), rng.choice(NOTES), f"POINT ({x:.4f} {y:.4f})",
            ),
        )
    for i in range(1, 41):
        x, y = 2660000 + (i % 8) * 8000, 210000 + (i // 8) * 8000
        square = f"(({x} {y}, {x + 7000} {y}, {x + 7000} {y + 7000}, {x} {y + 7000}, {x} {y}))"
        if i % 3 == 0:
            inner = f"(({x + 7200} {y}, {x + 7800} {y}, {x + 7800} {y + 600}, {x + 7200} {y}))"
            wkt = f"MULTIPOLYGON ({square}, {inner})"
        else:
            wkt = f"POLYGON {square}"
        db.execute("INSERT INTO zoning_districts VALUES (?,?,?,?,?)", (i, rng.choice(["RSA-5", "CMX-2", "I-2", "SP-PO-A"]), f"District nº {i}", i % 5 == 0, wkt))
    for code, description, category, fee in PERMIT_TYPES:
        db.execute("INSERT INTO permit_types VALUES (?,?,?,?,?)", (code, description, category, fee, "2024-11-03 01:30:00"))
    db.commit()
    db.close()
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("path", type=Path)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    print(build(args.path, args.rows))
