"""Config discovery and validation: YAML files in a config tree → validated ``Dataset`` objects.

Layout (the old Airflow trees, unchanged)::

    <root>/databridge/<dept>/<table>.yml           id <dept>__<table>
    <root>/knack/<carto_env>/<dept>/<table>.yml     id <dept>__<table>__<carto_env>
    <root>/airtable/<dept>/<table>.yml             id <dept>__<table>

Every key the old system used is accepted; new keys are optional. Every problem is reported as a
``ConfigProblem`` naming the file, the key and the reason, and all problems of a tree are collected at once.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator, StrictBool, StrictStr, ValidationError, field_validator

from .schedule import ScheduleError, check_cron

KINDS = ("databridge", "knack", "airtable")
DEFAULT_CARTO_CONN = "carto_phl"
# A table's shadow is "<table>__shadow" and identifiers stop at 63 bytes in PostgreSQL.
MAX_TABLE_NAME = 63 - len("__shadow")
MAX_SOURCE_TABLE_BYTES = 63  # PostgreSQL's identifier limit
MAX_CONFIG_BYTES = 64 * 1024  # a dataset config is a few hundred bytes; a runaway file is refused before parsing
# Columns CARTO makes (and indexes) itself; on PostGIS they never exist. Indexing them fails after the COPY.
CARTO_COLUMNS = ("the_geom", "the_geom_webmercator", "cartodb_id")
# croniter's random (R) and hashed (H) fields: a schedule must give the same versions on every call.
_CRON_NONDETERMINISTIC = re.compile(r"(^|[,/(-])[RH]($|[,/(-])")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_#$]*$")
_CONN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.reason}"


class ConfigError(Exception):
    """One or more config problems; ``str()`` lists every one, one per line."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceOptions(_Strict):
    conn: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    table: str | None = None
    base: str | None = None  # Airtable base id

    @field_validator("schema_", "table")
    @classmethod
    def _source_name(cls, value: str | None) -> str | None:
        # Source names are quoted as given (Oracle and SQL Server allow odd ones); only what no database allows is refused.
        if value is not None and (not value.strip() or "\x00" in value or len(value.encode()) > 128):
            raise ValueError(f"{value!r} is not a table or schema name (empty, NUL byte, or over 128 bytes)")
        return value

    @field_validator("table")
    @classmethod
    def _source_table_length(cls, value: str | None) -> str | None:
        # PostgreSQL silently truncates a longer name to 63 bytes and would read another table (or none).
        if value is not None and len(value.encode()) > MAX_SOURCE_TABLE_BYTES:
            raise ValueError(f"{value!r} is {len(value.encode())} bytes; source table names are limited to "
                             f"{MAX_SOURCE_TABLE_BYTES} (PostgreSQL would silently use a truncated name)")
        return value


class ChangeSignalOptions(_Strict):
    """``change_signal:`` how the source tells it has not changed since the last version (databridge_luigi.change)."""

    column: StrictStr | None = None  # a timestamp/date column the application sets on every insert and update
    settle_seconds: int = Field(default=3600, ge=0)  # a newest value younger than this (source clock) is not trusted


class DestinationOptions(_Strict):
    conn: str | None = None
    table: str | None = None
    schema_: str | None = Field(default=None, alias="schema")

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str | None) -> str | None:
        # CARTO schemas are user names (letters, digits, _ and -); nothing here is SQL.
        if value is not None and (not re.match(r"^[a-z_][a-z0-9_-]*$", value) or len(value.encode()) > 63):
            raise ValueError(f"schema {value!r} must be lower-case letters, digits, _ and - (at most 63 bytes)")
        return value


