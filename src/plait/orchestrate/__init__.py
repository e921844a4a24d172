"""Local orchestration: turn config into processes, wait for readiness, stop them cleanly."""

from plait.orchestrate.deployment import Deployment

__all__ = ["Deployment"]
