"""``df db``: the job store's schema (Alembic revisions)."""


from typing import Annotated

import typer

from dreamforge.cli import render
from dreamforge.cli.common import TYPER_OPTIONS, handle_errors, load_settings, print_json, require_local

app = typer.Typer(help="The job store's schema: upgrade it, or say where it is.", **TYPER_OPTIONS)


@app.command("upgrade")
@handle_errors
def upgrade(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Migrate the schema to this version's head revision (every process also does this at
    start-up unless DF_DB_AUTO_UPGRADE=0). Safe beside running processes and other upgrades."""
    from dreamforge.service import upgrade_schema

    settings = load_settings()
    require_local("df db upgrade", settings)
    before, after = upgrade_schema(settings)
    if as_json:
        print_json({"before": before, "after": after})
    elif before == after:
        render.line(f"already at revision {after}")
    else:
        render.line(f"upgraded from {before or 'an empty database'} to {after}")


@app.command("current")
@handle_errors
def current(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """The schema's revision and the one this version needs (exit 1 when they differ)."""
    from dreamforge.migrate import HEAD_REVISION
    from dreamforge.service import schema_revision

    settings = load_settings()
    require_local("df db current", settings)
    revision = schema_revision(settings)
    if as_json:
        print_json({"current": revision, "head": HEAD_REVISION})
    else:
        render.line(f"current {revision or 'none'}", f"head {HEAD_REVISION}")
    if revision != HEAD_REVISION:
        raise typer.Exit(1)
