"""Streaming readers of text files and atomic writers of embeddings and records.

Readers (:func:`open_reader`) turn ``.txt`` (one text a line), ``.jsonl``, ``.csv`` and
``.parquet`` files into :class:`TextChunk` s without holding the file in memory. Every text
gets an id, its 0-based position among the file's records, which the writers store beside
its embedding. Problems are :class:`InputError` s naming the file and the line (or, for
parquet, the row index).

Policy for odd lines:

- ``.txt``: an empty line is an empty text (the tokenizer encodes it as ``[CLS] [SEP]``); a
  line is split on ``\\n`` only, and a trailing ``\\r`` is dropped.
- ``.jsonl``: a blank line holds no record and is skipped; every other line is one object.
- ``.csv``: the first row is the header; an empty field is an empty text; a blank line
  holds no record and is skipped.
- Every format: a missing value, a null or a value that is not text is an error.

Writers write to a hidden temporary file in the output's folder and rename it onto the output
only when the job completes (:meth:`AtomicOutput.commit`); on any error the temporary file is
removed and the output (if it existed before) is left as it was. ``.npy`` output is streamed
into a memory-mapped array whose header is written for the known total, so the total must be
known up front (:meth:`TextReader.count` gives it). :class:`RecordWriter` writes any columns
(ids, labels, scores, vectors) to ``.jsonl`` or ``.parquet``, for every sub-command.

Limits: a process killed with SIGKILL leaves its hidden ``.<name>.*.tmp`` file behind (never a
file under the output's own name); a CSV field longer than the ``csv`` module's field size
limit (131072 characters) is an error.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

DEFAULT_COLUMN = "text"
DEFAULT_CHUNK_SIZE = 2048
INPUT_FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
EMBEDDING_FORMATS = (".npy", ".parquet", ".jsonl")
RECORD_FORMATS = (".parquet", ".jsonl")


class InputError(ValueError):
    """An input file that cannot be read as asked: missing, unknown format or bad content."""


class OutputPathError(ValueError):
    """An output path that cannot be written: unknown format, missing folder, same as input."""


@dataclass
class TextChunk:
    """Consecutive records of an input file: their ids (0-based positions) and texts."""

    ids: list[int]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


class TextReader(ABC):
    """Reads the texts of one file in chunks; :meth:`count` tells how many there are."""

    suffix: str = ""

    def __init__(self, path: str | Path, column: str | None = None):
        self.path = Path(path)
        self.column = column
        self._count: int | None = None
        if not self.path.exists():
            raise InputError(f"input file not found: {self.path}")
        if not self.path.is_file():
            raise InputError(f"input is not a file: {self.path}")

    def count(self) -> int:
        """Number of texts in the file (computed once by a quick pass, then remembered)."""
        if self._count is None:
            self._count = self._count_records()
        return self._count

    def chunks(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[TextChunk]:
        """Yield the texts in file order, ``chunk_size`` at a time (the last may be shorter)."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        ids: list[int] = []
        texts: list[str] = []
        for index, text in enumerate(self._texts()):
            ids.append(index)
            texts.append(text)
            if len(texts) == chunk_size:
                yield TextChunk(ids, texts)
                ids, texts = [], []
        if texts:
            yield TextChunk(ids, texts)

    @abstractmethod
    def _texts(self) -> Iterator[str]:
        """Every text of the file, in order."""

    @abstractmethod
    def _count_records(self) -> int:
        """Count the texts without keeping them."""


def _binary_lines(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line without its ``\\n`` or ``\\r\\n``) for each line."""
    for number, line in enumerate(handle, start=1):
        end = len(line)
        if line.endswith(b"\n"):
            end -= 1
            if line.endswith(b"\r\n"):
                end -= 1
        yield number, line[:end]


def _decode_line(raw: bytes, number: int, path: Path) -> str:
    """UTF-8 text of one line; a byte-order mark on line 1 is dropped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path}: line {number} is not valid UTF-8 ({err.reason} at byte {err.start} "
            f"of the line)"
        ) from None
    if number == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}, not text"


class TxtReader(TextReader):
    """A plain-text file: every line is one text, empty lines included."""

    suffix = ".txt"

    def __init__(self, path: str | Path, column: str | None = None):
        if column is not None:
            raise InputError(f"{path}: a .txt input has one text a line; it takes no column")
        super().__init__(path)

    def _texts(self) -> Iterator[str]:
        with open(self.path, "rb") as handle:
            for number, raw in _binary_lines(handle):
                yield _decode_line(raw, number, self.path)

    def _count_records(self) -> int:
        with open(self.path, "rb") as handle:
            return sum(1 for _ in handle)


