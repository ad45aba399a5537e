"""Files derived from a verified export: the fp16 conversion and onnxruntime's optimizer.

fp16 must keep LayerNorm and softmax in fp32 and stay at cosine >= 0.9999 per token. The
optimizer's fused attention with per-row mask lengths assumes right padding; on a graph
where onnxruntime fuses attention (a transformers eager-attention export) that mode must be
caught by the layout checks and replaced, and an optimisation that cannot be verified must
leave no file.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from distilbert.engine.config import DistilBertConfig
from distilbert.export import onnx as export
from tests.export.conftest import hf_outputs

INT32 = {"input_ids": np.int32, "attention_mask": np.int32}


@pytest.fixture(scope="module")
def fp16_export(exported_base, export_dir):
    _, result = exported_base
    path = export_dir / "base.fp16.onnx"
    report = export.convert_fp16(result.path, path)
    return path, report


def test_fp16_keeps_norms_and_softmax_in_fp32(fp16_export):
    path, report = fp16_export
    assert report.ok and report.min_cosine >= export.FP16_MIN_COSINE
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    graph_io = list(inferred.graph.input) + list(inferred.graph.output)
    types.update({v.name: v.type.tensor_type.elem_type for v in graph_io})
    ops = {}
    for node in inferred.graph.node:
        ops.setdefault(node.op_type, []).append({types.get(name) for name in node.input[:1]})
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert ops["LayerNormalization"] and all(t == {fp32} for t in ops["LayerNormalization"])
    assert ops["Softmax"] and all(t == {fp32} for t in ops["Softmax"])
    assert any(t == {fp16} for t in ops["MatMul"]), "the matmuls should run in fp16"
    assert types["last_hidden_state"] == fp32 and types["input_ids"] == onnx.TensorProto.INT32


def test_fp16_cosine_against_transformers(fp16_export, tiny_distilbert_hf, tiny_distilbert_folder):
    path, _ = fp16_export
    config = DistilBertConfig.from_pretrained(tiny_distilbert_folder)
    spec = export.TASKS["base"]
    feeds = export.verification_feeds(spec, config, ((5, 33), (3, 64)), INT32, seed=11)
    report = export.compare_runners(
        export.onnxruntime_runner(path), lambda feed: hf_outputs(tiny_distilbert_hf, feed),
        feeds, spec, min_cosine=export.FP16_MIN_COSINE)
    assert report.ok, [c.problem for c in report.checks if not c.ok]
    # fp16 really changed the numbers (so the cosine bound is doing work).
    assert report.max_abs_err > 1e-5


def test_fp16_below_threshold_is_refused(exported_base, tmp_path):
    _, result = exported_base
    with pytest.raises(export.ExportVerificationError, match="cosine similarity"):
        export.convert_fp16(result.path, tmp_path / "x.onnx", min_cosine=1.0 + 1e-9)
    assert list(tmp_path.iterdir()) == []


def test_optimize_our_export(exported_base, export_dir):
    _, result = exported_base
    optimized = export.optimize_onnx(result.path, export_dir / "base.opt.onnx")
    assert optimized.report.ok and optimized.report.max_abs_err <= export.FP32_ATOL
    assert optimized.fused.get("SkipLayerNormalization", 0) > 0
    ops = {n.op_type for n in onnx.load(str(optimized.path)).graph.node}
    assert "SkipLayerNormalization" in ops


@pytest.fixture(scope="module")
def hf_eager_export(tiny_distilbert_hf, tmp_path_factory):
    """A TorchScript export of transformers' eager-attention DistilBERT (onnxruntime fuses its
    attention, unlike the SDPA-based graphs)."""
    path = tmp_path_factory.mktemp("hf") / "eager.onnx"
    ids = torch.randint(1000, 2000, (2, 8))
    axes = {0: "batch", 1: "seq"}
    torch.onnx.export(
        tiny_distilbert_hf, (ids, torch.ones_like(ids)), str(path), dynamo=False,
        opset_version=17, input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
    )
    return path


def _left_padded_error(path, hf_model) -> float:
    run = export.onnxruntime_runner(path)
    ids = np.random.default_rng(0).integers(1000, 2000, size=(2, 9))
    mask = np.array([[1] * 9, [0] * 4 + [1] * 5])
    (got,) = run({"input_ids": ids, "attention_mask": mask})
    (want,) = hf_outputs(hf_model, {"input_ids": ids, "attention_mask": mask})
    return float(np.abs(got - want)[mask == 1].max())


def test_index_mask_fusion_is_wrong_for_left_padding(hf_eager_export, tiny_distilbert_hf,
                                                     tiny_distilbert_folder, tmp_path):
    """The hazard exists: onnxruntime's default fusion of this graph breaks left padding."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = DistilBertConfig.from_pretrained(tiny_distilbert_folder)
    fused = optimize_model(str(hf_eager_export), model_type="bert", num_heads=config.n_heads,
                           hidden_size=config.dim, opt_level=0)
    assert fused.get_fused_operator_statistics()["Attention"] > 0
    fused.save_model_to_file(str(tmp_path / "index.onnx"))
    assert _left_padded_error(tmp_path / "index.onnx", tiny_distilbert_hf) > 1e-3


def test_optimizer_drops_the_right_padding_fusion(hf_eager_export, tiny_distilbert_hf,
                                                  tiny_distilbert_folder, tmp_path, caplog):
    config = DistilBertConfig.from_pretrained(tiny_distilbert_folder)
    result = export.optimize_onnx(hf_eager_export, tmp_path / "opt.onnx", config=config,
                                  attention="index")
    assert "index" in result.rejected and "left row" in result.rejected["index"]
    assert result.attention == "raw" and result.fused.get("Attention", 0) > 0
    assert "gives wrong numbers" in caplog.text
    assert _left_padded_error(result.path, tiny_distilbert_hf) <= export.FP32_ATOL


def test_optimizer_refuses_when_nothing_verifies(exported_base, tmp_path):
    _, result = exported_base
    # Every fusion changes rounding a little, so a zero tolerance rejects each mode.
    with pytest.raises(export.ExportVerificationError, match="refusing"):
        export.optimize_onnx(result.path, tmp_path / "x.onnx", atol=0.0, rtol=0.0)
    assert list(tmp_path.iterdir()) == []
