"""Task heads on the DistilBERT encoder, loading Hugging Face fine-tuned checkpoints.

Each head holds the encoder as ``self.distilbert`` and adds the layers of its namesake in
``transformers``, under the same names, so checkpoints load key for key. Every forward takes
``(input_ids, attention_mask=None, token_type_ids=None)`` and returns logits (question
answering: a ``(start_logits, end_logits)`` pair), which keeps the heads easy to export.

Loading (:meth:`TaskHead.from_pretrained`) reuses the encoder's checkpoint steps and adds one
for the head (:func:`distilbert.engine.checkpoint.load_head_weights`): missing head weights
are an error listing them unless ``fresh_head=True`` asks for a freshly initialised head.

Limits: token classification and question answering also accept BERT-family checkpoints
(their heads have the same layout); sequence classification, multiple choice and masked LM
heads need DistilBERT checkpoints (BERT's versions use a pooler or another MLM layout). Dropout
is not applied (inference only).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from distilbert.engine import checkpoint
from distilbert.engine.config import DistilBertConfig
from distilbert.engine.model import DistilBertModel
from distilbert.kernels import dispatch

logger = logging.getLogger(__name__)

# Hugging Face builds the masked LM's LayerNorm with this eps whatever config.json says.
VOCAB_LAYER_NORM_EPS = 1e-12
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


class TaskHead(nn.Module):
    """Common loading and encoder plumbing of the task heads."""

    # model_type values whose checkpoints have this head in our layout.
    model_types: ClassVar[tuple[str, ...]] = ("distilbert",)
    # Head weight -> encoder weight it is tied to when the checkpoint leaves it out.
    tied_weights: ClassVar[dict[str, str]] = {}

    def __init__(self, config: DistilBertConfig, backend: str | None = None):
        super().__init__()
        self.config = config
        self.distilbert = DistilBertModel(config, backend=backend)

    @property
    def backend(self) -> str | None:
        """Backend of the hot ops (``None`` picks by device); see ``kernels.dispatch``."""
        return self.distilbert.backend

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.distilbert.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self.distilbert.dtype

    @property
    def id2label(self) -> dict[int, str]:
        """Label names by output index (empty for heads without labels)."""
        return self.config.id2label

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        num_labels: int | None = None,
        fresh_head: bool = False,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        backend: str | None = None,
    ):
        """Load a local checkpoint folder (safetensors or .bin, sharded or not, any prefix).

        ``num_labels`` overrides the label count of ``config.json`` (labels are then named
        ``LABEL_i``); ``fresh_head=True`` initialises head weights the checkpoint lacks, or
        holds in another shape, instead of raising.
        """
        config = DistilBertConfig.from_pretrained(path)
        if config.model_type not in cls.model_types:
            raise ValueError(
                f"{cls.__name__} needs a checkpoint of model_type "
                f"{' or '.join(map(repr, cls.model_types))}; {path} has {config.model_type!r}"
            )
        state = checkpoint.read_checkpoint(path)
        base, head = checkpoint.split_base_and_head(state)
        config = cls.configure(config, num_labels, head)

        model = cls(config, backend=backend)
        checkpoint.load_base_weights(model.distilbert, base)
        tied = cls.tied_weights if config.extra.get("tie_word_embeddings", True) else {}
        checkpoint.load_head_weights(model, head, tied, fresh_head)
        logger.debug("loaded %s from %s", cls.__name__, path)
        return checkpoint.finish_model(model, dtype, device)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        config: DistilBertConfig | str | Path | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        backend: str | None = None,
    ):
        """Load this head from an ONNX file (ours or a Hugging Face export of the same head).

        The config comes as in :meth:`DistilBertModel.from_onnx`. Head weights are matched
        by name where the file kept their names, else in forward order by kind and shape
        (:func:`distilbert.engine.onnx_weights.head_state`).
        """
        from distilbert.engine import onnx_weights

        weights = onnx_weights.read_onnx_weights(path, config)
        if weights.config.model_type not in cls.model_types:
            raise ValueError(
                f"{cls.__name__} needs a model_type of {' or '.join(map(repr, cls.model_types))}"
                f"; {path} holds {weights.config.model_type!r}"
            )
        # With no labels in the config, the last linear's width is the label count.
        named = dict(weights.head)
        linears = [u for u in weights.head_units if u.kind == "linear"]
        label_weight = getattr(cls, "label_weight", None)
        if label_weight and label_weight not in named and linears:
            named[label_weight] = torch.from_numpy(linears[-1].weight.copy())
        model = cls(cls.configure(weights.config, None, named), backend=backend)
        checkpoint.load_base_weights(model.distilbert, weights.encoder)

        modules = [
            (name, "linear" if isinstance(module, nn.Linear) else "norm",
             tuple(module.weight.shape))
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and not name.startswith("distilbert")
        ]
        head = onnx_weights.head_state(weights, modules)
        # A projector equal to the word embeddings was tied before export: tie it again.
        for name, target in cls.tied_weights.items():
            if name in head and torch.equal(head[name], model.get_parameter(target).detach()):
                del head[name]
        checkpoint.load_head_weights(model, head, cls.tied_weights)
        return checkpoint.finish_model(model, dtype, device)

    @classmethod
    def configure(
        cls, config: DistilBertConfig, num_labels: int | None, head: dict[str, torch.Tensor]
    ) -> DistilBertConfig:
        """Settle the label names before the head is built (heads with labels override)."""
        if num_labels is not None:
            raise ValueError(f"{cls.__name__} has no labels; do not pass num_labels")
        return config

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The encoder's last hidden state, (batch, seq, dim)."""
        return self.distilbert(input_ids, attention_mask, token_type_ids)


