"""``df artifacts``: download a job's images; retry uploads that failed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dreamforge.cli.common import EXIT_FAILED, console, fail, handle_errors, load_settings, print_json
from dreamforge.service import JobService

app = typer.Typer(no_args_is_help=True, help="Download artifacts; retry failed uploads.")


@app.command("get")
@handle_errors
def get(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Folder to write into.")] = Path("."),
) -> None:
    """Download a job's images through the artifact store (local folder or S3)."""
    if output_dir.exists() and not output_dir.is_dir():
        fail(f"{output_dir} is not a folder", 2)
    service = JobService.from_settings(load_settings())
    view = service.get(job_id)
    if not view.artifacts:
        fail(f"job {job_id} has no artifacts (status {view.status.value})", EXIT_FAILED)
    output_dir.mkdir(parents=True, exist_ok=True)
    for art in view.artifacts:
        target = output_dir / Path(art.s3_key).name
        target.write_bytes(service.artifact_bytes(art.s3_key))
        typer.echo(str(target))


@app.command("retry")
@handle_errors
def retry(
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Upload the images that a failed upload left in the local spool, and finish their jobs."""
    results = JobService.from_settings(load_settings()).retry_spooled()
    if as_json:
        print_json(results)
    elif not results:
        console.print("nothing spooled", highlight=False)
    for r in results if not as_json else []:
        state = "uploaded" if r["uploaded"] else f"still failing: {r['error']}"
        console.print(f"{r['job_id']}  {r['key']}  {state}", highlight=False, soft_wrap=True)
    if any(not r["uploaded"] for r in results):
        raise typer.Exit(EXIT_FAILED)
