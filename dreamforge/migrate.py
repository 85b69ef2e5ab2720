"""Schema migrations: Alembic revisions in ``dreamforge/migrations``, run from code.

Every process checks the schema's revision when it opens the job store (one cheap query; Alembic
is imported only when there is something to do) and, unless DF_DB_AUTO_UPGRADE=0, upgrades it,
inside one transaction that holds the schema lock: PostgreSQL's advisory lock, or SQLite's write
lock (BEGIN IMMEDIATE). Ten workers starting at once on an empty database upgrade it once.

A database made by the first release (``create_all``, no ``alembic_version``) is stamped at
revision 0001, which is exactly that schema, and upgraded from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

# The newest revision in migrations/versions (a test holds the two together).
HEAD_REVISION = "0006"
FIRST_RELEASE = "0001"
SCRIPTS = Path(__file__).parent / "migrations"


def _config(conn: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = conn
    return config


def current_revision(conn: Connection) -> str | None:
    """The schema's revision; None for an empty database or one the first release made."""
    if not sa.inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def is_legacy(conn: Connection) -> bool:
    return sa.inspect(conn).has_table("jobs") and not sa.inspect(conn).has_table("alembic_version")


def upgrade(conn: Connection) -> tuple[str | None, str]:
    """Bring the schema to the head revision, on a connection that holds the schema lock.
    Returns (revision before, revision after)."""
    import logging

    from alembic import command

    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one line per plugin
    before = current_revision(conn)
    if before == HEAD_REVISION:
        return before, before
    config = _config(conn)
    if before is None and is_legacy(conn):
        command.stamp(config, FIRST_RELEASE)
        before = FIRST_RELEASE
    command.upgrade(config, "head")
    return before, HEAD_REVISION


def head_of_scripts() -> str:
    """The head as Alembic reads it from the revision files."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def differences(conn: Connection) -> list[object]:
    """What the models have that the migrated schema lacks, or the other way round (empty when
    the two agree: what `alembic check` verifies)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from dreamforge.tables import metadata

    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))
