"""The opt-in int8 projections: exact against their own rounding, close to float32.

``linear_int8`` must equal the same quantized values multiplied in float64 (the int32 GEMM
is exact; only the fp32 dequantization rounds), and stay within 8-bit rounding of the
float layer. A model after ``quantize_int8()`` must stay close to the float model, refuse
what it cannot run, and refuse to be exported.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from distilbert import DistilBertModel
from distilbert.kernels import dispatch
from distilbert.kernels.int8 import (
    Int8Linear,
    Int8Weight,
    int8_available,
    linear_int8,
    linear_int8_ref,
    quantize_weight,
)

NO_INT8 = "this PyTorch build has no CPU torch._int_mm"
pytestmark = pytest.mark.skipif(not int8_available(), reason=NO_INT8)

SHAPES = [(1, 1, 384, 1152), (3, 7, 384, 1536), (2, 13, 1536, 384)]
DEQUANT_ATOL = 1e-5  # int32 sums are exact; the fp32 scaling rounds at ~1e-7 relative
MIN_ROW_COSINE = 0.999  # one projection against its float layer, 8-bit inputs and weights


def _layer(width_in, width_out, seed=0):
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(width_in, width_out)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(width_out, width_in, generator=generator)
                            / width_in ** 0.5)
        linear.bias.copy_(0.1 * torch.randn(width_out, generator=generator))
    return linear


def _activations(batch, seq, width, seed=1):
    return torch.randn(batch, seq, width, generator=torch.Generator().manual_seed(seed))


def test_weight_round_trip_is_within_half_a_step():
    weight = _layer(384, 96).weight.detach()
    weight[3] = 0.0  # an all-zero channel quantizes to zeros, not NaN

    packed = quantize_weight(weight)

    assert packed.qweight_t.dtype == torch.int8 and packed.shape == (96, 384)
    error = (packed.dequantize() - weight).abs()
    assert (error <= packed.scale[:, None] / 2 + 1e-7).all()
    assert torch.equal(packed.dequantize()[3], torch.zeros(384))


@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{b}x{s}x{i}x{o}" for b, s, i, o in SHAPES])
def test_matches_its_own_rounding_and_stays_near_float(shape, activation):
    batch, seq, width_in, width_out = shape
    linear, x = _layer(width_in, width_out), _activations(batch, seq, width_in)
    packed = quantize_weight(linear.weight)

    with torch.inference_mode():
        got = linear_int8(x, packed, linear.bias, activation)
        exact = linear_int8_ref(x, packed, linear.bias, activation)
        floating = F.linear(x, linear.weight, linear.bias)
        floating = F.gelu(floating) if activation == "gelu" else floating

    assert got.shape == (batch, seq, width_out) and got.dtype == torch.float32
    assert (got.double() - exact).abs().max().item() <= DEQUANT_ATOL
    cosine = F.cosine_similarity(got.reshape(-1, width_out), floating.reshape(-1, width_out))
    assert cosine.min().item() >= MIN_ROW_COSINE


def test_residual_add_and_layer_norm_through_dispatch():
    linear, x = _layer(384, 384), _activations(2, 5, 384)
    residual = _activations(2, 5, 384, seed=2)
    norm_weight, norm_bias = torch.ones(384), torch.zeros(384)
    int8_layer = Int8Linear.from_linear(linear)

    with torch.inference_mode():
        got = dispatch.linear_add_layer_norm(x, int8_layer.weight, int8_layer.bias, residual,
                                             norm_weight, norm_bias, 1e-12)
    expected = F.layer_norm(linear_int8_ref(x, int8_layer.weight, linear.bias)
                            + residual.double(), (384,), eps=1e-12)

    assert (got.double() - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "make_input, error, message",
    [(lambda x: x.half(), ValueError, "float32 activations"),
     (lambda x: x.to("meta"), ValueError, "CPU only"),
     (lambda x: x[..., :100], ValueError, "input width 100"),
     (lambda x: x.clone().requires_grad_(True), RuntimeError, "inference only")],
    ids=["float16", "meta-device", "width", "autograd"],
)
def test_inputs_it_cannot_take_are_named(make_input, error, message):
    linear, x = _layer(384, 64), _activations(1, 3, 384)

    with pytest.raises(error, match=message):
        linear_int8(make_input(x), quantize_weight(linear.weight), linear.bias)


@pytest.fixture
def float_and_int8_models(tiny_distilbert_folder):
    model = DistilBertModel.from_pretrained(tiny_distilbert_folder)
    return model, copy.deepcopy(model).quantize_int8()


def test_quantized_model_stays_near_the_float_model(float_and_int8_models):
    model, quantized = float_and_int8_models
    ids = torch.randint(1000, 30522, (3, 11), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0

    with torch.inference_mode():
        reference, got = model(ids, mask), quantized(ids, mask)

    assert quantized.int8 and not model.int8
    layer = quantized.transformer.layer[0]
    assert isinstance(layer.attention.qkv.weight, Int8Weight)
    assert isinstance(layer.ffn.lin2.weight, Int8Weight)
    real = mask.bool()
    cosine = F.cosine_similarity(got[real], reference[real], dim=-1)
    assert cosine.min().item() >= 0.99
    assert quantized.quantize_int8() is quantized  # a second call changes nothing


def test_quantize_refuses_what_it_cannot_run(tiny_distilbert_folder):
    model = DistilBertModel.from_pretrained(tiny_distilbert_folder, dtype=torch.float64)

    with pytest.raises(ValueError, match="int8 mode needs a float32 model on CPU"):
        model.quantize_int8()


def test_quantized_model_is_not_exported(float_and_int8_models, tmp_path):
    from distilbert.export import onnx as export

    with pytest.raises(ValueError, match="int8-quantized model cannot be exported"):
        export.export_onnx(float_and_int8_models[1], tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
