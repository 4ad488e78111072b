"""Placeholder being written: the nurse blueprint."""

from flask import Blueprint, Flask

bp = Blueprint("nurse", __name__)


def init_app(app: Flask) -> None:
    """Nothing yet."""
