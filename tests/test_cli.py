"""``distilbert embed`` end to end against ``distilbert.load().embed``; ``distilbert bench``.

Every run uses the built-in model. ``load`` is called once per distinct set of options in
this module (see ``cached_load``): the command goes through the real loader, without paying
for it on every test.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import distilbert
from distilbert import cli

TEXTS = [
    "A cat sat on the mat.",
    "",
    "The stock market fell sharply on Monday after the announcement.",
    "   ",
    "Café crème, s'il vous plaît.",
    "Python lists are mutable sequences; tuples are not.",
    "北京是中国的首都。",
    "Short one",
    (
        "A much longer sentence that goes on for a while, so that the batch holds texts of "
        "very different lengths and padding matters for the result being right."
    ),
]

# Embeddings of one text alone or in any batch agree within this (issue 2, item 5).
ATOL = 1e-5

_LOADED: dict[tuple, distilbert.Embedder] = {}


@pytest.fixture(scope="module")
def reference() -> distilbert.Embedder:
    """The built-in model, loaded the documented way."""
    return distilbert.load()


@pytest.fixture(autouse=True)
def cached_load(monkeypatch):
    """Make the CLI's ``load`` remember models by their options (the real loader runs once)."""
    real_load = cli.load

    def load(path=None, **options):
        key = (path, tuple(sorted(options.items())))
        if key not in _LOADED:
            _LOADED[key] = real_load(path, **options)
        return _LOADED[key]

    monkeypatch.setattr(cli, "load", load)
    return load


