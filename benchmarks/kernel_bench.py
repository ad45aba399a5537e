"""Micro-benchmark of the Triton kernels against PyTorch eager and scaled_dot_product_attention.

On a CUDA machine: DistilBERT-base shapes (dim 768, 12 heads of 64, FFN 3072), batch 1 to
128, sequence 16 to 512, fp16 and bf16, forward and forward + backward. Providers:

- attention: ``triton`` (this package), ``eager`` (matmul, softmax, matmul), ``sdpa``
  (PyTorch's fused attention on strided views with the same additive mask);
- residual + LayerNorm and bias + GELU: ``triton`` and ``eager``.

Times are medians of ``triton.testing.do_bench`` (CUDA events). Each row also gives
TFLOP/s (attention) or GB/s (the memory-bound ops) from a simple model, the speedup over
eager measured in the same run, and the forward's largest error against PyTorch in fp32.

Writes ``kernel_bench.csv`` (one row per measurement, context in ``#`` lines),
``kernel_bench.md`` and ``kernel_bench.png`` into ``--out`` (default ``$OUT`` if set, else
``benchmarks/results``).

``--dry-run`` checks the script itself on a machine without a GPU: it sets
``TRITON_INTERPRET=1`` before Triton is imported, runs tiny shapes (2 heads of 32) in fp16
and fp32 on the CPU with a wall-clock timer, and names its files ``kernel_bench_dryrun.*``.
Its times mean nothing.
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import argparse
import csv
import datetime
import importlib
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

attn = importlib.import_module("distilbert.kernels.attention")
ln = importlib.import_module("distilbert.kernels.layernorm")
gelu = importlib.import_module("distilbert.kernels.gelu")

RESULTS = Path(__file__).parent / "results"
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Plan:
    """What to run: model sizes, shapes, dtypes, device and the timer."""

    dim: int
    heads: int
    hidden: int
    batches: tuple[int, ...]
    seqs: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    device: str
    dry_run: bool


FULL = Plan(768, 12, 3072, (1, 8, 32, 128), (16, 64, 128, 256, 512),
            (torch.float16, torch.bfloat16), "cuda", False)
DRY = Plan(64, 2, 128, (1, 2), (16, 33), (torch.float16, torch.float32), "cpu", True)


def time_ms(fn, plan: Plan, grads: list[torch.Tensor]) -> float:
    """Median milliseconds of ``fn``: CUDA events on a GPU, a wall clock in a dry run."""
    if not plan.dry_run:
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads,
                                             return_mode="median"))
    samples = []
    for _ in range(3):
        for tensor in grads:
            tensor.grad = None
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return sorted(samples)[1]


def key_mask(batch: int, seq: int, device: str) -> torch.Tensor:
    """Right padding with lengths spread from a quarter of seq to seq, as in real batches."""
    lengths = torch.linspace(max(1, seq // 4), seq, batch).round().long()
    return (torch.arange(seq)[None, :] < lengths[:, None]).long().to(device)


def attention_case(plan: Plan, batch: int, seq: int, dtype: torch.dtype):
    """Inputs, providers and work model of one attention shape."""
    qkv = torch.randn(batch, seq, 3 * plan.dim, device=plan.device, dtype=dtype)
    mask = key_mask(batch, seq, plan.device)
    providers = {
        "triton": lambda t: attn.attention_triton(t, mask, plan.heads),
        "eager": lambda t: attn.attention_ref(t, mask, plan.heads),
        "sdpa": lambda t: attn.attention_torch(t, mask, plan.heads),
    }
    reference = attn.attention_ref(qkv.float(), mask, plan.heads)
    flops = 4.0 * batch * seq * seq * plan.dim  # QK^T and PV, all heads
    return (qkv,), providers, reference, ("TFLOP/s", flops / 1e12)


def layernorm_case(plan: Plan, batch: int, seq: int, dtype: torch.dtype):
    """Inputs, providers and work model of one residual + LayerNorm shape."""
    x = torch.randn(batch, seq, plan.dim, device=plan.device, dtype=dtype)
    res = torch.randn_like(x)
    weight = torch.rand(plan.dim, device=plan.device, dtype=dtype) + 0.5
    bias = torch.randn(plan.dim, device=plan.device, dtype=dtype)
    providers = {
        "triton": lambda *t: ln.add_layer_norm_triton(*t, 1e-12),
        "eager": lambda *t: ln.add_layer_norm_ref(*t, 1e-12),
    }
    reference = ln.add_layer_norm_ref(x.float(), res.float(), weight.float(), bias.float(),
                                      1e-12)
    moved = 3 * x.numel() * x.element_size()  # read x and residual, write y
    return (x, res, weight, bias), providers, reference, ("GB/s", moved / 1e9)


def gelu_case(plan: Plan, batch: int, seq: int, dtype: torch.dtype):
    """Inputs, providers and work model of one bias + GELU shape."""
    x = torch.randn(batch, seq, plan.hidden, device=plan.device, dtype=dtype)
    bias = torch.randn(plan.hidden, device=plan.device, dtype=dtype)
    providers = {"triton": gelu.bias_gelu_triton, "eager": gelu.bias_gelu_ref}
    reference = gelu.bias_gelu_ref(x.float(), bias.float())
    moved = 2 * x.numel() * x.element_size()  # read x, write y
    return (x, bias), providers, reference, ("GB/s", moved / 1e9)


CASES = {"attention": attention_case, "add_layer_norm": layernorm_case, "bias_gelu": gelu_case}


def bench_case(plan: Plan, op: str, batch: int, seq: int, dtype: torch.dtype) -> list[dict]:
    """Rows for every provider and mode of one (op, shape, dtype)."""
    inputs, providers, reference, (unit, work) = CASES[op](plan, batch, seq, dtype)
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        leaves = [t.detach().requires_grad_(mode == "fwd+bwd") for t in inputs]
        times = {}
        for provider, fn in providers.items():
            if mode == "fwd":
                with torch.no_grad():
                    out = fn(*leaves)
                error = (out.float() - reference).abs().max().item()

                def call(fn=fn, leaves=leaves):
                    with torch.no_grad():
                        fn(*leaves)
            else:
                error = float("nan")
                upstream = torch.randn_like(reference).to(dtype)

                def call(fn=fn, leaves=leaves, upstream=upstream):
                    fn(*leaves).backward(upstream)
            try:
                times[provider] = time_ms(call, plan, leaves)
            except torch.cuda.OutOfMemoryError:
                times[provider] = float("nan")
                torch.cuda.empty_cache()
            factor = 3.0 if mode == "fwd+bwd" else 1.0  # backward ~ twice the forward's work
            rate = factor * work / (times[provider] * 1e-3)
            rows.append({
                "op": op, "mode": mode, "dtype": DTYPE_NAMES[dtype], "batch": batch,
                "seq": seq, "provider": provider, "ms": times[provider],
                "rate": rate, "unit": unit, "max_abs_error_vs_fp32": error,
            })
        for row in rows[-len(providers):]:
            row["speedup_vs_eager"] = times["eager"] / row["ms"]
    return rows


def context(plan: Plan) -> dict[str, str]:
    """Device, versions, commit and date of this run."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
        cwd=Path(__file__).parent,
    ).stdout.strip() or "unknown"
    if plan.device == "cuda":
        device = torch.cuda.get_device_name()
        cuda = torch.version.cuda or "unknown"
    else:
        device = "CPU, Triton interpreter (dry run: times are meaningless)"
        cuda = "none"
    return {
        "device": device, "torch": torch.__version__, "triton": triton.__version__,
        "cuda": cuda, "python": platform.python_version(), "commit": commit,
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "model sizes": f"dim {plan.dim}, {plan.heads} heads, FFN {plan.hidden}",
    }


