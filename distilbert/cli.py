"""The ``distilbert`` command line.

Each sub-command is a pair of functions, ``_add_<name>_parser(subparsers)`` that declares its
arguments and ``_run_<name>(args)`` that runs it and returns an exit status, listed once in
``COMMANDS``. The work itself lives in :mod:`distilbert.jobs` (embed),
:mod:`distilbert.task_jobs` (classify, tag, answer, fill-mask), :mod:`distilbert.export`,
:mod:`distilbert.bench`, :mod:`distilbert.io` and the engine; this module parses arguments,
shows progress and turns errors into one line on stderr.

Exit status: 0 on success, 2 for bad input or arguments (missing or malformed file, unknown
column or format, bad model folder), 1 for any other failure, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from distilbert import __version__, bench, io, jobs, task_jobs
from distilbert.engine.embedder import load
from distilbert.engine.pooling import POOLING_MODES
from distilbert.engine.tasks import AGGREGATIONS, load_task
from distilbert.export import onnx as onnx_export
from distilbert.export import tensorrt as trt_export

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# Errors that mean the user asked for something that cannot be read or run as given (the
# checkpoint loaders raise KeyError for a weight the model folder lacks).
BAD_INPUT_ERRORS = (io.InputError, io.OutputPathError, FileNotFoundError, ValueError, KeyError)


def _positive_int(text: str) -> int:
    """argparse type: an integer above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _plural(count: int, word: str) -> str:
    """``1 record``, ``3 records``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _comma_list(choices: Sequence[str] | None = None) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated list of names, each one of ``choices`` when given."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        unknown = [name for name in names if choices is not None and name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; expected some of {', '.join(choices)}")
        return names

    return parse


def _add_model_arguments(parser: argparse.ArgumentParser, require_model: bool = False) -> None:
    """Options every model-running sub-command shares: which model, where, how."""
    parser.add_argument(
        "--model", default=None, metavar="PATH", required=require_model,
        help="fine-tuned checkpoint folder with the task's head" if require_model else
        "checkpoint folder (default: the built-in all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="where the model runs (default: auto, CUDA when available)",
    )
    parser.add_argument(
        "--backend", choices=("auto", "torch", "triton"), default="auto",
        help="how the hot ops run (default: auto, Triton kernels on CUDA)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64, metavar="N",
        help="texts per forward pass at most (default: 64)",
    )
    parser.add_argument(
        "--max-length", type=_positive_int, default=None, metavar="N",
        help="tokens per text at most, longer texts are truncated (default: the model's)",
    )


def _add_embed_parser(subparsers) -> None:
    """``distilbert embed INPUT -o OUTPUT``: the arguments of the main job."""
    parser = subparsers.add_parser(
        "embed",
        help="write sentence embeddings of every text in a file",
        description=(
            "Embed every text of INPUT (.txt: one text a line; .jsonl, .csv, .parquet: the "
            "field named by --column) and write the vectors to OUTPUT (.npy: one row per text "
            "in input order; .parquet and .jsonl: records with an id and an embedding)."
        ),
    )
    parser.add_argument("input", metavar="INPUT", help="a .txt, .jsonl, .csv or .parquet file")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT",
        help="a .npy, .parquet or .jsonl file, written when the job completes",
    )
    parser.add_argument(
        "--column", default=None,
        help="field holding the text in .jsonl/.csv/.parquet input (default: text)",
    )
    parser.add_argument(
        "--pooling", choices=POOLING_MODES, default=None,
        help="how token vectors become one vector (default: the model's, else mean)",
    )
    parser.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, default=None,
        help="scale embeddings to unit length (default: the model's, else yes)",
    )
    parser.add_argument(
        "--chunk-size", type=_positive_int, default=io.DEFAULT_CHUNK_SIZE, metavar="N",
        help=f"texts read and length-sorted at a time (default: {io.DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument(
        "--int8", action="store_true",
        help="dynamic int8 projections on CPU: faster, approximate (see distilbert bench)",
    )
    _add_model_arguments(parser)


def _run_embed(args: argparse.Namespace) -> int:
    """Embed a whole file with a progress bar; errors propagate to :func:`main`."""
    # Check both paths before the model loads, so a typo fails at once.
    reader = io.open_reader(args.input, args.column)
    io.check_output_path(args.output, io.EMBEDDING_FORMATS, source=reader.path)

    embedder = load(
        args.model,
        device=args.device,
        backend=None if args.backend == "auto" else args.backend,
        pooling=args.pooling,
        normalize=args.normalize,
        max_length=args.max_length,
        int8=args.int8,
    )
    total = reader.count()
    # leave=False: the bar clears when done, making way for the summary or the error line.
    with tqdm(total=total, unit="text", file=sys.stderr, disable=args.quiet,
              dynamic_ncols=True, leave=False) as bar:
        summary = jobs.embed_file(
            reader,
            args.output,
            embedder,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            progress=bar.update,
        )
    if not args.quiet:
        print(
            f"wrote {_plural(summary.rows, 'embedding')} of dim {summary.dim} to "
            f"{summary.output} "
            f"in {summary.seconds:.1f} s ({summary.texts_per_second:.0f} texts/s)",
            file=sys.stderr,
        )
    return EXIT_OK


def _add_task_parser(subparsers, name: str, summary: str, columns: str):
    """A task sub-command's parser with the input, output and model options all tasks share."""
    parser = subparsers.add_parser(
        name, help=summary,
        description=(
            f"{summary[0].upper()}{summary[1:]}: read INPUT (.txt: one text a line; .jsonl, "
            ".csv, .parquet: the field named by --column) and write one record per text to "
            f"OUTPUT (.jsonl or .parquet): its id (0-based position) and {columns}."
        ),
    )
    parser.add_argument("input", metavar="INPUT", help="a .txt, .jsonl, .csv or .parquet file")
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT",
        help="a .jsonl or .parquet file, written when the job completes",
    )
    parser.add_argument(
        "--column", default=None,
        help="field holding the text in .jsonl/.csv/.parquet input (default: text)",
    )
    parser.add_argument(
        "--chunk-size", type=_positive_int, default=task_jobs.DEFAULT_TASK_CHUNK_SIZE,
        metavar="N", help="texts read and run at a time "
        f"(default: {task_jobs.DEFAULT_TASK_CHUNK_SIZE})",
    )
    _add_model_arguments(parser, require_model=True)
    return parser


