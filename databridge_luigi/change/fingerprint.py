"""Fingerprints stored in a signal besides the source's counters: the dataset's config and the extract code
(``config``) and which source and table (``source``); a signal differing in either means extract."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from ..config import Dataset
from ..connections import redact


def config_fingerprint(dataset: Dataset) -> str:
    """What else decides the staged bytes: the config file, the schema override and the extract's code."""
    digest = hashlib.sha256()
    for path in (dataset.path, dataset.schema_override):
        if path:
            try:
                digest.update(Path(path).read_bytes())
            except OSError:
                digest.update(b"<unreadable>")
        digest.update(b"\0")
    digest.update(_code_fingerprint().encode())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """The code that turns source rows into staged bytes (sources/, schema, geometry, the staged-table writer):
    a deploy that changes any of it extracts every dataset once, so no version keeps bytes an older release made."""
    package = Path(__file__).resolve().parent.parent  # databridge_luigi/, this file being change/fingerprint.py
    files = sorted((package / "sources").rglob("*.py")) + [package / "schema.py", package / "geometry.py",
                                                          package / "staging" / "table.py"]
    digest = hashlib.sha256()
    for path in files:
        try:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
        except (OSError, ValueError):
            digest.update(b"<unreadable>")
    return digest.hexdigest()


def _source_fingerprint(dataset: Dataset, url: str) -> str:
    """Which source: the connection URL without its password, and the table."""
    try:
        from sqlalchemy.engine import make_url

        where = make_url(url).set(password=None).render_as_string(hide_password=False)
    except Exception:
        where = redact(url)
    text = json.dumps([where, dataset.source_schema, dataset.source_table])
    return hashlib.sha256(text.encode()).hexdigest()
