"""The task heads against their transformers counterparts, loaded from every layout.

Logits must agree within 1e-5 in float32 on real tokens. Reference models have every weight
drawn at random (tests/conftest.py), so a head weight loaded under the wrong name, or one
left at its initial value, shows.
"""

from __future__ import annotations

import json

import pytest
import torch

from distilbert.engine.heads import (
    DistilBertForMaskedLM,
    DistilBertForMultipleChoice,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
)
from tests.checkpoints import FORMATS

LOGITS_ATOL = 1e-5
LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
# Our head class -> the transformers class of the same name.
HEAD_CLASSES = {
    cls.__name__: cls
    for cls in (
        DistilBertForSequenceClassification,
        DistilBertForTokenClassification,
        DistilBertForQuestionAnswering,
        DistilBertForMaskedLM,
        DistilBertForMultipleChoice,
    )
}
PREFIXES = ("distilbert.", "")


def hf_head(name: str, config, randomize, seed: int = 0):
    """A transformers head model with every weight random."""
    import transformers

    torch.manual_seed(seed)
    return randomize(getattr(transformers, name)(config), seed=seed)


def label_config(make_config, name: str, **overrides):
    """A tiny config; labelled heads get LABELS, question answering its two outputs."""
    if name in ("DistilBertForSequenceClassification", "DistilBertForTokenClassification"):
        overrides.setdefault("id2label", LABELS)
        overrides.setdefault("label2id", {v: k for k, v in LABELS.items()})
    return make_config(**overrides)


def inputs_for(name: str, seq: int = 11, seed: int = 0):
    """Three right-padded rows (multiple choice: two examples of three choices)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 3, seq) if name == "DistilBertForMultipleChoice" else (3, seq)
    ids = torch.randint(1000, 30000, shape, generator=generator)
    mask = torch.ones(shape, dtype=torch.int64)
    mask[..., 1, seq - 4:] = 0
    mask[..., -1, seq - 7:] = 0
    ids[mask == 0] = 0
    return ids, mask


def reference_logits(hf_model, ids, mask, types=None):
    """Logits of a transformers head: a tensor, or (start, end) for question answering."""
    extra = {} if types is None else {"token_type_ids": types}
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=mask, **extra)
    if hasattr(out, "start_logits"):
        return out.start_logits, out.end_logits
    return out.logits


def assert_logits_close(ours, reference, mask, atol=LOGITS_ATOL):
    """Compare per-token logits on real tokens only, other logits everywhere."""
    ours = ours if isinstance(ours, tuple) else (ours,)
    reference = reference if isinstance(reference, tuple) else (reference,)
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.shape == theirs.shape, (mine.shape, theirs.shape)
        assert mine.dtype == torch.float32
        diff = (mine.double() - theirs.double()).abs()
        if diff.dim() >= 2 and diff.shape[:2] == mask.shape:
            diff = diff[mask.bool()]
        worst = diff.max().item()
        assert worst <= atol, f"max abs diff {worst:.3g} > {atol:g}"


@pytest.fixture(scope="module")
def tiny_heads(make_tiny_distilbert_config, randomize_weights):
    """One random tiny transformers model per head class, built once."""
    return {
        name: hf_head(name, label_config(make_tiny_distilbert_config, name), randomize_weights, i)
        for i, name in enumerate(HEAD_CLASSES)
    }


@pytest.mark.parametrize("prefix", PREFIXES, ids=["prefixed", "bare"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(HEAD_CLASSES))
def test_head_matches_transformers(name, fmt, prefix, tiny_heads, hf_checkpoint):
    hf_model = tiny_heads[name]
    folder = hf_checkpoint(hf_model, fmt, prefix=prefix, tokenizer=False)
    model = HEAD_CLASSES[name].from_pretrained(folder)
    ids, mask = inputs_for(name)
    reference = reference_logits(hf_model, ids, mask)
    for ours in head_outputs(model, ids, mask):
        assert_logits_close(ours, reference, mask)
    if name in ("DistilBertForSequenceClassification", "DistilBertForTokenClassification"):
        assert model.id2label == LABELS
        assert model.config.label2id == {v: k for k, v in LABELS.items()}


def head_outputs(model, ids, mask):
    """The head's outputs with plain projections (no_grad) and fused ones (inference mode)."""
    with torch.no_grad():
        plain = model(ids, mask)
    with torch.inference_mode():
        fused = model(ids, mask)
    return plain, fused


