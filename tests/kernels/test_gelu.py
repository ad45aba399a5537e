"""Triton bias + GELU against the PyTorch reference: output, dx and dbias."""

from __future__ import annotations

import importlib

import pytest
import torch

from tests.kernels.numerics import assert_close, assert_within_torch_error

gelu = importlib.import_module("distilbert.kernels.gelu")

# (batch, seq, width): one row, odd row counts, FFN widths, a width below one block.
SHAPES = {
    "one-row-384": (1, 1, 384),
    "odd-768": (2, 7, 768),
    "ffn-3072": (2, 5, 3072),
    "narrow-100": (3, 3, 100),
}
LOW_PRECISION = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]


def make_inputs(batch, seq, width, dtype=torch.float32, seed=0, with_bias=True):
    """x of order 2 (GELU's curved part and both tails) and a bias."""
    generator = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(batch, seq, width, generator=generator)
    bias = 0.5 * torch.randn(width, generator=generator) if with_bias else None
    return x.to(dtype), None if bias is None else bias.to(dtype)


def run(op, x, bias, upstream):
    """Output, dx and dbias (None without a bias)."""
    x = x.detach().clone().requires_grad_(True)
    leaves = [x]
    if bias is not None:
        bias = bias.detach().clone().requires_grad_(True)
        leaves.append(bias)
    out = op(x, bias)
    grads = torch.autograd.grad(out, leaves, upstream)
    return out, grads[0], grads[1] if bias is not None else None


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_fp32_matches_reference(device, shape, with_bias):
    """Output, dx and dbias agree at fp32 tolerance."""
    x, bias = make_inputs(*shape, with_bias=with_bias)
    upstream = torch.randn(shape)
    expected = run(gelu.bias_gelu_ref, x, bias, upstream)
    on_device = None if bias is None else bias.to(device)
    got = run(gelu.bias_gelu_triton, x.to(device), on_device, upstream.to(device))
    for name, value, reference in zip(("output", "dx", "dbias"), got, expected):
        if reference is not None:
            assert_close(name, value, reference)


def test_strided_inputs(device):
    """A transposed x, a strided bias and a stride-0 upstream gradient are read in place."""
    x = 2.0 * torch.randn(7, 2, 384).transpose(0, 1)
    bias = torch.randn(768)[::2]
    upstream = torch.randn(1, 1, 384).expand(2, 7, 384)
    expected = run(gelu.bias_gelu_ref, x, bias, upstream)
    got = run(gelu.bias_gelu_triton, x.to(device), bias.to(device), upstream.to(device))
    for name, value, reference in zip(("output", "dx", "dbias"), got, expected):
        assert_close(name, value, reference)


@pytest.mark.parametrize("shape", [(5, 384), (2, 2, 3, 100)], ids=["2d", "4d"])
def test_other_ranks(device, shape):
    """2-D and 4-D inputs keep their shape."""
    x, bias = 2.0 * torch.randn(shape), torch.randn(shape[-1])
    out = gelu.bias_gelu_triton(x.to(device), bias.to(device))
    assert out.shape == shape
    assert_close("output", out, gelu.bias_gelu_ref(x, bias))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", ["odd-768", "narrow-100"])
def test_low_precision_within_torch_error(device, shape, dtype):
    """fp16/bf16 output and gradients err at most twice as much as PyTorch's own."""
    x, bias = make_inputs(*SHAPES[shape], dtype=dtype, seed=1)
    x, bias = x.to(device), bias.to(device)
    upstream = torch.randn(SHAPES[shape]).to(dtype).to(device)
    reference = run(gelu.bias_gelu_ref, x.float(), bias.float(), upstream.float())
    low = run(gelu.bias_gelu_ref, x, bias, upstream)
    got = run(gelu.bias_gelu_triton, x, bias, upstream)
    assert got[0].dtype == dtype
    for name, value, torch_low, ref in zip(("output", "dx", "dbias"), got, low, reference):
        assert_within_torch_error(name, value, torch_low, ref, dtype)


def test_bad_inputs_are_refused():
    """A bias of the wrong width and unsupported dtypes are named in the error."""
    x, bias = make_inputs(1, 2, 384)
    with pytest.raises(ValueError, match="bias must be \\(384,\\)"):
        gelu.bias_gelu_fwd(x, bias[:100])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        gelu.bias_gelu_fwd(x.double(), None)


def test_reference_gradcheck():
    """The reference op's autograd is right (float64 finite differences)."""
    x, bias = make_inputs(2, 3, 5, dtype=torch.float64, seed=2)
    inputs = (x.requires_grad_(True), bias.requires_grad_(True))
    assert torch.autograd.gradcheck(gelu.bias_gelu_ref, inputs)
