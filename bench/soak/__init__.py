"""Soak test: many short calls through real processes with random faults (``python -m bench.soak``)."""
