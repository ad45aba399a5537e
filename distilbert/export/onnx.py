"""ONNX export of the encoder and its task heads, verified before it is reported done.

:func:`export_onnx` traces the plain-PyTorch path (the ``torch`` backend is forced, so no
Triton kernel is ever traced) into a file with named inputs (``input_ids``,
``attention_mask``, and ``token_type_ids`` for BERT-layout models), named outputs per task
(:data:`TASKS`), dynamic batch, sequence (and choices) axes, opset :data:`DEFAULT_OPSET`
and int64 or int32 ids. The file is written under a temporary name, checked with onnxruntime
on CPU against the PyTorch model on several shapes with right-, left- and scattered padding
and a row with no real token (:func:`verify_onnx`: 1e-5 on real tokens, the empty row
finite), and only then renamed into place. :func:`convert_fp16` and :func:`optimize_onnx`
derive further files and verify them the same way.

Exporter: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default from
torch 2.9 on, present in 2.11 and 2.13). It traces with ``torch.export``, so sequence and
batch sizes stay symbolic through every shape computation (``arange(seq)``, the mask bias,
``LayerNorm``'s normalised shape) and the range checks in the model become guards on the
declared ``Dim`` bounds. The TorchScript exporter (``dynamo=False``) records Python ints
read from ``tensor.shape`` as traced values and fails on ``F.layer_norm(h, (h.shape[-1],))``
with dynamic axes ("ListConstruct ... is not constant"); it is also deprecated.

Opset: 18 by default, the opset the dynamo exporter's op library is written for (others go
through ONNX's version converter); 17 is the oldest accepted, the first with a single
``LayerNormalization`` op, which TensorRT runs as one normalisation layer and the fp16
conversion can keep in fp32 as a whole.

Limits: models whose weights exceed 2 GB (none of this family) would need external data;
the optimised graph holds onnxruntime contrib ops and runs only in onnxruntime.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distilbert.engine.config import DistilBertConfig
from distilbert.engine.onnx_weights import CONFIG_METADATA_KEY

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization is one op from opset 17 on
TASK_METADATA_KEY = "distilbert.task"
# Axis names that vary at run time; every other output axis has a fixed size.
DYNAMIC_AXES = ("batch", "choices", "seq")
LAYOUTS = ("full", "right", "left", "scattered", "empty")
# (rows, seq) per verification batch; each batch cycles through LAYOUTS row by row.
DEFAULT_CASES = ((5, 13), (2, 1), (3, 40))
FP32_ATOL = 1e-5
FP32_RTOL = 0.0  # a flat 1e-5: the project's fp32 bar on every output, logits too
FP16_MIN_COSINE = 0.9999
# Op types kept in float32 by the fp16 conversion (on top of onnxruntime's own list).
FP16_FP32_OPS = (
    "LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Softmax",
    "ReduceMean", "ReduceSum", "Pow", "Sqrt",
)
ATTENTION_MODES = ("raw", "index", "off")


@dataclass(frozen=True)
class TaskSpec:
    """How one task's graph looks from outside: model class, inputs and outputs."""

    model_class: str  # class name in distilbert.engine.model or distilbert.engine.heads
    outputs: tuple[str, ...]
    output_axes: tuple[tuple[str, ...], ...]  # one name per axis of each output
    input_axes: tuple[str, ...] = ("batch", "seq")


# Adding a head is one line here.
TASKS: dict[str, TaskSpec] = {
    "base": TaskSpec("DistilBertModel", ("last_hidden_state",), (("batch", "seq", "hidden"),)),
    "sequence-classification": TaskSpec(
        "DistilBertForSequenceClassification", ("logits",), (("batch", "labels"),)),
    "token-classification": TaskSpec(
        "DistilBertForTokenClassification", ("logits",), (("batch", "seq", "labels"),)),
    "question-answering": TaskSpec(
        "DistilBertForQuestionAnswering", ("start_logits", "end_logits"),
        (("batch", "seq"), ("batch", "seq"))),
    "masked-lm": TaskSpec("DistilBertForMaskedLM", ("logits",), (("batch", "seq", "vocab"),)),
    "multiple-choice": TaskSpec(
        "DistilBertForMultipleChoice", ("logits",), (("batch", "choices"),),
        input_axes=("batch", "choices", "seq")),
}