class GeometryOptions(_Strict):
    column: str | None = None
    srid: int | None = Field(default=None, gt=0)

    @field_validator("column")
    @classmethod
    def _column(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\x00" in value or len(value.encode()) > 63):
            raise ValueError(f"{value!r} is not a column name (empty, NUL byte, or over 63 bytes)")
        return value


GEOCODE_AIS_BUILTIN_FIELDS = ("lat", "lon", "shape", "geocode_type", "normalized", "match_type")
GEOCODE_CENSUS_FIELDS = ("lat", "lon", "shape", "match_type", "matched_address")


class GeocodeOptions(_Strict):
    """The ``geocode:`` block: geocode every row between extract and load (see ``databridge_luigi.geocode``)."""

    provider: Literal["ais", "census"] = "ais"
    conn: str | None = None  # ais: default "ais"; census: default "census" if defined, else the public URL
    query_fields: list[StrictStr] = Field(min_length=1)
    fields: list[StrictStr] = Field(default=["lat", "lon", "shape"], min_length=1)
    srid: Literal[4326, 2272] = 4326
    address_only: StrictBool = True
    allow_estimates: StrictBool = False
    zip_field: str | None = None
    city: str = "Philadelphia"  # census only: the city and state sent with every address
    state: str = "PA"
    remove_fields: list[StrictStr] = []
    max_miss_ratio: float = Field(default=0.2, ge=0, le=1)
    cache_max_age_days: float = Field(default=90, ge=0)
    max_in_flight: int = Field(default=4, ge=1, le=64)
    rate_per_second: float = Field(default=5, gt=0)

    @field_validator("query_fields", "remove_fields")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        for column in value:
            if not _COLUMN.match(column):
                raise ValueError(f"{column!r} is not a column name")
        return [c.lower() for c in value]

    @field_validator("zip_field")
    @classmethod
    def _zip(cls, value: str | None) -> str | None:
        if value is not None and not _COLUMN.match(value):
            raise ValueError(f"{value!r} is not a column name")
        return value.lower() if value else value

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(r"^[a-z_][a-z0-9_]*$", name):
                raise ValueError(f"{name!r} is not a field name (lower-case letters, digits and _)")
        if len(set(value)) != len(value):
            raise ValueError("a field is listed twice")
        return value


# --- ArcGIS Online (issue 13): the ago: and on_published: blocks ------------------------------------------

_AGO_ITEM_ID = re.compile(r"^[0-9a-f]{32}$")


class AgoOptions(BaseModel):
    """Where and how a dataset is published to ArcGIS Online (``upload_to_ago: true``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conn: str = "ago"
    item: str | None = None  # item id of the layer readers use (swap: the view; upsert/truncate_append: the layer)
    layer: int = Field(default=0, ge=0)
    mode: Literal["swap", "upsert", "truncate_append"] = "swap"
    sources: list[StrictStr] = []  # swap: item ids of the two source layers the view alternates between
    primary_key: list[StrictStr] = []  # upsert: key columns (default: the dataset's primary_key)
    batch_size: int = Field(default=500, ge=1, le=2000)
    html_text: Literal["fail", "clean"] = "fail"
    lease_minutes: float = Field(default=30, gt=0)

    @field_validator("item")
    @classmethod
    def _item(cls, value: str | None) -> str | None:
        if value is not None and not _AGO_ITEM_ID.match(value):
            raise ValueError(f"{value!r} is not an ArcGIS item id (32 lower-case hex characters)")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _AGO_ITEM_ID.match(item):
                raise ValueError(f"{item!r} is not an ArcGIS item id (32 lower-case hex characters)")
        return value

    @field_validator("primary_key")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        return [v.lower() for v in value]

    @model_validator(mode="after")
    def _mode(self) -> "AgoOptions":
        if self.item is None:
            raise ValueError("item is required (the item id of the layer, or of the view in swap mode)")
        if self.mode == "swap" and (len(self.sources) != 2 or len(set(self.sources)) != 2 or self.item in self.sources):
            raise ValueError("swap mode needs sources: the item ids of two different source layers behind the view")
        if self.mode != "swap" and self.sources:
            raise ValueError(f"sources is only for swap mode, not {self.mode}")
        return self


class OnPublished(BaseModel):
    """A webhook told about every publish that changed data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    conn: str | None = None  # or a named connection holding the URL (when it carries a secret)

    @model_validator(mode="after")
    def _one(self) -> "OnPublished":
        if (self.url is None) == (self.conn is None):
            raise ValueError("give exactly one of url or conn")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ValueError(f"{self.url!r} is not an http(s) URL")
        return self


class DatasetFile(_Strict):
    """The keys a dataset YAML file may hold."""

    # The old system's keys, accepted unchanged.
    # Strict: YAML "schedule_interval: 0" is an integer and must not pass as false (manual).
    schedule_interval: StrictStr | StrictBool | None = None
    upload_to_carto: StrictBool = True
    upload_to_ago: Any = None  # the old system's placeholder; true (with an ago: block) publishes to ArcGIS Online
    ago: AgoOptions | None = None
    on_published: OnPublished | None = None
    carto_users: list[str] | None = None
    indexes: list[str] = []
    carto_conn_id: str | None = None
    knack_object_id: int | None = Field(default=None, gt=0)
    knack_conn_id: str | None = None
    # New, optional keys.
    enabled: StrictBool = True
    source: SourceOptions = SourceOptions()
    destination: DestinationOptions = DestinationOptions()
    geometry: GeometryOptions = GeometryOptions()
    allow_empty: StrictBool = False
    row_count_tolerance: float = Field(default=0.15, ge=0)
    accept_schema_change: StrictBool = False
    timezone: str = "America/New_York"
    schema_override: str | None = None
    geocode: GeocodeOptions | None = None
    # How a load reaches the live table (publish/): replace in place, merge by primary_key, or swap in a new table.
    load_mode: Literal["replace", "merge", "swap"] | None = None
    primary_key: list[StrictStr] = []
    delete_stale: StrictBool = True
    timeout: int | None = Field(default=None, gt=0, description="seconds; statement_timeout on source and destination sessions")
    change_signal: ChangeSignalOptions | StrictBool = True  # false: extract at every version
    # Source columns never published (checked against the source's columns at extract time).
    exclude_fields: list[StrictStr] = []

    @field_validator("schedule_interval", mode="before")
    @classmethod
    def _cron(cls, value: object) -> object:
        if value is not None and not isinstance(value, (str, bool)):
            raise ValueError(f"must be a cron expression (text), or false/null for a manual dataset; got {value!r}")
        if value is True:
            raise ValueError("must be a cron expression, or false/null for a manual dataset")
        if isinstance(value, str):
            if value.strip().lower() in ("none", "null", "false", ""):
                raise ValueError(f"{value!r} is a string; write false (or null) unquoted for a manual dataset")
            random = [f for f in value.split("#", 1)[0].split() if _CRON_NONDETERMINISTIC.search(f)]
            if random:
                raise ValueError(f"{value!r}: {random[0]!r} is a random/hashed cron field; write the minute and hour out "
                                 "(each call would give another version)")
            try:
                check_cron(value)
            except ScheduleError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("indexes")
    @classmethod
    def _indexes(cls, value: list[str]) -> list[str]:
        for index in value:
            for column in str(index).split("+"):
                if not _COLUMN.match(column):
                    raise ValueError(f"{index!r} is not a column name or a composite 'a+b' of column names")
                if column.lower() in CARTO_COLUMNS:
                    raise ValueError(f"{column!r} is made and indexed by CARTO itself and does not exist on PostGIS; "
                                     "index the source's own columns")
        return value

    @field_validator("primary_key")
    @classmethod
    def _primary_key(cls, value: list[str]) -> list[str]:
        for column in value:
            if not _COLUMN.match(column):
                raise ValueError(f"{column!r} is not a column name")
        if len({c.lower() for c in value}) != len(value):
            raise ValueError("a column is listed twice")
        return [c.lower() for c in value]

    @field_validator("carto_users")
    @classmethod
    def _users(cls, value: list[str] | None) -> list[str] | None:
        for user in value or []:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", str(user)):
                raise ValueError(f"{user!r} is not a role name")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as America/New_York)") from None
        return value


