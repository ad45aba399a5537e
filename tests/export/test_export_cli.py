"""``distilbert export onnx`` and ``distilbert export tensorrt`` from the command line."""

from __future__ import annotations

import importlib.util
import os
import stat

import numpy as np
import pytest

from distilbert import cli
from distilbert.export import onnx as export
from tests.export.conftest import hf_outputs

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_export_onnx_writes_every_verified_file(tiny_distilbert_folder, tiny_distilbert_hf,
                                                tmp_path, capsys):
    out = tmp_path / "model.onnx"
    status = cli.main(["export", "onnx", "--model", str(tiny_distilbert_folder), "-o", str(out),
                       "--int32", "--optimize", "--fp16"])
    assert status == cli.EXIT_OK
    written = [out, tmp_path / "model.opt.onnx", tmp_path / "model.opt.fp16.onnx"]
    assert sorted(tmp_path.iterdir()) == sorted(written)
    stderr = capsys.readouterr().err
    for path in written:
        assert f"wrote {path} (" in stderr
    assert "base, opset 18, int32 ids" in stderr and "SkipLayerNormalization" in stderr
    umask = os.umask(0)
    os.umask(umask)
    for path in written:  # the permissions any new file gets, not a temporary file's 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

    # The main file is the transformers model in ONNX form.
    run = export.onnxruntime_runner(out)
    ids = np.array([[101, 2023, 2003, 102, 0], [101, 7592, 102, 0, 0]], dtype=np.int32)
    mask = (ids != 0).astype(np.int32)
    (got,) = run({"input_ids": ids, "attention_mask": mask})
    (want,) = hf_outputs(tiny_distilbert_hf, {"input_ids": ids, "attention_mask": mask})
    assert np.abs(got - want)[mask == 1].max() <= 1e-5


def test_quiet_and_verbose_work_on_either_side_of_the_format():
    parser = cli.build_parser()
    assert parser.parse_args(["export", "-v", "onnx", "-o", "m.onnx"]).verbose
    after = parser.parse_args(["export", "onnx", "-o", "m.onnx", "-q"])
    assert after.quiet and not after.verbose
    assert parser.parse_args(["export", "tensorrt", "m.onnx", "-o", "m.plan", "-v"]).verbose


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_export_tensorrt_without_tensorrt_says_so(exported_base, tmp_path, capsys):
    _, result = exported_base
    engine = tmp_path / "model.plan"
    status = cli.main(["export", "tensorrt", str(result.path), "-o", str(engine)])
    assert status == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "pip install 'distilbert[tensorrt]'" in err
    assert not engine.exists()


def test_export_tensorrt_refuses_bad_input(exported_head, exported_base, tmp_path, capsys):
    _, int64_export = exported_head("token-classification")
    status = cli.main(["export", "tensorrt", str(int64_export.path), "-o",
                       str(tmp_path / "x.plan")])
    assert status == cli.EXIT_BAD_INPUT
    assert "re-export with int32 ids" in capsys.readouterr().err

    _, result = exported_base
    status = cli.main(["export", "tensorrt", str(result.path), "-o", str(tmp_path / "x.plan"),
                       "--batch", "8,4,2"])
    assert status == cli.EXIT_BAD_INPUT
    assert "min <= opt <= max" in capsys.readouterr().err

    status = cli.main(["export", "tensorrt", str(tmp_path / "missing.onnx"), "-o",
                       str(tmp_path / "x.plan")])
    assert status == cli.EXIT_BAD_INPUT
    assert "missing.onnx" in capsys.readouterr().err
