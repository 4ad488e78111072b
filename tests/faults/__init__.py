"""Fault-injection tests against real services (issue 6): each records a row in the reliability table."""
