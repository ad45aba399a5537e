"""Task helpers against Hugging Face's pipelines on the same random checkpoints.

The checkpoints are tiny random models with the built-in model's tokenizer copied in, so
transformers' pipelines load the very same folders. transformers 5 removed the
question-answering pipeline; its reference here is assembled from transformers' own parts
(fast tokenizer windows, the model, ``select_starts_ends`` span decoding, word alignment
through the tokenizer's ``word_to_chars``), as that pipeline did.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

from distilbert.engine.tasks import (
    AGGREGATIONS,
    Classifier,
    MaskFiller,
    QuestionAnswerer,
    Tagger,
    best_spans,
    load_task,
)

SCORE_ATOL = 1e-5
LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "MISC"}
TRICKY_TEXTS = [
    "Zoë Saldaña flew from São Paulo to Zürich with Ångström.",
    "Cafe\u0301s in Mu\u0308nchen serve cre\u0300me bru\u0302le\u0301e.",
    "zero\u200bwidth\u200d joiners\ufeff and soft\u00adhyphens stay put",
    "Literal special tokens: [SEP] then [CLS] and [MASK] or [PAD].",
    "Emoji 🙂 and 漢字 mixed with a flibbertigibbet.",
    "   leading and trailing spaces   ",
]
# Texts where word boundaries read from token lengths (Hugging Face) and from word ids (us)
# agree: no decomposed accents and no deleted characters inside a word.
PIPELINE_TEXTS = [
    "Ada Lovelace met Charles Babbage in London in 1833.",
    "Zoë Saldaña flew from São Paulo to Zürich with Ångström.",
    "Literal special tokens: [SEP] then [CLS] and [MASK] or [PAD].",
    "Emoji 🙂 and 漢字 mixed with a flibbertigibbet.",
    "The unbelievably overcomplicated antidisestablishmentarianism debate.",
]


def build_folder(name, config, randomize, hf_checkpoint, seed):
    """A random transformers head saved with the built-in tokenizer; returns (model, folder)."""
    import transformers

    torch.manual_seed(seed)
    hf_model = randomize(getattr(transformers, name)(config), seed=seed)
    return hf_model, hf_checkpoint(hf_model, "safetensors")


def hf_pipeline(task, folder, **options):
    """A transformers pipeline on CPU for a checkpoint folder."""
    from transformers import pipeline

    return pipeline(task, model=str(folder), device="cpu", **options)


def assert_spans_are_substrings(text, entities):
    """Each entity's ``word`` is exactly the text between its offsets."""
    for entity in entities:
        assert 0 <= entity["start"] < entity["end"] <= len(text), entity
        assert entity["word"] == text[entity["start"]:entity["end"]], entity


# --- classification -----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[None, "multi_label_classification", "regression"])
def classification_folder(request, make_tiny_distilbert_config, randomize_weights,
                          hf_checkpoint):
    problem_type = request.param
    labels = {0: "score"} if problem_type == "regression" else {0: "neg", 1: "neu", 2: "pos"}
    config = make_tiny_distilbert_config(
        id2label=labels, label2id={v: k for k, v in labels.items()}, problem_type=problem_type
    )
    _, folder = build_folder("DistilBertForSequenceClassification", config, randomize_weights,
                             hf_checkpoint, seed=31)
    return folder


def test_classify_matches_text_classification_pipeline(classification_folder,
                                                       english_sentences):
    texts = english_sentences[:6] + TRICKY_TEXTS
    classifier = Classifier.from_pretrained(classification_folder, device="cpu")
    ours = classifier.classify(texts, batch_size=4)
    reference = hf_pipeline("text-classification", classification_folder, top_k=None)(texts)
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine["label"] == theirs[0]["label"]
        assert mine["score"] == pytest.approx(theirs[0]["score"], abs=SCORE_ATOL)
        assert set(mine["scores"]) == {entry["label"] for entry in theirs}
        for entry in theirs:
            assert mine["scores"][entry["label"]] == pytest.approx(entry["score"], abs=SCORE_ATOL)


