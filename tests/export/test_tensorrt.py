"""TensorRT: profile and feed checks everywhere; engine builds and runs where TensorRT is.

The tests marked ``tensorrt`` build real engines from our verified int32 exports and compare
them with onnxruntime (fp32 within 1e-4, fp16 at cosine 0.999 per token); they skip, with
the reason, on machines without TensorRT or a CUDA device.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from distilbert.export import onnx as export
from distilbert.export import tensorrt as trt_export
from distilbert.export.tensorrt import AxisRange, InputProfile, build_profiles, check_feed

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
INT32 = {"input_ids": np.int32, "attention_mask": np.int32}


# ----------------------------------------------------------------------------------------
# Plain-Python parts: run everywhere
# ----------------------------------------------------------------------------------------


def test_axis_range_parses_and_validates():
    assert AxisRange.parse("1,8,32") == AxisRange(1, 8, 32)
    assert AxisRange.parse("16") == AxisRange(16, 16, 16)
    assert AxisRange(2, 4, 8).clip(100) == 8 and AxisRange(2, 4, 8).clip(1) == 2
    with pytest.raises(ValueError, match="min <= opt <= max"):
        AxisRange(4, 2, 8)
    with pytest.raises(ValueError, match="three integers"):
        AxisRange.parse("1,2")
    with pytest.raises(ValueError, match="integers"):
        AxisRange.parse("a,b,c")


def test_profiles_come_from_the_onnx_inputs(exported_base):
    _, result = exported_base
    inputs = trt_export.onnx_inputs(result.path)
    assert [(n, d, t) for n, d, t in inputs] == [
        ("input_ids", ["batch", "seq"], np.dtype(np.int32)),
        ("attention_mask", ["batch", "seq"], np.dtype(np.int32)),
    ]
    ranges = {"batch": AxisRange(1, 4, 16), "seq": AxisRange(2, 32, 64)}
    profiles = build_profiles([(n, d) for n, d, _ in inputs], ranges, max_positions=64)
    assert profiles == [
        InputProfile("input_ids", (1, 2), (4, 32), (16, 64)),
        InputProfile("attention_mask", (1, 2), (4, 32), (16, 64)),
    ]


def test_profiles_refuse_impossible_ranges():
    dims = [("input_ids", ["batch", "seq"])]
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        build_profiles(dims, {"batch": AxisRange(1, 1, 1), "seq": AxisRange(1, 8, 513)}, 512)
    with pytest.raises(ValueError, match="axis 2 is dynamic \\('choices'\\)"):
        build_profiles([("input_ids", ["batch", "seq", "choices"])],
                       {"batch": AxisRange(1, 1, 1), "seq": AxisRange(1, 1, 1)})
    fixed = build_profiles([("input_ids", [4, "seq"])], {"seq": AxisRange(1, 2, 3)})
    assert fixed[0].min == (4, 1) and fixed[0].max == (4, 3)


def test_feed_checks_name_the_problem():
    profiles = [InputProfile("input_ids", (1, 1), (4, 16), (8, 64)),
                InputProfile("attention_mask", (1, 1), (4, 16), (8, 64))]
    dtypes = {"input_ids": np.int32, "attention_mask": np.int32}
    good = {name: np.ones((2, 10), dtype=np.int32) for name in dtypes}
    check_feed(good, profiles, dtypes)
    check_feed({k: torch.from_numpy(v) for k, v in good.items()}, profiles, dtypes)

    with pytest.raises(ValueError, match="missing \\['attention_mask'\\]"):
        check_feed({"input_ids": good["input_ids"]}, profiles, dtypes)
    with pytest.raises(ValueError, match="'input_ids' is int64 but the engine takes int32"):
        check_feed({**good, "input_ids": good["input_ids"].astype(np.int64)}, profiles, dtypes)
    with pytest.raises(ValueError, match="'input_ids' axis 1 is 65, outside .* \\[1, 64\\]"):
        check_feed({k: np.ones((2, 65), np.int32) for k in dtypes}, profiles, dtypes)
    with pytest.raises(ValueError, match="'input_ids' must have 2 axes"):
        check_feed({k: np.ones((2, 3, 4), np.int32) for k in dtypes}, profiles, dtypes)
    with pytest.raises(ValueError, match="'attention_mask' has shape \\(2, 9\\)"):
        check_feed({**good, "attention_mask": np.ones((2, 9), np.int32)}, profiles, dtypes)


def test_int64_exports_are_refused_before_building(exported_head, tmp_path):
    _, result = exported_head("token-classification")  # exported with int64 ids
    with pytest.raises(ValueError, match="re-export with int32 ids"):
        trt_export.build_engine(result.path, tmp_path / "x.plan")
    assert not (tmp_path / "x.plan").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_missing_tensorrt_is_reported(exported_base, tmp_path):
    _, result = exported_base
    with pytest.raises(trt_export.TensorRTUnavailableError, match="distilbert\\[tensorrt\\]"):
        trt_export.build_engine(result.path, tmp_path / "x.plan")
    with pytest.raises(trt_export.TensorRTUnavailableError, match="not installed"):
        trt_export.TensorRTRunner(tmp_path / "x.plan")


# ----------------------------------------------------------------------------------------
# Real engines: need TensorRT and a GPU
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensorrt_ready():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install .[tensorrt])")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA device")


@pytest.fixture(scope="module")
def engines(tensorrt_ready, exported_base, tmp_path_factory):
    """fp32 and fp16 engines of the int32 base export (built and verified once)."""
    _, result = exported_base
    folder = tmp_path_factory.mktemp("engines")
    ranges = {"batch": AxisRange(1, 4, 8), "seq": AxisRange(1, 32, 64)}
    return {
        precision: trt_export.build_engine(result.path, folder / f"base.{precision}.plan",
                                           precision=precision, **ranges)
        for precision in trt_export.PRECISIONS
    }


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", trt_export.PRECISIONS)
def test_engine_matches_onnxruntime(precision, engines, exported_base):
    model, result = exported_base
    built = engines[precision]
    assert built.report.ok and built.path.is_file()
    runner = trt_export.TensorRTRunner(built.path)
    assert runner.input_names == ["input_ids", "attention_mask"]
    assert runner.ranges()["seq"] == AxisRange(1, 32, 64)

    spec = export.TASKS["base"]
    feeds = export.verification_feeds(spec, model.config, ((8, 64), (3, 29), (1, 1)), INT32,
                                      seed=9)
    if precision == "fp32":
        tolerance = {"atol": trt_export.FP32_ATOL, "rtol": trt_export.FP32_RTOL}
    else:
        tolerance = {"min_cosine": trt_export.FP16_MIN_COSINE}
    report = export.compare_runners(runner, export.onnxruntime_runner(result.path), feeds,
                                    spec, **tolerance)
    assert report.ok, [f"{c.case}: {c.problem}" for c in report.checks if not c.ok]


@pytest.mark.tensorrt
def test_runner_checks_inputs_against_the_profile(engines):
    runner = trt_export.TensorRTRunner(engines["fp32"].path)
    ids = np.ones((2, 8), dtype=np.int32)
    outputs = runner.run({"input_ids": ids, "attention_mask": ids})
    assert tuple(outputs["last_hidden_state"].shape) == (2, 8, 32)
    with pytest.raises(ValueError, match="is int64 but the engine takes int32"):
        runner.run({"input_ids": ids.astype(np.int64), "attention_mask": ids})
    with pytest.raises(ValueError, match="axis 0 is 9, outside"):
        runner.run({"input_ids": np.ones((9, 8), np.int32),
                    "attention_mask": np.ones((9, 8), np.int32)})


@pytest.mark.tensorrt
@pytest.mark.parametrize("task", ["question-answering", "multiple-choice"])
def test_head_engines(task, tensorrt_ready, exported_head, hf_heads, tmp_path):
    model, _ = exported_head(task)
    source = export.export_onnx(model, tmp_path / f"{task}.onnx", int32_ids=True)
    built = trt_export.build_engine(
        source.path, tmp_path / f"{task}.plan", precision="fp32",
        batch=AxisRange(1, 2, 4), seq=AxisRange(1, 16, 64), choices=AxisRange(1, 2, 3))
    assert built.report.ok
    runner = trt_export.TensorRTRunner(built.path)
    assert runner.output_names == list(export.TASKS[task].outputs)
