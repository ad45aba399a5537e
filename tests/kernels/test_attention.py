"""Triton attention against the PyTorch reference: outputs and the gradient of qkv."""

from __future__ import annotations

import importlib

import pytest
import torch

from distilbert.kernels import dispatch
from tests.kernels.numerics import assert_close, assert_within_torch_error

attn = importlib.import_module("distilbert.kernels.attention")

# (batch, seq, heads, head_dim, (block_m, block_n) or None for the launcher's choice)
SHAPES = {
    "seq1": (1, 1, 2, 32, None),
    "odd": (2, 7, 2, 32, None),
    "tails": (2, 37, 2, 32, (16, 16)),
    "two-blocks": (2, 80, 1, 64, None),
    "head128": (1, 19, 1, 128, None),
}
LOW_PRECISION = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
MASKS = ("none", "right", "left", "scattered", "empty-row")


def make_mask(kind: str, batch: int, seq: int, seed: int = 0) -> torch.Tensor | None:
    """A (batch, seq) key mask of the given layout; 'empty-row' has one all-padding row."""
    if kind == "none":
        return None
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=generator)
    lengths[0] = seq
    positions = torch.arange(seq)[None, :]
    if kind == "right":
        mask = positions < lengths[:, None]
    elif kind == "left":
        mask = positions >= (seq - lengths)[:, None]
    elif kind == "scattered":
        mask = torch.rand(batch, seq, generator=generator) < 0.6
        mask[:, torch.randint(0, seq, (1,), generator=generator)] = True
    elif kind == "empty-row":
        mask = positions < lengths[:, None]
        mask[-1] = False
    else:
        raise ValueError(kind)
    return mask.long()


