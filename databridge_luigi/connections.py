"""Named connections and secret redaction.

A connection is one URL looked up by name, in order: env ``DATABRIDGE_CONN_<NAME>``, luigi.cfg
``[connections] <name>``, then AWS Secrets Manager: a secret per connection named ``<prefix><name>`` holding
the URL (prefix from env ``DATABRIDGE_SECRETS_PREFIX`` or luigi.cfg ``[databridge] secrets_prefix``), then one
secret holding a JSON object ``{name: url}`` (id from env ``DATABRIDGE_SECRETS_ID`` or luigi.cfg
``[databridge] secrets_id``). Secret values are cached per process; when a service rejects credentials that
came from Secrets Manager, ``credentials_rotated`` re-reads them so the caller can retry once.

Every URL that is resolved has its credentials registered with the redactor, and the package installs one
log-record hook so that no log line, traceback or error text carries them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import traceback
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import luigi.configuration

log = logging.getLogger(__name__)
T = TypeVar("T")


class UnknownConnectionError(LookupError):
    """No URL for a connection name in any of the places we look."""


class CredentialsRejected(Exception):
    """Mixed into an error when a service said the connection's credentials are wrong (HTTP 401 and alike)."""


def env_var_name(name: str) -> str:
    return "DATABRIDGE_CONN_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


# --- redaction ---------------------------------------------------------------------------------------------

_MASK = "***"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_client_lock = threading.Lock()
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

def _get_secret_string(secret_id: str) -> str | None:
    """A secret's text from Secrets Manager; None when there is no such secret."""
    import boto3  # imported lazily: most commands never touch AWS
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        with _client_lock:  # boto3's default session builds clients unsafely from two threads (ahead.py runs one)
            client = boto3.client("secretsmanager")
        reply = client.get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Error")
        if code == "ResourceNotFoundException":
            return None
        raise UnknownConnectionError(f"Secrets Manager secret {secret_id!r}: {code}") from None
    except BotoCoreError as exc:
        raise UnknownConnectionError(f"Secrets Manager secret {secret_id!r}: {redact(str(exc))}") from None
    text = reply.get("SecretString")
    if text is None:
        text = reply["SecretBinary"].decode("utf-8")
    return str(text)


class SecretsManagerSource:
    """One Secrets Manager secret holding ``{connection name: url}``, fetched lazily and cached per process."""

    def __init__(self, secret_id: str):
        self.secret_id = secret_id
        self._values: dict[str, str] | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"Secrets Manager secret {self.secret_id!r}"

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
        text = _get_secret_string(self.secret_id)
        if text is None:
            raise UnknownConnectionError(f"Secrets Manager secret {self.secret_id!r}: ResourceNotFoundException")
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


