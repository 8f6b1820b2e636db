"""Shared machinery of the source-side HTTP emulators (Knack, Airtable, AIS, Census, Slack).

An emulator is a werkzeug WSGI app served on loopback by a background thread. The base class gives it:

* a lifecycle: ``start() -> self``, ``stop()``, ``url``, and use as a context manager;
* a request log (``requests``) that tests inspect after the fact;
* a fault queue (``inject``) so tests can make the *next* matching request fail in a chosen way;
* small admin endpoints under ``/__emulator__/`` so a test can drive an emulator running in another process;
* ``run_cli``: the ``python -m tests.emulators.<name> --port N`` entry point.

Subclasses implement ``handle(request) -> Response`` and, for the "rate_limit" fault, ``rate_limit_response``.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

FAULTS = frozenset(
    {"http_500", "http_502", "http_503", "reset", "slow", "truncated_json", "malformed_json", "rate_limit"}
)
ADMIN_PREFIX = "/__emulator__/"

_GATEWAY_PAGES = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass
class RecordedRequest:
    """One request as the emulator saw it (admin requests are not recorded)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any
    fault: str | None = None
    time: float = 0.0
    status: int | None = None  # None while in flight, or when the connection was dropped

    def arg(self, name: str) -> str | None:
        """First value of a query-string argument, or None."""
        values = self.query.get(name)
        return values[0] if values else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["body"] = self.body.decode("utf-8", "replace")
        return data


@dataclass
class Fault:
    """A queued fault: applies to the next ``times`` requests whose path contains ``match``."""

    name: str
    times: int | None  # None: until clear_faults()
    match: str | None
    options: dict[str, Any] = field(default_factory=dict)

    def applies_to(self, path: str, method: str | None = None) -> bool:
        """``match`` is in the path, and the ``method`` option (if given) is the request's method."""
        wanted = self.options.get("method")
        return (self.match is None or self.match in path) and (wanted is None or wanted == method)


class SlidingWindow:
    """Counts accepted events in the last ``period`` seconds; used for per-second rate limits.

    A sliding window (rather than calendar seconds) keeps rate-limit tests deterministic: N+1 requests
    fired within one second always trip a limit of N, whichever side of a second boundary they fall on.
    """

    def __init__(self, limit: int, period: float = 1.0) -> None:
        self.limit = limit
        self.period = period
        self._events: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._events and self._events[0] <= now - self.period:
            self._events.popleft()

    def try_acquire(self, now: float) -> bool:
        """Record an event and return True, or return False when the window is full."""
        self._expire(now)
        if len(self._events) >= self.limit:
            return False
        self._events.append(now)
        return True

    def clear(self) -> None:
        self._events.clear()

    def remaining(self, now: float) -> int:
        self._expire(now)
        return max(0, self.limit - len(self._events))

    def resets_at(self, now: float) -> float:
        """Wall-clock-free time (same clock as ``now``) when the oldest event leaves the window."""
        self._expire(now)
        return (self._events[0] + self.period) if self._events else now


class _ConnectionAborted(ConnectionResetError):
    """Raised inside the app to make werkzeug drop the connection without writing a response."""


