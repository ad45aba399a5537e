"""TensorRT engines built from verified ONNX files, and a runtime that runs them.

:func:`build_engine` parses an ONNX file from :func:`distilbert.export.onnx.export_onnx`
(exported with ``int32_ids=True``) into a *strongly typed* network, the TensorRT 10 way of
fixing precisions (weak typing with per-layer precision hints is deprecated from 10.12 and
gone in 11): every tensor keeps the type the ONNX graph gives it. An fp32 engine is built
from the fp32 graph with TF32 disabled; an fp16 engine from the graph
:func:`~distilbert.export.onnx.convert_fp16` makes, where LayerNorm, softmax and the mask
add stay fp32 behind explicit casts, so TensorRT runs them in fp32 too. One optimisation
profile covers every input with min/opt/max batch and sequence (and choices) sizes.

The engine is written under a temporary name, run with :class:`TensorRTRunner` against
onnxruntime on the fp32 graph over every padding layout (fp32 within 1e-4, fp16 at cosine
0.999 per token), and renamed into place only if it agrees.

:class:`TensorRTRunner` binds every input and output by name (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3`` on the current torch CUDA stream), after
checking names, dtypes and shapes against the engine's profile (:func:`check_feed`).

TensorRT is the optional ``tensorrt`` extra and needs an NVIDIA GPU; without it
:func:`import_tensorrt` raises :class:`TensorRTUnavailableError`. The profile and feed
checks are plain Python and work anywhere.

Limits: one optimisation profile; inputs must be int32.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distilbert.export import onnx as onnx_export

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4
FP16_MIN_COSINE = 0.999
DEFAULT_WORKSPACE_GIB = 4.0
INSTALL_HINT = (
    "TensorRT is not installed: pip install 'distilbert[tensorrt]' "
    "(needs an NVIDIA GPU with a CUDA driver)"
)


class TensorRTUnavailableError(ImportError):
    """TensorRT (or a CUDA device for it) is missing."""


def import_tensorrt():
    """The ``tensorrt`` module, or TensorRTUnavailableError saying how to get it."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailableError(f"{INSTALL_HINT} ({err})") from err
    return tensorrt


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("TensorRT needs a CUDA device and torch sees none")


# ----------------------------------------------------------------------------------------
# Profiles and feed checks (plain Python)
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisRange:
    """min <= opt <= max sizes of one dynamic axis."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(
                f"axis range must satisfy 1 <= min <= opt <= max, got "
                f"{self.min}/{self.opt}/{self.max}"
            )

    @classmethod
    def parse(cls, text: str) -> AxisRange:
        """From ``"MIN,OPT,MAX"`` (or one number for a fixed size)."""
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(f"expected MIN,OPT,MAX integers, got {text!r}") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise ValueError(f"expected MIN,OPT,MAX (three integers), got {text!r}")
        return cls(*values)

    def clip(self, value: int) -> int:
        """``value`` moved into [min, max]."""
        return max(self.min, min(self.max, value))


@dataclass(frozen=True)
class InputProfile:
    """Shapes one input accepts: every axis between ``min`` and ``max``."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def check(self, shape: Sequence[int]) -> None:
        """Raise ValueError naming the input and axis when ``shape`` is outside the profile."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(self.min):
            raise ValueError(
                f"input {self.name!r} must have {len(self.min)} axes, got shape {shape}"
            )
        for axis, (size, low, high) in enumerate(zip(shape, self.min, self.max)):
            if not low <= size <= high:
                raise ValueError(
                    f"input {self.name!r} axis {axis} is {size}, outside the engine's "
                    f"profile [{low}, {high}] (shape {shape}; profile min {self.min}, "
                    f"max {self.max})"
                )


def build_profiles(
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    ranges: Mapping[str, AxisRange],
    max_positions: int | None = None,
) -> list[InputProfile]:
    """One InputProfile per input from its ONNX dims (sizes or axis names) and ``ranges``.

    A named axis takes the range of that name (``batch``, ``seq``, ``choices``); fixed sizes
    stay fixed. The ``seq`` range may not exceed ``max_positions``.
    """
    seq = ranges.get("seq")
    if seq is not None and max_positions is not None and seq.max > max_positions:
        raise ValueError(
            f"sequence range max {seq.max} exceeds the model's max_position_embeddings "
            f"({max_positions})"
        )
    profiles = []
    for name, dims in inputs:
        axes = []
        for axis, dim in enumerate(dims):
            if isinstance(dim, int) and dim > 0:
                axes.append(AxisRange(dim, dim, dim))
            elif dim in ranges:
                axes.append(ranges[dim])
            else:
                raise ValueError(
                    f"input {name!r} axis {axis} is dynamic ({dim!r}) but no range was given "
                    f"for it; known ranges: {', '.join(sorted(ranges))}"
                )
        profiles.append(InputProfile(
            name,
            tuple(a.min for a in axes),
            tuple(a.opt for a in axes),
            tuple(a.max for a in axes),
        ))
    return profiles


def check_feed(
    feed: Mapping[str, object],
    profiles: Sequence[InputProfile],
    dtypes: Mapping[str, np.dtype],
) -> None:
    """Raise ValueError unless ``feed`` holds exactly the profiled inputs, right dtype and shape.

    Values may be numpy arrays or torch tensors; all inputs must share one shape (ids, mask
    and token types describe the same tokens).
    """
    expected = [p.name for p in profiles]
    missing = [n for n in expected if n not in feed]
    unexpected = [n for n in feed if n not in expected]
    if missing or unexpected:
        raise ValueError(
            f"engine inputs are {expected}; missing {missing}, unexpected {unexpected}"
        )
    first = None
    for profile in profiles:
        value = feed[profile.name]
        dtype = _numpy_dtype(value)
        if dtype != np.dtype(dtypes[profile.name]):
            raise ValueError(
                f"input {profile.name!r} is {dtype} but the engine takes "
                f"{np.dtype(dtypes[profile.name])}; cast it first"
            )
        shape = tuple(value.shape)
        profile.check(shape)
        if first is None:
            first = (profile.name, shape)
        elif shape != first[1]:
            raise ValueError(
                f"input {profile.name!r} has shape {shape} but {first[0]!r} has {first[1]}"
            )


def _numpy_dtype(value) -> np.dtype:
    if isinstance(value, torch.Tensor):
        return np.dtype(torch.empty(0, dtype=value.dtype).numpy().dtype)
    return np.asarray(value).dtype


def onnx_inputs(path: str | Path) -> list[tuple[str, list[int | str], np.dtype]]:
    """(name, dims, numpy dtype) of each graph input; dims are sizes or axis names."""
    onnx = onnx_export.require("onnx")
    from onnx import helper

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}
    found = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        found.append((value.name, dims, dtype))
    return found


# ----------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------


def _trt_logger(trt):
    class _Logger(trt.ILogger):
        """Sends TensorRT's messages to this module's logger."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.levels = {
                trt.ILogger.INTERNAL_ERROR: logging.ERROR,
                trt.ILogger.ERROR: logging.ERROR,
                trt.ILogger.WARNING: logging.WARNING,
                trt.ILogger.INFO: logging.DEBUG,
                trt.ILogger.VERBOSE: logging.DEBUG,
            }

        def log(self, severity, msg):
            logger.log(self.levels.get(severity, logging.INFO), "TensorRT: %s", msg)

    return _Logger()


