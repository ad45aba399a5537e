"""Pooling over real tokens only, against a row-by-row computation, and L2 normalisation."""

from __future__ import annotations

import pytest
import torch

from distilbert import DistilBertModel
from distilbert.engine.pooling import POOLING_MODES, l2_normalize, pool

POOL_ATOL = 1e-6


def mixed_masks(seq: int) -> torch.Tensor:
    """Rows: all real, right-padded, left-padded, scattered, one real token, no real token."""
    mask = torch.ones(6, seq, dtype=torch.int64)
    mask[1, seq // 2:] = 0
    mask[2, : seq // 2] = 0
    mask[3, 1::2] = 0
    mask[4] = 0
    mask[4, seq - 2] = 1
    mask[5] = 0
    return mask


def pool_row_by_row(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The definition, one row at a time: the first real token, or mean/max over real tokens
    (zeros for a row with none)."""
    rows = []
    for states, keep in zip(hidden, mask.bool()):
        real = states[keep]
        if len(real) == 0:
            rows.append(torch.zeros(hidden.shape[-1], dtype=hidden.dtype))
        elif mode == "cls":
            rows.append(real[0])
        elif mode == "mean":
            rows.append(real.mean(dim=0))
        else:
            rows.append(real.max(dim=0).values)
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pool_matches_the_definition(mode, dtype):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 9, 16, generator=generator, dtype=dtype) * 3
    mask = mixed_masks(9)

    pooled = pool(hidden, mask, mode)

    assert pooled.shape == (6, 16) and pooled.dtype == dtype
    torch.testing.assert_close(pooled, pool_row_by_row(hidden, mask, mode),
                               atol=POOL_ATOL, rtol=0)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pool_ignores_what_padding_holds(mode):
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 9, 16, generator=generator)
    mask = mixed_masks(9)
    noisy = hidden.masked_fill(~mask.bool()[..., None], 1e4)

    assert torch.equal(pool(noisy, mask, mode)[:5], pool(hidden, mask, mode)[:5])


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_all_padding_row_pools_to_finite_values(mode, tiny_distilbert_folder):
    model = DistilBertModel.from_pretrained(tiny_distilbert_folder)
    ids = torch.randint(1000, 30522, (6, 11), generator=torch.Generator().manual_seed(2))
    mask = mixed_masks(11)

    with torch.no_grad():
        pooled = l2_normalize(pool(model(ids, mask), mask, mode))

    assert torch.isfinite(pooled).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_low_precision_pooling_is_finite_and_close(mode, dtype):
    hidden = torch.randn(6, 9, 16, generator=torch.Generator().manual_seed(3))
    mask = mixed_masks(9)

    pooled = pool(hidden.to(dtype), mask, mode)

    assert pooled.dtype == dtype and torch.isfinite(pooled).all()
    reference = pool_row_by_row(hidden, mask, mode)
    torch.testing.assert_close(pooled.float(), reference, atol=0.05, rtol=0.02)


def test_l2_normalize():
    vectors = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1e-3, 1e-3]])

    unit = l2_normalize(vectors)

    torch.testing.assert_close(unit[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(unit[1], torch.zeros(2)), "a zero row stays zero"
    torch.testing.assert_close(unit.norm(dim=-1)[[0, 2]], torch.ones(2))


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match=r"unknown pooling 'sum'; use one of cls, mean, max"):
        pool(torch.zeros(1, 2, 4), torch.ones(1, 2), "sum")
