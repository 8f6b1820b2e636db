"""Config discovery and validation: YAML files in a config tree → validated ``Dataset`` objects.

Layout (the old Airflow trees, unchanged)::

    <root>/databridge/<dept>/<table>.yml           id <dept>__<table>
    <root>/knack/<carto_env>/<dept>/<table>.yml     id <dept>__<table>__<carto_env>
    <root>/airtable/<dept>/<table>.yml             id <dept>__<table>

Every key the old system used is accepted; new keys are optional. Every problem is reported as a
``ConfigProblem`` naming the file, the key and the reason, and all problems of a tree are collected at once.

The package is split by concern, each module importing only those before it:

* ``options``  — the keys of a dataset file as strict pydantic models, each value checked on its own;
* ``model``    — ``Dataset``, what a valid file becomes; ``ConfigProblem`` and ``ConfigError``;
* ``parse``    — one file's YAML read safely, and YAML and pydantic errors as ``ConfigProblem``s;
* ``validate`` — the checks across keys and the ``Dataset`` built from a file that passes them;
* ``registry`` — the tree: files and the dataset ids they stand for, ``load_datasets``, ``Registry``.

Every name other modules use is importable from ``databridge_luigi.config``.
"""
from __future__ import annotations

from .model import ConfigError, ConfigProblem, Dataset
from .options import (
    CARTO_COLUMNS, GEOCODE_AIS_BUILTIN_FIELDS, GEOCODE_CENSUS_FIELDS, MAX_SOURCE_TABLE_BYTES, AgoOptions, ChangeSignalOptions,
    DatasetFile, DestinationOptions, GeocodeOptions, GeometryOptions, OnPublished, SourceOptions,
)
from .parse import MAX_CONFIG_BYTES
from .registry import DEFAULT_CARTO_CONN, KINDS, Registry, dataset_id_for, default_config_dir, load_datasets
from .validate import MAX_TABLE_NAME

__all__ = [
    "CARTO_COLUMNS", "DEFAULT_CARTO_CONN", "GEOCODE_AIS_BUILTIN_FIELDS", "GEOCODE_CENSUS_FIELDS", "KINDS", "MAX_CONFIG_BYTES",
    "MAX_SOURCE_TABLE_BYTES", "MAX_TABLE_NAME", "AgoOptions", "ChangeSignalOptions", "ConfigError", "ConfigProblem", "Dataset",
    "DatasetFile", "DestinationOptions", "GeocodeOptions", "GeometryOptions", "OnPublished", "Registry", "SourceOptions",
    "dataset_id_for", "default_config_dir", "load_datasets",
]
