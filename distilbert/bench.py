"""Side-by-side benchmarks of this engine against Hugging Face, sentence-transformers and ORT.

Every provider runs the same model on the same inputs with the same thread count, in one
process, and rounds interleave the providers (A, B, C, A, B, C, ...) so that a slow spell of
a noisy machine hits all of them alike. Ratios are taken per round, then summarised.

Workloads:
- ``latency``: batch 1, sequence 16 to 512, random ids.
- ``throughput``: fixed batch x sequence grid, random ids (a larger grid on CUDA: batch up
  to 256, sequence up to 512).
- ``embed``: the batch-embedding job on real mixed-length text (Python's help topics),
  each provider through its own public embedding call.
- ``memory``: allocations (count, bytes) and peak bytes of one forward, from
  ``torch.profiler`` with ``profile_memory=True`` (CUDA: ``torch.cuda.memory_stats``).

Efficiency: a FLOP model of the encoder gives effective GFLOP/s, shown beside the fastest
GEMM rate this machine reaches on the model's projection shapes in the suite's dtype (not
for the int8 provider, whose GEMMs are not bounded by it).

Dtypes: float32 everywhere; float16 and bfloat16 for the torch providers (onnxruntime runs
only in float32 on CPU and is left out otherwise).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

LATENCY_SEQS = (16, 32, 64, 128, 256, 512)
THROUGHPUT_GRID = ((8, 128), (32, 64), (64, 32), (16, 256))
THROUGHPUT_GRID_CUDA = ((32, 128), (128, 128), (256, 128), (32, 512), (128, 512), (256, 512))
# Providers that run only where what they measure runs: (device type, dtype or None for any).
RESTRICTED_PROVIDERS = {
    "distilbert-plain": ("cpu", None),  # the fused oneDNN path it turns off is CPU-only
    "distilbert-int8": ("cpu", "float32"),
    "onnxruntime": ("cpu", "float32"),
}
AGREEMENT_TEXTS = 256  # texts of the embed corpus whose embeddings are compared
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MEMORY_SHAPE = (32, 128)


@dataclass
class Provider:
    """One engine under test: a forward on id tensors and an embedding call on texts."""

    name: str
    forward: Callable[[torch.Tensor, torch.Tensor], object] | None
    embed: Callable[[Sequence[str]], np.ndarray] | None
    torch_module: torch.nn.Module | None = None


@dataclass
class Row:
    """One measured (workload, provider, shape) cell."""

    workload: str
    provider: str
    batch: int
    seq: int
    median_s: float
    p10_s: float
    p90_s: float
    items_per_s: float
    tokens_per_s: float
    gflops: float = float("nan")
    ratio_vs_ours: float = float("nan")
    extra: dict = field(default_factory=dict)


def machine_context(device: torch.device) -> dict:
    """Device, CPU, threads, versions, commit and date, recorded with every result."""
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "absent"

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "sentence-transformers": version("sentence-transformers"),
        "onnxruntime": version("onnxruntime"),
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def encoder_flops(config, batch: int, seq: int) -> float:
    """Multiply-add FLOPs (x2) of one encoder forward on a (batch, seq) input."""
    d, h, layers = config.dim, config.hidden_dim, config.n_layers
    tokens = batch * seq
    dense = 2 * tokens * (3 * d * d + d * d + 2 * d * h)
    attention = 2 * 2 * batch * seq * seq * d
    return float(layers * (dense + attention))


def matmul_peak_gflops(config, tokens: int = 2048, repeats: int = 10,
                       device: torch.device | None = None,
                       dtype: torch.dtype = torch.float32, trials: int = 3) -> float:
    """Best GEMM rate on the model's projection shapes, over the GEMM paths this build has.

    Shapes: ``tokens`` rows times each of the four projections (qkv, output, FFN in and
    out). Each is timed ``trials`` times over ``repeats`` calls and the best rate kept, so
    that one slow spell of a noisy machine does not lower the ceiling the other figures
    are read against.
    """
    from distilbert.kernels.onednn import linear_onednn, onednn_available

    device = device or torch.device("cpu")
    if device.type == "cuda":
        tokens, repeats = 16384, 20  # enough work to fill the GPU
    d, h = config.dim, config.hidden_dim
    best = 0.0
    with torch.inference_mode():
        for width_in, width_out in ((d, 3 * d), (d, d), (d, h), (h, d)):
            x = torch.randn(tokens, width_in, device=device, dtype=dtype)
            w = torch.randn(width_out, width_in, device=device, dtype=dtype)
            paths = [lambda x=x, w=w: torch.nn.functional.linear(x, w)]
            if device.type == "cpu" and dtype != torch.float16 and onednn_available():
                paths.append(lambda x=x, w=w: linear_onednn(x, w, None))
            flops = 2 * tokens * width_in * width_out
            for path in paths:
                path()
                for _ in range(trials):
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(repeats):
                        path()
                    _sync(device)
                    best = max(best, flops * repeats / (time.perf_counter() - start) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    calls: dict[str, Callable[[], object]], rounds: int, device: torch.device,
    min_seconds: float = 0.0,
) -> dict[str, list[float]]:
    """Time each call once per round, providers interleaved; at least ``rounds`` rounds.

    Each round starts one provider further along, so that no provider always runs right
    after the same other one (whose worker threads may still be winding down).
    """
    for call in calls.values():  # warm-up: first-call allocations, lazy init
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    start = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - start < min_seconds:
        for name in names[done % len(names):] + names[:done % len(names)]:
            call = calls[name]
            _sync(device)
            begin = time.perf_counter()
            call()
            _sync(device)
            times[name].append(time.perf_counter() - begin)
        done += 1
    return times


def summarise(workload: str, times: dict[str, list[float]], batch: int, seq: int,
              items: int, tokens: int, flops: float, ours: str) -> list[Row]:
    """Rows with median, spread, rates and the per-round ratio against our engine."""
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        deciles = np.quantile(samples, [0.1, 0.9]) if len(samples) > 1 else (median, median)
        per_round = [other / mine for mine, other in zip(times[ours], samples)]
        rows.append(Row(
            workload=workload, provider=name, batch=batch, seq=seq, median_s=median,
            p10_s=float(deciles[0]), p90_s=float(deciles[1]), items_per_s=items / median,
            tokens_per_s=tokens / median, gflops=flops / median / 1e9 if flops else float("nan"),
            ratio_vs_ours=statistics.median(per_round),
        ))
    return rows


def random_inputs(config, batch: int, seq: int, device: torch.device, seed: int = 0):
    """Random ids over the vocabulary's ordinary range, full attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(config.vocab_size, 20000), (batch, seq), generator=generator)
    return ids.to(device), torch.ones_like(ids, device=device)


