"""Export to ONNX and TensorRT, each export verified against a reference before it is kept.

:mod:`distilbert.export.onnx` (needs the ``onnx`` extra) and
:mod:`distilbert.export.tensorrt` (needs the ``tensorrt`` extra and a CUDA GPU) are imported
on use, so this package imports nothing heavy.
"""
