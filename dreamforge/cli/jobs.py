"""``df jobs``: list, show, follow, cancel jobs and read their logs."""


import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dreamforge.cli import render
from dreamforge.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    TYPER_OPTIONS,
    console,
    fail,
    handle_errors,
    note,
    open_local_service,
    open_service,
    print_json,
)
from dreamforge.status import JOB_TYPE_PATTERN, JobStatus

if TYPE_CHECKING:
    from dreamforge.schemas import JobView

app = typer.Typer(help="List, show, follow and cancel jobs; read their logs.", **TYPER_OPTIONS)

RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# The job types GET /v1/jobs accepts in ?type=.
TYPE_PATTERN = re.compile(JOB_TYPE_PATTERN)


def parse_time(option: str, value: str | None, now: datetime | None = None) -> datetime | None:
    """ISO 8601 (without an offset: UTC, the store's zone, as the API reads it), or a time ago:
    ``90s``, ``30m``, ``1h``, ``2d``, ``1w``."""
    from dreamforge.errors import InvalidRequest

    if value is None:
        return None
    text = value.strip()
    if m := RELATIVE.match(text):
        return (now or datetime.now(UTC)) - timedelta(**{UNITS[m[2]]: int(m[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{option} wants an ISO 8601 time (2026-01-31T12:00:00Z) or a time ago "
                             f"(30m, 1h, 2d), not {value[:60]!r}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _check_type(job_type: str | None) -> None:
    from dreamforge.errors import InvalidRequest

    if job_type is not None and not TYPE_PATTERN.match(job_type):
        raise InvalidRequest(f"--type must be a job type such as generate, not {job_type[:60]!r}")


@app.command("list")
@handle_errors
def list_jobs(
    status: Annotated[list[JobStatus] | None, typer.Option(
        help="Only jobs in this status; repeat for several.")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Only jobs of this type (generate).")] = None,
    created_after: Annotated[str | None, typer.Option(
        help="Created after this time: ISO 8601 (UTC unless an offset is given) or ago (30m, 1h, 2d).")] = None,
    created_before: Annotated[str | None, typer.Option(
        help="Created before this time, as --created-after.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000,
                                       help="At most this many, newest first (per page with --all).")] = 20,
    code: Annotated[str | None, typer.Option("--code", help="Only jobs that failed with this error code.")] = None,
    cursor: Annotated[str | None, typer.Option(help="Start after this page: a next_cursor given before.")] = None,
    follow_all: Annotated[bool, typer.Option("--all", help="Every page, to the end.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help='Print {"jobs": [...], "next_cursor": ...}, as GET /v1/jobs does.')] = False,
) -> None:
    """Recent jobs, newest first, with the filters of GET /v1/jobs."""
    after = parse_time("--created-after", created_after)
    before = parse_time("--created-before", created_before)
    _check_type(job_type)
    service = open_service()
    statuses = [s.value for s in status] if status else None
    views: list[JobView] = []
    while True:
        # Keyset pages: jobs created while this runs are newer than the first page, so they
        # neither appear nor shift the pages after it.
        page = service.page_jobs(statuses, job_type, created_after=after, created_before=before,
                                 error_code=code, cursor=cursor, limit=limit)
        views.extend(page.jobs)
        cursor = page.next_cursor
        if not follow_all or cursor is None:
            break
    if as_json:
        print_json({"jobs": [v.model_dump(mode="json") for v in views], "next_cursor": cursor})
        return
    render.job_table(views)
    if cursor is not None:
        note(f"more jobs: --cursor {cursor} (or --all)")


@app.command("show")
@handle_errors
def show(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job view as JSON.")] = False,
) -> None:
    """One job: params, steps, progress, artifacts and error."""
    view = open_service().get(job_id)
    if as_json:
        print_json(view.model_dump(mode="json"))
    else:
        render.job_details(view)


@app.command("cancel")
@handle_errors
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job view as JSON.")] = False,
) -> None:
    """Cancel a queued or running job (a running one stops at its next step and stores nothing).
    Cancelling it again gives the same answer; a job that succeeded or failed exits 1
    (job_not_cancelable)."""
    view = open_service().cancel(job_id)
    if as_json:
        print_json(view.model_dump(mode="json"))
    else:
        render.line(view.id, view.status.value)


@app.command("retry")
@handle_errors
def retry(
    job_id: Annotated[str | None, typer.Argument(help="The failed or canceled job to run again.")] = None,
    code: Annotated[str | None, typer.Option("--code", help="Retry every failed job with this error code.")] = None,
    since: Annotated[str | None, typer.Option(
        help="With --code: only jobs created since then (ISO 8601 or ago: 30m, 1h, 2d).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new jobs' views as JSON.")] = False,
) -> None:
    """Run a failed or canceled job again as a new job (same parameters and seed) that names the
    one it retries; or, with --code, every failed job with that error code."""
    from dreamforge.errors import InvalidRequest

    if (job_id is None) == (code is None):
        raise InvalidRequest("give a job id, or --code (with --since) to retry many")
    if since is not None and code is None:
        raise InvalidRequest("--since goes with --code")
    service = open_service()
    if job_id is not None:
        views = [service.retry(job_id)]
    else:
        views = service.retry_failed(error_code=code, since=parse_time("--since", since))
    if as_json:
        print_json({"jobs": [v.model_dump(mode="json") for v in views]})
        return
    for view in views:
        render.line(view.id, view.status.value, f"retries {view.retry_of}")
    if not views:
        note("no failed job matched")


@app.command("rerun")
@handle_errors
def rerun(
    job_id: Annotated[str, typer.Argument(help="The job whose recorded parameters to run again.")],
    new_seed: Annotated[bool, typer.Option("--new-seed", help="Draw a new seed instead of the recorded one.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new job's view as JSON.")] = False,
) -> None:
    """Submit any job's recorded parameters (seed and scheduler included) as a new job that names
    it: on the same machine and model, the same images byte for byte. Prints the new job's id."""
    view = open_service().rerun(job_id, new_seed=new_seed).view
    if as_json:
        print_json(view.model_dump(mode="json"))
    else:
        typer.echo(view.id)


@app.command("prune")
@handle_errors
def prune(
    older_than: Annotated[str, typer.Option(help="Jobs that ended longer ago than this: 30d, 12h, 1w.")],
    status: Annotated[list[JobStatus] | None, typer.Option(
        help="Only jobs in this status (succeeded, failed, canceled); repeat for several. Default: all three.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; remove nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Remove old finished jobs with their rows and their images (local folder or S3), in batches.
    Queued and running jobs are never removed, so this is safe while workers run."""
    from dreamforge.errors import InvalidRequest

    match = RELATIVE.match(older_than.strip())
    if not match:
        raise InvalidRequest(f"--older-than wants an age such as 30d, 12h or 1w, not {older_than[:60]!r}")
    age = timedelta(**{UNITS[match[2]]: int(match[1])}).total_seconds()
    statuses = [s.value for s in status] if status else None
    counts = open_local_service("df jobs prune").prune(age, statuses, dry_run=dry_run)
    if as_json:
        print_json({**counts, "dry_run": dry_run})
    else:
        verb = "would remove" if dry_run else "removed"
        render.line(f"{verb} {counts['jobs']} jobs and {counts['artifacts']} images")


def no_worker_notice() -> "Callable[[JobView], None]":
    """Say, once, that nothing will run the job."""
    said = False

    def notice(view: "JobView") -> None:
        nonlocal said
        if not said:
            note(f"no worker is running: job {view.id} stays {view.status.value} until one starts "
                 "(`df worker`)")
            said = True

    return notice


def end_of_watch(view: "JobView") -> None:
    """Exit 1 with one line when the watched job did not succeed."""
    if view.status is JobStatus.canceled:
        fail(f"job {view.id} was canceled", EXIT_FAILED)
    if view.status is JobStatus.failed:
        fail(f"job {view.id} failed: {view.error.code}: {view.error.message}" if view.error
             else f"job {view.id} failed", EXIT_FAILED)


@app.command("watch")
@handle_errors
def watch(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the final job view as JSON.")] = False,
) -> None:
    """Follow a job until it ends; exit 1 if it failed or was canceled. Says so when no worker is
    running. Ctrl-C stops watching (exit 130) and leaves the job as it is."""
    service = open_service()
    try:
        view = render.watch(service, job_id, quiet=as_json, on_no_worker=no_worker_notice())
    except KeyboardInterrupt:
        note(f"stopped watching; job {job_id} goes on (to cancel it: df jobs cancel {job_id})")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        print_json(view.model_dump(mode="json"))
    elif view.status is JobStatus.succeeded:
        for location in render.artifact_locations(view):
            typer.echo(location)
    end_of_watch(view)


def _log_json(entry: dict[str, Any]) -> dict[str, Any]:
    at = entry["at"]
    return {**entry, "at": at.isoformat() if hasattr(at, "isoformat") else at}


@app.command("logs")
@handle_errors
def logs(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing until the job ends.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help='Print {"lines": [...], "next_after": N}; with -f one JSON object a line.')] = False,
) -> None:
    """The job's own log: its moves, what its workers logged about it, its errors."""
    import json

    from dreamforge.service import log_line

    service = open_service()
    if not follow:
        lines = service.logs(job_id)
        if as_json:
            print_json({"lines": [_log_json(x) for x in lines],
                        "next_after": lines[-1]["id"] if lines else 0})
        for entry in lines if not as_json else []:
            render.log_line(entry)
        return
    ended = False
    batches = service.follow_events(job_id, poll_s=render.POLL_S)
    try:
        while not ended:
            for event in next(batches):
                if event["kind"] == "status":
                    ended = JobStatus(event["payload"].get("status", "queued")).is_terminal()
                shown = log_line(event)
                if shown is None:
                    continue
                if as_json:
                    console.file.write(json.dumps(_log_json(shown), default=str, ensure_ascii=True) + "\n")
                    console.file.flush()
                else:
                    render.log_line(shown)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        batches.close()
