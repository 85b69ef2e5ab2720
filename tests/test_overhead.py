"""The job system's own hot path (issue 18): one statement per move on PostgreSQL, the seed drawn
with the claim, and the same guarantees as before on both backends: a fence refuses a holder
that lost the job, every move reaches the event stream. (A job with a webhook takes the general
path, whose outbox rows test_webhooks.py checks on both backends.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from dreamforge.execution import Executor
from dreamforge.imaging import read_parameters
from dreamforge.moves import Fence
from dreamforge.runners.fake import FakeRunner
from dreamforge.schemas import MAX_SEED, parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings

WORKER = "worker:test:1:a"


def request(seed: int | None = None, **extra):
    return parse_request({"prompt": "overhead", "width": 64, "height": 64, "steps": 3, "seed": seed, **extra})


def artifact(key: str, seed: int) -> dict:
    return {"item_index": 0, "seed": seed, "width": 64, "height": 64, "format": "png", "s3_key": key,
            "size_bytes": 1, "sha256": "0" * 64}


def service() -> JobService:
    return JobService.from_settings(Settings())


@contextmanager
def statements(svc: JobService) -> Iterator[list[str]]:
    """Every statement the job store sends while the block runs through the engine, and
    PostgreSQL's one-statement moves, which go to the driver directly (JobStore._statement).
    On SQLite, the BEGIN the store issues itself and a POST's rows (JobStore._driver_write) go to
    the driver and are not seen here; the test below checks those rows."""
    sent: list[str] = []
    store = svc.job_store
    one_statement = store._statement

    def record(_conn, _cursor, statement, *_args) -> None:
        sent.append(statement)

    def record_one(statement, params):
        sent.append(str(statement))
        return one_statement(statement, params)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    store._statement = record_one  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
        del store._statement


def test_a_seedless_job_gets_its_seed_with_the_claim_and_its_image_carries_it(df_env):
    """No separate write records the seed: the claim does, on the job and its step, and the run
    and the image's metadata use that seed."""
    svc = service()
    job_id = svc.submit(request()).view.id
    assert svc.get(job_id).params["seed"] is None and svc.get(job_id).steps[0].seed is None
    claim = svc.claim(job_id, WORKER)
    assert claim is not None
    seed = claim.params["seed"]
    assert isinstance(seed, int) and 0 <= seed <= MAX_SEED
    claimed = svc.get(job_id)
    assert claimed.params["seed"] == seed and claimed.steps[0].seed == seed
    # The rest of the run, as a worker does it after its claim.
    assert svc.hand_back(claim.fence, "test") is True
    assert Executor(svc, FakeRunner(), WORKER).execute(job_id) == "succeeded"
    view = svc.get(job_id)
    assert view.params["seed"] == seed and view.steps[0].seed == seed  # a second claim keeps it
    assert view.artifacts[0].seed == seed
    assert read_parameters(svc.artifact_bytes(view.artifacts[0].s3_key))["seed"] == seed
    assert view.record["seeds"] == [seed]
    # A seed given with the job is kept as given.
    given = svc.submit(request(seed=1234)).view.id
    assert Executor(svc, FakeRunner(), WORKER).execute(given) == "succeeded"
    assert svc.get(given).params["seed"] == 1234 and svc.get(given).artifacts[0].seed == 1234


def test_fences_refuse_a_holder_that_lost_the_job(df_env):
    """A claim wins once; after the job went back to the queue and another attempt claimed it,
    every write of the first attempt is refused and changes nothing."""
    svc = service()
    job_id = svc.submit(request(seed=7)).view.id
    first = svc.claim(job_id, WORKER)
    assert first is not None and svc.claim(job_id, "worker:other") is None
    assert svc.progress(first.fence, 1, 3) and svc.holds(first.fence)
    assert svc.hand_back(first.fence, "test")
    second = svc.claim(job_id, "worker:other")
    assert second is not None and second.fence.attempt == first.fence.attempt + 1
    stale = first.fence
    assert not svc.holds(stale)
    assert svc.progress(stale, 2, 3) is False
    assert svc.begin_upload(stale, "dreamforge/x/stale.png") is False
    assert svc.succeed(stale, [artifact("dreamforge/x/stale.png", 7)], {"generate_s": 0.0}, {"seeds": [7]}) is False
    # A fence naming another worker, or the right worker with another attempt, is refused too.
    assert svc.progress(Fence(job_id, WORKER, second.fence.attempt), 2, 3) is False
    assert svc.progress(Fence(job_id, "worker:other", first.fence.attempt), 2, 3) is False
    view = svc.get(job_id)
    assert view.status.value == "running" and view.artifacts == [] and view.steps[0].progress.current == 0
    # The holder's own writes go through; a key already recorded is refused as taken (None).
    assert svc.begin_upload(second.fence, "dreamforge/x/a.png") is True
    assert svc.begin_upload(second.fence, "dreamforge/x/a.png") is None
    # A cancel takes the job from its holder: its success is refused.
    svc.cancel(job_id)
    assert svc.succeed(second.fence, [artifact("dreamforge/x/a.png", 7)], {}, {"seeds": [7]}) is False
    assert svc.get(job_id).status.value == "canceled"


