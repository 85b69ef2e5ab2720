"""``df``: submit, follow and run image-generation jobs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from dreamforge.cli import artifacts, host, jobs, render
from dreamforge.cli.common import (EXIT_FAILED, EXIT_USAGE, console, err_console, fail,
                                   handle_errors, load_settings, print_json, setup_logging)
from dreamforge.schemas import JobStatus, parse_request
from dreamforge.service import JobService

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="DreamForge: Stable Diffusion XL jobs on your own GPUs.")
app.add_typer(jobs.app, name="jobs")
app.add_typer(artifacts.app, name="artifacts")
app.add_typer(host.env_app, name="env")
app.add_typer(host.gpu_app, name="gpu")


@app.command()
@handle_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    negative_prompt: Annotated[Optional[str], typer.Option(help="What to keep out.")] = None,
    width: Annotated[int, typer.Option(help="64–2048, a multiple of 8.")] = 1024,
    height: Annotated[int, typer.Option(help="64–2048, a multiple of 8.")] = 1024,
    steps: Annotated[int, typer.Option(help="Denoising steps, 1–150.")] = 30,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance, 0–30.")] = 7.0,
    seed: Annotated[Optional[int], typer.Option(help="0–4294967295; drawn at random if unset.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="png, jpeg or webp.")] = "png",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output",
                                                   help="Copy the image here (implies --wait).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job view as JSON.")] = False,
) -> None:
    """Submit one image job. With --wait, follow it; with no live worker, run it here."""
    request = parse_request({"prompt": prompt, "negative_prompt": negative_prompt, "width": width,
                             "height": height, "steps": steps, "guidance": guidance, "seed": seed,
                             "format": fmt})
    if output is not None and output.is_dir():
        fail(f"-o wants a file name, and {output} is a folder", EXIT_USAGE)
    settings = load_settings()
    service = JobService.from_settings(settings)
    view = service.submit(request).view
    if not (wait or output):
        if as_json:
            print_json(view.model_dump(mode="json"))
        else:
            typer.echo(view.id)
        return
    inline = None
    if not service.live_workers():
        from dreamforge.runners import make_runner
        from dreamforge.worker import InlineWorker

        setup_logging(logging.WARNING)
        err_console.print(f"No live worker: running job {view.id} in this process.", highlight=False)
        inline = InlineWorker(service, make_runner(settings), view.id)
        inline.start()
    elif not as_json:
        err_console.print(f"Job {view.id} queued; a worker will run it.", highlight=False)
    view = render.watch(service, view.id, quiet=as_json, check=inline.check if inline else None)
    if inline is not None:
        inline.join()
    if as_json:
        print_json(view.model_dump(mode="json"))
    if view.status is not JobStatus.succeeded:
        message = f"{view.error.code}: {view.error.message}" if view.error else view.status.value
        fail(f"job {view.id} failed: {message}", EXIT_FAILED)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(service.artifact_bytes(view.artifacts[0].s3_key))
    if not as_json:
        typer.echo(str(output) if output is not None else render.artifact_location(view))


@app.command()
@handle_errors
def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64,
                                             help="Jobs at once; keep 1 per GPU.")] = 1,
) -> None:
    """Run a worker (Huey's consumer). SIGTERM drains gracefully; SIGINT stops now."""
    from dreamforge.runners import make_runner
    from dreamforge.worker import run_worker

    settings = load_settings()
    setup_logging()
    service = JobService.from_settings(settings)
    run_worker(service, make_runner(settings), concurrency)


@app.command()
@handle_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Job counts by status, queue depth and live workers."""
    info = JobService.from_settings(load_settings()).status()
    if as_json:
        print_json(info)
        return
    counts = "  ".join(f"{k} {v}" for k, v in info["jobs"].items())
    console.print(f"jobs:        {counts}", highlight=False)
    console.print(f"queue depth: {info['queue_depth']}", highlight=False)
    console.print(f"workers:     {len(info['workers'])} live", highlight=False)
    for w in info["workers"]:
        console.print(f"  {w['id']}  last heartbeat {w['heartbeat_at']}", highlight=False)


@app.command()
@handle_errors
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (DF_API_HOST, default loopback).")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="Port (DF_API_PORT, default 8001).")] = None,
    worker: Annotated[Optional[bool], typer.Option(
        "--worker/--no-worker",
        help="Also run a worker in this process. Default: on for the embedded SQLite queue, "
             "off when the queue is Redis (run `df worker` on the GPU hosts).")] = None,
) -> None:
    """Serve the v1 HTTP API."""
    import uvicorn

    from dreamforge.server.app import create_app

    settings = load_settings()
    setup_logging()
    embedded = settings.queue_url.startswith("sqlite") if worker is None else worker
    app_ = create_app(settings, embedded_worker=embedded)
    uvicorn.run(app_, host=host or settings.api_host, port=port or settings.api_port,
                log_level="info", access_log=True, timeout_graceful_shutdown=30)


@app.command()
def openapi(
    check: Annotated[bool, typer.Option("--check", help="Fail when the committed file is stale.")] = False,
    path: Annotated[Path, typer.Option(help="Where the document lives.")] = Path("docs/openapi/openapi.v1.json"),
) -> None:
    """Write the OpenAPI document generated from the code, or check the committed one."""
    from dreamforge.server.openapi import render_spec

    spec = render_spec()
    if check:
        current = path.read_text() if path.exists() else ""
        if current != spec:
            fail(f"{path} is stale: run `df openapi` and commit it", EXIT_FAILED)
        typer.echo(f"{path} is up to date")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec)
    typer.echo(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