def forward_workloads(providers: list[Provider], config, device, ours: str,
                      latency_seqs=LATENCY_SEQS, grid=THROUGHPUT_GRID,
                      rounds: int = 5) -> list[Row]:
    """Latency (batch 1) and throughput (grid) of every provider's forward."""
    rows: list[Row] = []
    shapes = [("latency", 1, s) for s in latency_seqs] + [("throughput", b, s) for b, s in grid]
    for workload, batch, seq in shapes:
        if seq > config.max_position_embeddings:
            continue
        ids, mask = random_inputs(config, batch, seq, device)
        calls = {p.name: (lambda f=p.forward, ids=ids, mask=mask: f(ids, mask))
                 for p in providers if p.forward}
        with torch.inference_mode():
            times = interleaved_times(calls, rounds, device, min_seconds=1.0)
        rows += summarise(workload, times, batch, seq, batch, batch * seq,
                          encoder_flops(config, batch, seq), ours)
        logger.info("%s batch %d seq %d done", workload, batch, seq)
    return rows


def embed_workload(providers: list[Provider], texts: Sequence[str], token_counts: int,
                   config, mean_len: float, device, ours: str, rounds: int = 3) -> list[Row]:
    """Texts per second of each provider's embedding call on the same real corpus."""
    calls = {p.name: (lambda f=p.embed: f(texts)) for p in providers if p.embed}
    times = interleaved_times(calls, rounds, device)
    flops = encoder_flops(config, len(texts), round(mean_len))
    return summarise("embed", times, len(texts), round(mean_len), len(texts),
                     token_counts, flops, ours)