def test_the_event_stream_sees_every_move_in_order(df_env):
    svc = service()
    job_id = svc.submit(request(seed=3)).view.id
    assert Executor(svc, FakeRunner(), WORKER).execute(job_id) == "succeeded"
    kinds = [(e["kind"], e["payload"].get("status")) for e in svc.events(job_id)]
    assert kinds[0] == ("status", "queued") and kinds[1] == ("status", "running")
    assert kinds[-1] == ("status", "succeeded")
    events = svc.events(job_id)
    assert events[1]["payload"] == {"status": "running", "worker_id": WORKER, "attempt": 1}
    assert [e["payload"] for e in events if e["kind"] == "progress"][-1] == {"current": 3, "total": 3}
    done = events[-1]["payload"]
    assert done["s3_key"] == svc.get(job_id).artifacts[0].s3_key and "generate_s" in done["timings"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    view = svc.get(job_id)
    assert view.steps[0].status == "succeeded" and view.steps[0].progress.current == 3
    assert view.record is not None and view.started_at is not None and view.finished_at is not None
    # Every pending upload was settled by the success.
    assert svc.job_store.unsettled_uploads(older_than_s=-60) == []


def test_each_move_of_a_job_is_one_statement_on_postgresql(df_env):
    """The POST's create, the claim, a progress write, begin_upload and the success each send one
    statement (no BEGIN, no COMMIT) on PostgreSQL; on SQLite they keep their transactions."""
    svc = service()
    with statements(svc) as sent:
        job_id = svc.submit(request(seed=5)).view.id
    created = len(sent)
    with statements(svc) as sent:
        claim = svc.claim(job_id, WORKER)
    assert claim is not None
    claimed = len(sent)
    with statements(svc) as sent:
        assert svc.progress(claim.fence, 1, 3)
    progressed = len(sent)
    with statements(svc) as sent:
        assert svc.begin_upload(claim.fence, "dreamforge/x/one.png")
    began = len(sent)
    with statements(svc) as sent:
        assert svc.succeed(claim.fence, [artifact("dreamforge/x/one.png", 5)], {"generate_s": 0.0}, {"seeds": [5]})
    succeeded = len(sent)
    view = svc.get(job_id)
    assert view.status.value == "succeeded" and [a.s3_key for a in view.artifacts] == ["dreamforge/x/one.png"]
    assert svc.job_store.unsettled_uploads(older_than_s=-60) == []
    if "DF_DATABASE_URL" in df_env:
        assert (created, claimed, progressed, began, succeeded) == (1, 1, 1, 1, 1)


def test_a_post_on_sqlite_stores_the_rows_a_core_insert_stores(df_env):
    """The POST's driver inserts (SQLite) write each value as SQLAlchemy would: the same stored
    text for JSON and times, read back as the same job; a reused Idempotency-Key still meets the
    unique index as SQLAlchemy's IntegrityError (the same job again, or a conflict)."""
    if "DF_DATABASE_URL" in df_env:
        return  # PostgreSQL's create is one statement of its own (the test above)
    from dreamforge.errors import IdempotencyConflict
    from dreamforge.tables import events, jobs, steps

    svc = service()
    params = request(seed=9).model_dump(mode="json") | {"prompt": "é \"quoted\" ✓"}
    made, created = svc.job_store.create(params, correlation_id="corr", idempotency_key_hash="k" * 64,
                                         request_hash="r" * 64, idempotency_ttl_s=60.0)
    assert created and svc.job_store.job(made["id"])["params"] == params
    assert svc.job_store.job(made["id"])["created_at"] == made["created_at"]
    store = svc.job_store
    with store.read() as conn:
        job_row = conn.execute(sa.select(jobs).where(jobs.c.id == made["id"])).mappings().one()
        step_row = conn.execute(sa.select(steps).where(steps.c.job_id == made["id"])).mappings().one()
        event_row = conn.execute(sa.select(events).where(events.c.job_id == made["id"])).mappings().one()
    # The same values again through a Core insert of the columns a POST sets, under another id:
    # byte for byte what the driver stored.
    twin = "00000000-0000-4000-8000-000000000000"
    posted = ("type", "status", "params", "idempotency_expires_at", "request_hash", "retry_of", "rerun_of",
              "correlation_id", "attempts", "created_at", "updated_at")
    with store.write() as conn:
        conn.execute(jobs.insert(), {"id": twin, **{k: job_row[k] for k in posted}})
        conn.execute(steps.insert(), {**dict(step_row), "id": None, "job_id": twin})
        conn.execute(events.insert(), {**dict(event_row), "id": None, "job_id": twin})
    names = ", ".join(c.name for c in jobs.columns if c.name not in ("id", "idempotency_key_hash"))
    with store.engine.connect() as conn:
        raw = conn.exec_driver_sql(f"SELECT {names} FROM jobs WHERE id IN (?, ?) ORDER BY id = ?",  # noqa: S608
                                   (made["id"], twin, twin)).all()
        raw_steps = conn.exec_driver_sql("SELECT name, status, progress_current, progress_total, seed, started_at,"
                                         " finished_at FROM steps WHERE job_id IN (?, ?)", (made["id"], twin)).all()
        raw_events = conn.exec_driver_sql("SELECT at, kind, payload FROM events WHERE job_id IN (?, ?)",
                                          (made["id"], twin)).all()
    assert raw[0] == raw[1] and raw_steps[0] == raw_steps[1] and raw_events[0] == raw_events[1]
    # The unique key: the same request gets the first job, another one a conflict.
    again, created = store.create(params, idempotency_key_hash="k" * 64, request_hash="r" * 64,
                                  idempotency_ttl_s=60.0)
    assert not created and again["id"] == made["id"]
    try:
        store.create(params, idempotency_key_hash="k" * 64, request_hash="x" * 64, idempotency_ttl_s=60.0)
    except IdempotencyConflict:
        pass
    else:
        raise AssertionError("a reused key with another request was not refused")


def test_a_post_that_fails_midway_on_sqlite_leaves_no_row_and_the_store_goes_on(df_env, monkeypatch):
    """The POST's driver-level transaction (SQLite): an error after the job's row rolls the row
    back, comes out as Core's error (so the API answers 503, not 500), and leaves the pooled
    connection fit for the next POST."""
    if "DF_DATABASE_URL" in df_env:
        return  # PostgreSQL's create is one statement
    import pytest

    from dreamforge.errors import BackendUnavailable

    svc = service()
    create = svc.job_store._sqlite_create
    assert create is not None
    real_event = create.event

    def disk_went_away(driver, params):
        raise sa.exc.OperationalError("INSERT INTO events", None, Exception("disk I/O error"))

    monkeypatch.setattr(create, "event", disk_went_away)
    with pytest.raises(BackendUnavailable):
        svc.submit(request(seed=1))
    assert sum(svc.job_store.counts().values()) == 0
    monkeypatch.setattr(create, "event", real_event)
    for seed in (2, 3):  # every pooled connection is out of its transaction
        assert svc.get(svc.submit(request(seed=seed)).view.id).status.value == "queued"
    assert sum(svc.job_store.counts().values()) == 2


def test_progress_reporters_write_each_jobs_last_value_and_notice_a_cancel(df_env):
    """Reporters of several running jobs at once: each job's last value is written before wait()
    returns, and a job canceled under its reporter stops the run at its next report (LostJob)."""
    import time

    from dreamforge.progress import LostJob, ProgressReporter

    svc = service()
    fences = []
    for _ in range(3):
        claim = svc.claim(svc.submit(request(seed=1)).view.id, WORKER)
        assert claim is not None
        fences.append(claim.fence)
    reporters = [ProgressReporter(svc, fence) for fence in fences]
    for step in (1, 2, 3):
        for reporter in reporters:
            reporter.report(step, 3)
    assert all(reporter.wait(30) for reporter in reporters)
    for fence in fences:
        assert [e["payload"] for e in svc.events(fence.job_id) if e["kind"] == "progress"][-1] == \
            {"current": 3, "total": 3}
    # A cancel: the writer's next check finds the job gone from its holder.
    fence = svc.claim(svc.submit(request(seed=1)).view.id, WORKER).fence  # type: ignore[union-attr]
    with ProgressReporter(svc, fence) as reporter:
        svc.cancel(fence.job_id)
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                reporter.report(1, 10)
                time.sleep(0.01)
            raise AssertionError("the reporter never found the job canceled")
        except LostJob:
            pass
    assert not reporter.wait(30)
