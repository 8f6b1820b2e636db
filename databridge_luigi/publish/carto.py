"""The CARTO transport: the load protocol over CARTO's v2 HTTP APIs (SQL and COPY), with requests.

URL forms (external-apis.md §1.1):

* ``carto://USER:API_KEY`` → ``https://USER.carto.com/api/v2/sql``
* ``carto://USER:API_KEY@HOST[:PORT][/PATH]`` → ``https://HOST[:PORT][/PATH]/api/v2/sql`` (PATH such as
  ``/user/USER`` for organization and on-prem installs)
* ``carto+http://…`` the same over plain http (tests, emulators); ``carto+https://…`` = ``carto://…``.
* ``?schema=name`` overrides the default schema, which is the account's own: ``SELECT current_schema()`` on
  first use (cached per transport). On the genuine server that is ``public`` for a non-organization account
  and the user name for an organization member (the database role's search_path decides, not the URL).

One ``requests.Session`` per transport, a timeout on every call. Retries (tenacity, bounded, exponential
backoff): a 429 rate limit waits its ``Retry-After``; 5xx, connection resets and timeouts back off; other
4xx never retry. A 429 *statement timeout* (no ``Retry-After``) fails at once with a hint.

The API key travels as HTTP Basic auth (user = the CARTO user, password = the key), which the genuine
server's authorization middleware reads first on every endpoint: SQL, COPY and the Batch SQL API. It is never
put in a URL (servers and proxies log query strings) nor in a request body; it never appears in an
exception, a log line or ``repr``: the key is registered with ``connections.redact`` and every message goes
through it.

COPY retry policy: a COPY request runs as one transaction on the server, so a failed COPY copied nothing
and the shadow is still empty. A COPY is therefore re-sent, streaming again from staging, after a 429
rate limit, a 5xx or a connection error (reset, refused, connect timeout). It is *not* re-sent after a
read timeout, where the server may still be copying. Should a retry ever follow a COPY that did commit
(its reply lost on the way back), the shadow would hold the rows twice and the protocol's count check
(copied = counted = staged) fails the load before the swap, so the live table is never affected.
"""
from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from ..config import Dataset
from ..connections import CredentialsRejected, redact, register_secret
from ..schema import TableSchema
from ..staging import StagedTable
from . import sql

log = logging.getLogger(__name__)

COPY_CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 15.0
QUERY_TIMEOUT = 300.0  # the SQL API's own statement timeout is far shorter (5–25 s); this guards a hung socket
COPY_TIMEOUT = 3600.0  # waiting for COPY's reply after the body was sent (the server allows 5 h)
MAX_ATTEMPTS = 5
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 120.0
JOB_POLL_INITIAL = 1.0
JOB_POLL_MAX = 15.0
JOB_DEADLINE = 6 * 3600.0  # the Batch SQL API itself allows 12 h per job
BATCH_PAYLOAD_LIMIT = 16 * 1024  # bytes of JSON body per Batch SQL job (external-apis.md §1.6)
PUBLIC_ROLE = "publicuser"
TIMEOUT_HINT = ("the statement exceeded CARTO's SQL API statement timeout; split it into smaller statements "
                "or run it through the Batch SQL API (/api/v2/sql/job)")


class CartoError(RuntimeError):
    """A CARTO API failure, naming the connection, the endpoint path and the statement (never the key)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(redact(message))
        self.status = status


class CartoConfigError(CartoError):
    """401/403/404: a wrong API key, an unknown user or a wrong host/path — the connection URL is wrong."""


class CartoAuthError(CartoConfigError, CredentialsRejected):
    """401: CARTO rejected the API key (it may have been rotated; see connections.credentials_rotated)."""


class CartoTimeoutError(CartoError):
    """429 statement timeout: the statement is too big for the SQL API."""


class _Retryable(Exception):
    """A transient failure; carries the error to raise when the attempts run out."""

    def __init__(self, error: CartoError, retry_after: float | None = None):
        super().__init__(str(error))
        self.error, self.retry_after = error, retry_after


def parse_url(url: str) -> tuple[str, str, str, str]:
    """A carto URL → (SQL API endpoint URL, user, api_key, schema). Errors never echo the URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("carto", "carto+http", "carto+https"):
        raise ValueError(f"not a carto:// URL (scheme {scheme!r})")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        userinfo, hostport = hostport, ""
    user, colon, key = userinfo.partition(":")
    user, key = unquote(user), unquote(key)
    if not user or not colon or not key:
        raise ValueError("expected carto://USER:API_KEY or carto://USER:API_KEY@HOST[:PORT][/PATH]")
    register_secret(key)
    http = "http" if scheme == "carto+http" else "https"
    host = hostport or f"{quote(user, safe='')}.carto.com"
    path = parts.path.rstrip("/") if hostport else ""
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    schema = query.get("schema") or ""  # "": the account's own, asked from the server on first use
    return f"{http}://{host}{path}/api/v2/sql", user, key, schema


