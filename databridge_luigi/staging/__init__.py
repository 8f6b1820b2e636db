"""Staged tables: ``<root>/<dataset_id>/<version>/`` on S3 or disk — a data object, a table schema and the
manifest, which is written last and is the completion flag.

A staged version is immutable. Its data and schema are written under run-unique keys
(``data-<run>.csv.gz``, ``schema-<run>.json``) and the manifest, created exclusively (``IfNoneMatch`` on S3, a
hard link on disk), names the keys it describes; readers open the keys the manifest names. Two extracts of one
version can therefore never write the same object: the first manifest wins, and the loser removes its own
data and stops quietly ("already staged by run …"). A version whose source did not change (see
``databridge_luigi.change``) gets a manifest that names the previous version's data (``unchanged_from``).
Manifests written before this layout have no keys: their data is ``data.csv.gz`` and their schema
``schema.json`` in the version's own folder.

The package is split by concern:

* ``pipes``  — the bounded background stages (compressor, S3 uploader, read-ahead gunzip);
* ``stores`` — where bytes live: a directory (``LocalStore``) or S3 (``S3Store``, multipart), ``open_store``;
* ``table``  — the staged-table format: ``Manifest``, ``StagedTable`` and its writer;
* ``errors`` and ``tuning`` — the exceptions, and the sizes and levels the others read at run time (tests
  and the bench change them with ``monkeypatch.setattr(staging.tuning, "PART_SIZE", …)``).

Every name is importable from ``databridge_luigi.staging``; no module of the package imports the package.
"""
from __future__ import annotations

from .errors import AlreadyStaged, StagingError
from .tuning import BLOCK_SIZE, GZIP_LEVEL, PART_SIZE, QUEUE_BLOCKS, QUEUE_PARTS, READ_CHUNK
from .pipes import DEFLATE, _DONE, _Inflater, _Stage, _ZLIB_ERRORS, _zlib
from .stores import (
    LocalStore, S3Store, Store, WriteStream, _LocalWrite, _S3MultipartWrite, _STORES, _STORES_LOCK, _naming_errors,
    _write_error, open_store,
)
from .table import DATA, MANIFEST, SCHEMA, Manifest, StagedTable, StagedTableWriter, _csv_line, new_run_id

__all__ = [
    "AlreadyStaged", "BLOCK_SIZE", "DATA", "DEFLATE", "GZIP_LEVEL", "LocalStore", "MANIFEST", "Manifest", "PART_SIZE",
    "QUEUE_BLOCKS", "QUEUE_PARTS", "READ_CHUNK", "S3Store", "SCHEMA", "StagedTable", "StagedTableWriter", "StagingError",
    "Store", "WriteStream", "new_run_id", "open_store",
]