@dataclass(frozen=True)
class Dataset:
    """One validated dataset: where it comes from, when it is due and where it is published."""

    id: str
    kind: Literal["databridge", "knack", "airtable"]
    dept: str
    table: str
    path: str
    schedule: str | None
    publish: bool  # False: stage only (the old "upload_to_carto: false")
    enabled: bool
    source_conn: str
    source_schema: str | None
    source_table: str
    dest_conn: str
    dest_table: str
    dest_schema: str | None
    grants: tuple[str, ...]
    indexes: tuple[str, ...]
    geometry_column: str | None
    geometry_srid: int | None
    allow_empty: bool
    row_count_tolerance: float
    timezone: str
    schema_override: str | None
    accept_schema_change: bool = False
    load_mode: Literal["replace", "merge", "swap"] | None = None  # None: merge with a primary_key, else the luigi.cfg default
    primary_key: tuple[str, ...] = ()
    delete_stale: bool = True
    timeout: float | None = None  # seconds
    change_signal: Any = True  # True (the source's own signal), False (always extract) or ChangeSignalOptions
    exclude_fields: tuple[str, ...] = ()  # lower-case source column names not to publish
    carto_env: str | None = None
    knack_object_id: int | None = None
    airtable_base: str | None = None
    geocode: GeocodeOptions | None = None
    ago: AgoOptions | None = None  # set only when upload_to_ago is true
    on_published: OnPublished | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def staging_segment(self) -> str:
        """The old system's S3 'schema' segment: ``<dept>`` or ``<dept>_test`` for a test Knack app."""
        if self.kind == "knack" and "test" in self.source_conn:
            return f"{self.dept}_test"
        return self.dept


