"""``make demo``: the main job on a real English corpus that ships with Python.

The corpus is the prose of the help topics in ``pydoc_data.topics`` (the text ``help()``
shows for keywords and language topics), split into sentences and deduplicated. The demo
writes it to ``demo_out/corpus.txt``, embeds it with ``distilbert embed`` (the same code path
as the command line), then prints the output's shape, the throughput and the nearest
neighbours of a few questions.
"""

from __future__ import annotations

import re
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

import distilbert
from distilbert import cli

OUT_DIR = Path("demo_out")
CORPUS_LIMIT = 3000
QUERIES = (
    "How do I handle an error raised inside a block of code?",
    "What happens when a function is called with default arguments?",
    "Dictionaries map keys to values.",
    "How can I format a number as a string with two decimals?",
)

# A sentence ends at . ! ? or ) and the next one starts with a capital, a quote or a bracket;
# "e.g." and "i.e." end no sentence.
SENTENCE_BREAK = re.compile(r"(?<=[.!?)])(?<!e\.g\.)(?<!i\.e\.)\s+(?=[\"“(A-Z])")
HEADING_UNDERLINE = set("*=-~^")


def prose_paragraphs(topic: str) -> Iterator[str]:
    """Paragraphs of one help topic joined into single lines, without code or grammar."""
    for raw_block in re.split(r"\n\s*\n", topic):
        block = textwrap.dedent(raw_block).strip("\n")
        if not block or "::=" in block or ">>>" in block:
            continue
        lines = block.split("\n")
        if set(lines[-1].strip()) <= HEADING_UNDERLINE:
            continue
        # A line ending in a hyphen was broken inside a word ("left-" / "hand side").
        paragraph = re.sub(r"-\n", "-", "\n".join(line.strip() for line in lines))
        paragraph = paragraph.replace("\n", " ")
        yield re.sub(r"^[*-] ", "", paragraph)


def is_sentence(text: str) -> bool:
    """A full English sentence of a useful length, not a code fragment."""
    if not 30 <= len(text) <= 400 or not text.endswith("."):
        return False
    if len(text.split()) < 5:
        return False
    letters = sum(char.isalpha() or char == " " for char in text)
    return letters >= 0.75 * len(text)


def corpus_sentences(limit: int = CORPUS_LIMIT) -> list[str]:
    """Up to ``limit`` distinct sentences from Python's help topics, in topic order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:
        raise RuntimeError(
            "this Python has no pydoc_data.topics (some distributions strip it); "
            "install the full standard library to run the demo"
        ) from err

    seen: set[str] = set()
    sentences: list[str] = []
    for name in sorted(topics):
        for paragraph in prose_paragraphs(topics[name]):
            for piece in SENTENCE_BREAK.split(paragraph):
                sentence = piece.strip()
                if sentence in seen or not is_sentence(sentence):
                    continue
                seen.add(sentence)
                sentences.append(sentence)
                if len(sentences) == limit:
                    return sentences
    return sentences


def write_corpus(sentences: Sequence[str], path: Path) -> Path:
    """One sentence a line, UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(sentence + "\n" for sentence in sentences), encoding="utf-8")
    return path


def run_embed_job(corpus: Path, output: Path) -> float:
    """``distilbert embed corpus -o output`` through the CLI; returns the wall time in seconds."""
    start = time.perf_counter()
    status = cli.main(["embed", str(corpus), "-o", str(output)])
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"distilbert embed exited with status {status}")
    return seconds


def nearest_neighbours(
    corpus_vectors: np.ndarray, query_vectors: np.ndarray, k: int = 3
) -> list[list[tuple[int, float]]]:
    """For each query, the ``k`` corpus rows of highest cosine similarity, best first."""
    corpus_unit = corpus_vectors / np.linalg.norm(corpus_vectors, axis=1, keepdims=True)
    query_unit = query_vectors / np.linalg.norm(query_vectors, axis=1, keepdims=True)
    scores = query_unit @ corpus_unit.T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(int(i), float(row[i])) for i in top] for row, top in zip(scores, best, strict=True)]


def main() -> int:
    """Build the corpus, embed it, print what came out."""
    sentences = corpus_sentences()
    corpus = write_corpus(sentences, OUT_DIR / "corpus.txt")
    output = OUT_DIR / "embeddings.npy"
    print(f"corpus: {len(sentences)} sentences from Python's help topics -> {corpus}")
    print(f"$ distilbert embed {corpus} -o {output}")
    sys.stdout.flush()

    seconds = run_embed_job(corpus, output)
    vectors = np.load(output)
    print(f"output: {output}, shape {vectors.shape}, dtype {vectors.dtype}")
    print(
        f"end to end: {len(vectors)} texts in {seconds:.1f} s, "
        f"{len(vectors) / seconds:.0f} texts/s (model loading and file I/O included)"
    )

    query_vectors = distilbert.load().embed(list(QUERIES))
    for query, neighbours in zip(QUERIES, nearest_neighbours(vectors, query_vectors), strict=True):
        print(f"\nnearest to: {query}")
        for index, score in neighbours:
            print(f"  {score:.3f}  {sentences[index]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
