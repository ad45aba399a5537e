"""The one place the model calls its hot ops through, and where the backend is chosen.

Backends:
- ``torch``: plain PyTorch, runs anywhere; the fallback and the path ONNX export traces.
- ``triton``: the Triton kernels of this package, each behind an autograd Function.

The backend comes from, in order: the ``backend`` argument, the innermost
``use_backend(...)`` block, the ``DISTILBERT_BACKEND`` environment variable (``auto``,
``torch`` or ``triton``), then ``auto``. ``auto`` picks ``triton`` for CUDA tensors when
Triton imports and the kernel supports the inputs (head dim, dtype), ``torch`` otherwise,
logging the reason once. Asking for ``triton`` explicitly never falls back: inputs the
kernels cannot take raise a clear error, and CPU tensors work only under the Triton
interpreter (``TRITON_INTERPRET=1`` set before Triton is imported).

The projections (``linear``, ``linear_gelu``, ``linear_add_layer_norm``) also pass through
here. On the torch backend, for float32 or bfloat16 CPU tensors under
``torch.inference_mode()``, each runs as one oneDNN GEMM with the bias, GELU or residual
add fused into its store (:mod:`distilbert.kernels.onednn`); ``use_onednn(False)`` or
``DISTILBERT_ONEDNN=0`` turns that off. Anywhere else (autograd, export tracing, CUDA)
they are ``F.linear`` followed by the ops above. A weight that is an
:class:`~distilbert.kernels.int8.Int8Weight` (a model after ``quantize_int8()``) always
takes the int8 path, on CPU and for inference only.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from distilbert.kernels import attention as _attention
from distilbert.kernels import gelu as _gelu
from distilbert.kernels import int8 as _int8
from distilbert.kernels import layernorm as _layernorm
from distilbert.kernels import onednn as _onednn
from distilbert.kernels._triton import FLOAT_DTYPES, HAS_TRITON, interpreter_active

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "triton")
ENV_VAR = "DISTILBERT_BACKEND"
ONEDNN_ENV_VAR = "DISTILBERT_ONEDNN"

_logged: set[tuple[str, str]] = set()
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "distilbert_backend", default=None
)
_onednn_override: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "distilbert_onednn", default=None
)


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Use backend ``name`` inside the block wherever no ``backend`` argument is given.

    ``name`` is ``auto``, ``torch``, ``triton``, or None to defer to the environment.
    """
    if name is not None and name.lower() not in BACKENDS + ("auto",):
        raise ValueError(f"unknown backend {name!r}; expected one of auto, torch, triton")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


@contextlib.contextmanager
def use_onednn(enabled: bool) -> Iterator[None]:
    """Allow (True) or forbid (False) the fused oneDNN projections inside the block."""
    token = _onednn_override.set(bool(enabled))
    try:
        yield
    finally:
        _onednn_override.reset(token)


def onednn_enabled() -> bool:
    """Whether the fused oneDNN projections may run: ``use_onednn``, else the environment."""
    enabled = _onednn_override.get()
    if enabled is None:
        return os.environ.get(ONEDNN_ENV_VAR, "1").strip().lower() not in ("0", "false", "no")
    return enabled


