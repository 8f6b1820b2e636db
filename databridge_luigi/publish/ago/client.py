"""The AGO REST client: requests to one organisation's portal and services, and the errors they raise.

Parses ``ago://`` connection URLs and holds the token (generated from a user and password, or an API key).
The token is sent in the ``X-Esri-Authorization`` header and POST bodies, never in a URL; every token and
password is registered with the redactor. Throttling, gateway errors, dropped connections and rejected
tokens are retried with backoff, and an error envelope inside a 200 body becomes an ``AgoApiError``.
``AgoLoadError`` is what every part of the AGO destination stops a publish with.
"""
from __future__ import annotations

import logging
import math
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from ...connections import redact, register_secret, resolve

log = logging.getLogger(__package__)  # one logger for the AGO destination

TOKEN_MINUTES = 60
TOKEN_RENEW_SECONDS = 300  # renew a token this long before it expires
REQUEST_TIMEOUT = 120.0
MAX_ATTEMPTS = 6
BACKOFF_INITIAL = 0.5  # seconds before the first retry; doubled each time, with jitter
BACKOFF_CAP = 60.0


class AgoLoadError(RuntimeError):
    """A publish to AGO that stopped; the message names dataset, layer and operation."""


class AgoApiError(RuntimeError):
    """An AGO answer that is an error (an ``error`` envelope in a 200 body, or an HTTP error)."""

    def __init__(self, operation: str, code: int | None, message: str, details: list[str] | None = None, *, uncertain: bool = False,
                 url: str | None = None):
        self.operation, self.code, self.message, self.details = operation, code, message, details or []
        self.uncertain = uncertain  # an edit that may have gone through (timeout, gateway error, dropped connection)
        detail = f" ({'; '.join(self.details)})" if self.details else ""
        at = f" at {url}" if url else ""
        super().__init__(redact(f"{operation}{at}: {message}{detail}" + (f" [code {code}]" if code is not None else "")))


@dataclass
class Connection:
    name: str
    scheme: str
    host: str
    path: str
    user: str
    password: str

    @property
    def api_key(self) -> str | None:
        return self.password if not self.user else None

    @property
    def portal(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}/sharing/rest"


def parse_connection(name: str, url: str) -> Connection:
    """``ago://USER:PASSWORD@ORG.maps.arcgis.com``, ``ago://:API_KEY@host``, ``ago+http://…`` (tests)."""
    parts = urlsplit(url)
    scheme = {"ago": "https", "ago+https": "https", "ago+http": "http"}.get(parts.scheme.lower())
    if scheme is None:
        raise AgoLoadError(f"connection {name!r}: not an ago:// URL")
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    register_secret(password)
    if not password:
        raise AgoLoadError(f"connection {name!r}: needs USER:PASSWORD@ or :API_KEY@ before the host")
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return Connection(name, scheme, host, parts.path.rstrip("/"), user, password)


