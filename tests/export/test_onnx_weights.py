"""``from_onnx``: weights read back out of ONNX files, ours and transformers' own exports.

Each transformers model is exported with ``torch.onnx.export`` (both exporters, several
opsets), imported, and must then match the transformers model within 1e-5 on real tokens of
padded batches. Exporters rename the transposed MatMul weights (``onnx::MatMul_N``,
``val_N``); one test strips every name so only the graph structure is left to go by.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch

from distilbert.engine import heads
from distilbert.engine.config import DistilBertConfig
from distilbert.engine.model import DistilBertModel
from distilbert.export import onnx as export
from tests.export.conftest import HEAD_NAMES, hf_outputs

ATOL = 1e-5
RTOL = 0.0  # a flat 1e-5, as the export itself verifies
CASES = ((5, 13), (3, 40))
# (exporter, opset): opset 14 makes TorchScript decompose LayerNorm into primitive ops.
EXPORTERS = [("torchscript", 14), ("torchscript", 17), ("dynamo", 18)]


class _WithTokenTypes(torch.nn.Module):
    """transformers' BertModel behind a positional (ids, mask, token types) signature."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        """The last hidden state."""
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids).last_hidden_state


def export_hf(model, path, exporter: str, opset: int, names, shape=(2, 8)):
    """``torch.onnx.export`` of a transformers model with dynamic axes, as a user would."""
    ids = torch.randint(1000, 2000, shape, generator=torch.Generator().manual_seed(0))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))[: len(names)]
    axes = {i: name for i, name in enumerate(("batch", "choices", "seq")[-len(shape):])}
    if len(shape) == 2:
        axes = {0: "batch", 1: "seq"}
    if exporter == "dynamo":
        torch.onnx.export(model, args, str(path), dynamo=True, opset_version=opset,
                          input_names=list(names), external_data=False, verbose=False,
                          dynamic_shapes={n: dict(axes) for n in names})
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(names), dynamic_axes={n: axes for n in names})
    return path


def assert_model_matches(ours, hf_model, task: str, config, seed: int = 0):
    """Our model (torch backend, CPU) against transformers over every padding layout."""
    spec = export.TASKS[task]
    feeds = export.verification_feeds(spec, config, CASES, seed=seed)
    report = export.compare_runners(
        export.torch_runner(ours), lambda feed: hf_outputs(hf_model, feed), feeds, spec,
        atol=ATOL, rtol=RTOL)
    assert report.ok, [f"{c.output} {c.case}: {c.problem}" for c in report.checks if not c.ok]


@pytest.mark.parametrize("exporter,opset", EXPORTERS, ids=[f"{e}{o}" for e, o in EXPORTERS])
def test_transformers_distilbert_export_imports(exporter, opset, tiny_distilbert_hf,
                                                tiny_distilbert_folder, tmp_path):
    path = export_hf(tiny_distilbert_hf, tmp_path / "model.onnx", exporter, opset,
                     ["input_ids", "attention_mask"])
    model = DistilBertModel.from_onnx(path, backend="torch")
    assert model.backend == "torch"

    # No config.json beside the file: the config is read off the graph.
    expected = DistilBertConfig.from_pretrained(tiny_distilbert_folder)
    for field in ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim", "activation",
                  "max_position_embeddings", "layer_norm_eps", "model_type"):
        assert getattr(model.config, field) == getattr(expected, field), field
    assert_model_matches(model, tiny_distilbert_hf, "base", model.config)


@pytest.mark.parametrize("exporter,opset", EXPORTERS[1:], ids=[f"{e}{o}" for e, o in EXPORTERS[1:]])
def test_transformers_bert_export_imports(exporter, opset, tiny_bert_hf, tiny_bert_folder,
                                          tmp_path):
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = export_hf(_WithTokenTypes(tiny_bert_hf).eval(), tmp_path / "bert.onnx", exporter,
                     opset, names)
    model = DistilBertModel.from_onnx(path)
    expected = DistilBertConfig.from_pretrained(tiny_bert_folder)
    assert (model.config.model_type, model.config.type_vocab_size) == ("bert", 2)
    assert (model.config.n_heads, model.config.layer_norm_eps) == (
        expected.n_heads, expected.layer_norm_eps)
    assert_model_matches(model, tiny_bert_hf, "base", model.config)


@pytest.mark.parametrize("task", list(HEAD_NAMES))
def test_transformers_head_export_imports(task, hf_heads, tmp_path):
    hf_model = hf_heads(task)
    shape = (2, 2, 8) if task == "multiple-choice" else (2, 8)
    path = export_hf(hf_model, tmp_path / f"{task}.onnx", "torchscript", 17,
                     ["input_ids", "attention_mask"], shape)
    # A config.json beside the file (as a transformers checkpoint folder has) is used.
    hf_model.config.save_pretrained(tmp_path)
    model = heads.HEADS[task].from_onnx(path)
    assert model.config.id2label == {int(k): v for k, v in hf_model.config.id2label.items()}
    assert_model_matches(model, hf_model, task, model.config)
    if task == "masked-lm":
        assert model.projector_is_tied


