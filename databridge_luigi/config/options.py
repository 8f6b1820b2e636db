"""The keys a dataset YAML file may hold, as strict pydantic models: each value is checked on its own here
(types, ranges, names, cron expressions, ArcGIS item ids); checks that span keys are in ``validate.py``.
"""
from __future__ import annotations

import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator, StrictBool, StrictStr, field_validator

from ..schedule import ScheduleError, check_cron

MAX_SOURCE_TABLE_BYTES = 63  # PostgreSQL's identifier limit
# Columns CARTO makes (and indexes) itself; on PostGIS they never exist. Indexing them fails after the COPY.
CARTO_COLUMNS = ("the_geom", "the_geom_webmercator", "cartodb_id")
# croniter's random (R) and hashed (H) fields: a schedule must give the same versions on every call.
_CRON_NONDETERMINISTIC = re.compile(r"(^|[,/(-])[RH]($|[,/(-])")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_#$]*$")


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
    # Extract only rows whose column is newer than the published version's newest value (less settle_seconds, for
    # writes that commit late), and merge them by primary_key (databridge_luigi.change.delta).
    incremental: StrictBool = False


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
