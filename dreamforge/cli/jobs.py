"""``df jobs``: list, show and watch jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from dreamforge.cli import render
from dreamforge.cli.common import (
    EXIT_FAILED,
    TYPER_OPTIONS,
    fail,
    handle_errors,
    note,
    open_service,
    print_json,
)
from dreamforge.status import JobStatus

if TYPE_CHECKING:
    from dreamforge.schemas import JobView

app = typer.Typer(help="List, show and follow jobs.", **TYPER_OPTIONS)


@app.command("list")
@handle_errors
def list_jobs(
    status: Annotated[JobStatus | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option(
        "--json", help='Print {"jobs": [...]}, as GET /v1/jobs does.')] = False,
) -> None:
    """A table of recent jobs."""
    views = open_service().list_jobs(status.value if status else None, limit)
    if as_json:
        print_json({"jobs": [v.model_dump(mode="json") for v in views]})
    else:
        render.job_table(views)


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


def no_worker_notice() -> Callable[[JobView], None]:
    """Say, once, that nothing will run the job."""
    said = False

    def notice(view: JobView) -> None:
        nonlocal said
        if not said:
            note(f"no worker is running: job {view.id} stays {view.status.value} until one starts "
                 "(`df worker`)")
            said = True

    return notice


@app.command("watch")
@handle_errors
def watch(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the final job view as JSON.")] = False,
) -> None:
    """Follow a job until it ends; exit 1 if it failed. Says so when no worker is running."""
    service = open_service()
    view = render.watch(service, job_id, quiet=as_json, on_no_worker=no_worker_notice())
    if as_json:
        print_json(view.model_dump(mode="json"))
    elif view.status is JobStatus.succeeded:
        typer.echo(render.artifact_location(view))
    if view.status is JobStatus.failed:
        fail(f"job {view.id} failed: {view.error.code}: {view.error.message}" if view.error
             else f"job {view.id} failed", EXIT_FAILED)