def make_qkv(batch, seq, heads, head_dim, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Random fused projection output, scores of order one."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, 3 * heads * head_dim, generator=generator).to(dtype)


def run_triton(qkv, mask, heads, upstream, blocks=None, scale=None):
    """Output and qkv gradient from the Triton launchers behind autograd."""
    leaf = qkv.detach().clone().requires_grad_(True)
    if blocks is None:
        out = attn.attention_triton(leaf, mask, heads, scale)
    else:
        out, lse = attn.attention_fwd(leaf.detach(), mask, heads, scale, need_lse=True,
                                      block_m=blocks[0], block_n=blocks[1])
        grad = attn.attention_bwd(upstream, leaf.detach(), mask, out, lse, heads, scale,
                                  block_m=blocks[0], block_n=blocks[1])
        return out, grad
    (grad,) = torch.autograd.grad(out, leaf, upstream)
    return out, grad


def run_reference(qkv, mask, heads, upstream, op=attn.attention_ref, scale=None):
    """Output and qkv gradient of a PyTorch attention."""
    leaf = qkv.detach().clone().requires_grad_(True)
    out = op(leaf, mask, heads, scale)
    (grad,) = torch.autograd.grad(out, leaf, upstream)
    return out, grad


def grad_parts(grad: torch.Tensor, mask: torch.Tensor | None):
    """Split a qkv gradient into (dq and dk of batches with a real key, dv of all)."""
    dim = grad.shape[-1] // 3
    keep = slice(None) if mask is None else mask.ne(0).any(dim=1).cpu()
    return grad[..., : 2 * dim].cpu()[keep], grad[..., 2 * dim :]


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_fp32_matches_reference(device, shape, mask_kind):
    """Output and dQ, dK, dV agree with the reference at fp32 tolerance for every mask."""
    batch, seq, heads, head_dim, blocks = shape
    qkv = make_qkv(batch, seq, heads, head_dim)
    mask = make_mask(mask_kind, batch, seq)
    upstream = torch.randn(batch, seq, heads * head_dim)
    ref_out, ref_grad = run_reference(qkv, mask, heads, upstream)

    on = (lambda t: None if t is None else t.to(device))
    out, grad = run_triton(on(qkv), on(mask), heads, on(upstream), blocks)

    assert_close("output", out, ref_out)
    # Rows without a real key: the kernel's dQ and dK are exactly 0 (its output does not
    # depend on them); the reference differentiates through the saturated bias instead.
    ref_qk, ref_v = grad_parts(ref_grad, mask)
    got_qk, got_v = grad_parts(grad, mask)
    assert_close("dq, dk", got_qk, ref_qk)
    assert_close("dv", got_v, ref_v)
    if mask_kind == "empty-row":
        empty = grad[-1, :, : 2 * heads * head_dim]
        assert torch.count_nonzero(empty) == 0, "dq, dk of the all-padding row are not 0"


@pytest.mark.parametrize("mask_kind", ["right", "empty-row"])
def test_matches_torch_backend(device, mask_kind):
    """The triton and torch backends agree, all-padding rows included, and stay finite."""
    qkv = make_qkv(3, 9, 2, 32, seed=1).to(device)
    mask = make_mask(mask_kind, 3, 9, seed=1).to(device)
    out = dispatch.attention(qkv, mask, 2, backend="triton")
    expected = dispatch.attention(qkv.cpu(), mask.cpu(), 2, backend="torch")
    assert torch.isfinite(out).all() and torch.isfinite(expected).all()
    assert_close("triton vs torch backend", out, expected)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("mask_kind", ["right", "scattered", "empty-row"])
@pytest.mark.parametrize("shape", ["odd", "tails", "head128"])
def test_low_precision_within_torch_error(device, shape, mask_kind, dtype):
    """fp16/bf16 output and gradient err at most twice as much as PyTorch's own."""
    batch, seq, heads, head_dim, blocks = SHAPES[shape]
    qkv = make_qkv(batch, seq, heads, head_dim, dtype=dtype, seed=2).to(device)
    mask = make_mask(mask_kind, batch, seq, seed=2).to(device)
    upstream = torch.randn(batch, seq, heads * head_dim).to(dtype).to(device)

    ref_out, ref_grad = run_reference(qkv.float(), mask, heads, upstream.float())
    low_out, low_grad = run_reference(qkv, mask, heads, upstream)
    out, grad = run_triton(qkv, mask, heads, upstream, blocks)

    assert out.dtype == dtype and grad.dtype == dtype
    assert_within_torch_error("output", out, low_out, ref_out, dtype)
    for name, got, low, ref in zip(
        ("dq, dk", "dv"), grad_parts(grad, mask), grad_parts(low_grad, mask),
        grad_parts(ref_grad, mask),
    ):
        assert_within_torch_error(name, got, low, ref, dtype)


def test_non_contiguous_inputs(device):
    """qkv laid out seq-major inside a wider buffer, and a strided mask, are read in place."""
    batch, seq, heads, head_dim = 2, 11, 2, 32
    width = 3 * heads * head_dim
    buffer = torch.randn(seq, batch, width + 8).to(device)
    qkv = buffer.transpose(0, 1)[..., 4 : 4 + width]
    assert not qkv.is_contiguous()
    mask_buffer = make_mask("scattered", seq, 2 * batch, seed=3).to(device)
    mask = mask_buffer.t()[::2]
    assert not mask.is_contiguous()
    upstream = torch.randn(seq, batch, heads * head_dim).to(device).transpose(0, 1)

    ref_out, ref_grad = run_reference(qkv.cpu(), mask.cpu(), heads, upstream.cpu())
    out, grad = run_triton(qkv, mask, heads, upstream)
    assert_close("output", out, ref_out)
    assert_close("grad", grad, ref_grad)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int32, torch.float32])
def test_mask_dtypes(device, mask_dtype):
    """Any mask dtype works: non-zero means a real key."""
    qkv = make_qkv(2, 9, 2, 32, seed=4).to(device)
    mask = make_mask("scattered", 2, 9, seed=4)
    out = attn.attention_triton(qkv, mask.to(mask_dtype).to(device), 2)
    assert_close("output", out, attn.attention_ref(qkv.cpu(), mask, 2))


def test_explicit_scale(device):
    """A scale other than 1/sqrt(head_dim) is honoured in forward and backward."""
    qkv = make_qkv(1, 9, 2, 32, seed=5)
    mask = make_mask("right", 1, 9, seed=5)
    upstream = torch.randn(1, 9, 64)
    ref_out, ref_grad = run_reference(qkv, mask, 2, upstream, scale=0.3)
    out, grad = run_triton(qkv.to(device), mask.to(device), 2, upstream.to(device), scale=0.3)
    assert_close("output", out, ref_out)
    assert_close("grad", grad, ref_grad)