def default_config_dir() -> Path:
    return Path(os.environ.get("DATABRIDGE_CONFIG_DIR", "configs"))


def load_datasets(root: str | os.PathLike[str], default_carto_conn: str = DEFAULT_CARTO_CONN) -> tuple[list[Dataset], list[ConfigProblem]]:
    """Discover and validate every dataset under ``root``; return the datasets and all problems found."""
    root = Path(root)
    datasets: list[Dataset] = []
    problems: list[ConfigProblem] = []
    if not root.is_dir():
        return [], [ConfigProblem(str(root), "-", "config directory does not exist")]
    seen: dict[str, str] = {}
    tables: dict[tuple[str, str, str], Dataset] = {}
    for path in sorted(_config_files(root)):
        try:
            dataset = _load_file(root, path, default_carto_conn)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if dataset.id in seen:
            problems.append(ConfigProblem(str(path), "-", f"duplicate dataset id {dataset.id!r} (also {seen[dataset.id]})"))
            continue
        if dataset.publish:  # two datasets swapping one table would each be "published" while it holds one
            where = (dataset.dest_conn, dataset.dest_schema or "", dataset.dest_table)
            other = tables.get(where)
            if other is not None:
                problems.append(ConfigProblem(str(path), "destination.table", f"{dataset.dest_conn}:{(dataset.dest_schema + '.') if dataset.dest_schema else ''}"
                                              f"{dataset.dest_table} is also written by {other.id} ({other.path}); give one a destination.table"))
                continue
            tables[where] = dataset
        seen[dataset.id] = str(path)
        datasets.append(dataset)
    return datasets, problems


