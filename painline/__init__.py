"""Composition root: configuration, the Flask app factory that mounts every blueprint, and the CLI."""

__version__ = "0.1.0"
