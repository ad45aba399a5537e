"""The embed API: the built-in model against sentence-transformers, batch independence,
input order, and batching under a token budget."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import distilbert
from distilbert.engine.embedder import length_batches
from distilbert.engine.pooling import POOLING_MODES

EMBED_ATOL = 1e-5
ODD_TEXTS = ["", "   ", "Crème brûlée, 我爱 NLP \u200b!", "word"]


@pytest.fixture(scope="module")
def builtin_embedder():
    """The built-in model loaded the way users load it: no path."""
    return distilbert.load(device="cpu")


@pytest.fixture(scope="module")
def tiny_embedder(tiny_distilbert_folder):
    """An embedder over the tiny random DistilBERT and the built-in tokenizer."""
    return distilbert.load(tiny_distilbert_folder, device="cpu")


@pytest.fixture(scope="module")
def long_text(english_sentences) -> str:
    """Twenty sentences in one text: over 256 tokens, under 512."""
    return " ".join(english_sentences[:20])


def assert_rows_close(ours: np.ndarray, reference: np.ndarray, atol: float = EMBED_ATOL):
    """float32 rows within ``atol`` of the reference; on failure name the rows."""
    assert ours.shape == reference.shape and ours.dtype == np.float32
    diff = np.abs(ours.astype(np.float64) - reference.astype(np.float64)).max(axis=1)
    bad = np.flatnonzero(diff > atol)
    assert not len(bad), f"rows {bad.tolist()} differ by up to {diff.max():.3g} > {atol:g}"


def test_builtin_model_matches_sentence_transformers(builtin_embedder, builtin_model_folder,
                                                     english_sentences, long_text):
    from sentence_transformers import SentenceTransformer

    reference_model = SentenceTransformer(str(builtin_model_folder), device="cpu")
    texts = english_sentences + [long_text] + ODD_TEXTS
    assert len(english_sentences) >= 50
    assert len(builtin_embedder.tokenizer.tokenize(long_text)) > 300, "must exceed 256 tokens"

    ours = builtin_embedder.embed(texts)
    reference = reference_model.encode(texts, batch_size=16, convert_to_numpy=True)

    assert reference_model.max_seq_length == 256
    assert_rows_close(ours, reference)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_max_length_override_matches_sentence_transformers(builtin_embedder,
                                                           builtin_model_folder, long_text):
    from sentence_transformers import SentenceTransformer

    reference_model = SentenceTransformer(str(builtin_model_folder), device="cpu")
    reference_model.max_seq_length = 16

    ours = builtin_embedder.embed([long_text, "a short one"], max_length=16)

    assert_rows_close(ours, reference_model.encode([long_text, "a short one"]))


def test_builtin_settings_come_from_the_folder(builtin_embedder):
    assert builtin_embedder.pooling == "mean"
    assert builtin_embedder.normalize is True
    assert builtin_embedder.max_length == 256
    assert builtin_embedder.dim == 384
    assert builtin_embedder.device == torch.device("cpu")


@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_tiny_distilbert_matches_transformers_pooled_by_hand(
    pooling, tiny_embedder, tiny_distilbert_hf, tiny_distilbert_folder, english_sentences
):
    from transformers import AutoTokenizer

    texts = english_sentences[:12] + ODD_TEXTS
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_distilbert_folder)

    ours = tiny_embedder.embed(texts, pooling=pooling, normalize=False)

    reference = []
    with torch.no_grad():
        for text in texts:
            ids = hf_tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
            states = tiny_distilbert_hf(**ids).last_hidden_state[0]
            row = {"cls": states[0], "mean": states.mean(0), "max": states.max(0).values}
            reference.append(row[pooling].numpy())
    assert_rows_close(ours, np.stack(reference))


@pytest.mark.parametrize(
    "which, pooling, normalize",
    [("builtin", "mean", True), ("tiny", "cls", False), ("tiny", "mean", False),
     ("tiny", "max", True)],
)
def test_embedding_is_the_same_alone_and_in_any_batch(
    which, pooling, normalize, builtin_embedder, tiny_embedder, english_sentences, long_text
):
    embedder = builtin_embedder if which == "builtin" else tiny_embedder
    texts = english_sentences[:14] + [long_text] + ODD_TEXTS
    settings = {"pooling": pooling, "normalize": normalize}

    alone = np.stack([embedder.embed(text, **settings) for text in texts])

    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    shuffled = [texts[i] for i in order]
    # Alone is batch size 1; these mix lengths, sizes and budgets (one text over budget).
    for batch_size, token_budget in [(64, 8192), (5, 8192), (32, 200), (3, 64)]:
        together = embedder.embed(shuffled, batch_size=batch_size, token_budget=token_budget,
                                  **settings)
        assert_rows_close(together, alone[order])


def test_input_order_is_kept(tiny_embedder, english_sentences):
    texts = sorted(english_sentences[:16], key=len)

    forward = tiny_embedder.embed(texts, batch_size=4)
    backward = tiny_embedder.embed(texts[::-1], batch_size=4)

    assert_rows_close(backward, forward[::-1])
    assert len({row.tobytes() for row in forward}) == len(texts)


def test_single_text_and_empty_list(tiny_embedder):
    assert tiny_embedder.embed("one text").shape == (32,)
    empty = tiny_embedder.embed([])
    assert empty.shape == (0, 32) and empty.dtype == np.float32


def test_on_batch_reports_every_text(tiny_embedder, english_sentences):
    seen = []

    tiny_embedder.embed(english_sentences[:23], batch_size=5, on_batch=seen.append)

    assert sum(seen) == 23
    assert len(seen) == 5 and max(seen) == 5


def test_float64_model_gives_float32_rows(tiny_distilbert_folder, tiny_embedder,
                                          english_sentences):
    wide = distilbert.load(tiny_distilbert_folder, device="cpu", dtype=torch.float64)

    rows = wide.embed(english_sentences[:4])

    assert rows.dtype == np.float32
    assert_rows_close(rows, tiny_embedder.embed(english_sentences[:4]))


# The int8 mode's accuracy as README states it: cosine per text against float32.
INT8_MIN_COSINE = 0.97  # the worst seen are texts of one to three words
INT8_MEDIAN_COSINE = 0.995
SHORT_TEXTS = ["Yes.", "No", "ok", "What?", "Thanks a lot", "I love it", ""]


def test_int8_embeddings_stay_near_float32(builtin_embedder, english_sentences):
    quantized = distilbert.load(device="cpu", int8=True)
    texts = english_sentences + SHORT_TEXTS

    got = quantized.embed(texts)

    assert quantized.model.int8 and got.dtype == np.float32
    cosine = (got.astype(np.float64) * builtin_embedder.embed(texts)).sum(axis=1)
    assert cosine.min() >= INT8_MIN_COSINE, f"worst text {cosine.argmin()}: {cosine.min():.4f}"
    assert np.median(cosine) >= INT8_MEDIAN_COSINE


def test_int8_needs_float32(tiny_distilbert_folder):
    with pytest.raises(ValueError, match="int8 mode runs in float32 only, not torch.float16"):
        distilbert.load(tiny_distilbert_folder, device="cpu", dtype=torch.float16, int8=True)


def test_length_batches_respect_both_limits():
    generator = random.Random(0)
    for _ in range(200):
        lengths = sorted((generator.randint(1, 300) for _ in range(generator.randint(1, 60))),
                         reverse=True)
        batch_size, budget = generator.randint(1, 16), generator.randint(50, 2000)

        batches = list(length_batches(lengths, batch_size, budget))

        assert [i for batch in batches for i in batch] == list(range(len(lengths)))
        for batch in batches:
            assert batch == list(range(batch[0], batch[-1] + 1))
            assert len(batch) <= batch_size
            assert len(batch) == 1 or len(batch) * lengths[batch[0]] <= budget


def test_bad_arguments_are_named(tiny_embedder, tiny_distilbert_folder):
    with pytest.raises(ValueError, match="unknown pooling 'sum'"):
        tiny_embedder.embed("text", pooling="sum")
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        tiny_embedder.embed("text", batch_size=0)
    with pytest.raises(ValueError, match="unknown pooling 'first'"):
        distilbert.load(tiny_distilbert_folder, device="cpu", pooling="first")
