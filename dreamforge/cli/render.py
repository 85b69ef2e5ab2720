"""Showing jobs: rich tables and progress on a terminal, plain tab-separated lines elsewhere.

Every value that came from outside (prompt, ids, error text, request id, keys, URLs) reaches the
terminal through ``cell``: control characters made visible escapes (``dreamforge.text.inert``),
and wrapped in rich ``Text``, so markup such as ``[/x]`` is shown, never interpreted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dreamforge.cli import common
from dreamforge.text import inert

if TYPE_CHECKING:
    from rich.text import Text

    from dreamforge.client import RemoteService
    from dreamforge.schemas import JobView
    from dreamforge.service import JobService

POLL_S = 0.1
# How often a watch asks whether any worker is still alive.
LIVENESS_S = 1.0
COLOURS = {"succeeded": "green", "failed": "red", "running": "yellow", "queued": "blue", "canceled": "magenta"}


def cell(value: Any, limit: int | None = None, style: str = "") -> Text:
    """Outside text, inert: one line, no escapes, no markup."""
    from rich.text import Text

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


class _Followed:
    """A job as its events tell it: status and step progress, and the last event seen."""

    def __init__(self, view: JobView):
        self.status = view.status.value
        self.current, self.total = _step_progress(view)
        self.after = 0

    def apply(self, event: dict[str, Any]) -> bool:
        """Fold one event in; True when it changed the status."""
        self.after = max(self.after, event["id"])
        payload = event["payload"]
        if event["kind"] == "progress":
            self.current, self.total = payload.get("current", 0), max(payload.get("total", 1), 1)
        elif event["kind"] == "status" and payload.get("status") and payload["status"] != self.status:
            self.status = payload["status"]
            if self.status == "queued":  # handed back or retried: the next run starts again
                self.current = 0
            return True
        return False

    def ended(self) -> bool:
        from dreamforge.status import JobStatus

        return JobStatus(self.status).is_terminal()


def watch(service: JobService | RemoteService, job_id: str, *, quiet: bool = False,
          check: Callable[[], None] | None = None,
          on_no_worker: Callable[[JobView], None] | None = None) -> JobView:
    """Follow a job until it ends, by its events (``service.follow_events``: read every POLL_S
    from a local store, pushed by a remote server): a progress bar on a terminal, one line per
    status change otherwise (stderr either way, so stdout stays for results). Returns the job's
    final view.

    ``check`` runs at every poll and may raise to stop watching (the CLI's own in-process run
    died). ``on_no_worker`` is called when the job has not ended and no worker is live (about
    once a second while that holds)."""
    view = service.get(job_id)
    job = _Followed(view)
    if job.ended():  # shown as it ended; nothing to follow
        _follow(service, job_id, job, iter(()), quiet=quiet, check=check, on_no_worker=on_no_worker)
        return view
    batches = service.follow_events(job_id, poll_s=POLL_S)
    try:
        _follow(service, job_id, job, batches, quiet=quiet, check=check, on_no_worker=on_no_worker)
    finally:
        batches.close()  # a remote stream's connection too
    return service.get(job_id)


def _follow(service: JobService | RemoteService, job_id: str, job: _Followed,
            batches: Iterator[list[dict[str, Any]]], *, quiet: bool, check: Callable[[], None] | None,
            on_no_worker: Callable[[JobView], None] | None) -> None:
    if not job.ended():
        # The history first: folded over the view it ends at least where the view is, so no move
        # made between the two reads is missed (a move applied twice changes nothing).
        for event in next(batches):
            job.apply(event)
    last_liveness = time.monotonic()

    def no_worker() -> None:
        if on_no_worker is not None and not job.ended() and not service.live_workers():
            on_no_worker(service.get(job_id))

    def poll() -> list[str]:
        """The statuses the job moved through since the last poll (after a tick, or an event)."""
        nonlocal last_liveness
        if check is not None:
            check()
        moved = [job.status for event in next(batches) if job.apply(event)]
        if time.monotonic() - last_liveness >= LIVENESS_S:
            last_liveness = time.monotonic()
            no_worker()
        return moved

    no_worker()
    if quiet or not common.err_console.is_terminal:
        _show_status(job_id, job.status, quiet)
        while not job.ended():
            for status in poll():
                _show_status(job_id, status, quiet)
    else:
        _progress_bar(job, poll)


def _progress_bar(job: _Followed, poll: Callable[[], object]) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (_status_column(), BarColumn(), MofNCompleteColumn(), TextColumn("steps", markup=False),
               TimeElapsedColumn(), TextColumn("ETA", markup=False), TimeRemainingColumn())
    with Progress(*columns, console=common.unwrap(common.err_console), transient=False) as progress:
        task = progress.add_task("generate", total=job.total, completed=job.current, status=job.status)
        while True:
            progress.update(task, total=job.total, completed=job.current, status=job.status)
            if job.ended():
                return
            poll()


def _show_status(job_id: str, status: str, quiet: bool) -> None:
    """A status line for a log or a pipe (on stderr)."""
    from rich.text import Text

    if not quiet and not common.err_console.is_terminal:
        common.err_console.print(Text.assemble("job ", cell(job_id), " ", cell(status)))


def _status_column() -> Any:
    """The bar's first column: the status in its colour (magenta for canceled, ...)."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class StatusColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            status = str(task.fields.get("status", ""))
            return Text(f"{inert(status):<9}", style="bold " + COLOURS.get(status, ""))

    return StatusColumn()