def embedding_agreement(providers: list[Provider], texts: Sequence[str], ours: str) -> dict:
    """Each provider's embeddings against ours on the same texts.

    ``{name: {"max_abs": largest difference, "min_cosine": lowest cosine of a text}}``.
    """
    reference = next(p for p in providers if p.name == ours).embed(texts).astype(np.float64)
    agreement = {}
    for provider in providers:
        if provider.embed and provider.name != ours:
            got = provider.embed(texts).astype(np.float64)
            norms = np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
            cosine = (got * reference).sum(axis=1) / np.maximum(norms, 1e-30)
            agreement[provider.name] = {"max_abs": float(np.abs(got - reference).max()),
                                        "min_cosine": float(cosine.min())}
    return agreement


def memory_of_forward(provider: Provider, config, device) -> dict:
    """Allocation count, allocated bytes and peak live bytes of one forward."""
    batch, seq = MEMORY_SHAPE
    ids, mask = random_inputs(config, batch, seq, device)
    with torch.inference_mode():
        provider.forward(ids, mask)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            provider.forward(ids, mask)
            torch.cuda.synchronize(device)
            after = torch.cuda.memory_stats(device)
            return {
                "allocs": after["allocation.all.allocated"] - before["allocation.all.allocated"],
                "alloc_bytes": after["allocated_bytes.all.allocated"]
                - before["allocated_bytes.all.allocated"],
                "peak_bytes": torch.cuda.max_memory_allocated(device) - base,
            }
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            provider.forward(ids, mask)
    return allocation_summary(prof)


def allocation_summary(prof) -> dict:
    """Count and bytes of allocations, and the peak of live bytes, of a profiled region.

    Reads the profiler's raw "[memory]" records (one per allocation or free, in time order);
    the per-operator totals of ``key_averages`` merge several allocations into one number.
    """
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    records.sort(key=lambda e: e.start_ns())
    live = peak = count = total = 0
    for record in records:
        nbytes = record.nbytes()
        live += nbytes
        peak = max(peak, live)
        if nbytes > 0:
            count += 1
            total += nbytes
    return {"allocs": count, "alloc_bytes": total, "peak_bytes": peak}