def _run_task(args: argparse.Namespace, task: str, job: Callable, second_column=None,
              **options) -> int:
    """Load the task's model, stream the file through ``job`` and report; shared by tasks."""
    readers = task_jobs.open_readers(args.input, args.column, second_column)
    io.check_output_path(args.output, io.RECORD_FORMATS, source=readers[0].path)
    helper = load_task(task, args.model, device=args.device,
                       backend=None if args.backend == "auto" else args.backend)
    with tqdm(total=readers[0].count(), unit="text", file=sys.stderr, disable=args.quiet,
              dynamic_ncols=True, leave=False) as bar:
        summary = job(readers, args.output, helper, batch_size=args.batch_size,
                      max_length=args.max_length, chunk_size=args.chunk_size,
                      progress=bar.update, **options)
    if not args.quiet:
        print(f"wrote {_plural(summary.rows, 'record')} to {summary.output} in "
              f"{summary.seconds:.1f} s "
              f"({summary.texts_per_second:.0f} texts/s)", file=sys.stderr)
    return EXIT_OK


def _add_classify_parser(subparsers) -> None:
    """``distilbert classify INPUT -o OUTPUT --model PATH``."""
    parser = _add_task_parser(subparsers, "classify", "classify every text in a file",
                              "label, score and scores (label -> score)")
    parser.add_argument(
        "--pair-column", default=None,
        help="field holding each text's second sequence (sentence-pair models)",
    )


def _run_classify(args: argparse.Namespace) -> int:
    """Classify a whole file."""
    return _run_task(args, "classify", task_jobs.classify_file, args.pair_column)


