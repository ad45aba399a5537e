"""The ``classify``, ``tag``, ``answer`` and ``fill-mask`` sub-commands end to end.

Each runs on a tiny random checkpoint with the built-in tokenizer, reads every input format
``embed`` reads, and must write exactly what the library's task helper returns for the same
texts (the helpers themselves are checked against Hugging Face in tests/engine/test_tasks.py).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distilbert import cli
from distilbert.engine.tasks import Classifier, MaskFiller, QuestionAnswerer, Tagger

SCORE_ATOL = 1e-6
LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXTS = [
    "Ada Lovelace met Charles Babbage in London.",
    "",
    "Zoë flew from São Paulo to Zürich, then [SEP] home.",
    (
        "A much longer line that keeps going so that the tagger needs several windows for it "
        "when the maximum length is small, with names like Grace Hopper and Alan Turing."
    ),
]
MASKED = ["Paris is the [MASK] of France.", "The [MASK] sat on the [MASK].", "[MASK]"]


def random_folder(name, config, randomize, hf_checkpoint, seed, drop=()):
    """A random transformers head saved with the built-in tokenizer files."""
    import transformers

    torch.manual_seed(seed)
    return hf_checkpoint(randomize(getattr(transformers, name)(config), seed=seed), drop=drop)


@pytest.fixture(scope="module")
def folders(make_tiny_distilbert_config, randomize_weights, hf_checkpoint):
    """Checkpoint folders by task name."""
    labelled = make_tiny_distilbert_config(id2label=LABELS,
                                           label2id={v: k for k, v in LABELS.items()})
    return {
        "classify": random_folder("DistilBertForSequenceClassification", labelled,
                                  randomize_weights, hf_checkpoint, 71),
        "tag": random_folder("DistilBertForTokenClassification", labelled, randomize_weights,
                             hf_checkpoint, 72),
        "answer": random_folder("DistilBertForQuestionAnswering", make_tiny_distilbert_config(),
                                randomize_weights, hf_checkpoint, 73),
        "fill-mask": random_folder("DistilBertForMaskedLM", make_tiny_distilbert_config(),
                                   randomize_weights, hf_checkpoint, 74,
                                   drop=("vocab_projector.weight",)),
    }


def write_input(folder: Path, suffix: str, columns: dict[str, list[str]]) -> Path:
    """``columns`` as an input file of format ``suffix`` (.txt: the one column, a line each)."""
    path = folder / f"input{suffix}"
    names = list(columns)
    rows = list(zip(*columns.values()))
    if suffix == ".txt":
        path.write_text("\n".join(row[0] for row in rows) + "\n", encoding="utf-8")
    elif suffix == ".jsonl":
        lines = [json.dumps(dict(zip(names, row)), ensure_ascii=False) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(names)
            writer.writerows(rows)
    else:
        pq.write_table(pa.table(columns), path)
    return path


def read_records(path: Path) -> list[dict]:
    """Records of a .jsonl or .parquet output."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_cli(*args: str) -> int:
    """``distilbert`` in this process with small chunks and batches, no progress bar."""
    return cli.main([*args, "--chunk-size", "3", "--batch-size", "2", "--quiet",
                     "--device", "cpu"])


