"""Residual add followed by LayerNorm: ``y = LayerNorm(x + residual)``.

eps is used exactly as given (DistilBERT checkpoints say 1e-12), never clamped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
