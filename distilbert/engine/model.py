"""The DistilBERT encoder (and BERT-family encoders such as MiniLM) in PyTorch.

Every hot op (attention, residual + LayerNorm, bias + GELU) goes through
:mod:`distilbert.kernels.dispatch`, so the same module runs the Triton kernels on CUDA and
plain PyTorch elsewhere. Q, K and V come from one fused projection.

Limits: absolute position embeddings only (learned or sinusoidal); activations gelu (erf)
and relu; dropout is not applied (inference engine; training steps run without it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distilbert.engine.config import DistilBertConfig
from distilbert.kernels import dispatch

logger = logging.getLogger(__name__)


def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos table DistilBERT uses when ``sinusoidal_pos_embds`` is set."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    inv_freq = torch.pow(10000.0, -2.0 * (torch.arange(dim, dtype=torch.float64) // 2) / dim)
    angles = position * inv_freq[None, :]
    table = torch.empty(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()


class Embeddings(nn.Module):
    """Word + position (+ token type) embeddings, then LayerNorm."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.dim, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        if config.sinusoidal_pos_embds:
            with torch.no_grad():
                self.position_embeddings.weight.copy_(
                    sinusoidal_positions(config.max_position_embeddings, config.dim)
                )
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.dim) if config.type_vocab_size else None
        )
        self.LayerNorm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        """(batch, seq) ids to (batch, seq, dim) normalised embeddings."""
        seq = input_ids.shape[-1]
        if position_ids is None:
            position_ids = torch.arange(seq, device=input_ids.device)
        words = self.word_embeddings(input_ids)
        extra = self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            extra = extra + self.token_type_embeddings(token_type_ids)
        norm = self.LayerNorm
        return dispatch.add_layer_norm(
            words, extra.expand_as(words), norm.weight, norm.bias, norm.eps, backend
        )


