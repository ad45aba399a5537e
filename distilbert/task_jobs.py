"""Whole-file jobs of the task sub-commands: classify, tag, answer and fill-mask.

Texts stream from a reader of :mod:`distilbert.io` in chunks; each chunk goes through a task
helper of :mod:`distilbert.engine.tasks`, and its results are written as records (an ``id``,
the text's 0-based position in the file, and the task's columns) to ``.jsonl`` or
``.parquet``, under a fixed schema. As with ``embed``, the output appears only when every text
is done; a text the task refuses stops the job with an error naming its record.

Columns: classify ``label``, ``score``, ``scores`` (label -> score); tag ``entities`` (a list
of entities); answer ``answer``, ``score``, ``start``, ``end`` (the best span); fill-mask
``predictions`` (one list of predictions per mask, even for a single mask).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from distilbert import io
from distilbert.engine.tasks import Classifier, MaskFiller, QuestionAnswerer, Tagger

logger = logging.getLogger(__name__)

DEFAULT_TASK_CHUNK_SIZE = 256
_ENTITY_FIELDS = [("score", pa.float64()), ("word", pa.string()), ("start", pa.int64()),
                  ("end", pa.int64())]
_PREDICTION = pa.struct([("score", pa.float64()), ("token", pa.int64()),
                         ("token_str", pa.string()), ("sequence", pa.string())])


@dataclass
class RecordSummary:
    """What a task job did: records written, output path and seconds taken."""

    rows: int
    output: Path
    seconds: float

    @property
    def texts_per_second(self) -> float:
        """Throughput of the whole job (reading, running the task and writing)."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def write_records(
    readers: Sequence[io.TextReader],
    output: str | Path,
    compute: Callable[..., dict[str, list]],
    schema: pa.Schema,
    chunk_size: int = DEFAULT_TASK_CHUNK_SIZE,
    progress: Callable[[int], None] | None = None,
) -> RecordSummary:
    """Write ``compute(texts_of_reader_1, ...)`` columns for every chunk, with an ``id`` column.

    ``readers`` read columns of the same file (e.g. questions and contexts) in lockstep.
    A ValueError from ``compute`` becomes an :class:`~distilbert.io.InputError` naming the
    record it came from.
    """
    source = readers[0].path
    output = io.check_output_path(output, io.RECORD_FORMATS, source=source)
    schema = pa.schema([("id", pa.int64())] + list(schema))
    start = time.perf_counter()
    rows = 0
    with io.RecordWriter(output, schema) as writer:
        for chunks in zip(*(reader.chunks(chunk_size) for reader in readers), strict=True):
            texts = [chunk.texts for chunk in chunks]
            ids = chunks[0].ids
            try:
                columns = compute(*texts)
            except ValueError as err:
                raise io.InputError(f"{source}: {_locate(compute, texts, ids, err)}") from err
            columns = {"id": ids, **columns}
            writer.write({
                name: pa.array(values, type=schema.field(name).type)
                for name, values in columns.items()
            })
            rows += len(ids)
            if progress is not None:
                progress(len(ids))
    seconds = time.perf_counter() - start
    logger.info("wrote %d records to %s in %.1f s", rows, output, seconds)
    return RecordSummary(rows=rows, output=output, seconds=seconds)


def _locate(compute, texts, ids, err) -> str:
    """Name the record of a chunk that fails alone (the chunk's error if none does)."""
    for position, record in enumerate(ids):
        try:
            compute(*(column[position:position + 1] for column in texts))
        except ValueError as single:
            return f"record {record}: {single}"
    return f"records {ids[0]} to {ids[-1]}: {err}"


def open_readers(path: str | Path, column: str | None = None,
                 second_column: str | None = None) -> list[io.TextReader]:
    """A reader of ``column`` (``None``: the format's default), and one of ``second_column``
    of the same file when given (sentence pairs, questions)."""
    readers = [io.open_reader(path, column)]
    if second_column is not None:
        readers.append(io.open_reader(path, second_column))
    return readers


def classify_file(readers, output, classifier: Classifier, *, batch_size: int = 32,
                  max_length: int | None = None, **job) -> RecordSummary:
    """Classify each text (or text pair, with a second reader); see :func:`write_records`."""
    names = [classifier.model.id2label[i] for i in range(classifier.model.num_labels)]
    schema = pa.schema([
        ("label", pa.string()), ("score", pa.float64()),
        ("scores", pa.struct([(name, pa.float64()) for name in names])),
    ])

    def compute(texts, pairs=None):
        results = classifier.classify(texts, pairs, batch_size=batch_size,
                                      max_length=max_length)
        return {key: [result[key] for result in results] for key in ("label", "score", "scores")}

    return write_records(readers, output, compute, schema, **job)


def tag_file(readers, output, tagger: Tagger, *, aggregation: str = "none",
             stride: int | None = None, batch_size: int = 32, max_length: int | None = None,
             **job) -> RecordSummary:
    """Tag each text's entities; see :func:`write_records`."""
    if aggregation == "none":
        fields = [("entity", pa.string()), ("index", pa.int64())] + _ENTITY_FIELDS
    else:
        fields = [("entity_group", pa.string())] + _ENTITY_FIELDS
    schema = pa.schema([("entities", pa.list_(pa.struct(fields)))])

    def compute(texts):
        return {"entities": tagger.tag(texts, aggregation=aggregation, stride=stride,
                                       batch_size=batch_size, max_length=max_length)}

    return write_records(readers, output, compute, schema, **job)


def answer_file(readers, output, answerer: QuestionAnswerer, *, question: str | None = None,
                stride: int | None = None, max_answer_length: int = 15,
                batch_size: int = 32, max_length: int | None = None, **job) -> RecordSummary:
    """Answer a question about each context: ``question`` for all, or a second reader's.

    ``readers`` are (contexts,) with ``question``, or (contexts, questions).
    """
    if (question is None) != (len(readers) == 2):
        raise ValueError("give either one question for every context or a question column")
    schema = pa.schema([("answer", pa.string()), ("score", pa.float64()),
                        ("start", pa.int64()), ("end", pa.int64())])

    def compute(contexts, questions=None):
        questions = questions if questions is not None else [question] * len(contexts)
        answers = answerer.answer(questions, contexts, stride=stride, batch_size=batch_size,
                                  max_answer_length=max_answer_length, max_length=max_length)
        return {key: [answer[key] for answer in answers] for key in schema.names}

    return write_records(readers, output, compute, schema, **job)


def fill_mask_file(readers, output, filler: MaskFiller, *, top_k: int = 5,
                   batch_size: int = 32, max_length: int | None = None,
                   **job) -> RecordSummary:
    """Predict each mask of each text; see :func:`write_records`."""
    schema = pa.schema([("predictions", pa.list_(pa.list_(_PREDICTION)))])

    def compute(texts):
        results = filler.fill_mask(texts, top_k, batch_size=batch_size, max_length=max_length)
        # One mask gives a flat list of predictions; store a list per mask in every case.
        return {"predictions": [r if isinstance(r[0], list) else [r] for r in results]}

    return write_records(readers, output, compute, schema, **job)
