"""What the task helpers need from the tokenizer front: offsets into the caller's string,
overflowing windows with stride (pairs included), sequence ids, word ids, and ValueErrors
where the Rust library would fail or panic.

The reference is transformers' fast tokenizer on the built-in model folder.
"""

from __future__ import annotations

import itertools
import unicodedata

import pytest

from distilbert.engine.tokenizer import Tokenizer

TRICKY_TEXTS = [
    "Zoë Saldaña flew from São Paulo to Zürich.",
    "Cafe\u0301s in Mu\u0308nchen serve cre\u0300me bru\u0302le\u0301e.",
    "zero\u200bwidth\u200d joiners\ufeff and soft\u00adhyphens",
    "Literal specials: [SEP] then [CLS] and [MASK] or [PAD].",
    "Emoji 🙂 and 漢字 with a flibbertigibbet!",
    "   spaces\tand\nnewlines   ",
]
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")


@pytest.fixture(scope="module")
def tokenizer(builtin_model_folder) -> Tokenizer:
    return Tokenizer.from_pretrained(builtin_model_folder)


@pytest.fixture(scope="module")
def hf_tokenizer(builtin_model_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(builtin_model_folder))


def normalize_like_bert(text: str) -> str:
    """Lower-case, drop accents and characters BERT's normaliser deletes."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(
        c for c in text
        if unicodedata.category(c) not in ("Mn", "Cf", "Cc") and c != "\ufffd"
    )


def test_offsets_word_and_sequence_ids_match_transformers(tokenizer, hf_tokenizer):
    ours = tokenizer(TRICKY_TEXTS)
    theirs = hf_tokenizer(TRICKY_TEXTS, return_offsets_mapping=True,
                          return_special_tokens_mask=True)
    for row in range(len(TRICKY_TEXTS)):
        n = len(theirs["input_ids"][row])
        assert ours.input_ids[row, :n].tolist() == theirs["input_ids"][row]
        assert ours.offsets[row] == [tuple(o) for o in theirs["offset_mapping"][row]]
        assert ours.word_ids[row] == theirs.word_ids(row)
        assert ours.sequence_ids[row] == theirs.sequence_ids(row)
        assert ours.special_tokens_mask[row] == theirs["special_tokens_mask"][row]


def test_offsets_point_at_the_text_of_each_token(tokenizer):
    encoded = tokenizer(TRICKY_TEXTS)
    for row, text in enumerate(TRICKY_TEXTS):
        tokens = [tokenizer.id_to_token(i) for i in encoded.input_ids[row].tolist()]
        for index, (start, end) in enumerate(encoded.offsets[row]):
            piece = tokens[index]
            if encoded.special_tokens_mask[row][index]:
                assert (start, end) == (0, 0)
            elif piece in SPECIAL_TOKENS and piece != "[UNK]":
                assert text[start:end] == piece  # written in the text, kept verbatim
            elif piece == "[UNK]":
                assert text[start:end].strip() == text[start:end] != ""
            else:
                assert normalize_like_bert(text[start:end]) == piece.removeprefix("##"), (
                    text, index, piece, text[start:end]
                )
    # Deleted zero-width characters and combining accents sit inside a token's span or
    # between tokens, never at a span's edge.
    accents = encoded.offsets[TRICKY_TEXTS.index(TRICKY_TEXTS[1])]
    assert (0, 6) in accents  # "Cafe\u0301s": the combining accent is inside the word


def test_word_ids_group_word_pieces(tokenizer):
    encoded = tokenizer(["unbelievably overcomplicated flibbertigibbet, isn't it"])
    tokens = [tokenizer.id_to_token(i) for i in encoded.input_ids[0].tolist()]
    words = encoded.word_ids[0]
    assert words[0] is None and words[-1] is None
    for index in range(2, len(tokens) - 1):
        continues = tokens[index].startswith("##")
        assert (words[index] == words[index - 1]) == continues, (index, tokens[index])


@pytest.mark.parametrize("strategy", ["only_second", "only_first"])
def test_pair_windows_with_stride_match_transformers(strategy, tokenizer, hf_tokenizer,
                                                     english_sentences):
    questions = ["Where did it go?", "Which names are bound when the block runs?"]
    contexts = [" ".join(english_sentences[:4]), " ".join(english_sentences[4:9])]
    firsts, seconds = (questions, contexts) if strategy == "only_second" else (contexts,
                                                                              questions)
    ours = tokenizer(firsts, seconds, truncation=strategy, max_length=40, stride=9,
                     return_overflowing=True)
    theirs = hf_tokenizer(firsts, seconds, truncation=strategy, max_length=40, stride=9,
                          return_overflowing_tokens=True, return_offsets_mapping=True,
                          padding="longest")
    assert ours.overflow_to_sample == theirs["overflow_to_sample_mapping"]
    assert ours.overflow_to_sample.count(0) > 2 and ours.overflow_to_sample.count(1) > 2
    assert ours.input_ids.tolist() == theirs["input_ids"]
    assert ours.attention_mask.tolist() == theirs["attention_mask"]
    for row in range(len(ours)):
        assert ours.offsets[row] == [tuple(o) for o in theirs["offset_mapping"][row]][
            :len(ours.offsets[row])
        ]
        assert ours.sequence_ids[row] == theirs.sequence_ids(row)[:len(ours.sequence_ids[row])]
        assert ours.word_ids[row] == theirs.word_ids(row)[:len(ours.word_ids[row])]


def test_pair_windows_overlap_by_stride_and_cover_the_context(tokenizer, english_sentences):
    question, context = "What is bound?", " ".join(english_sentences[:5])
    stride = 7
    encoded = tokenizer(question, context, truncation="only_second", max_length=32,
                        stride=stride, return_overflowing=True)
    windows = []
    for row in range(len(encoded)):
        sequence_ids = encoded.sequence_ids[row]
        windows.append([encoded.offsets[row][i] for i, s in enumerate(sequence_ids) if s == 1])
        # The question is whole in every window.
        question_ids = [encoded.input_ids[row, i].item()
                        for i, s in enumerate(sequence_ids) if s == 0]
        assert question_ids == tokenizer(question).input_ids[0, 1:-1].tolist()
    for before, after in itertools.pairwise(windows):
        assert before[-stride:] == after[:stride]
    assert windows[0][0][0] == 0
    assert windows[-1][-1][1] == len(context.rstrip())


def test_single_text_windows_with_stride(tokenizer, english_sentences):
    text = " ".join(english_sentences[:3])
    encoded = tokenizer([text, "short"], max_length=16, stride=4, return_overflowing=True)
    rows = [r for r, s in enumerate(encoded.overflow_to_sample) if s == 0]
    assert len(rows) > 3 and encoded.overflow_to_sample[-1] == 1
    for a, b in itertools.pairwise(rows):
        assert encoded.offsets[a][-5:-1] == encoded.offsets[b][1:5]


@pytest.mark.parametrize("call, message", [
    (lambda t, long: t(long, max_length=12, stride=10, return_overflowing=True), "stride 10"),
    (lambda t, long: t("why " * 30, long, truncation="only_second", max_length=20),
     "only_second"),
    (lambda t, long: t("why " * 20, long, truncation="only_second", max_length=40, stride=17,
                       return_overflowing=True), "stride 17"),
    (lambda t, long: t(long, truncation="only_second"), "only_second"),
    (lambda t, long: t(long, truncation="middle"), "unknown truncation"),
    (lambda t, long: t(long, truncation=None, return_overflowing=True), "truncation"),
    (lambda t, long: t([long, long], ["one pair"]), "2 texts but 1"),
    (lambda t, long: t(long, max_length=2), "no room"),
    (lambda t, long: t(long, stride=-1), "stride"),
])
def test_settings_the_library_fails_on_are_value_errors(call, message, tokenizer):
    with pytest.raises(ValueError, match=message):
        call(tokenizer, "word " * 100)


def test_the_library_itself_panics_where_we_raise(builtin_model_folder):
    # Why the checks above exist: the Rust library panics (a BaseException, not an Exception).
    from tokenizers import Tokenizer as RustTokenizer

    backend = RustTokenizer.from_file(str(builtin_model_folder / "tokenizer.json"))
    backend.enable_truncation(12, stride=10)
    with pytest.raises(BaseException, match="stride"):
        backend.encode("word " * 100)


def test_non_string_input_is_a_type_error(tokenizer):
    with pytest.raises(TypeError, match="not str"):
        tokenizer(["fine", None])
