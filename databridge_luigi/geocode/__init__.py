"""Geocoding: a staged table in → the same rows with geocoded fields → a staged table out.

``geocode_table(dataset, source, target, progress)`` is what the ``Geocode`` task runs (config: the
dataset's ``geocode:`` block, ``config.GeocodeOptions``):

1. Stream the source CSV once; for each row join the non-empty ``query_fields`` with spaces and collect the
   distinct normalized queries (upper case, whitespace collapsed; census adds ``|<zip>``).
2. Answer what the cache (``cache.py``) holds and is younger than ``cache_max_age_days``; ask the provider
   only for the rest (AIS: one request per query, ``max_in_flight`` at a time at ``rate_per_second``;
   Census: batches of 10,000). New answers, misses included, go into the cache, rewritten once.
3. Stream the source again and write each row with the requested ``fields`` appended (minus
   ``remove_fields``).

Acceptance (AIS): a feature counts when it is an ``address`` (``address_only``, default; intersections and
the rest are misses), its ``match_type`` is not ``unmatched`` (unless ``allow_estimates``; ``estimate=false``
is also sent) and, when lat/lon/shape are wanted, it has coordinates. Among several accepted features the
first whose ``zip_code`` equals the row's ``zip_field`` wins, else the first. Census: ``Match`` is a hit;
``No_Match`` and ``Tie`` are misses.

Columns: ``lat``/``lon`` are numbers (in ``srid``: feet for 2272), ``shape`` is EWKT ``SRID=<srid>;POINT(x y)``
and becomes a point geometry column. If the input keeps a geometry column of its own, the geocoded point is
named ``geocode_shape`` (a second geometry column; the first one stays the table's main geometry). Any
other requested field whose name the input already uses is named ``geocode_<field>``. A miss leaves the
fields NULL. A row with no query, a miss, or a query that failed after retries is a miss; if misses exceed
``max_miss_ratio`` of the rows the task fails (nothing is staged). Facts in the manifest: rows, hits,
misses, ties, cache hits, distinct queries, API calls, retries, errors.
"""
from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import IO, Any

from ..config import Dataset, GeocodeOptions
from ..connections import UnknownConnectionError, resolve
from ..schema import Column, TableSchema
from ..staging import Manifest, StagedTable
from .ais import BUILTIN as AIS_BUILTIN
from .ais import AISClient, GeocodeError, ais_options
from .cache import GeocodeCache, normalize_query

log = logging.getLogger(__name__)

Progress = Callable[..., None]
BATCH = 5000
__all__ = ["GeocodeError", "geocode_table", "output_columns", "read_rows"]


# --- reading the staged CSV ---------------------------------------------------------------------------------

_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^,"\r\n]*)')


def read_rows(stream: IO[bytes]) -> Iterator[list[str | None]]:
    """Rows of a staged CSV, streamed, keeping its NULL convention: an unquoted empty field is None, a quoted
    one ``""``. (The csv module of Python < 3.12 cannot tell them apart.)"""
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    pending = ""
    for line in text:
        pending += line
        if pending.count('"') % 2:  # inside a quoted field that spans lines
            continue
        record, pending = pending.rstrip("\r\n"), ""
        yield _split(record)
    if pending.strip():
        raise GeocodeError("staged CSV ends inside a quoted field")


def _split(record: str) -> list[str | None]:
    values: list[str | None] = []
    position = 0
    while True:
        match = _FIELD.match(record, position)
        assert match is not None  # the pattern matches the empty string
        quoted, bare = match.group(1), match.group(2)
        values.append(quoted.replace('""', '"') if quoted is not None else (bare or None))
        position = match.end()
        if position >= len(record):
            return values
        if record[position] != ",":
            raise GeocodeError(f"malformed staged CSV line near {record[max(0, position - 20):position + 20]!r}")
        position += 1
        if position == len(record):
            values.append(None)
            return values


# --- output shape -------------------------------------------------------------------------------------------

def output_columns(schema: TableSchema, options: GeocodeOptions) -> tuple[list[int], list[tuple[str, Column]]]:
    """Indexes of the input columns kept, and (field, output column) for each requested field."""
    removed = set(options.remove_fields)
    kept = [i for i, c in enumerate(schema.columns) if c.name not in removed]
    taken = {schema.columns[i].name for i in kept}
    has_geometry = any(schema.columns[i].is_geometry for i in kept)
    added: list[tuple[str, Column]] = []
    for name in options.fields:
        out = name
        if name == "shape" and has_geometry:
            out = "geocode_shape"
        if out in taken:
            out = f"geocode_{name}"
        taken.add(out)
        if name == "shape":
            column = Column(out, "geometry", geometry_type="point", srid=options.srid)
        elif name in ("lat", "lon"):
            column = Column(out, "number")
        else:
            column = Column(out, "string")
        added.append((name, column))
    return kept, added


