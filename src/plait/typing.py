"""Types for annotating documents: ``from plait.typing import NdArray``."""

from plait.docs.tensor import NdArray

__all__ = ["NdArray"]