def dataset_id_for(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> str | None:
    """The dataset id a config file at ``path`` stands for (from its place in the tree), or None."""
    try:
        kind, *parts = Path(path).relative_to(root).parts
    except ValueError:
        return None
    table = Path(path).name.split(".", 1)[0]
    if kind == "knack" and len(parts) == 3:
        return f"{parts[1]}__{table}__{parts[0]}"
    if kind in KINDS and kind != "knack" and len(parts) == 2:
        return f"{parts[0]}__{table}"
    return None


def _config_files(root: Path) -> list[Path]:
    return [p for kind in KINDS for p in (root / kind).rglob("*") if p.suffix.lower() in (".yml", ".yaml") and (p.is_file() or p.is_symlink())]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice (YAML would silently keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_file(root: Path, path: Path, default_carto_conn: str) -> Dataset:
    where = str(path)
    kind, *parts = path.relative_to(root).parts
    expected_depth = 3 if kind == "knack" else 2
    if len(parts) != expected_depth:
        layout = "knack/<carto_env>/<dept>/<table>.yml" if kind == "knack" else f"{kind}/<dept>/<table>.yml"
        raise ConfigError([ConfigProblem(where, "-", f"file is not at {layout}")])
    table = path.name.split(".", 1)[0]
    env, dept = (parts[0], parts[1]) if kind == "knack" else (None, parts[0])
    if not _inside(path, root):  # a symlink (of the file or a folder) out of the tree
        raise ConfigError([ConfigProblem(where, "-", "resolves outside the config tree (a symlink?); configs must live in the tree")])
    if not path.is_file():
        raise ConfigError([ConfigProblem(where, "-", "file is a symlink to nothing")])
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(where, "-", f"file is {size:,} bytes, over the {MAX_CONFIG_BYTES // 1024} KiB limit for a config")])
    raw = _read_yaml(path)
    try:
        spec = DatasetFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_problem(where, error) for error in exc.errors()]) from None
    return _build_dataset(where, kind, dept, table, env, spec, default_carto_conn)


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``directory`` (resolved too)."""
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "-"
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([ConfigProblem(str(path), at, f"YAML syntax error: {reason}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(str(path), "-", "file is not UTF-8 text")]) from None
    if raw is None:
        raise ConfigError([ConfigProblem(str(path), "-", "file is empty")])
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(str(path), "-", f"must be a mapping of keys, got {type(raw).__name__}")])
    return raw


def _problem(path: str, error: dict[str, Any]) -> ConfigProblem:
    key = ".".join(str(part) for part in error["loc"]) or "-"
    if error["type"] == "extra_forbidden":
        field_name = str(error["loc"][-1])
        model = DatasetFile
        for part in error["loc"][:-1]:
            annotation = model.model_fields.get(str(part))
            model = annotation.annotation if annotation else model  # type: ignore[assignment]
            # An optional block (``X | None``): look inside for the model.
            model = next((a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)), model)  # type: ignore[assignment]
        names = [f.alias or n for n, f in model.model_fields.items()] if isinstance(model, type) and issubclass(model, BaseModel) else []
        close = difflib.get_close_matches(field_name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ConfigProblem(path, key, f"unknown key{hint}")
    message = error["msg"].removeprefix("Value error, ")
    return ConfigProblem(path, key, message)


def _schema_override_problems(where: str, relative: str) -> list[ConfigProblem]:
    """The override file sits beside the config (no absolute paths, no ``..``) and is a schema we would load."""
    from .schema import SchemaError, TableSchema

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


class Registry:
    """The datasets of one config tree, loaded once. A broken file breaks only its own dataset: the valid
    datasets are all there, ``problems`` lists the rest (``strict=True`` raises them all instead, as
    ``validate`` reports them); asking for a broken or unknown dataset raises a clear error."""

    def __init__(self, root: str | os.PathLike[str], default_carto_conn: str = DEFAULT_CARTO_CONN, strict: bool = False):
        self.root = Path(root)
        datasets, problems = load_datasets(self.root, default_carto_conn)
        if strict and problems:
            raise ConfigError(problems)
        self.problems = problems
        self._by_id = {d.id: d for d in datasets}

    def broken_files(self) -> dict[str, list[ConfigProblem]]:
        """Each broken config file (or the root, when it is missing) and its problems, in file order."""
        files: dict[str, list[ConfigProblem]] = {}
        for problem in self.problems:
            files.setdefault(problem.path, []).append(problem)
        return files

    def broken_ids(self) -> dict[str, list[ConfigProblem]]:
        """Dataset id → the problems of its file, for the broken files whose place names a dataset."""
        found: dict[str, list[ConfigProblem]] = {}
        for path, problems in self.broken_files().items():
            dataset_id = dataset_id_for(self.root, path)
            if dataset_id and dataset_id not in self._by_id:
                found.setdefault(dataset_id, []).extend(problems)
        return found

    def __iter__(self):
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, dataset_id: str) -> Dataset:
        try:
            return self._by_id[dataset_id]
        except KeyError:
            broken = self.broken_ids().get(dataset_id)
            if broken:
                raise ConfigError(broken) from None
            close = difflib.get_close_matches(dataset_id, list(self._by_id), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"no dataset {dataset_id!r} in {self.root}{hint}") from None