# --- acceptance and values ----------------------------------------------------------------------------------

def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(float(value))


def _choose_ais(candidates: list[dict[str, Any]], options: GeocodeOptions, zip_code: str | None) -> dict[str, Any] | None:
    needs_point = any(f in ("lat", "lon", "shape") for f in options.fields)
    accepted = [c for c in candidates
                if (not options.address_only or c.get("ft") == "address")
                and (options.allow_estimates or c.get("mt") != "unmatched")
                and (not needs_point or (c.get("x") is not None and c.get("y") is not None))]
    if not accepted:
        return None
    if options.zip_field and zip_code:
        wanted = zip_code.strip()[:5]
        for c in accepted:
            if str(c.get("zip") or "")[:5] == wanted:
                return c
    return accepted[0]


def _value(field: str, chosen: dict[str, Any], srid: int) -> str | None:
    x, y = chosen.get("x"), chosen.get("y")
    if field == "lon":
        return _number(x) if x is not None else None
    if field == "lat":
        return _number(y) if (x is not None and y is not None) else None
    if field == "shape":
        return f"SRID={srid};POINT({_number(x)} {_number(y)})" if (x is not None and y is not None) else None
    if field == "geocode_type":
        value: Any = chosen.get("gt")
    elif field == "normalized":
        value = chosen.get("n")
    elif field == "match_type":
        value = chosen.get("mt")
    elif field == "matched_address":
        value = chosen.get("ma")
    else:
        value = (chosen.get("p") or {}).get(field)
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- the run ------------------------------------------------------------------------------------------------

def _client(dataset: Dataset, options: GeocodeOptions) -> Any:
    if options.provider == "ais":
        properties = [f for f in options.fields if f not in AIS_BUILTIN]
        return AISClient(resolve(options.conn or "ais"), srid=options.srid, allow_estimates=options.allow_estimates,
                         properties=properties, max_in_flight=options.max_in_flight,
                         rate_per_second=options.rate_per_second, dataset_id=dataset.id)
    from .census import CensusClient

    try:
        url: str | None = resolve(options.conn or "census")
    except UnknownConnectionError:
        if options.conn:
            raise
        url = None  # the public service needs no credentials
    return CensusClient(url, dataset_id=dataset.id)


