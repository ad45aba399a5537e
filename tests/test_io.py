"""Readers and writers of distilbert.io: formats, odd lines, bad input, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distilbert import io

TEXTS = ["The first text.", "", "  ", "Zweite Zeile: ä.", "中文句子。", "last, with comma"]


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON value a line."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def read_all(reader: io.TextReader, chunk_size: int = 4) -> tuple[list[int], list[str]]:
    """Every id and text of ``reader``, chunk by chunk."""
    ids: list[int] = []
    texts: list[str] = []
    for chunk in reader.chunks(chunk_size):
        assert 0 < len(chunk) <= chunk_size
        ids += chunk.ids
        texts += chunk.texts
    return ids, texts


def leftovers(folder: Path) -> list[str]:
    """Temporary files a writer left behind in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- readers: what each format yields --------------------------------------------------------


def test_txt_every_line_is_a_text_empty_lines_included(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeff".encode() + "\r\n".join(TEXTS).encode("utf-8"))

    reader = io.open_reader(path)
    ids, texts = read_all(reader)

    assert texts == TEXTS
    assert ids == list(range(len(TEXTS)))
    assert reader.count() == len(TEXTS)


def test_txt_trailing_newline_adds_no_text(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo\n\n", encoding="utf-8")

    reader = io.open_reader(path)

    assert read_all(reader)[1] == ["one", "two", ""]
    assert reader.count() == 3


def test_empty_txt_has_no_chunks(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"")

    reader = io.open_reader(path)

    assert list(reader.chunks(3)) == []
    assert reader.count() == 0


def test_jsonl_reads_column_and_skips_blank_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"body": t, "n": i}, ensure_ascii=False) for i, t in enumerate(TEXTS)]
    path.write_text("\n".join(lines[:2]) + "\n\n   \n" + "\n".join(lines[2:]), encoding="utf-8")

    reader = io.open_reader(path, column="body")

    assert read_all(reader) == (list(range(len(TEXTS))), TEXTS)
    assert reader.count() == len(TEXTS)


def test_csv_reads_column_with_quotes_and_multiline_fields(tmp_path):
    path = tmp_path / "in.csv"
    texts = TEXTS + ['quoted "word", then\na second line']
    body = "".join(f'{i},"{t.replace(chr(34), chr(34) * 2)}"\r\n' for i, t in enumerate(texts))
    path.write_text("\ufeffid,text\r\n" + body + "\r\n", encoding="utf-8")

    reader = io.open_reader(path)

    assert read_all(reader, chunk_size=3) == (list(range(len(texts))), texts)
    assert reader.count() == len(texts)


@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string()])
def test_parquet_reads_column_across_row_groups(tmp_path, arrow_type):
    path = tmp_path / "in.parquet"
    texts = [f"text number {i}" for i in range(25)] + TEXTS
    table = pa.table({"n": list(range(len(texts))), "text": pa.array(texts, type=arrow_type)})
    pq.write_table(table, path, row_group_size=7)

    reader = io.open_reader(path)

    assert read_all(reader, chunk_size=10) == (list(range(len(texts))), texts)
    assert reader.count() == len(texts)


def test_reader_streams_chunks_before_reading_the_whole_file(tmp_path):
    # The bad line is at the end: the first chunks come out before the reader gets there.
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\nb\nc\nd\n\xff\xfe\n")
    chunks = io.open_reader(path).chunks(2)

    assert next(chunks).texts == ["a", "b"]
    assert next(chunks).texts == ["c", "d"]
    with pytest.raises(io.InputError, match="line 5"):
        next(chunks)


# --- readers: bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_missing_file_is_named(tmp_path, suffix):
    path = tmp_path / f"nothing{suffix}"

    with pytest.raises(io.InputError, match=f"input file not found: .*nothing\\{suffix}"):
        io.open_reader(path)


@pytest.mark.parametrize("name", ["in.xlsx", "in"])
def test_unknown_extension_lists_known_ones(tmp_path, name):
    path = tmp_path / name
    path.write_text("x\n", encoding="utf-8")

    with pytest.raises(io.InputError, match=r"unknown input format.*\.txt, \.jsonl, \.csv"):
        io.open_reader(path)


