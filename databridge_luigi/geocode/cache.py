"""The geocode cache: one gzipped JSON-lines object per dataset and provider in staging,
``_geocode_cache/<provider>/<dataset_id>.jsonl.gz``, read whole at the start of a run and rewritten
atomically (``open_write`` + ``commit``) after it.

A line is ``{"k": <normalized query>, "t": <unix time>, "o": <options fingerprint>, "c": [candidates]}``.
``c`` holds the provider's answer trimmed to what the output needs (an empty list is a cached miss), so the
acceptance rule and the zip tie-break apply at use time and a config change of those needs no new calls.
An entry older than the max age, or made with other request options (srid, estimates), is not used.
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import time
from typing import Any

from ..staging import Store

log = logging.getLogger(__name__)

PREFIX = "_geocode_cache"


def normalize_query(query: str) -> str:
    """Upper case, whitespace collapsed: the cache key."""
    return re.sub(r"\s+", " ", query).strip().upper()


class GeocodeCache:
    def __init__(self, store: Store, provider: str, dataset_id: str, max_age_days: float, now: float | None = None):
        self.store, self.key = store, f"{PREFIX}/{provider}/{dataset_id}.jsonl.gz"
        self.max_age = max_age_days * 86400.0
        self.now = time.time() if now is None else now
        self._entries: dict[str, dict[str, Any]] = {}
        self.dirty = False

    def load(self) -> "GeocodeCache":
        data = self.store.read_bytes(self.key)
        if data is None:
            return self
        try:
            text = gzip.decompress(data).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            log.warning("geocode cache %s is unreadable (%s); starting empty", self.store.describe(self.key), exc)
            return self
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                if self.now - float(entry["t"]) <= self.max_age:
                    self._entries[str(entry["k"])] = entry
                else:
                    self.dirty = True  # expired entries are dropped at the next save
            except (ValueError, KeyError, TypeError):
                self.dirty = True
        return self

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, options: str) -> list[dict[str, Any]] | None:
        entry = self._entries.get(key)
        if entry is None or entry.get("o") != options:
            return None
        return list(entry.get("c") or [])

    def put(self, key: str, options: str, candidates: list[dict[str, Any]]) -> None:
        self._entries[key] = {"k": key, "t": self.now, "o": options, "c": candidates}
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        body = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in self._entries.values())
        stream = self.store.open_write(self.key)
        try:
            stream.write(gzip.compress(body.encode("utf-8"), compresslevel=6, mtime=0))
            stream.commit()
        except BaseException:
            stream.abort()
            raise
        self.dirty = False
