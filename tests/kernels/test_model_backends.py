"""The whole encoder on the triton backend equals the torch backend, gradients included."""

from __future__ import annotations

import copy

import pytest
import torch

from distilbert.engine.config import DistilBertConfig
from distilbert.engine.model import DistilBertModel
from tests.kernels.numerics import assert_close

# Through two layers the fp32 differences of summation order grow a little beyond a single
# op's; parameter gradients are sums over every token.
MODEL_ATOL = 2e-5
MODEL_RTOL = 1e-4


def tiny_model(seed: int = 0, **overrides) -> DistilBertModel:
    """dim 64, 2 heads of 32, 2 layers, every weight (LayerNorm included) random."""
    settings = {
        "vocab_size": 50, "dim": 64, "n_layers": 2, "n_heads": 2, "hidden_dim": 128,
        "max_position_embeddings": 16, **overrides,
    }
    torch.manual_seed(seed)
    model = DistilBertModel(DistilBertConfig(**settings))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                centre = 1.0 if name.endswith("weight") else 0.0
                param.copy_(centre + 0.2 * torch.randn_like(param))
            elif param.dim() == 1:
                param.copy_(0.2 * torch.randn_like(param))
    return model


def tiny_batch(seed: int = 0):
    """Three sequences of 7 ids: full, right-padded, left-padded."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (3, 7), generator=generator)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, :3] = 0
    return ids, mask


def forward_and_grads(model, ids, mask, weights):
    """Hidden states and the gradient of sum(hidden * weights) for every parameter."""
    model.zero_grad(set_to_none=True)
    hidden = model(ids, mask)
    (hidden * weights).sum().backward()
    grads = {name: param.grad.detach().clone() for name, param in model.named_parameters()}
    return hidden.detach(), grads


@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_triton_backend_equals_torch_backend(device, family):
    """Forward and every parameter gradient agree between the two backends."""
    extra = {"type_vocab_size": 2, "model_type": "bert"} if family == "bert" else {}
    reference = tiny_model(**extra)
    model = copy.deepcopy(reference).to(device)
    reference.backend, model.backend = "torch", "triton"
    ids, mask = tiny_batch()
    weights = torch.randn(3, 7, 64)

    expected, expected_grads = forward_and_grads(reference, ids, mask, weights)
    hidden, grads = forward_and_grads(model, ids.to(device), mask.to(device), weights.to(device))

    assert_close("hidden states", hidden, expected, MODEL_ATOL, MODEL_RTOL)
    assert set(grads) == set(expected_grads)
    for name, grad in grads.items():
        assert_close(f"grad of {name}", grad, expected_grads[name], MODEL_ATOL, MODEL_RTOL)


def test_triton_backend_without_grad(device):
    """Inference (no graph, no saved statistics) gives the same hidden states."""
    model = tiny_model(seed=1).to(device)
    ids, mask = tiny_batch(seed=1)
    with torch.no_grad():
        model.backend = "triton"
        hidden = model(ids.to(device), mask.to(device))
        model.backend = "torch"
        expected = model.cpu()(ids, mask)
    assert hidden.grad_fn is None
    assert_close("hidden states", hidden, expected, MODEL_ATOL, MODEL_RTOL)


def test_training_step_lowers_loss():
    """One small SGD step on the torch backend lowers the loss by about lr * |grad|^2."""
    model = tiny_model(seed=2)
    model.backend = "torch"
    ids, mask = tiny_batch(seed=2)
    target = torch.randn(3, 7, 64)
    learning_rate = 1e-3

    def loss_now():
        hidden = model(ids, mask)
        return ((hidden - target) ** 2 * mask[..., None]).mean()

    before = loss_now()
    before.backward()
    squared_norm = sum(float((p.grad**2).sum()) for p in model.parameters())
    torch.optim.SGD(model.parameters(), lr=learning_rate).step()
    with torch.no_grad():
        after = loss_now()

    predicted = learning_rate * squared_norm
    actual = before.item() - after.item()
    assert actual > 0, f"loss rose from {before.item():.6f} to {after.item():.6f}"
    assert abs(actual - predicted) < 0.2 * predicted, (
        f"loss fell by {actual:.3g}, first-order prediction {predicted:.3g}"
    )
