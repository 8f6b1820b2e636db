"""A test harness that runs the real pipeline in-process: real config files in a temp tree, a real
PostgreSQL source database, a real PostGIS destination, real luigi (local scheduler)."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import luigi
import psycopg
from luigi.execution_summary import LuigiStatusCode

import databridge_luigi.tasks as tasks
from databridge_luigi.ahead import extracts
from databridge_luigi.publish import keepers, transports
from databridge_luigi.publish.catalog import forget_push_attempts
from databridge_luigi.sources.sql import engines as source_engines
from databridge_luigi.targets import published_versions


@dataclass
class Run:
    ok: bool
    status: LuigiStatusCode
    summary: str

    @property
    def did_nothing(self) -> bool:
        return "Did not run any tasks" in self.summary


class Pipeline:
    def __init__(self, root: Path, source_dsn: str, dest_dsn: str, monkeypatch: Any, staging: str | None = None):
        self.root, self.source_dsn, self.dest_dsn = root, source_dsn, dest_dsn
        self.config_dir = root / "configs"
        self.staging = staging or str(root / "staging")
        monkeypatch.setenv("DATABRIDGE_CONFIG_DIR", str(self.config_dir))
        monkeypatch.setenv("DATABRIDGE_STAGING", self.staging)
        monkeypatch.setenv("DATABRIDGE_CONN_DATABRIDGE", source_dsn)
        monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", dest_dsn)
        self.reset()

    def reset(self) -> None:
        # Each run here stands for a separate process run: forget cached task instances, configs, connections.
        luigi.task_register.Register.clear_instance_cache()
        tasks.forget_settings()
        transports.close_all()
        keepers.close_all()
        source_engines.close_all()
        published_versions.clear()
        tasks.forget_staged_tables()
        forget_push_attempts()
        extracts.forget()

    def config(self, dataset: str, text: str) -> Path:
        dept, table = dataset.split("__")
        path = self.config_dir / "databridge" / dept / f"{table}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        self.reset()
        return path

    def run(self, *task_list: luigi.Task) -> Run:
        self.reset()
        result = luigi.build(list(task_list), local_scheduler=True, detailed_summary=True, log_level="WARNING")
        return Run(result.status in (LuigiStatusCode.SUCCESS, LuigiStatusCode.SUCCESS_WITH_RETRY), result.status, result.summary_text)

    def source(self, statement: str, params: Any = None) -> list[tuple]:
        return _sql(self.source_dsn, statement, params)

    def dest(self, statement: str, params: Any = None) -> list[tuple]:
        return _sql(self.dest_dsn, statement, params)

    def table_oid(self, table: str) -> int | None:
        return self.dest("SELECT to_regclass(%s)::oid", (f"public.{table}",))[0][0]

    def table_digest(self, table: str) -> str:
        return self.dest(f'SELECT md5(string_agg(t::text, \'|\' ORDER BY t::text)) FROM public."{table}" t')[0][0]

    def markers(self, dataset_id: str) -> list[tuple]:
        return self.dest("SELECT version, row_count, rewritten FROM databridge_luigi_publications WHERE dataset_id = %s ORDER BY published_at, version", (dataset_id,))


def _sql(dsn: str, statement: str, params: Any = None) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def make_points_table(pipeline: Pipeline, schema: str, table: str, rows: int) -> None:
    pipeline.source(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    pipeline.source(f"DROP TABLE IF EXISTS {schema}.{table}")
    pipeline.source(
        f"CREATE TABLE {schema}.{table} (objectid integer PRIMARY KEY, address text, code text, "
        f"opened timestamp, fine numeric(12,2), shape geometry(Point, 2272))"
    )
    pipeline.source(
        f"INSERT INTO {schema}.{table} SELECT g, g || ' Market St', 'C' || (g % 7), "
        f"timestamp '2024-03-09 20:00' + g * interval '7 minutes', g * 1.25, "
        f"ST_SetSRID(ST_MakePoint(2690000 + g, 230000 + g), 2272) FROM generate_series(1, {rows}) g"
    )
