"""The decision before an extract: read the dataset's signal (``read_signal``), compare it with the previous
version's (``why_changed``), and stage the version as unchanged or extract it (``extract_unless_unchanged``)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..config import Dataset
from ..connections import redact
from ..staging import Manifest, StagedTable
from .base import SignalUnavailable
from .fingerprint import _source_fingerprint, config_fingerprint
from .oracle import _oracle_column, _oracle_scn
from .postgres import MAX_XID_DISTANCE, _postgres_column, _postgres_xmin

log = logging.getLogger(__package__)  # databridge_luigi.change, the logger's name before the split

SIGNAL_FORMAT = 2  # 2: the newest xmin from age(); compared only with signals of the same format


def read_signal(dataset: Dataset, url: str, engine: Any = None) -> dict[str, Any]:
    """The dataset's change signal now, or SignalUnavailable saying why there is none."""
    options = getattr(dataset, "change_signal", True)
    if options is False:
        raise SignalUnavailable("change_signal: false")
    if dataset.kind != "databridge":
        raise SignalUnavailable(f"{dataset.kind} sources have no change signal")
    import sqlalchemy as sa

    if engine is None:
        from ..sources.sql.base import sqlalchemy_url  # the extract's own URL rule and engine: the same driver and
        from ..sources.sql.engines import source_engine  # connection read the signal, then the rows

        engine = source_engine(sqlalchemy_url(url))
    try:
        column = getattr(options, "column", None)
        dialect = engine.dialect.name
        if dialect == "postgresql":
            signal = _postgres_column(dataset, engine, options) if column else _postgres_xmin(dataset, engine)
        elif dialect == "oracle":
            signal = _oracle_column(dataset, engine, options) if column else _oracle_scn(dataset, engine)
        else:
            raise SignalUnavailable(f"{dialect} sources have no change signal")
    except SignalUnavailable:
        raise
    except sa.exc.SQLAlchemyError as exc:
        raise SignalUnavailable(f"reading it failed: {redact(str(getattr(exc, 'orig', None) or exc)).splitlines()[0]}") from None
    signal.update(format=SIGNAL_FORMAT, config=config_fingerprint(dataset), source=_source_fingerprint(dataset, url),
                  read_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return signal


# --- comparing --------------------------------------------------------------------------------------------

def why_changed(previous: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """None when ``current`` proves the source unchanged since ``previous`` was read; else the reason to extract."""
    if not previous:
        return "the previous version has no change signal"
    for key, reason in (("format", "the signal format changed"), ("kind", "the signal kind changed"),
                        ("source", "the source connection or table changed"), ("config", "the dataset's config changed")):
        if previous.get(key) != current.get(key):
            return reason
    if not previous.get("settled"):
        return "the previous signal was not settled (a write may have been in flight)"
    if not current.get("settled"):
        return "the signal is not settled (a write may be in flight)"
    if previous.get("identity") != current.get("identity"):
        changed = sorted(k for k in set(previous.get("identity") or {}) | set(current.get("identity") or {})
                         if (previous.get("identity") or {}).get(k) != (current.get("identity") or {}).get(k))
        return f"the table or server changed ({', '.join(changed)})"
    if current["kind"] == "postgresql-xmin":
        distance = int(current["snapshot_xmax"]) - int(previous["snapshot_xmax"])
        behind = int(current["snapshot_xmax"]) - int(previous["newest"] if previous.get("newest") is not None else previous["snapshot_xmin"])
        if not 0 <= distance or not behind < MAX_XID_DISTANCE:
            return f"the transaction counter moved by {distance} (wraparound window)"
    if previous.get("rows") != current.get("rows"):
        return f"the row count changed ({previous.get('rows')} → {current.get('rows')})"
    if previous.get("newest") != current.get("newest"):
        return "rows were written"
    return None


# --- the decision before an extract ---------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    manifest: Manifest
    extracted: bool  # False: already staged by another run, or unchanged
    message: str


Extractor = Callable[[], Manifest]


def extract_unless_unchanged(dataset: Dataset, url: str, staged: StagedTable, extract: Extractor, *, force: bool = False) -> Outcome:
    """Stage ``staged``'s version: nothing if it is staged already, the previous version's data if the change
    signal proves the source unchanged (never with ``force``), else ``extract()`` with the signal recorded."""
    if staged.exists():
        manifest = staged.manifest()
        return Outcome(manifest, False, f"already staged by run {manifest.run_id or '?'} ({manifest.staged_by or 'an earlier release'})")
    try:
        signal: dict[str, Any] | None = read_signal(dataset, url)
    except SignalUnavailable as exc:
        configured = getattr(getattr(dataset, "change_signal", None), "column", None)
        # A configured column that cannot be used is a config problem worth a warning; the rest is how it is.
        log.log(logging.WARNING if configured else logging.INFO, "%s: no change signal (%s); extracting", dataset.id, exc)
        signal = None
    except Exception as exc:  # any doubt means extract
        log.warning("%s: reading the change signal failed (%s); extracting", dataset.id, redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__)
        signal = None
    if signal is not None and not force:
        reason, previous = _compare_with_previous(staged, signal)
        if reason is None and previous is not None:
            return _record_unchanged(dataset, staged, previous, signal)
        log.info("%s: extracting version %s: %s", dataset.id, staged.version, reason)
    elif force:
        log.info("%s: --force: extracting version %s whatever the change signal says", dataset.id, staged.version)
    staged.change_signal = signal
    manifest = extract()
    if manifest.run_id and manifest.run_id != staged.run_id:
        return Outcome(manifest, False, f"already staged by run {manifest.run_id} ({manifest.staged_by})")
    return Outcome(manifest, True, f"staged {manifest.rows} rows at {staged.describe()}")


def _compare_with_previous(staged: StagedTable, signal: dict[str, Any]) -> tuple[str | None, StagedTable | None]:
    try:
        previous = staged.previous()
        if previous is None:
            return "no earlier staged version", None
        reason = why_changed(previous.manifest().change_signal, signal)
        if reason is None and not staged.store.exists(previous.data_key()):
            return f"the data of version {previous.version} is gone from staging", None
        return reason, previous
    except Exception as exc:  # an unreadable previous manifest is a doubt, not a failure
        return f"the previous version cannot be read ({redact(str(exc))[:200]})", None


def _record_unchanged(dataset: Dataset, staged: StagedTable, previous: StagedTable, signal: dict[str, Any]) -> Outcome:
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = staged.record_unchanged(previous, signal, created)
    if manifest.run_id != staged.run_id:
        return Outcome(manifest, False, f"already staged by run {manifest.run_id} ({manifest.staged_by})")
    message = (f"unchanged since {manifest.unchanged_from} (change signal: {signal['rows']} rows, nothing written since); "
               f"version {staged.version} staged without extracting")
    log.info("%s: %s", dataset.id, message)
    return Outcome(manifest, False, message)
