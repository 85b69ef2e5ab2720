"""Signed webhooks (issue #16): an outbox row written with each event it announces, a deliverer
that signs and sends it to a real receiver on 127.0.0.1 (which verifies every signature with the
standardwebhooks library), retries on a schedule, and never slows a job. One end-to-end test
SIGKILLs a real `df worker` in the middle of a delivery."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.testclient import TestClient

from dreamforge.errors import InvalidRequest
from dreamforge.execution import Executor
from dreamforge.runners.fake import FakeRunner
from dreamforge.schemas import parse_request
from dreamforge.server.app import create_app
from dreamforge.service import JobService
from dreamforge.settings import Settings
from dreamforge.tables import webhook_deliveries
from dreamforge.webhooks.targets import TargetRefused, check_target
from tests.polling import wait_until
from tests.servers import free_port

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
FAST = {"DF_WEBHOOK_SECRET": SECRET, "DF_WEBHOOK_ALLOW_PRIVATE": "1", "DF_WEBHOOK_POLL_S": "0.02",
        "DF_WEBHOOK_RETRY_SCHEDULE": "0.05s,0.05s,0.05s,0.05s", "DF_WEBHOOK_TIMEOUT_S": "2"}


class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies each delivery as a real one would. ``answers``
    scripts the statuses a path answers in turn (then 200); a path in ``hold`` answers only once
    ``release`` is set."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.got: list[dict[str, Any]] = []
        self.answers: dict[str, list[int]] = {}
        self.hold: set[str] = set()
        self.release = threading.Event()
        self.arrived = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = dict(self.headers.items())
                try:
                    payload, verified = Webhook(SECRET).verify(body, headers), True
                except WebhookVerificationError:
                    payload, verified = None, False
                receiver.got.append({"path": self.path, "headers": headers, "body": body,
                                     "payload": payload, "verified": verified})
                receiver.arrived.set()
                if self.path in receiver.hold:
                    receiver.release.wait(30)
                script = receiver.answers.get(self.path)
                self.send_response(script.pop(0) if script else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()

    def types(self, path: str = "/hook") -> list[str]:
        return [g["payload"]["type"] for g in self.got if g["path"] == path and g["verified"]]


@pytest.fixture
def hooks_env(df_env, monkeypatch) -> dict[str, str]:
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    return {**df_env, **FAST}


@pytest.fixture
def svc(hooks_env) -> Iterator[JobService]:
    service = JobService.from_settings(Settings())
    yield service
    service.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def deliverer(svc) -> Iterator[Any]:
    d = svc.webhook_deliverer()
    assert d is not None
    d.start()
    yield d
    d.stop()


def run(svc: JobService, steps: int = 3, **fields: Any) -> str:
    """Submit a job and run it to its end in this thread (no deliverer involved)."""
    job_id = svc.submit(parse_request({"prompt": "a lighthouse", "width": 64, "height": 64,
                                       "steps": steps, **fields})).view.id
    Executor(svc, FakeRunner(), "worker:test").execute(job_id)
    return job_id


def rows(svc: JobService, job_id: str) -> list[dict[str, Any]]:
    return sorted(svc.webhook_deliveries(job_id), key=lambda d: d["created_at"])


# -- the outbox: rows written with their events ------------------------------------------------

def test_rows_are_written_with_their_events_and_progress_coalesces(svc, receiver):
    """No deliverer runs: the rows are the outbox. Default events are the terminal ones; asking
    for progress gives one pending progress row that follows the newest step."""
    job_id = run(svc, webhook=receiver.url())
    assert [(d["event_type"], d["status"], d["attempts"]) for d in rows(svc, job_id)] == \
        [("job.succeeded", "pending", 0)]
    job_id = run(svc, steps=5, webhook=receiver.url(), webhook_events=["running", "progress", "succeeded"])
    found = rows(svc, job_id)
    assert sorted(d["event_type"] for d in found) == ["job.progress", "job.running", "job.succeeded"]
    progress = next(d for d in found if d["event_type"] == "job.progress")
    last_step = [e for e in svc.events(job_id) if e["kind"] == "progress"][-1]
    assert progress["event_id"] == last_step["id"] and last_step["payload"]["current"] == 5
    assert svc.get(job_id).params["webhook_events"] == ["running", "progress", "succeeded"]


def test_a_move_that_rolls_back_writes_no_delivery(svc, receiver):
    """The delivery row lives and dies with the event's transaction."""
    job_id = svc.submit(parse_request({"prompt": "x", "width": 64, "height": 64, "steps": 1,
                                       "webhook": receiver.url(), "webhook_events": ["running"]})).view.id
    store = svc.job_store

    class Boom(Exception):
        pass

    def explode(*args: Any) -> None:
        raise Boom

    original = store.outbox.record
    store.outbox.record = lambda *a: (original(*a), explode())  # type: ignore[method-assign]
    with pytest.raises(Boom):
        svc.claim(job_id, "worker:test")
    store.outbox.record = original  # type: ignore[method-assign]
    assert svc.get(job_id).status.value == "queued" and rows(svc, job_id) == []
    assert [e["payload"]["status"] for e in svc.events(job_id)] == ["queued"]


