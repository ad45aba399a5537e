"""Shared fixtures: random Hugging Face reference models, their checkpoints on disk in every
layout, the built-in model folder and a corpus of real English sentences.

Everything costly is session-scoped and built lazily, so a test run pays only for what its
tests ask for. The reference models use transformers' eager attention and have every
weight (biases and LayerNorm parameters included) drawn at random, so a wrong key mapping
or a dropped bias cannot hide behind an all-zero initialisation.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from tests.checkpoints import copy_tokenizer, write_checkpoint

TINY_MAX_POSITIONS = 64
CORPUS_SIZE = 64


def randomize_hf_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every parameter: matrices N(0, 1/fan_in), biases and LayerNorm shifts N(0, 0.2²),
    LayerNorm scales 1 + N(0, 0.2²); a sinusoidal position table is left as built."""
    generator = torch.Generator().manual_seed(seed)
    sinusoidal = getattr(model.config, "sinusoidal_pos_embds", False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if sinusoidal and name.endswith("position_embeddings.weight"):
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if "LayerNorm" in name or "layer_norm" in name:
                value = (1.0 if name.endswith("weight") else 0.0) + 0.2 * noise
            elif param.dim() == 1:
                value = 0.2 * noise
            else:
                value = noise / math.sqrt(param.shape[-1])
            param.copy_(value)
    return model.eval()


def tiny_distilbert_config(**overrides):
    """A fresh transformers DistilBertConfig: 32 dim, 2 layers, 4 heads, 37 hidden, 64 positions,
    the BERT vocabulary size (so the built-in tokenizer fits), eager attention."""
    from transformers import DistilBertConfig

    values = {
        "vocab_size": 30522, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37,
        "max_position_embeddings": TINY_MAX_POSITIONS, "attn_implementation": "eager",
    }
    values.update(overrides)
    return DistilBertConfig(**values)


def tiny_bert_config(**overrides):
    """A fresh transformers BertConfig: 24 wide, 2 layers, 3 heads, 40 intermediate, two token
    types, LayerNorm eps 1e-3 (large enough that ignoring the config's value shows)."""
    from transformers import BertConfig

    values = {
        "vocab_size": 30522, "hidden_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 3, "intermediate_size": 40,
        "max_position_embeddings": TINY_MAX_POSITIONS, "type_vocab_size": 2,
        "layer_norm_eps": 1e-3, "attn_implementation": "eager",
    }
    values.update(overrides)
    return BertConfig(**values)


@pytest.fixture(scope="session")
def make_tiny_distilbert_config():
    """Factory: ``make_tiny_distilbert_config(**overrides)`` gives a fresh tiny HF config."""
    return tiny_distilbert_config


@pytest.fixture(scope="session")
def make_tiny_bert_config():
    """Factory: ``make_tiny_bert_config(**overrides)`` gives a fresh tiny HF BertConfig."""
    return tiny_bert_config


@pytest.fixture(scope="session")
def randomize_weights():
    """Factory: ``randomize_weights(hf_model, seed)`` redraws every weight of a HF model."""
    return randomize_hf_weights


@pytest.fixture(scope="session")
def tiny_distilbert_hf():
    """Tiny random ``transformers.DistilBertModel`` (fp32, eval), built once per session."""
    from transformers import DistilBertModel

    torch.manual_seed(0)
    return randomize_hf_weights(DistilBertModel(tiny_distilbert_config()), seed=1)


@pytest.fixture(scope="session")
def base_distilbert_hf():
    """Random ``transformers.DistilBertModel`` at distilbert-base sizes (768/6/12/3072)."""
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(
        dim=768, n_layers=6, n_heads=12, hidden_dim=3072, attn_implementation="eager"
    )
    return randomize_hf_weights(DistilBertModel(config), seed=2)


@pytest.fixture(scope="session")
def tiny_bert_hf():
    """Tiny random ``transformers.BertModel`` (BERT layout, token types, pooler)."""
    from transformers import BertModel

    torch.manual_seed(0)
    return randomize_hf_weights(BertModel(tiny_bert_config()), seed=3)


@pytest.fixture(scope="session")
def builtin_model_folder() -> Path:
    """Folder of the built-in model (all-MiniLM-L6-v2, sentence-transformers layout)."""
    from distilbert.engine.embedder import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory, builtin_model_folder):
    """Factory: ``hf_checkpoint(hf_model, fmt, prefix=None, shards=3, drop=(), tokenizer=True)``
    writes the model once per session per arguments and returns the folder.

    fmt is one of tests.checkpoints.FORMATS; tokenizer=True copies the built-in tokenizer in.
    """
    root = tmp_path_factory.mktemp("checkpoints")
    written: dict[tuple, tuple[Path, object]] = {}

    def write(hf_model, fmt="safetensors", prefix=None, shards=3, drop=(), tokenizer=True):
        key = (id(hf_model), fmt, prefix, shards, tuple(drop), tokenizer)
        if key not in written:
            label = "bare" if not prefix else prefix.rstrip(".")
            folder = root / f"{type(hf_model).__name__}-{fmt}-{label}-{len(written)}"
            write_checkpoint(hf_model, folder, fmt, prefix, shards, tuple(drop))
            if tokenizer:
                copy_tokenizer(builtin_model_folder, folder)
            # Holding the model keeps its id from being reused by another object.
            written[key] = (folder, hf_model)
        return written[key][0]

    return write


@pytest.fixture(scope="session")
def tiny_distilbert_folder(hf_checkpoint, tiny_distilbert_hf) -> Path:
    """``tiny_distilbert_hf`` as model.safetensors with the built-in tokenizer files."""
    return hf_checkpoint(tiny_distilbert_hf, "safetensors")


@pytest.fixture(scope="session")
def tiny_bert_folder(hf_checkpoint, tiny_bert_hf) -> Path:
    """``tiny_bert_hf`` as model.safetensors with the built-in tokenizer files."""
    return hf_checkpoint(tiny_bert_hf, "safetensors")


def english_corpus(size: int = CORPUS_SIZE) -> list[str]:
    """``size`` distinct prose sentences from Python's own help topics, in a fixed order."""
    from pydoc_data.topics import topics

    sentences, seen = [], set()
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            if paragraph.startswith((" ", "\t")):
                continue  # indented blocks are code or grammar, not prose
            text = " ".join(paragraph.split())
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                plain = sum(c.isalpha() or c == " " for c in sentence)
                if (40 <= len(sentence) <= 300 and sentence[0].isupper()
                        and sentence.endswith(".") and plain >= 0.9 * len(sentence)
                        and sentence not in seen):
                    seen.add(sentence)
                    sentences.append(sentence)
    step = max(len(sentences) // size, 1)
    picked = sentences[::step][:size]
    if len(picked) < size:
        raise RuntimeError(f"pydoc_data gave only {len(picked)} sentences, need {size}")
    return picked


@pytest.fixture(scope="session")
def english_sentences() -> list[str]:
    """64 real English sentences from ``pydoc_data.topics``, deterministic."""
    return english_corpus()