def _log_once(key: str, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.info(message)


def _choice(requested: str | None) -> str:
    choice = (requested or _override.get() or os.environ.get(ENV_VAR, "auto") or "auto").lower()
    if choice not in BACKENDS + ("auto",):
        raise ValueError(f"unknown backend {choice!r}; expected one of auto, torch, triton")
    return choice


def resolve_backend(device: torch.device, requested: str | None = None) -> str:
    """Name the backend to use for tensors on ``device``; raise if the request cannot run."""
    choice = _choice(requested)
    if choice == "auto":
        if device.type == "cuda" and HAS_TRITON:
            return "triton"
        reason = "Triton is not installed" if device.type == "cuda" else f"device is {device}"
        _log_once(f"device:{device.type}", f"using the torch backend: {reason}")
        return "torch"

    if choice == "triton":
        if not HAS_TRITON:
            raise RuntimeError("backend 'triton' was requested but Triton is not installed")
        if device.type != "cuda" and not interpreter_active():
            raise RuntimeError(
                f"backend 'triton' needs CUDA tensors (got {device}); "
                "set TRITON_INTERPRET=1 before importing triton to run the kernels in the "
                "interpreter on CPU"
            )
    return choice


def _use_triton(op: str, device: torch.device, requested: str | None, unsupported: str) -> bool:
    """Whether ``op`` runs on Triton; ``unsupported`` names what the kernel cannot take."""
    backend = resolve_backend(device, requested)
    if backend != "triton":
        return False
    if unsupported and _choice(requested) == "auto":
        _log_once(f"{op}:{unsupported}", f"{op}: using the torch backend: {unsupported}")
        return False
    return True  # an explicit request goes to the launcher, which names the problem


def _dtype_problem(*tensors: torch.Tensor | None) -> str:
    for tensor in tensors:
        if tensor is not None and tensor.dtype not in FLOAT_DTYPES:
            return f"the Triton kernels take float32, float16 and bfloat16, not {tensor.dtype}"
    return ""


def attention(
    qkv: torch.Tensor,
    key_mask: torch.Tensor | None,
    n_heads: int,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Self-attention over a fused (batch, seq, 3 * dim) projection; returns (batch, seq, dim)."""
    head_dim = qkv.shape[-1] // (3 * n_heads) if n_heads > 0 else 0
    problem = _dtype_problem(qkv)
    if head_dim not in _attention.HEAD_DIMS:
        problem = f"head dim {head_dim} is not one of {_attention.HEAD_DIMS}"
    if _use_triton("attention", qkv.device, backend, problem):
        return _attention.attention_triton(qkv, key_mask, n_heads, scale)
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
    problem = _dtype_problem(x, residual, weight, bias)
    if x.shape[-1] > _layernorm.MAX_WIDTH:
        problem = f"width {x.shape[-1]} exceeds {_layernorm.MAX_WIDTH}"
    if _use_triton("add_layer_norm", x.device, backend, problem):
        return _layernorm.add_layer_norm_triton(x, residual, weight, bias, eps)
    return _layernorm.add_layer_norm_ref(x, residual, weight, bias, eps)


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor | None, backend: str | None = None
) -> torch.Tensor:
    """Exact erf GELU of ``x + bias``."""
    if _use_triton("bias_gelu", x.device, backend, _dtype_problem(x, bias)):
        return _gelu.bias_gelu_triton(x, bias)
    return _gelu.bias_gelu_ref(x, bias)


def _fused_cpu_linear(x: torch.Tensor, weight: torch.Tensor, requested: str | None) -> bool:
    """Whether a projection runs as one oneDNN call.

    Torch backend, CPU tensors of float32 or bfloat16 (``onednn.can_run``), inference mode.
    """
    if not torch.is_inference_mode_enabled() or x.device.type != "cpu":
        return False
    if not onednn_enabled() or not _onednn.can_run(x, weight):
        return False
    return resolve_backend(x.device, requested) == "torch"


def linear(
    x: torch.Tensor, weight: torch.Tensor | _int8.Int8Weight, bias: torch.Tensor | None,
    backend: str | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias``."""
    if isinstance(weight, _int8.Int8Weight):
        return _int8.linear_int8(x, weight, bias)
    if _fused_cpu_linear(x, weight, backend):
        return _onednn.linear_onednn(x, weight, bias)
    return F.linear(x, weight, bias)


def linear_gelu(
    x: torch.Tensor, weight: torch.Tensor | _int8.Int8Weight, bias: torch.Tensor | None,
    backend: str | None = None,
) -> torch.Tensor:
    """Exact erf GELU of ``x @ weight.T + bias``; the bias add is fused with the GELU."""
    if isinstance(weight, _int8.Int8Weight):
        return _int8.linear_int8(x, weight, bias, "gelu")
    if _fused_cpu_linear(x, weight, backend):
        return _onednn.linear_onednn(x, weight, bias, "gelu")
    return bias_gelu(F.linear(x, weight), bias, backend)


def linear_add_layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | _int8.Int8Weight,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    backend: str | None = None,
) -> torch.Tensor:
    """``LayerNorm(x @ weight.T + bias + residual)``, eps used exactly.

    On the fused CPU path the residual is added in the GEMM's store; elsewhere the add is
    fused with the LayerNorm (:func:`add_layer_norm`).
    """
    if isinstance(weight, _int8.Int8Weight):
        h = _int8.linear_int8(x, weight, bias, residual=residual)
    elif _fused_cpu_linear(x, weight, backend) and residual.is_contiguous():
        h = _onednn.linear_add_onednn(x, weight, bias, residual)
    else:
        return add_layer_norm(F.linear(x, weight, bias), residual, norm_weight, norm_bias, eps,
                              backend)
    return _layernorm.add_layer_norm_ref(h, None, norm_weight, norm_bias, eps)


def int8_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """An int8 stand-in for ``linear`` (weights quantized per output channel) for CPU inference.

    The projections above take its int8 path when given its ``weight``; see
    :mod:`distilbert.kernels.int8`. Raises RuntimeError when this PyTorch has no int8 GEMM.
    """
    if not _int8.int8_available():
        raise RuntimeError("this PyTorch build has no CPU torch._int_mm: int8 mode is unavailable")
    return _int8.Int8Linear.from_linear(linear)