class SecretsManagerPrefix:
    """One Secrets Manager secret per connection, ``<prefix><name>``, holding the URL (or ``{"url": …}``)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._values: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"Secrets Manager secret {self.prefix + '<name>'!r}"

    def get(self, name: str) -> str | None:
        with self._lock:
            if name not in self._values:
                self._values[name] = self._fetch(self.prefix + name)
            return self._values[name]

    def refresh(self) -> None:
        with self._lock:
            self._values.clear()

    @staticmethod
    def _fetch(secret_id: str) -> str | None:
        text = _get_secret_string(secret_id)
        if text is None:
            return None
        text = text.strip()
        if text.startswith("{"):
            try:
                text = str(json.loads(text)["url"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UnknownConnectionError(f"Secrets Manager secret {secret_id!r}: a JSON value needs a \"url\" key") from None
        register_url(text)
        return text


SecretSource = SecretsManagerPrefix | SecretsManagerSource
_secret_sources: dict[str, SecretSource] = {}


def _setting(env: str, key: str) -> str:
    return str(os.environ.get(env) or luigi.configuration.get_config().get("databridge", key, "") or "")


def _secret_sources_in_order() -> list[SecretSource]:
    """Per-connection secrets first (the finer grain wins), then the one JSON secret; each cached per process."""
    found: list[SecretSource] = []
    prefix = _setting("DATABRIDGE_SECRETS_PREFIX", "secrets_prefix")
    if prefix:
        found.append(_secret_sources.setdefault("prefix:" + prefix, SecretsManagerPrefix(prefix)))
    secret_id = _setting("DATABRIDGE_SECRETS_ID", "secrets_id")
    if secret_id:
        found.append(_secret_sources.setdefault("id:" + secret_id, SecretsManagerSource(secret_id)))
    return found


def _resolve_with_origin(name: str) -> tuple[str, str]:
    """The URL of connection ``name`` and where it came from ("env", "luigi.cfg" or "secrets")."""
    url = os.environ.get(env_var_name(name))
    if url:
        return url, "env"
    url = luigi.configuration.get_config().get("connections", name, None)
    if url:
        return url, "luigi.cfg"
    looked = [f"env {env_var_name(name)}", "luigi.cfg [connections]"]
    sources = _secret_sources_in_order()
    for source in sources:
        looked.append(source.describe())
        url = source.get(name)
        if url:
            return url, "secrets"
    if not sources:
        looked.append("Secrets Manager (neither DATABRIDGE_SECRETS_PREFIX nor DATABRIDGE_SECRETS_ID is set)")
    raise UnknownConnectionError(f"unknown connection {name!r}: looked in " + ", ".join(looked))


def resolve(name: str) -> str:
    """The URL of connection ``name``; raises UnknownConnectionError saying where it looked."""
    url, _ = _resolve_with_origin(name)
    register_url(url)
    return url


def refresh_secrets() -> None:
    """Forget cached secret values (after an authentication failure, credentials may have rotated)."""
    for source in _secret_sources.values():
        source.refresh()


_AUTH_SQLSTATES = {"28000", "28P01"}  # invalid_authorization_specification, invalid_password
# libpq reports a refused login only in its message (no SQLSTATE at connect); a missing role counts, since
# alternating-user rotation changes the user name too.
_AUTH_TEXT = re.compile(r"password authentication failed|FATAL:\s+role \"[^\"]*\" does not exist|ORA-01017|ORA-28000|invalid username/password", re.I)


def is_credentials_rejected(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) says the credentials were refused."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CredentialsRejected):
            return True
        if getattr(current, "sqlstate", None) in _AUTH_SQLSTATES:
            return True
        if getattr(getattr(current, "response", None), "status_code", None) == 401:  # requests.HTTPError
            return True
        if _AUTH_TEXT.search(str(current)):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def credentials_rotated(name: str, exc: BaseException) -> bool:
    """After ``exc``: if it is a credentials rejection for a connection that came from Secrets Manager,
    re-read the secrets and say whether the URL changed (the caller then retries once)."""
    if not is_credentials_rejected(exc):
        return False
    try:
        old, origin = _resolve_with_origin(name)
    except UnknownConnectionError:
        return False
    if origin != "secrets":
        return False
    refresh_secrets()
    try:
        new = resolve(name)
    except UnknownConnectionError:
        return False
    if new == old:
        log.warning("connection %r: credentials were rejected and Secrets Manager still holds the same ones", name)
        return False
    log.warning("connection %r: credentials were rejected; Secrets Manager holds new ones — retrying once", name)
    return True


def retry_if_rotated(name: str, attempt: Callable[[], T], on_failure: Callable[[], None] = lambda: None) -> T:
    """Run ``attempt``; if connection ``name``'s credentials were rejected and Secrets Manager now holds new
    ones, run it once more. ``on_failure`` runs after every failed attempt (e.g. to drop a broken connection)."""
    try:
        return attempt()
    except BaseException as exc:
        on_failure()
        if not isinstance(exc, Exception) or not credentials_rotated(name, exc):
            raise
    try:
        return attempt()
    except BaseException:
        on_failure()
        raise
