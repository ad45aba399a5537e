"""Our Tokenizer against transformers' AutoTokenizer on the same folder.

Both a folder with ``tokenizer.json`` (the built-in model) and folders with only
``vocab.txt`` + ``tokenizer_config.json`` (lowercasing, accent stripping and Chinese
handling varied) must give the same ids, token types and masks for single texts, pairs,
every truncation strategy and overflow windows.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch

from distilbert import Tokenizer

VOCAB_SETTINGS = {
    "vocab-lower": {"do_lower_case": True},
    "vocab-cased": {"do_lower_case": False},
    "vocab-lower-keep-accents": {"do_lower_case": True, "strip_accents": False},
    "vocab-cased-strip-accents": {"do_lower_case": False, "strip_accents": True},
    "vocab-no-chinese-split": {"do_lower_case": True, "tokenize_chinese_chars": False},
}
FOLDERS = ["tokenizer-json", *VOCAB_SETTINGS]

TRICKY_TEXTS = [
    "",
    " ",
    "\t\n  \u3000 ",
    "Crème brûlée à la façon de São Paulo, Ångström and naïve coöperation.",
    "Combining marks: e\u0301 a\u0308 n\u0303 and precomposed \u00e9.",
    "我爱自然语言处理",
    "BERT模型在中文上也能工作。",
    "日本語のテキストと한국어 text.",
    "tab\there, bell\x07 char, null\x00byte, escape \x1b[31mred\x1b[0m",
    "zero\u200bwidth space, joiner\u200d, non-joiner\u200c, \ufeffBOM, soft\u00adhyphen",
    "I \u2764\ufe0f NLP \U0001f917 and caf\u00e9s",
    'Hello!!! What?? (yes) [no] {maybe} -- "quoted" \u2018curly\u2019 \u2014 dash',
    "3.14159 is about pi; 1,000,000 is a million; 2024-01-31T12:00Z.",
    "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "[CLS] literal [SEP] special [MASK] tokens [PAD] and [UNK] in text",
    "UPPER lower MiXeD CaSe",
]
STRATEGIES = ["longest_first", "only_first", "only_second", None]


def write_vocab_folder(root: Path, source: Path, name: str) -> Path:
    """A folder holding only vocab.txt and a tokenizer_config.json with ``name``'s settings."""
    folder = root / name
    folder.mkdir()
    shutil.copy(source / "vocab.txt", folder / "vocab.txt")
    config = dict(VOCAB_SETTINGS[name], tokenizer_class="BertTokenizer", model_max_length=512)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory, builtin_model_folder) -> dict[str, Path]:
    """Folder name -> folder: the built-in one (tokenizer.json) and the vocab-only ones."""
    root = tmp_path_factory.mktemp("tokenizers")
    folders = {"tokenizer-json": builtin_model_folder}
    for name in VOCAB_SETTINGS:
        folders[name] = write_vocab_folder(root, builtin_model_folder, name)
    return folders


@pytest.fixture(scope="module")
def tokenizer_pairs(tokenizer_folders):
    """Folder name -> (our Tokenizer, transformers tokenizer)."""
    from transformers import AutoTokenizer

    return {
        name: (Tokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))
        for name, folder in tokenizer_folders.items()
    }


@pytest.fixture(scope="module")
def long_pairs(english_sentences):
    """Six (three-sentence text, one sentence) pairs of real English."""
    longs = [" ".join(english_sentences[i:i + 3]) for i in range(0, 18, 3)]
    shorts = english_sentences[20:26]
    return list(zip(longs, shorts))


def encode_both(ours, hf, texts, pairs=None, *, truncation="longest_first", max_length=None,
                stride=0, return_overflowing=False, add_special_tokens=True,
                padding="longest"):
    """Encode with both tokenizers using the same settings; return two dicts of lists."""
    mine = ours(texts, pairs, truncation=truncation, max_length=max_length, stride=stride,
                return_overflowing=return_overflowing, add_special_tokens=add_special_tokens,
                padding=padding)
    # Without truncation transformers only warns about a max_length; it is unused anyway.
    theirs = hf(texts, pairs, truncation=truncation or False,
                max_length=max_length if truncation or padding == "max_length" else None,
                stride=stride, return_overflowing_tokens=return_overflowing,
                add_special_tokens=add_special_tokens,
                padding=True if padding == "longest" else padding)
    names = ["input_ids", "token_type_ids", "attention_mask"]
    mine_out = {name: getattr(mine, name).tolist() for name in names}
    theirs_out = {name: [list(row) for row in theirs[name]] for name in names}
    if return_overflowing:
        mine_out["overflow"] = list(mine.overflow_to_sample)
        theirs_out["overflow"] = list(theirs["overflow_to_sample_mapping"])
    return mine_out, theirs_out