# -- delivery ------------------------------------------------------------------------------------

def test_delivered_once_per_event_signed_with_the_envelope(svc, receiver, monkeypatch):
    monkeypatch.setenv("DF_WEBHOOK_URLS", receiver.url("/all"))
    svc.job_store.outbox = type(svc.job_store.outbox).from_settings(Settings())  # the server-wide endpoint
    job_id = run(svc, webhook=receiver.url(), webhook_events=["running", "succeeded"])
    d = svc.webhook_deliverer()
    d.start()
    try:
        wait_until(lambda: len(receiver.got) >= 4, "four deliveries")
        wait_until(lambda: all(r["status"] == "delivered" for r in rows(svc, job_id)), "rows marked delivered")
    finally:
        d.stop()
    assert all(g["verified"] for g in receiver.got)
    assert sorted(receiver.types("/hook")) == sorted(receiver.types("/all")) == ["job.running", "job.succeeded"]
    assert len(receiver.got) == 4  # once each: nothing sent twice
    ids = [g["headers"]["webhook-id"] for g in receiver.got]
    assert len(set(ids)) == 4 and all(i.startswith("msg_") for i in ids)
    done = next(g["payload"] for g in receiver.got if g["payload"]["type"] == "job.succeeded")
    assert done["data"]["job"]["id"] == job_id and done["data"]["job"]["status"] == "succeeded"
    assert done["data"]["event"]["payload"]["status"] == "succeeded"
    assert done["data"]["job"]["artifacts"][0]["path"] is None  # the public view: no server paths
    assert {r["attempts"] for r in rows(svc, job_id)} == {1}


def test_a_tampered_body_or_a_wrong_secret_fails_verification(svc, receiver, deliverer):
    run(svc, webhook=receiver.url())
    got = wait_until(lambda: receiver.got, "a delivery")[0]
    body, headers = got["body"], got["headers"]
    assert Webhook(SECRET).verify(body, headers)["type"] == "job.succeeded"
    tampered = body.replace(b'"succeeded"', b'"failed"')
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another secret of 32 bytes!!!!!!").decode()).verify(body, headers)


def test_receiver_down_then_up_gets_it_later_with_the_same_id(svc, monkeypatch):
    monkeypatch.setenv("DF_WEBHOOK_RETRY_SCHEDULE", "0.2s," * 30 + "0.2s")
    down = Receiver()  # nothing listens on its port yet
    svc.settings = Settings()
    job_id = run(svc, webhook=down.url())
    d = svc.webhook_deliverer()
    d.start()
    try:
        wait_until(lambda: rows(svc, job_id)[0]["attempts"] >= 2, "two refused attempts")
        row = rows(svc, job_id)[0]
        assert row["status"] == "pending" and "Connect" in row["last_error"]
        down.start()
        wait_until(lambda: rows(svc, job_id)[0]["status"] == "delivered", "delivery once the receiver is up")
    finally:
        d.stop()
        down.stop()
    assert len(down.got) == 1 and down.got[0]["verified"]
    assert down.got[0]["headers"]["webhook-id"] == row["id"]