def _first_line(statement: str) -> str:
    lines = statement.strip().splitlines()
    return lines[0][:200] if lines else ""


def _message(response: requests.Response) -> str:
    """The server's error text: ``{"error": [...], "hint": ...}`` or the start of a non-JSON page."""
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())
        return text[:200] or response.reason or f"HTTP {response.status_code}"
    if isinstance(body, dict) and "error" in body:
        errors = body["error"]
        text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
        if body.get("hint"):
            text += f" (hint: {body['hint']})"
        return text
    return str(body)[:200]


class CartoTransport:
    """The Transport protocol over CARTO's SQL API (``/api/v2/sql``) and COPY API (``/sql/copyfrom``)."""

    # Written by CARTO itself: cartodb_id from the live table's sequence (merge keeps a row's id; apps link
    # to it), the_geom_webmercator by cartodbfy's trigger. Loads never copy them from the shadow.
    managed_columns: tuple[str, ...] = ("cartodb_id", "the_geom_webmercator")
    own_triggers: tuple[str, ...] = ("track_updates", "test_quota", "test_quota_per_row", "update_the_geom_webmercator_trigger")

    def __init__(self, name: str, url: str):
        self.name = name
        try:
            self._endpoint, self.user, self._api_key, self._schema = parse_url(url)
        except ValueError as exc:
            raise CartoConfigError(f"connection {name!r}: bad CARTO URL: {exc}") from None
        self._path = urlsplit(self._endpoint).path
        self._origin = self._endpoint[: len(self._endpoint) - len(self._path)]  # scheme://host[:port]: no key in it
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "databridge-luigi"
        # Basic auth on every request (SQL, COPY, Batch): the key stays out of URLs and bodies. The header's
        # base64 form is a secret too.
        self._session.auth = (self.user, self._api_key)
        register_secret(base64.b64encode(f"{self.user}:{self._api_key}".encode()).decode())

    @property
    def default_schema(self) -> str:
        """The schema tables go to unless a dataset names one: ``?schema=`` in the URL, else the account's own
        (``current_schema()``: ``public`` for a non-organization account, the user name in an organization)."""
        if not self._schema:
            rows = self.query("SELECT current_schema() AS schema")
            schema = rows[0].get("schema") if rows else None
            if not isinstance(schema, str) or not schema:
                raise CartoError(f"destination {self.name!r}: the account has no current schema (its search_path is empty); "
                                 "name one with ?schema= in the connection URL")
            self._schema = schema
        return self._schema

    def __repr__(self) -> str:
        return f"CartoTransport({self.name!r}, {self._endpoint!r})"

    # --- the Transport protocol -------------------------------------------------------------------------

    def query(self, statement: str) -> list[dict[str, Any]]:
        body = self._call(self._path, statement, lambda: self._session.post(
            self._endpoint, data={"q": statement}, timeout=(CONNECT_TIMEOUT, QUERY_TIMEOUT)))
        rows = body.get("rows", [])
        return rows if isinstance(rows, list) else []

    def transaction(self, statements: list[str]) -> None:
        """One request holding ``BEGIN; …; COMMIT;`` (the server runs a multi-statement ``q`` as one simple query).
        One that outlasts the SQL API's statement timeout was rolled back whole, so it is sent again as one
        Batch SQL API job (same text, same single transaction; e.g. a replace or merge of a large table)."""
        self.long_query("BEGIN; " + "; ".join(s.rstrip().rstrip(";") for s in statements) + "; COMMIT;")

    def copy_in(self, copy_statement: str, staged: StagedTable, create: str | None = None) -> int:
        if create is not None:  # the COPY API is a request of its own: no transaction spans the two
            self.query(create)
        path = self._path + "/copyfrom"

        def send() -> requests.Response:
            return self._session.post(
                self._endpoint + "/copyfrom",
                params={"q": copy_statement},  # the COPY endpoint reads q from the URL only; the key is in the header
                data=self._gzip_chunks(staged),  # a generator: streamed, Transfer-Encoding: chunked
                headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
                timeout=(CONNECT_TIMEOUT, COPY_TIMEOUT),
            )

        body = self._call(path, copy_statement, send, retry_read_timeout=False)
        total = body.get("total_rows")
        if not isinstance(total, int):
            raise CartoError(f"destination {self.name!r}: {path} answered without total_rows "
                             f"(while running: {_first_line(copy_statement)})")
        return total

    def long_query(self, statement: str) -> None:
        """A statement that may outlast the SQL API's statement timeout (cartodbfy, VACUUM, CREATE INDEX on a
        large table): tried on the SQL API first; on a timeout 429 it runs as a Batch SQL API job instead."""
        try:
            self.query(statement)
        except CartoTimeoutError as exc:
            size = len(json.dumps({"query": statement}, ensure_ascii=False).encode())
            if size > BATCH_PAYLOAD_LIMIT:  # the server would answer 400 "Your payload is too large"
                raise CartoTimeoutError(f"{exc}; it cannot go to the Batch SQL API either: {size} bytes is over its "
                                        f"{BATCH_PAYLOAD_LIMIT // 1024} KB limit per job", exc.status) from None
            log.info("%s: %s passed the SQL API timeout; running it through the Batch SQL API", self.name, _first_line(statement))
            self._batch_job(statement)

    def finish_shadow(self, schema: str, shadow: str, table_schema: TableSchema) -> None:
        # §8.6: the regclass argument is qualified, or a same-named table elsewhere on search_path is taken.
        self.long_query(f"SELECT CDB_CartodbfyTable({sql.literal(schema)}, {sql.literal(sql.qualified(schema, shadow))})")
        self.long_query(f"VACUUM ANALYZE {sql.qualified(schema, shadow)}")  # VACUUM cannot share a request

    def post_swap(self, schema: str, table: str, table_schema: TableSchema, dataset: Dataset) -> None:
        """Privacy: the table is public on CARTO iff ``publicuser`` may SELECT it; it should be iff granted."""
        wanted = PUBLIC_ROLE in dataset.grants
        try:
            rows = self.query(f"SELECT has_table_privilege({sql.literal(PUBLIC_ROLE)}, "
                              f"{sql.literal(sql.qualified(schema, table))}, 'SELECT') AS public")
            public = bool(rows and rows[0].get("public"))
        except CartoError as exc:
            log.warning("%s: could not check the privacy of %s.%s on %s: %s", dataset.id, schema, table, self.name, exc)
            return
        if public != wanted:
            log.warning("%s: %s.%s on %s is %s but carto_users %s publicuser", dataset.id, schema, table, self.name,
                        "PUBLIC" if public else "PRIVATE", "includes" if wanted else "does not include")

    def index_columns(self, dataset: Dataset, table_schema: TableSchema) -> list[list[str]]:
        """Configured indexes; the source geometry column is gone after cartodbfy, which indexes the_geom."""
        geometry = table_schema.geometry.name if table_schema.geometry else None
        wanted: list[list[str]] = []
        for index in dataset.indexes:
            columns = index.split("+")
            if geometry in columns or set(columns) & {"the_geom", "the_geom_webmercator"}:
                log.info("%s: index %s skipped on CARTO: cartodbfy indexes the_geom and the_geom_webmercator", dataset.id, index)
                continue
            wanted.append(columns)
        return wanted

    def close(self) -> None:
        self._session.close()

    # --- Batch SQL API ----------------------------------------------------------------------------------

    def _batch_job(self, statement: str) -> None:
        """Create a job, poll it with growing intervals until it is done, and fail with its reason otherwise.
        A job runs on the server whatever its client does, so one left unfinished — past the deadline, or
        when polling stops (SIGTERM's ``Terminated``, an error) — is cancelled: nothing keeps running, or
        commits later, behind a load that already failed."""
        path = self._path + "/job"
        job = self._call(path, statement, lambda: self._session.post(
            self._endpoint + "/job", json={"query": statement}, timeout=(CONNECT_TIMEOUT, QUERY_TIMEOUT)))
        job_id = str(job.get("job_id", ""))
        if not job_id:
            raise CartoError(f"destination {self.name!r}: {path} created no job (while running: {_first_line(statement)})")
        deadline, delay = time.monotonic() + JOB_DEADLINE, JOB_POLL_INITIAL
        try:
            while True:
                job = self._call(f"{path}/{job_id}", statement, lambda: self._session.get(
                    f"{self._endpoint}/job/{job_id}", timeout=(CONNECT_TIMEOUT, QUERY_TIMEOUT)))
                status = job.get("status")
                if status == "done":
                    return
                if status in ("failed", "cancelled", "canceled", "unknown"):
                    reason = job.get("failed_reason") or status
                    job_id = ""  # finished: nothing to cancel
                    raise CartoError(f"destination {self.name!r}: Batch SQL job {job.get('job_id')} {status}: {reason} "
                                     f"(while running: {_first_line(statement)})")
                if time.monotonic() > deadline:
                    raise CartoError(f"destination {self.name!r}: Batch SQL job {job_id} still {status} after {JOB_DEADLINE:.0f}s; cancelled")
                time.sleep(delay)
                delay = min(delay * 2, JOB_POLL_MAX)
        except BaseException:
            if job_id:
                self._cancel_job(job_id)
            raise

    def _cancel_job(self, job_id: str) -> None:
        """Best effort, one short request: the caller is already failing (or being stopped)."""
        try:
            response = self._session.delete(f"{self._endpoint}/job/{job_id}", timeout=(CONNECT_TIMEOUT, 10))
            log.warning("%s: cancelled Batch SQL job %s (HTTP %s)", self.name, job_id, response.status_code)
        except Exception as exc:  # the job's own timeout still bounds it
            log.warning("%s: could not cancel Batch SQL job %s: %s", self.name, job_id, redact(str(exc)))

    # --- HTTP -------------------------------------------------------------------------------------------

    @staticmethod
    def _gzip_chunks(staged: StagedTable) -> Iterator[bytes]:
        with staged.open_gzip() as stream:
            while chunk := stream.read(COPY_CHUNK):
                yield chunk

    def _call(self, path: str, statement: str, send: Any, retry_read_timeout: bool = True) -> dict[str, Any]:
        """One API call with bounded retries; returns the JSON body or raises CartoError."""
        where = f"destination {self.name!r} (CARTO user {self.user!r}, {self._origin}{path})"
        what = f"(while running: {_first_line(statement)})"

        def attempt() -> dict[str, Any]:
            try:
                response = send()
            except requests.ReadTimeout:
                error = CartoError(f"{where}: read timeout, no reply in time {what}")
                if retry_read_timeout:
                    raise _Retryable(error) from None
                raise error from None
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                kind = "connect timeout" if isinstance(exc, requests.ConnectTimeout) else "connection failed"
                raise _Retryable(CartoError(f"{where}: {kind} ({exc.__class__.__name__}) {what}")) from None
            return self._reply(response, where, what)

        retrying = Retrying(stop=stop_after_attempt(MAX_ATTEMPTS), wait=_wait, retry=retry_if_exception_type(_Retryable),
                            before_sleep=self._log_retry(where), reraise=True)
        started = time.monotonic()
        try:
            return retrying(attempt)
        except _Retryable as exc:
            attempts = retrying.statistics.get("attempt_number", MAX_ATTEMPTS)
            raise type(exc.error)(f"{exc.error} — gave up after {attempts} attempts in {time.monotonic() - started:.1f}s",
                                  exc.error.status) from None

    def _reply(self, response: requests.Response, where: str, what: str) -> dict[str, Any]:
        status = response.status_code
        if status in (200, 201):  # 201: a Batch SQL job was created
            try:
                body = response.json()
            except ValueError:
                raise CartoError(f"{where}: HTTP 200 with a body that is not JSON {what}", status) from None
            if not isinstance(body, dict):
                raise CartoError(f"{where}: HTTP 200 with an unexpected body {what}", status)
            if "error" in body:  # the statement failed after rows began streaming (§1.3)
                raise CartoError(f"{where}: failed mid-stream: {_message(response)} {what}", status)
            return body
        message = _message(response)
        if status == 429:
            retry_after = response.headers.get("Retry-After")
            if retry_after is not None:
                try:
                    seconds = max(0.0, float(retry_after))
                except ValueError:
                    seconds = None
                raise _Retryable(CartoError(f"{where}: rate limited (429): {message} {what}", status), seconds)
            raise CartoTimeoutError(f"{where}: 429 {message} — {TIMEOUT_HINT} {what}", status)
        if status >= 500:
            raise _Retryable(CartoError(f"{where}: server error {status}: {message} {what}", status))
        if status == 401:
            raise CartoAuthError(f"{where}: 401 {message} — CARTO rejected the API key; check the connection URL {what}", status)
        if status == 403:
            raise CartoConfigError(f"{where}: 403 {message} — the API key lacks the rights for this (use the master key) {what}", status)
        if status == 404:
            raise CartoConfigError(f"{where}: 404 {message} — unknown CARTO user or wrong host/path in the connection URL {what}", status)
        raise CartoError(f"{where}: {status} {message} {what}", status)

    def _log_retry(self, where: str) -> Any:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0
            log.warning("%s: attempt %d failed, retrying in %.1fs: %s", where, state.attempt_number, delay,
                        exc.error if isinstance(exc, _Retryable) else exc)
        return before_sleep


def _wait(state: RetryCallState) -> float:
    """``Retry-After`` for a rate limit (capped), else exponential backoff from BACKOFF_INITIAL."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return min(exc.retry_after, RETRY_AFTER_MAX)
    return min(BACKOFF_INITIAL * 2 ** (state.attempt_number - 1), BACKOFF_MAX)
