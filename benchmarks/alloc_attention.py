"""Allocations per forward of the torch backend: copied heads vs strided views.

The original attention path reshaped and permuted Q, K and V into new contiguous
(batch, heads, seq, head_dim) tensors and copied the output back, as Hugging Face's
modelling code does. The current path (``distilbert.kernels.attention.attention_torch``)
hands strided views of the fused projection to ``scaled_dot_product_attention`` and gets
its output back as a view. This script counts allocations and bytes allocated, with
``torch.profiler`` (``profile_memory=True``), for one attention call and for one whole
encoder forward, on the built-in model and on DistilBERT-base sizes (random weights). On
CUDA it also reports the peak of ``torch.cuda.max_memory_allocated`` above the inputs.

Usage: ``python benchmarks/alloc_attention.py [--device cpu|cuda] [--out FILE]``; the
result is a markdown file (default ``benchmarks/results/alloc_attention_<device>.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import math
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from distilbert.engine.config import DistilBertConfig
from distilbert.engine.embedder import default_model_path
from distilbert.engine.model import DistilBertModel

attn = importlib.import_module("distilbert.kernels.attention")

RESULTS = Path(__file__).parent / "results"
BATCH, SEQ = 8, 128
CPU_READING = (
    "Reading the CPU rows: `aten::empty_strided` is the attention output "
    "(batch x seq x dim, returned as a view, no copy); `aten::empty` covers the "
    "fused kernel's log-sum-exp and scratch and the float mask bias; `aten::eq` is "
    "the boolean padding mask the bias is filled from. The output is needed, the "
    "scratch belongs to PyTorch, and the two small mask tensors keep results exact "
    "(a boolean `attn_mask` would give all-padding rows zeros instead of the uniform "
    "average of the values), so the strided path has nothing left to remove."
)


def attention_copying(qkv, key_mask, n_heads, scale=None):
    """The original design: Q, K, V and the output go through new contiguous tensors."""
    batch, seq, width = qkv.shape
    dim = width // 3
    head_dim = dim // n_heads
    q, k, v = (
        part.reshape(batch, seq, n_heads, head_dim).permute(0, 2, 1, 3).contiguous()
        for part in qkv.split(dim, dim=-1)
    )
    bias = attn.mask_bias(key_mask, q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return out.permute(0, 2, 1, 3).contiguous().reshape(batch, seq, dim)


VARIANTS = {
    "copying (reshape/permute/contiguous)": attention_copying,
    "strided views (current)": attn.attention_torch,
}


@contextlib.contextmanager
def torch_attention(op):
    """Make the torch backend's attention ``op`` for the duration of the block."""
    original = attn.attention_torch
    attn.attention_torch = op
    try:
        yield
    finally:
        attn.attention_torch = original


@dataclass
class Allocations:
    """What one profiled call allocated."""

    count: int
    bytes: int
    peak_cuda_bytes: int | None = None
    ops: dict[str, tuple[int, int]] = field(default_factory=dict)  # op -> (calls, bytes kept)


def _memory_events(prof, device: torch.device):
    """(count, bytes) of allocations on ``device`` recorded by the profiler."""
    wanted = "CUDA" if device.type == "cuda" else "CPU"
    count = total = 0
    for event in prof.profiler.kineto_results.events():
        if event.name() != "[memory]" or event.nbytes() <= 0:
            continue
        if wanted not in str(event.device_type()):
            continue
        count += 1
        total += event.nbytes()
    return count, total


