"""The on_published webhook after CARTO/PostGIS loads: told once per publish that changed data, never able
to fail a publish, and retried by the next run while it is pending (the AGO side: test_ago_publish.py)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from databridge_luigi.tasks import Publish, PublishAll
from tests.pipeline import make_points_table
from tests.test_pipeline import at


class Catalog:
    """A catalog's webhook endpoint on loopback that can be made to fail."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.failing = False
        catalog = self

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if catalog.failing:
                    self.send_response(503)
                else:
                    catalog.received.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/catalog/hook"


def test_webhook_told_after_changed_data_and_retried_next_run_after_a_failure(pipeline, monkeypatch):
    catalog = Catalog()
    try:
        make_points_table(pipeline, "gis_lni", "violations", 100)
        pipeline.config("lni__violations", f"""\
            schedule_interval: 4 11 * * *
            upload_to_carto: true
            carto_users: []
            primary_key: [objectid]
            on_published: {{url: "{catalog.url}"}}
            """)
        at(monkeypatch, "2026-11-24T12:00:00")
        assert pipeline.run(PublishAll()).ok
        assert [(r["dataset"], r["version"], r["rows"]) for r in catalog.received] == [("lni__violations", "20261124T110400Z", 100)]

        # The catalog is down for the next publish: the publish stands, the push stays pending.
        catalog.failing = True
        pipeline.source("UPDATE gis_lni.violations SET address = 'new' WHERE objectid <= 2")
        at(monkeypatch, "2026-11-25T12:00:00")
        assert pipeline.run(PublishAll()).ok
        assert pipeline.dest("SELECT count(*) FROM violations WHERE address = 'new'")[0][0] == 2
        assert pipeline.dest("SELECT pushed FROM databridge_luigi_publications WHERE version = '20261125T110400Z'") == [(False,)]

        # The next run (same due version) comes back for the pending push only: nothing is rewritten.
        catalog.failing = False
        rerun = pipeline.run(PublishAll())
        assert rerun.ok and not rerun.did_nothing
        assert catalog.received[-1]["version"] == "20261125T110400Z"
        assert catalog.received[-1]["changed"] == {"inserted": 0, "updated": 2, "deleted": 0, "unchanged": 98}
        assert pipeline.markers("lni__violations")[-1] == ("20261125T110400Z", 100, True)
        assert pipeline.run(PublishAll()).did_nothing

        # Unchanged data at a new version is recorded without a push.
        at(monkeypatch, "2026-11-26T12:00:00")
        assert pipeline.run(PublishAll()).ok
        assert len(catalog.received) == 2
    finally:
        catalog.server.shutdown()