def _add_tag_parser(subparsers) -> None:
    """``distilbert tag INPUT -o OUTPUT --model PATH``."""
    parser = _add_task_parser(
        subparsers, "tag", "tag the entities of every text in a file",
        "entities (label, score, start and end character offsets, word); texts longer than "
        "--max-length are split into overlapping windows",
    )
    parser.add_argument(
        "--aggregation", choices=AGGREGATIONS, default="none",
        help="how word pieces become entities, as in Hugging Face (default: none)",
    )
    parser.add_argument(
        "--stride", type=_positive_int, default=None, metavar="N",
        help="tokens shared by consecutive windows (default: min(32, max length / 4))",
    )


def _run_tag(args: argparse.Namespace) -> int:
    """Tag a whole file."""
    return _run_task(args, "tag", task_jobs.tag_file, aggregation=args.aggregation,
                     stride=args.stride)


def _add_answer_parser(subparsers) -> None:
    """``distilbert answer INPUT -o OUTPUT --model PATH (--question Q | --question-column C)``."""
    parser = _add_task_parser(
        subparsers, "answer", "answer a question about every context in a file",
        "the best answer span (answer, score, start and end character offsets in the "
        "context); --column names the context field",
    )
    questions = parser.add_mutually_exclusive_group(required=True)
    questions.add_argument("--question", default=None, help="one question for every context")
    questions.add_argument("--question-column", default=None,
                           help="field holding each context's question")
    parser.add_argument(
        "--stride", type=_positive_int, default=None, metavar="N",
        help="tokens shared by consecutive windows of a long context "
        "(default: min(128, max length / 2))",
    )
    parser.add_argument(
        "--max-answer-length", type=_positive_int, default=15, metavar="N",
        help="tokens in an answer at most (default: 15)",
    )


def _run_answer(args: argparse.Namespace) -> int:
    """Answer questions over a whole file."""
    return _run_task(args, "answer", task_jobs.answer_file, args.question_column,
                     question=args.question, stride=args.stride,
                     max_answer_length=args.max_answer_length)


def _add_fill_mask_parser(subparsers) -> None:
    """``distilbert fill-mask INPUT -o OUTPUT --model PATH``."""
    parser = _add_task_parser(
        subparsers, "fill-mask", "predict the masked tokens of every text in a file",
        "predictions: for each mask token, the top-k (score, token, token_str, sequence)",
    )
    parser.add_argument(
        "--top-k", type=_positive_int, default=5, metavar="K",
        help="predictions per mask (default: 5)",
    )


def _run_fill_mask(args: argparse.Namespace) -> int:
    """Fill the masks of a whole file."""
    return _run_task(args, "fill-mask", task_jobs.fill_mask_file, top_k=args.top_k)


