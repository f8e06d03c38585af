"""LoRA: what trains, what the factor count is, and that merged weights predict the same."""

import pytest
import torch
from helpers import TINY_MODEL
from torch import nn

from gpt_classifier.model.classifier import Reading
from gpt_classifier.model.finetune import LoRALinear, apply_policy, count_parameters, merge_lora
from gpt_classifier.model.gpt import GPTConfig, GPTModel
from gpt_classifier.model.packed import classify
from gpt_classifier.training.lightning_module import GPTClassifier


def tiny_lora_model(rank=4, alpha=8.0):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2, n_layers=2))
    model.out_head = nn.Linear(32, 3)
    apply_policy(model, "lora", lora_rank=rank, lora_alpha=alpha)
    return model


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_lora_trains_only_factors_and_head(rank):
    model = tiny_lora_model(rank)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(name.endswith((".A", ".B")) or name.startswith("out_head.") for name in trainable)
    assert {"out_head.weight", "out_head.bias"} <= trainable
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 2 * 6  # q, k, v, out_proj and the two MLP layers of each block
    assert all(not m.base.weight.requires_grad for m in wrapped)
    dim = 32  # per block: four D->D layers, D->4D and 4D->D, each with A [in, r] and B [r, out]
    per_block = rank * (4 * 2 * dim + 2 * (dim + 4 * dim))
    assert count_parameters(model)[0] == 2 * per_block + (dim * 3 + 3)


def test_lora_starts_as_the_base_model():
    torch.manual_seed(1)
    base = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=2, n_layers=2))
    ids = torch.randint(0, 50257, (2, 10))
    expected = base(ids)
    apply_policy(base, "lora", lora_rank=4, lora_alpha=8.0)
    assert torch.equal(base(ids), expected)  # B = 0


def test_merged_weights_predict_the_same():
    model = tiny_lora_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, labels = torch.randint(0, 50257, (4, 12)), torch.tensor([0, 1, 2, 1])
    lengths = torch.tensor([12, 7, 3, 9])
    reading = Reading(position="last")
    read = {"read_pos": reading.read_positions(lengths, 12), "prefix": reading.needed_lengths(lengths, 12)}
    for _ in range(3):  # make B non-zero
        loss = nn.functional.cross_entropy(classify(model, model.embed(ids), **read), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        before = classify(model, model.embed(ids), **read)
        merge_lora(model)
        after = classify(model, model.embed(ids), **read)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (before - after).abs().max() < 1e-5


def test_state_dict_roundtrip_then_merge():
    module = GPTClassifier(
        TINY_MODEL, ["a", "b"], finetune={"policy": "lora", "lora_rank": 2, "lora_alpha": 4}
    )
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LoRALinear):
                m.B.normal_()
    ids, lengths = torch.randint(0, 50257, (3, 8)), torch.tensor([8, 4, 2])
    expected = module(ids, lengths)
    state = GPTClassifier(
        TINY_MODEL, ["a", "b"], finetune={"policy": "lora", "lora_rank": 2, "lora_alpha": 4}
    )
    state.load_state_dict(module.state_dict())
    merge_lora(state.classifier.model)
    assert (state(ids, lengths) - expected).abs().max() < 1e-5


def test_bad_rank_is_a_clear_error():
    from gpt_classifier.errors import GPTClassifierError

    with pytest.raises(GPTClassifierError, match="lora_rank"):
        tiny_lora_model(rank=0)