class ExportVerificationError(RuntimeError):
    """An exported or derived graph disagrees with its reference; nothing was written."""

    def __init__(self, message: str, report: VerificationReport | None = None):
        super().__init__(message)
        self.report = report


def require(module: str, extra: str = "onnx"):
    """Import ``module`` or raise ImportError saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module} is needed for this step: pip install 'distilbert[{extra}]' ({err})"
        ) from err


def task_of(model: nn.Module) -> str:
    """The :data:`TASKS` key of ``model``'s class."""
    name = type(model).__name__
    for task, spec in TASKS.items():
        if spec.model_class == name:
            return task
    known = ", ".join(spec.model_class for spec in TASKS.values())
    raise ValueError(f"no ONNX export is defined for {name}; known classes: {known}")


def input_names(config: DistilBertConfig) -> tuple[str, ...]:
    """Graph inputs: ids and mask, plus token types when the model has a token-type table."""
    names = ("input_ids", "attention_mask")
    return names + (("token_type_ids",) if config.type_vocab_size else ())


# ----------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_backend(model: nn.Module) -> Iterator[None]:
    """Run ``model`` (and anything it dispatches without an explicit backend) on torch ops."""
    from distilbert.kernels import dispatch

    saved = [(m, m.backend) for m in model.modules() if "backend" in vars(m)]
    for module, _ in saved:
        module.backend = "torch"
    use_backend = getattr(dispatch, "use_backend", None)
    scope = use_backend("torch") if use_backend else contextlib.nullcontext()
    try:
        with scope:
            yield
    finally:
        for module, backend in saved:
            module.backend = backend


