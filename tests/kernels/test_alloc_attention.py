"""The allocation benchmark's two attention paths: same results, fewer bytes for views."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import torch

attn = importlib.import_module("distilbert.kernels.attention")
SCRIPT = Path(__file__).parents[2] / "benchmarks" / "alloc_attention.py"


def load_script():
    """Import benchmarks/alloc_attention.py (benchmarks is not a package)."""
    spec = importlib.util.spec_from_file_location("alloc_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_strided_path_allocates_less_for_the_same_result():
    """The copying path equals the strided one bit for bit and allocates more bytes."""
    bench = load_script()
    qkv = torch.randn(2, 16, 3 * 4 * 32)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0

    copied = bench.attention_copying(qkv, mask, 4)
    strided = attn.attention_torch(qkv, mask, 4)
    assert torch.equal(copied, strided)

    device = torch.device("cpu")
    cost_copied = bench.measure(lambda: bench.attention_copying(qkv, mask, 4), device)
    cost_strided = bench.measure(lambda: attn.attention_torch(qkv, mask, 4), device)
    assert cost_strided.count > 0
    # The copies of q, k, v and of the output: four (batch, seq, dim) fp32 tensors.
    assert cost_copied.bytes - cost_strided.bytes >= 4 * qkv[..., :128].numel() * 4
