"""``df artifacts``: download a job's images; retry uploads that failed."""


from pathlib import Path
from typing import Annotated

import typer

from dreamforge.cli.common import (
    EXIT_FAILED,
    TYPER_OPTIONS,
    console,
    fail,
    handle_errors,
    open_local_service,
    open_service,
    print_json,
)
from dreamforge.cli.render import line
from dreamforge.text import inert

app = typer.Typer(help="Download artifacts; retry failed uploads.", **TYPER_OPTIONS)


@app.command("get")
@handle_errors
def get(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Folder to write into.")] = Path("."),
) -> None:
    """Download a job's images through the artifact store (local folder or S3)."""
    from rich.text import Text

    if output_dir.exists() and not output_dir.is_dir():
        fail(f"{output_dir} is not a folder", 2)
    service = open_service()
    view = service.get(job_id)
    if not view.artifacts:
        fail(f"job {job_id} has no artifacts (status {view.status.value})", EXIT_FAILED)
    output_dir.mkdir(parents=True, exist_ok=True)
    for art in view.artifacts:
        target = output_dir / Path(art.s3_key).name
        target.write_bytes(service.artifact_bytes(art.s3_key))
        console.print(Text(inert(target)))


@app.command("retry")
@handle_errors
def retry(
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Upload the images that a failed upload left in the local spool, and finish their jobs."""
    results = open_local_service("df artifacts retry").retry_spooled()
    if as_json:
        print_json(results)
    elif not results:
        console.print("nothing spooled")
    for r in results if not as_json else []:
        state = "uploaded" if r["uploaded"] else f"still failing: {r['error']}"
        line(r["job_id"], r["key"], state)
    if any(not r["uploaded"] for r in results):
        raise typer.Exit(EXIT_FAILED)
