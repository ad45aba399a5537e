"""Our DistilBertModel against transformers in float32 on CPU, loaded from every layout.

Hidden states must agree within 1e-5 on real tokens (padding positions are not compared:
they carry no meaning and Hugging Face computes them differently). Every test runs twice:
under ``no_grad`` (plain PyTorch projections) and under ``inference_mode``, where the CPU
projections are fused oneDNN GEMMs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from distilbert import DistilBertModel
from distilbert.kernels.dispatch import use_onednn
from tests.checkpoints import FORMATS, write_checkpoint

HIDDEN_ATOL = 1e-5
FLOAT64_ATOL = 1e-10
# Base-size checkpoints in every format, each with and without the ``distilbert.`` prefix.
BASE_CASES = [(fmt, prefix) for fmt in FORMATS for prefix in (None, "distilbert.")]


def padded_batch(seq: int, seed: int = 0, vocab: int = 30522):
    """Ids and a mask with four rows: all real, right-padded, left-padded, scattered."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (4, seq), generator=generator)
    mask = torch.ones(4, seq, dtype=torch.int64)
    mask[1, seq - seq // 3:] = 0
    mask[2, : seq // 2] = 0
    mask[3, 1::3] = 0
    ids[mask == 0] = 0
    return ids, mask


def random_token_types(mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random 0/1 token types on real tokens, 0 on padding."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, mask.shape, generator=generator) * (mask != 0)


def assert_close_on_real_tokens(ours, reference, mask, atol=HIDDEN_ATOL):
    """Max abs difference over real tokens at most ``atol``; says where it is not."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    assert torch.isfinite(ours).all(), "non-finite values in our hidden states"
    real = mask.bool()
    diff = (ours.double() - reference.double()).abs()[real]
    worst = diff.max().item()
    if worst > atol:
        bad = ((ours.double() - reference.double()).abs() > atol) & real[..., None]
        where = bad.nonzero()[:5].tolist()
        pytest.fail(f"max abs diff {worst:.3g} > {atol:g} at {int(bad.sum())} elements, "
                    f"first (row, token, channel): {where}")


@pytest.fixture(autouse=True, params=["plain", "fused"])
def projection_path(request):
    """Run the test with plain projections, then inside inference mode with fused ones."""
    if request.param == "plain":
        with use_onednn(False):
            yield request.param
    else:
        with torch.inference_mode():
            yield request.param


@torch.no_grad()
def hf_hidden(hf_model, ids, mask, token_type_ids=None):
    """Last hidden state of a transformers model."""
    kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    return hf_model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state


@torch.no_grad()
def our_hidden(model, ids, mask, token_type_ids=None):
    """Last hidden state of our model."""
    return model(ids, mask, token_type_ids)


@pytest.fixture(scope="module")
def tiny_batch():
    """Ids and mask, 4 rows of 13 tokens in every padding layout."""
    return padded_batch(seq=13, seed=0)


@pytest.fixture(scope="module")
def tiny_reference(tiny_distilbert_hf, tiny_batch):
    """transformers' hidden states for ``tiny_batch``."""
    return hf_hidden(tiny_distilbert_hf, *tiny_batch)


@pytest.fixture(scope="module")
def tiny_model(tiny_distilbert_folder):
    """Our model loaded from the tiny safetensors checkpoint."""
    return DistilBertModel.from_pretrained(tiny_distilbert_folder)


@pytest.mark.parametrize("prefix", [None, "distilbert."], ids=["bare", "prefixed"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_distilbert_every_layout(fmt, prefix, hf_checkpoint, tiny_distilbert_hf,
                                      tiny_batch, tiny_reference):
    folder = hf_checkpoint(tiny_distilbert_hf, fmt, prefix, tokenizer=False)

    model = DistilBertModel.from_pretrained(folder)

    assert not model.training
    assert_close_on_real_tokens(our_hidden(model, *tiny_batch), tiny_reference, tiny_batch[1])


@pytest.mark.slow
@pytest.mark.parametrize("fmt, prefix", BASE_CASES,
                         ids=[f"{f}-{'prefixed' if p else 'bare'}" for f, p in BASE_CASES])
def test_base_size_distilbert_every_format(fmt, prefix, hf_checkpoint, base_distilbert_hf):
    folder = hf_checkpoint(base_distilbert_hf, fmt, prefix, tokenizer=False)
    ids, mask = padded_batch(seq=12, seed=5)
    ids, mask = ids[1:], mask[1:]  # batch 3: right-, left- and scattered padding

    model = DistilBertModel.from_pretrained(folder)

    config = model.config
    assert (config.dim, config.n_layers, config.n_heads, config.hidden_dim) == (768, 6, 12, 3072)
    reference = hf_hidden(base_distilbert_hf, ids, mask)
    assert_close_on_real_tokens(our_hidden(model, ids, mask), reference, mask)


@pytest.mark.parametrize("prefix", [None, "bert."], ids=["bare", "prefixed"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_bert_layout_with_token_types(fmt, prefix, hf_checkpoint, tiny_bert_hf,
                                           tiny_batch):
    folder = hf_checkpoint(tiny_bert_hf, fmt, prefix, tokenizer=False)
    ids, mask = tiny_batch
    types = random_token_types(mask)

    model = DistilBertModel.from_pretrained(folder)

    assert model.config.layer_norm_eps == 1e-3
    reference = hf_hidden(tiny_bert_hf, ids, mask, types)
    assert_close_on_real_tokens(our_hidden(model, ids, mask, types), reference, mask)


def test_bert_layout_without_token_types_uses_type_zero(tiny_bert_folder, tiny_bert_hf,
                                                        tiny_batch):
    model = DistilBertModel.from_pretrained(tiny_bert_folder)

    reference = hf_hidden(tiny_bert_hf, *tiny_batch)
    assert_close_on_real_tokens(our_hidden(model, *tiny_batch), reference, tiny_batch[1])


def test_distilbert_ignores_token_types(tiny_model, tiny_batch):
    ids, mask = tiny_batch

    with_types = our_hidden(tiny_model, ids, mask, random_token_types(mask))

    assert torch.equal(with_types, our_hidden(tiny_model, ids, mask))


@pytest.mark.parametrize(
    "overrides",
    [{"activation": "relu"}, {"sinusoidal_pos_embds": True}, {"n_heads": 1, "hidden_dim": 8}],
    ids=["relu", "sinusoidal", "one-head"],
)
def test_tiny_variants(overrides, tmp_path, make_tiny_distilbert_config, randomize_weights,
                       tiny_batch):
    from transformers import DistilBertModel as HFDistilBertModel

    hf_model = randomize_weights(HFDistilBertModel(make_tiny_distilbert_config(**overrides)), 7)
    # A sinusoidal table is not stored: the loader must rebuild it.
    write_checkpoint(hf_model, tmp_path, "safetensors", drop=("position_embeddings.weight",)
                     if overrides.get("sinusoidal_pos_embds") else ())

    model = DistilBertModel.from_pretrained(tmp_path)

    reference = hf_hidden(hf_model, *tiny_batch)
    assert_close_on_real_tokens(our_hidden(model, *tiny_batch), reference, tiny_batch[1])


@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.int32, torch.bool, torch.float32])
def test_mask_dtypes(mask_dtype, tiny_model, tiny_reference, tiny_batch):
    ids, mask = tiny_batch

    ours = our_hidden(tiny_model, ids, mask.to(mask_dtype))

    assert_close_on_real_tokens(ours, tiny_reference, mask)


def test_no_mask_means_all_real(tiny_model, tiny_distilbert_hf):
    ids = padded_batch(seq=9, seed=3)[0][:1]

    reference = tiny_distilbert_hf(input_ids=ids).last_hidden_state.detach()

    assert_close_on_real_tokens(our_hidden(tiny_model, ids, None), reference,
                                torch.ones_like(ids))


def test_all_padding_row_is_finite(tiny_model, tiny_distilbert_hf, tiny_batch):
    ids, mask = tiny_batch
    mask = mask.clone()
    mask[1] = 0

    ours = our_hidden(tiny_model, ids, mask)

    assert torch.isfinite(ours).all()
    reference = hf_hidden(tiny_distilbert_hf, ids, mask)
    keep = torch.ones_like(mask)
    keep[1] = 0
    assert_close_on_real_tokens(ours, reference, mask * keep)


def test_input_longer_than_positions_names_the_limit(tiny_model):
    ids = torch.ones(1, 65, dtype=torch.int64)

    with pytest.raises(ValueError, match=r"sequence length 65 .*max_position_embeddings \(64\)"):
        tiny_model(ids, torch.ones_like(ids))


def test_input_at_the_limit_runs(tiny_model, tiny_distilbert_hf):
    ids, mask = padded_batch(seq=64, seed=4)

    reference = hf_hidden(tiny_distilbert_hf, ids, mask)

    assert_close_on_real_tokens(our_hidden(tiny_model, ids, mask), reference, mask)


@pytest.mark.parametrize(
    "ids_shape, mask_shape, message",
    [((5,), None, r"input_ids must be \(batch, seq\), got shape \(5,\)"),
     ((2, 5), (2, 4), r"attention_mask shape \(2, 4\) does not match input_ids shape \(2, 5\)")],
)
def test_bad_input_shapes_are_named(ids_shape, mask_shape, message, tiny_model):
    ids = torch.ones(ids_shape, dtype=torch.int64)
    mask = None if mask_shape is None else torch.ones(mask_shape, dtype=torch.int64)

    with pytest.raises(ValueError, match=message):
        tiny_model(ids, mask)


def test_several_shapes_in_a_row_on_one_model(tiny_model, tiny_distilbert_hf):
    for step, (batch, seq) in enumerate([(1, 1), (3, 7), (2, 64), (5, 13), (1, 2), (4, 33)]):
        generator = torch.Generator().manual_seed(step)
        ids = torch.randint(1000, 30522, (batch, seq), generator=generator)
        lengths = torch.randint(1, seq + 1, (batch,), generator=generator)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()

        reference = hf_hidden(tiny_distilbert_hf, ids, mask)

        assert_close_on_real_tokens(our_hidden(tiny_model, ids, mask), reference, mask)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_twice_transformers_error(dtype, tiny_model, tiny_distilbert_hf,
                                                       tiny_batch, tiny_reference):
    ids, mask = tiny_batch
    real = mask.bool()
    low = copy.deepcopy(tiny_model).half() if dtype == torch.float16 else \
        copy.deepcopy(tiny_model).to(dtype)
    hf_low = copy.deepcopy(tiny_distilbert_hf).to(dtype)

    ours = our_hidden(low, ids, mask)

    assert low.dtype == dtype and ours.dtype == dtype
    our_error = (ours.double() - tiny_reference.double()).abs()[real].max().item()
    hf_error = (hf_hidden(hf_low, ids, mask).double() - tiny_reference.double()).abs()[real]
    assert our_error <= 2 * hf_error.max().item() + 1e-3


def test_float64_matches_transformers_float64(tiny_model, tiny_distilbert_hf, tiny_batch):
    ids, mask = tiny_batch
    model = copy.deepcopy(tiny_model).to(torch.float64)

    reference = hf_hidden(copy.deepcopy(tiny_distilbert_hf).to(torch.float64), ids, mask)

    assert model.dtype == torch.float64
    assert_close_on_real_tokens(our_hidden(model, ids, mask), reference, mask, FLOAT64_ATOL)


def test_from_pretrained_dtype_and_device(tiny_distilbert_folder, tiny_batch, tiny_reference):
    model = DistilBertModel.from_pretrained(tiny_distilbert_folder, dtype=torch.float64,
                                            device="cpu")

    assert (model.dtype, model.device) == (torch.float64, torch.device("cpu"))
    ours = our_hidden(model, *tiny_batch)
    assert_close_on_real_tokens(ours.float(), tiny_reference, tiny_batch[1])
