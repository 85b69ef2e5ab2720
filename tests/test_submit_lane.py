"""Where a POST's submit runs (dreamforge/server/lane.py): on SQLite, a thread of its own for every
plain submit, so concurrent POSTs don't fight over the write lock; the shared pool for a job
with a webhook (its check may wait on DNS) and for every submit on PostgreSQL. Closing the lane
waits for the submit in hand, so a job is recorded and queued, or neither."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient

from dreamforge.schemas import parse_request
from dreamforge.server.app import create_app
from dreamforge.server.lane import SubmitLane
from dreamforge.service import JobService
from dreamforge.settings import Settings

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {"prompt": "lane", "width": 64, "height": 64, "steps": 1}


@pytest.fixture
def submit_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each JobService.submit ran on."""
    names: list[str] = []
    real = JobService.submit

    def recording(self, *args, **kwargs):
        names.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(JobService, "submit", recording)
    return names


def test_plain_submits_share_one_thread_on_sqlite_and_the_pool_otherwise(df_env, monkeypatch, submit_threads):
    monkeypatch.setenv("DF_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("DF_WEBHOOK_ALLOW_PRIVATE", "1")
    on_sqlite = "DF_DATABASE_URL" not in df_env
    with TestClient(create_app(Settings())) as client:
        with ThreadPoolExecutor(8) as clients:  # concurrent POSTs, each answered and recorded once
            replies = list(clients.map(lambda i: client.post("/v1/jobs", json={**BODY, "seed": i}), range(24)))
        assert [r.status_code for r in replies] == [202] * 24
        assert len({r.json()["id"] for r in replies}) == 24
        hooked = client.post("/v1/jobs", json={**BODY, "webhook": "http://127.0.0.1:9/hook"})
        assert hooked.status_code == 202, hooked.text
        listed = client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert len(listed) == 25
    plain, webhook = submit_threads[:24], submit_threads[24]
    if on_sqlite:
        assert set(plain) == {"df-submit_0"}
        assert not webhook.startswith("df-submit")
    else:
        assert not any(name.startswith("df-submit") for name in submit_threads)


def test_closing_the_lane_waits_for_the_submit_in_hand(df_env, monkeypatch):
    import asyncio

    if "DF_DATABASE_URL" in df_env:
        return  # on PostgreSQL the lane holds no thread: uvicorn's own wait for requests covers it
    svc = JobService.from_settings(Settings())
    real = svc.submit
    started = threading.Event()

    def slow(*args, **kwargs):
        started.set()
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(svc, "submit", slow)
    lane = SubmitLane(svc)

    async def submit_then_close():
        pending = asyncio.ensure_future(lane.submit(parse_request(BODY)))
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        await asyncio.get_running_loop().run_in_executor(None, lane.close)
        # close returned: the job in hand is recorded (and its reply is ready)
        assert sum(svc.job_store.counts().values()) == 1
        return await pending

    submitted = asyncio.run(submit_then_close())
    assert svc.get(submitted.view.id).status.value == "queued"
    svc.close()
