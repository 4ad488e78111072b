"""The database schema (SQLAlchemy 2.0 models) and session helpers shared by web and worker."""
