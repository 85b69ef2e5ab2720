"""``df``: submit, follow and run image-generation jobs."""


import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dreamforge.cli import artifacts, common, db, host, jobs, models, render, uploads, webhooks
from dreamforge.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    TYPER_OPTIONS,
    console,
    fail,
    handle_errors,
    load_settings,
    note,
    open_local_service,
    open_service,
    print_json,
    require_local,
    setup_logging,
)
from dreamforge.status import JobStatus
from dreamforge.text import inert

if TYPE_CHECKING:
    from dreamforge.client import RemoteService
    from dreamforge.schemas import JobView
    from dreamforge.service import JobService
    from dreamforge.settings import Settings
    from dreamforge.worker import InlineWorker

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="DreamForge: Stable Diffusion XL jobs on your own GPUs.", **TYPER_OPTIONS)
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")
app.add_typer(db.app, name="db")
app.add_typer(artifacts.app, name="artifacts")
app.add_typer(host.env_app, name="env")
app.add_typer(host.gpu_app, name="gpu")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(uploads.app, name="uploads")


@app.callback()
def options(
    api: Annotated[str | None, typer.Option(
        "--api", metavar="URL", help="Be a client of the `df serve` at this URL (DF_API_URL; its token: "
                                     "DF_API_TOKEN) instead of opening a job store here.")] = None,
) -> None:
    common.api_option = api


class LocalRun:
    """Runs the job in this process when no worker is live: at once, or when the last live
    worker stops answering while the job still waits in the queue."""

    def __init__(self, service: "JobService | RemoteService", settings: "Settings", job_id: str):
        self.service, self.settings, self.job_id = service, settings, job_id
        self.inline: InlineWorker | None = None
        # A server's jobs run on its own workers: with none live, say so and go on watching.
        self.remote_notice = jobs.no_worker_notice()

    def start(self, reason: str) -> None:
        from dreamforge.runners import make_runner
        from dreamforge.service import JobService
        from dreamforge.worker import InlineWorker

        if not isinstance(self.service, JobService):
            self.remote_notice(self.service.get(self.job_id))
            return
        setup_logging(logging.WARNING)
        note(f"{reason}: running job {self.job_id} in this process.")
        self.inline = InlineWorker(self.service, make_runner(self.settings), self.job_id)
        self.inline.start()

    def check(self) -> None:
        if self.inline is not None:
            self.inline.check()

    def on_no_worker(self, view: "JobView") -> None:
        if self.inline is not None:
            return  # ours: the in-process run does not register as a worker
        if view.status is JobStatus.queued:
            self.start("No live worker any more")
        else:
            fail(f"job {view.id} is {view.status.value}, but its worker stopped answering and no worker "
                 "is live: start `df worker` (the job goes back to the queue), then "
                 f"`df jobs watch {view.id}`", EXIT_FAILED)

    def join(self) -> None:
        if self.inline is not None:
            self.inline.join()

    def interrupted(self, cancel: bool) -> None:
        """Ctrl-C while watching: cancel the job, or leave it to the workers. Either way nothing
        is left `running` under this process once it exits."""
        job_id = self.job_id
        if cancel:
            from dreamforge.errors import JobStateError

            try:
                view = self.service.cancel(job_id)
            except JobStateError:
                note(f"Interrupted: job {job_id} had already ended "
                     f"({self.service.get(job_id).status.value}); nothing to cancel.")
                return
            # Our in-process run, if any, stops at its next step; wait for it, so that it stores
            # nothing after this command has said the job is canceled.
            self.join()
            note(f"Interrupted: job {view.id} canceled.")
            return
        if self.inline is None:
            note(f"Interrupted: stopped watching; job {job_id} goes on with its worker. "
                 f"To cancel it: df jobs cancel {job_id}")
            return
        # The job runs in this process, which is about to end: hand it back to the queue at once
        # rather than leave it `running` under a holder that no longer exists (a worker's reaper
        # would give it back too, but only after the heartbeat timeout).
        self.inline.interrupt("interrupted: the df generate --wait that ran it stopped")
        note(f"Interrupted: job {job_id} is back in the queue; a worker (`df worker`) will run it. "
             f"To cancel it: df jobs cancel {job_id}")