class JsonlReader(TextReader):
    """JSON Lines: one object a line; the text is the value under ``column``."""

    suffix = ".jsonl"

    def __init__(self, path: str | Path, column: str | None = None):
        super().__init__(path, column or DEFAULT_COLUMN)
        # Check the first record now, so that a wrong column fails before any work starts.
        texts = self._texts()
        next(texts, None)
        texts.close()

    def _texts(self) -> Iterator[str]:
        with open(self.path, "rb") as handle:
            for number, raw in _binary_lines(handle):
                if not raw.strip():
                    continue
                yield self._text_of(_decode_line(raw, number, self.path), number)

    def _text_of(self, line: str, number: int) -> str:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{self.path}: line {number} is not valid JSON: {err}") from None
        if not isinstance(record, dict):
            raise InputError(
                f"{self.path}: line {number} is a JSON {type(record).__name__}, "
                "not an object"
            )
        if self.column not in record:
            found = ", ".join(repr(key) for key in record) or "none"
            raise InputError(
                f"{self.path}: line {number} has no column {self.column!r} "
                f"(its columns: {found}); choose one with --column"
            )
        value = record[self.column]
        if not isinstance(value, str):
            raise InputError(
                f"{self.path}: line {number}: column {self.column!r} is {_describe(value)}"
            )
        return value

    def _count_records(self) -> int:
        with open(self.path, "rb") as handle:
            return sum(1 for line in handle if line.strip())


class CsvReader(TextReader):
    """Comma-separated values with a header row; the text is the field under ``column``."""

    suffix = ".csv"

    def __init__(self, path: str | Path, column: str | None = None):
        super().__init__(path, column or DEFAULT_COLUMN)
        with open(self.path, "rb") as handle:
            rows = self._rows(handle)
            header = next(rows, None)
        if header is None:
            raise InputError(f"{self.path}: the file is empty; a CSV input needs a header row")
        if self.column not in header[1]:
            found = ", ".join(repr(name) for name in header[1])
            raise InputError(
                f"{self.path}: no column {self.column!r} in the header (its columns: {found}); "
                "choose one with --column"
            )
        self._position = header[1].index(self.column)

    def _rows(self, handle: BinaryIO) -> Iterator[tuple[int, list[str]]]:
        """(line number where the record ends, fields) for each record, header first."""
        lines = (
            _decode_line(raw, number, self.path) + "\n" for number, raw in _binary_lines(handle)
        )
        reader = csv.reader(lines, strict=True)  # an unterminated quote is an error
        try:
            for fields in reader:
                yield reader.line_num, fields
        except csv.Error as err:
            raise InputError(f"{self.path}: line {reader.line_num}: {err}") from None

    def _texts(self) -> Iterator[str]:
        with open(self.path, "rb") as handle:
            rows = self._rows(handle)
            next(rows)
            for number, fields in rows:
                if not fields:
                    continue
                if self._position >= len(fields):
                    raise InputError(
                        f"{self.path}: line {number} has {len(fields)} fields and no value for "
                        f"column {self.column!r} (field {self._position + 1})"
                    )
                yield fields[self._position]

    def _count_records(self) -> int:
        with open(self.path, "rb") as handle:
            return sum(1 for _, fields in self._rows(handle) if fields) - 1