class MultiHeadSelfAttention(nn.Module):
    """Fused QKV projection, attention through the dispatch point, output projection."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)

    def context(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, backend: str | None = None
    ) -> torch.Tensor:
        """(batch, seq, dim) to the attention output before ``out_lin``, (batch, seq, dim)."""
        qkv = dispatch.linear(x, self.qkv.weight, self.qkv.bias, backend)
        return dispatch.attention(qkv, key_mask, self.n_heads, None, backend)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, backend: str | None = None
    ) -> torch.Tensor:
        """(batch, seq, dim) to (batch, seq, dim)."""
        context = self.context(x, key_mask, backend)
        return dispatch.linear(context, self.out_lin.weight, self.out_lin.bias, backend)


class FFN(nn.Module):
    """lin1, activation, lin2; the bias of lin1 is fused into the activation."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.activation = config.activation
        self.lin1 = nn.Linear(config.dim, config.hidden_dim)
        self.lin2 = nn.Linear(config.hidden_dim, config.dim)

    def hidden(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """(..., dim) to the activation of ``lin1``, (..., hidden_dim)."""
        if self.activation == "gelu":
            return dispatch.linear_gelu(x, self.lin1.weight, self.lin1.bias, backend)
        return F.relu(dispatch.linear(x, self.lin1.weight, self.lin1.bias, backend))

    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """(..., dim) to (..., dim)."""
        return dispatch.linear(self.hidden(x, backend), self.lin2.weight, self.lin2.bias,
                               backend)


class TransformerBlock(nn.Module):
    """Post-norm encoder layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.eps = config.layer_norm_eps
        self.attention = MultiHeadSelfAttention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.ffn = FFN(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None, backend: str | None = None
    ) -> torch.Tensor:
        """One encoder layer over (batch, seq, dim)."""
        # Each output projection, its residual and the LayerNorm after it are one dispatch
        # op, so that the CPU path can add the residual in the GEMM's store.
        out_lin, norm = self.attention.out_lin, self.sa_layer_norm
        x = dispatch.linear_add_layer_norm(
            self.attention.context(x, key_mask, backend), out_lin.weight, out_lin.bias, x,
            norm.weight, norm.bias, self.eps, backend,
        )
        lin2, norm = self.ffn.lin2, self.output_layer_norm
        return dispatch.linear_add_layer_norm(
            self.ffn.hidden(x, backend), lin2.weight, lin2.bias, x, norm.weight, norm.bias,
            self.eps, backend,
        )


class Transformer(nn.Module):
    """The stack of encoder layers."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))


class DistilBertModel(nn.Module):
    """DistilBERT encoder: ``forward(input_ids, attention_mask)`` gives the last hidden state.

    Set ``backend`` (``"torch"``, ``"triton"`` or ``None`` for automatic) to choose how the
    hot ops run; see :mod:`distilbert.kernels.dispatch`.
    """

    def __init__(self, config: DistilBertConfig, backend: str | None = None):
        super().__init__()
        self.config = config
        self.backend = backend
        self.int8 = False
        self.embeddings = Embeddings(config)
        self.transformer = Transformer(config)

    def quantize_int8(self) -> DistilBertModel:
        """Swap every layer's four projections for dynamic int8 ones; returns the model.

        CPU inference only, and approximate (8-bit rounding of weights and activations; see
        :mod:`distilbert.kernels.int8`). Attention, LayerNorm and the embeddings stay
        float32. Not reversible, and such a model cannot be exported.
        """
        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise ValueError(
                f"int8 mode needs a float32 model on CPU, got {self.dtype} on {self.device}"
            )
        if self.int8:
            return self
        for block in self.transformer.layer:
            attention, ffn = block.attention, block.ffn
            attention.qkv = dispatch.int8_linear(attention.qkv)
            attention.out_lin = dispatch.int8_linear(attention.out_lin)
            ffn.lin1 = dispatch.int8_linear(ffn.lin1)
            ffn.lin2 = dispatch.int8_linear(ffn.lin2)
        self.int8 = True
        logger.info("projections of %d layers quantized to int8", len(self.transformer.layer))
        return self

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """Raise ValueError naming the problem when ids or mask cannot be run."""
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}"
            )
        seq = input_ids.shape[1]
        limit = self.config.max_position_embeddings
        if seq > limit:
            raise ValueError(
                f"sequence length {seq} exceeds the model's max_position_embeddings ({limit}); "
                "truncate the input (max_length) or split it into windows"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                f"input_ids shape {tuple(input_ids.shape)}"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the last hidden state, shape (batch, seq, dim).

        ``attention_mask`` is non-zero for real tokens, in any layout; positions are
        0..seq-1 whatever the padding, as in Hugging Face. DistilBERT checkpoints ignore
        ``token_type_ids``.
        """
        self.check_inputs(input_ids, attention_mask)
        x = self.embeddings(input_ids, token_type_ids, backend=self.backend)
        for block in self.transformer.layer:
            x = block(x, attention_mask, self.backend)
        return x

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.embeddings.word_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.embeddings.word_embeddings.weight.dtype

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        backend: str | None = None,
    ) -> DistilBertModel:
        """Load a local checkpoint folder (safetensors, .bin, sharded; any key prefix)."""
        from distilbert.engine import checkpoint

        config = DistilBertConfig.from_pretrained(path)
        model = cls(config, backend=backend)
        state = checkpoint.read_checkpoint(path)
        base, head = checkpoint.split_base_and_head(state)
        if head:
            logger.info("the encoder alone ignores %d head weight(s): %s", len(head),
                        ", ".join(sorted(head)[:20]))
        checkpoint.load_base_weights(model, base)
        return checkpoint.finish_model(model, dtype, device)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        *,
        config: DistilBertConfig | str | Path | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        backend: str | None = None,
    ) -> DistilBertModel:
        """Load the encoder weights of an ONNX file (ours or a Hugging Face export).

        ``config`` defaults to the one stored in or beside the file, else one inferred from
        the graph; see :mod:`distilbert.engine.onnx_weights` for how tensors are matched.
        """
        from distilbert.engine import checkpoint, onnx_weights

        weights = onnx_weights.read_onnx_weights(path, config)
        model = cls(weights.config, backend=backend)
        checkpoint.load_base_weights(model, weights.encoder)
        return checkpoint.finish_model(model, dtype, device)
