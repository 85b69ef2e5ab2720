"""``df jobs``: list, show and watch jobs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dreamforge.cli import render
from dreamforge.cli.common import EXIT_FAILED, fail, handle_errors, load_settings, print_json
from dreamforge.schemas import JobStatus
from dreamforge.service import JobService

app = typer.Typer(no_args_is_help=True, help="List, show and follow jobs.")


@app.command("list")
@handle_errors
def list_jobs(
    status: Annotated[Optional[JobStatus], typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print job views as JSON.")] = False,
) -> None:
    """A table of recent jobs."""
    service = JobService.from_settings(load_settings())
    views = service.list_jobs(status.value if status else None, limit)
    if as_json:
        print_json([v.model_dump(mode="json") for v in views])
    else:
        render.job_table(views)


@app.command("show")
@handle_errors
def show(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job view as JSON.")] = False,
) -> None:
    """One job: params, steps, progress, artifacts and error."""
    view = JobService.from_settings(load_settings()).get(job_id)
    if as_json:
        print_json(view.model_dump(mode="json"))
    else:
        render.job_details(view)


@app.command("watch")
@handle_errors
def watch(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the final job view as JSON.")] = False,
) -> None:
    """Follow a job until it ends; exit 1 if it failed."""
    service = JobService.from_settings(load_settings())
    view = render.watch(service, job_id, quiet=as_json)
    if as_json:
        print_json(view.model_dump(mode="json"))
    elif view.status is JobStatus.succeeded:
        typer.echo(render.artifact_location(view))
    if view.status is JobStatus.failed:
        fail(f"job {view.id} failed: {view.error.code}: {view.error.message}" if view.error
             else f"job {view.id} failed", EXIT_FAILED)
