"""Dynamic int8 projections for CPU inference, an opt-in mode traded against exactness.

Weights are quantized once, symmetrically per output channel (``w ~ q_w * s_w``, q_w in
[-127, 127]); activations are quantized at run time, symmetrically per token
(``x ~ q_x * s_x``). The GEMM runs on int8 with int32 accumulation (``torch._int_mm``,
oneDNN's VNNI kernels on x86), so it is exact; the result is dequantized in fp32 in place
(``acc * s_w * s_x``) before the bias, the residual add and the GELU.

Numerics: the error is that of rounding x and w to 8 bits, not the 1e-5 of the float path;
``distilbert bench`` reports the cosine per text of the embeddings against float32.

Limits: CPU tensors, float32 activations, inference only (no autograd, no ONNX export);
attention, LayerNorm and the embeddings stay in float32. ``torch._int_mm`` is a private
PyTorch op, so :func:`int8_available` checks it at run time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

QMAX = 127
_TINY = 1e-12  # scale floor: an all-zero row or channel quantizes to zeros, never NaN


@dataclass(frozen=True)
class Int8Weight:
    """A weight of shape (out, in) held as int8 values and one fp32 scale per output row."""

    qweight_t: torch.Tensor  # (in, out) int8, contiguous: the GEMM's right-hand side
    scale: torch.Tensor  # (out,) float32

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in), the shape of the float weight it stands for."""
        return self.scale.shape[0], self.qweight_t.shape[0]

    def dequantize(self) -> torch.Tensor:
        """The float32 (out, in) weight these int8 values represent."""
        return self.qweight_t.t().float() * self.scale[:, None]


@functools.lru_cache(maxsize=1)
def int8_available() -> bool:
    """True when this PyTorch build runs ``torch._int_mm`` on CPU tensors."""
    try:
        probe = torch.ones(1, 8, dtype=torch.int8)
        return bool(torch._int_mm(probe, probe.t()).item() == 8)
    except (AttributeError, RuntimeError):
        return False


def quantize_weight(weight: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel int8 quantization of an (out, in) float weight."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"expected a 2-D float weight, got {weight.dtype} {tuple(weight.shape)}")
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp_min(_TINY) / QMAX
    q = torch.round(weight / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return Int8Weight(q.t().contiguous(), scale)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization of a 2-D float32 tensor: (int8 values, (rows, 1))."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min_(_TINY).div_(QMAX)
    return x.div(scale).round_().to(torch.int8), scale  # |x / scale| <= 127: no clamp


def check_inputs(x: torch.Tensor, weight: Int8Weight) -> None:
    """Raise naming the problem when the int8 path cannot take these inputs."""
    if x.device.type != "cpu" or weight.qweight_t.device.type != "cpu":
        raise ValueError(f"int8 projections run on CPU only, got a tensor on {x.device}")
    if x.dtype != torch.float32:
        raise ValueError(f"int8 projections take float32 activations, got {x.dtype}")
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("int8 projections are inference only: they have no backward")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input width {x.shape[-1]} does not match the weight's {weight.shape}")
    if not int8_available():
        raise RuntimeError("this PyTorch build has no CPU torch._int_mm; int8 mode is off")


def linear_int8(
    x: torch.Tensor,
    weight: Int8Weight,
    bias: torch.Tensor | None,
    activation: str = "none",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(x @ w.T + bias + residual)`` through the int8 GEMM; activation none or gelu."""
    if activation not in ("none", "gelu"):
        raise ValueError(f"unsupported activation {activation!r}; use 'none' or 'gelu'")
    check_inputs(x, weight)
    rows = x.reshape(-1, x.shape[-1])
    q, row_scale = quantize_rows(rows)
    # Dequantize in place, one pass per factor: an outer product of the scales would cost a
    # (tokens, out) temporary as large as the output.
    out = torch._int_mm(q, weight.qweight_t).to(torch.float32)
    out.mul_(weight.scale).mul_(row_scale)
    if bias is not None:
        out.add_(bias)
    if residual is not None:
        out.add_(residual.reshape(out.shape))
    if activation == "gelu":
        out = F.gelu(out)
    return out.view(*x.shape[:-1], weight.shape[0])


def linear_int8_ref(
    x: torch.Tensor, weight: Int8Weight, bias: torch.Tensor | None, activation: str = "none"
) -> torch.Tensor:
    """Reference of :func:`linear_int8`: the same rounding, then a float64 matmul."""
    rows = x.reshape(-1, x.shape[-1])
    q, row_scale = quantize_rows(rows)
    out = (q.double() * row_scale.double()) @ weight.dequantize().double().t()
    if bias is not None:
        out = out + bias.double()
    out = F.gelu(out) if activation == "gelu" else out
    return out.view(*x.shape[:-1], weight.shape[0])


class Int8Linear(nn.Module):
    """A stand-in for ``nn.Linear`` whose ``weight`` is an :class:`Int8Weight`.

    The dispatch point sees the :class:`Int8Weight` and takes the int8 path; the int8
    values, scales and bias are buffers, so ``state_dict`` and ``.to()`` carry them.
    """

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("qweight_t", weight.qweight_t)
        self.register_buffer("scale", weight.scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.out_features, self.in_features = weight.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize an ``nn.Linear``'s weight; its bias stays float32."""
        return cls(quantize_weight(linear.weight), linear.bias)

    @property
    def weight(self) -> Int8Weight:
        """The int8 weight, as the dispatch point reads it."""
        return Int8Weight(self.qweight_t, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ w.T + bias`` through the int8 GEMM."""
        return linear_int8(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"