def test_folder_is_not_an_input(tmp_path):
    folder = tmp_path / "folder.txt"
    folder.mkdir()

    with pytest.raises(io.InputError, match="not a file"):
        io.open_reader(folder)


def test_txt_takes_no_column(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("x\n", encoding="utf-8")

    with pytest.raises(io.InputError, match="takes no column"):
        io.open_reader(path, column="text")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_non_utf8_line_is_named(tmp_path, suffix):
    path = tmp_path / f"in{suffix}"
    good = {".txt": b"fine", ".jsonl": b'{"text": "fine"}', ".csv": b"fine"}[suffix]
    bad = {".txt": b"caf\xe9", ".jsonl": b'{"text": "caf\xe9"}', ".csv": b"caf\xe9"}[suffix]
    header = b"text\n" if suffix == ".csv" else b""
    lines = [good, good, bad, good] if not header else [good, bad, good]
    path.write_bytes(header + b"\n".join(lines) + b"\n")

    with pytest.raises(io.InputError, match=r"in\.\w+: line 3 is not valid UTF-8"):
        read_all(io.open_reader(path))


def test_jsonl_unknown_column_names_the_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"body": "b", "id": 2}])

    with pytest.raises(io.InputError, match="line 2 has no column 'text'.*'body', 'id'"):
        read_all(io.open_reader(path))


@pytest.mark.parametrize(
    "record, problem",
    [({"text": None}, "null"), ({"text": 3}, "an int, not text"), (["a"], "not an object")],
)
def test_jsonl_value_that_is_not_text_names_the_line(tmp_path, record, problem):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, record])

    with pytest.raises(io.InputError, match=f"line 2.*{problem}"):
        read_all(io.open_reader(path))


def test_jsonl_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"\n', encoding="utf-8")

    with pytest.raises(io.InputError, match="line 2 is not valid JSON"):
        read_all(io.open_reader(path))


def test_csv_unknown_column_names_the_header(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,body\n1,hello\n", encoding="utf-8")

    with pytest.raises(io.InputError, match="no column 'text' in the header.*'id', 'body'"):
        io.open_reader(path)


def test_csv_short_row_names_the_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("id,text\n1,hello\n2\n", encoding="utf-8")

    with pytest.raises(io.InputError, match="line 3 has 1 fields and no value for column 'text'"):
        read_all(io.open_reader(path))


def test_csv_unterminated_quote_names_the_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('text\nfine\n"never closed\nstill inside\n', encoding="utf-8")

    with pytest.raises(io.InputError, match="line 4: unexpected end of data"):
        read_all(io.open_reader(path))


def test_empty_csv_needs_a_header(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"")

    with pytest.raises(io.InputError, match="needs a header row"):
        io.open_reader(path)


def test_parquet_unknown_column_names_the_columns(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"body": ["a"], "id": [1]}), path)

    with pytest.raises(io.InputError, match="no column 'text'.*'body', 'id'"):
        io.open_reader(path)


def test_parquet_column_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)

    with pytest.raises(io.InputError, match="column 'text' has type int64, not text"):
        io.open_reader(path)


def test_parquet_null_names_the_row(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None, "d"]}), path)

    with pytest.raises(io.InputError, match="row index 2: column 'text' is null"):
        read_all(io.open_reader(path))


def test_file_that_is_not_parquet_is_refused(tmp_path):
    path = tmp_path / "in.parquet"
    path.write_text("text\nhello\n", encoding="utf-8")

    with pytest.raises(io.InputError, match="not a readable Parquet file"):
        io.open_reader(path)


# --- writers ---------------------------------------------------------------------------------