class LabelledHead(TaskHead):
    """A head whose output width is the number of labels in ``config.id2label``."""

    # Head weight whose first axis is the label count, read when config.json names no labels.
    label_weight = "classifier.weight"

    @classmethod
    def configure(cls, config, num_labels, head):
        """Give ``config`` ``num_labels`` labels: the argument, config.json, or the weights."""
        if num_labels is None and config.id2label:
            return config
        if num_labels is None:
            weight = head.get(cls.label_weight)
            # Hugging Face's default when neither config.json nor the weights say.
            num_labels = int(weight.shape[0]) if weight is not None else 2
        if not isinstance(num_labels, int) or num_labels <= 0:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
        if num_labels == config.num_labels:
            return config
        raw = config.to_dict()
        raw["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        raw["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
        return DistilBertConfig.from_dict(raw)

    @property
    def num_labels(self) -> int:
        """Width of the logits."""
        return self.config.num_labels


class DistilBertForSequenceClassification(LabelledHead):
    """First-token hidden state -> pre_classifier -> ReLU -> classifier; (batch, labels).

    ``problem_type`` (from config.json) says how logits become scores: softmax for
    single-label, sigmoid for multi-label, none for regression.
    """

    def __init__(self, config: DistilBertConfig, backend: str | None = None):
        super().__init__(config, backend)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    @property
    def problem_type(self) -> str:
        """``single_label_classification``, ``multi_label_classification`` or ``regression``."""
        declared = self.config.extra.get("problem_type")
        if declared is None:
            # Hugging Face's pipeline reads one output without a problem type as a sigmoid.
            return "multi_label_classification" if self.num_labels == 1 else PROBLEM_TYPES[0]
        if declared not in PROBLEM_TYPES:
            raise ValueError(
                f"unknown problem_type {declared!r} in config.json; use one of "
                f"{', '.join(PROBLEM_TYPES)}"
            )
        return declared

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits of shape (batch, num_labels)."""
        first = self.encode(input_ids, attention_mask, token_type_ids)[:, 0]
        return self.classifier(F.relu(self.pre_classifier(first)))


class DistilBertForTokenClassification(LabelledHead):
    """A linear classifier on every token; logits (batch, seq, labels)."""

    model_types = ("distilbert", "bert")

    def __init__(self, config: DistilBertConfig, backend: str | None = None):
        super().__init__(config, backend)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits of shape (batch, seq, num_labels)."""
        return self.classifier(self.encode(input_ids, attention_mask, token_type_ids))


class DistilBertForQuestionAnswering(TaskHead):
    """Start and end logits of an extractive answer span, each (batch, seq)."""

    model_types = ("distilbert", "bert")

    def __init__(self, config: DistilBertConfig, backend: str | None = None):
        super().__init__(config, backend)
        self.qa_outputs = nn.Linear(config.dim, 2)

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(start_logits, end_logits)``, each of shape (batch, seq)."""
        logits = self.qa_outputs(self.encode(input_ids, attention_mask, token_type_ids))
        return logits[..., 0].contiguous(), logits[..., 1].contiguous()


class DistilBertForMaskedLM(TaskHead):
    """vocab_transform -> activation -> vocab_layer_norm -> vocab_projector; (batch, seq, vocab).

    The projector's weight is the word embedding matrix itself when the checkpoint leaves it
    out (Hugging Face's safetensors files do), and the checkpoint's own tensor otherwise.
    """

    tied_weights: ClassVar[dict[str, str]] = {
        "vocab_projector.weight": "distilbert.embeddings.word_embeddings.weight"
    }

    def __init__(self, config: DistilBertConfig, backend: str | None = None):
        super().__init__(config, backend)
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=VOCAB_LAYER_NORM_EPS)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)

    @property
    def projector_is_tied(self) -> bool:
        """True when the projector shares the word embeddings' storage."""
        words = self.distilbert.embeddings.word_embeddings.weight
        return self.vocab_projector.weight.data_ptr() == words.data_ptr()

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states (..., dim) -> (..., vocab_size)."""
        h = F.linear(hidden, self.vocab_transform.weight)
        if self.config.activation == "gelu":
            h = dispatch.bias_gelu(h, self.vocab_transform.bias, self.backend)
        else:
            h = F.relu(h + self.vocab_transform.bias)
        norm = self.vocab_layer_norm
        h = dispatch.add_layer_norm(h, None, norm.weight, norm.bias, norm.eps, self.backend)
        return self.vocab_projector(h)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits of shape (batch, seq, vocab_size)."""
        return self.predict(self.encode(input_ids, attention_mask, token_type_ids))


class DistilBertForMultipleChoice(TaskHead):
    """Scores each choice's first token like sequence classification; logits (batch, choices).

    Inputs are (batch, choices, seq): each choice is the prompt paired with one answer.
    """

    def __init__(self, config: DistilBertConfig, backend: str | None = None):
        super().__init__(config, backend)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, 1)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits of shape (batch, choices)."""
        if input_ids.dim() != 3:
            raise ValueError(
                "multiple choice input_ids must be (batch, choices, seq), "
                f"got shape {tuple(input_ids.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                f"input_ids shape {tuple(input_ids.shape)}"
            )
        batch, choices, seq = input_ids.shape

        def flat(t):
            return None if t is None else t.reshape(batch * choices, seq)

        first = self.encode(flat(input_ids), flat(attention_mask), flat(token_type_ids))[:, 0]
        logits = self.classifier(F.relu(self.pre_classifier(first)))
        return logits.view(batch, choices)


HEADS = {
    "sequence-classification": DistilBertForSequenceClassification,
    "token-classification": DistilBertForTokenClassification,
    "question-answering": DistilBertForQuestionAnswering,
    "masked-lm": DistilBertForMaskedLM,
    "multiple-choice": DistilBertForMultipleChoice,
}