def test_5xx_and_429_are_retried_other_4xx_and_redirects_are_not(svc, receiver, deliverer):
    receiver.answers = {"/flaky": [503, 429, 500], "/gone": [410], "/moved": [301]}
    flaky = run(svc, webhook=receiver.url("/flaky"))
    gone = run(svc, webhook=receiver.url("/gone"))
    moved = run(svc, webhook=receiver.url("/moved"))
    wait_until(lambda: rows(svc, flaky)[0]["status"] == "delivered", "the flaky receiver to take it")
    wait_until(lambda: rows(svc, gone)[0]["status"] == "dead", "the 410 to be final")
    wait_until(lambda: rows(svc, moved)[0]["status"] == "dead", "the 301 to be final")
    flaky_row, gone_row, moved_row = rows(svc, flaky)[0], rows(svc, gone)[0], rows(svc, moved)[0]
    assert (flaky_row["attempts"], flaky_row["last_status_code"]) == (4, 200)
    assert len({g["headers"]["webhook-id"] for g in receiver.got if g["path"] == "/flaky"}) == 1
    assert len({g["body"] for g in receiver.got if g["path"] == "/flaky"}) == 1  # the same bytes each time
    assert (gone_row["attempts"], gone_row["last_status_code"]) == (1, 410)
    assert (moved_row["attempts"], moved_row["last_status_code"]) == (1, 301)
    assert "redirects are not followed" in moved_row["last_error"]
    assert [g["path"] for g in receiver.got].count("/gone") == 1


def test_retries_run_out_into_failed_and_redeliver_starts_again(svc, receiver, deliverer):
    receiver.answers = {"/down": [503] * 5}
    job_id = run(svc, webhook=receiver.url("/down"))
    wait_until(lambda: rows(svc, job_id)[0]["status"] == "failed", "the schedule to run out")
    row = rows(svc, job_id)[0]
    assert row["attempts"] == 5 and row["last_status_code"] == 503  # the first try and four retries
    svc.redeliver(row["id"])
    wait_until(lambda: rows(svc, job_id)[0]["status"] == "delivered", "the redelivery")
    assert {g["headers"]["webhook-id"] for g in receiver.got} == {row["id"]}


def test_a_slow_receiver_does_not_slow_the_job(svc, receiver, deliverer):
    receiver.hold.add("/slow")
    job_id = run(svc, steps=4, webhook=receiver.url("/slow"), webhook_events=["running", "progress", "succeeded"])
    assert svc.get(job_id).status.value == "succeeded"  # ran to its end while the receiver sat on a request
    assert receiver.arrived.wait(10)
    receiver.release.set()
    wait_until(lambda: {r["status"] for r in rows(svc, job_id)} == {"delivered"}, "every delivery")


# -- refused targets -----------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/", "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://[::ffff:10.0.0.1]/",
    "http://0.0.0.0/", "http://224.0.0.1/", "http://100.64.0.1/", "http://[fe80::1]/"])
def test_private_targets_are_refused(url):
    with pytest.raises(TargetRefused, match=r"not a public address|resolves to an address that is not public"):
        check_target(url, allow_private=False)
    assert check_target(url, allow_private=True)


def test_a_refused_name_is_named_but_not_what_it_resolves_to():
    """What a private name points at is the private network's business, not an API client's."""
    with pytest.raises(TargetRefused) as refused:
        check_target("http://localhost:8080/hook", allow_private=False)
    message = str(refused.value)
    assert "'localhost' resolves to an address that is not public" in message
    assert "127.0.0.1" not in message and "::1" not in message


def test_refused_at_submit_over_http_and_at_delivery(hooks_env, monkeypatch, receiver):
    monkeypatch.setenv("DF_WEBHOOK_ALLOW_PRIVATE", "0")
    with TestClient(create_app(Settings())) as client:
        for url, says in [("http://127.0.0.1:8080/h", "not a public address"), ("ftp://example.com/", "http"),
                          ("https://user:pw@example.com/", "user name"), ("http://[::1]:80/", "not a public")]:
            r = client.post("/v1/jobs", json={"prompt": "x", "webhook": url})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"][0]["field"] == "webhook" and says in r.json()["error"]["message"]
    # Allowed at submit, refused at delivery: the rule holds where the deliverer runs.
    monkeypatch.setenv("DF_WEBHOOK_ALLOW_PRIVATE", "1")
    allowing = JobService.from_settings(Settings())
    job_id = run(allowing, webhook=receiver.url())
    monkeypatch.setenv("DF_WEBHOOK_ALLOW_PRIVATE", "0")
    strict = JobService.from_settings(Settings())
    d = strict.webhook_deliverer()
    d.start()
    try:
        wait_until(lambda: rows(strict, job_id)[0]["status"] == "dead", "the delivery to be refused")
    finally:
        d.stop()
        allowing.close()
        strict.close()
    assert receiver.got == [] and "not a public address" in rows(strict, job_id)[0]["last_error"]