# Full-size heads, one checkpoint each: together they cover every format and both prefixes.
FULL_SIZE_LAYOUTS = dict(zip(HEAD_CLASSES, [
    ("safetensors", None), ("bin", "distilbert."), ("sharded-safetensors", None),
    ("sharded-bin", "distilbert."), ("safetensors", "distilbert."),
]))


def full_size_hf_head(name: str, encoder, seed: int):
    """A transformers head at distilbert-base size on the shared random ``encoder``.

    The head is built on the meta device and only its own layers are materialised and drawn
    at random, so each full-size case costs one checkpoint write, not a model init.
    """
    import math

    import transformers

    config = transformers.DistilBertConfig(
        **{**encoder.config.to_dict(), "num_labels": 2 if "Question" in name else 4}
    )
    with torch.device("meta"):
        hf_model = getattr(transformers, name)(config)
    hf_model.distilbert = encoder
    generator = torch.Generator().manual_seed(seed)
    for child_name, child in hf_model.named_children():
        if child_name == "distilbert":
            continue
        child.to_empty(device="cpu")
        with torch.no_grad():
            for param_name, param in child.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                scale = 1 / math.sqrt(param.shape[-1]) if param.dim() == 2 else 0.2
                param.copy_(noise * scale + (param_name == "weight" and param.dim() == 1))
    if name == "DistilBertForMaskedLM":
        hf_model.vocab_projector.weight = encoder.embeddings.word_embeddings.weight
    return hf_model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HEAD_CLASSES))
def test_full_size_head_matches_transformers(name, base_distilbert_hf, tmp_path):
    from tests.checkpoints import write_checkpoint

    hf_model = full_size_hf_head(name, base_distilbert_hf, seed=7)
    drop = ("vocab_projector.weight",) if name == "DistilBertForMaskedLM" else ()
    fmt, prefix = FULL_SIZE_LAYOUTS[name]
    write_checkpoint(hf_model, tmp_path, fmt, prefix, drop=drop)
    model = HEAD_CLASSES[name].from_pretrained(tmp_path)
    assert model.config.dim == 768 and model.config.n_layers == 6
    ids, mask = inputs_for(name, seq=9, seed=3)
    reference = reference_logits(hf_model, ids, mask)
    for ours in head_outputs(model, ids, mask):
        assert_logits_close(ours, reference, mask)


def test_masked_lm_ties_projector_when_checkpoint_leaves_it_out(tiny_heads, hf_checkpoint):
    hf_model = tiny_heads["DistilBertForMaskedLM"]
    folder = hf_checkpoint(hf_model, "safetensors", drop=("vocab_projector.weight",),
                           tokenizer=False)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        stored = set(handle.keys())
    assert "vocab_projector.weight" not in stored and "vocab_projector.bias" in stored
    model = DistilBertForMaskedLM.from_pretrained(folder)
    assert model.projector_is_tied
    ids, mask = inputs_for("DistilBertForMaskedLM")
    with torch.no_grad():
        ours = model(ids, mask)
    assert_logits_close(ours, reference_logits(hf_model, ids, mask), mask)


def test_masked_lm_uses_projector_weight_when_present(
    make_tiny_distilbert_config, randomize_weights, hf_checkpoint
):
    config = make_tiny_distilbert_config(tie_word_embeddings=False)
    hf_model = hf_head("DistilBertForMaskedLM", config, randomize_weights, seed=11)
    words = hf_model.distilbert.embeddings.word_embeddings.weight
    assert not torch.equal(hf_model.vocab_projector.weight, words)
    folder = hf_checkpoint(hf_model, "bin", tokenizer=False)
    model = DistilBertForMaskedLM.from_pretrained(folder)
    assert not model.projector_is_tied
    ids, mask = inputs_for("DistilBertForMaskedLM")
    with torch.no_grad():
        ours = model(ids, mask)
    assert_logits_close(ours, reference_logits(hf_model, ids, mask), mask)


