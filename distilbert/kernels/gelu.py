"""Bias add followed by exact (erf) GELU: ``y = gelu(x + bias)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Reference: add the bias (if any), then exact erf GELU."""
    h = x if bias is None else x + bias
    return F.gelu(h)
