"""Trainable-layer policies: which parameters learn, and that real optimizer steps leave the rest alone."""

from functools import partial

import pytest
import torch
from helpers import TINY_MODEL, quiet_trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from gpt_classifier.data.sms import SpamDataModule
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.finetune import apply_policy, count_parameters, first_trainable_block
from gpt_classifier.model.gpt import GPTConfig, GPTModel
from gpt_classifier.training.lightning_module import GPTClassifier

N_LAYERS = 3
BLOCK_PARAMS = [
    "att.W_query.weight",
    "att.W_query.bias",
    "att.W_key.weight",
    "att.W_key.bias",
    "att.W_value.weight",
    "att.W_value.bias",
    "att.out_proj.weight",
    "att.out_proj.bias",
    "ff.layers.0.weight",
    "ff.layers.0.bias",
    "ff.layers.2.weight",
    "ff.layers.2.bias",
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
]
LINEARS = ["att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2"]
HEAD = {"out_head.weight", "out_head.bias"}
FINAL_NORM = {"final_norm.weight", "final_norm.bias"}
# (policy, last_n_blocks, number of trained blocks); `all` also trains the embeddings.
CASES = [
    ("last_layer", None, 0),
    ("last_block", None, 1),
    ("last_two_blocks", None, 2),
    *[("last_n_blocks", k, k) for k in range(N_LAYERS + 1)],
    ("all", None, N_LAYERS),
    ("lora", None, N_LAYERS),
]