def assert_same(found, expected, where="records"):
    """Equal nested records; floats within SCORE_ATOL."""
    if isinstance(expected, dict):
        assert isinstance(found, dict) and found.keys() == expected.keys(), (where, found)
        for key in expected:
            assert_same(found[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(found, list) and len(found) == len(expected), (where, found)
        for i, (a, b) in enumerate(zip(found, expected)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert found == pytest.approx(expected, abs=SCORE_ATOL), (where, found, expected)
    else:
        assert found == expected and type(found) is type(expected), (where, found, expected)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_classify_each_input_format(suffix, folders, tmp_path):
    source = write_input(tmp_path, suffix, {"text": TEXTS})
    output = tmp_path / "out.jsonl"
    assert run_cli("classify", str(source), "-o", str(output), "--model",
                   str(folders["classify"])) == 0
    classifier = Classifier.from_pretrained(folders["classify"], device="cpu")
    expected = [{"id": i, **result} for i, result in enumerate(classifier.classify(TEXTS))]
    assert_same(read_records(output), expected)


def test_classify_pairs_to_parquet(folders, tmp_path):
    pairs = ["first", "second", "third", "fourth"]
    source = write_input(tmp_path, ".parquet", {"body": TEXTS, "hypothesis": pairs})
    output = tmp_path / "out.parquet"
    assert run_cli("classify", str(source), "-o", str(output), "--model",
                   str(folders["classify"]), "--column", "body",
                   "--pair-column", "hypothesis") == 0
    classifier = Classifier.from_pretrained(folders["classify"], device="cpu")
    expected = [{"id": i, **r} for i, r in enumerate(classifier.classify(TEXTS, pairs))]
    assert_same(read_records(output), expected)
    schema = pq.read_schema(output)
    assert schema.field("scores").type == pa.struct([(name, pa.float64())
                                                     for name in LABELS.values()])


@pytest.mark.parametrize("aggregation, suffix", [("none", ".jsonl"), ("first", ".parquet"),
                                                 ("average", ".jsonl")])
def test_tag_writes_entities_with_offsets(aggregation, suffix, folders, tmp_path):
    source = write_input(tmp_path, ".csv", {"text": TEXTS})
    output = tmp_path / f"out{suffix}"
    assert run_cli("tag", str(source), "-o", str(output), "--model", str(folders["tag"]),
                   "--aggregation", aggregation, "--max-length", "16", "--stride", "4") == 0
    tagger = Tagger.from_pretrained(folders["tag"], device="cpu")
    results = tagger.tag(TEXTS, aggregation=aggregation, max_length=16, stride=4)
    records = read_records(output)
    assert_same(records, [{"id": i, "entities": e} for i, e in enumerate(results)])
    for text, record in zip(TEXTS, records):
        for entity in record["entities"]:
            assert text[entity["start"]:entity["end"]] == entity["word"]
    assert any(record["entities"] for record in records)


def test_answer_with_question_column(folders, tmp_path):
    contexts = [t for t in TEXTS if t]
    questions = ["Who met whom?", "Where did Zoë go?", "Which names appear?"]
    source = write_input(tmp_path, ".jsonl", {"question": questions, "context": contexts})
    output = tmp_path / "out.parquet"
    assert run_cli("answer", str(source), "-o", str(output), "--model", str(folders["answer"]),
                   "--column", "context", "--question-column", "question",
                   "--max-length", "24", "--stride", "6", "--max-answer-length", "5") == 0
    answerer = QuestionAnswerer.from_pretrained(folders["answer"], device="cpu")
    answers = answerer.answer(questions, contexts, max_length=24, stride=6,
                              max_answer_length=5)
    assert_same(read_records(output), [{"id": i, **a} for i, a in enumerate(answers)])


def test_answer_one_question_for_a_text_file(folders, tmp_path):
    contexts = [t for t in TEXTS if t]
    source = write_input(tmp_path, ".txt", {"text": contexts})
    output = tmp_path / "out.jsonl"
    assert run_cli("answer", str(source), "-o", str(output), "--model", str(folders["answer"]),
                   "--question", "Who is it?") == 0
    answerer = QuestionAnswerer.from_pretrained(folders["answer"], device="cpu")
    answers = answerer.answer(["Who is it?"] * len(contexts), contexts)
    records = read_records(output)
    assert_same(records, [{"id": i, **a} for i, a in enumerate(answers)])
    for context, record in zip(contexts, records):
        assert context[record["start"]:record["end"]] == record["answer"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_fill_mask_writes_a_list_per_mask(suffix, folders, tmp_path):
    source = write_input(tmp_path, ".jsonl", {"text": MASKED})
    output = tmp_path / f"out{suffix}"
    assert run_cli("fill-mask", str(source), "-o", str(output), "--model",
                   str(folders["fill-mask"]), "--top-k", "3") == 0
    filler = MaskFiller.from_pretrained(folders["fill-mask"], device="cpu")
    results = filler.fill_mask(MASKED, top_k=3)
    expected = [
        {"id": 0, "predictions": [results[0]]},
        {"id": 1, "predictions": results[1]},
        {"id": 2, "predictions": [results[2]]},
    ]
    assert_same(read_records(output), expected)


def test_task_errors_name_the_record_and_leave_no_output(folders, tmp_path, capsys):
    source = write_input(tmp_path, ".jsonl", {"text": MASKED[:2] + ["no mask", MASKED[0]]})
    output = tmp_path / "out.jsonl"
    assert run_cli("fill-mask", str(source), "-o", str(output), "--model",
                   str(folders["fill-mask"])) == cli.EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert f"{source}: record 2:" in error and "[MASK]" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.jsonl"]


def test_task_usage_errors(folders, tmp_path, capsys):
    text_file = write_input(tmp_path, ".txt", {"text": ["a", "b"]})
    output = str(tmp_path / "out.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["classify", str(text_file), "-o", output])
    assert exit_info.value.code == 2 and "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["answer", str(text_file), "-o", output, "--model", str(folders["answer"])])
    assert "--question" in capsys.readouterr().err

    status = run_cli("answer", str(text_file), "-o", output, "--model", str(folders["answer"]),
                     "--question-column", "question")
    assert status == cli.EXIT_BAD_INPUT
    assert "takes no column" in capsys.readouterr().err
    status = run_cli("tag", str(text_file), "-o", str(tmp_path / "out.npy"), "--model",
                     str(folders["tag"]))
    assert status == cli.EXIT_BAD_INPUT
    assert "unknown output format '.npy'" in capsys.readouterr().err
    status = run_cli("tag", str(text_file), "-o", output, "--model", str(folders["answer"]))
    assert status == cli.EXIT_BAD_INPUT
    assert "classifier.weight" in capsys.readouterr().err


def test_answer_job_needs_exactly_one_source_of_questions(folders, tmp_path):
    from distilbert import task_jobs

    source = write_input(tmp_path, ".jsonl", {"text": ["a b c"], "question": ["what?"]})
    answerer = QuestionAnswerer.from_pretrained(folders["answer"], device="cpu")
    one = task_jobs.open_readers(source)
    two = task_jobs.open_readers(source, None, "question")
    with pytest.raises(ValueError, match="either one question"):
        task_jobs.answer_file(one, tmp_path / "out.jsonl", answerer)
    with pytest.raises(ValueError, match="either one question"):
        task_jobs.answer_file(two, tmp_path / "out.jsonl", answerer, question="why?")
