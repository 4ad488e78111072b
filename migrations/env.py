"""Alembic environment for painline.

Runs two ways: from :func:`schema.migrate.upgrade`, which passes an open connection in
``config.attributes["connection"]`` and owns its transaction, or from the ``alembic`` command line
(``alembic -c migrations/alembic.ini ...``), where the URL comes from ``PAINLINE_DATABASE_URL`` or
the ini file. Batch mode is always on so the same revision files work on SQLite, which cannot
ALTER most things in place.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import JSONB

from schema.migrate import migration_engine
from schema.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and "connection" not in config.attributes:
    # only the command line configures logging; the application has its own
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render painline's own column types as their plain SQLAlchemy equivalents.

    Revision files then never import schema.models, whose types may change after the revision was
    written; the UTC handling is Python-side only and does not affect the DDL.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, JSONB):
        # the default rendering names a bare ``Text`` that the revision file never imports
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return "postgresql.JSONB(astext_type=sa.Text())"
    return False


def _configure_options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "render_as_batch": True,
        "compare_type": True,
        "render_item": render_item,
        # schema.migrate's SQLite engine issues a real BEGIN, so DDL is transactional there too
        "transactional_ddl": True if dialect_name == "sqlite" else None,
    }


def _database_url() -> str:
    url = os.environ.get("PAINLINE_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set PAINLINE_DATABASE_URL or sqlalchemy.url")
    return url


def _run_on(connection: Connection) -> None:
    options = _configure_options(connection.dialect.name)
    if options["transactional_ddl"] is None:
        del options["transactional_ddl"]
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the DDL instead of running it."""
    url = _database_url()
    options = _configure_options("sqlite" if url.startswith("sqlite") else "other")
    options.pop("transactional_ddl")
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **options)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = migration_engine(_database_url())
    try:
        with engine.connect() as conn:
            _run_on(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
