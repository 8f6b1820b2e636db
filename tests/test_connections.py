"""Connection lookup (env, luigi.cfg, Secrets Manager on moto's server) and redaction."""
from __future__ import annotations

import json
import logging

import boto3
import luigi.configuration
import pytest

from databridge_luigi import connections
from databridge_luigi.connections import UnknownConnectionError, redact, register_url, resolve


@pytest.fixture()
def clean(monkeypatch):
    for name in ("DATABRIDGE_CONN_CARTO_PHL", "DATABRIDGE_CONN_KNACK_TEST", "DATABRIDGE_SECRETS_ID", "DATABRIDGE_SECRETS_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    connections._secret_sources.clear()
    config = luigi.configuration.get_config()
    yield config
    if config.has_section("connections"):
        config.remove_section("connections")
    connections._secret_sources.clear()


def test_env_wins_over_luigi_cfg(clean, monkeypatch):
    clean.set("connections", "carto_phl", "carto://cfg-user:cfg-key-1234")
    assert resolve("carto_phl") == "carto://cfg-user:cfg-key-1234"
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", "carto://env-user:env-key-1234")
    assert resolve("carto_phl") == "carto://env-user:env-key-1234"


def test_names_map_to_env_variables(clean, monkeypatch):
    assert connections.env_var_name("knack-test.v2") == "DATABRIDGE_CONN_KNACK_TEST_V2"
    monkeypatch.setenv("DATABRIDGE_CONN_KNACK_TEST", "knack://app:key-5678@api.knack.com")
    assert resolve("knack_test").startswith("knack://")


def test_secrets_manager_json_secret(clean, aws, monkeypatch):
    client = boto3.client("secretsmanager")
    name = f"databridge/connections-{id(client)}"
    client.create_secret(Name=name, SecretString=json.dumps({"carto_phl": "carto://phl:sm-secret-key-9999"}))
    monkeypatch.setenv("DATABRIDGE_SECRETS_ID", name)
    assert resolve("carto_phl") == "carto://phl:sm-secret-key-9999"
    assert "sm-secret-key-9999" not in redact("loaded carto://phl:sm-secret-key-9999 and key sm-secret-key-9999")
    with pytest.raises(UnknownConnectionError) as missing:
        resolve("knack_test")
    assert "DATABRIDGE_CONN_KNACK_TEST" in str(missing.value) and name in str(missing.value)


def test_missing_secret_is_a_clear_error(clean, aws, monkeypatch):
    monkeypatch.setenv("DATABRIDGE_SECRETS_ID", "does/not/exist")
    with pytest.raises(UnknownConnectionError, match="ResourceNotFoundException"):
        resolve("carto_phl")


def test_one_secret_per_connection_wins_over_the_json_secret(clean, aws, monkeypatch):
    client = boto3.client("secretsmanager")
    prefix, shared = f"databridge/{id(client)}/conn/", f"databridge/{id(client)}/all"
    client.create_secret(Name=prefix + "carto_phl", SecretString="carto://phl:per-connection-key-4411")
    client.create_secret(Name=prefix + "knack_test", SecretString=json.dumps({"url": "knack://app:json-form-key-5522@api.knack.com"}))
    client.create_secret(Name=shared, SecretString=json.dumps({"carto_phl": "carto://phl:shared-key-6633", "airtable": "airtable://:pat-shared-7744@api.airtable.com"}))
    monkeypatch.setenv("DATABRIDGE_SECRETS_PREFIX", prefix)
    monkeypatch.setenv("DATABRIDGE_SECRETS_ID", shared)
    assert resolve("carto_phl") == "carto://phl:per-connection-key-4411"
    assert resolve("knack_test") == "knack://app:json-form-key-5522@api.knack.com"
    assert resolve("airtable") == "airtable://:pat-shared-7744@api.airtable.com"  # no per-connection secret: the JSON one
    assert redact("key per-connection-key-4411 and json-form-key-5522") == "key *** and ***"
    client.create_secret(Name=prefix + "broken", SecretString='{"uri": "x"}')
    with pytest.raises(UnknownConnectionError, match='needs a "url" key'):
        resolve("broken")
    with pytest.raises(UnknownConnectionError) as missing:
        resolve("nope")
    assert f"{prefix}<name>" in str(missing.value) and shared in str(missing.value)


def test_rotation_is_only_believed_for_rejected_credentials_from_secrets_manager(clean, aws, monkeypatch):
    import psycopg
    import requests

    client = boto3.client("secretsmanager")
    prefix = f"databridge/{id(client)}/rot/"
    client.create_secret(Name=prefix + "carto_phl", SecretString="carto://phl:old-key-1111")
    monkeypatch.setenv("DATABRIDGE_SECRETS_PREFIX", prefix)
    rejected = requests.HTTPError(response=type("R", (), {"status_code": 401})())
    assert resolve("carto_phl").endswith("old-key-1111")
    assert not connections.credentials_rotated("carto_phl", rejected)  # same value after the re-read
    client.put_secret_value(SecretId=prefix + "carto_phl", SecretString="carto://phl:new-key-2222")
    assert not connections.credentials_rotated("carto_phl", RuntimeError("HTTP 500"))  # not an auth failure
    assert resolve("carto_phl").endswith("old-key-1111")  # ... so the cache was kept
    assert connections.credentials_rotated("carto_phl", rejected)
    assert resolve("carto_phl").endswith("new-key-2222")
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", "carto://phl:env-key-3333")
    assert not connections.credentials_rotated("carto_phl", rejected)  # env values are not re-read
    # A real server's refusal is recognised by its SQLSTATE / message, however it is wrapped.
    try:
        psycopg.connect("postgresql://no_such_role_dbl@127.0.0.1:5432/postgres", connect_timeout=5)
    except psycopg.OperationalError as exc:
        wrapped = RuntimeError("source databridge: cannot connect")
        wrapped.__cause__ = exc
        assert connections.is_credentials_rejected(wrapped)
    else:
        pytest.fail("a role that does not exist was let in")


def test_unknown_connection_says_where_it_looked(clean):
    with pytest.raises(UnknownConnectionError, match="env DATABRIDGE_CONN_NOPE.*luigi.cfg"):
        resolve("nope")


@pytest.mark.parametrize("text, secret", [
    ("postgresql://loader:Pa55-word!@db:5432/x", "Pa55-word!"),
    ("https://phl.carto.com/api/v2/sql?q=select&api_key=abcdef123456", "abcdef123456"),
    ("GET /search/1234?gatekeeperKey=gk-777777&user=x", "gk-777777"),
    ("airtable://:patXYZ.0123456789@api.airtable.com", "patXYZ.0123456789"),
])
def test_redact_masks_credentials_in_text(text, secret):
    register_url(text if "://" in text else "")
    assert secret not in redact(text)


def test_log_records_and_tracebacks_are_redacted(caplog):
    register_url("carto://phl:VERY-distinct-key-42@example")
    logger = logging.getLogger("databridge_luigi.test")
    with caplog.at_level(logging.INFO, logger="databridge_luigi"):
        logger.info("using %s", "VERY-distinct-key-42")
        try:
            raise RuntimeError("bad key VERY-distinct-key-42")
        except RuntimeError:
            logger.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "VERY-distinct-key-42" not in text
    assert "***" in text
