"""Multi-head self-attention over a fused QKV projection.

Input layout: ``qkv`` is the output of one fused projection, shape (batch, seq, 3 * dim),
last axis ordered [q | k | v], each part split into ``n_heads`` heads of ``dim // n_heads``.
Output layout: (batch, seq, dim), heads side by side, ready for the output projection.

``key_mask`` is a (batch, seq) tensor, non-zero for real tokens, in any layout (right-,
left-padded or scattered). Padding keys get the dtype's most negative finite score, so a
query row with no real key averages all values uniformly and stays finite, as Hugging Face's
eager attention does.

Three layers, as in every kernel module here: the Triton kernels (``_attention_*_kernel``),
host launchers that check inputs and pick block sizes (``attention_fwd``,
``attention_bwd``), and the PyTorch references (``attention_ref``, ``attention_torch``).
``attention_triton`` ties the launchers together behind ``torch.autograd.Function``.

Numerics of the Triton path: Q, K, V are loaded in their storage dtype, scores, softmax
statistics and accumulators are fp32 (fp32 inputs multiply in full IEEE precision, not
TF32), the output is cast once on store. The softmax runs in base 2 (scale folded with
log2(e)); the forward saves one fp32 log-sum-exp per (batch, head, query) for backward,
only when a gradient is needed. Backward recomputes the probabilities block by block: one
kernel for dQ (which also forms rowsum(dO * O)), one for dK and dV; no atomics.

Rows of a batch element whose mask has no real key at all: the kernels give every key of
that element weight 1 / seq, the uniform average the references produce. In that case the
output does not depend on Q or K, so dQ and dK are exactly 0 there; the references'
autograd instead differentiates through the saturated mask bias and reports a non-zero dQ
and dK for those rows (dV agrees).

Limits: head dims 32, 64 and 128 only; self-attention only (one sequence length); no
dropout, no causal mask.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from distilbert.kernels._triton import (
    HAS_TRITON,
    check_float,
    check_launchable,
    next_power_of_2,
    tl,
    triton,
)

logger = logging.getLogger(__name__)

HEAD_DIMS = (32, 64, 128)
LOG2_E = 1.4426950408889634

# ---------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _batch_has_real_key(
        mask_ptr,  # (batch, seq) key mask, non-zero for real keys
        batch,
        stride_mask_b,
        stride_mask_s,
        seq,
        BLOCK_N: tl.constexpr,
    ):
        """True when the mask row of ``batch`` has at least one real key."""
        offs_n = tl.arange(0, BLOCK_N)
        counts = tl.zeros([BLOCK_N], dtype=tl.int32)
        for start in range(0, seq, BLOCK_N):
            keys = start + offs_n
            flags = tl.load(
                mask_ptr + batch * stride_mask_b + keys * stride_mask_s,
                mask=keys < seq,
                other=0,
            )
            counts += (flags != 0).to(tl.int32)
        return tl.sum(counts, axis=0) > 0

    @triton.jit
    def _key_is_real(
        mask_ptr,  # (batch, seq) key mask, non-zero for real keys
        batch,
        keys,  # (BLOCK_N,) key positions
        stride_mask_b,
        stride_mask_s,
        seq,
        has_real_key,
        HAS_MASK: tl.constexpr,
    ):
        """Which of ``keys`` take part: inside the sequence, and real unless none is."""
        inside = keys < seq
        if HAS_MASK:
            flags = tl.load(
                mask_ptr + batch * stride_mask_b + keys * stride_mask_s, mask=inside, other=0
            )
            # (a | b) spelled as a sum: the interpreter turns bool | scalar-bool into int32.
            votes = (flags != 0).to(tl.int32) + (has_real_key == 0).to(tl.int32)
            inside = inside & (votes > 0)
        return inside

    @triton.jit
    def _attention_fwd_kernel(
        qkv_ptr,  # (batch, seq, 3 * dim) fused projection, [q | k | v], heads in each part
        mask_ptr,  # (batch, seq) key mask, non-zero for real keys; read only if HAS_MASK
        out_ptr,  # (batch, seq, dim) output, heads side by side, last axis contiguous
        lse_ptr,  # (batch, heads, seq) fp32 log2-sum-exp2 of scaled scores; if STORE_LSE
        stride_qkv_b,
        stride_qkv_s,
        stride_qkv_d,
        stride_mask_b,
        stride_mask_s,
        stride_out_b,
        stride_out_s,
        stride_lse_b,
        stride_lse_h,
        seq,
        n_heads,
        dim,
        scale_log2,  # softmax scale * log2(e)
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HAS_MASK: tl.constexpr,
        STORE_LSE: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """One block of BLOCK_M queries of one (batch, head), online softmax over keys."""
        batch_head = tl.program_id(0).to(tl.int64)
        block_m = tl.program_id(1).to(tl.int64)
        batch = batch_head // n_heads
        head = batch_head % n_heads

        offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        head_cols = head * HEAD_DIM + tl.arange(0, HEAD_DIM)
        row_ok = offs_m < seq
        qkv_batch = qkv_ptr + batch * stride_qkv_b

        q = tl.load(
            qkv_batch + offs_m[:, None] * stride_qkv_s + head_cols[None, :] * stride_qkv_d,
            mask=row_ok[:, None],
            other=0.0,
        )

        # A batch element without any real key attends uniformly to all of its keys:
        # every score becomes 0 (scale 0) and no key is masked.
        has_real_key = True
        if HAS_MASK:
            has_real_key = _batch_has_real_key(
                mask_ptr, batch, stride_mask_b, stride_mask_s, seq, BLOCK_N
            )
            scale_log2 = tl.where(has_real_key, scale_log2, 0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        for start in range(0, seq, BLOCK_N):
            keys = start + offs_n
            key_ok = _key_is_real(
                mask_ptr, batch, keys, stride_mask_b, stride_mask_s, seq, has_real_key,
                HAS_MASK,
            )
            key_rows = qkv_batch + keys[None, :] * stride_qkv_s
            k_t = tl.load(
                key_rows + (dim + head_cols[:, None]) * stride_qkv_d,
                mask=key_ok[None, :],
                other=0.0,
            )
            v = tl.load(
                qkv_batch + keys[:, None] * stride_qkv_s
                + (2 * dim + head_cols[None, :]) * stride_qkv_d,
                mask=key_ok[:, None],
                other=0.0,
            )

            scores = tl.dot(q, k_t, input_precision=DOT_PRECISION) * scale_log2
            scores = tl.where(key_ok[None, :], scores, float("-inf"))

            # Rows that have seen only masked keys so far keep a -inf maximum; shift them
            # by 0 instead so that exp2 gives 0 rather than NaN.
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(scores - m_shift[:, None])
            alpha = tl.exp2(m_i - m_shift)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(
                p.to(v.dtype), v, input_precision=DOT_PRECISION
            )
            m_i = m_new

        # Every row has at least one key with a finite score, so l_i > 0 here.
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + batch * stride_out_b + offs_m[:, None] * stride_out_s + head_cols[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )
        if STORE_LSE:
            tl.store(
                lse_ptr + batch * stride_lse_b + head * stride_lse_h + offs_m,
                m_i + tl.log2(l_i),
                mask=row_ok,
            )

    @triton.jit
    def _attention_bwd_dq_kernel(
        qkv_ptr,  # (batch, seq, 3 * dim) fused projection saved by the forward
        mask_ptr,  # (batch, seq) key mask; read only if HAS_MASK
        out_ptr,  # (batch, seq, dim) forward output, last axis contiguous
        dout_ptr,  # (batch, seq, dim) gradient of the output, any strides
        lse_ptr,  # (batch, heads, seq) fp32 log-sum-exp saved by the forward
        delta_ptr,  # (batch, heads, seq) fp32, written here: rowsum(dO * O)
        dqkv_ptr,  # (batch, seq, 3 * dim) gradient of qkv; this kernel fills the q part
        stride_qkv_b,
        stride_qkv_s,
        stride_qkv_d,
        stride_mask_b,
        stride_mask_s,
        stride_out_b,
        stride_out_s,
        stride_dout_b,
        stride_dout_s,
        stride_dout_d,
        stride_lse_b,
        stride_lse_h,
        stride_dqkv_b,
        stride_dqkv_s,
        seq,
        n_heads,
        dim,
        scale,
        scale_log2,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HAS_MASK: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """dQ for one block of queries of one (batch, head), looping over key blocks."""
        batch_head = tl.program_id(0).to(tl.int64)
        block_m = tl.program_id(1).to(tl.int64)
        batch = batch_head // n_heads
        head = batch_head % n_heads

        offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        head_cols = head * HEAD_DIM + tl.arange(0, HEAD_DIM)
        row_ok = offs_m < seq
        qkv_batch = qkv_ptr + batch * stride_qkv_b

        q = tl.load(
            qkv_batch + offs_m[:, None] * stride_qkv_s + head_cols[None, :] * stride_qkv_d,
            mask=row_ok[:, None],
            other=0.0,
        )
        dout = tl.load(
            dout_ptr + batch * stride_dout_b + offs_m[:, None] * stride_dout_s
            + head_cols[None, :] * stride_dout_d,
            mask=row_ok[:, None],
            other=0.0,
        )
        out = tl.load(
            out_ptr + batch * stride_out_b + offs_m[:, None] * stride_out_s + head_cols[None, :],
            mask=row_ok[:, None],
            other=0.0,
        )
        stats = batch * stride_lse_b + head * stride_lse_h + offs_m
        delta = tl.sum(dout.to(tl.float32) * out.to(tl.float32), axis=1)
        tl.store(delta_ptr + stats, delta, mask=row_ok)
        lse = tl.load(lse_ptr + stats, mask=row_ok, other=0.0)

        has_real_key = True
        if HAS_MASK:
            has_real_key = _batch_has_real_key(
                mask_ptr, batch, stride_mask_b, stride_mask_s, seq, BLOCK_N
            )
            scale_log2 = tl.where(has_real_key, scale_log2, 0.0)
            scale = tl.where(has_real_key, scale, 0.0)

        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        for start in range(0, seq, BLOCK_N):
            keys = start + offs_n
            key_ok = _key_is_real(
                mask_ptr, batch, keys, stride_mask_b, stride_mask_s, seq, has_real_key,
                HAS_MASK,
            )
            key_rows = qkv_batch + keys[:, None] * stride_qkv_s
            k = tl.load(
                key_rows + (dim + head_cols[None, :]) * stride_qkv_d,
                mask=key_ok[:, None],
                other=0.0,
            )
            v = tl.load(
                key_rows + (2 * dim + head_cols[None, :]) * stride_qkv_d,
                mask=key_ok[:, None],
                other=0.0,
            )

            scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
            p = tl.exp2(scores - lse[:, None])
            p = tl.where(key_ok[None, :] & row_ok[:, None], p, 0.0)
            dp = tl.dot(dout, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

        dq = dq * scale
        tl.store(
            dqkv_ptr + batch * stride_dqkv_b + offs_m[:, None] * stride_dqkv_s
            + head_cols[None, :],
            dq.to(dqkv_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )

    @triton.jit
    def _attention_bwd_kernel(
        qkv_ptr,  # (batch, seq, 3 * dim) fused projection saved by the forward
        mask_ptr,  # (batch, seq) key mask; read only if HAS_MASK
        dout_ptr,  # (batch, seq, dim) gradient of the output, any strides
        lse_ptr,  # (batch, heads, seq) fp32 log-sum-exp saved by the forward
        delta_ptr,  # (batch, heads, seq) fp32 rowsum(dO * O) from the dQ kernel
        dqkv_ptr,  # (batch, seq, 3 * dim) gradient of qkv; this kernel fills k and v parts
        stride_qkv_b,
        stride_qkv_s,
        stride_qkv_d,
        stride_mask_b,
        stride_mask_s,
        stride_dout_b,
        stride_dout_s,
        stride_dout_d,
        stride_lse_b,
        stride_lse_h,
        stride_dqkv_b,
        stride_dqkv_s,
        seq,
        n_heads,
        dim,
        scale,
        scale_log2,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HAS_MASK: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """dK and dV for one block of keys of one (batch, head), looping over queries."""
        batch_head = tl.program_id(0).to(tl.int64)
        block_n = tl.program_id(1).to(tl.int64)
        batch = batch_head // n_heads
        head = batch_head % n_heads

        keys = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        head_cols = head * HEAD_DIM + tl.arange(0, HEAD_DIM)
        qkv_batch = qkv_ptr + batch * stride_qkv_b

        has_real_key = True
        if HAS_MASK:
            has_real_key = _batch_has_real_key(
                mask_ptr, batch, stride_mask_b, stride_mask_s, seq, BLOCK_N
            )
            scale_log2 = tl.where(has_real_key, scale_log2, 0.0)
            scale = tl.where(has_real_key, scale, 0.0)
        key_ok = _key_is_real(
            mask_ptr, batch, keys, stride_mask_b, stride_mask_s, seq, has_real_key, HAS_MASK
        )
        key_in_seq = keys < seq

        key_rows = qkv_batch + keys[:, None] * stride_qkv_s
        k = tl.load(
            key_rows + (dim + head_cols[None, :]) * stride_qkv_d,
            mask=key_ok[:, None],
            other=0.0,
        )
        v = tl.load(
            key_rows + (2 * dim + head_cols[None, :]) * stride_qkv_d,
            mask=key_ok[:, None],
            other=0.0,
        )

        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        stats_base = batch * stride_lse_b + head * stride_lse_h
        for start in range(0, seq, BLOCK_M):
            rows = start + offs_m
            row_ok = rows < seq
            q = tl.load(
                qkv_batch + rows[:, None] * stride_qkv_s + head_cols[None, :] * stride_qkv_d,
                mask=row_ok[:, None],
                other=0.0,
            )
            dout = tl.load(
                dout_ptr + batch * stride_dout_b + rows[:, None] * stride_dout_s
                + head_cols[None, :] * stride_dout_d,
                mask=row_ok[:, None],
                other=0.0,
            )
            lse = tl.load(lse_ptr + stats_base + rows, mask=row_ok, other=0.0)
            delta = tl.load(delta_ptr + stats_base + rows, mask=row_ok, other=0.0)

            scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
            p = tl.exp2(scores - lse[:, None])
            p = tl.where(key_ok[None, :] & row_ok[:, None], p, 0.0)
            dv += tl.dot(tl.trans(p.to(dout.dtype)), dout, input_precision=DOT_PRECISION)
            dp = tl.dot(dout, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)

        dk = dk * scale
        dqkv_rows = dqkv_ptr + batch * stride_dqkv_b + keys[:, None] * stride_dqkv_s
        tl.store(
            dqkv_rows + dim + head_cols[None, :],
            dk.to(dqkv_ptr.dtype.element_ty),
            mask=key_in_seq[:, None],
        )
        tl.store(
            dqkv_rows + 2 * dim + head_cols[None, :],
            dv.to(dqkv_ptr.dtype.element_ty),
            mask=key_in_seq[:, None],
        )


else:  # only the torch reference is available
    _attention_fwd_kernel = _attention_bwd_dq_kernel = _attention_bwd_kernel = None


# ---------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------


def _check_attention_inputs(
    qkv: torch.Tensor, key_mask: torch.Tensor | None, n_heads: int
) -> tuple[int, int, int, int]:
    """Validate shapes and dtypes; return (batch, seq, dim, head_dim)."""
    op = "attention"
    if qkv.dim() != 3:
        raise ValueError(f"{op}: qkv must be (batch, seq, 3 * dim), got {tuple(qkv.shape)}")
    check_float(op, "qkv", qkv)
    batch, seq, width = qkv.shape
    if n_heads <= 0 or width % (3 * n_heads) != 0:
        raise ValueError(f"{op}: qkv width {width} is not divisible by 3 * n_heads ({n_heads})")
    head_dim = width // (3 * n_heads)
    if head_dim not in HEAD_DIMS:
        raise ValueError(
            f"{op}: head dim {head_dim} is not supported by the Triton kernel "
            f"(supported: {', '.join(map(str, HEAD_DIMS))}); use the torch backend"
        )
    if key_mask is not None and tuple(key_mask.shape) != (batch, seq):
        raise ValueError(
            f"{op}: key_mask must be (batch, seq) = {(batch, seq)}, got {tuple(key_mask.shape)}"
        )
    return batch, seq, width // 3, head_dim


def _block_candidates(
    seq: int,
    head_dim: int,
    dtype: torch.dtype,
    backward: bool,
    block_m: int | None,
    block_n: int | None,
) -> list[tuple[int, int]]:
    """Block sizes to try, largest first; explicit sizes are the only candidate.

    64 x 64 tiles for 16-bit heads of up to 64, smaller ones where the tiles of Q, K, V
    (and dO in backward) grow with the head dim or fp32; never above the padded length.
    The smaller candidates are used only if a GPU lacks the shared memory for the first.
    """
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if value is not None and (value < 16 or value & (value - 1)):
            raise ValueError(f"attention: {name} must be a power of two >= 16, got {value}")
    if block_m is not None or block_n is not None:
        fit = max(16, next_power_of_2(seq))
        return [(block_m or min(64, fit), block_n or min(64, fit))]

    wide = head_dim * dtype.itemsize  # bytes of one row of a tile
    first = 64 if wide <= 128 else 32
    sizes = [(64, first)] if not backward else [(first, first)]
    while sizes[-1] != (16, 16):
        bm, bn = sizes[-1]
        sizes.append((max(16, bm // 2), max(16, bn // 2)))
    fit = max(16, next_power_of_2(seq))
    clipped = [(min(bm, fit), min(bn, fit)) for bm, bn in sizes]
    return list(dict.fromkeys(clipped))


_chosen_blocks: dict[tuple, tuple[int, int]] = {}


def _launch(kernel, grid_of, args, candidates, cache_key, **constexprs) -> None:
    """Launch ``kernel`` with the first block sizes that fit the device; remember them."""
    cache_key = (*cache_key, tuple(candidates))
    known = _chosen_blocks.get(cache_key)
    if known is not None:
        candidates = [known]
    for index, (block_m, block_n) in enumerate(candidates):
        try:
            kernel[grid_of(block_m, block_n)](
                *args, BLOCK_M=block_m, BLOCK_N=block_n, **constexprs
            )
        except triton.runtime.errors.OutOfResources as err:
            if index + 1 == len(candidates):
                raise
            logger.info("attention: blocks %dx%d do not fit (%s); trying smaller ones",
                        block_m, block_n, err)
            continue
        _chosen_blocks[cache_key] = (block_m, block_n)
        return


def _mask_args(key_mask: torch.Tensor | None, qkv: torch.Tensor):
    """The mask pointer and strides to pass (qkv itself as a never-read placeholder)."""
    if key_mask is None:
        return qkv, 0, 0
    return key_mask, key_mask.stride(0), key_mask.stride(1)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs must not be rounded to TF32, or fp32 results miss 1e-5.
    return "ieee" if dtype == torch.float32 else "tf32"


def attention_fwd(
    qkv: torch.Tensor,
    key_mask: torch.Tensor | None,
    n_heads: int,
    scale: float | None = None,
    *,
    need_lse: bool = False,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the forward kernel; return the (batch, seq, dim) output and, if asked, the lse.

    ``block_m`` / ``block_n`` override the block sizes (powers of two >= 16).
    """
    batch, seq, dim, head_dim = _check_attention_inputs(qkv, key_mask, n_heads)
    candidates = _block_candidates(seq, head_dim, qkv.dtype, False, block_m, block_n)
    check_launchable(_attention_fwd_kernel, "attention", qkv, key_mask)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)

    out = torch.empty(batch, seq, dim, dtype=qkv.dtype, device=qkv.device)
    lse = None
    if need_lse:
        lse = torch.empty(batch, n_heads, seq, dtype=torch.float32, device=qkv.device)
    if out.numel() == 0:
        return out, lse

    mask_arg, stride_mask_b, stride_mask_s = _mask_args(key_mask, qkv)
    args = (
        qkv, mask_arg, out, lse if lse is not None else out,
        qkv.stride(0), qkv.stride(1), qkv.stride(2),
        stride_mask_b, stride_mask_s,
        out.stride(0), out.stride(1),
        n_heads * seq, seq,
        seq, n_heads, dim, scale * LOG2_E,
    )
    _launch(
        _attention_fwd_kernel,
        lambda bm, bn: (batch * n_heads, triton.cdiv(seq, bm)),
        args, candidates, ("fwd", qkv.device, qkv.dtype, head_dim),
        HEAD_DIM=head_dim, HAS_MASK=key_mask is not None, STORE_LSE=lse is not None,
        DOT_PRECISION=_dot_precision(qkv.dtype), num_warps=4, num_stages=2,
    )
    return out, lse


