"""``df webhooks``: the webhook deliveries, and sending one again."""


from typing import Annotated, Any

import typer

from dreamforge.cli.common import TYPER_OPTIONS, console, handle_errors, open_local_service, print_json
from dreamforge.text import inert

app = typer.Typer(help="Webhook deliveries: list them, send one again.", **TYPER_OPTIONS)

STATUSES = ("pending", "delivered", "failed", "dead")


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _json(delivery: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in delivery.items()}


@app.command("deliveries")
@handle_errors
def deliveries(
    job: Annotated[str | None, typer.Option("--job", help="Only this job's deliveries.")] = None,
    status: Annotated[str | None, typer.Option(help="Only pending, delivered, failed or dead ones.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"deliveries": [...]}.')] = False,
) -> None:
    """Webhook deliveries, newest first: where, what, how it went. `pending` ones wait for their
    next attempt; `failed` ran out of retries; `dead` were refused for good (a 4xx, a redirect,
    a private address)."""
    from rich.table import Table
    from rich.text import Text

    from dreamforge.errors import InvalidRequest

    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"--status is one of {', '.join(STATUSES)}, not {status[:40]!r}")
    found = open_local_service("df webhooks").webhook_deliveries(job, status, limit)
    if as_json:
        print_json({"deliveries": [_json(d) for d in found]})
        return
    if not found:
        console.print(Text("no webhook deliveries"))
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True)  # ids are what `df webhooks redeliver` takes: never folded
    names = ("event", "status", "tries", "code", "next / delivered", "url", "last error")
    for name in names if job else ("job", *names):
        table.add_column(name, overflow="fold")
    for d in found:
        when = d["delivered_at"] if d["status"] == "delivered" else (
            d["next_attempt_at"] if d["status"] == "pending" else None)
        cells = [Text(d["event_type"]), Text(d["status"]), Text(str(d["attempts"])),
                 Text(str(d["last_status_code"] or "-")), Text(_when(when)), Text(inert(d["url"], 120)),
                 Text(inert(d["last_error"] or "", 200))]
        table.add_row(Text(d["id"]), *(cells if job else [Text(d["job_id"]), *cells]))
    console.print(table)


@app.command("redeliver")
@handle_errors
def redeliver(
    delivery_id: Annotated[str, typer.Argument(metavar="ID", help="A delivery id (msg_…).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the delivery as JSON.")] = False,
) -> None:
    """Send a delivery again: due now, with a fresh retry schedule, the same webhook-id and body.
    A running `df worker` or `df serve` sends it."""
    delivery = open_local_service("df webhooks").redeliver(delivery_id)
    if as_json:
        print_json(_json(delivery))
        return
    typer.echo(f"{delivery['id']}\tpending")
