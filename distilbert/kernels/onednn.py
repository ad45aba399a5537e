"""CPU linear layers through oneDNN with the epilogue fused: bias, GELU or a residual add.

PyTorch's default CPU GEMM (MKL) computes ``x @ W.T``, then bias, activation and residual
run as separate passes over memory. oneDNN fuses them into the GEMM's store, and on AMD CPUs
its kernels also use AVX-512 where MKL's do not. These ops run only for inference (no
autograd) and never while tracing for export; :mod:`dispatch` decides when.

Limits: float32 and bfloat16 inputs on CPU; ``torch.ops.mkldnn._linear_pointwise`` is a
private PyTorch op (used by Inductor), so its presence is checked at run time and the plain
path is used when it is missing.
"""

from __future__ import annotations

import functools

import torch

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    """True when this PyTorch build has oneDNN and its fused linear op."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        _ = op.binary
    except (AttributeError, RuntimeError):
        return False
    return True


def can_run(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether these tensors may take the oneDNN path (CPU, inference, supported dtype)."""
    if x.device.type != "cpu" or x.dtype not in SUPPORTED_DTYPES or weight.dtype != x.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        return False
    return onednn_available()


def linear_onednn(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str = "none"
) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` in one oneDNN call; activation ``none`` or ``gelu`` (erf)."""
    if activation == "none":
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    if activation == "gelu":
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    raise ValueError(f"unsupported fused activation {activation!r}; use 'none' or 'gelu'")


def linear_add_onednn(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """``x @ weight.T + bias + residual`` with the residual added in the GEMM's epilogue."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")

