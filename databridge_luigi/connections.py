"""Named connections and secret redaction.

A connection is one URL looked up by name, in order: env ``DATABRIDGE_CONN_<NAME>``, luigi.cfg
``[connections] <name>``, then an AWS Secrets Manager secret holding a JSON object ``{name: url}`` (secret id
from env ``DATABRIDGE_SECRETS_ID`` or luigi.cfg ``[databridge] secrets_id``). Every URL that is resolved has
its credentials registered with the redactor, and the package installs one log-record hook so that no log
line, traceback or error text carries them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import traceback
from urllib.parse import unquote, urlsplit

import luigi.configuration

log = logging.getLogger(__name__)


class UnknownConnectionError(LookupError):
    """No URL for a connection name in any of the places we look."""


def env_var_name(name: str) -> str:
    return "DATABRIDGE_CONN_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


# --- redaction ---------------------------------------------------------------------------------------------

_MASK = "***"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
# user:password@ in any URL, and key-like query parameters.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s'\"]+)(?P<end>@|(?=[/\s'\"]|$))", re.I)
_KEY_PARAM = re.compile(r"(?P<key>(?:api_key|apikey|gatekeeperKey|token|password|secret)=)(?P<value>[^&\s'\"]+)", re.I)


def register_secret(value: str | None) -> None:
    """Remember a secret so ``redact`` masks it wherever it appears (short values are ignored: too common)."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)
            _secrets.add(unquote(value))


def register_url(url: str) -> None:
    """Register the credentials held in a connection URL (user-info password, and the webhook path)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        register_secret(url)
        return
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at and ":" in host and not host.rsplit(":", 1)[1].isdigit():
        userinfo = host  # carto://USER:API_KEY has credentials but no "@"
    user, _, password = userinfo.partition(":")
    register_secret(password)
    if user and not password:
        register_secret(user)
    if parts.hostname and "hooks.slack.com" in parts.hostname:
        register_secret(parts.path.strip("/"))


def _mask_url_password(match: re.Match[str]) -> str:
    if not match["end"] and match["pw"].isdigit():  # host:port, not user:password
        return match.group(0)
    return f"{match['scheme']}{match['user']}:{_MASK}{match['end']}"


def redact(text: str) -> str:
    """Mask every registered secret and any URL password or key-like query parameter in ``text``."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(_mask_url_password, text)
    text = _KEY_PARAM.sub(lambda m: f"{m['key']}{_MASK}", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def redact_exception(exc: BaseException) -> str:
    """A one-line, redacted description of an exception."""
    return redact(f"{type(exc).__name__}: {exc}")


def redacted_traceback(exc: BaseException) -> str:
    return redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def install_log_redaction() -> None:
    """Redact every log record at creation: message, arguments and traceback text (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_databridge_redacting", False):
        return

    def redacting_factory(*args, **kwargs):  # type: ignore[no-untyped-def]
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw message
            message = str(record.msg)
        record.msg, record.args = redact(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redacted_traceback(record.exc_info[1])
        return record

    redacting_factory._databridge_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)


# --- resolution --------------------------------------------------------------------------------------------

class SecretsManagerSource:
    """One Secrets Manager secret holding ``{connection name: url}``, fetched lazily and cached per process."""

    def __init__(self, secret_id: str):
        self.secret_id = secret_id
        self._values: dict[str, str] | None = None
        self._lock = threading.Lock()

    def get(self, name: str) -> str | None:
        return self._load().get(name)

    def refresh(self) -> None:
        with self._lock:
            self._values = None

    def _load(self) -> dict[str, str]:
        with self._lock:
            if self._values is None:
                self._values = self._fetch()
            return self._values

    def _fetch(self) -> dict[str, str]:
        import boto3  # imported lazily: most commands never touch AWS
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = boto3.client("secretsmanager").get_secret_value(SecretId=self.secret_id)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Error")
            raise UnknownConnectionError(f"Secrets Manager secret {self.secret_id!r}: {code}") from None
        except BotoCoreError as exc:
            raise UnknownConnectionError(f"Secrets Manager secret {self.secret_id!r}: {redact(str(exc))}") from None
        text = reply.get("SecretString")
        if text is None:
            text = reply["SecretBinary"].decode("utf-8")
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            raise UnknownConnectionError(f"Secrets Manager secret {self.secret_id!r} is not a JSON object") from None
        if not isinstance(values, dict):
            raise UnknownConnectionError(f"Secrets Manager secret {self.secret_id!r} is not a JSON object")
        for url in values.values():
            if isinstance(url, str):
                register_url(url)
        return {str(k): str(v) for k, v in values.items()}


_secret_sources: dict[str, SecretsManagerSource] = {}


def _secrets_source() -> SecretsManagerSource | None:
    secret_id = os.environ.get("DATABRIDGE_SECRETS_ID") or luigi.configuration.get_config().get("databridge", "secrets_id", None)
    if not secret_id:
        return None
    return _secret_sources.setdefault(secret_id, SecretsManagerSource(secret_id))


def resolve(name: str) -> str:
    """The URL of connection ``name``; raises UnknownConnectionError saying where it looked."""
    url = os.environ.get(env_var_name(name))
    if not url:
        url = luigi.configuration.get_config().get("connections", name, None)
    looked = [f"env {env_var_name(name)}", "luigi.cfg [connections]"]
    if not url:
        source = _secrets_source()
        if source is not None:
            looked.append(f"Secrets Manager secret {source.secret_id!r}")
            url = source.get(name)
        else:
            looked.append("Secrets Manager (no DATABRIDGE_SECRETS_ID set)")
    if not url:
        raise UnknownConnectionError(f"unknown connection {name!r}: looked in " + ", ".join(looked))
    register_url(url)
    return url


def refresh_secrets() -> None:
    """Forget cached secret values (after an authentication failure, credentials may have rotated)."""
    for source in _secret_sources.values():
        source.refresh()