def attention_bwd(
    dout: torch.Tensor,
    qkv: torch.Tensor,
    key_mask: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    n_heads: int,
    scale: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Launch the backward kernels; return the (batch, seq, 3 * dim) gradient of ``qkv``."""
    batch, seq, dim, head_dim = _check_attention_inputs(qkv, key_mask, n_heads)
    if tuple(dout.shape) != (batch, seq, dim):
        raise ValueError(
            f"attention backward: grad_output must be {(batch, seq, dim)}, got "
            f"{tuple(dout.shape)}"
        )
    candidates = _block_candidates(seq, head_dim, qkv.dtype, True, block_m, block_n)
    check_launchable(_attention_bwd_kernel, "attention backward", dout, qkv, key_mask)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)

    dqkv = torch.empty(batch, seq, 3 * dim, dtype=qkv.dtype, device=qkv.device)
    if dqkv.numel() == 0:
        return dqkv
    delta = torch.empty_like(lse)
    mask_arg, stride_mask_b, stride_mask_s = _mask_args(key_mask, qkv)
    constexprs = {
        "HEAD_DIM": head_dim, "HAS_MASK": key_mask is not None,
        "DOT_PRECISION": _dot_precision(qkv.dtype), "num_warps": 4, "num_stages": 2,
    }

    # dQ first: it also writes delta = rowsum(dO * O), which the dK/dV kernel reads.
    dq_args = (
        qkv, mask_arg, out, dout, lse, delta, dqkv,
        qkv.stride(0), qkv.stride(1), qkv.stride(2),
        stride_mask_b, stride_mask_s,
        out.stride(0), out.stride(1),
        dout.stride(0), dout.stride(1), dout.stride(2),
        lse.stride(0), lse.stride(1),
        dqkv.stride(0), dqkv.stride(1),
        seq, n_heads, dim, scale, scale * LOG2_E,
    )
    _launch(
        _attention_bwd_dq_kernel,
        lambda bm, bn: (batch * n_heads, triton.cdiv(seq, bm)),
        dq_args, candidates, ("bwd_dq", qkv.device, qkv.dtype, head_dim), **constexprs,
    )
    dkdv_args = (
        qkv, mask_arg, dout, lse, delta, dqkv,
        qkv.stride(0), qkv.stride(1), qkv.stride(2),
        stride_mask_b, stride_mask_s,
        dout.stride(0), dout.stride(1), dout.stride(2),
        lse.stride(0), lse.stride(1),
        dqkv.stride(0), dqkv.stride(1),
        seq, n_heads, dim, scale, scale * LOG2_E,
    )
    _launch(
        _attention_bwd_kernel,
        lambda bm, bn: (batch * n_heads, triton.cdiv(seq, bn)),
        dkdv_args, candidates, ("bwd_dkdv", qkv.device, qkv.dtype, head_dim), **constexprs,
    )
    return dqkv
    delta = torch.empty_like(lse)
    mask_arg, stride_mask_b, stride_mask_s = _mask_args(key_mask, qkv)
    common = {
        "HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n,
        "HAS_MASK": key_mask is not None, "DOT_PRECISION": _dot_precision(qkv.dtype),
        "num_warps": 4, "num_stages": 2,
    }

    # dQ first: it also writes delta = rowsum(dO * O), which the dK/dV kernel reads.
    _attention_bwd_dq_kernel[(batch * n_heads, triton.cdiv(seq, block_m))](
        qkv, mask_arg, out, dout, lse, delta, dqkv,
        qkv.stride(0), qkv.stride(1), qkv.stride(2),
        stride_mask_b, stride_mask_s,
        out.stride(0), out.stride(1),
        dout.stride(0), dout.stride(1), dout.stride(2),
        lse.stride(0), lse.stride(1),
        dqkv.stride(0), dqkv.stride(1),
        seq, n_heads, dim, scale, scale * LOG2_E,
        **common,
    )
    _attention_bwd_kernel[(batch * n_heads, triton.cdiv(seq, block_n))](
        qkv, mask_arg, dout, lse, delta, dqkv,
        qkv.stride(0), qkv.stride(1), qkv.stride(2),
        stride_mask_b, stride_mask_s,
        dout.stride(0), dout.stride(1), dout.stride(2),
        lse.stride(0), lse.stride(1),
        dqkv.stride(0), dqkv.stride(1),
        seq, n_heads, dim, scale, scale * LOG2_E,
        **common,
    )
    return dqkv


# ---------------------------------------------------------------------------------------
# PyTorch references
# ---------------------------------------------------------------------------------------


def split_heads(qkv: torch.Tensor, n_heads: int):
    """Return strided (batch, heads, seq, head_dim) views of q, k and v; nothing is copied."""
    batch, seq, width = qkv.shape
    if width % (3 * n_heads) != 0:
        raise ValueError(
            f"qkv width {width} is not divisible by 3 * n_heads = {3 * n_heads}"
        )
    head_dim = width // (3 * n_heads)
    parts = qkv.view(batch, seq, 3, n_heads, head_dim)
    return (parts[:, :, i].transpose(1, 2) for i in range(3))


def mask_bias(key_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive (batch, 1, 1, seq) score bias: 0 for real keys, the dtype's minimum for pads."""
    if key_mask is None:
        return None
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    bias.masked_fill_(key_mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, head_dim) to (batch, seq, heads * head_dim).

    A view when ``out`` is laid out (batch, seq, heads, head_dim) in memory, as PyTorch's
    fused attention returns it; a copy otherwise.
    """
    return out.transpose(1, 2).flatten(2)


def attention_ref(
    qkv: torch.Tensor,
    key_mask: torch.Tensor | None,
    n_heads: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Plain softmax attention, written out step by step; the reference for every backend."""
    q, k, v = split_heads(qkv, n_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    bias = mask_bias(key_mask, scores.dtype)
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1)
    return merge_heads(torch.matmul(probs, v))


def attention_torch(
    qkv: torch.Tensor,
    key_mask: torch.Tensor | None,
    n_heads: int,
    scale: float | None = None,
) -> torch.Tensor:
    """The torch backend: PyTorch's fused scaled_dot_product_attention on strided views."""
    q, k, v = split_heads(qkv, n_heads)
    bias = mask_bias(key_mask, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return merge_heads(out)


# ---------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------


class AttentionFunction(torch.autograd.Function):
    """Triton attention forward with its recomputing backward."""

    @staticmethod
    def forward(ctx, qkv, key_mask, n_heads, scale):
        """Run the forward kernel and keep what backward recomputes from."""
        out, lse = attention_fwd(qkv, key_mask, n_heads, scale, need_lse=True)
        ctx.save_for_backward(qkv, key_mask, out, lse)
        ctx.n_heads = n_heads
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        """Gradient of qkv only; the mask, head count and scale get none."""
        qkv, key_mask, out, lse = ctx.saved_tensors
        dqkv = attention_bwd(dout, qkv, key_mask, out, lse, ctx.n_heads, ctx.scale)
        return dqkv, None, None, None


def attention_triton(
    qkv: torch.Tensor,
    key_mask: torch.Tensor | None,
    n_heads: int,
    scale: float | None = None,
) -> torch.Tensor:
    """The triton backend: differentiable when ``qkv`` needs a gradient, else forward only."""
    if torch.is_grad_enabled() and qkv.requires_grad:
        return AttentionFunction.apply(qkv, key_mask, n_heads, scale)
    out, _ = attention_fwd(qkv, key_mask, n_heads, scale)
    return out