def log_line(entry: dict[str, Any]) -> None:
    """One line of a job's log: time, level, message (all inert; the message came from outside)."""
    from rich.text import Text

    at = entry["at"]
    stamp = at.isoformat(timespec="milliseconds") if hasattr(at, "isoformat") else str(at)
    level = str(entry.get("level", "info"))
    style = {"error": "red", "warning": "yellow", "critical": "red"}.get(level, "")
    common.console.print(Text.assemble(cell(stamp), " ", cell(f"{level:<7}", style=style), " ",
                                       cell(entry.get("message", ""))))


def artifact_location(view: JobView) -> str | None:
    if not view.artifacts:
        return None
    art = view.artifacts[0]
    return inert(art.path or art.url or art.s3_key)


def artifact_locations(view: JobView) -> list[str]:
    """Every item's location, in item order (one line each)."""
    return [inert(a.path or a.url or a.s3_key) for a in view.artifacts]


def record_lines(record: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The job's record as name/value lines (every value from the job store: shown inert)."""
    if not record:
        return []
    model = record.get("model") or {}
    sched = record.get("scheduler") or {}
    settings = ", ".join(f"{k}={v}" for k, v in sorted((sched.get("config") or {}).items()))
    versions = ", ".join(f"{k} {record[k]}" for k in ("dreamforge", "torch", "diffusers") if record.get(k))
    lines: list[tuple[str, Any]] = [
        ("model", model.get("name")), ("  sha256", model.get("sha256") or "-"),
        ("scheduler", f"{sched.get('name') or '-'} ({sched.get('class') or '-'})"),
        ("dtype", record.get("dtype")), ("device", record.get("device")), ("versions", versions),
        ("seeds", ", ".join(str(s) for s in record.get("seeds") or [])),
        ("batches", ", ".join(str(b) for b in record.get("batches") or []))]
    if settings:
        lines.insert(3, ("  settings", settings))
    for split in record.get("splits") or []:
        lines.append(("  split", f"out of memory at {split.get('items')} images from item "
                                 f"{split.get('at_item')}; then {split.get('then')} at a time"))
    return lines


def job_table(views: list[JobView]) -> None:
    console = common.console
    if not console.is_terminal:
        for v in views:
            current, total = _step_progress(v)
            line(v.id, v.status.value, v.created_at.isoformat(), _size(v), f"{current}/{total}",
                 inert(_subject(v), 60))
        return
    from rich.table import Table

    table = Table("id", "status", "created", "size", "steps", "prompt")
    for v in views:
        current, total = _step_progress(v)
        table.add_row(cell(v.id), cell(v.status.value, style=COLOURS.get(v.status.value, "")),
                      v.created_at.strftime("%Y-%m-%d %H:%M:%S"), _size(v), f"{current}/{total}",
                      cell(_subject(v), 60))
    console.print(table)


def _size(view: JobView) -> str:
    p = view.params
    return f"{p['width']}x{p['height']}" if "width" in p else "-"


def _subject(view: JobView) -> str:
    """A job's prompt; a download's name and URL."""
    p = view.params
    return p["prompt"] if "prompt" in p else f"{p.get('name')} ← {p.get('source')}"


def download_details(view: JobView) -> None:
    """A model download job (POST /v1/models): what it fetches, how far it got."""
    from rich.text import Text

    current, total = _step_progress(view)
    p = view.params
    lines: list[tuple[str, Any]] = [
        ("id", view.id), ("status", view.status.value), ("type", view.type), ("model name", p.get("name")),
        ("source", p.get("source")), ("sha256", p.get("sha256")), ("progress", f"{current}/{total} MiB"),
        ("attempts", view.attempts), ("request id", view.correlation_id),
        ("created", view.created_at.isoformat()),
        ("finished", view.finished_at.isoformat() if view.finished_at else None)]
    if view.error:
        lines.append(("error", f"{view.error.code}: {view.error.message}"))
    for name, value in lines:
        common.console.print(Text.assemble(f"{name + ':':<17}", cell(value)))


def job_details(view: JobView) -> None:
    from rich.text import Text

    if view.type == "download":
        return download_details(view)
    current, total = _step_progress(view)
    p = view.params
    seed = p.get("seed")
    lines: list[tuple[str, Any]] = [
        ("id", view.id), ("status", view.status.value), ("prompt", p["prompt"]),
        ("negative prompt", p.get("negative_prompt")),
        ("size", f"{p['width']}x{p['height']}"),
        ("steps", f"{current}/{total}" if p.get("count", 1) == 1 else
         f"{current}/{total} ({p['count']} images x {p['steps']} steps)"),
        ("guidance", p["guidance"]), ("seed", seed), ("count", p.get("count", 1)),
        ("scheduler", p.get("scheduler") or "the checkpoint's own"),
        ("format", p["format"]), ("attempts", view.attempts),
        ("request id", view.correlation_id),
        ("created", view.created_at.isoformat()),
        ("started", view.started_at.isoformat() if view.started_at else None),
        ("finished", view.finished_at.isoformat() if view.finished_at else None),
    ]
    if view.retry_of:
        lines.append(("retry of", view.retry_of))
    if view.rerun_of:
        lines.append(("rerun of", view.rerun_of))
    lines.append(("stored", f"{view.summary.completed} of {view.summary.count}"))
    for art in view.artifacts:
        lines.append((f"artifact {art.item_index}", art.path or art.url or art.s3_key))
        lines.append(("  seed", art.seed))
        lines.append(("  key", art.s3_key))
        lines.append(("  sha256", f"{art.sha256} ({art.size_bytes} bytes)"))
    if view.error:
        lines.append(("error", f"{view.error.code}: {view.error.message}"))
    if view.record:
        lines.append(("record", "how the job ran (df jobs rerun makes it again)"))
        lines.extend(("  " + n, v) for n, v in record_lines(view.record))
    for name, value in lines:
        common.console.print(Text.assemble(f"{name + ':':<17}", cell(value)))