class AgoClient:
    """Requests to one AGO organisation: token handling, retries with backoff, errors inside 200 bodies."""

    def __init__(self, connection: Connection, sleep: Callable[[float], None] = time.sleep):
        self.connection, self.sleep = connection, sleep
        self.session = requests.Session()
        self._token: str | None = connection.api_key
        self._expires = math.inf if connection.api_key else 0.0
        if connection.api_key:
            register_secret(connection.api_key)
        self.token_renewals = 0
        self.retries = 0

    @classmethod
    def from_connection(cls, name: str) -> "AgoClient":
        return cls(parse_connection(name, resolve(name)))

    # --- tokens ----------------------------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None or time.time() > self._expires - TOKEN_RENEW_SECONDS:
            self._generate_token()
        assert self._token is not None
        return self._token

    def _generate_token(self) -> None:
        c = self.connection
        data = {"username": c.user, "password": c.password, "client": "referer", "referer": f"{c.scheme}://{c.host}",
                "expiration": str(TOKEN_MINUTES), "f": "json"}
        body = self._send("POST", f"{c.portal}/generateToken", "generateToken", data, auth=False)
        if "token" not in body:
            raise AgoApiError("generateToken", None, "no token in the answer", url=f"{c.portal}/generateToken")
        register_secret(body["token"])
        self._token = str(body["token"])
        self._expires = float(body.get("expires") or (time.time() + TOKEN_MINUTES * 60) * 1000) / 1000.0
        self.token_renewals += 1

    def _invalidate_token(self) -> None:
        if self.connection.api_key is None:
            self._token = None

    # --- requests --------------------------------------------------------------------------------------------

    def get(self, url: str, operation: str, **params: Any) -> dict[str, Any]:
        return self.call("GET", url, operation, params)

    def post(self, url: str, operation: str, edit: bool = False, files: dict[str, Any] | None = None, **data: Any) -> dict[str, Any]:
        return self.call("POST", url, operation, data, edit=edit, files=files)

    def call(self, method: str, url: str, operation: str, data: dict[str, Any] | None = None, *, edit: bool = False,
             files: dict[str, Any] | None = None) -> dict[str, Any]:
        """One operation, retried on throttling, gateway errors, dropped connections and expired tokens.
        An ``edit`` is only retried where it cannot have been applied (429, a rejected token); a timeout or a
        5xx raises ``AgoApiError(uncertain=True)`` so the caller checks before resending."""
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            try:
                return self._send(method, url, operation, dict(data or {}), files=files)
            except AgoApiError as exc:
                if exc.code in (498, 499) and not renewed and self.connection.api_key is None:
                    renewed = True  # expired mid-load: renew once and repeat (nothing was applied)
                    self._invalidate_token()
                    log.info("%s: token rejected (%s); renewing", operation, exc.code)
                    continue
                retryable = exc.code == 429 or (not edit and (exc.uncertain or exc.code in (500, 502, 503, 504)))
                if not retryable or attempt >= MAX_ATTEMPTS:
                    raise
                wait = self._backoff(attempt, getattr(exc, "retry_after", None))
                self.retries += 1
                log.warning("%s: %s; retry %d/%d in %.1fs", operation, exc.message, attempt, MAX_ATTEMPTS - 1, wait)
                self.sleep(wait)

    @staticmethod
    def _backoff(attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(float(retry_after), BACKOFF_CAP)
        return min(BACKOFF_CAP, BACKOFF_INITIAL * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    def _send(self, method: str, url: str, operation: str, data: dict[str, Any], *, files: dict[str, Any] | None = None,
              auth: bool = True) -> dict[str, Any]:
        data.setdefault("f", "json")
        headers = self._auth_headers() if auth else {}
        try:
            if method == "GET":
                reply = self.session.get(url, params=data, headers=headers, timeout=REQUEST_TIMEOUT)
            else:
                reply = self.session.post(url, data=data, files=files, headers=headers, timeout=REQUEST_TIMEOUT)
        except (requests.ConnectionError, requests.Timeout, socket.timeout) as exc:
            raise AgoApiError(operation, None, f"{type(exc).__name__}: {exc}", uncertain=True, url=url) from None
        if reply.status_code == 429:
            error = AgoApiError(operation, 429, "throttled (HTTP 429)", url=url)
            retry_after = reply.headers.get("Retry-After")
            error.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else None  # type: ignore[attr-defined]
            raise error
        if reply.status_code >= 500:
            raise AgoApiError(operation, reply.status_code, f"HTTP {reply.status_code}", uncertain=True, url=url)
        if reply.status_code >= 400:
            raise AgoApiError(operation, reply.status_code, f"HTTP {reply.status_code}: {reply.text[:200]}", url=url)
        try:
            body = reply.json()
        except ValueError:
            raise AgoApiError(operation, reply.status_code, f"not JSON: {reply.text[:120]!r}", uncertain=True, url=url) from None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            message = str(err.get("message") or err.get("description") or "error")
            code = err.get("code")
            timed_out = "timed out" in message.lower()
            raise AgoApiError(operation, int(code) if isinstance(code, int) else None, message,
                              [str(d) for d in err.get("details") or []], uncertain=timed_out or code in (500, 502, 503, 504), url=url)
        if isinstance(body, dict) and "code" in body and "message" in body and "error" not in body and not body.get("success", True):
            raise AgoApiError(operation, int(body["code"]), str(body["message"]), url=url)  # billing-style top-level error (§4.2)
        return body

    def get_document(self, url: str) -> requests.Response:
        """A plain GET with the token header, neither retried nor read as JSON (an item's metadata.xml)."""
        return self.session.get(url, headers=self._auth_headers(), timeout=REQUEST_TIMEOUT)

    def _auth_headers(self) -> dict[str, str]:
        return {"X-Esri-Authorization": f"Bearer {self.token()}"}
