"""Guarded Triton import: the package must import on machines without Triton or a GPU."""

from __future__ import annotations

try:  # Triton is optional; without it only the torch backend exists.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "triton", "tl"]
