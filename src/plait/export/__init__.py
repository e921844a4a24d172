"""Kubernetes and Docker Compose generation: pure functions of a Flow's frozen config."""

from plait.export.compose import compose_project, write_compose
from plait.export.kubernetes import kubernetes_manifests, write_kubernetes
from plait.export.options import DEFAULT_IMAGE, ComposeOptions, ExportOptions, KubernetesOptions

__all__ = [
    "DEFAULT_IMAGE",
    "ComposeOptions",
    "ExportOptions",
    "KubernetesOptions",
    "compose_project",
    "kubernetes_manifests",
    "write_compose",
    "write_kubernetes",
]