def write_input(folder: Path, suffix: str, texts: list[str], column: str = "text") -> Path:
    """``texts`` as an input file of format ``suffix``, with an extra column beside them."""
    path = folder / f"input{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    elif suffix == ".jsonl":
        lines = [json.dumps({"id": i, column: t}, ensure_ascii=False) for i, t in enumerate(texts)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", column])
            writer.writerows(enumerate(texts))
    else:
        pq.write_table(pa.table({"id": list(range(len(texts))), column: texts}), path)
    return path


def read_output(path: Path) -> tuple[list[int], np.ndarray]:
    """(ids, vectors) of an output file in any format."""
    if path.suffix == ".npy":
        vectors = np.load(path)
        return list(range(len(vectors))), vectors
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        return table.column("id").to_pylist(), vectors
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    vectors = np.array([r["embedding"] for r in records], dtype=np.float32)
    return [r["id"] for r in records], vectors


def run_cli(*args: str) -> int:
    """``distilbert`` with ``args`` in this process; small chunks and batches, no progress bar."""
    return cli.main([*args, "--chunk-size", "4", "--batch-size", "3", "--quiet"])


def leftovers(folder: Path) -> list[str]:
    """Temporary files left behind in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_embed_each_input_format(tmp_path, reference, suffix):
    source = write_input(tmp_path, suffix, TEXTS)
    output = tmp_path / "out.npy"

    assert run_cli("embed", str(source), "-o", str(output)) == 0

    vectors = np.load(output)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, reference.embed(TEXTS), rtol=0, atol=ATOL)
    assert leftovers(tmp_path) == []


# .npy output is covered by every input format above.
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_embed_each_output_format(tmp_path, reference, suffix):
    source = write_input(tmp_path, ".jsonl", TEXTS, column="body")
    output = tmp_path / f"out{suffix}"

    assert run_cli("embed", str(source), "-o", str(output), "--column", "body") == 0

    ids, vectors = read_output(output)
    assert ids == list(range(len(TEXTS)))
    np.testing.assert_allclose(vectors, reference.embed(TEXTS), rtol=0, atol=ATOL)


def test_embed_options_reach_the_engine(tmp_path, reference):
    source = write_input(tmp_path, ".txt", TEXTS)
    output = tmp_path / "out.parquet"

    status = run_cli(
        "embed", str(source), "-o", str(output), "--pooling", "cls", "--no-normalize",
        "--max-length", "6", "--device", "cpu", "--backend", "torch",
    )

    assert status == 0
    expected = reference.embed(TEXTS, pooling="cls", normalize=False, max_length=6)
    np.testing.assert_allclose(read_output(output)[1], expected, rtol=0, atol=ATOL)
    assert not np.allclose(expected, reference.embed(TEXTS), atol=1e-2)


def test_empty_line_is_the_embedding_of_cls_sep(tmp_path, reference):
    source = tmp_path / "input.txt"
    source.write_text("first\n\nthird\n", encoding="utf-8")
    output = tmp_path / "out.npy"

    assert run_cli("embed", str(source), "-o", str(output)) == 0

    # The reference for the empty line: the model run directly on the two ids [CLS] [SEP].
    tokenizer = reference.tokenizer
    ids = torch.tensor([[tokenizer.cls_token_id, tokenizer.sep_token_id]])
    with torch.inference_mode():
        hidden = reference.model(ids, torch.ones_like(ids))
    expected = torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1)[0].numpy()
    vectors = np.load(output)
    assert vectors.shape == (3, reference.dim)
    np.testing.assert_allclose(vectors[1], expected, rtol=0, atol=ATOL)


def test_progress_bar_and_summary_go_to_stderr(tmp_path, capsys):
    source = write_input(tmp_path, ".txt", TEXTS[:3])
    output = tmp_path / "out.npy"

    assert cli.main(["embed", str(source), "-o", str(output)]) == 0

    captured = capsys.readouterr()
    assert captured.out == ""
    # The bar draws "0/3" when it opens; later redraws are throttled by time, so only the
    # first one is certain to be written before the bar clears itself.
    assert "0/3" in captured.err
    assert f"wrote 3 embeddings of dim 384 to {output}" in captured.err


def test_int8_embed_writes_vectors_near_float32(tmp_path, reference):
    source = tmp_path / "in.txt"
    texts = ["The cat sat on the mat.", "Numbers are immutable objects.", "Hello there!"]
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    output = tmp_path / "out.npy"

    assert cli.main(["embed", str(source), "-o", str(output), "--int8", "-q"]) == 0

    vectors = np.load(output)
    assert vectors.shape == (3, 384)
    assert ((vectors * reference.embed(texts)).sum(axis=1) >= 0.97).all()  # see test_embedder


def test_summary_of_one_text_is_singular(tmp_path, capsys):
    source = tmp_path / "one.txt"
    source.write_text("Just one line.\n", encoding="utf-8")
    output = tmp_path / "one.npy"

    assert cli.main(["embed", str(source), "-o", str(output)]) == 0

    assert f"wrote 1 embedding of dim 384 to {output}" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_without_a_gpu_is_a_bad_argument(tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("hello\n", encoding="utf-8")

    status = cli.main(["embed", str(source), "-o", str(tmp_path / "out.npy"), "--device", "cuda"])

    assert status == cli.EXIT_BAD_INPUT
    assert "device 'cuda' was asked for but no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()


def test_python_dash_m_runs_the_command(tmp_path, reference):
    source = write_input(tmp_path, ".csv", TEXTS[:3])
    output = tmp_path / "out.jsonl"

    done = subprocess.run(
        [sys.executable, "-m", "distilbert", "embed", str(source), "-o", str(output), "-q"],
        capture_output=True, text=True, timeout=300, check=False,
    )

    assert done.returncode == 0, done.stderr
    ids, vectors = read_output(output)
    assert ids == [0, 1, 2]
    np.testing.assert_allclose(vectors, reference.embed(TEXTS[:3]), rtol=0, atol=ATOL)


# --- bad input: one line on stderr, exit status 2, no output ---------------------------------


def bad_input_cases(folder: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, what the error line must say)."""
    good = write_input(folder, ".jsonl", ["a", "b"])
    non_utf8 = folder / "latin1.txt"
    non_utf8.write_bytes("first\nsecond\ncaf\xe9\n".encode("latin-1"))
    unknown = folder / "input.xlsx"
    unknown.write_text("a\n", encoding="utf-8")
    out = str(folder / "out.npy")
    return {
        "missing file": ([str(folder / "absent.txt"), "-o", out], "input file not found"),
        "unknown column": (
            [str(good), "-o", out, "--column", "body"], "no column 'body' (its columns: 'id', "
        ),
        "non-utf8 line": ([str(non_utf8), "-o", out], "line 3 is not valid UTF-8"),
        "unknown input extension": ([str(unknown), "-o", out], "unknown input format '.xlsx'"),
        "unknown output extension": (
            [str(good), "-o", str(folder / "out.csv")], "unknown output format '.csv'"
        ),
        "missing output folder": (
            [str(good), "-o", str(folder / "no" / "out.npy")], "does not exist"
        ),
        "output over input": ([str(good), "-o", str(good)], "would overwrite the input"),
        "missing model": (
            [str(good), "-o", out, "--model", str(folder / "no-model")], "no-model"
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["missing file", "unknown column", "non-utf8 line", "unknown input extension",
     "unknown output extension", "missing output folder", "output over input", "missing model"],
)
def test_bad_input_is_one_clear_line_and_status_2(tmp_path, capsys, case):
    arguments, message = bad_input_cases(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))

    status = cli.main(["embed", *arguments, "--quiet"])

    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(error) == 1
    assert error[0].startswith("distilbert: error: ")
    assert message in error[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_bad_line_mid_file_leaves_no_output(tmp_path, capsys):
    source = tmp_path / "input.txt"
    lines = [f"sentence number {i}".encode() for i in range(10)]
    lines[8] = b"\xff\xfe broken"
    source.write_bytes(b"\n".join(lines) + b"\n")
    output = tmp_path / "out.parquet"
    output.write_bytes(b"an older output")

    # Chunks of 4: two chunks are embedded and written before the reader meets line 9.
    status = run_cli("embed", str(source), "-o", str(output))

    assert status == 2
    assert "line 9 is not valid UTF-8" in capsys.readouterr().err
    assert output.read_bytes() == b"an older output"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
def test_crash_mid_job_leaves_no_output(tmp_path, reference, monkeypatch, capsys, suffix):
    calls = []

    def failing_embed(texts, **options):
        calls.append(len(texts))
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second chunk")
        return reference.embed(texts, **options)

    embedder = distilbert.Embedder(reference.model, reference.tokenizer)
    monkeypatch.setattr(embedder, "embed", failing_embed)
    monkeypatch.setattr(cli, "load", lambda *args, **kwargs: embedder)
    source = write_input(tmp_path, ".txt", TEXTS)
    output = tmp_path / f"out{suffix}"

    status = run_cli("embed", str(source), "-o", str(output))

    assert status == 1
    assert calls == [4, 4]
    assert "RuntimeError: simulated failure" in capsys.readouterr().err
    assert not output.exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--max-length", "abc"]])
def test_bad_option_value_is_a_usage_error(tmp_path, capsys, option):
    source = write_input(tmp_path, ".txt", ["a"])

    with pytest.raises(SystemExit) as stopped:
        cli.main(["embed", str(source), "-o", str(tmp_path / "out.npy"), *option])

    assert stopped.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


# --- distilbert bench ---------------------------------------------------------------------


def test_bench_writes_its_files_and_prints_the_report(tmp_path, capsys):
    out = tmp_path / "results"

    status = cli.main(["bench", "--quick", "--workloads", "memory",
                       "--providers", "distilbert-torch", "--out", str(out)])

    assert status == 0
    captured = capsys.readouterr()
    csv_path, md_path = out / "bench_cpu.csv", out / "bench_cpu.md"
    assert csv_path.is_file() and md_path.is_file()
    assert f"wrote {csv_path} (csv)" in captured.err
    assert f"wrote {md_path} (markdown)" in captured.err
    report = md_path.read_text(encoding="utf-8")
    assert captured.out == report
    # | provider | allocations | allocated MiB | peak MiB | allocations vs ours |
    rows = [line.split("|")[1:-1] for line in report.splitlines()
            if line.startswith("| distilbert-torch |")]
    assert len(rows) == 1
    assert int(rows[0][1]) > 0


def test_bench_in_bfloat16_names_its_files_and_dtype(tmp_path, capsys):
    out = tmp_path / "results"

    status = cli.main(["bench", "--quick", "--workloads", "memory", "--dtype", "bfloat16",
                       "--providers", "distilbert", "--out", str(out)])

    assert status == 0
    report = (out / "bench_cpu_bfloat16.md").read_text(encoding="utf-8")
    assert "dtype bfloat16" in report and "Fastest bfloat16 GEMM" in report
    assert (out / "bench_cpu_bfloat16.csv").read_text(encoding="utf-8").count(
        "# dtype: bfloat16") == 1
    assert not (out / "bench_cpu.md").exists()


def test_bench_ratios_use_the_first_provider_with_the_call(tmp_path, capsys):
    out = tmp_path / "results"

    status = cli.main(["bench", "--workloads", "embed", "--corpus-size", "20", "--rounds", "1",
                       "--providers", "transformers-sdpa,distilbert", "--out", str(out)])

    assert status == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| embed |")]
    assert [(row[2].strip(), row[-1].strip()) for row in rows] == [("distilbert", "1.00x")]


def test_bench_names_the_providers_it_skips(tmp_path, caplog):
    status = cli.main(["bench", "--quick", "--workloads", "memory", "--dtype", "bfloat16",
                       "--providers", "distilbert,distilbert-int8", "--out", str(tmp_path)])

    assert status == 0
    assert "provider distilbert-int8 skipped: it runs on CPU in float32 only" in caplog.text


def test_bench_refuses_an_unknown_workload(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["bench", "--workloads", "memory,speed"])

    assert stopped.value.code == 2
    assert "unknown speed" in capsys.readouterr().err
