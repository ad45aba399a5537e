"""Model configuration read from a checkpoint's ``config.json``.

Understands DistilBERT's own keys (``dim``, ``n_layers``, ...) and the BERT family's
(``hidden_size``, ``num_hidden_layers``, ...), so MiniLM-style checkpoints load too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ACTIVATIONS = ("gelu", "relu")

# BERT-family key -> DistilBERT key.
_BERT_KEYS = {
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "intermediate_size": "hidden_dim",
    "hidden_act": "activation",
}


@dataclass
class DistilBertConfig:
    """Sizes and options of a DistilBERT or BERT-family encoder."""

    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    activation: str = "gelu"
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 0
    model_type: str = "distilbert"
    id2label: dict[int, str] = field(default_factory=dict)
    label2id: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}"
            )
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads != 0:
            raise ValueError(
                f"dim {self.dim} is not divisible by n_heads {self.n_heads}"
            )
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        if self.id2label and not self.label2id:
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.n_heads

    @property
    def num_labels(self) -> int:
        """Number of labels named in ``id2label`` (0 when none are)."""
        return len(self.id2label)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DistilBertConfig:
        """Build from a ``config.json`` dictionary of either family."""
        model_type = raw.get("model_type", "distilbert")
        if model_type not in ("distilbert", "bert"):
            raise ValueError(
                f"unsupported model_type {model_type!r}; expected 'distilbert' or 'bert'"
            )
        values: dict[str, Any] = {"model_type": model_type}
        for key, value in raw.items():
            values[_BERT_KEYS.get(key, key)] = value
        if model_type == "bert":
            values.setdefault("type_vocab_size", 2)
        else:
            # DistilBERT has no token-type table, whatever the file says.
            values["type_vocab_size"] = 0
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in values.items() if k in known}
        kwargs["extra"] = {k: v for k, v in values.items() if k not in known}
        kwargs["type_vocab_size"] = int(kwargs.get("type_vocab_size") or 0)
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> DistilBertConfig:
        """Read ``config.json`` from a checkpoint folder (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"checkpoint path does not exist: {path}")
        if not file.is_file():
            raise FileNotFoundError(f"no config.json in {path}")
        with open(file, encoding="utf-8") as handle:
            try:
                raw = json.load(handle)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{file} must hold a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """A DistilBERT-style ``config.json`` dictionary."""
        out = asdict(self)
        out.update(out.pop("extra"))
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return out
