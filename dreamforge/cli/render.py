"""Showing jobs: rich tables and progress on a terminal, plain tab-separated lines elsewhere.

Every value that came from outside (prompt, ids, error text, request id, keys, URLs) reaches the
terminal through ``cell``: control characters made visible escapes (``dreamforge.text.inert``),
and wrapped in rich ``Text``, so markup such as ``[/x]`` is shown, never interpreted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.text import Text

from dreamforge.cli import common
from dreamforge.text import inert

if TYPE_CHECKING:
    from dreamforge.schemas import JobView
    from dreamforge.service import JobService

POLL_S = 0.1
# How often a watch asks whether any worker is still alive.
LIVENESS_S = 1.0
COLOURS = {"succeeded": "green", "failed": "red", "running": "yellow", "queued": "blue", "canceled": "magenta"}


def cell(value: Any, limit: int | None = None, style: str = "") -> Text:
    """Outside text, inert: one line, no escapes, no markup."""
    return Text("-" if value is None else inert(value, limit), style=style)


def line(*fields: Any) -> None:
    """One tab-separated line on stdout (written as is: rich would expand the tabs); a field
    can't add a tab or a line of its own."""
    common.console.file.write("\t".join(inert(f) for f in fields) + "\n")


def _step_progress(view: JobView) -> tuple[int, int]:
    step = view.steps[0] if view.steps else None
    if step is None:
        return 0, 1
    return step.progress.current, max(step.progress.total, 1)


def watch(service: JobService, job_id: str, *, quiet: bool = False,
          check: Callable[[], None] | None = None,
          on_no_worker: Callable[[JobView], None] | None = None) -> JobView:
    """Follow a job until it ends: a progress bar on a terminal, one line per status change
    otherwise (stderr either way, so stdout stays for results). ``check`` runs at every poll and
    may raise to stop watching (the CLI's own in-process run died). ``on_no_worker`` is called
    when the job has not ended and no worker is live (about once a second while that holds)."""
    last_liveness = time.monotonic()

    def poll() -> JobView:
        nonlocal last_liveness
        time.sleep(POLL_S)
        if check is not None:
            check()
        view = service.get(job_id)
        if on_no_worker is not None and time.monotonic() - last_liveness >= LIVENESS_S:
            last_liveness = time.monotonic()
            if not view.status.is_terminal() and not service.live_workers():
                on_no_worker(view)
                view = service.get(job_id)
        return view

    view = service.get(job_id)
    if on_no_worker is not None and not view.status.is_terminal() and not service.live_workers():
        on_no_worker(view)
    err = common.err_console
    if quiet:
        while not view.status.is_terminal():
            view = poll()
        return view
    if not err.is_terminal:
        last = None
        while True:
            if view.status != last:
                err.print(Text.assemble("job ", cell(view.id), " ", view.status.value))
                last = view.status
            if view.status.is_terminal():
                return view
            view = poll()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.fields[status]:<9}", style="bold", markup=False), BarColumn(),
               MofNCompleteColumn(), TextColumn("steps", markup=False), TimeElapsedColumn(),
               TextColumn("ETA", markup=False), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as progress:
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
    return inert(art.path or art.url or art.s3_key)


def job_table(views: list[JobView]) -> None:
    console = common.console
    if not console.is_terminal:
        for v in views:
            current, total = _step_progress(v)
            line(v.id, v.status.value, v.created_at.isoformat(),
                 f"{v.params['width']}x{v.params['height']}", f"{current}/{total}",
                 inert(v.params["prompt"], 60))
        return
    from rich.table import Table

    table = Table("id", "status", "created", "size", "steps", "prompt")
    for v in views:
        current, total = _step_progress(v)
        table.add_row(cell(v.id), cell(v.status.value, style=COLOURS.get(v.status.value, "")),
                      v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      f"{v.params['width']}x{v.params['height']}", f"{current}/{total}",
                      cell(v.params["prompt"], 60))
    console.print(table)


def job_details(view: JobView) -> None:
    current, total = _step_progress(view)
    p = view.params
    seed = p.get("seed")
    lines: list[tuple[str, Any]] = [
        ("id", view.id), ("status", view.status.value), ("prompt", p["prompt"]),
        ("negative prompt", p.get("negative_prompt")),
        ("size", f"{p['width']}x{p['height']}"), ("steps", f"{current}/{total}"),
        ("guidance", p["guidance"]), ("seed", seed),
        ("format", p["format"]), ("attempts", view.attempts),
        ("request id", view.correlation_id),
        ("created", view.created_at.isoformat()),
        ("started", view.started_at.isoformat() if view.started_at else None),
        ("finished", view.finished_at.isoformat() if view.finished_at else None),
    ]
    for art in view.artifacts:
        lines.append(("artifact", art.path or art.url or art.s3_key))
        lines.append(("  key", art.s3_key))
        lines.append(("  sha256", f"{art.sha256} ({art.size_bytes} bytes)"))
    if view.error:
        lines.append(("error", f"{view.error.code}: {view.error.message}"))
    for name, value in lines:
        common.console.print(Text.assemble(f"{name + ':':<17}", cell(value)))
