"""Guarded Triton import and the checks every launcher shares.

The package must import on machines without Triton or a GPU: everything Triton-specific in
the kernel modules sits behind ``HAS_TRITON``. Kernels are decorated at import (which
compiles nothing); Triton decides at decoration time whether a kernel is compiled for the
GPU or run by its interpreter (``TRITON_INTERPRET=1``), so that variable must be set before
:mod:`distilbert.kernels` is first imported.
"""

from __future__ import annotations

import torch

try:  # Triton is optional; without it only the torch backend exists.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "as_rows_3d",
    "check_launchable",
    "interpreter_active",
    "is_interpreted",
    "next_power_of_2",
    "num_programs_for_rows",
    "tl",
    "triton",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was decorated while ``TRITON_INTERPRET`` was set."""
    return type(kernel).__name__ == "InterpretedFunction"


def _stdlib_interpreted() -> bool:
    # Triton's own jitted helpers (tl.zeros, tl.cdiv, ...) were decorated when Triton was
    # imported; kernels can only be interpreted if those were too.
    helper = getattr(tl.standard, "cdiv", None)
    return helper is None or is_interpreted(helper)


if HAS_TRITON:

    @triton.jit
    def _probe_kernel():
        """Never launched: its type tells how this process decorates kernels."""


def interpreter_active() -> bool:
    """True when Triton kernels in this process run in the interpreter (on any device)."""
    return HAS_TRITON and is_interpreted(_probe_kernel) and _stdlib_interpreted()


def check_launchable(kernel, op: str, *tensors: torch.Tensor | None) -> None:
    """Raise a clear error when ``kernel`` cannot run on the given tensors."""
    if not HAS_TRITON:
        raise RuntimeError(f"{op}: the triton backend needs Triton, which is not installed")
    present = [t for t in tensors if t is not None]
    devices = {t.device for t in present}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"{op}: all tensors must be on one device, got {names}")
    device = present[0].device
    if device.type == "cuda" or (is_interpreted(kernel) and _stdlib_interpreted()):
        return
    if is_interpreted(kernel):
        raise RuntimeError(
            f"{op}: Triton was imported before TRITON_INTERPRET was set, so its own helpers "
            "are compiled while this kernel is interpreted; set the variable before any "
            "import of triton"
        )
    raise RuntimeError(
        f"{op}: the Triton kernels were compiled for CUDA but the tensors are on {device}; "
        "set TRITON_INTERPRET=1 before importing triton or distilbert to run them on the CPU"
    )


def check_float(op: str, name: str, tensor: torch.Tensor) -> None:
    """Raise when ``tensor`` is not float32, float16 or bfloat16."""
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float16 or bfloat16, got {tensor.dtype}"
        )


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (and >= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def as_rows_3d(tensor: torch.Tensor) -> torch.Tensor:
    """View ``tensor`` as (batch, seq, width) so a kernel can walk it through strides.

    1-D and 2-D tensors gain leading axes of size 1 and 3-D tensors pass through, both
    without copying. More leading axes are flattened into one, which copies only when
    they cannot be merged in place (``reshape``'s rule).
    """
    if tensor.dim() == 0:
        raise ValueError("expected a tensor with at least one axis, got a scalar")
    if tensor.dim() <= 3:
        return tensor.reshape((1,) * (3 - tensor.dim()) + tuple(tensor.shape))
    return tensor.flatten(0, -3)


def num_programs_for_rows(n_rows: int, device: torch.device) -> int:
    """How many programs share a row-reduction (the partial sums of weight gradients)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return max(1, min(n_rows, 4 * props.multi_processor_count))
    return max(1, min(n_rows, 4))  # the interpreter: few programs, each cheap to simulate
