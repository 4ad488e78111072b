"""Placeholder being written: the admin blueprint."""

from flask import Blueprint, Flask

bp = Blueprint("admin", __name__)


def init_app(app: Flask) -> None:
    """Nothing yet."""