def _lora_option(text: str) -> dict[str, object]:
    """``--lora NAME[:WEIGHT]`` as the request's ``{"name", "weight"}``."""
    from dreamforge.errors import InvalidRequest

    name, _, weight = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return {"name": name, "weight": float(weight) if weight else 1.0}
    except ValueError:
        raise InvalidRequest(f"--lora takes NAME or NAME:WEIGHT, not {inert(text, 80)!r}") from None


def _input_ref(service: "JobService | RemoteService", given: str, flag: str) -> object:
    """A file (uploaded now through the service, which answers with its id), JOB_ID[:ITEM], or
    an upload's id (df uploads add)."""
    import re

    from dreamforge.errors import InvalidRequest
    from dreamforge.status import is_job_id

    if re.fullmatch(r"[0-9a-f]{64}", given) and not Path(given).exists():
        return given
    job_id, _, item = given.partition(":")
    if is_job_id(job_id) and not Path(given).exists():
        if item and not item.isdigit():
            raise InvalidRequest(f"{flag} takes PATH or JOB_ID[:ITEM], not {inert(given, 80)!r}")
        return {"job_id": job_id, "item": int(item or 0)}
    path = Path(given)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"{flag} {inert(given, 200)}: {exc.strerror or exc}") from None
    return service.upload_image(data).sha256


