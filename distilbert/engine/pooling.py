"""Sentence pooling over real tokens only, and L2 normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOLING_MODES = ("cls", "mean", "max")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, seq, dim) hidden states to (batch, dim) sentence vectors.

    All modes look at real tokens only (mask non-zero): ``cls`` takes the first real token,
    wherever padding puts it; a row with no real token pools to zeros rather than NaN or -inf.
    """
    if mode == "cls":
        first = (attention_mask != 0).int().argmax(dim=1)
        index = first[:, None, None].expand(-1, 1, hidden.shape[-1])
        empty = (attention_mask != 0).sum(dim=1) == 0
        return hidden.gather(1, index).squeeze(1).masked_fill(empty[:, None], 0.0)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        # Counts are whole numbers; clamping at 1 keeps an empty row 0 / 1 in any dtype.
        counts = mask.sum(dim=1).clamp(min=1)
        return (hidden * mask).sum(dim=1) / counts
    if mode == "max":
        filled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min)
        pooled = filled.max(dim=1).values
        empty = mask.sum(dim=1) == 0
        return pooled.masked_fill(empty, 0.0)
    raise ValueError(f"unknown pooling {mode!r}; use one of {', '.join(POOLING_MODES)}")


def l2_normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit L2 norm (a zero row stays zero)."""
    return F.normalize(vectors, p=2, dim=-1, eps=1e-12)
