"""DistilBertConfig: both key families, validation errors naming the values, file errors."""

from __future__ import annotations

import json

import pytest

from distilbert.engine.config import DistilBertConfig


def write_config(folder, raw: dict):
    """Write ``raw`` as ``folder/config.json`` and return the folder."""
    (folder / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    return folder


def test_distilbert_keys_from_a_transformers_config(tmp_path, make_tiny_distilbert_config):
    make_tiny_distilbert_config(
        n_heads=2, hidden_dim=50, activation="relu", sinusoidal_pos_embds=True, pad_token_id=3
    ).save_pretrained(tmp_path)

    config = DistilBertConfig.from_pretrained(tmp_path)

    assert (config.dim, config.n_layers, config.n_heads, config.hidden_dim) == (32, 2, 2, 50)
    assert config.activation == "relu"
    assert config.sinusoidal_pos_embds is True
    assert config.max_position_embeddings == 64
    assert (config.vocab_size, config.pad_token_id) == (30522, 3)
    assert config.layer_norm_eps == 1e-12
    assert config.type_vocab_size == 0, "DistilBERT has no token-type table"
    assert config.head_dim == 16


def test_bert_keys_from_a_transformers_config(tmp_path, make_tiny_bert_config):
    make_tiny_bert_config(type_vocab_size=3).save_pretrained(tmp_path)

    config = DistilBertConfig.from_pretrained(tmp_path / "config.json")

    assert config.model_type == "bert"
    assert (config.dim, config.n_layers, config.n_heads, config.hidden_dim) == (24, 2, 3, 40)
    assert config.activation == "gelu"
    assert config.layer_norm_eps == 1e-3
    assert config.type_vocab_size == 3


def test_builtin_model_config(builtin_model_folder):
    config = DistilBertConfig.from_pretrained(builtin_model_folder)

    assert (config.model_type, config.dim, config.n_layers, config.n_heads) == ("bert", 384, 6, 12)
    assert (config.hidden_dim, config.type_vocab_size) == (1536, 2)


def test_bert_config_without_token_types_gets_two():
    config = DistilBertConfig.from_dict({"model_type": "bert", "hidden_size": 64,
                                         "num_attention_heads": 4})
    assert config.type_vocab_size == 2


def test_unknown_activation_is_named(tmp_path):
    write_config(tmp_path, {"model_type": "distilbert", "activation": "swish"})

    with pytest.raises(ValueError, match=r"activation 'swish'.*gelu"):
        DistilBertConfig.from_pretrained(tmp_path)


def test_unknown_bert_activation_is_named():
    with pytest.raises(ValueError, match=r"activation 'gelu_new'"):
        DistilBertConfig.from_dict({"model_type": "bert", "hidden_act": "gelu_new"})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"dim": 100, "n_heads": 12}, r"dim 100 is not divisible by n_heads 12"),
        ({"model_type": "bert", "hidden_size": 30, "num_attention_heads": 4},
         r"dim 30 is not divisible by n_heads 4"),
    ],
)
def test_dim_not_divisible_by_heads_names_both(raw, message):
    with pytest.raises(ValueError, match=message):
        DistilBertConfig.from_dict(raw)


@pytest.mark.parametrize("key, value", [("n_layers", 0), ("dim", -8), ("vocab_size", "big")])
def test_non_positive_sizes_are_named(key, value):
    with pytest.raises(ValueError, match=rf"{key} must be a positive integer, got {value!r}"):
        DistilBertConfig.from_dict({key: value})


def test_unsupported_model_type_is_named():
    with pytest.raises(ValueError, match=r"model_type 'roberta'"):
        DistilBertConfig.from_dict({"model_type": "roberta"})


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DistilBertConfig.from_pretrained(tmp_path / "nowhere")


def test_folder_without_config_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config\.json in"):
        DistilBertConfig.from_pretrained(tmp_path)


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{ not json", encoding="utf-8")

    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        DistilBertConfig.from_pretrained(tmp_path)


def test_config_that_is_not_an_object_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]", encoding="utf-8")

    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object, got list"):
        DistilBertConfig.from_pretrained(tmp_path)


def test_round_trip_through_to_dict():
    config = DistilBertConfig.from_dict(
        {"dim": 64, "n_heads": 4, "id2label": {"0": "neg", "1": "pos"}, "custom_key": 7}
    )

    again = DistilBertConfig.from_dict(config.to_dict())

    assert again == config
    assert again.label2id == {"neg": 0, "pos": 1}
    assert again.extra["custom_key"] == 7
