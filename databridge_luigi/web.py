"""``databridge-luigi serve``: the status page (``status.html_page``) over HTTP, on loopback by default.

    GET /             the page (one row per dataset, coloured by state, sortable, rows link to luigid)
    GET /status.json  the same as ``databridge-luigi status --json``

Each request reads the config tree and the destinations again (at most once every ``CACHE_SECONDS``).
The page has no authentication: bind it to 127.0.0.1 (the default) or put an authenticating proxy in front.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from . import status
from .connections import redact_exception

log = logging.getLogger(__name__)
CACHE_SECONDS = 15.0


class _Snapshot:
    def __init__(self, registry: Callable[[], Any], store: Callable[[], Any], luigid: str | None):
        self.registry, self.store, self.luigid = registry, store, luigid
        self._lock = threading.Lock()
        self._rows: list[status.DatasetStatus] | None = None
        self._at = 0.0

    def rows(self) -> list[status.DatasetStatus]:
        with self._lock:
            if self._rows is None or time.monotonic() - self._at > CACHE_SECONDS:
                rows = status.collect(self.registry(), self.store(), luigid=self.luigid, history=status.history_url())
                self._rows = sorted(rows, key=status.sort_key)
                self._at = time.monotonic()
            return self._rows


def make_server(registry: Callable[[], Any], store: Callable[[], Any], host: str = "127.0.0.1", port: int = 8090,
                luigid: str | None = None) -> ThreadingHTTPServer:
    snapshot = _Snapshot(registry, store, luigid)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", status.html_page(snapshot.rows()).encode())
                elif path == "/status.json":
                    self._send(200, "application/json", status.as_json(snapshot.rows()).encode())
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")
            except Exception as exc:  # one readable line, never a traceback to the browser
                self._send(500, "text/plain; charset=utf-8", f"status unavailable: {redact_exception(exc)}\n".encode())

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)


def serve(registry: Callable[[], Any], store: Callable[[], Any], host: str = "127.0.0.1", port: int = 8090,
          luigid: str | None = None) -> int:
    server = make_server(registry, store, host, port, luigid)
    bound_host, bound_port = server.server_address[:2]
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"databridge-luigi serve: listening on {host}, not loopback: the page has no authentication", file=sys.stderr)
    print(f"databridge-luigi status page: http://{bound_host}:{bound_port}/  (JSON: /status.json)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