def _is_text_type(arrow_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    string_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or bool(
        string_view(arrow_type)
    )


class ParquetReader(TextReader):
    """A Parquet file read one record batch at a time; the text is the column ``column``."""

    suffix = ".parquet"

    def __init__(self, path: str | Path, column: str | None = None):
        super().__init__(path, column or DEFAULT_COLUMN)
        try:
            schema = pq.read_schema(self.path)
        except (pa.ArrowInvalid, OSError) as err:
            raise InputError(f"{self.path}: not a readable Parquet file: {err}") from None
        if self.column not in schema.names:
            found = ", ".join(repr(name) for name in schema.names)
            raise InputError(
                f"{self.path}: no column {self.column!r} (its columns: {found}); "
                "choose one with --column"
            )
        column_type = schema.field(self.column).type
        if not _is_text_type(column_type):
            raise InputError(
                f"{self.path}: column {self.column!r} has type {column_type}, not text"
            )

    def _texts(self) -> Iterator[str]:
        row = 0
        parquet_file = pq.ParquetFile(self.path)
        for batch in parquet_file.iter_batches(batch_size=DEFAULT_CHUNK_SIZE,
                                               columns=[self.column]):
            for value in batch.column(0).to_pylist():
                if not isinstance(value, str):
                    raise InputError(
                        f"{self.path}: row index {row}: column {self.column!r} is "
                        f"{_describe(value)}"
                    )
                yield value
                row += 1

    def _count_records(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows


READERS: dict[str, type[TextReader]] = {
    reader.suffix: reader for reader in (TxtReader, JsonlReader, CsvReader, ParquetReader)
}


def open_reader(path: str | Path, column: str | None = None) -> TextReader:
    """The reader for ``path``, chosen by its extension; ``column`` for table formats.

    ``column`` defaults to ``text`` for ``.jsonl``, ``.csv`` and ``.parquet`` and must be
    None for ``.txt``. Raises :class:`InputError` for a missing file, an unknown extension or
    (for csv and parquet, whose header is read here) an unknown column.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise InputError(
            f"{path}: unknown input format {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(INPUT_FORMATS)}"
        )
    return READERS[suffix](path, column)


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def check_output_path(
    path: str | Path, formats: Sequence[str], source: str | Path | None = None
) -> Path:
    """Return ``path`` if its extension is one of ``formats``, its folder exists and it is
    not the input file ``source``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in formats:
        raise OutputPathError(
            f"{path}: unknown output format {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(formats)}"
        )
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"{path}: the output folder {folder} does not exist")
    if path.is_dir():
        raise OutputPathError(f"{path}: the output is a folder")
    if source is not None and path.resolve() == Path(source).resolve():
        raise OutputPathError(f"{path}: the output would overwrite the input")
    return path


class AtomicOutput(ABC):
    """An output file written under a temporary name and renamed into place on commit.

    Use as a context manager: a clean exit commits, an exception aborts (the temporary file
    is removed and the output path is not touched).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.temp_path = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.tmp")
        self._done = False
        # Exclusive create: never overwrite anything, and the file gets the usual permissions.
        open(self.temp_path, "xb").close()

    @abstractmethod
    def _finish(self) -> None:
        """Flush and close the temporary file's handles so that it is complete on disk."""

    @abstractmethod
    def _close_quietly(self) -> None:
        """Close handles after an error, without finishing the file."""

    def commit(self) -> Path:
        """Complete the file and rename it onto the output path; returns the path."""
        if self._done:
            raise RuntimeError(f"{self.path}: the writer is already closed")
        try:
            self._finish()
            with open(self.temp_path, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self.temp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        logger.debug("wrote %s", self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; the output path is left as it was."""
        if self._done:
            return
        self._done = True
        try:
            self._close_quietly()
        finally:
            self.temp_path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def vectors_to_arrow(vectors: np.ndarray) -> pa.ListArray:
    """A (rows, dim) array as an Arrow list<float32> array (one list per row)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (rows, dim), got shape {vectors.shape}")
    rows, dim = vectors.shape
    offsets = pa.array(np.arange(0, rows * dim + 1, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def _column_length(values: Any) -> int:
    return values.shape[0] if isinstance(values, np.ndarray) else len(values)


def _to_arrow(values: Any) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return vectors_to_arrow(values)
    return pa.array(values)


def _to_python(values: Any) -> list:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    if isinstance(values, np.ndarray):
        return values.tolist()
    return [value.item() if isinstance(value, np.generic) else value for value in values]


class RecordWriter(AtomicOutput):
    """Writes batches of records, given as columns, to ``.jsonl`` or ``.parquet``.

    ``write({"id": [...], "label": [...], "embedding": array})`` appends one batch: every
    column has one value per record; a 2-D numpy array is one list of floats per record. The
    first batch fixes the columns (and, for Parquet, their types) unless ``schema`` gives them;
    each batch of a Parquet file becomes one row group.
    """

    def __init__(self, path: str | Path, schema: pa.Schema | None = None):
        path = check_output_path(path, RECORD_FORMATS)
        super().__init__(path)
        self.format = path.suffix.lower()
        self.schema = schema
        self.rows_written = 0
        self._names: list[str] | None = list(schema.names) if schema is not None else None
        self._handle = None
        self._parquet: pq.ParquetWriter | None = None
        if self.format == ".jsonl":
            # The handle stays open across write() calls until commit or abort closes it.
            self._handle = open(  # noqa: SIM115
                self.temp_path, "w", encoding="utf-8", newline="\n"
            )

    def write(self, columns: Mapping[str, Any]) -> None:
        """Append one batch of records given as ``{name: values}``."""
        names = list(columns)
        lengths = {name: _column_length(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{self.path}: columns of one batch differ in length: {lengths}")
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise ValueError(f"{self.path}: batch has columns {names}, expected {self._names}")
        if not names or not next(iter(lengths.values())):
            return

        if self.format == ".jsonl":
            self._write_jsonl(columns)
        else:
            self._write_parquet(columns)
        self.rows_written += next(iter(lengths.values()))

    def _write_jsonl(self, columns: Mapping[str, Any]) -> None:
        names = list(columns)
        rows = zip(*(_to_python(values) for values in columns.values()), strict=True)
        lines = (
            json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False) for row in rows
        )
        self._handle.write("\n".join(lines) + "\n")

    def _write_parquet(self, columns: Mapping[str, Any]) -> None:
        table = pa.table({name: _to_arrow(values) for name, values in columns.items()})
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.temp_path, self.schema or table.schema)
        if table.schema != self._parquet.schema:
            table = table.cast(self._parquet.schema)
        self._parquet.write_table(table)

    def _finish(self) -> None:
        if self.format == ".jsonl":
            self._handle.close()
            return
        if self._parquet is None:
            # No batch was written: an empty file still needs a schema.
            schema = self.schema or pa.schema([(name, pa.null()) for name in self._names or []])
            self._parquet = pq.ParquetWriter(self.temp_path, schema)
        self._parquet.close()

    def _close_quietly(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._parquet is not None:
            self._parquet.close()


class NpyEmbeddingWriter(AtomicOutput):
    """Streams (total, dim) float32 rows into a memory-mapped ``.npy`` file.

    The header is written for the known ``total`` when the file is created; rows land at their
    ids. Committing with fewer rows than ``total`` written is an error.
    """

    def __init__(self, path: str | Path, total: int, dim: int):
        path = check_output_path(path, (".npy",))
        super().__init__(path)
        self.total = total
        self.dim = dim
        self.rows_written = 0
        self._array = None
        if total > 0:
            self._array = np.lib.format.open_memmap(
                self.temp_path, mode="w+", dtype=np.float32, shape=(total, dim)
            )

    def write(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` at row ``ids[i]``."""
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(
                f"{self.path}: expected vectors of shape ({len(ids)}, {self.dim}), "
                f"got {vectors.shape}"
            )
        if len(ids) and (min(ids) < 0 or max(ids) >= self.total):
            raise ValueError(
                f"{self.path}: row ids {min(ids)}..{max(ids)} fall outside 0..{self.total - 1}"
            )
        if len(ids):
            self._array[np.asarray(ids)] = vectors
        self.rows_written += len(ids)

    def _finish(self) -> None:
        if self.rows_written != self.total:
            raise RuntimeError(
                f"{self.path}: {self.rows_written} rows written but the file was sized for "
                f"{self.total}; the input changed while it was read?"
            )
        if self._array is None:
            # Through a handle: given a path not ending in .npy, np.save would add the suffix.
            with open(self.temp_path, "wb") as handle:
                np.save(handle, np.zeros((0, self.dim), dtype=np.float32))
            return
        self._array.flush()
        self._array = None

    def _close_quietly(self) -> None:
        self._array = None


class RecordEmbeddingWriter:
    """Embeddings as ``{"id", "embedding"}`` records in ``.jsonl`` or ``.parquet``."""

    def __init__(self, path: str | Path, dim: int):
        schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32()))])
        self._records = RecordWriter(path, schema)
        self.path = self._records.path
        self.dim = dim

    @property
    def rows_written(self) -> int:
        """Rows written so far."""
        return self._records.rows_written

    def write(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Append records ``(ids[i], vectors[i])``."""
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(
                f"{self.path}: expected vectors of shape ({len(ids)}, {self.dim}), "
                f"got {vectors.shape}"
            )
        ids = np.asarray(ids, dtype=np.int64)
        self._records.write({"id": ids, "embedding": np.asarray(vectors, dtype=np.float32)})

    def commit(self) -> Path:
        """Complete the file and rename it onto the output path."""
        return self._records.commit()

    def abort(self) -> None:
        """Drop the temporary file."""
        self._records.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._records.__exit__(exc_type, exc, tb)


def open_embedding_writer(path: str | Path, total: int, dim: int):
    """The embedding writer for ``path`` by extension: ``.npy``, ``.parquet`` or ``.jsonl``.

    ``total``, the number of rows to come, sizes a ``.npy`` file (the record formats need no
    total). Every writer has ``write(ids, vectors)``, ``commit()`` and ``abort()``, and works
    as a context manager that commits on success and aborts on error.
    """
    path = check_output_path(path, EMBEDDING_FORMATS)
    if path.suffix.lower() == ".npy":
        return NpyEmbeddingWriter(path, total, dim)
    return RecordEmbeddingWriter(path, dim)
