"""Alembic's environment: always driven from code (``dreamforge.migrate``), on a connection that
already holds the schema lock, never from an alembic.ini."""

from __future__ import annotations

from alembic import context

from dreamforge.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
with context.begin_transaction():
    context.run_migrations()