def assert_same_encoding(mine, theirs, texts):
    """Every field equal; on failure name the first differing row and its input."""
    for name in theirs:
        if mine[name] != theirs[name]:
            rows = [i for i, (a, b) in enumerate(zip(mine[name], theirs[name])) if a != b]
            row = rows[0] if rows else None
            shown = texts[row] if row is not None and row < len(texts) else None
            pytest.fail(f"{name} differs in rows {rows} (first input {shown!r}): "
                        f"ours {mine[name][row] if rows else mine[name]} vs "
                        f"transformers {theirs[name][row] if rows else theirs[name]}")


def test_settings_change_the_reference(tokenizer_pairs):
    """The folders really differ, so agreeing with each is not agreeing with one."""
    text = "Hello café 我爱"
    tokens = {name: tuple(hf.tokenize(text)) for name, (_, hf) in tokenizer_pairs.items()}
    # tokenizer-json and vocab-lower hold the same settings; every other pair differs.
    assert len(set(tokens.values())) == len(tokens) - 1, tokens


@pytest.mark.parametrize("folder", FOLDERS)
def test_single_texts(folder, tokenizer_pairs, english_sentences):
    ours, hf = tokenizer_pairs[folder]
    texts = TRICKY_TEXTS + english_sentences[:16]

    mine, theirs = encode_both(ours, hf, texts)

    assert_same_encoding(mine, theirs, texts)
    assert [ours.tokenize(t) for t in texts] == [hf.tokenize(t) for t in texts]


@pytest.mark.parametrize("folder", FOLDERS)
def test_empty_and_whitespace_texts_are_cls_sep(folder, tokenizer_pairs):
    ours, _ = tokenizer_pairs[folder]

    encoded = ours(["", " ", "\t\n", "\u200b", "\u3000\u00a0"])

    expected = [ours.cls_token_id, ours.sep_token_id]
    assert encoded.input_ids.tolist() == [expected] * 5
    assert encoded.attention_mask.tolist() == [[1, 1]] * 5


@pytest.mark.parametrize("folder", FOLDERS)
def test_pairs_without_truncation(folder, tokenizer_pairs):
    ours, hf = tokenizer_pairs[folder]
    firsts = TRICKY_TEXTS
    seconds = TRICKY_TEXTS[::-1]

    mine, theirs = encode_both(ours, hf, firsts, seconds, truncation=None)

    assert_same_encoding(mine, theirs, firsts)
    assert any(1 in row for row in mine["token_type_ids"])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("folder", ["tokenizer-json", "vocab-cased-strip-accents"])
def test_pairs_every_truncation_strategy(strategy, folder, tokenizer_pairs, long_pairs):
    ours, hf = tokenizer_pairs[folder]
    if strategy == "only_second":
        firsts, seconds = [s for _, s in long_pairs], [t for t, _ in long_pairs]
    else:
        firsts, seconds = [t for t, _ in long_pairs], [s for _, s in long_pairs]

    mine, theirs = encode_both(ours, hf, firsts, seconds, truncation=strategy, max_length=40)

    assert_same_encoding(mine, theirs, firsts)
    widths = [sum(row) for row in mine["attention_mask"]]
    assert (max(widths) == 40) == (strategy is not None), widths


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_texts_every_truncation_strategy(strategy, tokenizer_pairs, long_pairs):
    ours, hf = tokenizer_pairs["tokenizer-json"]
    texts = [t for t, _ in long_pairs]
    if strategy == "only_second":
        with pytest.raises(ValueError, match="'only_second' needs sentence pairs"):
            ours(texts, truncation=strategy, max_length=20)
        return

    mine, theirs = encode_both(ours, hf, texts, truncation=strategy, max_length=20)

    assert_same_encoding(mine, theirs, texts)


