"""What loading a config tree yields: validated ``Dataset`` objects, and a ``ConfigProblem`` (file, key,
reason) for everything wrong, raised together as one ``ConfigError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .options import AgoOptions, GeocodeOptions, OnPublished


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