def test_classify_pairs_and_single_text(classification_folder):
    classifier = Classifier.from_pretrained(classification_folder, device="cpu")
    premise, hypothesis = "A man plays a guitar on stage.", "Someone is making music."
    ours = classifier.classify(premise, hypothesis)
    assert isinstance(ours, dict)
    theirs = hf_pipeline("text-classification", classification_folder, top_k=None)(
        {"text": premise, "text_pair": hypothesis}
    )
    assert ours["label"] == theirs[0]["label"]
    for entry in theirs:
        assert ours["scores"][entry["label"]] == pytest.approx(entry["score"], abs=SCORE_ATOL)
    assert classifier.classify([]) == []


# --- token classification -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tagging_folder(make_tiny_distilbert_config, randomize_weights, hf_checkpoint):
    config = make_tiny_distilbert_config(id2label=LABELS,
                                         label2id={v: k for k, v in LABELS.items()})
    _, folder = build_folder("DistilBertForTokenClassification", config, randomize_weights,
                             hf_checkpoint, seed=41)
    return folder


def assert_entities_match(ours, theirs, text):
    """Same entities, labels, offsets and token indices; scores within SCORE_ATOL."""
    assert_spans_are_substrings(text, ours)
    assert len(ours) == len(theirs), (ours, theirs)
    for mine, reference in zip(ours, theirs):
        for key in ("entity", "entity_group", "start", "end", "index"):
            assert mine.get(key) == reference.get(key), (key, mine, reference)
        assert mine["score"] == pytest.approx(float(reference["score"]), abs=SCORE_ATOL)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_tag_matches_token_classification_pipeline(aggregation, tagging_folder,
                                                   english_sentences):
    texts = english_sentences[:4] + PIPELINE_TEXTS
    tagger = Tagger.from_pretrained(tagging_folder, device="cpu")
    ours = tagger.tag(texts, aggregation=aggregation, batch_size=3)
    reference = hf_pipeline("token-classification", tagging_folder,
                            aggregation_strategy=aggregation)
    for text, entities in zip(texts, ours, strict=True):
        assert_entities_match(entities, reference(text), text)
    assert any(entities for entities in ours), "random weights tagged nothing: weak test"


@pytest.mark.parametrize("aggregation", ["simple", "first", "max", "average"])
def test_tag_windows_match_pipeline_with_stride(aggregation, tagging_folder,
                                                english_sentences):
    from transformers import AutoTokenizer

    text = " ".join(english_sentences[10:13])
    tokenizer = AutoTokenizer.from_pretrained(str(tagging_folder), model_max_length=24)
    reference = hf_pipeline("token-classification", tagging_folder, tokenizer=tokenizer,
                            aggregation_strategy=aggregation)(text, stride=6)
    tagger = Tagger.from_pretrained(tagging_folder, device="cpu")
    ours = tagger.tag(text, aggregation=aggregation, max_length=24, stride=6)
    assert len(tagger.tokenizer.tokenize(text)) > 3 * 22, "text too short to need windows"
    assert_entities_match(ours, reference, text)


def test_tag_spans_are_substrings_of_tricky_texts(tagging_folder):
    tagger = Tagger.from_pretrained(tagging_folder, device="cpu")
    for aggregation in AGGREGATIONS:
        for text, entities in zip(TRICKY_TEXTS, tagger.tag(TRICKY_TEXTS,
                                                           aggregation=aggregation)):
            assert_spans_are_substrings(text, entities)
    # Decomposed accents stay inside their words: word-level entities start and end on
    # word boundaries of the caller's string.
    text = TRICKY_TEXTS[1]
    words = [(m.start(), m.end()) for m in re.finditer(r"[^\s.]+|\.", text)]
    for entity in tagger.tag(text, aggregation="first", ignore_labels=()):
        assert entity["start"] in {start for start, _ in words}, entity
        assert entity["end"] in {end for _, end in words}, entity
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        tagger.tag("x", aggregation="mean")


# --- question answering -------------------------------------------------------------------


def brute_force_spans(start, end, allowed, max_answer_length, top_k):
    """Every valid (start, end) scored start*end, best first."""
    spans = [
        (s, e, start[s] * end[e])
        for s, e in itertools.product(range(len(start)), repeat=2)
        if allowed[s] and allowed[e] and s <= e < s + max_answer_length
    ]
    return sorted(spans, key=lambda span: -span[2])[:top_k]