def test_untied_masked_lm_without_projector_is_an_error(
    make_tiny_distilbert_config, randomize_weights, hf_checkpoint
):
    config = make_tiny_distilbert_config(tie_word_embeddings=False)
    hf_model = hf_head("DistilBertForMaskedLM", config, randomize_weights, seed=12)
    folder = hf_checkpoint(hf_model, "safetensors", drop=("vocab_projector.weight",),
                           tokenizer=False)
    with pytest.raises(KeyError, match=r"vocab_projector\.weight"):
        DistilBertForMaskedLM.from_pretrained(folder)


def test_masked_lm_relu_activation(make_tiny_distilbert_config, randomize_weights, hf_checkpoint):
    config = make_tiny_distilbert_config(activation="relu")
    hf_model = hf_head("DistilBertForMaskedLM", config, randomize_weights, seed=13)
    model = DistilBertForMaskedLM.from_pretrained(hf_checkpoint(hf_model, tokenizer=False))
    ids, mask = inputs_for("DistilBertForMaskedLM")
    with torch.no_grad():
        ours = model(ids, mask)
    assert_logits_close(ours, reference_logits(hf_model, ids, mask), mask)


@pytest.mark.parametrize("name, dropped", [
    ("DistilBertForSequenceClassification", ("classifier.weight", "classifier.bias")),
    ("DistilBertForTokenClassification", ("classifier.weight",)),
    ("DistilBertForQuestionAnswering", ("qa_outputs.weight", "qa_outputs.bias")),
    ("DistilBertForMaskedLM", ("vocab_transform.bias", "vocab_layer_norm.weight")),
    ("DistilBertForMultipleChoice", ("pre_classifier.weight",)),
])
def test_missing_head_weights_are_listed_unless_fresh_head(name, dropped, tiny_heads,
                                                           hf_checkpoint):
    hf_model = tiny_heads[name]
    folder = hf_checkpoint(hf_model, "safetensors", drop=dropped, tokenizer=False)
    with pytest.raises(KeyError) as error:
        HEAD_CLASSES[name].from_pretrained(folder)
    for key in dropped:
        assert key in str(error.value)
    assert "fresh_head=True" in str(error.value)

    model = HEAD_CLASSES[name].from_pretrained(folder, fresh_head=True)
    # The encoder still matches; fresh biases are zero and kept weights are the checkpoint's.
    ids, mask = inputs_for("DistilBertModel")
    with torch.no_grad():
        hidden = model.distilbert(ids, mask)
        reference = hf_model.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_logits_close(hidden, reference, mask)
    hf_state = hf_model.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("distilbert.") or key not in hf_state:
            continue
        if key.endswith(dropped):  # write_checkpoint drops by suffix
            assert not key.endswith("bias") or not value.any(), key
        else:
            assert torch.equal(value, hf_state[key]), key


def test_num_labels_override_needs_fresh_head(tiny_heads, hf_checkpoint):
    folder = hf_checkpoint(tiny_heads["DistilBertForTokenClassification"], tokenizer=False)
    with pytest.raises(ValueError, match=r"classifier\.weight: checkpoint \(5, 32\) vs model"):
        DistilBertForTokenClassification.from_pretrained(folder, num_labels=3)
    model = DistilBertForTokenClassification.from_pretrained(folder, num_labels=3,
                                                             fresh_head=True)
    assert model.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    ids, mask = inputs_for("DistilBertForTokenClassification")
    assert model(ids, mask).shape == (*ids.shape, 3)
    with pytest.raises(ValueError, match="positive integer"):
        DistilBertForTokenClassification.from_pretrained(folder, num_labels=0)
    with pytest.raises(ValueError, match="has no labels"):
        DistilBertForQuestionAnswering.from_pretrained(folder, num_labels=2)


def test_label_count_comes_from_weights_when_config_names_none(tiny_heads, hf_checkpoint,
                                                               tmp_path):
    import shutil

    source = hf_checkpoint(tiny_heads["DistilBertForSequenceClassification"], tokenizer=False)
    for file in source.iterdir():
        shutil.copy(file, tmp_path / file.name)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("id2label"), raw.pop("label2id")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model = DistilBertForSequenceClassification.from_pretrained(tmp_path)
    assert model.num_labels == len(LABELS)
    assert model.id2label[4] == "LABEL_4"


