"""The status page as a person sees it: ``databridge-luigi serve`` (and the static ``status --html`` file) in
headless Chromium — the text of every row, colours by state in a real screenshot, sorting, links to luigid.

Chromium is Debian's package (scripts/bootstrap.sh installs it); without it these tests skip, except under
CI, where a missing browser is a failure."""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.test_daily_loop import SCRIPT, cli, demo, morning  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium is not installed: scripts/bootstrap.sh installs it")
    pytest.skip("chromium is not installed (scripts/bootstrap.sh installs it)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
STATE_COLOURS = {"failing": (0xC6, 0x28, 0x28), "fresh": (0x2E, 0x7D, 0x32), "broken config": (0x7B, 0x1F, 0xA2)}


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="dbl-chromium-")
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Rows(HTMLParser):
    """The status table as text: one dict per body row (cells, state, links)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.heads: list[str] = []
        self._cell: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        attrs = dict(attrs)
        if tag == "thead":
            self._in_head = True
        elif tag == "tr" and not self._in_head and "data-state" in attrs:
            self.rows.append({"state": attrs["data-state"], "cells": [], "links": []})
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a" and self.rows and not self._in_head:
            self.rows[-1]["links"].append(attrs.get("href", ""))

    def handle_endtag(self, tag):  # type: ignore[no-untyped-def]
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            (self.heads if tag == "th" else self.rows[-1]["cells"]).append(text)
            self._cell = None

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        if self._cell is not None:
            self._cell.append(data)


def parse(dom: str) -> Rows:
    rows = Rows()
    rows.feed(dom)
    return rows


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    raw, stride, previous, rows = zlib.decompress(idat), width * channels, bytearray(width * channels), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        previous = line
        rows.append(bytes(line[c] for i in range(0, stride, channels) for c in range(i, i + 3)))
    return width, height, rows


def count_colour(rows: list[bytes], rgb: tuple[int, int, int]) -> int:
    target = bytes(rgb)
    return sum(row[i:i + 3] == target for row in rows for i in range(0, len(row), 3))


@pytest.fixture()
def served(morning):  # noqa: F811
    env, elsewhere, dest, configs, run = morning
    server = subprocess.Popen([SCRIPT, "serve", "--port", "0", "--luigid", "http://127.0.0.1:8082"], cwd=elsewhere, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + server.stderr.read()
        yield f"http://127.0.0.1:{match.group(1)}/", env, elsewhere, server
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_page_shows_every_dataset_coloured_by_state(served, tmp_path):
    url, env, elsewhere, server = served
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{url.rsplit(':', 1)[1].strip('/')}"], capture_output=True, text=True).stdout
    assert "127.0.0.1:" in listening  # loopback by default

    dom = chromium("--virtual-time-budget=3000", "--dump-dom", url)
    page = parse(dom.stdout)
    assert page.heads[:3] == ["Dataset", "State", "Last version"]
    by_id = {row["cells"][0]: row for row in page.rows}
    assert {k: v["state"] for k, v in by_id.items()} == {
        "demo__bad_cron": "broken config", "demo__missing_source": "failing", "demo__permit_types": "fresh",
        "demo__violations": "fresh", "demo__zoning_districts": "fresh"}
    assert [row["cells"][0] for row in page.rows][:2] == ["demo__bad_cron", "demo__missing_source"]  # worst first
    failing = by_id["demo__missing_source"]["cells"]
    assert "Extract" in failing[8] and "no_such_table" in failing[8]
    assert by_id["demo__violations"]["cells"][4] == "50"
    assert "schedule_interval" in by_id["demo__bad_cron"]["cells"][8]
    # each dataset row links to its task in luigid
    assert by_id["demo__violations"]["links"][0] == \
        "http://127.0.0.1:8082/static/visualiser/index.html#tab=tasks&search__search=demo__violations"
    assert "#tab=graph&taskId=Extract_demo__missing_so" in by_id["demo__missing_source"]["links"][0]

    shot = tmp_path / "page.png"
    result = chromium("--window-size=1560,340", f"--screenshot={shot}", url)
    assert shot.exists(), result.stderr[-2000:]
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1560, 340)
    for state, rgb in STATE_COLOURS.items():  # the state badges are painted in their colours
        assert count_colour(pixels, rgb) > 150, state
    if os.environ.get("DATABRIDGE_STATUS_SCREENSHOT"):  # how docs/status-page.png is made
        shutil.copy(shot, os.environ["DATABRIDGE_STATUS_SCREENSHOT"])


def test_page_sorts_by_a_column(served):
    url, env, elsewhere, server = served
    descending = parse(chromium("--virtual-time-budget=3000", "--dump-dom", url + "#sort=Rows&order=desc").stdout)
    assert [row["cells"][0] for row in descending.rows][:3] == ["demo__violations", "demo__zoning_districts", "demo__permit_types"]
    ascending = parse(chromium("--virtual-time-budget=3000", "--dump-dom", url + "#sort=Dataset").stdout)
    assert [row["cells"][0] for row in ascending.rows] == sorted(row["cells"][0] for row in ascending.rows)


def test_static_page_written_by_status_html(morning, tmp_path):  # noqa: F811
    env, elsewhere, dest, configs, run = morning
    page = tmp_path / "www" / "index.html"
    result = cli(elsewhere, env, "status", "--html", str(page))
    assert result.returncode == 1  # one dataset is failing
    assert f"status page written to {page}" in result.stderr
    rows = parse(chromium("--virtual-time-budget=2000", "--dump-dom", page.as_uri()).stdout).rows
    assert len(rows) == 5 and {r["state"] for r in rows} == {"fresh", "failing", "broken config"}
    assert dest.split("@")[0] not in page.read_text()