def test_npy_writer_streams_rows_into_a_file_sized_for_the_total(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    path = tmp_path / "out.npy"

    with io.open_embedding_writer(path, total=7, dim=5) as writer:
        writer.write([0, 1, 2, 3], vectors[:4])
        assert not path.exists()
        writer.write([4, 5, 6], vectors[4:])

    loaded = np.load(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, vectors)
    assert leftovers(tmp_path) == []


def test_npy_writer_with_no_rows_writes_an_empty_array(tmp_path):
    path = tmp_path / "out.npy"

    with io.open_embedding_writer(path, total=0, dim=5):
        pass

    assert np.load(path).shape == (0, 5)


def test_npy_writer_refuses_to_commit_missing_rows(tmp_path):
    path = tmp_path / "out.npy"

    with (
        pytest.raises(RuntimeError, match="3 rows written but the file was sized for 4"),
        io.open_embedding_writer(path, total=4, dim=2) as writer,
    ):
        writer.write([0, 1, 2], np.ones((3, 2), dtype=np.float32))

    assert not path.exists()
    assert leftovers(tmp_path) == []


def test_npy_writer_refuses_rows_past_the_total(tmp_path):
    with io.open_embedding_writer(tmp_path / "out.npy", total=2, dim=2) as writer:
        with pytest.raises(ValueError, match="outside 0..1"):
            writer.write([1, 2], np.ones((2, 2), dtype=np.float32))
        writer.write([0, 1], np.ones((2, 2), dtype=np.float32))


def test_parquet_embeddings_have_ids_and_one_row_group_per_write(tmp_path):
    vectors = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    path = tmp_path / "out.parquet"

    with io.open_embedding_writer(path, total=5, dim=3) as writer:
        writer.write([0, 1], vectors[:2])
        writer.write([2, 3, 4], vectors[2:])

    parquet_file = pq.ParquetFile(path)
    assert parquet_file.metadata.num_row_groups == 2
    assert parquet_file.schema_arrow == pa.schema(
        [("id", pa.int64()), ("embedding", pa.list_(pa.float32()))]
    )
    table = parquet_file.read()
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist()), vectors)


def test_jsonl_embeddings_round_trip_float32_exactly(tmp_path):
    vectors = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    path = tmp_path / "out.jsonl"

    with io.open_embedding_writer(path, total=4, dim=3) as writer:
        writer.write([0, 1, 2, 3], vectors)

    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [0, 1, 2, 3]
    np.testing.assert_array_equal(
        np.array([r["embedding"] for r in records], dtype=np.float32), vectors
    )


def test_empty_parquet_embeddings_keep_their_schema(tmp_path):
    path = tmp_path / "out.parquet"

    with io.open_embedding_writer(path, total=0, dim=3):
        pass

    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema.names == ["id", "embedding"]


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
def test_error_while_writing_leaves_no_file_and_keeps_an_old_output(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    path.write_bytes(b"the previous output")

    with pytest.raises(KeyError), io.open_embedding_writer(path, total=4, dim=2) as writer:
        writer.write([0, 1], np.ones((2, 2), dtype=np.float32))
        assert leftovers(tmp_path) != []
        raise KeyError("failure in the middle of a job")

    assert path.read_bytes() == b"the previous output"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_record_writer_writes_any_columns(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"

    with io.RecordWriter(path) as writer:
        writer.write({"id": [0, 1], "label": ["POSITIVE", "négatif"], "score": [0.5, 0.25]})
        writer.write({"id": np.array([2]), "label": ["POSITIVE"], "score": np.array([1.0])})

    if suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines]
        assert "négatif" in lines[1]
    else:
        records = pq.read_table(path).to_pylist()
    assert records == [
        {"id": 0, "label": "POSITIVE", "score": 0.5},
        {"id": 1, "label": "négatif", "score": 0.25},
        {"id": 2, "label": "POSITIVE", "score": 1.0},
    ]


def test_record_writer_refuses_ragged_or_changing_columns(tmp_path):
    with io.RecordWriter(tmp_path / "out.jsonl") as writer:
        with pytest.raises(ValueError, match="differ in length"):
            writer.write({"id": [0, 1], "label": ["a"]})
        writer.write({"id": [0], "label": ["a"]})
        with pytest.raises(ValueError, match=r"expected \['id', 'label'\]"):
            writer.write({"id": [1]})


@pytest.mark.parametrize(
    "name, problem",
    [("out.csv", "unknown output format '.csv'"), ("missing/out.npy", "does not exist")],
)
def test_bad_output_path_is_refused_before_writing(tmp_path, name, problem):
    with pytest.raises(io.OutputPathError, match=problem):
        io.open_embedding_writer(tmp_path / name, total=1, dim=2)

    assert leftovers(tmp_path) == []