def _add_export_parser(subparsers) -> None:
    """``distilbert export onnx ...`` and ``distilbert export tensorrt ...``."""
    parser = subparsers.add_parser(
        "export", help="export a model to ONNX, or an ONNX export to a TensorRT engine",
        description="Export and verify: every file is checked against a reference on several "
        "shapes and padding layouts before it is written.",
    )
    formats = parser.add_subparsers(dest="export_format", metavar="FORMAT", required=True)

    to_onnx = formats.add_parser(
        "onnx", help="export the encoder or a task head to ONNX",
        description="Export a checkpoint to OUTPUT (.onnx) through the plain-PyTorch path, "
        "with dynamic batch and sequence axes, and verify it with onnxruntime.",
    )
    to_onnx.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                         help="the .onnx file to write")
    to_onnx.add_argument("--model", default=None, metavar="PATH",
                         help="checkpoint folder (default: the built-in all-MiniLM-L6-v2)")
    to_onnx.add_argument("--task", choices=list(onnx_export.TASKS), default="base",
                         help="the encoder alone (base) or a task head (default: base)")
    to_onnx.add_argument("--opset", type=_positive_int, default=onnx_export.DEFAULT_OPSET,
                         help=f"ONNX opset (default: {onnx_export.DEFAULT_OPSET})")
    to_onnx.add_argument("--int32", action="store_true",
                         help="int32 inputs instead of int64 (TensorRT engines need them)")
    to_onnx.add_argument("--optimize", action="store_true",
                         help="also write OUTPUT.opt.onnx, fused by onnxruntime's optimizer "
                         "(runs in onnxruntime only)")
    to_onnx.add_argument("--attention", choices=onnx_export.ATTENTION_MODES, default="raw",
                         help="how --optimize fuses attention: raw 2-D mask (default), "
                         "index (right padding only: checked, dropped if wrong) or off")
    to_onnx.add_argument("--fp16", action="store_true",
                         help="also write a float16 copy (*.fp16.onnx), LayerNorm and softmax "
                         "kept in fp32")

    to_trt = formats.add_parser(
        "tensorrt", help="build a TensorRT engine from an int32 ONNX export",
        description="Build a TensorRT engine (needs pip install 'distilbert[tensorrt]' and a "
        "CUDA GPU) from an ONNX file written by `distilbert export onnx --int32`, and verify "
        "it against onnxruntime.",
    )
    to_trt.add_argument("onnx", metavar="MODEL.onnx", help="an int32 export of this tool")
    to_trt.add_argument("-o", "--output", required=True, metavar="ENGINE",
                        help="the engine file to write (e.g. model.plan)")
    to_trt.add_argument("--precision", choices=trt_export.PRECISIONS, default="fp16",
                        help="fp16 (LayerNorm and softmax in fp32) or fp32 (default: fp16)")
    to_trt.add_argument("--batch", default="1,8,32", metavar="MIN,OPT,MAX",
                        help="batch sizes of the optimisation profile (default: 1,8,32)")
    to_trt.add_argument("--seq", default=None, metavar="MIN,OPT,MAX",
                        help="sequence lengths (default: 1,128,the model's max positions)")
    to_trt.add_argument("--choices", default="1,2,4", metavar="MIN,OPT,MAX",
                        help="choices per example, multiple-choice heads only (default: 1,2,4)")
    to_trt.add_argument("--workspace", type=float, default=trt_export.DEFAULT_WORKSPACE_GIB,
                        metavar="GIB", help="builder workspace in GiB (default: 4)")
    for nested in (to_onnx, to_trt):
        # -q / -v also after the format; SUPPRESS keeps these from undoing an earlier flag.
        nested.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                            help="no summary")
        nested.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="log what the export does")


def _run_export(args: argparse.Namespace) -> int:
    """Run ``export onnx`` or ``export tensorrt``."""
    if args.export_format == "onnx":
        return _run_export_onnx(args)
    return _run_export_tensorrt(args)


def _run_export_onnx(args: argparse.Namespace) -> int:
    """Load the checkpoint (encoder or head), export, verify, write the files asked for."""
    from distilbert.engine.embedder import default_model_path
    from distilbert.engine.heads import HEADS
    from distilbert.engine.model import DistilBertModel

    model_class = DistilBertModel if args.task == "base" else HEADS[args.task]
    model = model_class.from_pretrained(args.model or default_model_path())
    written = onnx_export.export_onnx_files(
        model, args.output, opset=args.opset, int32_ids=args.int32, optimize=args.optimize,
        attention=args.attention, fp16=args.fp16,
    )
    if not args.quiet:
        for item in written:
            print(f"wrote {item.path} ({item.what}); {item.report.summary()}", file=sys.stderr)
    return EXIT_OK


def _run_export_tensorrt(args: argparse.Namespace) -> int:
    """Build, verify and write a TensorRT engine."""
    result = trt_export.build_engine(
        args.onnx, args.output, precision=args.precision,
        batch=trt_export.AxisRange.parse(args.batch),
        seq=trt_export.AxisRange.parse(args.seq) if args.seq else None,
        choices=trt_export.AxisRange.parse(args.choices), workspace_gib=args.workspace,
    )
    if not args.quiet:
        print(f"wrote {result.path} (TensorRT {result.precision}); {result.report.summary()}",
              file=sys.stderr)
    return EXIT_OK