def test_our_export_reimports_exactly(exported_base, exported_head):
    for model, result in (exported_base, exported_head("masked-lm")):
        cls = type(model)
        again = cls.from_onnx(result.path)
        assert again.config.to_dict() == model.config.to_dict()
        original, loaded = model.state_dict(), again.state_dict()
        assert original.keys() == loaded.keys()
        for key, value in original.items():
            assert torch.equal(value, loaded[key]), key


def _rename_everything(path, target):
    """Give every initializer, node output and node an opaque name (inputs/outputs kept)."""
    proto = onnx.load(str(path))
    keep = {v.name for v in list(proto.graph.input) + list(proto.graph.output)}
    names = {}

    def rename(name):
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in proto.graph.initializer:
        init.name = rename(init.name)
    for i, node in enumerate(proto.graph.node):
        node.name = f"n{i}"
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    del proto.graph.value_info[:]
    onnx.save(proto, str(target))
    return target


def test_structure_alone_maps_the_weights(tiny_distilbert_hf, tmp_path):
    path = export_hf(tiny_distilbert_hf, tmp_path / "named.onnx", "torchscript", 17,
                     ["input_ids", "attention_mask"])
    anonymous = _rename_everything(path, tmp_path / "anonymous.onnx")
    names = [i.name for i in onnx.load(str(anonymous)).graph.initializer]
    assert not any("weight" in n or "bias" in n for n in names)
    model = DistilBertModel.from_onnx(anonymous)
    assert_model_matches(model, tiny_distilbert_hf, "base", model.config, seed=4)


def test_head_weights_without_names_match_by_order(hf_heads, tmp_path):
    hf_model = hf_heads("sequence-classification")
    path = export_hf(hf_model, tmp_path / "cls.onnx", "torchscript", 17,
                     ["input_ids", "attention_mask"])
    anonymous = _rename_everything(path, tmp_path / "anonymous.onnx")
    model = heads.DistilBertForSequenceClassification.from_onnx(anonymous)
    assert model.num_labels == hf_model.config.num_labels  # read off the classifier width
    assert_model_matches(model, hf_model, "sequence-classification", model.config, seed=2)


def test_names_contradicting_the_graph_are_an_error(tiny_distilbert_hf, tmp_path):
    path = export_hf(tiny_distilbert_hf, tmp_path / "model.onnx", "torchscript", 17,
                     ["input_ids", "attention_mask"])
    proto = onnx.load(str(path))
    swap = {"transformer.layer.0.attention.q_lin.bias": "transformer.layer.0.attention.k_lin.bias",
            "transformer.layer.0.attention.k_lin.bias": "transformer.layer.0.attention.q_lin.bias"}
    for init in proto.graph.initializer:
        init.name = swap.get(init.name, init.name)
    for node in proto.graph.node:
        node.input[:] = [swap.get(n, n) for n in node.input]
        node.output[:] = [swap.get(n, n) for n in node.output]
    onnx.save(proto, str(tmp_path / "swapped.onnx"))
    # The unit in Q's place now carries K's bias name.
    with pytest.raises(ValueError, match=r"k_lin\.bias' is named for \S+k_lin but sits where "
                                         r"\S+q_lin belongs"):
        DistilBertModel.from_onnx(tmp_path / "swapped.onnx")


def test_explicit_config_wins(exported_base, tmp_path):
    model, result = exported_base
    copy = tmp_path / "copy.onnx"
    shutil.copy(result.path, copy)
    config = DistilBertConfig.from_dict({**model.config.to_dict(), "layer_norm_eps": 1e-6})
    assert DistilBertModel.from_onnx(copy, config=config).config.layer_norm_eps == 1e-6


def test_optimised_graph_is_refused(exported_base, export_dir):
    _, result = exported_base
    optimized = export.optimize_onnx(result.path, export_dir / "refuse.opt.onnx")
    with pytest.raises(ValueError, match="fused onnxruntime ops"):
        DistilBertModel.from_onnx(optimized.path)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        DistilBertModel.from_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(ValueError, match="junk.onnx is not a readable ONNX model"):
        DistilBertModel.from_onnx(junk)


def test_fp16_file_imports_as_fp32_weights(exported_base, export_dir):
    model, result = exported_base
    path = export_dir / "reimport.fp16.onnx"
    export.convert_fp16(result.path, path)
    again = DistilBertModel.from_onnx(path)
    for key, value in model.state_dict().items():
        loaded = again.state_dict()[key]
        assert loaded.dtype == torch.float32
        np.testing.assert_allclose(loaded.numpy(), value.numpy(), rtol=1e-3, atol=1e-4)
