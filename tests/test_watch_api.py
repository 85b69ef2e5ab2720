"""Watching, canceling, listing and fetching over HTTP (issue #13). Contracts run in-process; the
SSE stream across processes runs against a real `df serve` and `df worker` with an SSE client."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse
from starlette.testclient import TestClient

from dreamforge.runners.fake import FakeRunner
from dreamforge.server.app import create_app
from dreamforge.service import JobService
from dreamforge.settings import Settings
from dreamforge.worker import InlineWorker
from tests.conftest import s3_settings_env
from tests.polling import wait_until
from tests.test_api import Server

SSE = {"Accept": "text/event-stream"}
TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
def svc(df_env) -> Iterator[JobService]:
    service = JobService.from_settings(Settings())
    yield service
    service.close()


@pytest.fixture
def api(df_env) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), heartbeat_s=0.05)) as client:
        yield client


def submit(client, steps: int = 2, **extra) -> str:
    r = client.post("/v1/jobs", json={"prompt": "watch me", "width": 64, "height": 64, "steps": steps, **extra})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def run_job(svc: JobService, job_id: str, step_delay_s: float = 0.0) -> InlineWorker:
    worker = InlineWorker(svc, FakeRunner(step_delay_s=step_delay_s), job_id)
    worker.start()
    return worker


def finished(client, svc: JobService, **extra) -> str:
    job_id = submit(client, **extra)
    run_job(svc, job_id).join()
    assert svc.get(job_id).status.value == "succeeded"
    return job_id


def terminal_events(svc: JobService, job_id: str) -> list[str]:
    return [e["payload"]["status"] for e in svc.events(job_id)
            if e["kind"] == "status" and e["payload"].get("status") in TERMINAL]


def sse_frames(text: str) -> list[dict]:
    frames = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":")
        if "id" in fields:
            frames.append(fields)
    return frames


# -- cancel ----------------------------------------------------------------------------------------

def test_cancel_queued_running_terminal_twice_and_unknown(api, svc):
    queued = submit(api)
    first = api.post(f"/v1/jobs/{queued}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "canceled"
    again = api.post(f"/v1/jobs/{queued}/cancel")
    assert again.status_code == 200 and again.json() == first.json()
    assert terminal_events(svc, queued) == ["canceled"]

    running = submit(api, steps=150)
    worker = run_job(svc, running, step_delay_s=0.02)
    wait_until(lambda: svc.get(running).status.value == "running", "the job to run")
    assert api.post(f"/v1/jobs/{running}/cancel").json()["status"] == "canceled"
    worker.join()
    view = api.get(f"/v1/jobs/{running}").json()
    assert view["status"] == "canceled" and view["artifacts"] == []
    assert view["steps"][0]["progress"]["current"] < 150
    assert terminal_events(svc, running) == ["canceled"]

    done = finished(api, svc)
    r = api.post(f"/v1/jobs/{done}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_cancelable"
    assert api.get(f"/v1/jobs/{done}").json()["status"] == "succeeded"
    assert api.post("/v1/jobs/6c0b9f8e-0000-4000-8000-000000000000/cancel").status_code == 404
    assert api.post(f"/v1/jobs/{queued}/cancel?force=1").status_code == 422
    assert 'dreamforge_jobs{status="canceled"} 2.0' in api.get("/metrics").text


def test_cancel_racing_the_finish_ends_in_one_terminal_state(df_env, start_worker, svc):
    """Cancels land before, during and at the very end of each run: every job ends in exactly
    one terminal state with exactly one terminal event, and a 409 only for a job that finished."""
    start_worker(env={"DF_FAKE_STEP_DELAY_S": "0.01"})
    rng = random.Random(13)
    answers = {}
    with TestClient(create_app(Settings())) as client:
        for _ in range(30):
            job_id = submit(client, steps=5)
            time.sleep(rng.uniform(0.0, 0.25))
            answers[job_id] = client.post(f"/v1/jobs/{job_id}/cancel").status_code
    wait_until(lambda: all(svc.get(j).status.value in TERMINAL for j in answers), "every job to end", 60)
    ended = Counter()
    for job_id, code in answers.items():
        view = svc.get(job_id)
        assert terminal_events(svc, job_id) == [view.status.value], job_id
        assert (code, view.status.value) in ((200, "canceled"), (409, "succeeded")), (job_id, code)
        assert (view.artifacts != []) == (view.status.value == "succeeded")
        ended[view.status.value] += 1
    print(dict(ended))


# -- events: SSE across processes --------------------------------------------------------------

def test_sse_across_processes_with_a_reconnect_mid_job(df_env, start_worker, svc, tmp_path):
    """`df worker` writes the events, `df serve` streams them: a client that drops mid-job and
    reconnects with Last-Event-ID gets every event once, ending with the terminal one; a
    dashboard stream of every job sees the same events."""
    server = Server(df_env, tmp_path / "serve.log", "--no-worker")
    try:
        start_worker(env={"DF_FAKE_STEP_DELAY_S": "0.04"})
        dashboard: list[int] = []

        def watch_all() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c, \
                    connect_sse(c, "GET", "/v1/events", params={"type": "generate"}) as source:
                for sse in source.iter_sse():
                    dashboard.append(int(sse.id))
                    if sse.event == "status" and sse.json()["payload"]["status"] in TERMINAL:
                        return

        watcher = threading.Thread(target=watch_all, daemon=True)
        watcher.start()
        time.sleep(0.5)  # the dashboard stream starts "now"
        job_id = submit(server.client, steps=40)
        seen: list[int] = []
        with httpx.Client(base_url=server.url, timeout=30) as c:
            with connect_sse(c, "GET", f"/v1/jobs/{job_id}/events") as source:
                assert source.response.headers["content-type"].startswith("text/event-stream")
                for sse in source.iter_sse():
                    seen.append(int(sse.id))
                    if sse.event == "progress":
                        break  # drop the connection while the job runs
            assert svc.get(job_id).status.value == "running"
            with connect_sse(c, "GET", f"/v1/jobs/{job_id}/events",
                             headers={"Last-Event-ID": str(seen[-1])}) as source:
                kinds = []
                for sse in source.iter_sse():
                    seen.append(int(sse.id))
                    kinds.append((sse.event, sse.json()))
        assert kinds[-1][0] == "status" and kinds[-1][1]["payload"]["status"] == "succeeded"
        stored = [e["id"] for e in svc.events(job_id)]
        assert seen == stored and len(set(seen)) == len(seen)
        watcher.join(30)
        assert dashboard == stored
        # A client that resumes after the terminal event gets nothing more and is let go.
        r = server.client.get(f"/v1/jobs/{job_id}/events", headers={**SSE, "Last-Event-ID": str(stored[-1])})
        assert sse_frames(r.text) == []
    finally:
        server.stop()


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_sse_keepalive_and_end_on_cancel_in_process(api, svc):
    job_id = submit(api)
    threading.Timer(0.4, lambda: svc.cancel(job_id)).start()
    with api.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE) as r:
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
        text = r.read().decode()
    assert ": keep-alive" in text
    frames = sse_frames(text)
    assert [f["event"] for f in frames] == ["status", "status"]
    assert '"canceled"' in frames[-1]["data"]


def test_the_event_feed_sleeps_with_nobody_watching_and_wakes_for_the_next_stream(df_env, svc, monkeypatch):
    """The API reads no events while nobody watches; a stream that comes after the feed went back
    to sleep still gets every event of its job, in order, to the end."""
    from dreamforge import feed

    monkeypatch.setattr(feed, "IDLE_S", 0.3)
    runs = []
    tail = feed.EventFeed._run

    async def counted_run(self: feed.EventFeed) -> None:
        runs.append(self)
        await tail(self)

    monkeypatch.setattr(feed.EventFeed, "_run", counted_run)
    with TestClient(create_app(Settings(), heartbeat_s=0.05)) as client:
        finished(client, svc)
        assert runs == []  # submissions and a job's whole run: nothing watched, nothing read
        for round_ in range(2):
            job_id = submit(client, steps=6)
            worker = run_job(svc, job_id, step_delay_s=0.05)
            with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE) as r:
                frames = sse_frames(r.read().decode())
            worker.join()
            ids = [int(f["id"]) for f in frames]
            assert ids == sorted(set(ids)) and ids == [e["id"] for e in svc.events(job_id)]
            assert '"succeeded"' in frames[-1]["data"]
            assert len(runs) == round_ + 1
            # Nobody watches: the feed goes back to sleep (on PostgreSQL after its LISTEN's 1 s wait).
            task = runs[-1]._task
            wait_until(lambda task=task: task is None or task.done(), "the feed to go to sleep", timeout=5)


def test_events_json_paging_and_bad_input(api, svc):
    job_id = finished(api, svc)
    stored = svc.events(job_id)
    page = api.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}).json()
    assert [e["id"] for e in page["events"]] == [e["id"] for e in stored[:2]]
    rest = api.get(f"/v1/jobs/{job_id}/events", params={"after": page["next_after"]}).json()
    assert [e["id"] for e in page["events"] + rest["events"]] == [e["id"] for e in stored]
    assert rest["events"][-1]["payload"]["status"] == "succeeded"
    resumed = api.get(f"/v1/jobs/{job_id}/events", headers={**SSE, "Last-Event-ID": str(stored[1]["id"])})
    frames = sse_frames(resumed.text)
    assert [int(f["id"]) for f in frames] == [e["id"] for e in stored[2:]]
    for path, headers in ((f"/v1/jobs/{job_id}/events?after=-1", {}),
                          (f"/v1/jobs/{job_id}/events?after=x", {}),
                          (f"/v1/jobs/{job_id}/events?limit=1001", {}),
                          (f"/v1/jobs/{job_id}/events?typo=1", {}),
                          (f"/v1/jobs/{job_id}/events", {**SSE, "Last-Event-ID": "-1"}),
                          (f"/v1/jobs/{job_id}/events", {**SSE, "Last-Event-ID": "abc"}),
                          (f"/v1/jobs/{job_id}/logs", {"Last-Event-ID": "r"}),
                          ("/v1/events?status=done", {}), ("/v1/events?after=1&after=2", {})):
        r = api.get(path, headers=headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (path, r.text)
    assert api.get("/v1/jobs/6c0b9f8e-0000-4000-8000-000000000000/events", headers=SSE).status_code == 404
    beyond = api.get(f"/v1/jobs/{job_id}/logs", params={"after": 10**18 - 1})  # past any id the store holds
    assert beyond.status_code == 200 and beyond.text == ""
    every = api.get("/v1/events", params={"status": "succeeded"}).json()["events"]
    assert [(e["job_id"], e["payload"]["status"], e["job_type"]) for e in every] == [(job_id, "succeeded", "generate")]
    assert api.get("/v1/events", params={"type": "img2img"}).json()["events"] == []


# -- logs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_logs_as_text_json_and_followed(api, svc):
    job_id = finished(api, svc)
    text = api.get(f"/v1/jobs/{job_id}/logs")
    assert text.headers["content-type"].startswith("text/plain")
    lines = text.text.splitlines()
    assert "INFO" in lines[0] and lines[0].endswith("status queued") and "status succeeded" in lines[-1]
    page = api.get(f"/v1/jobs/{job_id}/logs", headers={"Accept": "application/json"}).json()
    assert len(page["lines"]) == len(lines) and page["next_after"] == page["lines"][-1]["id"]
    assert all(line["level"] and line["message"] for line in page["lines"])
    frames = sse_frames(api.get(f"/v1/jobs/{job_id}/logs", headers=SSE).text)
    assert {f["event"] for f in frames} == {"log"} and len(frames) == len(lines)


# -- listing ---------------------------------------------------------------------------------------

def test_listing_pages_are_stable_while_jobs_arrive(api):
    first = [submit(api, steps=1) for _ in range(12)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/jobs", params=params).json()
        seen += [v["id"] for v in page["jobs"]]
        submit(api, steps=1)  # newer than every page: never shows up in a later one
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == first[::-1]
    assert api.get("/v1/jobs", params={"cursor": "bm9wZQ"}).status_code == 422


def test_listing_filters(api, svc):
    a, b, c = submit(api), submit(api), submit(api)
    api.post(f"/v1/jobs/{b}/cancel")
    created = {v["id"]: v["created_at"] for v in api.get("/v1/jobs").json()["jobs"]}

    def ids(**params) -> list[str]:
        r = api.get("/v1/jobs", params=params)
        assert r.status_code == 200, r.text
        return [v["id"] for v in r.json()["jobs"]]

    assert ids(status="canceled") == [b]
    assert ids(status=["queued", "canceled"]) == [c, b, a]
    assert ids(status=["succeeded"]) == []
    assert ids(type="generate") == [c, b, a] and ids(type="img2img") == []
    assert ids(created_after=created[a]) == [c, b]
    assert ids(created_before=created[c]) == [b, a]
    assert ids(created_after=created[a], created_before=created[c], status="canceled") == [b]
    for bad in ({"status": "done"}, {"limit": 0}, {"limit": "abc"}, {"created_after": "yesterday"},
                {"type": "Bad Type"}, {"typo": "1"}, {"limit": ["1", "2"]}):
        assert api.get("/v1/jobs", params=bad).status_code == 422, bad


# -- artifacts ---------------------------------------------------------------------------------------

def test_artifact_content_local(api, svc):
    job_id = finished(api, svc)
    [art] = api.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]
    assert art["content_url"] == f"/v1/jobs/{job_id}/artifacts/0/content" and art["path"] is None
    url = art["content_url"]
    r = api.get(url)
    body = r.content
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{art["sha256"]}"' == f'"{hashlib.sha256(body).hexdigest()}"'
    assert int(r.headers["content-length"]) == len(body) == art["size_bytes"]
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    not_modified = api.get(url, headers={"If-None-Match": r.headers["etag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""
    size = len(body)
    for header, part in (("bytes=0-9", body[:10]), ("bytes=10-", body[10:]), ("bytes=-7", body[-7:]),
                         (f"bytes=5-{size + 100}", body[5:])):
        r = api.get(url, headers={"Range": header})
        assert r.status_code == 206 and r.content == part, header
        assert r.headers["content-range"].endswith(f"/{size}")
    assert api.get(url, headers={"Range": "bytes=0-1,5-6"}).content == body
    r = api.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    assert r.json()["error"]["code"] == "range_not_satisfiable"
    thumb = api.get(art["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    assert thumb.content[8:12] == b"WEBP" and thumb.headers["etag"] != r.headers.get("etag")
    assert api.get(url, params={"thumb": 100}).status_code == 422
    missing = api.get(f"/v1/jobs/{job_id}/artifacts/1/content")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "artifact_not_found"
    # A file gone from the store: 503, and the server's path stays on the server.
    data_dir = str(Settings().data_dir)
    for path in Path(data_dir).rglob("*.png"):
        path.unlink()
    gone = api.get(url)
    assert gone.status_code == 503 and data_dir not in gone.text


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_artifact_content_s3_redirects_or_serves(df_env, seaweed, monkeypatch):
    for name, value in s3_settings_env(seaweed.endpoint).items():
        monkeypatch.setenv(name, value)
    service = JobService.from_settings(Settings())
    try:
        with TestClient(create_app(Settings())) as client:
            job_id = finished(client, service)
            [art] = client.get(f"/v1/jobs/{job_id}").json()["artifacts"]
            r = client.get(art["content_url"], follow_redirects=False)
            assert r.status_code == 302 and r.headers["location"].startswith(seaweed.endpoint)
            direct = httpx.get(r.headers["location"])
            assert hashlib.sha256(direct.content).hexdigest() == art["sha256"]
            served = client.get(art["content_url"], params={"redirect": "false"})
            assert served.status_code == 200 and served.content == direct.content
            assert served.headers["etag"] == f'"{art["sha256"]}"'
            assert client.get(art["thumbnail_url"]).headers["content-type"] == "image/webp"
    finally:
        service.close()