# The suite's own defaults, so that the command and the library cannot disagree.
_SUITE_DEFAULTS = {name: p.default for name, p in
                   inspect.signature(bench.run_suite).parameters.items()}


def _add_bench_parser(subparsers) -> None:
    """``distilbert bench``: the benchmark suite of :mod:`distilbert.bench`."""
    workloads = tuple(_SUITE_DEFAULTS["workloads"])
    providers = tuple(_SUITE_DEFAULTS["providers"])
    parser = subparsers.add_parser(
        "bench", help="benchmark this engine against transformers, sentence-transformers, ORT",
        description="Run the benchmark suite: every provider runs the same model on the same "
        "inputs, rounds interleaved. Writes bench_<device>.csv (with the machine's context), "
        ".md and .png to --out and prints the markdown report on stdout.",
    )
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="checkpoint folder (default: the built-in all-MiniLM-L6-v2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                        help="where every provider runs (default: cpu)")
    parser.add_argument("--workloads", type=_comma_list(workloads), default=list(workloads),
                        metavar="W,...", help=f"some of {','.join(workloads)} (default: all)")
    parser.add_argument("--providers", type=_comma_list(providers), default=list(providers),
                        metavar="P,...", help=f"some of {','.join(providers)}; ratios are "
                        "taken against the first that runs the workload (default: all)")
    parser.add_argument("--corpus-size", type=_positive_int,
                        default=_SUITE_DEFAULTS["corpus_size"], metavar="N",
                        help="texts of the embed workload (default: %(default)s)")
    parser.add_argument("--rounds", type=_positive_int, default=_SUITE_DEFAULTS["rounds"],
                        metavar="N", help="timed rounds per shape at least (default: %(default)s)")
    parser.add_argument("--out", default=str(_SUITE_DEFAULTS["out_dir"]), metavar="DIR",
                        help="results folder (default: %(default)s)")
    parser.add_argument("--dtype", choices=tuple(bench.DTYPES), default=_SUITE_DEFAULTS["dtype"],
                        help="parameter and activation dtype of every torch provider "
                        "(default: %(default)s; onnxruntime runs in float32 only)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer latency and throughput shapes")


def _run_bench(args: argparse.Namespace) -> int:
    """Run the suite; the file paths go to stderr, the markdown report to stdout."""
    result = bench.run_suite(
        model_path=args.model, device=args.device, workloads=args.workloads,
        providers=args.providers, corpus_size=args.corpus_size, rounds=args.rounds,
        out_dir=args.out, quick=args.quick, dtype=args.dtype,
    )
    files = {kind: Path(path) for kind, path in result["files"].items()}
    if not args.quiet:
        for kind, path in files.items():
            print(f"wrote {path} ({kind})" if path.exists() else f"no {kind} written",
                  file=sys.stderr)
    print(files["markdown"].read_text(encoding="utf-8"), end="")
    return EXIT_OK


# (name, add its parser, run it): new sub-commands are one more line here.
COMMANDS: list[tuple[str, Callable, Callable[[argparse.Namespace], int]]] = [
    ("embed", _add_embed_parser, _run_embed),
    ("classify", _add_classify_parser, _run_classify),
    ("tag", _add_tag_parser, _run_tag),
    ("answer", _add_answer_parser, _run_answer),
    ("fill-mask", _add_fill_mask_parser, _run_fill_mask),
    ("export", _add_export_parser, _run_export),
    ("bench", _add_bench_parser, _run_bench),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command of ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="distilbert",
        description="Fast, exact inference for DistilBERT-family encoders.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, add_parser, run in COMMANDS:
        add_parser(subparsers)
        command_parser = subparsers.choices[name]
        _add_output_arguments(command_parser)
        command_parser.set_defaults(run=run)
    return parser


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """How much a sub-command tells on stderr; every sub-command gets these."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="log what the engine does, and show the traceback of an unexpected error",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="distilbert: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("distilbert: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BAD_INPUT_ERRORS as err:
        print(f"distilbert: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        if args.verbose:
            raise
        print(f"distilbert: error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILURE
