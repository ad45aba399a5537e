"""The one place the model calls its hot ops through, and where the backend is chosen.

Backends:
- ``torch``: plain PyTorch, runs anywhere; the fallback and the path ONNX export traces.
- ``triton``: the Triton kernels of this package, each behind an autograd Function.

The backend comes from, in order: the ``backend`` argument, the ``DISTILBERT_BACKEND``
environment variable (``auto``, ``torch`` or ``triton``), then ``auto``, which picks
``triton`` for CUDA tensors when Triton imports and ``torch`` otherwise. Asking for ``triton``
on CPU tensors works only under the Triton interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import logging
import os

import torch

from distilbert.kernels import attention as _attention
from distilbert.kernels import gelu as _gelu
from distilbert.kernels import layernorm as _layernorm
from distilbert.kernels._triton import HAS_TRITON

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "triton")
ENV_VAR = "DISTILBERT_BACKEND"

_logged: set[tuple[str, str]] = set()


def _log_once(device_type: str, message: str) -> None:
    key = (device_type, message)
    if key not in _logged:
        _logged.add(key)
        logger.info(message)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(device: torch.device, requested: str | None = None) -> str:
    """Name the backend to use for tensors on ``device``; raise if the request cannot run."""
    choice = requested or os.environ.get(ENV_VAR, "auto") or "auto"
    choice = choice.lower()
    if choice not in BACKENDS + ("auto",):
        raise ValueError(f"unknown backend {choice!r}; expected one of auto, torch, triton")

    if choice == "auto":
        if device.type == "cuda" and HAS_TRITON:
            return "triton"
        reason = "Triton is not installed" if device.type == "cuda" else f"device is {device}"
        _log_once(device.type, f"using the torch backend: {reason}")
        return "torch"

    if choice == "triton":
        if not HAS_TRITON:
            raise RuntimeError("backend 'triton' was requested but Triton is not installed")
        if device.type != "cuda" and not _interpreting():
            raise RuntimeError(
                f"backend 'triton' needs CUDA tensors (got {device}); "
                "set TRITON_INTERPRET=1 to run the kernels in the interpreter on CPU"
            )
    return choice


def _triton_module_op(module, name: str):
    op = getattr(module, name, None)
    if op is None:
        raise RuntimeError(f"the triton backend has no {name} in {module.__name__}")
    return op


def attention(
    qkv: torch.Tensor,
    key_mask: torch.Tensor | None,
    n_heads: int,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Self-attention over a fused (batch, seq, 3 * dim) projection; returns (batch, seq, dim)."""
    if resolve_backend(qkv.device, backend) == "triton":
        return _triton_module_op(_attention, "attention_triton")(qkv, key_mask, n_heads, scale)
    return _attention.attention_torch(qkv, key_mask, n_heads, scale)


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm(x + residual) over the last axis, eps used exactly."""
    if resolve_backend(x.device, backend) == "triton":
        op = _triton_module_op(_layernorm, "add_layer_norm_triton")
        return op(x, residual, weight, bias, eps)
    return _layernorm.add_layer_norm_ref(x, residual, weight, bias, eps)


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor | None, backend: str | None = None
) -> torch.Tensor:
    """Exact erf GELU of ``x + bias``."""
    if resolve_backend(x.device, backend) == "triton":
        return _triton_module_op(_gelu, "bias_gelu_triton")(x, bias)
    return _gelu.bias_gelu_ref(x, bias)