def write_results(rows: list[Row], memory: dict, agreement: dict, context: dict,
                  peak_gflops: float, out_dir: Path, tag: str) -> dict[str, Path]:
    """CSV (with context), a markdown table and a PNG plot under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"bench_{tag}.csv"
    names = ["workload", "provider", "batch", "seq", "median_s", "p10_s", "p90_s",
             "items_per_s", "tokens_per_s", "gflops", "ratio_vs_ours"]
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        handle.writelines(f"# {key}: {value}\n" for key, value in context.items())
        handle.write(f"# matmul_peak_gflops: {peak_gflops:.1f}\n")
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in rows:
            writer.writerow([getattr(row, n) if not isinstance(getattr(row, n), float)
                             else f"{getattr(row, n):.6g}" for n in names])
    md_path = out_dir / f"bench_{tag}.md"
    md_path.write_text(markdown_report(rows, memory, agreement, context, peak_gflops),
                       encoding="utf-8")
    png_path = out_dir / f"bench_{tag}.png"
    plot(rows, png_path, context)
    return {"csv": csv_path, "markdown": md_path, "plot": png_path}


def markdown_report(rows, memory, agreement, context, peak_gflops) -> str:
    """The tables the README shows."""
    dtype = context.get("dtype", "float32")
    peak = f"Fastest {dtype} GEMM on the model's projection shapes here: {peak_gflops:.1f} GFLOP/s."
    lines = ["Context: " + ", ".join(f"{k} {v}" for k, v in context.items()), "", peak, ""]
    lines += [("| workload | batch x seq | provider | median ms | p10-p90 ms | items/s | "
               "tokens/s | GFLOP/s | % of GEMM peak | time vs ours |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = 100 * r.gflops / peak_gflops if peak_gflops and r.gflops == r.gflops else 0
        if r.provider.endswith("-int8"):
            share = float("nan")  # int8 GEMMs are not bounded by the float ceiling
        lines.append(
            f"| {r.workload} | {r.batch} x {r.seq} | {r.provider} | {1e3 * r.median_s:.1f} | "
            f"{1e3 * r.p10_s:.1f}-{1e3 * r.p90_s:.1f} | {r.items_per_s:.1f} | "
            f"{r.tokens_per_s:.0f} | {r.gflops:.1f} | {_percent(share)} | {r.ratio_vs_ours:.2f}x |")
    if memory:
        ours = next(iter(memory.values()))
        batch, seq = MEMORY_SHAPE
        lines += ["", f"Memory of one forward at batch x seq {batch} x {seq}:", "",
                  "| provider | allocations | allocated MiB | peak MiB | allocations vs ours |",
                  "|---|---|---|---|---|"]
        for name, m in memory.items():
            lines.append(
                f"| {name} | {m['allocs']} | {m['alloc_bytes'] / 2**20:.1f} | "
                f"{m['peak_bytes'] / 2**20:.1f} | {m['allocs'] / max(ours['allocs'], 1):.2f}x |")
    if agreement:
        lines += ["", "Max abs difference of embeddings from ours: "
                  + ", ".join(f"{k} {v['max_abs']:.2e}" for k, v in agreement.items()),
                  "", "Lowest cosine of a text's embedding against ours: "
                  + ", ".join(f"{k} {v['min_cosine']:.6f}" for k, v in agreement.items())]
    return "\n".join(lines) + "\n"


def _percent(share: float) -> str:
    return "-" if math.isnan(share) else f"{share:.0f}%"


def plot(rows: list[Row], path: Path, context: dict) -> None:
    """Latency curve and throughput bars, one series per provider."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullLocator
    except ImportError:
        logger.warning("matplotlib is not installed: no plot written")
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    providers = list(dict.fromkeys(r.provider for r in rows))
    for name in providers:
        latency = [r for r in rows if r.workload == "latency" and r.provider == name]
        if latency:
            left.plot([r.seq for r in latency], [1e3 * r.median_s for r in latency], "o-",
                      label=name)
    left.set(xscale="log", yscale="log", xlabel="sequence length (batch 1)",
             ylabel="median latency (ms)", title="Latency")
    seqs = sorted({r.seq for r in rows if r.workload == "latency"})
    if seqs:  # label the measured lengths only; log-axis minor labels overlap
        left.set_xticks(seqs, [str(s) for s in seqs])
        left.xaxis.set_minor_locator(NullLocator())
        left.legend()
    bars = [r for r in rows if r.workload in ("throughput", "embed")]
    labels = list(dict.fromkeys(f"{r.workload}\n{r.batch}x{r.seq}" for r in bars))
    width = 0.8 / max(len(providers), 1)
    for i, name in enumerate(providers):
        values = {f"{r.workload}\n{r.batch}x{r.seq}": r.tokens_per_s for r in bars
                  if r.provider == name}
        right.bar([j + i * width for j in range(len(labels))],
                  [values.get(label, 0) for label in labels], width, label=name)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=7)
    right.set(ylabel="tokens / s", title="Throughput" if bars else "Throughput (not measured)")
    if bars:
        right.legend(fontsize=7)
    figure.suptitle(f"{context['device']} | {context['cpu']} | {context['threads']} threads | "
                    f"torch {context['torch']} | {context['commit']}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def our_provider(path, device, backend: str | None, name: str, fused: bool = True,
                 dtype: torch.dtype = torch.float32, int8: bool = False) -> Provider:
    """This engine through its public API: ``load()`` and ``Embedder.embed``.

    ``fused=False`` turns off the fused oneDNN projections of the CPU path, to show their
    share of the speed; ``int8=True`` is the opt-in int8 mode.
    """
    import contextlib

    from distilbert.engine.embedder import load
    from distilbert.kernels.dispatch import use_onednn

    embedder = load(path, device=device, backend=backend, dtype=dtype, int8=int8)

    def scope():
        return contextlib.nullcontext() if fused else use_onednn(False)

    def forward(ids, mask):
        with scope():
            return embedder.model(ids, mask)

    def embed(texts):
        with scope():
            return embedder.embed(texts)

    return Provider(name, forward, embed, embedder.model)


