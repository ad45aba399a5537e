"""The fused oneDNN projections of the CPU path: when they run, and their fp32 error.

On inputs at the scale of a trained layer (outputs of order 1) they must stay within the
project's fp32 bar, 1e-5, of a float64 reference, as plain PyTorch (``F.linear`` then the
separate ops) does; GEMM libraries sum in different orders, so the two fp32 errors differ.
They must run only on the torch backend for CPU tensors under ``torch.inference_mode()``,
never under autograd or when turned off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distilbert import DistilBertModel
from distilbert.kernels import dispatch
from distilbert.kernels.onednn import onednn_available

NO_ONEDNN = "this PyTorch build has no oneDNN fused linear op"
pytestmark = pytest.mark.skipif(not onednn_available(), reason=NO_ONEDNN)

SHAPES = [(1, 1, 384, 1152), (3, 7, 384, 1536), (2, 13, 1536, 384), (4, 5, 768, 768)]
FP32_ATOL = 1e-5


def _inputs(batch, seq, width_in, width_out, seed=0):
    """Activations and weights at the scales of a trained encoder layer."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, width_in, generator=generator)
    weight = torch.randn(width_out, width_in, generator=generator) / width_in ** 0.5
    bias = torch.randn(width_out, generator=generator) * 0.1
    residual = torch.randn(batch, seq, width_out, generator=generator)
    norm_weight = 1 + 0.1 * torch.randn(width_out, generator=generator)
    norm_bias = 0.1 * torch.randn(width_out, generator=generator)
    return x, weight, bias, residual, norm_weight, norm_bias


def _ops(x, weight, bias, residual, norm_weight, norm_bias):
    """Each dispatch projection op with the float64 formula it must compute."""
    eps = 1e-12
    return {
        "linear": (lambda: dispatch.linear(x, weight, bias),
                   lambda t: F.linear(t[0], t[1], t[2])),
        "linear_gelu": (lambda: dispatch.linear_gelu(x, weight, bias),
                        lambda t: F.gelu(F.linear(t[0], t[1], t[2]))),
        "linear_add_layer_norm": (
            lambda: dispatch.linear_add_layer_norm(x, weight, bias, residual, norm_weight,
                                                   norm_bias, eps),
            lambda t: F.layer_norm(F.linear(t[0], t[1], t[2]) + t[3], (t[3].shape[-1],),
                                   t[4], t[5], eps)),
    }


@pytest.mark.parametrize("op", ["linear", "linear_gelu", "linear_add_layer_norm"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{b}x{s}x{i}x{o}" for b, s, i, o in SHAPES])
def test_fused_error_within_the_fp32_bar(op, shape):
    tensors = _inputs(*shape)
    call, formula = _ops(*tensors)[op]
    exact = formula([t.double() for t in tensors])

    with torch.inference_mode():
        fused = call()
        with dispatch.use_onednn(False):
            plain = call()

    assert fused.dtype == torch.float32 and fused.shape == exact.shape
    fused_error = (fused.double() - exact).abs().max().item()
    plain_error = (plain.double() - exact).abs().max().item()
    assert plain_error <= FP32_ATOL, f"the reference itself is off: {plain_error:.3g}"
    assert fused_error <= FP32_ATOL, f"fused {fused_error:.3g}, plain {plain_error:.3g}"


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the oneDNN calls the dispatch point makes."""
    calls = []
    for name in ("linear_onednn", "linear_add_onednn"):
        original = getattr(dispatch._onednn, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(dispatch._onednn, name, counted)
    monkeypatch.delenv(dispatch.ONEDNN_ENV_VAR, raising=False)
    return calls


def test_runs_only_in_inference_mode_on_the_torch_backend(fused_calls, monkeypatch):
    x, weight, bias, *_ = _inputs(2, 3, 384, 384)

    with torch.no_grad():
        dispatch.linear(x, weight, bias)
    assert fused_calls == []
    with torch.inference_mode():
        dispatch.linear(x, weight, bias)
        assert fused_calls == ["linear_onednn"]
        with dispatch.use_onednn(False):
            dispatch.linear_gelu(x, weight, bias)
        monkeypatch.setenv(dispatch.ONEDNN_ENV_VAR, "0")
        dispatch.linear(x, weight, bias)
        monkeypatch.setenv(dispatch.ONEDNN_ENV_VAR, "1")
        dispatch.linear(x.half(), weight.half(), bias.half())  # oneDNN path: fp32, bf16
    assert fused_calls == ["linear_onednn"]


def test_autograd_gets_plain_ops_with_gradients(fused_calls):
    x, weight, bias, residual, norm_weight, norm_bias = _inputs(2, 3, 384, 384)
    weight.requires_grad_(True)

    out = dispatch.linear_add_layer_norm(x, weight, bias, residual, norm_weight, norm_bias,
                                         1e-12)
    out.square().sum().backward()

    assert fused_calls == []
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_model_uses_every_fused_projection(fused_calls, tiny_distilbert_folder):
    model = DistilBertModel.from_pretrained(tiny_distilbert_folder)
    ids = torch.randint(1000, 30522, (2, 9))

    with torch.inference_mode():
        model(ids, torch.ones_like(ids))

    layers = model.config.n_layers
    # Per layer: qkv and lin1 (with GELU) alone; out_lin and lin2 add their residual.
    assert fused_calls.count("linear_onednn") == 2 * layers
    assert fused_calls.count("linear_add_onednn") == 2 * layers
