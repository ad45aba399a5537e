"""Whole-file jobs: stream a file's texts through the engine into an output file.

The reader yields chunks of texts, the embedder sorts each chunk by length into batches and
returns vectors in input order, and the writer stores them under their ids. The output
appears under its own name only when every text has been embedded; a bad line stops the
job with an error naming it and leaves no output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distilbert import io
from distilbert.engine.embedder import Embedder

logger = logging.getLogger(__name__)


@dataclass
class EmbedSummary:
    """What an embed job did: rows written, embedding width, output path and seconds taken."""

    rows: int
    dim: int
    output: Path
    seconds: float

    @property
    def texts_per_second(self) -> float:
        """Throughput of the whole job (reading, embedding and writing)."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def embed_file(
    source: str | Path | io.TextReader,
    output: str | Path,
    embedder: Embedder,
    column: str | None = None,
    batch_size: int = 64,
    chunk_size: int = io.DEFAULT_CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> EmbedSummary:
    """Embed every text of ``source`` and write the vectors to ``output``.

    ``source`` is a path (its reader is chosen by extension, ``column`` names the text field)
    or an open :class:`~distilbert.io.TextReader`. Pooling, normalisation and max length are
    the embedder's own settings. ``progress(n)`` is called after each batch of ``n`` texts.
    The output format follows ``output``'s extension (``.npy``, ``.parquet``, ``.jsonl``).
    """
    reader = source if isinstance(source, io.TextReader) else io.open_reader(source, column)
    output = io.check_output_path(output, io.EMBEDDING_FORMATS, source=reader.path)

    start = time.perf_counter()
    total = reader.count()
    logger.info("embedding %d texts from %s into %s", total, reader.path, output)
    with io.open_embedding_writer(output, total, embedder.dim) as writer:
        for chunk in reader.chunks(chunk_size):
            vectors = embedder.embed(chunk.texts, batch_size=batch_size, on_batch=progress)
            writer.write(chunk.ids, vectors)
    seconds = time.perf_counter() - start
    return EmbedSummary(rows=total, dim=embedder.dim, output=output, seconds=seconds)
