"""`df jobs cancel | list | logs | watch` and Ctrl-C in `df generate --wait`, through the CLI:
in-process with CliRunner where the answer is all there is, as real processes where signals,
workers or following matter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from dreamforge.cli.jobs import parse_time
from dreamforge.cli.main import app
from dreamforge.schemas import parse_request
from dreamforge.service import JobService
from dreamforge.settings import Settings
from tests.conftest import df_command
from tests.polling import wait_status, wait_until
from tests.test_cli_output import HOSTILE, assert_inert

cli = CliRunner()
SLOW = {"DF_FAKE_STEP_DELAY_S": "0.1"}


def service() -> JobService:
    return JobService.from_settings(Settings())


def submit(svc: JobService, prompt: str = "a quiet harbour", steps: int = 2) -> str:
    return svc.submit(parse_request({"prompt": prompt, "width": 64, "height": 64, "steps": steps})).view.id


def df(*args: str):
    return cli.invoke(app, list(args))


def popen(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(df_command(*args), env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_cancel_queued_running_finished_and_twice(df_env, start_worker):
    """queued → canceled at once; running → canceled, the worker stores nothing and a watch of
    it ends with exit 1; cancelling again gives the same answer; a finished job exits 1 with
    job_not_cancelable; an unknown one exits 1 too."""
    svc = service()
    queued = submit(svc)
    first, again = df("jobs", "cancel", queued), df("jobs", "cancel", queued)
    assert first.exit_code == again.exit_code == 0, first.output
    assert first.stdout == again.stdout == f"{queued}\tcanceled\n"
    assert svc.get(queued).status.value == "canceled"

    start_worker(env=SLOW)
    running = submit(svc, steps=150)
    wait_status(svc, running, "running")
    watcher = popen(df_env, "jobs", "watch", running)
    shown = json.loads(df("jobs", "cancel", running, "--json").stdout)
    assert shown["id"] == running and shown["status"] == "canceled"
    code, out, err = finish(watcher)
    assert code == 1 and out == "", err
    assert f"job {running} canceled" in err and f"error: job {running} was canceled" in err
    assert df("jobs", "cancel", running).stdout == f"{running}\tcanceled\n"
    view = svc.get(running)
    assert view.status.value == "canceled" and view.artifacts == []
    assert view.steps[0].progress.current < 150  # it stopped midway

    done = submit(svc)
    wait_status(svc, done, "succeeded")
    refused = df("jobs", "cancel", done)
    assert refused.exit_code == 1 and "job_not_cancelable" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert svc.get(done).status.value == "succeeded"
    missing = df("jobs", "cancel", "4b0c1c4e-0000-4000-8000-000000000000")
    assert missing.exit_code == 1 and "no job with id" in missing.output


def listed(*args: str) -> dict:
    r = df("jobs", "list", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_list_filters_and_cursor(df_env):
    svc = service()
    ids = [submit(svc, f"job {i}") for i in range(5)]  # oldest first
    for job_id in ids[:2]:
        svc.cancel(job_id)
    newest_first = ids[::-1]
    assert [j["id"] for j in listed()["jobs"]] == newest_first and listed()["next_cursor"] is None
    assert [j["id"] for j in listed("--status", "canceled")["jobs"]] == ids[1::-1]
    both = listed("--status", "canceled", "--status", "queued")["jobs"]
    assert len(both) == 5 and listed("--status", "running")["jobs"] == []
    assert len(listed("--type", "generate")["jobs"]) == 5 and listed("--type", "upscale")["jobs"] == []

    middle = svc.get(ids[2]).created_at
    assert [j["id"] for j in listed("--created-before", middle.isoformat())["jobs"]] == ids[1::-1]
    assert [j["id"] for j in listed("--created-after", middle.isoformat())["jobs"]] == newest_first[:2]
    naive_utc = middle.replace(tzinfo=None).isoformat()  # no offset: UTC, as the API reads it
    assert len(listed("--created-after", naive_utc)["jobs"]) == 2
    assert len(listed("--created-after", "1h")["jobs"]) == 5 and listed("--created-before", "1h")["jobs"] == []

    page = listed("--limit", "2")
    assert [j["id"] for j in page["jobs"]] == newest_first[:2] and page["next_cursor"]
    rest = listed("--limit", "2", "--cursor", page["next_cursor"])
    assert [j["id"] for j in rest["jobs"]] == newest_first[2:4]
    everything = listed("--limit", "2", "--all")
    assert [j["id"] for j in everything["jobs"]] == newest_first and everything["next_cursor"] is None

    for args in (["--created-after", "yesterday"], ["--cursor", "not-a-cursor"], ["--type", "X;drop"]):
        r = df("jobs", "list", *args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    text = df("jobs", "list", "--limit", "2")
    assert text.exit_code == 0 and "more jobs: --cursor" in text.output


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_list_all_is_stable_while_jobs_are_inserted(df_env, monkeypatch):
    """--all follows keyset cursors: jobs created between its pages neither appear nor push a
    job onto two pages or off all of them."""
    svc = service()
    ids = [submit(svc, f"old {i}") for i in range(7)]
    page_jobs = JobService.page_jobs
    added = []

    def page_while_inserting(self, *args, **kwargs):
        page = page_jobs(self, *args, **kwargs)
        added.append(submit(self, "arrived meanwhile"))  # newer than every job listed so far
        return page

    monkeypatch.setattr(JobService, "page_jobs", page_while_inserting)
    got = listed("--all", "--limit", "2")
    assert [j["id"] for j in got["jobs"]] == ids[::-1] and got["next_cursor"] is None
    assert len(added) == 4


def test_parse_time_accepts_iso_and_ago():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_time("--x", "30m", now) == now - timedelta(minutes=30)
    assert parse_time("--x", "2d", now) == now - timedelta(days=2)
    assert parse_time("--x", "2026-01-01T10:00:00Z") == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert parse_time("--x", "2026-01-01T10:00:00+02:00") == datetime(2026, 1, 1, 8, tzinfo=UTC)
    assert parse_time("--x", "2026-01-01") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("--x", None) is None


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_logs_and_follow_show_outside_text_inert(df_env):
    """The job's log: its moves and its holder's lines, hostile text shown inert in text, kept
    exact in JSON; -f prints lines as they come and ends when the job does."""
    svc = service()
    job_id = submit(svc)
    follower = popen(df_env, "jobs", "logs", job_id, "-f", "--json")
    claim = svc.claim(job_id, "test-holder")
    assert claim is not None
    for text in HOSTILE:
        assert svc.job_log(claim.fence, "warning", f"hostile {text}")
    svc.job_log(claim.fence, "error", "[bold]b[/bold]")
    wait_until(lambda: len(svc.logs(job_id)) >= 2 + len(HOSTILE), "the log lines")
    svc.cancel(job_id)
    code, out, err = finish(follower)
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    messages = [x["message"] for x in lines]
    assert messages[0] == "status queued" and messages[-1] == "status canceled"
    assert [f"hostile {t}" for t in HOSTILE] == [m for m in messages if m.startswith("hostile")]
    assert {"id", "at", "level", "message"} == set(lines[0])

    page = json.loads(df("jobs", "logs", job_id, "--json").stdout)
    assert [x["message"] for x in page["lines"]] == messages and page["next_after"] == lines[-1]["id"]
    text = df("jobs", "logs", job_id)
    assert text.exit_code == 0
    assert len(text.stdout.splitlines()) == len(lines), "a newline in a message forges no line"
    assert_inert(text.stdout)
    assert "warning" in text.stdout and "status canceled" in text.stdout
    assert df("jobs", "logs", "nope").exit_code == 1


def wait_for_running(svc: JobService) -> str:
    def running() -> str | None:
        return next((v.id for v in svc.list_jobs() if v.status.value == "running"), None)

    return str(wait_until(running, "a running job"))


def interrupt(df_env: dict[str, str], *flags: str) -> tuple[str, int, str]:
    """Start `df generate --wait` on a slow job, SIGINT it once its job runs."""
    proc = popen({**df_env, **SLOW}, "generate", "slow", "--wait", "--width", "64", "--height", "64",
                 "--steps", "150", *flags)
    svc = service()
    try:
        job_id = wait_for_running(svc)
    except AssertionError:
        proc.kill()
        raise
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    return job_id, code, err


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_ctrl_c_in_process_hands_the_job_back_for_a_worker(df_env, start_worker):
    """No worker: the CLI runs the job itself. Ctrl-C must not leave it `running` under a dead
    holder: it goes back to the queue at once, and the next worker runs it."""
    job_id, code, err = interrupt(df_env)
    assert code == 130, err
    assert f"df jobs cancel {job_id}" in err and "back in the queue" in err and "Traceback" not in err
    svc = service()
    assert svc.get(job_id).status.value == "queued"
    start_worker(env={"DF_FAKE_STEP_DELAY_S": "0"})
    wait_status(svc, job_id, "succeeded")


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_ctrl_c_in_process_with_cancel_on_interrupt(df_env):
    job_id, code, err = interrupt(df_env, "--cancel-on-interrupt")
    assert code == 130 and f"job {job_id} canceled" in err, err
    view = service().get(job_id)
    assert view.status.value == "canceled" and view.artifacts == []


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_ctrl_c_with_a_worker_leaves_or_cancels_the_job(df_env, start_worker):
    start_worker(env=SLOW)
    svc = service()
    job_id, code, err = interrupt(df_env)
    assert code == 130 and f"To cancel it: df jobs cancel {job_id}" in err, err
    assert svc.get(job_id).status.value == "running"  # still the worker's
    assert df("jobs", "cancel", job_id).exit_code == 0
    second, code, err = interrupt(df_env, "--cancel-on-interrupt")
    assert code == 130 and f"job {second} canceled" in err, err
    assert svc.get(second).status.value == "canceled"


def test_generate_wait_ends_on_cancel(df_env):
    """A job canceled while `df generate --wait` runs it here: exit 1, says so, stores nothing."""
    proc = popen({**df_env, **SLOW}, "generate", "slow", "--wait", "--width", "64", "--height", "64",
                 "--steps", "150")
    svc = service()
    job_id = wait_for_running(svc)
    assert df("jobs", "cancel", job_id).exit_code == 0
    code, out, err = finish(proc)
    assert code == 1 and f"job {job_id} was canceled" in err and out == "", err
    assert svc.get(job_id).artifacts == []