def test_kernels_really_interpreted_on_cpu(device):
    """Guard against a silent set-up error: the cpu cases must run the interpreter."""
    from distilbert.kernels._triton import interpreter_active, is_interpreted

    if device == "cpu":
        assert interpreter_active() and is_interpreted(attn._attention_fwd_kernel)
    else:
        assert not is_interpreted(attn._attention_fwd_kernel)


@pytest.mark.parametrize(
    "head_dim, message", [(16, "head dim 16 is not supported"), (48, "head dim 48")]
)
def test_unsupported_head_dim_is_refused(head_dim, message):
    """Head dims other than 32, 64, 128 get a clear error naming the head dim."""
    qkv = make_qkv(1, 4, 2, head_dim)
    with pytest.raises(ValueError, match=message):
        attn.attention_fwd(qkv, None, 2)


def test_bad_inputs_are_refused():
    """Wrong ranks, widths, mask shapes and dtypes are named in the error."""
    qkv = make_qkv(2, 5, 2, 32)
    with pytest.raises(ValueError, match="qkv must be"):
        attn.attention_fwd(qkv[0], None, 2)
    with pytest.raises(ValueError, match="not divisible by 3 \\* n_heads"):
        attn.attention_fwd(qkv[..., :-3], None, 2)
    with pytest.raises(ValueError, match="key_mask must be"):
        attn.attention_fwd(qkv, torch.ones(2, 6), 2)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        attn.attention_fwd(qkv.double(), None, 2)
    with pytest.raises(ValueError, match="power of two"):
        attn.attention_fwd(qkv, None, 2, block_m=24)


def test_reference_gradcheck():
    """The reference ops' autograd is right (float64 finite differences, tiny heads)."""
    qkv = make_qkv(2, 4, 2, 2, dtype=torch.float64, seed=6).requires_grad_(True)
    mask = make_mask("left", 2, 4, seed=6)
    assert torch.autograd.gradcheck(lambda t: attn.attention_ref(t, mask, 2), (qkv,))
    assert torch.autograd.gradcheck(lambda t: attn.attention_torch(t, mask, 2), (qkv,))


def test_block_candidates():
    """Largest tiles first, shrinking to 16; clipped to the padded length; explicit wins."""
    assert attn._block_candidates(512, 64, torch.float16, False, None, None) == [
        (64, 64), (32, 32), (16, 16)
    ]
    assert attn._block_candidates(512, 128, torch.float16, True, None, None)[0] == (32, 32)
    assert attn._block_candidates(7, 64, torch.float32, False, None, None) == [(16, 16)]
    assert attn._block_candidates(512, 32, torch.float16, False, 16, None) == [(16, 64)]


class FakeKernel:
    """Stands in for a Triton kernel that runs out of shared memory above 32 x 32 tiles."""

    def __init__(self):
        self.launched = []

    def __getitem__(self, grid):
        def launch(*args, BLOCK_M, BLOCK_N, **constexprs):
            if BLOCK_M > 32:
                raise attn.triton.runtime.errors.OutOfResources(BLOCK_M * 1024, 32768, "shared")
            self.launched.append((grid, BLOCK_M, BLOCK_N))

        return launch


def test_launch_falls_back_to_smaller_blocks(monkeypatch):
    """Out of shared memory: the next smaller tiles are used, and remembered."""
    pytest.importorskip("triton")
    monkeypatch.setattr(attn, "_chosen_blocks", {})
    kernel = FakeKernel()
    candidates = [(64, 64), (32, 32), (16, 16)]
    for _ in range(2):
        attn._launch(kernel, lambda bm, bn: (1, 128 // bm), (), candidates, ("test",))
    assert kernel.launched == [((1, 4), 32, 32), ((1, 4), 32, 32)]
    assert list(attn._chosen_blocks.values()) == [(32, 32)]

    with pytest.raises(attn.triton.runtime.errors.OutOfResources):
        attn._launch(FakeKernel(), lambda bm, bn: (1,), (), [(64, 64)], ("other",))