@pytest.mark.parametrize("seed", range(6))
def test_best_spans_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(5, 60))
    start, end = rng.random(length), rng.random(length)
    allowed = np.zeros(length, dtype=bool)
    first = int(rng.integers(1, length - 2))
    allowed[first:int(rng.integers(first + 1, length))] = True
    allowed[rng.integers(0, length, 3)] = False  # holes, like padding inside a window
    for max_answer_length, top_k in [(1, 1), (4, 3), (15, 1), (length, 20)]:
        ours = best_spans(start, end, allowed, max_answer_length, top_k)
        expected = brute_force_spans(start, end, allowed, max_answer_length, top_k)
        assert [(s, e) for s, e, _ in ours] == [(s, e) for s, e, _ in expected]
        assert np.allclose([x for *_, x in ours], [x for *_, x in expected])
        for s, e, _ in ours:
            assert allowed[s] and allowed[e] and s <= e < s + max_answer_length


def test_best_spans_edge_cases():
    probs = np.full(6, 0.1)
    assert best_spans(probs, probs, np.zeros(6, bool), 3) == []
    assert len(best_spans(probs, probs, np.array([0, 1, 1, 0, 0, 0], bool), 5, 10)) == 3
    with pytest.raises(ValueError, match="max_answer_length"):
        best_spans(probs, probs, np.ones(6, bool), 0)
    with pytest.raises(ValueError, match="top_k"):
        best_spans(probs, probs, np.ones(6, bool), 3, top_k=0)


@pytest.fixture(scope="module")
def qa_model(make_tiny_distilbert_config, randomize_weights, hf_checkpoint):
    return build_folder("DistilBertForQuestionAnswering", make_tiny_distilbert_config(),
                        randomize_weights, hf_checkpoint, seed=51)


def reference_answers(hf_model, folder, question, context, *, max_length, stride, top_k=1,
                      max_answer_length=15, handle_impossible_answer=False):
    """What transformers' question-answering pipeline computed, from its own parts."""
    from transformers import AutoTokenizer
    from transformers.pipelines.document_question_answering import select_starts_ends

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    windows = tokenizer(
        question, context, truncation="only_second", max_length=max_length, stride=stride,
        return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest",
        return_tensors="pt",
    )
    with torch.no_grad():
        out = hf_model(input_ids=windows["input_ids"], attention_mask=windows["attention_mask"])
    answers, min_null_score = [], 1000000
    for row in range(len(windows["input_ids"])):
        encoding = windows.encodings[row]
        p_mask = np.array([s != 1 for s in encoding.sequence_ids], dtype=int)
        p_mask[np.asarray(encoding.ids) == tokenizer.cls_token_id] = 0
        starts, ends, scores, min_null_score = select_starts_ends(
            out.start_logits[row:row + 1].numpy(), out.end_logits[row:row + 1].numpy(),
            p_mask, windows["attention_mask"][row].numpy(), min_null_score, top_k,
            handle_impossible_answer, max_answer_length,
        )
        for s, e, score in zip(starts, ends, scores):
            first = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)
            last = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)
            answers.append({"score": float(score), "start": first[0], "end": last[1],
                            "answer": context[first[0]:last[1]]})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda answer: answer["score"], reverse=True)[:top_k]


def assert_answers_match(ours, theirs):
    """Same answer text and offsets; scores within SCORE_ATOL."""
    ours = ours if isinstance(ours, list) else [ours]
    assert [(a["answer"], a["start"], a["end"]) for a in ours] == [
        (a["answer"], a["start"], a["end"]) for a in theirs
    ]
    for mine, reference in zip(ours, theirs):
        assert mine["score"] == pytest.approx(reference["score"], abs=SCORE_ATOL)


def test_answer_matches_pipeline_on_short_contexts(qa_model, english_sentences):
    hf_model, folder = qa_model
    answerer = QuestionAnswerer.from_pretrained(folder, device="cpu")
    questions = [sentence.split(",")[0] + "?" for sentence in english_sentences[20:26]]
    contexts = english_sentences[30:36]
    ours = answerer.answer(questions, contexts, max_length=64)
    for mine, question, context in zip(ours, questions, contexts, strict=True):
        theirs = reference_answers(hf_model, folder, question, context, max_length=64,
                                   stride=32)
        assert_answers_match(mine, theirs)
        assert context[mine["start"]:mine["end"]] == mine["answer"]