def measure(fn, device: torch.device) -> Allocations:
    """Allocations of one call of ``fn`` (after a warm-up call), without autograd."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch.no_grad():
        fn()
        peak = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        with profile(activities=activities, profile_memory=True) as prof:
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
    count, total = _memory_events(prof, device)
    ops = {}
    for item in prof.key_averages():
        kept = item.self_cpu_memory_usage + getattr(item, "self_device_memory_usage", 0)
        if kept > 0:
            ops[item.key] = (item.count, kept)
    return Allocations(count, total, peak, ops)


def make_inputs(config: DistilBertConfig, device: torch.device):
    """Ids, a right-padded mask with varied lengths, and a fused projection of that size."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (BATCH, SEQ), generator=generator)
    lengths = torch.linspace(SEQ // 4, SEQ, BATCH).long()
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
    qkv = torch.randn(BATCH, SEQ, 3 * config.dim, generator=generator)
    return ids.to(device), mask.to(device), qkv.to(device)


def models(device: torch.device):
    """The built-in model and a DistilBERT-base-sized encoder with random weights."""
    builtin = DistilBertModel.from_pretrained(default_model_path())
    yield "built-in (all-MiniLM-L6-v2)", builtin.to(device).eval()
    base = DistilBertModel(DistilBertConfig())
    yield "DistilBERT-base sizes", base.to(device).eval()


def context_lines(device: torch.device) -> list[str]:
    """Where and when the numbers were taken."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            check=False, cwd=Path(__file__).parent,
        ).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    return [
        f"- device: {where}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- commit: {commit}",
        f"- input: batch {BATCH}, seq {SEQ}, right-padded mask, fp32, no autograd",
    ]


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def run(device: torch.device) -> str:
    """Measure every (model, scope, variant) and return the markdown report."""
    rows = []
    for name, model in models(device):
        config = model.config
        ids, mask, qkv = make_inputs(config, device)
        exact = None
        for variant, op in VARIANTS.items():
            with torch_attention(op):
                model.backend = "torch"
                heads = config.n_heads
                call = measure(lambda q=qkv, m=mask, h=heads: attn.attention_torch(q, m, h), device)
                forward = measure(lambda f=model, i=ids, m=mask: f(i, m), device)
                with torch.no_grad():
                    hidden = model(ids, mask)
            exact = hidden if exact is None else exact
            same = torch.equal(hidden, exact)
            rows.append((name, variant, call, forward, same))

    lines = ["# Allocations per forward: torch backend attention", ""]
    lines += context_lines(device) + [""]
    lines += [
        (
            "| model | attention path | one attention call: allocations | MiB | "
            "encoder forward: allocations | MiB | CUDA peak MiB | same hidden states |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, variant, call, forward, same in rows:
        lines.append(
            f"| {name} | {variant} | {call.count} | {_mib(call.bytes)} | {forward.count} | "
            f"{_mib(forward.bytes)} | {_mib(forward.peak_cuda_bytes)} | "
            f"{'yes' if same else 'NO'} |"
        )
    lines += ["", _summary(rows), ""]
    lines += [
        (
            "What one strided call still allocates (ops whose own allocations outlive them; "
            "scratch freed inside an op is counted above but not here):"
        ),
        "",
        "| model | op | calls | KiB |",
        "|---|---|---:|---:|",
    ]
    for name, variant, call, _, _ in rows:
        if variant != "strided views (current)":
            continue
        for op, (calls, kept) in sorted(call.ops.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"| {name} | {op} | {calls} | {kept / 1024:.1f} |")
    if device.type == "cpu":
        lines += ["", CPU_READING]
    return "\n".join(lines) + "\n"


def _summary(rows) -> str:
    """One sentence per model: what the strided path saves per forward."""
    out = []
    for index in range(0, len(rows), 2):
        (name, _, call_a, fwd_a, _), (_, _, call_b, fwd_b, _) = rows[index], rows[index + 1]
        saved = fwd_a.bytes - fwd_b.bytes
        share = 100.0 * saved / fwd_a.bytes if fwd_a.bytes else math.nan
        out.append(
            f"- {name}: strided views save {call_a.count - call_b.count} allocations and "
            f"{_mib(call_a.bytes - call_b.bytes)} MiB per attention call, "
            f"{fwd_a.count - fwd_b.count} allocations and {_mib(saved)} MiB "
            f"({share:.0f}% of the bytes) per encoder forward."
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, write the markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report = run(device)
    out = args.out or RESULTS / f"alloc_attention_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