def test_webhooks_need_a_secret(df_env, monkeypatch):
    monkeypatch.delenv("DF_WEBHOOK_SECRET", raising=False)
    service = JobService.from_settings(Settings())
    with pytest.raises(InvalidRequest, match="DF_WEBHOOK_SECRET"):
        service.submit(parse_request({"prompt": "x", "webhook": "https://example.com/hook"}))
    assert service.webhook_deliverer() is None
    service.close()
    monkeypatch.setenv("DF_WEBHOOK_URLS", "https://example.com/a,https://example.com/b")
    with pytest.raises(ValueError, match="DF_WEBHOOK_URLS needs DF_WEBHOOK_SECRET"):
        Settings()
    for bad in ("plain-text", "whsec_***not base64***", "whsec_" + base64.b64encode(b"short").decode()):
        monkeypatch.setenv("DF_WEBHOOK_SECRET", bad)
        with pytest.raises(ValueError, match="DF_WEBHOOK_SECRET") as caught:
            Settings()
        assert bad not in str(caught.value)


# -- the CLI -------------------------------------------------------------------------------------

def test_cli_generate_deliveries_and_redeliver(svc, receiver, hooks_env):
    from typer.testing import CliRunner

    from dreamforge.cli.main import app

    cli = CliRunner()
    out = cli.invoke(app, ["generate", "a cat", "--width", "64", "--height", "64", "--steps", "2",
                           "--webhook", receiver.url(), "--webhook-event", "running",
                           "--webhook-event", "succeeded", "--json"])
    assert out.exit_code == 0, out.output
    job_id = json.loads(out.stdout)["id"]
    Executor(svc, FakeRunner(), "worker:test").execute(job_id)
    listed = cli.invoke(app, ["webhooks", "deliveries", "--job", job_id, "--json"])
    assert listed.exit_code == 0, listed.output
    found = json.loads(listed.stdout)["deliveries"]
    assert sorted(d["event_type"] for d in found) == ["job.running", "job.succeeded"]
    assert "body" not in found[0] and "claim_token" not in found[0]
    table = cli.invoke(app, ["webhooks", "deliveries", "--job", job_id])
    assert table.exit_code == 0 and found[0]["id"] in table.stdout
    again = cli.invoke(app, ["webhooks", "redeliver", found[0]["id"]])
    assert again.exit_code == 0 and again.stdout.strip() == f"{found[0]['id']}\tpending"
    missing = cli.invoke(app, ["webhooks", "redeliver", "msg_nope"])
    assert missing.exit_code == 1 and "no webhook delivery" in missing.stderr
    bad = cli.invoke(app, ["generate", "a cat", "--webhook", "gopher://x"])
    assert bad.exit_code == 2 and "http:// or https://" in bad.stderr


# -- a worker killed mid-delivery ----------------------------------------------------------------

@pytest.mark.parametrize("df_env", ["sqlite", "postgres_redis"], indirect=True)
def test_a_worker_sigkilled_mid_delivery_still_delivers(hooks_env, start_worker, svc, caplog):
    """The worker runs the job and starts the delivery; the receiver holds the request; the
    worker is SIGKILLed. Its claim lapses and another deliverer sends it, with the same id."""
    receiver = Receiver()
    receiver.hold.add("/hook")
    receiver.start()
    try:
        worker = start_worker(env={"DF_WEBHOOK_TIMEOUT_S": "1"})
        job_id = svc.submit(parse_request({"prompt": "kill me", "width": 64, "height": 64, "steps": 2,
                                           "webhook": receiver.url()})).view.id
        assert receiver.arrived.wait(30), worker.log()
        first = receiver.got[0]["headers"]["webhook-id"]
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
        assert rows(svc, job_id)[0]["status"] == "pending"  # claimed, never finished
        receiver.hold.clear()
        receiver.release.set()
        caplog.set_level(logging.DEBUG)
        d = svc.webhook_deliverer()
        d.start()
        try:
            wait_until(lambda: rows(svc, job_id)[0]["status"] == "delivered", "the delivery after the kill",
                       timeout=30)
        finally:
            d.stop()
        assert [g["headers"]["webhook-id"] for g in receiver.got] == [first, first]
        assert receiver.got[-1]["verified"]
        secret_body = SECRET.removeprefix("whsec_")
        for text in (worker.log(), caplog.text):
            assert SECRET not in text and secret_body not in text
    finally:
        receiver.stop()