def classifier_model(n_layers=N_LAYERS, num_classes=2):
    """A tiny GPTModel whose language-model head was replaced by a classifier, as GPTClassifier does."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=101, context_length=16, emb_dim=8, n_heads=2, n_layers=n_layers)
    model = GPTModel(cfg)
    model.out_head = nn.Linear(cfg.emb_dim, num_classes)
    return model


def block_names(index):
    return {f"trf_blocks.{index}.{name}" for name in BLOCK_PARAMS}


def expected_trainable(model, policy, blocks):
    """Names of the parameters `policy` trains: the head, and final_norm + the last `blocks` blocks."""
    if policy == "all":
        return {name for name, _ in model.named_parameters()}
    n_layers = len(model.trf_blocks)
    names = set(HEAD)
    if policy == "lora":  # the low-rank factors of every linear layer in every block
        return names | {f"trf_blocks.{i}.{lin}.{f}" for i in range(n_layers) for lin in LINEARS for f in "AB"}
    if blocks > 0:
        names |= FINAL_NORM
        for index in range(n_layers - blocks, n_layers):
            names |= block_names(index)
    return names


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_block_parameter_names_are_complete():
    """The expectation below lists every parameter of a block (so it cannot miss a trainable one)."""
    model = classifier_model()
    names = {name for name, _ in model.named_parameters()}
    assert names == {"tok_emb.weight", "pos_emb.weight"} | FINAL_NORM | HEAD | set().union(
        *(block_names(i) for i in range(N_LAYERS))
    )


@pytest.mark.parametrize(("policy", "k", "blocks"), CASES)
def test_policy_trains_exactly_the_expected_parameters(policy, k, blocks):
    model = classifier_model()
    model.requires_grad_(policy != "all")  # a policy must set every flag, whatever it finds
    apply_policy(model, policy, k)
    assert trainable_names(model) == expected_trainable(model, policy, blocks)


@pytest.mark.parametrize(("policy", "k", "blocks"), CASES)
def test_count_parameters_and_first_trainable_block(policy, k, blocks):
    model = classifier_model()
    apply_policy(model, policy, k)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_parameters(model) == (trainable, total)
    per_block = sum(p.numel() for p in model.trf_blocks[0].parameters())
    head = 8 * 2 + 2
    if policy == "all":
        assert trainable == total
        assert first_trainable_block(model) == 0
    elif policy == "lora":  # rank 16 factors: A [in, 16] and B [16, out] per linear layer
        lora = N_LAYERS * 16 * (4 * (8 + 8) + (8 + 32) + (32 + 8))
        assert trainable == head + lora
        assert total == trainable + sum(p.numel() for p in classifier_model().parameters()) - head
        assert first_trainable_block(model) == 0
    else:
        assert trainable == head + (blocks > 0) * 2 * 8 + blocks * per_block
        assert first_trainable_block(model) == N_LAYERS - blocks


def test_count_parameters_counts_tied_weights_once():
    model = classifier_model()
    model.out_head = nn.Linear(8, 101, bias=False)
    model.out_head.weight = model.tok_emb.weight  # weight tying, as in the original GPT-2
    apply_policy(model, "last_layer")
    trainable, total = count_parameters(model)
    assert total == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert total < sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert trainable == 101 * 8


def test_first_trainable_block_sees_trainable_embeddings():
    model = classifier_model()
    apply_policy(model, "last_block")
    model.pos_emb.requires_grad_(True)
    assert first_trainable_block(model) == 0


@pytest.mark.parametrize(
    ("policy", "k", "match"),
    [
        ("nope", None, "finetune.policy='nope' is unknown"),
        ("last_n_blocks", None, "finetune.last_n_blocks=None"),
        ("last_n_blocks", -1, "finetune.last_n_blocks=-1"),
        ("last_n_blocks", N_LAYERS + 1, f"finetune.last_n_blocks={N_LAYERS + 1}"),
    ],
)
def test_bad_policy_is_a_clear_error(policy, k, match):
    model = classifier_model()
    with pytest.raises(GPTClassifierError, match=match) as info:
        apply_policy(model, policy, k)
    assert "\n" not in str(info.value)


def test_bad_policy_in_the_classifier():
    with pytest.raises(GPTClassifierError, match="is unknown: use one of last_layer"):
        GPTClassifier(TINY_MODEL, ["a", "b"], finetune={"policy": "everything"})


class GradientRecorder(Callback):
    """At every optimizer step: the names of `model`'s parameters with a gradient, and of those optimized."""

    def __init__(self, model):
        self.model = model
        self.names = {id(p): name for name, p in model.named_parameters()}
        self.steps: list[tuple[set[str], set[str]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        with_grad = {name for name, p in self.model.named_parameters() if p.grad is not None}
        optimized = {self.names[id(p)] for group in optimizer.param_groups for p in group["params"]}
        self.steps.append((with_grad, optimized))


@pytest.fixture(scope="module")
def spam_data(sms_split_dir):
    datamodule = SpamDataModule(data_dir=sms_split_dir, urls=[], batch_size=8)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize(
    ("policy", "k", "blocks"),
    [
        ("last_layer", None, 0),
        ("last_block", None, 1),
        ("last_two_blocks", None, 2),
        ("last_n_blocks", 0, 0),
        ("all", None, 2),
        ("lora", None, 2),
    ],
)
@pytest.mark.parametrize("cache_frozen", [False, "auto"])
def test_one_training_step_changes_only_trainable_parameters(spam_data, policy, k, blocks, cache_frozen):
    """Real Lightning steps with SGD: every trainable parameter gets a gradient (through the cached
    trunk too) and is optimized; they all move but the attention key biases; nothing frozen moves.

    Two steps, because LoRA's A factors get no gradient while B is still zero.
    """
    torch.manual_seed(0)
    module = GPTClassifier(
        TINY_MODEL,
        spam_data.class_names,
        finetune={"policy": policy, "last_n_blocks": k, "cache_frozen": cache_frozen},
        data={"max_length": spam_data.max_length},
        optimizer=partial(torch.optim.SGD, lr=0.5),
    )
    model = module.classifier.model
    # the trunk below the first trained block is cached; the tiny model has 2 blocks
    uses_cache = cache_frozen == "auto" and blocks < 2
    assert (module.cache is not None) == uses_cache
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    expected = expected_trainable(model, policy, blocks)
    assert trainable_names(model) == expected

    recorder = GradientRecorder(model)
    trainer = quiet_trainer(limit_train_batches=2, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(module, datamodule=spam_data)
    assert trainer.global_step == 2
    assert (module.cache is not None and "train" in module.cache) == uses_cache
    assert module.examples_seen == 16
    assert len(recorder.steps) == 2
    for with_grad, optimized in recorder.steps:
        assert with_grad == expected
        assert optimized == expected
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    # A key bias's exact gradient is zero (softmax ignores the q·b added to a whole row): rounding decides.
    key_biases = {name for name in expected if name.endswith("att.W_key.bias")}
    assert expected - key_biases <= changed <= expected
    for name, p in model.named_parameters():
        if name not in expected:
            assert torch.equal(p, before[name]), name  # bit-identical
