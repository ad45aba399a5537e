"""Checkpoint loading: every failure is a clear error naming the file, key or shape."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shlex
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from distilbert import DistilBertModel
from distilbert.engine import checkpoint


@pytest.fixture()
def tiny_state(tiny_distilbert_folder) -> dict[str, torch.Tensor]:
    """A fresh copy of the tiny checkpoint's tensors, free to edit."""
    return load_file(str(tiny_distilbert_folder / "model.safetensors"))


def folder_with(tmp_path, source, state=None, weights="model.safetensors"):
    """A checkpoint folder holding ``source``'s config.json and ``state`` as ``weights``."""
    folder = tmp_path / "ckpt"
    folder.mkdir(exist_ok=True)
    shutil.copy(source / "config.json", folder / "config.json")
    if state is not None:
        if weights.endswith(".safetensors"):
            save_file(state, str(folder / weights))
        else:
            torch.save(state, folder / weights)
    return folder


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-model"

    with pytest.raises(FileNotFoundError, match="no-such-model"):
        DistilBertModel.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="checkpoint folder does not exist"):
        checkpoint.find_checkpoint_files(missing)


def test_missing_weights_file_lists_what_was_expected(tmp_path, tiny_distilbert_folder):
    folder = folder_with(tmp_path, tiny_distilbert_folder)

    with pytest.raises(FileNotFoundError, match=r"no weights in .*model\.safetensors.*index\.json"):
        DistilBertModel.from_pretrained(folder)


@pytest.mark.parametrize("fmt", ["sharded-safetensors", "sharded-bin"])
def test_missing_shard_is_named(fmt, tmp_path, hf_checkpoint, tiny_distilbert_hf):
    folder = tmp_path / "ckpt"
    shutil.copytree(hf_checkpoint(tiny_distilbert_hf, fmt, tokenizer=False), folder)
    (shard,) = folder.glob("*-00002-of-00003.*")
    shard.unlink()

    with pytest.raises(FileNotFoundError, match=rf"shards .* missing: .*{shard.name}"):
        DistilBertModel.from_pretrained(folder)


@pytest.mark.parametrize(
    "index_text",
    ["{ broken", json.dumps({"metadata": {}}), json.dumps({"weight_map": ["a", "b"]}),
     json.dumps([1, 2])],
    ids=["not-json", "no-weight-map", "weight-map-not-object", "not-object"],
)
def test_bad_index_is_named(index_text, tmp_path, tiny_distilbert_folder):
    folder = folder_with(tmp_path, tiny_distilbert_folder)
    (folder / "model.safetensors.index.json").write_text(index_text)

    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json is not a valid shard"):
        DistilBertModel.from_pretrained(folder)


def test_missing_encoder_weights_are_listed(tmp_path, tiny_distilbert_folder, tiny_state):
    del tiny_state["transformer.layer.1.ffn.lin2.weight"]
    del tiny_state["embeddings.LayerNorm.bias"]
    folder = folder_with(tmp_path, tiny_distilbert_folder, tiny_state)

    with pytest.raises(KeyError) as error:
        DistilBertModel.from_pretrained(folder)

    message = str(error.value)
    assert "lacks 2 encoder weight(s)" in message
    assert "transformer.layer.1.ffn.lin2.weight" in message
    assert "embeddings.LayerNorm.bias" in message


def test_missing_attention_projection_is_named_as_in_the_checkpoint(
    tmp_path, tiny_distilbert_folder, tiny_state
):
    del tiny_state["transformer.layer.0.attention.k_lin.bias"]
    folder = folder_with(tmp_path, tiny_distilbert_folder, tiny_state)

    with pytest.raises(KeyError, match=r"lacks 1 encoder weight\(s\): "
                                       r"transformer\.layer\.0\.attention\.k_lin\.bias"):
        DistilBertModel.from_pretrained(folder)


def test_head_only_checkpoint_is_not_silently_random(tmp_path, tiny_distilbert_folder):
    folder = folder_with(tmp_path, tiny_distilbert_folder,
                         {"classifier.weight": torch.zeros(2, 32)})

    with pytest.raises(KeyError, match=r"lacks \d+ encoder weight\(s\)"):
        DistilBertModel.from_pretrained(folder)


