"""Showing jobs: rich tables and progress on a terminal, plain tab-separated lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn
from rich.table import Table

from dreamforge.cli.common import console, err_console
from dreamforge.schemas import JobView
from dreamforge.service import JobService

POLL_S = 0.1


def _step_progress(view: JobView) -> tuple[int, int]:
    step = view.steps[0] if view.steps else None
    if step is None:
        return 0, 1
    return step.progress.current, max(step.progress.total, 1)


def watch(service: JobService, job_id: str, *, quiet: bool = False,
          check: Callable[[], None] | None = None) -> JobView:
    """Follow a job until it ends: a progress bar on a terminal, one line per status change
    otherwise (stderr either way, so stdout stays for results). ``check`` runs at every poll and
    may raise to stop watching (the CLI's own in-process run died)."""

    def poll() -> JobView:
        time.sleep(POLL_S)
        if check is not None:
            check()
        return service.get(job_id)

    view = service.get(job_id)
    if quiet:
        while not view.status.is_terminal():
            view = poll()
        return view
    if not err_console.is_terminal:
        last = None
        while True:
            if view.status != last:
                err_console.print(f"job {view.id} {view.status.value}", highlight=False)
                last = view.status
            if view.status.is_terminal():
                return view
            view = poll()
    columns = (TextColumn("[bold]{task.fields[status]:<9}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("steps"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        current, total = _step_progress(view)
        task = progress.add_task("generate", total=total, completed=current,
                                 status=view.status.value)
        while True:
            current, total = _step_progress(view)
            progress.update(task, total=total, completed=current, status=view.status.value)
            if view.status.is_terminal():
                return view
            view = poll()


def artifact_location(view: JobView) -> str | None:
    if not view.artifacts:
        return None
    art = view.artifacts[0]
    return art.path or art.url or art.s3_key


def job_table(views: list[JobView]) -> None:
    if not console.is_terminal:
        for v in views:
            current, total = _step_progress(v)
            console.print("\t".join([v.id, v.status.value, v.created_at.isoformat(),
                                     f"{v.params['width']}x{v.params['height']}",
                                     f"{current}/{total}", v.params["prompt"][:60]]),
                          highlight=False, soft_wrap=True)
        return
    table = Table("id", "status", "created", "size", "steps", "prompt")
    colours = {"succeeded": "green", "failed": "red", "running": "yellow", "queued": "blue"}
    for v in views:
        current, total = _step_progress(v)
        table.add_row(v.id, f"[{colours[v.status.value]}]{v.status.value}",
                      v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      f"{v.params['width']}x{v.params['height']}", f"{current}/{total}",
                      v.params["prompt"][:60])
    console.print(table)


def job_details(view: JobView) -> None:
    current, total = _step_progress(view)
    p = view.params
    lines = [
        ("id", view.id), ("status", view.status.value), ("prompt", p["prompt"]),
        ("negative prompt", p.get("negative_prompt") or "-"),
        ("size", f"{p['width']}x{p['height']}"), ("steps", f"{current}/{total}"),
        ("guidance", str(p["guidance"])), ("seed", str(p.get("seed") if p.get("seed") is not None else "-")),
        ("format", p["format"]), ("attempts", str(view.attempts)),
        ("request id", view.correlation_id or "-"),
        ("created", view.created_at.isoformat()),
        ("started", view.started_at.isoformat() if view.started_at else "-"),
        ("finished", view.finished_at.isoformat() if view.finished_at else "-"),
    ]
    for art in view.artifacts:
        lines.append(("artifact", art.path or art.url or art.s3_key))
        lines.append(("  key", art.s3_key))
        lines.append(("  sha256", f"{art.sha256} ({art.size_bytes} bytes)"))
    if view.error:
        lines.append(("error", f"{view.error.code}: {view.error.message}"))
    for name, value in lines:
        console.print(f"{name + ':':<17}{value}", highlight=False, soft_wrap=True)
