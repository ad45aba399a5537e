"""The demo's corpus and neighbour search (the embed job itself is covered in test_cli.py)."""

from __future__ import annotations

import numpy as np

from distilbert import demo


def test_corpus_is_a_few_thousand_distinct_prose_sentences():
    sentences = demo.corpus_sentences()

    assert 2000 <= len(sentences) <= demo.CORPUS_LIMIT
    assert len(set(sentences)) == len(sentences)
    assert all(demo.is_sentence(s) for s in sentences)
    assert not any("::=" in s or ">>>" in s or "\n" in s for s in sentences)


def test_corpus_limit_is_respected():
    assert demo.corpus_sentences(limit=10) == demo.corpus_sentences()[:10]


def test_prose_paragraphs_drop_code_grammar_and_headings():
    topic = (
        "The \"if\" statement\n******************\n\n"
        "   if_stmt ::= \"if\" expression \":\" suite\n\n"
        "It selects exactly one of the suites by evalu-\nating the expressions.\n\n"
        "   >>> print(1)\n   1\n"
    )

    assert list(demo.prose_paragraphs(topic)) == [
        "It selects exactly one of the suites by evalu-ating the expressions."
    ]


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 8)).astype(np.float32)

    found = demo.nearest_neighbours(corpus, queries, k=4)

    for query, neighbours in zip(queries, found):
        cosine = [
            float(query @ row / (np.linalg.norm(query) * np.linalg.norm(row))) for row in corpus
        ]
        expected = sorted(range(len(corpus)), key=lambda i: -cosine[i])[:4]
        assert [index for index, _ in neighbours] == expected
        np.testing.assert_allclose([s for _, s in neighbours], [cosine[i] for i in expected],
                                   rtol=0, atol=1e-5)
