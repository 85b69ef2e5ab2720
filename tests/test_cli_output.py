"""What the operator's terminal receives: outside text is inert (no escape sequence, no control
character, no rich markup interpreted, no forged rows), help and piped output read well, and the
CLI meets a newcomer's mistakes with one clear line."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import time
from datetime import UTC, datetime

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dreamforge.cli import common, render
from dreamforge.cli.main import app
from dreamforge.schemas import JobView, parse_request
from tests.conftest import df_command, run_df

HOSTILE = ["[/x]", "[bold]b[/bold]", "\x1b[31mred", "\x1b]8;;http://x\x07link\x1b]8;;\x07",
           "\x1b]0;pwn\x07", "\x9b31m", "tab\there", "new\nline", "cr\rx", "%s %(x)s", "\u202eevil",
           "\x00nul"]
PROMPT = "a cat " + "".join(HOSTILE)
SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colours, on a colour terminal
# rich's own cursor work while a progress bar is live: hide/show the cursor, return, erase line, up.
LIVE = re.compile(r"\x1b\[\?25[lh]|\r\x1b\[2K|\x1b\[\d*A")
BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
runner = CliRunner()


def assert_inert(out: str, *, tab_ok: bool = False) -> None:
    out = SGR.sub("", out)
    bad = BAD.findall(out.replace("\t", "") if tab_ok else out)
    assert not bad and "\t" in out if tab_ok else not bad, f"control characters reached the output: {bad!r}"
    assert "\x1b" not in out
    assert "[bold]b[/bold]" in out or "[bold]b[/bold]"[:10] in out, "markup must be shown, not applied"


def hostile_view(**over) -> JobView:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    data = {"id": "id-\x1b]0;pwn\x07[/x]", "type": "generate", "status": "failed",
            "params": {"prompt": PROMPT, "negative_prompt": "[red]no\x1b[2J", "width": 64, "height": 64,
                       "steps": 2, "guidance": 7.0, "seed": 1, "format": "png"},
            "steps": [{"name": "generate", "status": "failed", "progress": {"current": 1, "total": 2}}],
            "summary": {"count": 1, "completed": 0},
            "artifacts": [{"item_index": 0, "seed": 1, "width": 64, "height": 64, "format": "png",
                           "s3_key": "k/\x1b[1m[b]x.png", "size_bytes": 1, "sha256": "ab",
                           "url": "file:///x/\x1b]8;;http://evil\x07", "path": None}],
            "error": {"code": "runner_error", "message": "boom [/x] \x1b[31m\n%s fake line"},
            "correlation_id": "rid-%(x)s-[/x]", "created_at": now}
    return JobView.model_validate({**data, **over})


@pytest.fixture(params=["piped", "tty-colour", "tty-plain"])
def consoles(request, monkeypatch) -> tuple[io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    colour = "truecolor" if "colour" in request.param else None
    kw = {} if request.param == "piped" else {"force_terminal": True, "width": 200, "color_system": colour}
    monkeypatch.setattr(common, "console", Console(file=out, soft_wrap=True, **kw))
    monkeypatch.setattr(common, "err_console", Console(file=err, soft_wrap=True, **kw))
    return out, err


def test_renderers_show_outside_text_inert(consoles):
    out, err = consoles
    view = hostile_view()
    render.job_table([view, hostile_view(id="second")])
    render.job_details(view)
    with pytest.raises(Exception):  # noqa: B017 - fail() raises typer.Exit
        common.fail(f"job {view.id} failed: {view.error.message}")
    text = out.getvalue() + err.getvalue()
    assert_inert(text)
    assert "boom [/x]" in text and "rid-%(x)s-[/x]" in text and "[red]no" in text


def test_piped_list_is_one_line_per_job(consoles):
    out, _ = consoles
    if common.console.is_terminal:
        pytest.skip("the piped form only")
    render.job_table([hostile_view(id=f"job-{i}") for i in range(3)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.count("\t") == 5 for line in lines)


def test_watch_lines_and_progress_are_inert(consoles):
    _, err = consoles

    class OneView:  # a service that knows one finished job
        def get(self, job_id):
            return hostile_view()

        def live_workers(self):
            return []

    view = render.watch(OneView(), "x", on_no_worker=lambda v: None)  # type: ignore[arg-type]
    assert view.status.value == "failed"
    assert_inert(LIVE.sub("", err.getvalue()) + "[bold]b[/bold]")


def test_log_lines_and_a_canceled_watch_are_inert(consoles):
    from dreamforge.service import log_line

    out, err = consoles
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for i, text in enumerate([*HOSTILE, "[bold]b[/bold]"]):
        event = {"id": i, "at": at, "kind": "log", "payload": {"level": "warning", "message": text,
                                                                "seed\x1b[2J": "[/x]"}}
        render.log_line(log_line(event))
    render.log_line({"id": 99, "at": at, "level": "\x1b]0;pwn\x07[/x]", "message": PROMPT})
    lines = out.getvalue().splitlines()
    assert len(lines) == len(HOSTILE) + 2, "a newline or a carriage return in a message forges no line"
    assert_inert(out.getvalue())

    class Canceled:  # a job canceled while it ran, as its events tell it
        def get(self, job_id):
            return hostile_view(status="running" if not self.ended else "canceled")

        ended = False

        def events(self, job_id, after_id=0, limit=None):
            self.ended = True
            return [{"id": 1, "at": at, "kind": "status", "payload": {"status": "canceled"}}]

        def follow_events(self, job_id, after_id=0, poll_s=0.1):
            while True:
                yield self.events(job_id, after_id)

        def live_workers(self):
            return [{"id": "w"}]

    view = render.watch(Canceled(), "x")  # type: ignore[arg-type,unused-ignore]
    assert view.status.value == "canceled"
    shown = LIVE.sub("", err.getvalue())
    assert "canceled" in shown
    assert_inert(shown + "[bold]b[/bold]")


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_jobs_list_show_and_errors_through_the_cli(df_env):
    from dreamforge.service import JobService
    from dreamforge.settings import Settings

    svc = JobService.from_settings(Settings())
    ids = [svc.submit(parse_request({"prompt": PROMPT.replace("\x00", ""), "width": 64, "height": 64,
                                     "negative_prompt": "[/x]\x1b]0;t\x07"}),
                      correlation_id="%s[/x]").view.id for _ in range(2)]
    svc.close()
    listed = runner.invoke(app, ["jobs", "list"])
    assert listed.exit_code == 0, listed.output
    assert_inert(listed.output, tab_ok=True)
    assert len(listed.output.splitlines()) == 2, "a tab or newline in a prompt forges no rows"
    shown = runner.invoke(app, ["jobs", "show", ids[0]])
    assert shown.exit_code == 0, shown.output
    assert_inert(shown.output)
    as_json = json.loads(runner.invoke(app, ["jobs", "list", "--json"]).output)
    assert list(as_json) == ["jobs", "next_cursor"] and as_json["next_cursor"] is None
    assert {j["id"] for j in as_json["jobs"]} == set(ids)
    missing = runner.invoke(app, ["jobs", "show", "nope-\x1b]0;pwn\x07[/x]"])
    assert missing.exit_code == 1
    assert "\x1b" not in missing.output and "[/x]" in missing.output


@pytest.mark.parametrize("df_env", ["sqlite"], indirect=True)
def test_generate_wait_output_is_inert(df_env):
    r = run_df(df_env, "generate", "[/x]\x1b]0;pwn\x07 cat\nrow", "--wait", "--width", "64", "--height", "64",
               "--steps", "2", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert_inert(r.stdout + r.stderr + "[bold]b[/bold]")
    bad = run_df(df_env, "generate", "\x1b[31m", "--width", "65")
    assert bad.returncode == 2 and "\x1b" not in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_help_shows_flags_without_a_value_and_piped_lines_are_whole():
    r = runner.invoke(app, ["generate", "--help"])
    assert r.exit_code == 0 and "--wait" in r.output
    assert "<bool>" not in r.output


def test_openapi_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["openapi", "--check", "--path", str(tmp_path / "nope.json")])
    assert r.exit_code == 1 and "not found" in r.output and "stale" not in r.output
    r = runner.invoke(app, ["openapi", "--path", str(tmp_path / "no-such-folder" / "spec.json")])
    assert r.exit_code == 2 and not (tmp_path / "no-such-folder").exists()
    assert not (tmp_path / "docs").exists()


def test_unknown_backend_is_one_line_exit_2(tmp_path):
    r = run_df({"DF_DATA_DIR": str(tmp_path), "DF_DATABASE_URL": "bogus://x"}, "status")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "internal error" not in r.stderr


def test_watch_says_when_no_worker_runs(df_env, tmp_path):
    from dreamforge.service import JobService
    from dreamforge.settings import Settings

    svc = JobService.from_settings(Settings())
    job_id = svc.submit(parse_request({"prompt": "waits", "width": 64, "height": 64})).view.id
    svc.close()
    import os

    proc = subprocess.Popen(df_command("jobs", "watch", job_id), env={**os.environ, **df_env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "no worker" not in line:
            line = proc.stderr.readline()
        assert "no worker is running" in line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.kill()
        proc.wait()


def test_generate_wait_runs_the_job_when_the_only_worker_died(df_env, start_worker):
    """The worker was SIGKILLed inside its heartbeat window: the CLI first believes it, then
    notices no worker is live any more and runs the job itself."""
    worker = start_worker()
    worker.proc.kill()
    worker.proc.wait()
    started = time.monotonic()
    r = run_df(df_env, "generate", "orphan", "--wait", "--width", "64", "--height", "64", "--steps", "2",
               timeout=90)
    assert r.returncode == 0, r.stderr
    assert "a worker will run it" in r.stderr and "No live worker any more" in r.stderr
    assert time.monotonic() - started < 60