@pytest.mark.parametrize("folder", ["tokenizer-json", "vocab-lower"])
def test_without_special_tokens(folder, tokenizer_pairs, long_pairs):
    ours, hf = tokenizer_pairs[folder]
    firsts, seconds = [t for t, _ in long_pairs], [s for _, s in long_pairs]

    single = encode_both(ours, hf, firsts, add_special_tokens=False, max_length=30)
    paired = encode_both(ours, hf, firsts, seconds, add_special_tokens=False, max_length=30)

    assert_same_encoding(*single, firsts)
    assert_same_encoding(*paired, firsts)
    assert all(ours.cls_token_id not in row for row in single[0]["input_ids"])


def test_max_length_defaults_to_the_model_limit(tokenizer_pairs, english_sentences):
    ours, hf = tokenizer_pairs["tokenizer-json"]
    very_long = " ".join(english_sentences)

    encoded = ours([very_long, "short"])
    reference = hf([very_long, "short"], truncation=True, padding=True)

    assert ours.model_max_length == 512
    assert encoded.input_ids.shape == (2, 512)
    assert encoded.input_ids.tolist() == reference["input_ids"]
    assert encoded.attention_mask.tolist() == reference["attention_mask"]


def test_model_limit_caps_max_length(builtin_model_folder):
    tokenizer = Tokenizer.from_pretrained(builtin_model_folder, model_max_length=64)

    assert tokenizer.model_max_length == 64
    assert tokenizer("word " * 100).input_ids.shape == (1, 64)


@pytest.mark.parametrize("folder", ["tokenizer-json", "vocab-lower-keep-accents"])
def test_padding_to_max_length_and_multiples(folder, tokenizer_pairs):
    ours, hf = tokenizer_pairs[folder]
    texts = TRICKY_TEXTS[3:8]

    mine, theirs = encode_both(ours, hf, texts, max_length=48, padding="max_length")
    multiple = ours(texts, pad_to_multiple_of=8)
    reference = hf(texts, padding=True, pad_to_multiple_of=8)

    assert_same_encoding(mine, theirs, texts)
    assert multiple.input_ids.tolist() == reference["input_ids"]


@pytest.mark.parametrize("max_length, stride", [(16, 0), (16, 3), (12, 8), (32, 5)])
def test_overflow_windows_of_single_texts(max_length, stride, tokenizer_pairs, long_pairs):
    ours, hf = tokenizer_pairs["tokenizer-json"]
    texts = [t for t, _ in long_pairs[:3]] + ["short one"]

    mine, theirs = encode_both(ours, hf, texts, max_length=max_length, stride=stride,
                               return_overflowing=True)

    assert_same_encoding(mine, theirs, texts)
    assert len(mine["overflow"]) > len(texts)


@pytest.mark.parametrize("strategy", ["only_second", "only_first"])
@pytest.mark.parametrize("max_length, stride", [(40, 0), (40, 6), (28, 4)])
def test_overflow_windows_of_pairs(strategy, max_length, stride, tokenizer_pairs, long_pairs):
    ours, hf = tokenizer_pairs["vocab-lower"]
    longs, shorts = [t for t, _ in long_pairs], [s[:60] for _, s in long_pairs]
    firsts, seconds = (shorts, longs) if strategy == "only_second" else (longs, shorts)

    mine, theirs = encode_both(ours, hf, firsts, seconds, truncation=strategy,
                               max_length=max_length, stride=stride, return_overflowing=True)

    assert_same_encoding(mine, theirs, firsts)
    assert len(mine["overflow"]) > len(firsts)


def test_stride_too_large_is_a_clear_error(tokenizer_pairs):
    ours, _ = tokenizer_pairs["tokenizer-json"]

    with pytest.raises(ValueError, match=r"stride 10 must be smaller than max_length minus "
                                         r"special tokens \(10\) to truncate input 1"):
        ours(["short", "one two three four five six seven eight nine ten eleven twelve"],
             max_length=12, stride=10, return_overflowing=True)


def test_pair_that_cannot_fit_is_a_clear_error(tokenizer_pairs):
    ours, _ = tokenizer_pairs["tokenizer-json"]
    question = "one two three four five six seven eight nine ten"

    with pytest.raises(ValueError, match=r"'only_second' cannot fit input 1: its other "
                                         r"sequence has 10 tokens"):
        ours(["a", question], ["b c d e f g h i j k", "x y z w v u"], truncation="only_second",
             max_length=12)