def test_the_secret_never_reaches_the_logs_or_env_inspect(svc, receiver, caplog, hooks_env):
    caplog.set_level(logging.DEBUG)
    receiver.answers = {"/hook": [500]}
    d = svc.webhook_deliverer()
    d.start()
    try:
        job_id = run(svc, webhook=receiver.url())
        wait_until(lambda: rows(svc, job_id)[0]["status"] == "delivered", "the delivery")
    finally:
        d.stop()
    assert "webhook" in caplog.text
    assert SECRET not in caplog.text and SECRET.removeprefix("whsec_") not in caplog.text
    from dreamforge.hostinfo import environment

    assert environment()["DF_WEBHOOK_SECRET"] == "***"
    with svc.job_store.read() as conn:
        stored = conn.execute(sa.select(webhook_deliveries)).mappings().all()
    assert all(SECRET not in str(dict(r)) for r in stored)
    assert os.environ["DF_WEBHOOK_SECRET"] == SECRET


def test_generate_wait_in_the_clis_own_process_announces_before_it_exits(hooks_env, receiver, monkeypatch):
    """No worker alive: the job runs in the CLI's process, whose deliverer sends what is due as
    the command ends (its next poll would be far too late)."""
    from typer.testing import CliRunner

    monkeypatch.setenv("DF_WEBHOOK_POLL_S", "60")

    from dreamforge.cli.main import app

    out = CliRunner().invoke(app, ["generate", "a quick fox", "--width", "64", "--height", "64", "--steps", "2",
                                   "--wait", "--json", "--webhook", receiver.url()])
    assert out.exit_code == 0, out.output
    assert receiver.types() == ["job.succeeded"]
    assert receiver.got[0]["payload"]["data"]["job"]["id"] == json.loads(out.stdout)["id"]


# -- hostile input, pure functions ----------------------------------------------------------------

@pytest.mark.parametrize("url, says", [
    ("", "non-empty"), ("http://exa mple.com/", "spaces"), ("http://example.com/\x1b[31m", "control"),
    ("https://example.com/" + "a" * 3000, "2048"), ("javascript:alert(1)", "http"), ("http:///path", "no host"),
    ("http://[::1", "parsed"), ("http://example.com:0/", "port is 0"), ("http://example.com:99999/", "parsed"),
    ("https://:pw@example.com/", "password"), ("file:///etc/passwd", "http")])
def test_hostile_webhook_urls_are_refused_with_a_reason(url, says):
    from dreamforge.webhooks.targets import check_url

    with pytest.raises(TargetRefused, match=says):
        check_url(url)


def test_numeric_and_short_forms_of_loopback_are_resolved_and_refused():
    for url in ("http://2130706433/", "http://127.1/", "http://0x7f.0.0.1/", "http://[0:0:0:0:0:ffff:7f00:1]/"):
        with pytest.raises(TargetRefused):
            check_target(url, allow_private=False)


def test_outcomes_and_waits():
    import random

    from dreamforge.webhooks.deliverer import classify, next_wait

    assert [classify(c).status for c in (200, 204, 299, 408, 429, 500, 503, 599, 301, 400, 401, 404, 410, 422)] == \
        ["delivered"] * 3 + ["retry"] * 5 + ["dead"] * 6
    rng = random.Random(1)
    waits = [next_wait([10.0, 100.0], n, rng) for n in (1, 2, 3)]
    assert 8 <= waits[0] <= 12 and 80 <= waits[1] <= 120 and waits[2] is None


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
@pytest.mark.parametrize("value, ok", [("5s,5m,2h,1d", [5, 300, 7200, 86400]), ("[1, 2.5]", [1, 2.5]),
                                       ("0.5", [0.5]), ("", None), ("5x", None), ("8d", None), ("-1s", None)])
def test_retry_schedule_setting(df_env, monkeypatch, value, ok):
    monkeypatch.setenv("DF_WEBHOOK_RETRY_SCHEDULE", value)
    if ok is None:
        with pytest.raises(ValueError):
            Settings()
    else:
        assert Settings().webhook_retry_schedule == ok