class CodeRunningPayload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_bin_pickle_that_runs_code_is_refused(tmp_path, tiny_distilbert_folder, tiny_state):
    marker = tmp_path / "code-ran"
    tiny_state["embeddings.word_embeddings.weight"] = CodeRunningPayload(marker)
    folder = folder_with(tmp_path, tiny_distilbert_folder, tiny_state, "pytorch_model.bin")

    with pytest.raises(ValueError, match=r"refused to load .*pytorch_model\.bin"):
        DistilBertModel.from_pretrained(folder)

    assert not marker.exists(), "the checkpoint's code ran"
    # The payload is real: a plain unpickler runs it.
    with open(folder / "pytorch_model.bin", "rb") as handle:
        torch.load(handle, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bin_with_plain_pickle_is_refused_too(tmp_path, tiny_distilbert_folder):
    marker = tmp_path / "code-ran"
    folder = folder_with(tmp_path, tiny_distilbert_folder)
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weights": CodeRunningPayload(marker)}, handle)

    with pytest.raises(ValueError, match=r"pytorch_model\.bin"):
        DistilBertModel.from_pretrained(folder)

    assert not marker.exists()


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_weights_file_is_named(weights, tmp_path, tiny_distilbert_folder):
    folder = folder_with(tmp_path, tiny_distilbert_folder)
    (folder / weights).write_bytes(b"\x00\x01 these bytes are not a checkpoint")

    with pytest.raises(ValueError, match=rf"(cannot read|refused to load) .*{weights}"):
        DistilBertModel.from_pretrained(folder)


def test_bin_that_is_not_a_state_dict_is_named(tmp_path, tiny_distilbert_folder):
    folder = folder_with(tmp_path, tiny_distilbert_folder, [torch.zeros(2)], "pytorch_model.bin")

    with pytest.raises(ValueError, match=r"pytorch_model\.bin does not hold a state dict"):
        DistilBertModel.from_pretrained(folder)


def test_bin_with_nested_state_dict_loads(tmp_path, tiny_distilbert_folder, tiny_state):
    folder = folder_with(tmp_path, tiny_distilbert_folder, {"state_dict": tiny_state},
                         "pytorch_model.bin")

    model = DistilBertModel.from_pretrained(folder)

    assert torch.equal(model.embeddings.word_embeddings.weight,
                       tiny_state["embeddings.word_embeddings.weight"])


def test_wrong_shapes_are_reported(tmp_path, tiny_distilbert_folder, tiny_state):
    tiny_state["transformer.layer.1.ffn.lin1.weight"] = torch.zeros(40, 32)
    tiny_state["transformer.layer.1.ffn.lin1.bias"] = torch.zeros(40)
    folder = folder_with(tmp_path, tiny_distilbert_folder, tiny_state)

    with pytest.raises(ValueError) as error:
        DistilBertModel.from_pretrained(folder)

    message = str(error.value)
    assert "transformer.layer.1.ffn.lin1.weight: checkpoint (40, 32) vs model (37, 32)" in message
    assert "transformer.layer.1.ffn.lin1.bias: checkpoint (40,) vs model (37,)" in message


def test_checkpoint_of_another_size_is_reported(tmp_path, tiny_distilbert_folder, tiny_state):
    config = json.loads((tiny_distilbert_folder / "config.json").read_text())
    config["hidden_dim"] = 64
    folder = folder_with(tmp_path, tiny_distilbert_folder, tiny_state)
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match=r"ffn\.lin1\.weight: checkpoint \(37, 32\) vs model "
                                         r"\(64, 32\)"):
        DistilBertModel.from_pretrained(folder)


def test_one_attention_projection_of_the_wrong_shape_is_named(
    tmp_path, tiny_distilbert_folder, tiny_state
):
    tiny_state["transformer.layer.0.attention.v_lin.weight"] = torch.zeros(32, 16)
    folder = folder_with(tmp_path, tiny_distilbert_folder, tiny_state)

    with pytest.raises(ValueError, match=r"transformer\.layer\.0\.attention\.v_lin\.weight: "
                                         r"\(32, 16\)"):
        DistilBertModel.from_pretrained(folder)


def test_unexpected_encoder_keys_are_logged(tmp_path, tiny_distilbert_folder, tiny_state,
                                            caplog):
    tiny_state["transformer.layer.0.attention.rotary.weight"] = torch.zeros(4)
    tiny_state["distilbert.embeddings.extra_table.weight"] = torch.zeros(3, 32)
    folder = folder_with(tmp_path, tiny_distilbert_folder, tiny_state)

    with caplog.at_level(logging.WARNING, logger="distilbert.engine.checkpoint"):
        model = DistilBertModel.from_pretrained(folder)

    logged = caplog.text
    assert "2 unexpected encoder key(s)" in logged
    assert "transformer.layer.0.attention.rotary.weight" in logged
    assert "embeddings.extra_table.weight" in logged
    assert torch.equal(model.embeddings.word_embeddings.weight,
                       tiny_state["embeddings.word_embeddings.weight"])


def test_head_weights_ignored_by_the_base_model_are_logged(
    tmp_path, tiny_distilbert_folder, tiny_state, caplog
):
    tiny_state["pre_classifier.weight"] = torch.zeros(32, 32)
    tiny_state["classifier.bias"] = torch.zeros(2)
    folder = folder_with(tmp_path, tiny_distilbert_folder, tiny_state)

    with caplog.at_level(logging.INFO, logger="distilbert.engine.model"):
        DistilBertModel.from_pretrained(folder)

    assert "2 head weight(s)" in caplog.text
    assert "classifier.bias" in caplog.text


def test_old_layer_norm_names_and_position_ids_are_accepted(tmp_path, tiny_distilbert_folder,
                                                            tiny_state, caplog):
    renamed = {}
    for key, tensor in tiny_state.items():
        if "LayerNorm" in key or "layer_norm" in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        renamed["distilbert." + key] = tensor
    renamed["distilbert.embeddings.position_ids"] = torch.arange(64)[None]
    folder = folder_with(tmp_path, tiny_distilbert_folder, renamed)

    with caplog.at_level(logging.WARNING):
        model = DistilBertModel.from_pretrained(folder)

    assert "unexpected" not in caplog.text
    assert torch.equal(model.embeddings.LayerNorm.bias, tiny_state["embeddings.LayerNorm.bias"])


def test_read_checkpoint_merges_shards(hf_checkpoint, tiny_distilbert_hf):
    single = checkpoint.read_checkpoint(hf_checkpoint(tiny_distilbert_hf, "safetensors"))
    sharded = checkpoint.read_checkpoint(
        hf_checkpoint(tiny_distilbert_hf, "sharded-bin", tokenizer=False)
    )

    assert sorted(single) == sorted(sharded)
    assert all(torch.equal(single[key], sharded[key]) for key in single)
