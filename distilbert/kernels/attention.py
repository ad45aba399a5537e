"""Multi-head self-attention over a fused QKV projection.

Input layout: ``qkv`` is the output of one fused projection, shape (batch, seq, 3 * dim),
last axis ordered [q | k | v], each part split into ``n_heads`` heads of ``dim // n_heads``.
Output layout: (batch, seq, dim), heads side by side, ready for the output projection.

``key_mask`` is a (batch, seq) tensor, non-zero for real tokens, in any layout (right-,
left-padded or scattered). Padding keys get the dtype's most negative finite score, so a
query row with no real key averages all values uniformly and stays finite, as Hugging Face's
eager attention does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
    """(batch, heads, seq, head_dim) to (batch, seq, heads * head_dim)."""
    batch, heads, seq, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, seq, heads * head_dim)


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