@dataclass
class BuildResult:
    """The engine written, its precision, profile and verification."""

    path: Path
    precision: str
    profiles: list[InputProfile]
    report: onnx_export.VerificationReport


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    batch: AxisRange = AxisRange(1, 8, 32),
    seq: AxisRange | None = None,
    choices: AxisRange = AxisRange(1, 2, 4),
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
) -> BuildResult:
    """Build a TensorRT engine from a verified int32 ONNX export, verify it, write it.

    ``seq`` defaults to 1 / 128 / max_position_embeddings. The fp16 engine is built from a
    float16 conversion of ``onnx_path`` (made and checked here). Raises
    TensorRTUnavailableError without TensorRT or CUDA, ValueError for a file or range that
    cannot work, ExportVerificationError when the engine disagrees with onnxruntime.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    task, _, config = onnx_export.describe(onnx_path)
    if config is None:
        raise ValueError(f"{onnx_path} was not exported by distilbert (no config metadata)")
    inputs = onnx_inputs(onnx_path)
    wide = [name for name, _, dtype in inputs if dtype != np.int32]
    if wide:
        raise ValueError(
            f"{onnx_path} takes {', '.join(wide)} as int64; TensorRT engines take int32 ids: "
            "re-export with int32 ids (export_onnx(..., int32_ids=True) or --int32)"
        )
    seq = seq or AxisRange(1, min(128, config.max_position_embeddings),
                           config.max_position_embeddings)
    ranges = {"batch": batch, "seq": seq, "choices": choices}
    profiles = build_profiles([(n, d) for n, d, _ in inputs], ranges,
                              config.max_position_embeddings)
    trt = import_tensorrt()
    _require_cuda()

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=engine_path.parent, prefix=".trt-") as scratch:
        network_source = onnx_path
        if precision == "fp16":
            network_source = Path(scratch) / f"{onnx_path.stem}.fp16.onnx"
            onnx_export.convert_fp16(onnx_path, network_source, config=config)
        serialized = _build_serialized(trt, network_source, profiles, precision, workspace_gib)
        tmp = Path(scratch) / "engine.plan"
        tmp.write_bytes(serialized)

        runner = TensorRTRunner(tmp)
        report = verify_engine(runner, onnx_path, precision=precision, ranges=ranges)
        report.raise_if_failed(f"TensorRT {precision} engine from {onnx_path}")
        os.replace(tmp, engine_path)
    logger.info("built %s engine %s from %s (%s)", precision, engine_path, onnx_path, task)
    return BuildResult(engine_path, precision, profiles, report)


def _build_serialized(trt, source: Path, profiles, precision: str, workspace_gib: float):
    trt_logger = _trt_logger(trt)
    builder = trt.Builder(trt_logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {source}: {'; '.join(errors)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 rounds fp32 matmul inputs to 10 mantissa bits: too coarse for 1e-4.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for entry in profiles:
        profile.set_shape(entry.name, entry.min, entry.opt, entry.max)
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {source} (see log)")
    return bytes(serialized)


def verify_engine(
    runner: TensorRTRunner,
    onnx_path: str | Path,
    *,
    precision: str,
    ranges: Mapping[str, AxisRange] | None = None,
) -> onnx_export.VerificationReport:
    """Compare an engine with onnxruntime on the fp32 ONNX over every padding layout."""
    _, spec, config = onnx_export.describe(onnx_path)
    ranges = ranges or runner.ranges()
    batch, seq = ranges["batch"], ranges["seq"]
    choices = 1
    if "choices" in spec.input_axes:
        choices = ranges["choices"].clip(2)
    cases = [
        (batch.clip(5) * choices, seq.clip(13)),
        (batch.min * choices, seq.min),
        (batch.clip(3) * choices, seq.opt),
    ]
    dtypes = {name: np.int32 for name in onnx_export.input_names(config)}
    feeds = onnx_export.verification_feeds(spec, config, cases, dtypes, choices=choices)
    if precision == "fp32":
        tolerances = {"atol": FP32_ATOL, "rtol": FP32_RTOL}
    else:
        tolerances = {"min_cosine": FP16_MIN_COSINE}
    report = onnx_export.compare_runners(
        runner, onnx_export.onnxruntime_runner(onnx_path), feeds, spec,
        names=(f"TensorRT {precision}", f"onnxruntime on {Path(onnx_path).name}"), **tolerances)
    logger.info("%s", report.summary())
    return report


# ----------------------------------------------------------------------------------------
# Runtime
# ----------------------------------------------------------------------------------------


def _torch_dtypes(trt) -> dict:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    for name, dtype in (("int64", torch.int64), ("bfloat16", torch.bfloat16)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = dtype
    return table


class TensorRTRunner:
    """A deserialised engine and one execution context; ``run(feed)`` gives its outputs.

    Every input and output is bound by name; inputs are checked against the engine's
    profile 0 and dtypes before anything runs on the GPU.
    """

    def __init__(self, engine_path: str | Path, device: str | torch.device = "cuda"):
        trt = import_tensorrt()
        _require_cuda()
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TensorRT engine does not exist: {self.path}")
        self.device = torch.device(device)
        self._logger = _trt_logger(trt)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ValueError(
                f"{self.path} is not a TensorRT engine for this TensorRT version and GPU"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        to_torch = _torch_dtypes(trt)
        self.torch_dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}
        self.numpy_dtypes = {
            n: np.dtype(torch.empty(0, dtype=self.torch_dtypes[n]).numpy().dtype)
            for n in self.input_names
        }
        self.profiles = [
            InputProfile(n, *(tuple(int(s) for s in shape)
                              for shape in self.engine.get_tensor_profile_shape(n, 0)))
            for n in self.input_names
        ]

    def ranges(self) -> dict[str, AxisRange]:
        """The profile as axis ranges of ``batch`` and ``seq`` (and ``choices``)."""
        first = self.profiles[0]
        axes = ("batch", "seq") if len(first.min) == 2 else ("batch", "choices", "seq")
        return {
            axis: AxisRange(first.min[i], first.opt[i], first.max[i])
            for i, axis in enumerate(axes)
        }

    def run(self, feed: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs by name, as CUDA tensors, for a feed of int arrays or tensors."""
        check_feed(feed, self.profiles, self.numpy_dtypes)
        stream = torch.cuda.current_stream(self.device)
        keep = []
        for name in self.input_names:
            tensor = torch.as_tensor(feed[name], device=self.device).contiguous()
            keep.append(tensor)
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"TensorRT rejected shape {tuple(tensor.shape)} for {name!r}")
            self.context.set_tensor_address(name, tensor.data_ptr())
        unresolved = self.context.infer_shapes()
        if unresolved:
            raise RuntimeError(f"TensorRT could not infer shapes of {list(unresolved)}")

        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.torch_dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.path}")
        stream.synchronize()
        return outputs

    def __call__(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs as float32 numpy arrays in engine order (a verification runner)."""
        outputs = self.run(feed)
        return [outputs[name].float().cpu().numpy() for name in self.output_names]
