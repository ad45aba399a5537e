"""Tolerances and comparisons shared by the kernel tests.

fp32 results must match the fp32 reference at ``FP32_ATOL`` / ``FP32_RTOL``. Low-precision
results are held to PyTorch's own standard: computed from the same low-precision inputs,
the kernel's largest error against an fp32 reference may be at most ``LOW_PRECISION_FACTOR``
times the error of PyTorch's own low-precision computation, plus a small absolute slack.
Failures report how many elements are off and where.
"""

from __future__ import annotations

import torch

FP32_ATOL = 1e-5
FP32_RTOL = 1e-5
LOW_PRECISION_FACTOR = 2.0
LOW_PRECISION_ATOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
MAX_LISTED = 5


def _where(mask: torch.Tensor, actual: torch.Tensor, expected: torch.Tensor) -> str:
    """The first few offending indices with both values."""
    indices = mask.nonzero()[:MAX_LISTED].tolist()
    lines = [
        f"  at {tuple(i)}: got {actual[tuple(i)].item():.8g}, "
        f"expected {expected[tuple(i)].item():.8g}"
        for i in indices
    ]
    return "\n".join(lines)


def assert_close(
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
) -> None:
    """Elementwise |actual - expected| <= atol + rtol * |expected|, shapes equal, all finite."""
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    )
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert torch.isfinite(actual).all(), f"{name}: {(~torch.isfinite(actual)).sum()} non-finite"
    bad = (actual - expected).abs() > atol + rtol * expected.abs()
    if bad.any():
        worst = (actual - expected).abs().max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ "
            f"(atol {atol:g}, rtol {rtol:g}; largest error {worst:.3g})\n"
            + _where(bad, actual, expected)
        )


def assert_within_torch_error(
    name: str,
    actual: torch.Tensor,
    torch_low: torch.Tensor,
    reference: torch.Tensor,
    dtype: torch.dtype,
) -> None:
    """max|actual - reference| <= FACTOR * max|torch_low - reference| + atol(dtype).

    ``actual`` and ``torch_low`` are the kernel's and PyTorch's results from the same
    low-precision inputs; ``reference`` is PyTorch in fp32 from those inputs upcast.
    """
    assert actual.shape == reference.shape, (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(reference.shape)}"
    )
    actual = actual.detach().double().cpu()
    torch_low = torch_low.detach().double().cpu()
    reference = reference.detach().double().cpu()
    assert torch.isfinite(actual).all(), f"{name}: {(~torch.isfinite(actual)).sum()} non-finite"
    if reference.numel() == 0:
        return
    torch_error = (torch_low - reference).abs().max().item()
    bound = LOW_PRECISION_FACTOR * torch_error + LOW_PRECISION_ATOL[dtype]
    error = (actual - reference).abs()
    bad = error > bound
    if bad.any():
        raise AssertionError(
            f"{name} ({dtype}): {int(bad.sum())} of {bad.numel()} elements exceed "
            f"{LOW_PRECISION_FACTOR:g} x PyTorch's own error {torch_error:.3g} + "
            f"{LOW_PRECISION_ATOL[dtype]:g} (largest error {error.max().item():.3g})\n"
            + _where(bad, actual, reference)
        )
