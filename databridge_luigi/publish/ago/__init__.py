"""ArcGIS Online (AGO) destination: one staged version → a hosted feature layer, never half-loaded for readers.

AGO has no transactions (arcgis-online.md §5), so the guarantees come from the mode: ``swap`` (default)
re-points a view between two source layers, ``upsert`` sends only what changed, ``truncate_append`` (asked
for explicitly) empties and refills the layer; ``modes.py`` says what readers see in each.

The marker (version, fingerprint, rows, counts) and the lease live in the readers' item's ``properties``
(key ``databridge_luigi``): one GET answers ``complete()``, nothing extra for the user to create, and the
marker travels with the item. AGO offers no compare-and-swap, so the lease is written, re-read after a
settle delay and checked again before the swap (fencing); see the README for what that does not cover.

The token is sent in the ``X-Esri-Authorization`` header and POST bodies, never in a URL; every token and
password is registered with the redactor.

The package is split by concern, each module importing only those before it:

* ``client``    — the REST client: connection URLs, tokens, retries, errors in 200 bodies; the two errors;
* ``item``      — the readers' item: its layers (``LayerInfo``), the marker and the lease in its properties;
* ``rows``      — staged CSV rows → Esri JSON features, keys and digests for comparing rows;
* ``layer``     — writing one layer: truncate, add in batches, ``applyEdits``, counts, schema check, indexes;
* ``modes``     — swap, upsert and truncate_append, made of the layer operations;
* ``push``      — the catalog push (reviseDate, ``on_published`` webhook), pending until it succeeds;
* ``publisher`` — ``AgoPublisher.load``: lease → mode → marker → push; ``AgoResult``;
* ``wiring``    — what ``tasks.LoadAgo`` calls: ``publish_to_ago``, ``AgoPublishedTarget``, one client per process.

Every name is importable from ``databridge_luigi.publish.ago``. The tunables live in the module that reads
them (``client.REQUEST_TIMEOUT``, ``client.BACKOFF_INITIAL``, ``layer.RECOUNT_WAIT``, ``item.LEASE_SETTLE``);
a test that wants them shorter changes them there.
"""
from __future__ import annotations

from .client import (
    BACKOFF_CAP, BACKOFF_INITIAL, MAX_ATTEMPTS, REQUEST_TIMEOUT, TOKEN_MINUTES, TOKEN_RENEW_SECONDS, AgoApiError, AgoClient,
    AgoLoadError, Connection, parse_connection,
)
from .item import KEEP_VERSIONS, LEASE_SETTLE, PROPERTIES_KEY, AgoItem, LayerInfo, service_name
from .layer import COMPATIBLE, RECOUNT_WAIT, SYSTEM_TYPES, LayerWriter
from .modes import LoadModes
from .publisher import AgoPublisher, AgoResult
from .push import CatalogPush
from .rows import RowConverter
from .wiring import AgoPublishedTarget, client_for, publish_to_ago, publisher_for

__all__ = [
    "BACKOFF_CAP", "BACKOFF_INITIAL", "COMPATIBLE", "KEEP_VERSIONS", "LEASE_SETTLE", "MAX_ATTEMPTS", "PROPERTIES_KEY",
    "RECOUNT_WAIT", "REQUEST_TIMEOUT", "SYSTEM_TYPES", "TOKEN_MINUTES", "TOKEN_RENEW_SECONDS", "AgoApiError", "AgoClient",
    "AgoItem", "AgoLoadError", "AgoPublishedTarget", "AgoPublisher", "AgoResult", "CatalogPush", "Connection", "LayerInfo",
    "LayerWriter", "LoadModes", "RowConverter", "client_for", "parse_connection", "publish_to_ago", "publisher_for",
    "service_name",
]
