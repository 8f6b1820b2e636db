"""A fault-injecting reverse proxy, for services we do not emulate ourselves (moto's S3).

``FaultProxy(target_url)`` is an ``Emulator`` (tests/emulators/base.py): same lifecycle, request log, admin
endpoints and ``inject``. Every request is forwarded as it came — method, path, query, headers (``Host``
included, so a signed request stays valid), body streamed through with its own framing — and the answer is
streamed back. An injected fault is applied first and the request then never reaches the target:

* ``http_500`` / ``http_503``: S3's XML errors (``InternalError``, ``ServiceUnavailable``); ``http_502``: a
  gateway's HTML page, as a load balancer in front of S3 would send;
* ``rate_limit``: S3's throttling answer, 503 ``SlowDown``;
* ``reset``: the connection is dropped without a byte of answer; ``slow``: waits ``seconds`` then forwards;
* ``truncated_json`` / ``malformed_json``: the target's answer, cut in half / replaced (any content type).

Faults match on ``match`` (a substring of the path *and query string*, so ``"partNumber="`` targets
UploadPart and ``"uploads"`` CreateMultipartUpload) and, with the option ``method="PUT"``, on the method.
"""
from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response

from tests.emulators.base import Emulator, Fault, RecordedRequest, _abort_connection, _truncate

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length"}
CHUNK = 64 * 1024

_S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("ServiceUnavailable", "Please reduce your request rate."),
}


def s3_error(status: int, code: str, message: str, request: Request) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{request.path}</Resource>"
        "<RequestId>4442587FB7D0A2F9</RequestId></Error>"
    )
    return Response(body, status=status, content_type="application/xml")


class FaultProxy(Emulator):
    """Reverse proxy to ``target`` (``http://host:port``) with the base class's injected faults."""

    def __init__(self, target: str, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> None:
        super().__init__(host, port)
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FaultProxy forwards to http://host:port, not {target!r}")
        self.target_host, self.target_port = parts.hostname, parts.port or 80
        self.timeout = timeout

    # --- faults: also by method and query string -----------------------------------------------------------
    def _take_fault_for(self, request: Request) -> Fault | None:
        return self._take_fault(request.full_path.rstrip("?"), request.method)  # S3 keys live in the path and query

    def rate_limit_response(self, request: Request, **options: Any) -> Response:
        return s3_error(503, "SlowDown", "Please reduce your request rate.", request)

    def server_error_response(self, status: int, request: Request) -> Response:
        if status in _S3_ERRORS:
            return s3_error(status, *_S3_ERRORS[status], request)
        return super().server_error_response(status, request)

    # --- WSGI ----------------------------------------------------------------------------------------------
    def wsgi_app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path.startswith("/__emulator__/"):
            return self._admin(request)(environ, start_response)
        fault = self._take_fault_for(request)
        entry = RecordedRequest(
            method=request.method, path=request.path,
            query={key: request.args.getlist(key) for key in request.args},
            headers=dict(request.headers.items()), body=b"", json=None,  # the body is streamed, not kept
            fault=fault.name if fault else None, time=time.time(),
        )
        with self._lock:
            self.requests.append(entry)
        if fault is not None and fault.name == "reset":
            _abort_connection(environ)
        if fault is not None and fault.name in ("http_500", "http_502", "http_503", "rate_limit"):
            _drain(request)
            response = (self.rate_limit_response(request, **fault.options) if fault.name == "rate_limit"
                        else self.server_error_response(int(fault.name[5:]), request))
        else:
            if fault is not None and fault.name == "slow":
                time.sleep(float(fault.options.get("seconds", 1.0)))
            response = self._forward(request)
            if fault is not None and fault.name == "malformed_json":
                response = Response(b"{'records': [NaN,], ", status=response.status_code,
                                    headers=[(k, v) for k, v in response.headers.items() if k.lower() != "content-length"])
            elif fault is not None and fault.name == "truncated_json":
                response = _truncate(Response(response.get_data(), status=response.status_code,
                                              headers=list(response.headers.items())),
                                     short_read=bool(fault.options.get("short_read", False)))
        entry.status = response.status_code
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:  # the base class's hook; wsgi_app forwards directly
        return self._forward(request)

    def _forward(self, request: Request) -> Response:
        conn = http.client.HTTPConnection(self.target_host, self.target_port, timeout=self.timeout)
        path = request.environ.get("RAW_URI") or request.full_path.rstrip("?")
        conn.putrequest(request.method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in request.headers.items():
            if key.lower() not in HOP_BY_HOP:
                conn.putheader(key, value)
        length = request.content_length
        chunked = length is None and request.environ.get("wsgi.input_terminated", False)
        if length is not None:
            conn.putheader("Content-Length", str(length))
        elif chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        stream = request.stream
        while True:
            piece = stream.read(CHUNK)
            if not piece:
                break
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            conn.send(b"0\r\n\r\n")
        upstream = conn.getresponse()
        headers = [(k, v) for k, v in upstream.getheaders() if k.lower() not in HOP_BY_HOP]
        declared = upstream.getheader("Content-Length")
        if declared is not None:
            headers.append(("Content-Length", declared))

        def body() -> Iterator[bytes]:
            try:
                while piece := upstream.read(CHUNK):
                    yield piece
            finally:
                conn.close()

        return Response(body(), status=upstream.status, headers=headers, direct_passthrough=True)


def _drain(request: Request) -> None:
    """Read and drop an unread request body, so the client is not left writing into a closed socket."""
    stream = request.stream
    while stream.read(CHUNK):
        pass
