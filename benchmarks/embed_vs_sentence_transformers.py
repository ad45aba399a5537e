"""Sentences per second of this engine and of sentence-transformers on the same real text.

Both embed the same sentences from Python's help topics with the built-in model
(all-MiniLM-L6-v2), in one process, with the same thread count, their rounds interleaved.
Prints both rates, their ratio and the largest difference between the two sets of
embeddings. The full suite (more providers and workloads) is ``distilbert bench``.

    .venv/bin/python benchmarks/embed_vs_sentence_transformers.py [--sentences 2000]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

from distilbert.bench import run_suite


def main(argv: list[str] | None = None) -> int:
    """Run the embed workload for the two providers and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2000, help="corpus size (>= 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as out:
        result = run_suite(workloads=("embed",), corpus_size=args.sentences,
                           providers=("distilbert", "sentence-transformers"),
                           rounds=args.rounds, out_dir=out)
    rows = {row.provider: row for row in result["rows"]}
    ours, theirs = rows["distilbert"], rows["sentence-transformers"]
    print(f"{ours.batch} sentences, {result['context']['threads']} threads, "
          f"{result['context']['cpu']}")
    print(f"distilbert:            {ours.items_per_s:8.1f} sentences/s")
    print(f"sentence-transformers: {theirs.items_per_s:8.1f} sentences/s")
    print(f"ratio (per round, median): {theirs.ratio_vs_ours:.2f}x")
    agreement = result["agreement"]["sentence-transformers"]
    print(f"max abs difference of embeddings: {agreement['max_abs']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
