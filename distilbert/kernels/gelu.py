"""Bias add followed by exact (erf) GELU: ``y = gelu(x + bias)``.

Three layers: the Triton kernels (``_bias_gelu_fwd_kernel``, ``_bias_gelu_bwd_kernel``),
host launchers that check inputs and pick block sizes (``bias_gelu_fwd``,
``bias_gelu_bwd``), and the PyTorch reference (``bias_gelu_ref``). ``bias_gelu_triton``
ties them together behind ``torch.autograd.Function``.

Numerics of the Triton path: x and the bias are loaded in their storage dtype and added in
fp32; GELU uses erf in fp32; the output is stored once in the input dtype. Nothing extra is
saved for backward: it recomputes x + bias from the inputs. The bias gradient is summed in
fp32 per program, then across programs on the host.

Inputs are read through their strides; the output and gradients are contiguous.

Limits: the bias, when given, spans the last axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distilbert.kernels._triton import (
    HAS_TRITON,
    as_rows_3d,
    check_float,
    check_launchable,
    next_power_of_2,
    num_programs_for_rows,
    tl,
    triton,
)

SQRT_HALF = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327

# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _bias_gelu_fwd_kernel(
        x_ptr,  # (batch, seq, width) input, any strides
        bias_ptr,  # (width,) bias; read only if HAS_BIAS
        y_ptr,  # (batch * seq, width) contiguous output
        stride_x_b,
        stride_x_s,
        stride_x_n,
        stride_bias_n,
        n_rows,
        seq,
        width,
        HAS_BIAS: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """GELU of one (BLOCK_R rows x BLOCK_N columns) tile of x + bias."""
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < width
        ok = (rows < n_rows)[:, None] & col_ok[None, :]

        row_offsets = (rows // seq) * stride_x_b + (rows % seq) * stride_x_s
        h = tl.load(
            x_ptr + row_offsets[:, None] + cols[None, :] * stride_x_n, mask=ok, other=0.0
        ).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols * stride_bias_n, mask=col_ok, other=0.0)
            h += bias.to(tl.float32)[None, :]

        y = 0.5 * h * (1.0 + tl.erf(h * SQRT_HALF))
        tl.store(
            y_ptr + rows[:, None] * width + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=ok
        )

    @triton.jit
    def _bias_gelu_bwd_kernel(
        dy_ptr,  # (batch, seq, width) gradient of the output, any strides
        x_ptr,  # (batch, seq, width) input saved by the forward
        bias_ptr,  # (width,) bias; read only if HAS_BIAS
        dx_ptr,  # (batch * seq, width) contiguous gradient of x
        dbias_part_ptr,  # (n_row_programs, width) fp32 partial sums; if BIAS_GRAD
        stride_dy_b,
        stride_dy_s,
        stride_dy_n,
        stride_x_b,
        stride_x_s,
        stride_x_n,
        stride_bias_n,
        n_rows,
        seq,
        width,
        HAS_BIAS: tl.constexpr,
        BIAS_GRAD: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """dx for a strided run of row tiles in one column block, and their dbias share."""
        row_program = tl.program_id(0).to(tl.int64)
        n_row_programs = tl.num_programs(0)
        cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < width
        bias = tl.zeros([BLOCK_N], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols * stride_bias_n, mask=col_ok, other=0.0)
            bias = bias.to(tl.float32)
        dbias = tl.zeros([BLOCK_N], dtype=tl.float32)

        for first in range(row_program * BLOCK_R, n_rows, n_row_programs * BLOCK_R):
            rows = first + tl.arange(0, BLOCK_R)
            ok = (rows < n_rows)[:, None] & col_ok[None, :]
            batch = rows // seq
            pos = rows % seq
            x_rows = (batch * stride_x_b + pos * stride_x_s)[:, None]
            h = tl.load(
                x_ptr + x_rows + cols[None, :] * stride_x_n, mask=ok, other=0.0
            ).to(tl.float32) + bias[None, :]
            dy_offsets = (batch * stride_dy_b + pos * stride_dy_s)[:, None]
            dy = tl.load(
                dy_ptr + dy_offsets + cols[None, :] * stride_dy_n, mask=ok, other=0.0
            ).to(tl.float32)

            # gelu'(h) = Phi(h) + h * phi(h), with Phi and phi the normal cdf and pdf.
            cdf = 0.5 * (1.0 + tl.erf(h * SQRT_HALF))
            pdf = tl.exp(-0.5 * h * h) * INV_SQRT_2PI
            dh = dy * (cdf + h * pdf)
            tl.store(
                dx_ptr + rows[:, None] * width + cols[None, :],
                dh.to(dx_ptr.dtype.element_ty),
                mask=ok,
            )
            if BIAS_GRAD:
                dbias += tl.sum(tl.where(ok, dh, 0.0), axis=0)

        if BIAS_GRAD:
            tl.store(dbias_part_ptr + row_program * width + cols, dbias, mask=col_ok)


else:  # only the torch reference is available
    _bias_gelu_fwd_kernel = _bias_gelu_bwd_kernel = None


# ---------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------


def _check_gelu_inputs(x: torch.Tensor, bias: torch.Tensor | None) -> int:
    """Validate shapes and dtypes; return the width of the last axis."""
    op = "bias_gelu"
    check_float(op, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one axis")
    width = x.shape[-1]
    if bias is not None:
        check_float(op, "bias", bias)
        if tuple(bias.shape) != (width,):
            raise ValueError(f"{op}: bias must be ({width},), got {tuple(bias.shape)}")
    return width


def _blocks(width: int) -> tuple[int, int]:
    """Tiles of about 4096 elements: up to 1024 columns, the rest in rows."""
    block_n = min(1024, next_power_of_2(width))
    return max(1, 4096 // block_n), block_n


def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Launch the forward kernel; return gelu(x + bias), contiguous, in x's dtype."""
    width = _check_gelu_inputs(x, bias)
    check_launchable(_bias_gelu_fwd_kernel, "bias_gelu", x, bias)
    x3 = as_rows_3d(x)
    n_rows = x3.shape[0] * x3.shape[1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y

    block_r, block_n = _blocks(width)
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(width, block_n))
    _bias_gelu_fwd_kernel[grid](
        x3, bias if bias is not None else x3, y,
        x3.stride(0), x3.stride(1), x3.stride(2),
        bias.stride(0) if bias is not None else 0,
        n_rows, x3.shape[1], width,
        HAS_BIAS=bias is not None, BLOCK_R=block_r, BLOCK_N=block_n,
        num_warps=4,
    )
    return y


