"""The ``plait`` command: the only place that parses argv."""

from plait.cli.main import app, main

__all__ = ["app", "main"]
