"""Residual add followed by LayerNorm: ``y = LayerNorm(x + residual)``.

eps is used exactly as given (DistilBERT checkpoints say 1e-12), never clamped.

Three layers: the Triton kernels (``_add_layer_norm_fwd_kernel``,
``_add_layer_norm_bwd_kernel``), host launchers that check inputs and pick block sizes
(``add_layer_norm_fwd``, ``add_layer_norm_bwd``), and the PyTorch reference
(``add_layer_norm_ref``). ``add_layer_norm_triton`` ties them together behind
``torch.autograd.Function``.

Numerics of the Triton path: one program per row loads x and the residual in their storage
dtype, adds them in fp32, computes mean and variance in fp32 over the real lanes only (the
pad lanes of the power-of-two block are zeroed before each reduction), and stores the
output once in the input dtype. The fp32 mean and 1/std of every row are saved only when a
gradient is needed. Backward recomputes the normalised row from x, residual and those
statistics; the weight and bias gradients are summed in fp32 per program, then across
programs on the host.

Inputs are read through their strides (an expanded residual, as the embeddings pass, is
not copied); the output and input gradients are contiguous.

Limits: widths up to 65536 (one block per row); the last axis is normalised.
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

MAX_WIDTH = 65536

# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _add_layer_norm_fwd_kernel(
        x_ptr,  # (batch, seq, width) input, any strides
        res_ptr,  # (batch, seq, width) residual, any strides; read only if HAS_RESIDUAL
        weight_ptr,  # (width,) scale
        bias_ptr,  # (width,) shift
        y_ptr,  # (batch * seq, width) contiguous output
        mean_ptr,  # (batch * seq,) fp32 row means; written only if STORE_STATS
        rstd_ptr,  # (batch * seq,) fp32 row 1 / sqrt(var + eps); written only if STORE_STATS
        stride_x_b,
        stride_x_s,
        stride_x_n,
        stride_res_b,
        stride_res_s,
        stride_res_n,
        stride_weight_n,
        stride_bias_n,
        seq,
        width,
        eps,
        HAS_RESIDUAL: tl.constexpr,
        STORE_STATS: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Normalise one row of x + residual."""
        row = tl.program_id(0).to(tl.int64)
        batch = row // seq
        pos = row % seq
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < width

        h = tl.load(
            x_ptr + batch * stride_x_b + pos * stride_x_s + cols * stride_x_n,
            mask=col_ok,
            other=0.0,
        ).to(tl.float32)
        if HAS_RESIDUAL:
            h += tl.load(
                res_ptr + batch * stride_res_b + pos * stride_res_s + cols * stride_res_n,
                mask=col_ok,
                other=0.0,
            ).to(tl.float32)

        # Pad lanes load as 0, so the sum is exact; they must be zeroed again after
        # centring, or each would add mean^2 to the variance.
        mean = tl.sum(h, axis=0) / width
        centred = tl.where(col_ok, h - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / width
        rstd = 1.0 / tl.sqrt(var + eps)

        weight = tl.load(weight_ptr + cols * stride_weight_n, mask=col_ok, other=0.0)
        bias = tl.load(bias_ptr + cols * stride_bias_n, mask=col_ok, other=0.0)
        y = centred * rstd * weight.to(tl.float32) + bias.to(tl.float32)
        tl.store(y_ptr + row * width + cols, y.to(y_ptr.dtype.element_ty), mask=col_ok)
        if STORE_STATS:
            tl.store(mean_ptr + row, mean)
            tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _add_layer_norm_bwd_kernel(
        dy_ptr,  # (batch, seq, width) gradient of the output, any strides
        x_ptr,  # (batch, seq, width) input saved by the forward
        res_ptr,  # (batch, seq, width) residual; read only if HAS_RESIDUAL
        weight_ptr,  # (width,) scale
        mean_ptr,  # (batch * seq,) fp32 row means from the forward
        rstd_ptr,  # (batch * seq,) fp32 row 1 / std from the forward
        dh_ptr,  # (batch * seq, width) contiguous gradient of x (and of the residual)
        dweight_part_ptr,  # (n_programs, width) fp32 partial sums; if PARAM_GRADS
        dbias_part_ptr,  # (n_programs, width) fp32 partial sums; if PARAM_GRADS
        stride_dy_b,
        stride_dy_s,
        stride_dy_n,
        stride_x_b,
        stride_x_s,
        stride_x_n,
        stride_res_b,
        stride_res_s,
        stride_res_n,
        stride_weight_n,
        n_rows,
        seq,
        width,
        rows_per_program,
        HAS_RESIDUAL: tl.constexpr,
        PARAM_GRADS: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """Input gradients of a run of rows, and their share of the parameter gradients."""
        program = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < width
        weight = tl.load(weight_ptr + cols * stride_weight_n, mask=col_ok, other=0.0)
        weight = weight.to(tl.float32)
        dweight = tl.zeros([BLOCK_N], dtype=tl.float32)
        dbias = tl.zeros([BLOCK_N], dtype=tl.float32)

        first = program * rows_per_program
        for row in range(first, tl.minimum(first + rows_per_program, n_rows)):
            batch = row // seq
            pos = row % seq
            h = tl.load(
                x_ptr + batch * stride_x_b + pos * stride_x_s + cols * stride_x_n,
                mask=col_ok,
                other=0.0,
            ).to(tl.float32)
            if HAS_RESIDUAL:
                h += tl.load(
                    res_ptr + batch * stride_res_b + pos * stride_res_s + cols * stride_res_n,
                    mask=col_ok,
                    other=0.0,
                ).to(tl.float32)
            dy = tl.load(
                dy_ptr + batch * stride_dy_b + pos * stride_dy_s + cols * stride_dy_n,
                mask=col_ok,
                other=0.0,
            ).to(tl.float32)
            mean = tl.load(mean_ptr + row)
            rstd = tl.load(rstd_ptr + row)

            h_hat = tl.where(col_ok, (h - mean) * rstd, 0.0)
            g = dy * weight
            # dh = rstd * (g - mean(g) - h_hat * mean(g * h_hat)); pad lanes have g = 0.
            mean_g = tl.sum(g, axis=0) / width
            mean_gh = tl.sum(g * h_hat, axis=0) / width
            dh = (g - mean_g - h_hat * mean_gh) * rstd
            tl.store(dh_ptr + row * width + cols, dh.to(dh_ptr.dtype.element_ty), mask=col_ok)
            if PARAM_GRADS:
                dweight += dy * h_hat
                dbias += dy

        if PARAM_GRADS:
            tl.store(dweight_part_ptr + program * width + cols, dweight, mask=col_ok)
            tl.store(dbias_part_ptr + program * width + cols, dbias, mask=col_ok)


else:  # only the torch reference is available
    _add_layer_norm_fwd_kernel = _add_layer_norm_bwd_kernel = None


# ---------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------


def _check_layer_norm_inputs(x, residual, weight, bias) -> int:
    """Validate shapes and dtypes; return the normalised width."""
    op = "add_layer_norm"
    check_float(op, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one axis")
    width = x.shape[-1]
    if residual is not None:
        check_float(op, "residual", residual)
        if residual.shape != x.shape:
            raise ValueError(
                f"{op}: residual shape {tuple(residual.shape)} differs from x shape "
                f"{tuple(x.shape)}"
            )
        if residual.dtype != x.dtype:
            raise TypeError(f"{op}: residual dtype {residual.dtype} differs from x {x.dtype}")
    for name, param in (("weight", weight), ("bias", bias)):
        check_float(op, name, param)
        if tuple(param.shape) != (width,):
            raise ValueError(f"{op}: {name} must be ({width},), got {tuple(param.shape)}")
    if width > MAX_WIDTH:
        raise ValueError(f"{op}: width {width} exceeds the kernel's limit of {MAX_WIDTH}")
    return width


def _num_warps(block: int) -> int:
    return 4 if block <= 2048 else 8


def add_layer_norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    *,
    store_stats: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the forward kernel; return y and, if asked, the fp32 row means and 1/std."""
    width = _check_layer_norm_inputs(x, residual, weight, bias)
    check_launchable(_add_layer_norm_fwd_kernel, "add_layer_norm", x, residual, weight, bias)
    x3 = as_rows_3d(x)
    res3 = as_rows_3d(residual) if residual is not None else x3
    n_rows = x3.shape[0] * x3.shape[1]

    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    mean = rstd = None
    if store_stats:
        mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if y.numel() == 0:
        return y, mean, rstd

    block = next_power_of_2(width)
    _add_layer_norm_fwd_kernel[(n_rows,)](
        x3, res3, weight, bias, y,
        mean if mean is not None else y, rstd if rstd is not None else y,
        x3.stride(0), x3.stride(1), x3.stride(2),
        res3.stride(0), res3.stride(1), res3.stride(2),
        weight.stride(0), bias.stride(0),
        x3.shape[1], width, eps,
        HAS_RESIDUAL=residual is not None, STORE_STATS=store_stats, BLOCK_N=block,
        num_warps=_num_warps(block),
    )
    return y, mean, rstd


def add_layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    *,
    param_grads: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward kernel; return (d(x + residual), dweight, dbias).

    The input gradient serves x and the residual alike; the parameter gradients are fp32,
    or None unless ``param_grads``.
    """
    width = x.shape[-1]
    if dy.shape != x.shape:
        raise ValueError(
            f"add_layer_norm backward: grad_output shape {tuple(dy.shape)} differs from "
            f"{tuple(x.shape)}"
        )
    check_launchable(_add_layer_norm_bwd_kernel, "add_layer_norm backward", dy, x, weight)
    x3 = as_rows_3d(x)
    dy3 = as_rows_3d(dy)
    res3 = as_rows_3d(residual) if residual is not None else x3
    n_rows = x3.shape[0] * x3.shape[1]

    dh = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if dh.numel() == 0:
        zeros = torch.zeros(width, device=x.device) if param_grads else None
        return dh, zeros, zeros
    n_programs = num_programs_for_rows(n_rows, x.device)
    rows_per_program = triton.cdiv(n_rows, n_programs)
    n_programs = triton.cdiv(n_rows, rows_per_program)
    dweight_part = dbias_part = dh
    if param_grads:
        dweight_part = torch.empty(n_programs, width, dtype=torch.float32, device=x.device)
        dbias_part = torch.empty(n_programs, width, dtype=torch.float32, device=x.device)

    block = next_power_of_2(width)
    _add_layer_norm_bwd_kernel[(n_programs,)](
        dy3, x3, res3, weight, mean, rstd, dh, dweight_part, dbias_part,
        dy3.stride(0), dy3.stride(1), dy3.stride(2),
        x3.stride(0), x3.stride(1), x3.stride(2),
        res3.stride(0), res3.stride(1), res3.stride(2),
        weight.stride(0),
        n_rows, x3.shape[1], width, rows_per_program,
        HAS_RESIDUAL=residual is not None, PARAM_GRADS=param_grads, BLOCK_N=block,
        num_warps=_num_warps(block),
    )
    if not param_grads:
        return dh, None, None
    return dh, dweight_part.sum(0), dbias_part.sum(0)


# ---------------------------------------------------------------------------------------
# PyTorch reference
# ---------------------------------------------------------------------------------------


def add_layer_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Reference: add the residual (if any), then LayerNorm over the last axis."""
    h = x if residual is None else x + residual
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps)


# ---------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------


class AddLayerNormFunction(torch.autograd.Function):
    """Triton residual + LayerNorm with its backward."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps):
        """Run the forward kernel, keeping the fp32 row statistics for backward."""
        y, mean, rstd = add_layer_norm_fwd(x, residual, weight, bias, eps, store_stats=True)
        ctx.save_for_backward(x, residual, weight, mean, rstd)
        ctx.bias_dtype = bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        """Gradients of x, residual, weight and bias (None where not needed)."""
        x, residual, weight, mean, rstd = ctx.saved_tensors
        need_x, need_res, need_weight, need_bias = ctx.needs_input_grad[:4]
        dh, dweight, dbias = add_layer_norm_bwd(
            dy, x, residual, weight, mean, rstd, param_grads=need_weight or need_bias
        )
        dx = dh if need_x else None
        dres = dh if need_res and residual is not None else None
        dweight = dweight.to(weight.dtype) if need_weight else None
        dbias = dbias.to(ctx.bias_dtype) if need_bias else None
        return dx, dres, dweight, dbias, None


def add_layer_norm_triton(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """The triton backend: differentiable when any input needs a gradient."""
    inputs = (x, residual, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return AddLayerNormFunction.apply(x, residual, weight, bias, eps)
    y, _, _ = add_layer_norm_fwd(x, residual, weight, bias, eps)
    return y
