"""Fixtures of the export tests: random transformers models, our models loaded from their
checkpoints, and our ONNX exports of them, each built once per session.

The references are transformers models with every weight drawn at random (tests/conftest.py),
so an export or import that loses a bias, swaps Q and K or reads a matrix the wrong way
round shows in the outputs. Heads use one encoder layer to keep the exports quick.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

HEAD_NAMES = {
    "sequence-classification": "DistilBertForSequenceClassification",
    "token-classification": "DistilBertForTokenClassification",
    "question-answering": "DistilBertForQuestionAnswering",
    "masked-lm": "DistilBertForMaskedLM",
    "multiple-choice": "DistilBertForMultipleChoice",
}
LABELS = {0: "NEG", 1: "NEU", 2: "POS"}


def hf_outputs(hf_model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of a transformers model (or head) for a numpy feed, as float32 arrays."""
    inputs = {name: torch.from_numpy(np.asarray(v, dtype=np.int64)) for name, v in feed.items()}
    with torch.no_grad():
        out = hf_model(**inputs)
    if hasattr(out, "start_logits"):
        return [out.start_logits.numpy(), out.end_logits.numpy()]
    if hasattr(out, "logits"):
        return [out.logits.numpy()]
    return [out.last_hidden_state.numpy()]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    """A folder for the session's ONNX files."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def hf_heads(make_tiny_distilbert_config, randomize_weights):
    """Factory: ``hf_heads(task)`` gives a random one-layer transformers head (cached)."""
    import transformers

    built = {}

    def make(task: str):
        if task not in built:
            labels = {0: "START", 1: "END"} if task == "question-answering" else LABELS
            config = make_tiny_distilbert_config(
                n_layers=1, id2label=labels, label2id={v: k for k, v in labels.items()}
            )
            torch.manual_seed(len(built))
            model = getattr(transformers, HEAD_NAMES[task])(config)
            built[task] = randomize_weights(model, seed=10 + len(built))
        return built[task]

    return make


@pytest.fixture(scope="session")
def exported_base(tiny_distilbert_folder, export_dir):
    """Our encoder loaded from the tiny transformers checkpoint, exported with int32 ids."""
    from distilbert.engine.model import DistilBertModel
    from distilbert.export.onnx import export_onnx

    model = DistilBertModel.from_pretrained(tiny_distilbert_folder)
    result = export_onnx(model, export_dir / "base.onnx", int32_ids=True)
    return model, result


@pytest.fixture(scope="session")
def exported_head(hf_heads, hf_checkpoint, export_dir):
    """Factory: ``exported_head(task)`` -> (our head, ExportResult), exported once per task."""
    from distilbert.engine import heads
    from distilbert.export.onnx import export_onnx

    done = {}

    def make(task: str):
        if task not in done:
            folder = hf_checkpoint(hf_heads(task), "safetensors", tokenizer=False)
            model = heads.HEADS[task].from_pretrained(folder)
            done[task] = model, export_onnx(model, export_dir / f"{task}.onnx")
        return done[task]

    return make
