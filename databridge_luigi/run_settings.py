"""What the tasks read once per process: the ``[databridge]`` section of luigi.cfg, the tree of dataset configs,
and one ``StagedTable`` per staged version (tasks.py re-exports every name).

Each is cached because luigi asks for it dozens of times per dataset; ``forget_settings`` and
``forget_staged_tables`` are for a process that runs luigi more than once (tests, an embedding application).
"""
from __future__ import annotations

from functools import lru_cache

import luigi

from .config import Registry, default_config_dir
from .publish.contract import LoadSettings
from .publish.locks import LockPolicy
from .staging import StagedTable, Store, open_store


class databridge(luigi.Config):
    """The ``[databridge]`` section of luigi.cfg."""

    config_dir = luigi.Parameter(default="", description="config tree; default env DATABRIDGE_CONFIG_DIR or ./configs")
    default_carto_conn = luigi.Parameter(default="carto_phl")
    staging = luigi.Parameter(default="", description="s3://bucket/prefix or a directory; default env DATABRIDGE_STAGING")
    default_load_mode = luigi.ChoiceParameter(choices=["replace", "merge", "swap"], default="replace",
                                              description="load mode of datasets without load_mode (merge where a primary_key is named)")
    lease_seconds = luigi.FloatParameter(default=120.0, description="a loader's lease on its table; renewed every third of it")
    lease_wait_seconds = luigi.FloatParameter(default=300.0, description="how long a second loader of a table waits for the first")
    lock_timeout_seconds = luigi.FloatParameter(default=3.0, description="the longest a publish makes readers of a live table wait")
    lock_wait_seconds = luigi.FloatParameter(default=600.0, description="how long a commit retries lock timeouts before failing")
    terminate_blockers = luigi.Parameter(default="", description="destination connections (comma-separated) whose lock "
                                         "blockers are terminated once lock_wait_seconds have passed")
    extract_ahead = luigi.BoolParameter(default=True, parsing=luigi.BoolParameter.EXPLICIT_PARSING,
                                        description="with one worker, run the next due extract on a thread while a load runs (ahead.py)")


@lru_cache(maxsize=1)
def settings() -> databridge:
    """The ``[databridge]`` section, read once per process: luigi resolves every parameter of a Config from its
    files at each instantiation (~0.4 ms), and a dataset's tasks ask for it dozens of times."""
    return databridge()


@lru_cache(maxsize=4)
def _registry(config_dir: str, default_carto_conn: str) -> Registry:
    return Registry(config_dir, default_carto_conn)


def registry() -> Registry:
    return _registry(str(settings().config_dir or default_config_dir()), str(settings().default_carto_conn))


def forget_settings() -> None:
    """For a process that runs luigi more than once (tests) and changes its configuration in between."""
    settings.cache_clear()
    _registry.cache_clear()


def load_settings(connection: str) -> LoadSettings:
    section = settings()
    terminate = connection in {c.strip() for c in str(section.terminate_blockers).split(",") if c.strip()}
    return LoadSettings(str(section.default_load_mode), float(section.lease_seconds), float(section.lease_wait_seconds),
                        LockPolicy(float(section.lock_timeout_seconds), float(section.lock_wait_seconds), terminate))


def staged_table(dataset_id: str, version: str) -> StagedTable:
    """One instance per store, dataset and version in a process: a manifest and schema, immutable once they
    exist, are then read once per run (or known from writing them) instead of again at every completion check
    and by every task that uses the version (four S3 GETs less per first publish)."""
    key = (open_store(str(settings().staging) or None), dataset_id, version)  # stores: one per process and root
    if key not in _staged_tables:
        _staged_tables[key] = StagedTable(key[0], dataset_id, version)
    return _staged_tables[key]


_staged_tables: dict[tuple[Store, str, str], StagedTable] = {}


def forget_staged_tables() -> None:
    """For a process that runs luigi more than once (tests; an embedding application) and changes staging in
    between: the next run reads every manifest again."""
    _staged_tables.clear()
