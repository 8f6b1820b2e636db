"""Slack incoming-webhook emulator (reference/external-apis.md §5).

* ``POST /services/T…/B…/…`` with a JSON body (or the legacy form field ``payload=<json>``).
* Success: 200 with the plain-text body ``ok``; the message is recorded in ``messages``.
* Errors are plain strings with their status: 400 ``invalid_payload`` / ``no_text`` / ``invalid_blocks`` /
  ``user_not_found``, 403 ``action_prohibited`` / ``invalid_token``, 404 ``channel_not_found`` /
  ``no_service`` (also for an unknown webhook path), 410 ``channel_is_archived``, 500 ``rollup_error``.
  ``set_error(name)`` switches a webhook into one of those modes.
* 429 with ``Retry-After`` (seconds): injected with ``inject("rate_limit", retry_after=N)``, or produced by
  the optional per-webhook limit (``rate_limit_per_second``; Slack allows about 1/s with short bursts).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.base import Emulator, SlidingWindow, run_cli, text_response

DEFAULT_WEBHOOK_PATH = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"

ERROR_STATUS = {
    "invalid_payload": 400,
    "no_text": 400,
    "missing_text_or_fallback_or_attachments": 400,
    "invalid_blocks": 400,
    "user_not_found": 400,
    "action_prohibited": 403,
    "invalid_token": 403,
    "channel_not_found": 404,
    "no_service": 404,
    "channel_is_archived": 410,
    "rollup_error": 500,
}


@dataclass
class _ErrorMode:
    error: str
    remaining: int | None  # None: until cleared


@dataclass
class Webhook:
    path: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    window: SlidingWindow | None = None
    error_mode: _ErrorMode | None = None


class SlackEmulator(Emulator):
    """Incoming webhooks. One webhook exists at ``DEFAULT_WEBHOOK_PATH``; ``add_webhook`` adds more."""

    def __init__(self, *, rate_limit_per_second: int | None = None, burst_window_seconds: float = 1.0,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.rate_limit_per_second = rate_limit_per_second
        self.burst_window_seconds = burst_window_seconds
        self.webhooks: dict[str, Webhook] = {}
        self.messages: list[dict[str, Any]] = []  # every accepted message, all webhooks, in arrival order
        self.add_webhook(DEFAULT_WEBHOOK_PATH)

    def add_webhook(self, path: str) -> str:
        """Register a webhook path and return its full URL (once started) or path."""
        window = None
        if self.rate_limit_per_second:
            # limit * window allows short bursts while averaging the configured rate.
            burst = max(1, math.floor(self.rate_limit_per_second * self.burst_window_seconds))
            window = SlidingWindow(burst, self.burst_window_seconds)
        with self._lock:
            self.webhooks[path] = Webhook(path, window=window)
        return f"{self.url}{path}" if self._server is not None else path

    @property
    def webhook_url(self) -> str:
        return f"{self.url}{DEFAULT_WEBHOOK_PATH}"

    def messages_for(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.webhooks[path].messages)

    def set_error(self, error: str | None, *, path: str = DEFAULT_WEBHOOK_PATH, times: int | None = None) -> None:
        """Make the webhook answer ``error`` (e.g. "no_service") ``times`` times, or until ``set_error(None)``."""
        if error is not None and error not in ERROR_STATUS:
            raise ValueError(f"unknown Slack webhook error {error!r}; expected one of {sorted(ERROR_STATUS)}")
        with self._lock:
            self.webhooks[path].error_mode = _ErrorMode(error, times) if error else None

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"messages": {p: list(w.messages) for p, w in self.webhooks.items()}}

    def rate_limit_response(self, request: Request, *, retry_after: int = 1, **options: Any) -> Response:
        return text_response("rate_limited", status=429, headers={"Retry-After": str(retry_after)})

    def server_error_response(self, status: int, request: Request) -> Response:
        if status == 500:
            return text_response("rollup_error", status=500)
        return super().server_error_response(status, request)

    # ---------------------------------------------------------------------------------------- handling
    def handle(self, request: Request) -> Response:
        webhook = self.webhooks.get(request.path.rstrip("/"))
        if webhook is None or request.method != "POST":
            return text_response("no_service", status=404)
        with self._lock:
            forced = self._take_error(webhook)
            if forced is None and webhook.window is not None and not webhook.window.try_acquire(time.monotonic()):
                wait = max(1, math.ceil(webhook.window.resets_at(time.monotonic()) - time.monotonic()))
                return text_response("rate_limited", status=429, headers={"Retry-After": str(wait)})
        if forced is not None:
            return text_response(forced, status=ERROR_STATUS[forced])
        message, error = _parse_message(request)
        if error is not None:
            return text_response(error, status=ERROR_STATUS[error])
        with self._lock:
            webhook.messages.append(message)
            self.messages.append(message)
        return text_response("ok")

    @staticmethod
    def _take_error(webhook: Webhook) -> str | None:
        mode = webhook.error_mode
        if mode is None:
            return None
        if mode.remaining is not None:
            mode.remaining -= 1
            if mode.remaining <= 0:
                webhook.error_mode = None
        return mode.error


def _parse_message(request: Request) -> tuple[dict[str, Any], str | None]:
    """The JSON message and the error string Slack would answer with, if any."""
    raw = request.form.get("payload") if request.mimetype == "application/x-www-form-urlencoded" \
        else request.get_data(as_text=True)
    try:
        message = json.loads(raw or "")
    except ValueError:
        return {}, "invalid_payload"
    if not isinstance(message, dict):
        return {}, "invalid_payload"
    blocks = message.get("blocks")
    if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, dict) and "type" in b
                                                                    for b in blocks)):
        return message, "invalid_blocks"
    if not (message.get("text") or blocks or message.get("attachments")):
        return message, "no_text"
    return message, None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", action="append", default=[], help="extra webhook paths")
    parser.add_argument("--rate-limit", type=int, default=0, help="messages/second per webhook; 0 disables")


def _build(args: argparse.Namespace) -> SlackEmulator:
    emulator = SlackEmulator(rate_limit_per_second=args.rate_limit or None, host=args.host, port=args.port)
    for path in args.path:
        emulator.add_webhook(path)
    return emulator


if __name__ == "__main__":
    run_cli("Slack incoming-webhook emulator", _build, _add_arguments)