def cpu_fp32_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode (tied weights stay tied)."""
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


def _example_inputs(spec: TaskSpec, config: DistilBertConfig, dtype: torch.dtype):
    sizes = {"batch": 2, "choices": 2, "seq": max(2, min(8, config.max_position_embeddings))}
    shape = tuple(sizes[axis] for axis in spec.input_axes)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, shape, generator=generator, dtype=dtype)
    tensors = [ids, torch.ones(shape, dtype=dtype)]
    if config.type_vocab_size:
        tensors.append(torch.zeros(shape, dtype=dtype))
    return tuple(tensors)


def _dynamic_shapes(spec: TaskSpec, config: DistilBertConfig, names: Sequence[str]):
    dims = {
        "batch": torch.export.Dim("batch", min=1),
        "choices": torch.export.Dim("choices", min=1),
        "seq": torch.export.Dim("seq", min=1, max=config.max_position_embeddings),
    }
    axes = {i: dims[axis] for i, axis in enumerate(spec.input_axes)}
    return {name: dict(axes) for name in names}


@dataclass
class ExportResult:
    """Where an export went and how its verification came out."""

    path: Path
    task: str
    opset: int
    int32_ids: bool
    report: VerificationReport | None


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    int32_ids: bool = False,
    verify: bool = True,
    cases: Sequence[tuple[int, int]] = DEFAULT_CASES,
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
) -> ExportResult:
    """Export ``model`` (the encoder or a task head) to ``path`` and verify it.

    The file appears at ``path`` only once onnxruntime agrees with the PyTorch model on
    every verification case; otherwise :class:`ExportVerificationError` is raised and
    nothing is left behind. ``int32_ids`` makes every input int32 (TensorRT's native type).
    """
    onnx = require("onnx")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: LayerNormalization needs {MIN_OPSET}+")
    encoder = getattr(model, "distilbert", model)
    if getattr(encoder, "int8", False):
        raise ValueError("an int8-quantized model cannot be exported; export the float model")
    task = task_of(model)
    spec = TASKS[task]
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX output must end in .onnx, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)

    reference = cpu_fp32_copy(model)
    config = reference.config
    names = input_names(config)
    dtype = torch.int32 if int32_ids else torch.int64
    example = _example_inputs(spec, config, dtype)
    tmp = _temporary_path(path)
    try:
        with torch_backend(reference), torch.no_grad(), warnings.catch_warnings():
            # The dynamo exporter warns about axis renaming and deprecated tree specs.
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            # The model itself, not a wrapper, so parameter names keep their checkpoint form.
            torch.onnx.export(
                reference,
                example,
                str(tmp),
                dynamo=True,
                opset_version=opset,
                input_names=list(names),
                output_names=list(spec.outputs),
                dynamic_shapes=_dynamic_shapes(spec, config, names),
                external_data=False,
                verbose=False,
            )
        proto = onnx.load(str(tmp))
        _set_metadata(proto, {
            TASK_METADATA_KEY: task,
            CONFIG_METADATA_KEY: json.dumps(config.to_dict()),
            "distilbert.exporter": f"torch.onnx dynamo, torch {torch.__version__}",
        })
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

        report = None
        if verify:
            report = verify_onnx(tmp, torch_runner(reference), cases=cases, atol=atol,
                                 rtol=rtol, spec=spec, config=config, subject=path.name)
            report.raise_if_failed(f"export of {type(model).__name__} to {path}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported %s (%s, opset %d) to %s", type(model).__name__, task, opset, path)
    return ExportResult(path, task, opset, int32_ids, report)


def _temporary_path(path: Path) -> Path:
    # Exclusive create with the usual permissions (mkstemp's would leave the file 0600).
    name = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.onnx")
    open(name, "xb").close()
    return name


def _set_metadata(proto, values: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata properties of an ONNX file (ours carry task and config)."""
    from distilbert.engine.onnx_weights import load_model_proto

    proto = load_model_proto(path, load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def describe(path: str | Path, task: str | None = None):
    """(task, spec, config or None) of an ONNX file: from our metadata, else ``task``."""
    metadata = read_metadata(path)
    task = task or metadata.get(TASK_METADATA_KEY) or "base"
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    raw = metadata.get(CONFIG_METADATA_KEY)
    config = DistilBertConfig.from_dict(json.loads(raw)) if raw else None
    return task, TASKS[task], config


# ----------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def torch_runner(model: nn.Module) -> Runner:
    """Run a (CPU, fp32) engine model on a numpy feed, torch backend forced."""

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.asarray(feed[n]).astype(np.int64)) for n in feed]
        with torch_backend(model), torch.no_grad():
            out = model(*tensors)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.float().numpy() for o in out]

    return run