@pytest.mark.parametrize("top_k, impossible", [(1, False), (3, False), (2, True)])
def test_answer_windows_over_long_context_match_pipeline(top_k, impossible, qa_model,
                                                         english_sentences):
    hf_model, folder = qa_model
    question = "What does the interpreter do with the name?"
    context = " ".join(english_sentences[40:46])
    answerer = QuestionAnswerer.from_pretrained(folder, device="cpu")
    assert len(answerer.tokenizer.tokenize(context)) > 2 * 48, "context fits in two windows"
    ours = answerer.answer(question, context, max_length=48, stride=16, top_k=top_k,
                           handle_impossible_answer=impossible)
    theirs = reference_answers(hf_model, folder, question, context, max_length=48, stride=16,
                               top_k=top_k, handle_impossible_answer=impossible)
    assert_answers_match(ours, theirs)


@pytest.mark.parametrize("align_to_words", [True, False])
def test_answer_spans_stay_inside_tricky_contexts(align_to_words, qa_model):
    _, folder = qa_model
    answerer = QuestionAnswerer.from_pretrained(folder, device="cpu")
    for max_answer_length in (1, 3, 30):
        results = answerer.answer(["Who went where?"] * len(TRICKY_TEXTS), TRICKY_TEXTS,
                                  top_k=5, max_length=24, stride=4,
                                  max_answer_length=max_answer_length,
                                  align_to_words=align_to_words)
        for context, answers in zip(TRICKY_TEXTS, results):
            assert answers, context
            assert [a["score"] for a in answers] == sorted((a["score"] for a in answers),
                                                           reverse=True)
            for answer in answers:
                assert 0 <= answer["start"] < answer["end"] <= len(context)
                assert answer["answer"] == context[answer["start"]:answer["end"]]
                assert answer["answer"].strip() == answer["answer"]
                if not align_to_words and max_answer_length == 1:
                    assert " " not in answer["answer"]


class PlantedLogits(torch.nn.Module):
    """A stand-in QA head that returns chosen logits for each window, found by its ids."""

    def __init__(self, head, windows):
        super().__init__()
        self.config, self.head = head.config, head
        self.windows = windows  # {tuple of real ids: (start logits, end logits)}

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask, **_):
        start = torch.full(input_ids.shape, -1e4)
        end = start.clone()
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            planted_start, planted_end = self.windows[tuple(ids[mask.bool()].tolist())]
            start[row, :len(planted_start)] = torch.from_numpy(planted_start)
            end[row, :len(planted_end)] = torch.from_numpy(planted_end)
        return start, end


def brute_force_answers(encoded, logits, cls_id, max_answer_length, top_k):
    """Every valid token span of every window, scored as the pipeline scores it."""
    best: dict[tuple[int, int], float] = {}
    for row, (start_logits, end_logits) in enumerate(logits):
        ids = encoded.input_ids[row, :len(start_logits)].tolist()
        context = [s == 1 for s in encoded.sequence_ids[row]]
        keep = [c or i == cls_id for c, i in zip(context, ids)]
        start_probs = np.where(keep, np.exp(start_logits), 0.0)
        end_probs = np.where(keep, np.exp(end_logits), 0.0)
        start_probs, end_probs = start_probs / start_probs.sum(), end_probs / end_probs.sum()
        for s, e in itertools.product(range(len(ids)), repeat=2):
            if context[s] and context[e] and s <= e < s + max_answer_length:
                span = (encoded.offsets[row][s][0], encoded.offsets[row][e][1])
                best[span] = max(best.get(span, 0.0), start_probs[s] * end_probs[e])
    return sorted(best.items(), key=lambda item: -item[1])[:top_k]


