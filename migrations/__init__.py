"""Alembic migrations, shipped as a package so an installed painline can upgrade its own database."""