def onnxruntime_session(path: str | Path):
    """A CPU onnxruntime session on ``path``."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_runner(path: str | Path) -> Runner:
    """Run an ONNX file with onnxruntime on CPU; outputs in graph order."""
    session = onnxruntime_session(path)

    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in session.run(None, feed)]

    return run


def layout_mask(layout: str, seq: int, rng: np.random.Generator) -> np.ndarray:
    """A (seq,) 0/1 mask: full, right- or left-padded, scattered, or empty."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    mask = np.zeros(seq, dtype=np.int64)
    real = max(1, (2 * seq) // 3)
    if layout == "full" or seq == 1 and layout != "empty":
        mask[:] = 1
    elif layout == "right":
        mask[:real] = 1
    elif layout == "left":
        mask[seq - real:] = 1
    elif layout == "scattered":
        mask[rng.permutation(seq)[:real]] = 1
        if mask.all():
            mask[seq // 2] = 0
    return mask


def verification_feeds(
    spec: TaskSpec,
    config: DistilBertConfig,
    cases: Sequence[tuple[int, int]] = DEFAULT_CASES,
    dtypes: dict[str, np.dtype] | None = None,
    seed: int = 0,
    choices: int = 2,
) -> list[tuple[str, dict[str, np.ndarray], list[str]]]:
    """(description, feed, layout of each row) per case; rows cycle through LAYOUTS.

    ``cases`` are (rows, seq) pairs; for multiple choice the rows (rounded up to a multiple
    of ``choices``) become examples of ``choices`` choices each.
    """
    rng = np.random.default_rng(seed)
    choices = choices if "choices" in spec.input_axes else 1
    feeds = []
    for rows, seq in cases:
        seq = min(seq, config.max_position_embeddings)
        rows = -(-rows // choices) * choices
        layouts = [LAYOUTS[i % len(LAYOUTS)] for i in range(rows)]
        mask = np.stack([layout_mask(layout, seq, rng) for layout in layouts])
        ids = rng.integers(0, config.vocab_size, size=(rows, seq))
        ids = np.where(mask == 1, ids, config.pad_token_id)
        arrays = {"input_ids": ids, "attention_mask": mask}
        if config.type_vocab_size:
            arrays["token_type_ids"] = rng.integers(0, config.type_vocab_size, size=(rows, seq))
        if choices > 1:
            arrays = {k: v.reshape(rows // choices, choices, seq) for k, v in arrays.items()}
        dtypes = dtypes or {}
        feed = {
            name: arrays[name].astype(dtypes.get(name, np.int64))
            for name in input_names(config)
        }
        shape = " x ".join(f"{a} {n}" for a, n in zip(spec.input_axes, feed["input_ids"].shape))
        feeds.append((shape, feed, layouts))
    return feeds


@dataclass
class Check:
    """One output of one verification case compared with its reference."""

    case: str
    output: str
    max_abs_err: float
    min_cosine: float | None
    ok: bool
    problem: str = ""


@dataclass
class VerificationReport:
    """Every check of one verification run."""

    subject: str
    reference: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(check.ok for check in self.checks)

    @property
    def max_abs_err(self) -> float:
        """Largest absolute error on real tokens over all checks."""
        return max((c.max_abs_err for c in self.checks), default=0.0)

    @property
    def min_cosine(self) -> float | None:
        """Smallest cosine similarity over all checks (None when not measured)."""
        values = [c.min_cosine for c in self.checks if c.min_cosine is not None]
        return min(values) if values else None

    def summary(self) -> str:
        """One line: how many checks, the worst error and cosine."""
        text = (f"{len(self.checks)} checks of {self.subject} against {self.reference}: "
                f"max abs err {self.max_abs_err:.2e}")
        if self.min_cosine is not None:
            text += f", min cosine {self.min_cosine:.6f}"
        return text

    def raise_if_failed(self, what: str) -> None:
        """Raise ExportVerificationError listing every failed check."""
        failed = [c for c in self.checks if not c.ok]
        if failed:
            lines = "; ".join(f"{c.output} on {c.case}: {c.problem}" for c in failed[:6])
            raise ExportVerificationError(
                f"{what} failed verification against {self.reference} "
                f"({len(failed)} of {len(self.checks)} checks): {lines}", self)


def compare_runners(
    subject: Runner,
    reference: Runner,
    feeds,
    spec: TaskSpec,
    *,
    atol: float | None = None,
    rtol: float = 0.0,
    min_cosine: float | None = None,
    names: tuple[str, str] = ("candidate", "reference"),
) -> VerificationReport:
    """Compare two runners on ``feeds`` (see :func:`verification_feeds`) output by output.

    Real positions must agree within ``atol + rtol * |reference|`` (when ``atol`` is set)
    and have cosine similarity at least ``min_cosine`` (when set); positions without a real
    token only have to be finite.
    """
    report = VerificationReport(*names)
    for case, feed, layouts in feeds:
        got_all, want_all = subject(feed), reference(feed)
        mask = feed["attention_mask"] != 0
        for name, axes, got, want in zip(spec.outputs, spec.output_axes, got_all, want_all):
            label = f"{case} ({', '.join(layouts)})"
            report.checks.append(
                _compare(label, name, axes, spec.input_axes, mask, got, want, atol, rtol,
                         min_cosine, layouts))
    return report


def _valid_positions(mask: np.ndarray, input_axes, output_axes) -> np.ndarray:
    """Which output positions (over the axes shared with the input) see a real token."""
    valid = mask
    for index in reversed(range(len(input_axes))):
        if input_axes[index] not in output_axes:
            valid = valid.any(axis=index)
    return valid


def _compare(case, name, axes, input_axes, mask, got, want, atol, rtol, min_cosine,
             layouts) -> Check:
    if got.shape != want.shape:
        return Check(case, name, float("inf"), None, False,
                     f"shape {got.shape} but the reference has {want.shape}")
    valid = _valid_positions(mask, input_axes, axes)
    real_got, real_want = got[valid], want[valid]
    problems = []
    if not np.isfinite(got).all():
        problems.append(f"{int((~np.isfinite(got)).sum())} non-finite values")

    err = np.abs(real_got.astype(np.float64) - real_want)
    max_err = float(err.max()) if err.size else 0.0
    if atol is not None and err.size:
        excess = err - (atol + rtol * np.abs(real_want))
        bad = int((excess > 0).sum())
        if bad:
            where = np.argwhere(valid)[np.unravel_index(np.argmax(excess), excess.shape)[0]]
            row = int(where[0])
            if "choices" in input_axes:
                row = row * mask.shape[1] + int(where[1])
            layout = layouts[row] if row < len(layouts) else "?"
            problems.append(
                f"{bad} of {err.size} values off by up to {max_err:.2e} (atol {atol:g}, rtol "
                f"{rtol:g}), worst at position {tuple(int(i) for i in where)} ({layout} row)")

    cosine = None
    if min_cosine is not None and err.size:
        cosine = _min_cosine(got, want, valid)
        if cosine < min_cosine:
            problems.append(f"cosine similarity {cosine:.6f} < {min_cosine}")
    return Check(case, name, max_err, cosine, not problems, "; ".join(problems))


def _min_cosine(got: np.ndarray, want: np.ndarray, valid: np.ndarray) -> float:
    """Per-token cosine along the feature axes; per row when an output has none."""
    if got.ndim > valid.ndim:
        a = got[valid].reshape(int(valid.sum()), -1).astype(np.float64)
        b = want[valid].reshape(int(valid.sum()), -1).astype(np.float64)
    else:
        rows = [(got[i][valid[i]], want[i][valid[i]]) for i in range(len(got)) if valid[i].any()]
        a = [r[0].astype(np.float64).ravel() for r in rows]
        b = [r[1].astype(np.float64).ravel() for r in rows]
        return min(_cos(x, y) for x, y in zip(a, b))
    return min(_cos(x, y) for x, y in zip(a, b))


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    norm = np.linalg.norm(x) * np.linalg.norm(y)
    if norm == 0.0:
        return 1.0 if np.array_equal(x, y) else 0.0
    return float(np.dot(x, y) / norm)


def session_input_dtypes(path: str | Path) -> dict[str, np.dtype]:
    """numpy dtype of each graph input, read from an onnxruntime session."""
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
    session = onnxruntime_session(path)
    return {i.name: types.get(i.type, np.int64) for i in session.get_inputs()}


def verify_onnx(
    path: str | Path,
    reference: Runner,
    *,
    spec: TaskSpec | None = None,
    config: DistilBertConfig | None = None,
    task: str | None = None,
    cases: Sequence[tuple[int, int]] = DEFAULT_CASES,
    atol: float | None = FP32_ATOL,
    rtol: float = FP32_RTOL,
    min_cosine: float | None = None,
    reference_name: str = "the PyTorch model",
    subject: str | None = None,
) -> VerificationReport:
    """Run ``path`` with onnxruntime on CPU over every layout and compare with ``reference``.

    ``subject`` names the file in the report (default: its name).
    """
    if spec is None or config is None:
        _, found_spec, found_config = describe(path, task)
        spec = spec or found_spec
        config = config or found_config
    if config is None:
        raise ValueError(f"{path} carries no config; pass config=")
    feeds = verification_feeds(spec, config, cases, session_input_dtypes(path))
    report = compare_runners(
        onnxruntime_runner(path), reference, feeds, spec, atol=atol, rtol=rtol,
        min_cosine=min_cosine,
        names=(f"onnxruntime on {subject or Path(path).name}", reference_name))
    logger.info("%s", report.summary())
    return report


# ----------------------------------------------------------------------------------------
# float16
# ----------------------------------------------------------------------------------------


def convert_fp16(
    source: str | Path,
    path: str | Path,
    *,
    task: str | None = None,
    config: DistilBertConfig | None = None,
    cases: Sequence[tuple[int, int]] = DEFAULT_CASES,
    min_cosine: float = FP16_MIN_COSINE,
) -> VerificationReport:
    """Write a float16 copy of ``source`` to ``path``, LayerNorm and softmax kept in fp32.

    Uses onnxruntime's float16 converter with :data:`FP16_FP32_OPS` blocked, plus the Add
    that puts the mask bias on the attention scores (in fp16 the bias clamps to -65504 and
    the sum could overflow to -inf, making a row with no real token NaN). Inputs and outputs
    keep their types. Verified against ``source`` with onnxruntime on CPU at cosine
    ``min_cosine`` per token; raises :class:`ExportVerificationError` otherwise.
    """
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    source, path = Path(source), Path(path)
    _, spec, found = describe(source, task)
    config = config or found
    proto = onnx.load(str(source))
    producers = {out: node for node in proto.graph.node for out in node.output}
    score_adds = [
        producers[n.input[0]].name for n in proto.graph.node
        if n.op_type == "Softmax" and n.input[0] in producers
        and producers[n.input[0]].op_type == "Add"
    ]
    converted = float16.convert_float_to_float16(
        proto,
        keep_io_types=True,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_FP32_OPS),
        node_block_list=score_adds,
    )
    # The converter appends its Cast nodes at the end and leaves some of the exporter's fp32
    # type annotations behind: sort the nodes (ONNX requires it; TensorRT's parser reads in
    # order) and drop the optional annotations.
    del converted.graph.value_info[:]
    require("onnxruntime.transformers.onnx_model").OnnxModel(converted).topological_sort()
    onnx.checker.check_model(converted)
    tmp = _temporary_path(path)
    try:
        onnx.save(converted, str(tmp))
        report = verify_onnx(tmp, onnxruntime_runner(source), spec=spec, config=config,
                             cases=cases, atol=None, min_cosine=min_cosine,
                             reference_name=f"onnxruntime on {source.name} (fp32)",
                             subject=path.name)
        report.raise_if_failed(f"fp16 conversion of {source}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


# ----------------------------------------------------------------------------------------
# onnxruntime's transformer optimizer
# ----------------------------------------------------------------------------------------


@dataclass
class OptimizeResult:
    """The optimised file, the attention mode that passed and why others were dropped."""

    path: Path
    attention: str
    fused: dict[str, int]
    report: VerificationReport
    rejected: dict[str, str] = field(default_factory=dict)


def _fusion_options(mode: str):
    fusion = require("onnxruntime.transformers.fusion_options")
    options = fusion.FusionOptions("bert")
    if mode == "raw":
        options.use_raw_attention_mask(True)
    elif mode == "off":
        options.enable_attention = False
        options.enable_embed_layer_norm = False
    return options


def optimize_onnx(
    source: str | Path,
    path: str | Path,
    *,
    task: str | None = None,
    config: DistilBertConfig | None = None,
    attention: str = "raw",
    cases: Sequence[tuple[int, int]] = DEFAULT_CASES,
    atol: float = FP32_ATOL,
    rtol: float = FP32_RTOL,
) -> OptimizeResult:
    """Fuse ``source`` with onnxruntime's BERT optimizer, verify, and write it to ``path``.

    ``attention`` says how a fused Attention op reads the mask: ``raw`` (the 2-D mask, any
    padding layout), ``index`` (per-row lengths: fastest, but assumes right padding) or
    ``off`` (no attention fusion). Every candidate is checked against ``source`` on every
    padding layout; a mode that fails falls back to the next safer one (index, raw, off),
    and if even ``off`` fails nothing is written and :class:`ExportVerificationError` says
    why.
    """
    optimizer = require("onnxruntime.transformers.optimizer")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, "
                         f"got {attention!r}")
    source, path = Path(source), Path(path)
    _, spec, found = describe(source, task)
    config = config or found
    if config is None:
        raise ValueError(f"{source} carries no config; pass config=")
    modes = {"index": ("index", "raw", "off"), "raw": ("raw", "off"), "off": ("off",)}[attention]
    reference = onnxruntime_runner(source)
    rejected: dict[str, str] = {}
    for mode in modes:
        optimized = optimizer.optimize_model(
            str(source), model_type="bert", num_heads=config.n_heads, hidden_size=config.dim,
            optimization_options=_fusion_options(mode), opt_level=0, use_gpu=False)
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        tmp = _temporary_path(path)
        try:
            optimized.save_model_to_file(str(tmp))
            report = verify_onnx(tmp, reference, spec=spec, config=config, cases=cases,
                                 atol=atol, rtol=rtol, subject=path.name,
                                 reference_name=f"onnxruntime on {source.name}")
            if report.ok:
                os.replace(tmp, path)
                logger.info("optimised %s with attention mode %r: %s", source, mode, fused)
                return OptimizeResult(path, mode, fused, report, rejected)
        finally:
            tmp.unlink(missing_ok=True)
        failures = [f"{c.output} on {c.case}: {c.problem}" for c in report.checks if not c.ok]
        rejected[mode] = "; ".join(failures[:3])
        logger.warning("attention mode %r gives wrong numbers (%s); trying a safer one",
                       mode, rejected[mode])
    raise ExportVerificationError(
        f"refusing to write an optimised {path}: no fusion mode matches {source} on every "
        f"padding layout ({'; '.join(f'{k}: {v}' for k, v in rejected.items())})", report)


# ----------------------------------------------------------------------------------------
# Everything the command line asks for, in order
# ----------------------------------------------------------------------------------------


@dataclass
class WrittenFile:
    """One file an export wrote and what its verification found."""

    path: Path
    what: str
    report: VerificationReport


def export_onnx_files(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    int32_ids: bool = False,
    optimize: bool = False,
    attention: str = "raw",
    fp16: bool = False,
) -> list[WrittenFile]:
    """Export ``model`` to ``path``, then optionally ``*.opt.onnx`` and ``*.fp16.onnx``.

    The fp16 file is converted from the optimised graph when both are asked for. Each file
    is verified before the next step starts.
    """
    path = Path(path)
    result = export_onnx(model, path, opset=opset, int32_ids=int32_ids)
    ids = "int32" if int32_ids else "int64"
    written = [WrittenFile(path, f"{result.task}, opset {opset}, {ids} ids", result.report)]
    source = path
    if optimize:
        optimized = optimize_onnx(path, path.with_suffix(".opt.onnx"), attention=attention)
        fused = ", ".join(f"{k} x{v}" for k, v in optimized.fused.items()) or "nothing"
        written.append(WrittenFile(
            optimized.path, f"onnxruntime-optimised, attention mask {optimized.attention}, "
            f"fused {fused}", optimized.report))
        source = optimized.path
    if fp16:
        target = source.with_suffix(".fp16.onnx")
        written.append(WrittenFile(target, "float16, LayerNorm and softmax in fp32",
                                   convert_fp16(source, target)))
    return written
