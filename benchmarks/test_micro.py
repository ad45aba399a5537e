"""pytest-benchmark micro-benchmarks of the torch backend on CPU, at all-MiniLM-L6-v2 sizes.

The three dispatch ops at batch 32 x sequence 128 (dim 384, 12 heads of 32, FFN 1536), and
one whole encoder forward of the built-in model at batch 8 x sequence 128. Not part of
``make test`` (pytest's ``testpaths`` is ``tests``); run them with ``make bench-micro``,
or once each, untimed, with ``pytest benchmarks/test_micro.py --benchmark-disable``.
"""

from __future__ import annotations

import pytest
import torch

from distilbert.engine.embedder import load
from distilbert.kernels import dispatch

BATCH, SEQ = 32, 128
DIM, HEADS, HIDDEN = 384, 12, 1536
EPS = 1e-12
FORWARD_BATCH = 8


def right_padded_mask(batch: int, seq: int) -> torch.Tensor:
    """(batch, seq) mask whose rows hold from seq / 4 to seq real tokens, right-padded."""
    lengths = torch.linspace(seq // 4, seq, batch).round().long()
    return (torch.arange(seq)[None, :] < lengths[:, None]).long()


@pytest.fixture(autouse=True)
def no_autograd():
    """Inference only, seeded: no graph is recorded while timing."""
    torch.manual_seed(0)
    with torch.inference_mode():
        yield


def test_attention(benchmark):
    qkv = torch.randn(BATCH, SEQ, 3 * DIM)
    mask = right_padded_mask(BATCH, SEQ)

    out = benchmark(dispatch.attention, qkv, mask, HEADS, backend="torch")

    assert out.shape == (BATCH, SEQ, DIM)


def test_add_layer_norm(benchmark):
    x, residual = torch.randn(BATCH, SEQ, DIM), torch.randn(BATCH, SEQ, DIM)
    weight, bias = torch.randn(DIM), torch.randn(DIM)

    out = benchmark(dispatch.add_layer_norm, x, residual, weight, bias, EPS, backend="torch")

    assert out.shape == (BATCH, SEQ, DIM)


def test_bias_gelu(benchmark):
    x, bias = torch.randn(BATCH, SEQ, HIDDEN), torch.randn(HIDDEN)

    out = benchmark(dispatch.bias_gelu, x, bias, backend="torch")

    assert out.shape == (BATCH, SEQ, HIDDEN)


def test_encoder_forward(benchmark):
    model = load(device="cpu").model
    config = model.config
    ids = torch.randint(1000, min(config.vocab_size, 20000), (FORWARD_BATCH, SEQ))
    mask = right_padded_mask(FORWARD_BATCH, SEQ)

    hidden = benchmark(model, ids, mask)

    assert hidden.shape == (FORWARD_BATCH, SEQ, config.dim)