@app.command()
@handle_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    negative_prompt: Annotated[str | None, typer.Option(help="What to keep out.")] = None,
    width: Annotated[int | None, typer.Option(
        help="64–2048, a multiple of 8 (default 1024; with --init-image, the image's).")] = None,
    height: Annotated[int | None, typer.Option(
        help="64–2048, a multiple of 8 (default 1024; with --init-image, the image's).")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps, 1–150.")] = 30,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance, 0–30.")] = 7.0,
    seed: Annotated[int | None, typer.Option(help="0–4294967295; drawn at random if unset.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="png, jpeg or webp.")] = "png",
    count: Annotated[int, typer.Option("-n", "--count",
                                       help="Images, 1–8; item i is seeded seed + i.")] = 1,
    model: Annotated[str | None, typer.Option(
        help="A registered model (df models list); the default model if unset.")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="euler, euler_a, dpmpp_2m, dpmpp_2m_karras, dpmpp_sde_karras, ddim or unipc; "
             "unset: the checkpoint's own.")] = None,
    init_image: Annotated[str | None, typer.Option(
        "--init-image", metavar="PATH|JOB_ID[:ITEM]",
        help="Start from this image (img2img): a file, uploaded first, an earlier job's image, or an "
             "upload's id.")] = None,
    mask_image: Annotated[str | None, typer.Option(
        "--mask-image", metavar="PATH|JOB_ID[:ITEM]",
        help="With --init-image: repaint where this mask is white (inpaint).")] = None,
    strength: Annotated[float | None, typer.Option(
        help="With --init-image: 0–1, how far from the image to go (default 0.75; 1.0 inpainting).")] = None,
    lora: Annotated[list[str] | None, typer.Option(
        "--lora", metavar="NAME[:WEIGHT]", help="A registered LoRA at a weight (default 1); up to 4.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Copy the image here (implies --wait); with --count, NAME-0.png, "
                               "NAME-1.png, ...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job view as JSON.")] = False,
    cancel_on_interrupt: Annotated[bool, typer.Option(
        "--cancel-on-interrupt", help="With --wait: Ctrl-C cancels the job (else it goes on).")] = False,
    webhook: Annotated[str | None, typer.Option(
        help="An http(s) URL that receives the job's events, signed (DF_WEBHOOK_SECRET).")] = None,
    webhook_event: Annotated[list[str] | None, typer.Option(
        "--webhook-event", help="running, progress, succeeded, failed or canceled; repeat for several "
                                "(default: the last three).")] = None,
) -> None:
    """Submit an image job (--count images). With --wait, follow it; with no live worker, run it here.
    Ctrl-C stops watching (exit 130) and leaves the job to the workers, or cancels it with
    --cancel-on-interrupt."""
    from dreamforge.schemas import parse_request

    fields: dict[str, object] = {
              "prompt": prompt, "negative_prompt": negative_prompt, "steps": steps, "guidance": guidance,
              "seed": seed, "format": fmt, "count": count, "scheduler": scheduler, "model": model,
              **{name: value for name, value in (("width", width), ("height", height), ("strength", strength),
                                                 ("webhook", webhook)) if value is not None},
              **({"webhook_events": webhook_event} if webhook_event else {}),
              **({"loras": [_lora_option(text) for text in lora]} if lora else {})}
    if mask_image is not None and init_image is None:
        fail("--mask-image needs --init-image (the image to repaint)", EXIT_USAGE)
    if init_image is not None:
        fields["type"] = "inpaint" if mask_image is not None else "img2img"
    # Every flag checked before any upload (an upload id's shape standing in for the inputs).
    parse_request({**fields, **{name: "0" * 64 for name, given in (("init_image", init_image),
                                                                   ("mask_image", mask_image)) if given}})
    if output is not None and output.is_dir():
        fail(f"-o wants a file name, and {output} is a folder", EXIT_USAGE)
    settings = load_settings()
    service = open_service(settings)
    for name, given in (("init_image", init_image), ("mask_image", mask_image)):
        if given is not None:
            fields[name] = _input_ref(service, given, f"--{name.replace('_', '-')}")
    request = parse_request(fields)
    view = service.submit(request).view
    if not (wait or output):
        if as_json:
            print_json(view.model_dump(mode="json"))
        else:
            typer.echo(view.id)
        return
    local = LocalRun(service, settings, view.id)
    # From here on a Ctrl-C is answered the same way, wherever it lands (the job exists).
    try:
        if not service.live_workers():
            local.start("No live worker")
        elif not as_json:
            note(f"Job {view.id} queued; a worker will run it.")
        view = render.watch(service, view.id, quiet=as_json, check=local.check,
                            on_no_worker=local.on_no_worker)
    except KeyboardInterrupt:
        with _sigint_ignored():  # a second Ctrl-C must not cut the hand-back or the cancel short
            local.interrupted(cancel_on_interrupt)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    local.join()
    if as_json:
        print_json(view.model_dump(mode="json"))
    if view.status is not JobStatus.succeeded:
        jobs.end_of_watch(view)
        fail(f"job {view.id} ended {view.status.value}", EXIT_FAILED)
    written = _write_outputs(service, view, output) if output is not None else []
    if not as_json:
        for location in written or render.artifact_locations(view):
            typer.echo(location)


def _write_outputs(service: "JobService | RemoteService", view: "JobView", output: Path) -> list[str]:
    """-o FILE: the image there; for a batch, each item beside it as FILE-<item>."""
    output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for art in view.artifacts:
        target = output if len(view.artifacts) == 1 else \
            output.with_name(f"{output.stem}-{art.item_index}{output.suffix}")
        target.write_bytes(service.artifact_bytes(art.s3_key))
        written.append(str(target))
    return written