def bias_gelu_bwd(
    dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, *, bias_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the backward kernel; return dx and the fp32 dbias (None unless asked)."""
    width = x.shape[-1]
    if dy.shape != x.shape:
        raise ValueError(
            f"bias_gelu backward: grad_output shape {tuple(dy.shape)} differs from "
            f"{tuple(x.shape)}"
        )
    check_launchable(_bias_gelu_bwd_kernel, "bias_gelu backward", dy, x, bias)
    bias_grad = bias_grad and bias is not None
    x3 = as_rows_3d(x)
    dy3 = as_rows_3d(dy)
    n_rows = x3.shape[0] * x3.shape[1]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if dx.numel() == 0:
        return dx, torch.zeros(width, device=x.device) if bias_grad else None

    block_r, block_n = _blocks(width)
    n_row_programs = num_programs_for_rows(triton.cdiv(n_rows, block_r), x.device)
    dbias_part = dx
    if bias_grad:
        dbias_part = torch.empty(n_row_programs, width, dtype=torch.float32, device=x.device)
    _bias_gelu_bwd_kernel[(n_row_programs, triton.cdiv(width, block_n))](
        dy3, x3, bias if bias is not None else x3, dx, dbias_part,
        dy3.stride(0), dy3.stride(1), dy3.stride(2),
        x3.stride(0), x3.stride(1), x3.stride(2),
        bias.stride(0) if bias is not None else 0,
        n_rows, x3.shape[1], width,
        HAS_BIAS=bias is not None, BIAS_GRAD=bias_grad, BLOCK_R=block_r, BLOCK_N=block_n,
        num_warps=4,
    )
    return dx, dbias_part.sum(0) if bias_grad else None


# ---------------------------------------------------------------------------------------
# PyTorch reference
# ---------------------------------------------------------------------------------------


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Reference: add the bias (if any), then exact erf GELU."""
    h = x if bias is None else x + bias
    return F.gelu(h)


# ---------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------


class BiasGeluFunction(torch.autograd.Function):
    """Triton bias + GELU with its backward."""

    @staticmethod
    def forward(ctx, x, bias):
        """Run the forward kernel; backward recomputes from the inputs."""
        ctx.save_for_backward(x, bias)
        return bias_gelu_fwd(x, bias)

    @staticmethod
    def backward(ctx, dy):
        """Gradients of x and of the bias (None where not needed)."""
        x, bias = ctx.saved_tensors
        need_x, need_bias = ctx.needs_input_grad
        dx, dbias = bias_gelu_bwd(dy, x, bias, bias_grad=need_bias)
        return (dx if need_x else None), (dbias.to(bias.dtype) if need_bias else None)


def bias_gelu_triton(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The triton backend: differentiable when x or the bias needs a gradient."""
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return BiasGeluFunction.apply(x, bias)
    return bias_gelu_fwd(x, bias)
