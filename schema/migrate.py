"""Run the Alembic migrations from code, so an installed painline can create or upgrade its database.

No ``alembic.ini`` is read: the configuration is built here, pointing at the directory of the
``migrations`` package wherever it is installed (a checkout or site-packages). ``migrations/env.py``
runs on the connection opened here, through :func:`migration_engine`.

On SQLite the migration connection differs from the application's in two ways. Foreign keys are off,
because batch migrations rebuild tables by copy-drop-rename and dropping a referenced table with
foreign keys on would cascade or fail. And the driver's own transaction handling is replaced by an
explicit ``BEGIN``, so the whole upgrade is one transaction (SQLite supports transactional DDL; the
sqlite3 driver just never opens a transaction for DDL) and a failed migration leaves nothing half
done.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

from schema.db import _on_sqlite_connect, make_engine, sqlite_file

MIGRATIONS_PACKAGE = "migrations"


def migrations_dir() -> Path:
    """The directory of the installed ``migrations`` package (found without importing it)."""
    spec = importlib.util.find_spec(MIGRATIONS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'migrations' package is not installed")
    for location in spec.submodule_search_locations:
        path = Path(location)
        if (path / "env.py").is_file() and (path / "versions").is_dir():
            return path
    raise RuntimeError("the 'migrations' package found has no env.py/versions: is another one shadowing it?")


def migration_engine(url: str | URL) -> Engine:
    """An engine for running migrations (see the module docstring for the SQLite differences)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return make_engine(parsed)
    path = sqlite_file(parsed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed)
    configure = _on_sqlite_connect(foreign_keys=False)

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        configure(dbapi_connection, record)
        dbapi_connection.isolation_level = None  # the driver no longer BEGINs or COMMITs by itself

    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    return engine


def alembic_config(url: str | URL) -> Config:
    """An Alembic :class:`~alembic.config.Config` for ``url``, built without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # ConfigParser interpolates "%": escape it, or passwords containing one break the URL
    rendered = make_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def _run(url: str | URL, action: str, revision: str) -> None:
    config = alembic_config(url)
    engine = migration_engine(url)
    try:
        # one outer transaction: env.py sees it and runs every revision inside it, so a failure
        # anywhere (including the foreign key check below) rolls the whole run back
        with engine.connect() as connection, connection.begin():
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
            if connection.dialect.name == "sqlite" and sqlite_foreign_key_violations(connection):
                raise RuntimeError(f"{action} to {revision} left rows violating foreign keys")
    finally:
        engine.dispose()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` (default: the newest); creates it if empty."""
    _run(url, "upgrade", revision)


def downgrade(url: str | URL, revision: str = "base") -> None:
    """Take the database at ``url`` down to ``revision`` (default: empty)."""
    _run(url, "downgrade", revision)


def head_revision() -> str | None:
    """The newest revision the shipped migrations define."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(url: str | URL) -> str | None:
    """The revision the database at ``url`` is at, or None if it was never migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def is_up_to_date(url: str | URL) -> bool:
    """Whether the database is at the shipped head (for a start-up check or a health endpoint)."""
    return current_revision(url) == head_revision()


def sqlite_foreign_key_violations(connection: Connection) -> list[tuple[Any, ...]]:
    """Rows ``PRAGMA foreign_key_check`` reports (SQLite only): should be none after a migration."""
    return [tuple(row) for row in connection.execute(text("PRAGMA foreign_key_check"))]


__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_up_to_date",
    "migration_engine",
    "migrations_dir",
    "sqlite_foreign_key_violations",
    "upgrade",
]