@app.command()
@handle_errors
def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64,
                                             help="Jobs at once; keep 1 per GPU.")] = 1,
    metrics_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Serve Prometheus metrics on this port (DF_METRICS_PORT; default "
                               "off), bound to DF_METRICS_HOST (default loopback).")] = None,
) -> None:
    """Run a worker (Huey's consumer). SIGTERM drains gracefully; SIGINT stops now."""
    from dreamforge.runners import make_runner
    from dreamforge.worker import run_worker

    settings = load_settings()
    setup_logging()
    port = metrics_port or settings.metrics_port
    exporter = None
    if port:
        from dreamforge import metrics

        host = settings.metrics_host
        try:
            exporter = metrics.serve(port, host)
        except OSError as exc:
            fail(f"can't serve metrics on {host}:{port}: {exc.strerror or exc}", EXIT_USAGE)
        logging.getLogger("dreamforge.worker").info("metrics on http://%s:%d/metrics", host, port)
    try:
        run_worker(open_local_service("df worker", settings), make_runner(settings), concurrency)
    finally:
        if exporter is not None:
            exporter.shutdown()


@app.command()
@handle_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Job counts by status, queue depth and live workers."""
    from rich.text import Text

    info = open_service().status()
    if as_json:
        print_json(info)
        return
    counts = "  ".join(f"{k} {v}" for k, v in info["jobs"].items())
    console.print(Text(f"jobs:        {counts}"))
    console.print(Text(f"queue depth: {info['queue_depth']}"))
    console.print(Text(f"workers:     {len(info['workers'])} live"))
    for w in info["workers"]:
        console.print(Text(f"  {inert(w['id'])}  last heartbeat {inert(w['heartbeat_at'])}"))


@app.command()
@handle_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (DF_API_HOST, default loopback).")] = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Port (DF_API_PORT, default 8001).")] = None,
    worker: Annotated[bool | None, typer.Option(
        "--worker/--no-worker",
        help="Also run a worker in this process. Default: on for the embedded SQLite queue, "
             "off when the queue is Redis (run `df worker` on the GPU hosts).")] = None,
) -> None:
    """Serve the v1 HTTP API."""
    import uvicorn

    from dreamforge.server.app import create_app

    settings = load_settings()
    require_local("df serve", settings)
    setup_logging()
    embedded = settings.queue_url.startswith("sqlite") if worker is None else worker
    app_ = create_app(settings, embedded_worker=embedded)
    uvicorn.run(app_, host=host or settings.api_host, port=port or settings.api_port,
                # Requests in flight finish within ms; open event streams would hold a stop for the
                # whole grace, so they are cut after it and their clients resume with Last-Event-ID.
                log_level="info", access_log=True, timeout_graceful_shutdown=5)


SPEC_IN_REPO = Path("docs/openapi/openapi.v1.json")


def _spec_path() -> Path | None:
    """The committed document: under the working folder, else under the checkout this package
    was imported from (an editable install). None outside a checkout."""
    here = Path.cwd() / SPEC_IN_REPO
    checkout = Path(__file__).resolve().parents[2] / SPEC_IN_REPO
    for candidate in (here, checkout):
        if candidate.parent.is_dir():
            return candidate
    return None


@app.command()
@handle_errors
def openapi(
    check: Annotated[bool, typer.Option("--check", help="Fail when the committed file is stale.")] = False,
    path: Annotated[Path | None, typer.Option(
        help="Where the document lives. Default: docs/openapi/openapi.v1.json of this checkout.")] = None,
) -> None:
    """Write the OpenAPI document generated from the code, or check the committed one."""
    from dreamforge.server.openapi import render_spec

    target = path or _spec_path()
    if target is None:
        fail(f"{SPEC_IN_REPO} not found: run this in a DreamForge checkout, or pass --path", EXIT_USAGE)
    spec = render_spec()
    if check:
        if not target.is_file():
            fail(f"{target} not found: run `df openapi` in the checkout, or pass --path", EXIT_FAILED)
        if target.read_text() != spec:
            fail(f"{target} is stale: run `df openapi` and commit it", EXIT_FAILED)
        typer.echo(f"{target} is up to date")
        return
    if not target.parent.is_dir():
        fail(f"folder {target.parent} does not exist", EXIT_USAGE)
    target.write_text(spec)
    typer.echo(f"wrote {target}")


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to hold off
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