@pytest.mark.parametrize("seed", range(3))
def test_answer_decodes_planted_logits_like_brute_force(seed, qa_model, english_sentences):
    _, folder = qa_model
    answerer = QuestionAnswerer.from_pretrained(folder, device="cpu")
    question, context = "What happens?", " ".join(english_sentences[40:46])
    encoded = answerer.tokenizer(question, context, truncation="only_second", max_length=48,
                                 stride=16, return_overflowing=True)
    assert len(encoded) >= 3, "the context should need several windows"
    rng = np.random.default_rng(seed)
    logits, windows = [], {}
    for row in range(len(encoded)):
        length = len(encoded.offsets[row])
        pair = (3 * rng.standard_normal(length), 3 * rng.standard_normal(length))
        logits.append(pair)
        windows[tuple(encoded.input_ids[row, :length].tolist())] = pair
    answerer.model = PlantedLogits(answerer.model, windows)

    ours = answerer.answer(question, context, max_length=48, stride=16, top_k=5,
                           max_answer_length=7, align_to_words=False, batch_size=2)

    expected = brute_force_answers(encoded, logits, answerer.tokenizer.cls_token_id, 7, 5)
    assert [(a["start"], a["end"]) for a in ours] == [span for span, _ in expected]
    assert [a["score"] for a in ours] == pytest.approx([p for _, p in expected], rel=1e-6)
    for answer in ours:
        assert answer["answer"] == context[answer["start"]:answer["end"]]


def test_answer_rejects_bad_arguments(qa_model):
    _, folder = qa_model
    answerer = QuestionAnswerer.from_pretrained(folder, device="cpu")
    with pytest.raises(ValueError, match="context 1 is empty"):
        answerer.answer(["a?", "b?"], ["some text", "  "])
    with pytest.raises(ValueError, match="context 0 has no tokens"):
        answerer.answer("a?", "\u200b\u200b")
    with pytest.raises(ValueError, match="2 questions but 1 contexts"):
        answerer.answer(["a?", "b?"], ["text"])
    with pytest.raises(ValueError, match="max_answer_length"):
        answerer.answer("a?", "text", max_answer_length=0)
    with pytest.raises(ValueError, match="stride 16"):
        answerer.answer("why " * 40, "a longer context " * 20, max_length=48, stride=16)


# --- fill mask ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm_folder(make_tiny_distilbert_config, randomize_weights, hf_checkpoint):
    import transformers

    torch.manual_seed(61)
    hf_model = randomize_weights(
        transformers.DistilBertForMaskedLM(make_tiny_distilbert_config()), seed=61
    )
    return hf_checkpoint(hf_model, "safetensors", drop=("vocab_projector.weight",))


def test_fill_mask_matches_pipeline(mlm_folder):
    texts = [
        "Paris is the [MASK] of France.",
        "Zoë bought a [MASK] in São Paulo.",
        "The [MASK] sat on the [MASK] near the door.",
    ]
    filler = MaskFiller.from_pretrained(mlm_folder, device="cpu")
    ours = filler.fill_mask(texts, top_k=4, batch_size=2)
    reference = hf_pipeline("fill-mask", mlm_folder)
    for text, mine in zip(texts, ours, strict=True):
        theirs = reference(text, top_k=4)
        masks = (mine, theirs) if text.count("[MASK]") > 1 else ([mine], [theirs])
        assert len(masks[0]) == len(masks[1]) == text.count("[MASK]")
        for our_mask, their_mask in zip(*masks):
            assert [p["token"] for p in our_mask] == [p["token"] for p in their_mask]
            assert [p["token_str"] for p in our_mask] == [p["token_str"] for p in their_mask]
            assert [p["sequence"] for p in our_mask] == [p["sequence"] for p in their_mask]
            for p, q in zip(our_mask, their_mask):
                assert p["score"] == pytest.approx(q["score"], abs=SCORE_ATOL)


def test_fill_mask_errors(mlm_folder):
    filler = MaskFiller.from_pretrained(mlm_folder, device="cpu")
    with pytest.raises(ValueError, match=r"text 1 has no \[MASK\] token"):
        filler.fill_mask(["a [MASK] b", "no mask here"])
    with pytest.raises(ValueError, match="top_k"):
        filler.fill_mask("a [MASK]", top_k=0)
    assert isinstance(filler.fill_mask("a [MASK] b", top_k=2), list)


def test_load_task_by_name(mlm_folder, tagging_folder):
    assert isinstance(load_task("fill-mask", mlm_folder, device="cpu"), MaskFiller)
    assert isinstance(load_task("tag", tagging_folder, device="cpu"), Tagger)
    with pytest.raises(ValueError, match="unknown task 'ner'"):
        load_task("ner", tagging_folder)