@pytest.mark.parametrize("problem_type, expected", [
    (None, "single_label_classification"),
    ("multi_label_classification", "multi_label_classification"),
    ("regression", "regression"),
])
def test_problem_type_read_from_config(problem_type, expected, make_tiny_distilbert_config,
                                       randomize_weights, hf_checkpoint):
    config = label_config(make_tiny_distilbert_config, "DistilBertForSequenceClassification",
                          problem_type=problem_type)
    hf_model = hf_head("DistilBertForSequenceClassification", config, randomize_weights, 5)
    model = DistilBertForSequenceClassification.from_pretrained(
        hf_checkpoint(hf_model, tokenizer=False)
    )
    assert model.problem_type == expected


@pytest.mark.parametrize("name", ["BertForTokenClassification", "BertForQuestionAnswering"])
def test_bert_layout_token_heads(name, make_tiny_bert_config, randomize_weights, hf_checkpoint):
    config = make_tiny_bert_config(num_labels=2 if "Question" in name else 4)
    hf_model = hf_head(name, config, randomize_weights, seed=21)
    ours = HEAD_CLASSES[name.replace("Bert", "DistilBert")]
    model = ours.from_pretrained(hf_checkpoint(hf_model, "sharded-bin", tokenizer=False))
    ids, mask = inputs_for(name)
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    with torch.no_grad():
        mine = model(ids, mask, types)
    assert_logits_close(mine, reference_logits(hf_model, ids, mask, types), mask)


def test_bert_layout_is_refused_where_the_head_differs(make_tiny_bert_config, randomize_weights,
                                                       hf_checkpoint):
    hf_model = hf_head("BertForSequenceClassification", make_tiny_bert_config(),
                       randomize_weights, seed=22)
    with pytest.raises(ValueError, match="model_type 'distilbert'.*has 'bert'"):
        DistilBertForSequenceClassification.from_pretrained(
            hf_checkpoint(hf_model, tokenizer=False)
        )


def test_multiple_choice_input_shapes(tiny_heads, hf_checkpoint):
    folder = hf_checkpoint(tiny_heads["DistilBertForMultipleChoice"], tokenizer=False)
    model = DistilBertForMultipleChoice.from_pretrained(folder)
    ids, mask = inputs_for("DistilBertForMultipleChoice")
    with pytest.raises(ValueError, match=r"\(batch, choices, seq\)"):
        model(ids[0], mask[0])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, mask[..., :-1])


def test_dtype_and_tied_projector_survive_casting(tiny_heads, hf_checkpoint):
    folder = hf_checkpoint(tiny_heads["DistilBertForMaskedLM"], "safetensors",
                           drop=("vocab_projector.weight",), tokenizer=False)
    model = DistilBertForMaskedLM.from_pretrained(folder, dtype=torch.float64)
    assert model.dtype == torch.float64 and model.projector_is_tied
    ids, mask = inputs_for("DistilBertForMaskedLM")
    with torch.no_grad():
        ours = model(ids, mask)
    reference = reference_logits(tiny_heads["DistilBertForMaskedLM"], ids, mask)
    assert ours.dtype == torch.float64
    assert_logits_close(ours.float(), reference, mask)


# The Triton kernels keep fp32 (IEEE dots) but sum in another order than the CPU reference.
GPU_LOGITS_ATOL = 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(HEAD_CLASSES))
def test_head_on_cuda_with_triton_kernels(name, tiny_heads, hf_checkpoint):
    hf_model = tiny_heads[name]
    drop = ("vocab_projector.weight",) if name == "DistilBertForMaskedLM" else ()
    folder = hf_checkpoint(hf_model, "safetensors", drop=drop, tokenizer=False)
    model = HEAD_CLASSES[name].from_pretrained(folder, device="cuda", backend="triton")
    ids, mask = inputs_for(name)
    with torch.no_grad():
        ours = model(ids.cuda(), mask.cuda())
    ours = tuple(t.cpu() for t in ours) if isinstance(ours, tuple) else ours.cpu()
    reference = reference_logits(hf_model, ids, mask)
    assert_logits_close(ours, reference, mask, atol=GPU_LOGITS_ATOL)
