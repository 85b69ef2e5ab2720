"""Schema migrations: the revisions agree with the models (what `alembic check` checks), a job
store made by the first release upgrades with every job, event and artifact intact, and
`df db upgrade` / `df db current` say what they did."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from dreamforge import migrate
from dreamforge.job_store import JobStore
from dreamforge.service import JobService
from dreamforge.settings import Settings

DATA = Path(__file__).parent / "data"
# What the first release's rows say (tests/data/first-release.*.sql).
FIRST_RELEASE_JOBS = {"a lighthouse": "succeeded", "a forest": "succeeded", "no model": "failed",
                      "still queued": "queued"}


def test_the_head_constant_is_the_newest_revision():
    assert migrate.HEAD_REVISION == migrate.head_of_scripts()


def test_a_fresh_store_is_at_head_and_agrees_with_the_models(df_env):
    store = JobStore(Settings().database_url)
    assert store.upgrade_schema() == (None, migrate.HEAD_REVISION)
    assert store.schema_revision() == migrate.HEAD_REVISION
    with store.read() as conn:
        assert migrate.differences(conn) == []  # `alembic check`: models and migrations agree
    assert store.upgrade_schema() == (migrate.HEAD_REVISION, migrate.HEAD_REVISION)  # idempotent


def load_first_release(settings: Settings) -> None:
    url = settings.database_url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            conn.executescript((DATA / "first-release.sqlite.sql").read_text())
        return
    schema = url.split("search_path%3D", 1)[1]
    script = (DATA / "first-release.postgres.sql").read_text().replace("first_release.", f'"{schema}".')
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(script)
    engine.dispose()


def test_a_first_release_store_upgrades_with_every_row_intact(df_env):
    settings = Settings()
    load_first_release(settings)
    store = JobStore(settings.database_url)
    assert store.schema_revision() is None
    assert store.upgrade_schema() == (migrate.FIRST_RELEASE, migrate.HEAD_REVISION)
    with store.read() as conn:
        assert migrate.differences(conn) == []
    svc = JobService.from_settings(settings)
    views = svc.list_jobs(limit=100)
    assert {v.params["prompt"]: v.status.value for v in views} == FIRST_RELEASE_JOBS
    for view in views:
        events = svc.events(view.id)
        assert events[0]["payload"]["status"] == "queued"
        if view.status.value == "succeeded":
            [art] = view.artifacts
            assert art.sha256 and art.s3_key.startswith(f"dreamforge/default/jobs/{view.id}/")
            assert events[-1]["payload"]["status"] == "succeeded"
    failed = next(v for v in views if v.status.value == "failed")
    assert failed.error.code == "model_not_found"
    # The upgraded store takes new work: the new columns and tables are in use.
    page = svc.page_jobs(["succeeded"], limit=1)
    assert len(page.jobs) == 1 and page.next_cursor
    assert len(svc.page_jobs(["succeeded"], cursor=page.next_cursor, limit=5).jobs) == 1


def test_auto_upgrade_off_refuses_an_old_schema_with_one_clear_line(df_env, monkeypatch):
    from tests.conftest import run_df

    load_first_release(Settings())
    result = run_df({**df_env, "DF_DB_AUTO_UPGRADE": "0"}, "status")
    assert result.returncode == 2 and "df db upgrade" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("df_env", ["postgres_redis"], indirect=True)
def test_ten_processes_upgrading_a_first_release_store_at_once(df_env):
    from tests.conftest import open_the_store_at_once

    load_first_release(Settings())
    open_the_store_at_once(df_env)
    assert JobStore(Settings().database_url).schema_revision() == migrate.HEAD_REVISION


def job_indexes(conn: sa.Connection) -> dict[str, str]:
    """The jobs and events indexes of the store, each with its definition as the database has it."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                    "AND tbl_name IN ('jobs', 'events') AND sql IS NOT NULL")
    else:
        rows = conn.exec_driver_sql("SELECT indexname, indexdef FROM pg_indexes WHERE "
                                    "schemaname = current_schema() AND tablename IN ('jobs', 'events')")
    return {name: " ".join(definition.split()) for name, definition in rows}


def test_0006_drops_the_prefix_indexes_and_makes_the_null_mostly_ones_partial(df_env):
    from alembic import command

    store = JobStore(Settings().database_url)
    store.upgrade_schema()
    with store.read() as conn:
        indexes = job_indexes(conn)
    assert {"ix_jobs_status", "ix_jobs_created_at", "ix_events_job_id"}.isdisjoint(indexes)
    assert {"ix_jobs_status_created_id", "ix_jobs_created_id", "ix_events_job_id_id"} <= set(indexes)
    for column in ("retry_of", "rerun_of"):
        assert f"WHERE {column} IS NOT NULL" in indexes[f"ix_jobs_{column}"].replace("(", "").replace(")", "")

    with store.write() as conn:  # the downgrade puts every index back as 0005 had it
        command.downgrade(migrate._config(conn), "0005")
    with store.read() as conn:
        indexes = job_indexes(conn)
    assert {"ix_jobs_status", "ix_jobs_created_at", "ix_events_job_id"} <= set(indexes)
    assert not any("WHERE" in indexes[f"ix_jobs_{column}"] for column in ("retry_of", "rerun_of"))
    assert store.upgrade_schema() == ("0005", migrate.HEAD_REVISION)
    with store.read() as conn:
        assert migrate.differences(conn) == []