def write_csv(path: Path, rows: list[dict], info: dict[str, str]) -> None:
    """One row per measurement, the context as leading ``#`` lines."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        handle.writelines(f"# {key}: {value}\n" for key, value in info.items())
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path, rows: list[dict], info: dict[str, str]) -> None:
    """Per (op, mode, dtype): a table of ms per provider and Triton's speedups."""
    lines = ["# Triton kernels vs PyTorch", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    legend = (
        "Times in ms (median); speedup = provider time / triton time; "
        "err = largest |forward - fp32 PyTorch|."
    )
    lines += ["", legend, ""]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["op"], row["mode"], row["dtype"]), []).append(row)
    for (op, mode, dtype), group in groups.items():
        providers = list(dict.fromkeys(r["provider"] for r in group))
        others = [p for p in providers if p != "triton"]
        lines += [f"## {op}, {mode}, {dtype}", ""]
        header = ["batch", "seq", *[f"{p} ms" for p in providers]]
        header += [f"vs {p}" for p in others] + [f"triton {group[0]['unit']}"]
        if mode == "fwd":
            header.append("triton err")
        lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        shapes = dict.fromkeys((r["batch"], r["seq"]) for r in group)
        for batch, seq in shapes:
            by = {r["provider"]: r for r in group if (r["batch"], r["seq"]) == (batch, seq)}
            cells = [str(batch), str(seq), *[f"{by[p]['ms']:.4f}" for p in providers]]
            cells += [f"{by[p]['ms'] / by['triton']['ms']:.2f}x" for p in others]
            cells.append(f"{by['triton']['rate']:.1f}")
            if mode == "fwd":
                cells.append(f"{by['triton']['max_abs_error_vs_fp32']:.2e}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plot(path: Path, rows: list[dict], info: dict[str, str]) -> None:
    """Speedup of triton over each other provider against tokens (batch x seq), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["op"], r["mode"]) for r in rows))
    fig, axes = plt.subplots(2, (len(panels) + 1) // 2, figsize=(15, 8), squeeze=False)
    for ax, (op, mode) in zip(axes.flat, panels):
        subset = [r for r in rows if r["op"] == op and r["mode"] == mode]
        for dtype in dict.fromkeys(r["dtype"] for r in subset):
            for other in dict.fromkeys(r["provider"] for r in subset):
                if other == "triton":
                    continue
                points = {}
                for r in subset:
                    if r["dtype"] == dtype and r["provider"] in ("triton", other):
                        points.setdefault((r["batch"], r["seq"]), {})[r["provider"]] = r["ms"]
                xs = sorted(points, key=lambda k: (k[0] * k[1], k))
                tokens = [b * s for b, s in xs]
                ratio = [points[k][other] / points[k]["triton"] for k in xs]
                ax.plot(tokens, ratio, "o", label=f"vs {other}, {dtype}", markersize=4,
                        alpha=0.8)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{op} {mode}")
        ax.set_xlabel("tokens (batch x seq)")
        ax.set_ylabel("speedup of triton")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{info['device']} | torch {info['torch']} | triton {info['triton']} | "
                 f"{info['commit']} | {info['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the plan and write the CSV, markdown and PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes, CPU, Triton interpreter; checks the script only")
    parser.add_argument("--out", type=Path,
                        default=Path(os.environ["OUT"]) if os.environ.get("OUT") else RESULTS)
    parser.add_argument("--ops", default=",".join(CASES), help="comma-separated subset")
    args = parser.parse_args(argv)

    plan = DRY if args.dry_run else FULL
    if plan.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --dry-run to check the script on a CPU")
    torch.manual_seed(0)
    info = context(plan)
    rows = []
    started = time.perf_counter()
    for op in args.ops.split(","):
        for dtype in plan.dtypes:
            for batch in plan.batches:
                for seq in plan.seqs:
                    rows += bench_case(plan, op, batch, seq, dtype)
            elapsed = time.perf_counter() - started
            print(f"{op} {DTYPE_NAMES[dtype]} done ({elapsed:.0f} s)", flush=True)

    stem = "kernel_bench_dryrun" if plan.dry_run else "kernel_bench"
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / f"{stem}.csv", rows, info)
    write_markdown(args.out / f"{stem}.md", rows, info)
    write_plot(args.out / f"{stem}.png", rows, info)
    print(f"wrote {stem}.csv, .md and .png to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
