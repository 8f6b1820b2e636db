"""The checks that span keys or need the file's place in the tree (table and department names, connection
names, blocks one key makes required, the schema_override file), and the ``Dataset`` built from a file that
passes them, with every default filled in.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .model import ConfigError, ConfigProblem, Dataset
from .options import GEOCODE_CENSUS_FIELDS, ChangeSignalOptions, DatasetFile
from .parse import MAX_CONFIG_BYTES, _inside

# A table's shadow is "<table>__shadow" and identifiers stop at 63 bytes in PostgreSQL.
MAX_TABLE_NAME = 63 - len("__shadow")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_CONN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def _schema_override_problems(where: str, relative: str) -> list[ConfigProblem]:
    """The override file sits beside the config (no absolute paths, no ``..``) and is a schema we would load."""
    from ..schema import SchemaError, TableSchema

    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        return [ConfigProblem(where, "schema_override", f"{relative!r} must be a path inside the config's directory")]
    path = Path(where).parent / relative
    if (path.exists() or path.is_symlink()) and not _inside(path, Path(where).parent):
        return [ConfigProblem(where, "schema_override", f"{relative!r} resolves outside the config's directory (a symlink?)")]
    if not path.is_file():
        return [ConfigProblem(where, "schema_override", f"file {relative!r} not found next to the config")]
    if path.stat().st_size > MAX_CONFIG_BYTES * 16:
        return [ConfigProblem(where, "schema_override", f"{relative}: file is over the {MAX_CONFIG_BYTES * 16 // 1024} KiB limit")]
    try:
        TableSchema.from_json(json.loads(path.read_text("utf-8")))
    except (ValueError, SchemaError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return [ConfigProblem(where, "schema_override", f"{relative}: {exc}")]
    return []


def _incremental_problems(where: str, spec: DatasetFile) -> list[ConfigProblem]:
    """``change_signal.incremental`` stages only changed rows: every reader of a version must merge them."""
    signal = spec.change_signal
    if not (isinstance(signal, ChangeSignalOptions) and signal.incremental):
        return []
    key = "change_signal.incremental"
    reasons = []
    if not signal.column:
        reasons.append("needs change_signal.column: the updated_at column that says which rows changed")
    if not spec.primary_key:
        reasons.append("needs primary_key: the changed rows are merged into the live table by key")
    if spec.load_mode not in (None, "merge"):
        reasons.append(f"merges by key, so load_mode must be merge (or left out), not {spec.load_mode}")
    if spec.upload_to_ago is True or spec.geocode is not None or not spec.upload_to_carto:
        reasons.append("is for datasets published to CARTO/PostGIS only (not with upload_to_ago, geocode or "
                       "upload_to_carto: false, whose readers expect every row in each version)")
    return [ConfigProblem(where, key, reason) for reason in reasons]


def _build_dataset(where: str, kind: str, dept: str, table: str, env: str | None, spec: DatasetFile, default_carto_conn: str) -> Dataset:
    problems: list[ConfigProblem] = []
    dest_table = spec.destination.table or table
    names = [("file name", table)] + ([("destination.table", dest_table)] if spec.destination.table else [])
    for key, name in names:
        if not _IDENTIFIER.match(name) or len(name) > MAX_TABLE_NAME:
            problems.append(ConfigProblem(where, key, f"table name {name!r} must be lower-case letters, digits and _ (at most {MAX_TABLE_NAME} characters)"))
    if not re.match(r"^[a-z0-9_]+$", dept):
        problems.append(ConfigProblem(where, "directory", f"department {dept!r} must be lower-case letters, digits and _"))
    if spec.upload_to_carto and spec.carto_users is None:
        problems.append(ConfigProblem(where, "carto_users", "required when upload_to_carto is true (use [] for no grants)"))
    if kind == "knack" and spec.knack_object_id is None:
        problems.append(ConfigProblem(where, "knack_object_id", "required for a Knack dataset"))
    for key in ("knack_object_id", "knack_conn_id"):
        if kind != "knack" and getattr(spec, key) is not None:
            problems.append(ConfigProblem(where, key, "only Knack datasets (under knack/) take Knack keys"))
    if kind == "airtable" and not spec.source.base:
        problems.append(ConfigProblem(where, "source.base", "required for an Airtable dataset (the base id, app…)"))
    source_conn = spec.knack_conn_id or spec.source.conn or {"databridge": "databridge", "knack": "knack", "airtable": "airtable"}[kind]
    dest_conn = spec.destination.conn or spec.carto_conn_id or (env if kind == "knack" else None) or default_carto_conn
    for key, conn in (("source.conn", source_conn), ("destination.conn", dest_conn)):
        if not _CONN_NAME.match(conn):
            problems.append(ConfigProblem(where, key, f"connection name {conn!r} must start with a letter and hold only letters, digits, _ . -"))
    if spec.geocode is not None:
        geocode = spec.geocode
        if geocode.conn is not None and not _CONN_NAME.match(geocode.conn):
            problems.append(ConfigProblem(where, "geocode.conn", f"connection name {geocode.conn!r} must start with a letter and hold only letters, digits, _ . -"))
        if geocode.provider == "census":
            unknown = [f for f in geocode.fields if f not in GEOCODE_CENSUS_FIELDS]
            if unknown:
                problems.append(ConfigProblem(where, "geocode.fields", f"{unknown[0]!r} is not a census field (one of {', '.join(GEOCODE_CENSUS_FIELDS)})"))
            if geocode.srid != 4326:
                problems.append(ConfigProblem(where, "geocode.srid", "the census geocoder answers in lon/lat: srid must be 4326"))
    if spec.upload_to_ago is True and spec.ago is None:
        problems.append(ConfigProblem(where, "ago", "required when upload_to_ago is true (item, mode, and sources for swap mode)"))
    if spec.schema_override:
        problems += _schema_override_problems(where, spec.schema_override)
    if spec.load_mode == "merge" and not spec.primary_key:
        problems.append(ConfigProblem(where, "load_mode", "merge needs primary_key: [columns] that identify a row"))
    problems += _incremental_problems(where, spec)
    if problems:
        raise ConfigError(problems)
    suffix = f"__{env}" if kind == "knack" else ""
    schedule = spec.schedule_interval if isinstance(spec.schedule_interval, str) else None
    return Dataset(
        id=f"{dept}__{table}{suffix}",
        kind=kind,  # type: ignore[arg-type]
        dept=dept,
        table=table,
        path=where,
        schedule=schedule,
        publish=spec.upload_to_carto,
        enabled=spec.enabled,
        source_conn=source_conn,
        source_schema=spec.source.schema_ or (f"gis_{dept}" if kind == "databridge" else None),
        source_table=spec.source.table or table,
        dest_conn=dest_conn,
        dest_table=dest_table,
        dest_schema=spec.destination.schema_,
        grants=tuple(spec.carto_users or ()),
        indexes=tuple(i.lower() for i in spec.indexes),
        geometry_column=spec.geometry.column.lower() if spec.geometry.column else None,
        geometry_srid=spec.geometry.srid,
        allow_empty=spec.allow_empty,
        row_count_tolerance=spec.row_count_tolerance,
        accept_schema_change=spec.accept_schema_change,
        load_mode=spec.load_mode,
        primary_key=tuple(spec.primary_key),
        delete_stale=spec.delete_stale,
        timeout=float(spec.timeout) if spec.timeout else None,
        exclude_fields=tuple(f.lower() for f in spec.exclude_fields),
        timezone=spec.timezone,
        schema_override=str(Path(where).parent / spec.schema_override) if spec.schema_override else None,
        carto_env=env,
        knack_object_id=spec.knack_object_id,
        airtable_base=spec.source.base,
        geocode=spec.geocode,
        ago=spec.ago if spec.upload_to_ago is True else None,
        on_published=spec.on_published,
        change_signal=spec.change_signal,
    )
