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
* ``table``  — the staged-table format: ``Manifest``, ``StagedTable`` and its writer.

Every name is importable from ``databridge_luigi.staging``, and the tunables below are read from here at
run time (tests and the bench change them with ``monkeypatch.setattr(staging, "PART_SIZE", …)``).
"""
from __future__ import annotations

# The legacy names (manifests without data/schema keys) and the manifest's own name.
DATA, SCHEMA, MANIFEST = "data.csv.gz", "schema.json", "manifest.json"
# Chosen by measurement (bench/README.md "Profile", 163 MB of bench CSV, one core): zlib level 1 takes 1.25 s
# for 2.79x (3: 1.58 s, 2.88x; 6: 3.02 s, 3.13x); ISA-L level 1 takes 0.30 s for 3.02x (3: 0.43 s, 3.09x).
# Compression runs beside the source read on a 2-core machine, so its CPU time is what counts.
GZIP_LEVEL = 1
PART_SIZE = 8 * 1024 * 1024
BLOCK_SIZE = 1024 * 1024  # CSV bytes handed to the compressor (and decompressed bytes handed to a reader) at a time
QUEUE_BLOCKS = 4  # blocks waiting for the compressor / produced ahead of a reader
QUEUE_PARTS = 2  # full parts waiting for the uploader
READ_CHUNK = 256 * 1024  # compressed bytes read from the store at a time


class StagingError(RuntimeError):
    """A staging object that is missing, corrupt or already exists."""


class AlreadyStaged(StagingError):
    """The manifest for this version exists: another run finished it first."""


from .pipes import DEFLATE, _DONE, _Inflater, _Stage, _ZLIB_ERRORS, _zlib  # noqa: E402
from .stores import (  # noqa: E402
    LocalStore, S3Store, Store, WriteStream, _LocalWrite, _S3MultipartWrite, _STORES, _STORES_LOCK, _naming_errors,
    _write_error, open_store,
)
from .table import Manifest, StagedTable, StagedTableWriter, _csv_line, new_run_id  # noqa: E402

__all__ = [
    "AlreadyStaged", "BLOCK_SIZE", "DATA", "DEFLATE", "GZIP_LEVEL", "LocalStore", "MANIFEST", "Manifest", "PART_SIZE",
    "QUEUE_BLOCKS", "QUEUE_PARTS", "READ_CHUNK", "S3Store", "SCHEMA", "StagedTable", "StagedTableWriter", "StagingError",
    "Store", "WriteStream", "new_run_id", "open_store",
]
