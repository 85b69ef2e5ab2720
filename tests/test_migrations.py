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