def test_pair_stride_too_large_for_what_is_kept(tokenizer_pairs):
    ours, _ = tokenizer_pairs["tokenizer-json"]

    with pytest.raises(ValueError, match=r"stride 4 must be smaller than the 3 tokens that "
                                         r"truncation 'only_second' keeps of input 0's second"):
        ours(["one two three four five six"], ["a b c d e f g h i j k"],
             truncation="only_second", max_length=12, stride=4, return_overflowing=True)


def test_agrees_with_transformers_on_when_truncation_fails(tokenizer_pairs, monkeypatch):
    """Brute force over small sizes: where transformers' tokenizer fails (or its Rust core
    panics) ours raises ValueError; everywhere else both give the same windows."""
    monkeypatch.setenv("RUST_BACKTRACE", "0")
    ours, hf = tokenizer_pairs["tokenizer-json"]
    words = list("abcdefghijklmnop")
    outcomes = {"equal": 0, "refused": 0}
    grid = itertools.product([0, 1, 3, 6, 10], [0, 2, 5, 9], [4, 6, 9, 13], [0, 1, 2, 4])
    for first, second, max_length, stride in grid:
        texts, pairs = [" ".join(words[:first])], [" ".join(words[:second])]
        cases = [(None, "longest_first", True)]
        cases += [(pairs, strategy, strategy != "longest_first")
                  for strategy in ("longest_first", "only_first", "only_second")]
        for pair_texts, strategy, overflow in cases:
            settings = {"truncation": strategy, "max_length": max_length, "stride": stride,
                        "return_overflowing": overflow}
            try:
                mine, theirs = None, encode_both(ours, hf, texts, pair_texts, **settings)[1]
            except BaseException as err:  # the Rust core's PanicException is a BaseException
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
                with pytest.raises(ValueError):
                    ours(texts, pair_texts, **settings)
                outcomes["refused"] += 1
                continue
            mine = encode_both(ours, hf, texts, pair_texts, **settings)[0]
            assert mine == theirs, (first, second, max_length, stride, strategy)
            outcomes["equal"] += 1
    assert outcomes["equal"] > 500 and outcomes["refused"] > 20, outcomes


def test_argument_errors_are_named(tokenizer_pairs):
    ours, _ = tokenizer_pairs["tokenizer-json"]

    with pytest.raises(ValueError, match="unknown truncation 'middle'"):
        ours("text", truncation="middle")
    with pytest.raises(ValueError, match="needs a truncation strategy"):
        ours("text", truncation=None, return_overflowing=True)
    with pytest.raises(ValueError, match="2 texts but 1 second sequences"):
        ours(["a", "b"], ["c"])
    with pytest.raises(TypeError, match="input 1 is int, not str"):
        ours(["a", 7])
    with pytest.raises(ValueError, match="max_length 2 leaves no room"):
        ours("text", "pair", max_length=2)
    with pytest.raises(ValueError, match="padding=False needs rows of equal length"):
        ours(["a", "a b c"], padding=False)


def test_loaded_once_per_folder(tokenizer_folders, monkeypatch):
    folder = tokenizer_folders["vocab-lower"]
    first = Tokenizer.from_pretrained(folder)

    monkeypatch.chdir(folder.parent)

    assert Tokenizer.from_pretrained(str(folder)) is first
    assert Tokenizer.from_pretrained(Path(folder.name)) is first
    assert Tokenizer.from_pretrained(tokenizer_folders["vocab-cased"]) is not first
    assert Tokenizer.from_pretrained(folder, model_max_length=32) is not first


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer folder does not exist"):
        Tokenizer.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt in"):
        Tokenizer.from_pretrained(tmp_path)


def test_encoded_batch_feeds_the_model(tokenizer_pairs):
    ours, _ = tokenizer_pairs["tokenizer-json"]

    inputs = ours(["a sentence", "and another, longer one"]).model_inputs("cpu")

    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(t.dtype == torch.int64 and t.shape == inputs["input_ids"].shape
               for t in inputs.values())
    assert inputs["input_ids"].shape[0] == 2
