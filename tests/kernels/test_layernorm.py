"""Triton residual + LayerNorm against the PyTorch reference: output and four gradients."""

from __future__ import annotations

import importlib

import pytest
import torch

from tests.kernels.numerics import assert_close, assert_within_torch_error

ln = importlib.import_module("distilbert.kernels.layernorm")

# (batch, seq, width): one row, odd row counts, widths that are not powers of two.
SHAPES = {
    "one-row-384": (1, 1, 384),
    "odd-768": (2, 7, 768),
    "odd-384": (3, 5, 384),
    "rows-1024": (2, 3, 1024),
    "narrow-100": (1, 4, 100),
}
LOW_PRECISION = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
NAMES = ("dx", "dresidual", "dweight", "dbias")


def make_inputs(batch, seq, width, dtype=torch.float32, seed=0, residual=True):
    """x, residual (or None), weight near 1 and bias near 0, with a shifted mean."""
    generator = torch.Generator().manual_seed(seed)
    x = 2.0 + torch.randn(batch, seq, width, generator=generator)
    res = torch.randn(batch, seq, width, generator=generator) if residual else None
    weight = 1.0 + 0.2 * torch.randn(width, generator=generator)
    bias = 0.2 * torch.randn(width, generator=generator)
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(x), cast(res), cast(weight), cast(bias)


def run(op, inputs, eps, upstream):
    """Output and the gradients of every input that is a tensor."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    out = op(*leaves, eps)
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(out, wanted, upstream))
    return out, [None if t is None else next(grads) for t in leaves]


def to(device, tensors):
    return [None if t is None else t.to(device) for t in tensors]


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_fp32_matches_reference(device, shape, eps):
    """Output and dx, dresidual, dweight, dbias agree at fp32 tolerance."""
    inputs = make_inputs(*shape)
    upstream = torch.randn(shape)
    ref_out, ref_grads = run(ln.add_layer_norm_ref, inputs, eps, upstream)
    out, grads = run(ln.add_layer_norm_triton, to(device, inputs), eps, upstream.to(device))
    assert_close("output", out, ref_out)
    for name, got, expected in zip(NAMES, grads, ref_grads):
        assert_close(name, got, expected)


def test_without_residual(device):
    """residual=None normalises x alone; gradients of x and the parameters still agree."""
    inputs = make_inputs(2, 7, 384, residual=False)
    upstream = torch.randn(2, 7, 384)
    ref_out, ref_grads = run(ln.add_layer_norm_ref, inputs, 1e-12, upstream)
    out, grads = run(ln.add_layer_norm_triton, to(device, inputs), 1e-12, upstream.to(device))
    assert_close("output", out, ref_out)
    for name, got, expected in zip(NAMES, grads, ref_grads):
        if expected is not None:
            assert_close(name, got, expected)


def test_strided_inputs(device):
    """A transposed x, an expanded residual (stride 0) and a strided upstream gradient."""
    batch, seq, width = 3, 5, 384
    _, _, weight, bias = make_inputs(batch, seq, width, seed=1)
    x = torch.randn(seq, batch, width).transpose(0, 1)
    res = torch.randn(1, seq, width).expand(batch, seq, width)
    upstream = torch.randn(batch, seq, 2 * width)[..., ::2]
    inputs = (x, res, weight, bias)
    ref_out, ref_grads = run(ln.add_layer_norm_ref, inputs, 1e-12, upstream)
    out, grads = run(ln.add_layer_norm_triton, to(device, inputs), 1e-12, upstream.to(device))
    assert_close("output", out, ref_out)
    for name, got, expected in zip(NAMES, grads, ref_grads):
        assert_close(name, got, expected)


def test_eps_used_exactly(device):
    """Rows whose variance is of the order of eps: the result depends on eps, exactly."""
    x = 1e-6 * torch.randn(2, 3, 768)
    weight, bias = torch.ones(768), torch.zeros(768)
    small = ln.add_layer_norm_triton(x.to(device), None, weight.to(device), bias.to(device), 1e-12)
    large = ln.add_layer_norm_triton(x.to(device), None, weight.to(device), bias.to(device), 1e-10)
    assert_close("eps 1e-12", small, ln.add_layer_norm_ref(x, None, weight, bias, 1e-12))
    assert_close("eps 1e-10", large, ln.add_layer_norm_ref(x, None, weight, bias, 1e-10))
    assert (small - large.to(small.device)).abs().max() > 0.1


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", ["odd-768", "narrow-100"])
def test_low_precision_within_torch_error(device, shape, dtype):
    """fp16/bf16 output and gradients err at most twice as much as PyTorch's own."""
    inputs = to(device, make_inputs(*SHAPES[shape], dtype=dtype, seed=2))
    upstream = torch.randn(SHAPES[shape]).to(dtype).to(device)
    as_fp32 = [t.float() for t in inputs]
    ref_out, ref_grads = run(ln.add_layer_norm_ref, as_fp32, 1e-12, upstream.float())
    low_out, low_grads = run(ln.add_layer_norm_ref, inputs, 1e-12, upstream)
    out, grads = run(ln.add_layer_norm_triton, inputs, 1e-12, upstream)
    assert out.dtype == dtype
    assert_within_torch_error("output", out, low_out, ref_out, dtype)
    for name, got, low, ref in zip(NAMES, grads, low_grads, ref_grads):
        assert_within_torch_error(name, got, low, ref, dtype)


def test_no_statistics_without_grad(device):
    """Forward-only calls neither save statistics nor build a graph."""
    x, res, weight, bias = to(device, make_inputs(1, 3, 384, seed=3))
    y, mean, rstd = ln.add_layer_norm_fwd(x, res, weight, bias, 1e-12)
    assert mean is None and rstd is None
    with torch.no_grad():
        out = ln.add_layer_norm_triton(x, res, weight.requires_grad_(True), bias, 1e-12)
    assert out.grad_fn is None
    assert_close("output", out, y)


def test_bad_inputs_are_refused():
    """Shape and dtype mismatches are named in the error."""
    x, res, weight, bias = make_inputs(1, 3, 384)
    with pytest.raises(ValueError, match="residual shape"):
        ln.add_layer_norm_fwd(x, res[:, :2], weight, bias, 1e-12)
    with pytest.raises(ValueError, match="weight must be \\(384,\\)"):
        ln.add_layer_norm_fwd(x, res, weight[:-1], bias, 1e-12)
    with pytest.raises(TypeError, match="residual dtype"):
        ln.add_layer_norm_fwd(x, res.half(), weight, bias, 1e-12)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        ln.add_layer_norm_fwd(x.double(), None, weight, bias, 1e-12)


def test_reference_gradcheck():
    """The reference op's autograd is right (float64 finite differences)."""
    inputs = [t.double().requires_grad_(True) for t in make_inputs(2, 3, 6, seed=4)]
    assert torch.autograd.gradcheck(lambda *t: ln.add_layer_norm_ref(*t, 1e-5), inputs)