def geocode_table(dataset: Dataset, source: StagedTable, target: StagedTable, progress: Progress = lambda *a, **k: None) -> Manifest:
    options = dataset.geocode
    if options is None:
        raise GeocodeError(f"{dataset.id}: no geocode block")
    started = time.monotonic()
    schema, source_manifest = source.schema(), source.manifest()
    names = schema.names
    missing = [c for c in [*options.query_fields, *([options.zip_field] if options.zip_field else []), *options.remove_fields]
               if c not in names]
    if missing:
        raise GeocodeError(f"{dataset.id}: geocode names columns the data does not have: {missing} (columns: {names})")
    query_at = [names.index(c) for c in options.query_fields]
    zip_at = names.index(options.zip_field) if options.zip_field else None
    census = options.provider == "census"

    def query_of(row: list[str | None]) -> tuple[str, str, str | None]:
        """(cache key, query text, zip) of a row; key "" when the row has nothing to ask."""
        text = " ".join(v.strip() for i in query_at if (v := row[i] if i < len(row) else None) and v.strip())
        zip_code = (row[zip_at] or "").strip() or None if zip_at is not None and zip_at < len(row) else None
        if not text:
            return "", "", zip_code
        key = normalize_query(text)
        if census:
            key = f"{key}|{(zip_code or '')[:5]}"
        return key, text, zip_code

    # Pass 1: the distinct queries.
    distinct: dict[str, tuple[str, str | None]] = {}
    rows = 0
    with source.open_csv() as stream:
        reader = read_rows(stream)
        header = next(reader, None)
        if header != names:
            raise GeocodeError(f"{dataset.id}: staged CSV header {header} does not match its schema {names}")
        for row in reader:
            rows += 1
            key, text, zip_code = query_of(row)
            if key and key not in distinct:
                distinct[key] = (text, zip_code)
    progress(0, rows, 0, 0, phase=f"{len(distinct)} distinct queries in {rows} rows")

    client = _client(dataset, options)
    request_options = client.options if census else ais_options(options.srid, options.allow_estimates, [
        f for f in options.fields if f not in AIS_BUILTIN])
    cache = GeocodeCache(source.store, options.provider, dataset.id, options.cache_max_age_days).load()
    answers: dict[str, list[dict[str, Any]] | None] = {}
    for key in distinct:
        cached = cache.get(key, request_options)
        if cached is not None:
            answers[key] = cached
    cache_hits = len(answers)
    todo = {k: v for k, v in distinct.items() if k not in answers}
    log.info("%s: %d rows, %d distinct queries, %d from the cache, %d to ask %s", dataset.id, rows, len(distinct),
             cache_hits, len(todo), options.provider)

    asked = 0

    def done(key: str, candidates: list[dict[str, Any]] | None) -> None:
        nonlocal asked
        asked += 1
        answers[key] = candidates
        if candidates is not None:
            cache.put(key, request_options, candidates)
        progress(0, rows, 0, 0, phase=f"asked {options.provider} {asked} of {len(todo)} queries", force=False)

    try:
        if census:
            client.search_many({k: (text, options.city, options.state, (z or "")[:5]) for k, (text, z) in todo.items()}, done)
        else:
            client.search_many({k: text for k, (text, _) in todo.items()}, done)
    finally:
        cache.save()  # what was learned is kept even if the run fails later

    # Pass 2: write the rows.
    kept, added = output_columns(schema, options)
    out_schema = TableSchema(columns=tuple([schema.columns[i] for i in kept] + [c for _, c in added]), primary_key=tuple(
        k for k in schema.primary_key if k in {schema.columns[i].name for i in kept}))
    hits = misses = ties = written = 0
    with target.writer() as writer:
        writer.write_header(out_schema.names)
        batch: list[list[str | None]] = []
        with source.open_csv() as stream:
            reader = read_rows(stream)
            next(reader, None)
            for row in reader:
                row = (row + [None] * len(names))[:len(names)]
                values: list[str | None] = [None] * len(added)
                try:
                    key, _, zip_code = query_of(row)
                    candidates = answers.get(key) or [] if key else []
                    if census:
                        chosen = candidates[0] if candidates and not candidates[0].get("tie") else None
                        ties += bool(candidates and candidates[0].get("tie"))
                    else:
                        chosen = _choose_ais(candidates, options, zip_code)
                    if chosen is not None:
                        values = [_value(field, chosen, options.srid) for field, _ in added]
                except (ValueError, TypeError, KeyError) as exc:  # one bad row never fails the file
                    log.warning("%s: row %d not geocoded: %s", dataset.id, written + 1, exc)
                    chosen, values = None, [None] * len(added)
                if chosen is None:
                    misses += 1
                else:
                    hits += 1
                batch.append([row[i] for i in kept] + values)
                if len(batch) >= BATCH:
                    writer.write_rows(batch)
                    written += len(batch)
                    batch = []
                    progress(written, rows, hits, misses, force=False)
            writer.write_rows(batch)
            written += len(batch)
        ratio = misses / rows if rows else 0.0
        facts = {"rows": rows, "hits": hits, "misses": misses, "ties": ties, "miss_ratio": round(ratio, 4),
                 "distinct_queries": len(distinct), "cache_hits": cache_hits, "api_calls": client.calls,
                 "retries": client.retries, "errors": client.errors, "provider": options.provider,
                 "seconds": round(time.monotonic() - started, 2)}
        log.info("%s: geocoded %d rows: %d hits, %d misses (%.1f%%), %d cache hits, %d %s calls", dataset.id, rows,
                 hits, misses, 100 * ratio, cache_hits, client.calls, options.provider)
        if ratio > options.max_miss_ratio:
            raise GeocodeError(f"{dataset.id}: {misses} of {rows} rows not geocoded ({100 * ratio:.1f}%), more than "
                               f"max_miss_ratio {options.max_miss_ratio:.0%}; nothing staged")
        progress(written, rows, hits, misses)
        source_facts = {**source_manifest.source, "geocode": facts, "extract_sha256": source_manifest.sha256}
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return writer.finish(out_schema, source_facts, created)