class _QuietHandler(WSGIRequestHandler):
    """Keeps test output clean: no access log line per request (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False)
    return Response(body, status=status, headers=headers, content_type="application/json; charset=utf-8")


def text_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(text, status=status, headers=headers, content_type="text/plain; charset=utf-8")


class Emulator:
    """Base class: serve ``handle`` on loopback, log requests, apply injected faults."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()  # guards the log, the fault queue and subclass state
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        if self._server is not None:
            return self
        self._server = make_server(self.host, self.port, self.wsgi_app, threaded=True, request_handler=_QuietHandler)
        self.port = self._server.server_port
        # A short poll interval keeps stop() fast; shutdown() waits for the serve loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ faults and log
    def inject(self, fault: str, times: int | None = 1, match: str | None = None, **options: Any) -> None:
        """Queue ``fault`` for the next ``times`` requests whose path contains ``match``.

        Options: ``slow`` takes ``seconds`` (default 1.0) and then answers normally; ``truncated_json`` takes
        ``short_read=True`` to keep the full Content-Length (the client sees an incomplete read rather than
        bad JSON); ``rate_limit`` passes its options to the subclass's ``rate_limit_response``.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        with self._lock:
            self._faults.append(Fault(fault, times, match, dict(options)))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_to(self, fragment: str) -> list[RecordedRequest]:
        """Logged requests whose path contains ``fragment``."""
        with self._lock:
            return [r for r in self.requests if fragment in r.path]

    def _take_fault(self, path: str, method: str | None = None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.applies_to(path, method):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------------------------ subclass hooks
    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def rate_limit_response(self, request: Request, **options: Any) -> Response:
        """The service's own 429; subclasses override with the real body and headers."""
        return text_response("Too Many Requests", status=429)

    def server_error_response(self, status: int, request: Request) -> Response:
        """What a 5xx looks like; by default the HTML page of a gateway in front of the service."""
        title = f"{status} {_GATEWAY_PAGES.get(status, 'Error')}"
        return Response(f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>",
                        status=status, content_type="text/html")

    def state(self) -> dict[str, Any]:
        """Service-specific counters exposed at ``/__emulator__/state`` (JSON-serialisable)."""
        return {}

    # --------------------------------------------------------------------------------------- WSGI entry
    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path.startswith(ADMIN_PREFIX):
            return self._admin(request)(environ, start_response)
        fault = self._take_fault(request.path, request.method)
        entry = self._record(request, fault)
        response = self._respond(request, fault, environ)
        entry.status = response.status_code
        return response(environ, start_response)

    def _record(self, request: Request, fault: Fault | None) -> RecordedRequest:
        body = request.get_data(cache=True)  # cached, so form parsing still works afterwards
        payload = request.get_json(silent=True) if request.is_json else None
        entry = RecordedRequest(
            method=request.method,
            path=request.path,
            query={key: request.args.getlist(key) for key in request.args},
            headers=dict(request.headers.items()),
            body=body,
            json=payload,
            fault=fault.name if fault else None,
            time=time.time(),
        )
        with self._lock:
            self.requests.append(entry)
        return entry

    def _respond(self, request: Request, fault: Fault | None, environ: dict[str, Any]) -> Response:
        if fault is None:
            return self.handle(request)
        name, options = fault.name, fault.options
        if name.startswith("http_"):
            return self.server_error_response(int(name[5:]), request)
        if name == "reset":
            _abort_connection(environ)
        if name == "rate_limit":
            return self.rate_limit_response(request, **options)
        if name == "slow":
            time.sleep(float(options.get("seconds", 1.0)))
            return self.handle(request)
        response = self.handle(request)
        if name == "malformed_json":
            # Complete but unparseable: single quotes, a bare NaN and a dangling comma.
            response.set_data(b"{'records': [NaN,], ")
            return response
        return _truncate(response, short_read=bool(options.get("short_read", False)))

    # ------------------------------------------------------------------------------------------- admin
    def _admin(self, request: Request) -> Response:
        action = request.path[len(ADMIN_PREFIX):].strip("/")
        if action == "state" and request.method == "GET":
            with self._lock:
                logged = [r.to_json() for r in self.requests]
            return json_response({"requests": logged, **self.state()})
        if action == "faults" and request.method == "POST":
            spec = dict(request.get_json(force=True))
            self.inject(spec.pop("fault"), spec.pop("times", 1), spec.pop("match", None), **spec)
            return json_response({"ok": True})
        if action == "faults" and request.method == "DELETE":
            self.clear_faults()
            return json_response({"ok": True})
        return json_response({"error": f"unknown admin action {action!r}"}, status=404)


def _abort_connection(environ: dict[str, Any]) -> None:
    """Close the client connection without sending a single response byte."""
    sock: socket.socket | None = environ.get("werkzeug.socket")
    if sock is not None:
        # Linger 0: the final close sends RST, like a crashed upstream. shutdown() acts at once even though
        # werkzeug still holds file objects on the socket, and it stops werkzeug waiting for a keep-alive
        # request on this connection.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    raise _ConnectionAborted("fault injection: connection reset")


def _truncate(response: Response, *, short_read: bool) -> Response:
    """Cut the body mid-way; status and content type stay those of a good answer."""
    data = response.get_data()
    cut = data[: max(1, len(data) // 2)]
    if not short_read:
        response.set_data(cut)  # consistent Content-Length: the client reads it all, then fails to parse
        return response
    # Declared length stays the full one; werkzeug closes the connection after the response, so the
    # client gets an incomplete read instead of waiting forever.
    truncated = Response([cut], status=response.status_code, headers=list(response.headers.items()))
    truncated.headers["Content-Length"] = str(len(data))
    return truncated


# ------------------------------------------------------------------------------------ command-line entry
def run_cli(
    description: str,
    build: Callable[[argparse.Namespace], Emulator],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Parse ``--host/--port`` (+ emulator options), print the URL on stdout, serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    emulator = build(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with emulator.start():
        print(emulator.url, flush=True)
        while not stop.wait(0.2):
            pass
