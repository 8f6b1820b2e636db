"""Docker cannot run here, so the Dockerfile and docker-compose.yml are checked by reading them: every file
they copy or mount exists, every module and script they run exists."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_copies_existing_paths_and_runs_our_module():
    text = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)$", text, re.M)
    assert copies
    for line in copies:
        *sources, _target = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert '"--module", "databridge_luigi"' in text
    importlib.import_module("databridge_luigi")
    assert "instantclient" not in text.lower()  # python-oracledb thin mode needs no Oracle client
    assert re.search(r"^USER\s+databridge", text, re.M)


def test_compose_services_mounts_and_commands_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgis", "moto", "luigid", "worker"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    worker_command = " ".join(services["worker"]["command"])
    for script in re.findall(r"scripts/[\w./-]+", worker_command):
        assert (ROOT / script).is_file(), script
    assert "databridge_luigi" in worker_command
    for value in services["worker"]["environment"].values():
        assert "carto://" not in str(value)  # no real credentials in the compose file
