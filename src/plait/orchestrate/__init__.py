"""Local orchestration: turn config into processes, wait for readiness, stop them cleanly."""

from plait.orchestrate.deployment import Deployment
from plait.orchestrate.flow import Flow
from plait.orchestrate.supervisor import ReplicaStatus, RestartPolicy

__all__ = ["Deployment", "Flow", "ReplicaStatus", "RestartPolicy"]