def transformers_provider(path, device, attention: str,
                          dtype: torch.dtype = torch.float32) -> Provider:
    """A transformers ``AutoModel`` with the given attention implementation (forward only)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), attn_implementation=attention)
    model = model.to(device=device, dtype=dtype).eval()
    return Provider(f"transformers-{attention}",
                    lambda ids, mask: model(input_ids=ids, attention_mask=mask), None, model)


def sentence_transformers_provider(path, device, batch_size: int = 32,
                                   dtype: torch.dtype = torch.float32) -> Provider:
    """sentence-transformers' ``encode`` (its own length sorting and batching)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device=str(device)).to(dtype)
    return Provider("sentence-transformers", None,
                    lambda texts: model.encode(list(texts), batch_size=batch_size,
                                               convert_to_numpy=True,
                                               show_progress_bar=False))


def onnxruntime_provider(path, work_dir: Path) -> Provider | None:
    """onnxruntime on this engine's own ONNX export; None when export or ORT is missing."""
    try:
        import onnxruntime as ort

        from distilbert.engine.embedder import load
        from distilbert.export import onnx as onnx_export
    except ImportError as err:
        logger.warning("onnxruntime provider skipped: %s", err)
        return None
    embedder = load(path, device="cpu", backend="torch")
    onnx_path = work_dir / "model.onnx"
    onnx_export.export_onnx(embedder.model, onnx_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # ORT's idle workers spin for a while after each run, stealing the cores from whichever
    # provider runs next in an interleaved round; with them off every provider starts alike.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    input_names = {i.name for i in session.get_inputs()}

    def forward(ids, mask, types=None):
        feeds = {"input_ids": ids.cpu().numpy(), "attention_mask": mask.cpu().numpy()}
        if "token_type_ids" in input_names:  # BERT-family exports take segment ids
            feeds["token_type_ids"] = (torch.zeros_like(ids) if types is None else types).numpy()
        return session.run(None, feeds)[0]

    def embed(texts):
        # The same job shape as ours (length-sorted token-budget batches, mean pooling),
        # with onnxruntime running the encoder.
        from distilbert.engine.embedder import Embedder

        class OrtModel(torch.nn.Module):
            def __init__(self, base):
                super().__init__()
                self.config, self.base = base.config, base

            @property
            def device(self):
                return torch.device("cpu")

            def forward(self, ids, mask, types=None):
                return torch.from_numpy(forward(ids, mask, types))

        ort_embedder = Embedder(OrtModel(embedder.model), embedder.tokenizer,
                                embedder.pooling, embedder.normalize, embedder.max_length)
        return ort_embedder.embed(texts)

    return Provider("onnxruntime", forward, embed)


def run_suite(
    model_path: str | Path | None = None,
    device: str = "cpu",
    workloads: Sequence[str] = ("latency", "throughput", "embed", "memory"),
    providers: Sequence[str] = ("distilbert", "distilbert-torch", "distilbert-plain",
                                "distilbert-int8", "transformers-eager", "transformers-sdpa",
                                "sentence-transformers", "onnxruntime"),
    corpus_size: int = 2000,
    rounds: int = 3,
    out_dir: str | Path = "benchmarks/results",
    quick: bool = False,
    dtype: str = "float32",
) -> dict:
    """Run the chosen workloads for the chosen providers; write CSV, markdown and plot.

    ``dtype`` is ``float32``, ``float16`` or ``bfloat16``; files are named
    ``bench_<device>.*``, with ``_<dtype>`` added for the low-precision dtypes.
    """
    import tempfile

    from distilbert.engine.embedder import default_model_path, resolve_device

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    target, torch_dtype = resolve_device(device), DTYPES[dtype]
    path = Path(model_path) if model_path else default_model_path()
    built: list[Provider] = []
    with tempfile.TemporaryDirectory() as work:
        for name in providers:
            device_type, only_dtype = RESTRICTED_PROVIDERS.get(name, (target.type, None))
            if device_type != target.type or only_dtype not in (None, dtype):
                logger.warning("provider %s skipped: it runs on %s only", name,
                               "CPU" + (f" in {only_dtype}" if only_dtype else ""))
                continue
            if name == "distilbert":
                built.append(our_provider(path, target, None, name, dtype=torch_dtype))
            elif name == "distilbert-torch":
                built.append(our_provider(path, target, "torch", name, dtype=torch_dtype))
            elif name == "distilbert-plain":
                built.append(our_provider(path, target, "torch", name, fused=False,
                                          dtype=torch_dtype))
            elif name == "distilbert-int8":
                built.append(our_provider(path, target, "torch", name, int8=True))
            elif name.startswith("transformers-"):
                built.append(transformers_provider(path, target, name.split("-", 1)[1],
                                                   torch_dtype))
            elif name == "sentence-transformers":
                built.append(sentence_transformers_provider(path, target, dtype=torch_dtype))
            elif name == "onnxruntime":
                provider = onnxruntime_provider(path, Path(work))
                if provider is not None:
                    built.append(provider)
            else:
                raise ValueError(f"unknown provider {name!r}")
        if not built:
            raise ValueError(f"none of the providers {', '.join(providers)} runs on "
                             f"{target.type} in {dtype}")
        return _measure(built, path, target, torch_dtype, workloads, corpus_size, rounds,
                        Path(out_dir), quick)


def _measure(built, path, target, dtype, workloads, corpus_size, rounds, out_dir,
             quick) -> dict:
    from distilbert.demo import corpus_sentences
    from distilbert.engine.config import DistilBertConfig

    config = DistilBertConfig.from_pretrained(path)
    # Ratios are taken against the first provider that has the workload's call.
    forward_ref = next((p.name for p in built if p.forward), "")
    embed_ref = next((p.name for p in built if p.embed), "")
    dtype_name = str(dtype).removeprefix("torch.")
    context = {**machine_context(target), "dtype": dtype_name}
    peak = matmul_peak_gflops(config, device=target, dtype=dtype)
    rows: list[Row] = []
    seqs = LATENCY_SEQS[:3] if quick else LATENCY_SEQS
    full_grid = THROUGHPUT_GRID_CUDA if target.type == "cuda" else THROUGHPUT_GRID
    grid = full_grid[:2] if quick else full_grid
    if "latency" in workloads or "throughput" in workloads:
        rows += forward_workloads(built, config, target, forward_ref,
                                  seqs if "latency" in workloads else (),
                                  grid if "throughput" in workloads else (), rounds)
    agreement = {}
    if "embed" in workloads and embed_ref:
        texts = corpus_sentences(corpus_size)
        if len(texts) < corpus_size:
            logger.warning("corpus has only %d texts (asked for %d)", len(texts), corpus_size)
        counts = _token_counts(path, texts)
        rows += embed_workload(built, texts, counts[0], config, counts[1], target, embed_ref,
                               rounds)
        agreement = embedding_agreement(built, texts[:AGREEMENT_TEXTS], embed_ref)
    memory = {}
    if "memory" in workloads:
        memory = {p.name: memory_of_forward(p, config, target) for p in built
                  if p.torch_module is not None}
    tag = target.type if dtype == torch.float32 else f"{target.type}_{dtype_name}"
    files = write_results(rows, memory, agreement, context, peak, out_dir, tag)
    return {"rows": rows, "memory": memory, "agreement": agreement, "context": context,
            "matmul_peak_gflops": peak, "files": files}


def _token_counts(path, texts) -> tuple[int, float]:
    from distilbert.engine.tokenizer import Tokenizer

    encoded = Tokenizer.from_pretrained(path)(texts, max_length=256)
    lengths = encoded.attention_mask.sum(dim=1)
    return int(lengths.sum()), float(lengths.float().mean())
