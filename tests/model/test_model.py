"""The book's GPTModel: shapes, parameter count, the causal mask, and what it refuses."""

import pytest
import torch
from tiny_gpt import CONTEXT, PAD, VOCAB, max_diff, padded_batch, tiny_model

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import Reading
from gpt_classifier.model.gpt import GPTConfig, GPTModel


def test_shapes():
    ids, _ = padded_batch()
    lm = tiny_model()
    assert lm.embed(ids).shape == (4, 12, 32)
    assert lm(ids).shape == (4, 12, VOCAB)
    clf = tiny_model(out_dim=2)
    assert clf(ids).shape == (4, 12, 2)
    assert clf(ids)[:, -1, :].shape == (4, 2)  # the chapter's classifier output


def test_state_dict_keys_are_the_books():
    """Checkpoints and the weight loaders rely on these names."""
    model = tiny_model(out_dim=2)
    keys = set(model.state_dict())
    assert {"tok_emb.weight", "pos_emb.weight", "final_norm.weight", "final_norm.bias"} <= keys
    assert "out_head.weight" in keys and "out_head.bias" not in keys
    block = sorted(k.removeprefix("trf_blocks.0.") for k in keys if k.startswith("trf_blocks.0."))
    assert block == sorted(
        [f"att.{w}.{p}" for w in ("W_query", "W_key", "W_value", "out_proj") for p in ("weight", "bias")]
        + [f"ff.layers.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
        + [f"norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    )
    assert len(keys) == 4 + 16 * 3 + 1


def test_gpt2_small_parameter_count():
    with torch.device("meta"):
        model = GPTModel(GPTConfig())
    total = sum(p.numel() for p in model.parameters())
    assert total == 163_037_184
    assert total - model.out_head.weight.numel() == 124_439_808  # GPT-2 small, head tied to tok_emb


def test_read_positions():
    lengths = torch.tensor([12, 7, 1, 4])
    assert Reading(position="last").read_positions(lengths, 12).tolist() == [11, 11, 11, 11]
    assert Reading(position="first").read_positions(lengths, 12).tolist() == [0, 0, 0, 0]
    assert Reading(position="flexible").read_positions(lengths, 12).tolist() == [11, 6, 0, 3]
    with pytest.raises(GPTClassifierError, match="position='middle' is unknown"):
        Reading(position="middle")


def test_causal_mask():
    ids, _ = padded_batch()
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % PAD
    with torch.no_grad():
        causal = tiny_model(causal=True)
        before, after = causal(ids), causal(changed)
        assert max_diff(before[:, :6], after[:, :6]) <= 1e-6  # earlier positions cannot see token 6
        assert (before[:, 6:] - after[:, 6:]).abs().amax(dim=-1).min() > 1e-4  # later ones all do
        bidirectional = tiny_model(causal=False)
        before, after = bidirectional(ids), bidirectional(changed)
        assert (before - after).abs().amax(dim=-1).min() > 1e-4  # every position sees token 6


def test_errors():
    with pytest.raises(ValueError, match="not divisible"):
        GPTModel(GPTConfig(vocab_size=10, context_length=8, emb_dim=30, n_heads=4, n_layers=1))
    model = tiny_model()
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, CONTEXT + 1, dtype=torch.long))
    assert model(torch.zeros(1, CONTEXT, dtype=torch.long)).shape == (1, CONTEXT, VOCAB)
