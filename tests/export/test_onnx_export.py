"""ONNX export of the encoder and every head, checked with onnxruntime and polygraphy.

onnxruntime on CPU must match transformers itself (the models were loaded from transformers
checkpoints) within 1e-5 on real tokens for every padding layout, on shapes the exporter's
own verification did not use; a row with no real token must stay finite.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch

from distilbert.export import onnx as export
from tests.export.conftest import HEAD_NAMES, hf_outputs

ATOL = 1e-5
RTOL = 0.0  # a flat 1e-5, as the export itself verifies
# Shapes unlike export.DEFAULT_CASES, up to the tiny models' 64 positions.
FRESH_CASES = ((6, 17), (1, 64), (4, 5))


def assert_matches(reference, got, feeds, spec, atol=ATOL, rtol=RTOL, min_cosine=None):
    """compare_runners must pass; a failure lists every bad check."""
    report = export.compare_runners(got, reference, feeds, spec, atol=atol, rtol=rtol,
                                    min_cosine=min_cosine)
    failed = [f"{c.output} {c.case}: {c.problem}" for c in report.checks if not c.ok]
    assert not failed, "\n".join(failed)
    return report


def test_base_export_has_named_dynamic_int32_io(exported_base):
    _, result = exported_base
    proto = onnx.load(str(result.path))

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in proto.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask"]
    for value in inputs.values():
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT32
        assert dims(value) == ["batch", "seq"]
    (output,) = proto.graph.output
    assert output.name == "last_hidden_state"
    assert dims(output) == ["batch", "seq", 32]
    assert {o.domain: o.version for o in proto.opset_import}[""] == export.DEFAULT_OPSET
    metadata = export.read_metadata(result.path)
    assert metadata[export.TASK_METADATA_KEY] == "base"
    assert '"n_heads": 4' in metadata["distilbert.config"]


def test_export_verification_covers_every_layout(exported_base):
    _, result = exported_base
    report = result.report
    assert report.ok and len(report.checks) == len(export.DEFAULT_CASES)
    assert all(layout in report.checks[0].case for layout in export.LAYOUTS)
    assert report.max_abs_err <= ATOL


def test_base_onnx_matches_transformers(exported_base, tiny_distilbert_hf):
    _, result = exported_base
    spec = export.TASKS["base"]
    config = exported_base[0].config
    feeds = export.verification_feeds(spec, config, FRESH_CASES, {"input_ids": np.int32,
                                      "attention_mask": np.int32}, seed=7)
    assert_matches(lambda feed: hf_outputs(tiny_distilbert_hf, feed),
                   export.onnxruntime_runner(result.path), feeds, spec)


def test_bert_layout_export_takes_token_type_ids(tiny_bert_folder, tiny_bert_hf, export_dir):
    from distilbert.engine.model import DistilBertModel

    model = DistilBertModel.from_pretrained(tiny_bert_folder)
    result = export.export_onnx(model, export_dir / "bert.onnx")
    names = [i.name for i in onnx.load(str(result.path)).graph.input]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]

    spec = export.TASKS["base"]
    feeds = export.verification_feeds(spec, model.config, FRESH_CASES, seed=3)
    assert any(feed["token_type_ids"].any() for _, feed, _ in feeds)
    assert_matches(lambda feed: hf_outputs(tiny_bert_hf, feed),
                   export.onnxruntime_runner(result.path), feeds, spec)


@pytest.mark.parametrize("task", list(HEAD_NAMES))
def test_head_export_matches_transformers(task, exported_head, hf_heads):
    model, result = exported_head(task)
    spec = export.TASKS[task]
    assert result.task == task and result.report.ok
    proto = onnx.load(str(result.path))
    assert [o.name for o in proto.graph.output] == list(spec.outputs)
    input_dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert input_dims == list(spec.input_axes)

    feeds = export.verification_feeds(spec, model.config, FRESH_CASES, seed=5)
    assert_matches(lambda feed: hf_outputs(hf_heads(task), feed),
                   export.onnxruntime_runner(result.path), feeds, spec)


def test_failed_verification_writes_nothing(tiny_distilbert_folder, tmp_path):
    from distilbert.engine.model import DistilBertModel

    # onnxruntime and PyTorch differ by ~1e-7, so a zero tolerance must fail.
    model = DistilBertModel.from_pretrained(tiny_distilbert_folder)
    target = tmp_path / "model.onnx"
    with pytest.raises(export.ExportVerificationError, match="failed verification"):
        export.export_onnx(model, target, cases=((5, 9),), atol=0.0, rtol=0.0)
    assert list(tmp_path.iterdir()) == []


def test_verification_names_the_failing_layout(exported_base):
    model, result = exported_base
    spec = export.TASKS["base"]
    feeds = export.verification_feeds(spec, model.config, ((5, 9),),
                                      {"input_ids": np.int32, "attention_mask": np.int32})
    ort_run = export.onnxruntime_runner(result.path)

    def left_padding_broken(feed):
        outputs = ort_run(feed)
        outputs[0][2] += 1e-3  # row 2 is the left-padded one
        return outputs

    report = export.compare_runners(left_padding_broken, ort_run, feeds, spec, atol=ATOL,
                                    rtol=RTOL)
    assert not report.ok
    assert "left row" in report.checks[0].problem
    with pytest.raises(export.ExportVerificationError, match="left row"):
        report.raise_if_failed("test")


def test_empty_row_stays_finite_and_mask_layouts_differ(exported_base):
    _, result = exported_base
    run = export.onnxruntime_runner(result.path)
    ids = np.full((3, 8), 1000, dtype=np.int32)
    masks = np.array([[1] * 5 + [0] * 3, [0] * 3 + [1] * 5, [0] * 8], dtype=np.int32)
    (hidden,) = run({"input_ids": ids, "attention_mask": masks})
    assert np.isfinite(hidden).all()
    # Same tokens, different real positions: the mask must reach the attention.
    assert not np.allclose(hidden[0, :5], hidden[1, 3:], atol=1e-3)


def test_unknown_model_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no ONNX export is defined for Linear"):
        export.export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")


def test_old_opset_is_refused(exported_base, tmp_path):
    with pytest.raises(ValueError, match="opset 14 is too old"):
        export.export_onnx(exported_base[0], tmp_path / "x.onnx", opset=14)


def test_polygraphy_compares_onnxruntime_with_pytorch(exported_base):
    from polygraphy.backend.base import BaseRunner
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import Comparator, CompareFunc

    model, result = exported_base
    torch_run = export.torch_runner(export.cpu_fp32_copy(model))

    class TorchRunner(BaseRunner):
        """Our PyTorch model behind polygraphy's runner interface (its own needs CUDA)."""

        def __init__(self):
            super().__init__(name="pytorch", prefix="pytorch-runner")

        def activate_impl(self):
            """Nothing to load."""

        def get_input_metadata_impl(self):
            """Inputs as the ONNX graph declares them."""
            meta = TensorMetadata()
            for name in ("input_ids", "attention_mask"):
                meta.add(name, np.int32, ("batch", "seq"))
            return meta

        def infer_impl(self, feed_dict):
            """Run the model; outputs by name, with the time it took."""
            start = time.perf_counter()
            (hidden,) = torch_run(feed_dict)
            self.inference_time = time.perf_counter() - start
            return {"last_hidden_state": hidden}

        def deactivate_impl(self):
            """Nothing to release."""

    spec = export.TASKS["base"]
    feeds = [feed for _, feed, _ in export.verification_feeds(
        spec, model.config, FRESH_CASES, {"input_ids": np.int32, "attention_mask": np.int32})]
    runners = [OnnxrtRunner(SessionFromOnnx(str(result.path))), TorchRunner()]
    results = Comparator.run(runners, data_loader=feeds)
    accuracy = Comparator.compare_accuracy(
        results, compare_func=CompareFunc.simple(atol=ATOL, rtol=RTOL))
    assert bool(accuracy)
    assert len(results[0][1]) == len(FRESH_CASES)


@pytest.mark.slow
def test_full_size_export_and_fp16(base_distilbert_hf, hf_checkpoint, tmp_path):
    """distilbert-base sizes (768 wide, 6 layers, 12 heads): fp32 at 1e-5, fp16 cosine."""
    from distilbert.engine.model import DistilBertModel

    model = DistilBertModel.from_pretrained(hf_checkpoint(base_distilbert_hf, tokenizer=False))
    result = export.export_onnx(model, tmp_path / "full.onnx", int32_ids=True)
    spec = export.TASKS["base"]
    feeds = export.verification_feeds(spec, model.config, ((5, 64),), {"input_ids": np.int32,
                                      "attention_mask": np.int32}, seed=13)
    assert_matches(lambda feed: hf_outputs(base_distilbert_hf, feed),
                   export.onnxruntime_runner(result.path), feeds, spec)

    report = export.convert_fp16(result.path, tmp_path / "full.fp16.onnx")
    assert report.min_cosine >= export.FP16_MIN_COSINE
    assert_matches(lambda feed: hf_outputs(base_distilbert_hf, feed),
                   export.onnxruntime_runner(tmp_path / "full.fp16.onnx"), feeds, spec,
                   atol=None, min_cosine=export.FP16_MIN_COSINE)
