"""Placeholder being written: the auth blueprint."""

from flask import Blueprint, Flask

bp = Blueprint("auth", __name__)


def init_app(app: Flask) -> None:
    """Nothing yet."""
