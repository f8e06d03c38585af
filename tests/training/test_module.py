"""GPTClassifier: the frozen-trunk cache gives the same training as running the whole model.

Each case fits the same tiny model twice from the same seed, with `finetune.cache_frozen` true and
false, and compares every training step's loss and the final validation and test metrics.
"""

import logging

import lightning as L
import pandas as pd
import pytest
import torch
from helpers import TINY_MODEL, adamw, quiet_trainer

from gpt_classifier.data.datamodule import TextClassificationDataModule
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.training.lightning_module import GPTClassifier

# The cache computes the same float32 numbers in other batches: measured differences are 0 (the book's
# reading, the 3-layer model) to 1.2e-7 (one float32 ulp of a loss near 0.7). 1e-6 is 8 times that and
# 100 times below what rounding the cached states through fp16 or bf16 changes.
TOL = 1e-6
EXACT = {"book_last_max_length", "last_two_blocks_3_layers"}
SEED = 7
ROWS = {"train": 160, "validation": 40, "test": 60}


class LossRecorder(L.Callback):
    """Every training step's loss, as the optimizer saw it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


class CacheRecorder(L.Callback):
    """The module's cached splits at the end of the final evaluation (its teardown clears them)."""

    def __init__(self) -> None:
        self.splits: dict = {}

    def on_test_end(self, trainer, pl_module) -> None:
        self.splits = dict(pl_module.cache.splits) if pl_module.cache is not None else {}


@pytest.fixture(scope="module")
def small_split_dir(sms_split_dir, tmp_path_factory):
    """The first rows of the book's SMS split: the cache covers whole splits, so keep them small."""
    folder = tmp_path_factory.mktemp("sms_small")
    for split, rows in ROWS.items():
        pd.read_csv(sms_split_dir / f"{split}.csv").head(rows).to_csv(folder / f"{split}.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def datamodules(small_split_dir):
    """Set-up data modules by padding (`max_length`, the book, `dynamic` or `none`), built once."""
    made = {}

    def get(padding="max_length"):
        if padding not in made:
            dm = TextClassificationDataModule(small_split_dir, ["not spam", "spam"], padding=padding)
            dm.setup()
            assert len(dm.datasets["train"]) == ROWS["train"]
            made[padding] = dm
        return made[padding]

    return get


def fit(dm, cache_frozen, model=None, finetune=None, classifier=None, epochs=2, batches=8):
    """Fit from seed SEED; returns the module, the per-step losses, the final metrics and the cached
    splits (as they were at the end of the final evaluation)."""
    L.seed_everything(SEED)
    module = GPTClassifier(
        model or TINY_MODEL,
        dm.class_names,
        finetune={**(finetune or {}), "cache_frozen": cache_frozen},
        classifier=classifier,
        data={"max_length": dm.max_length, "padding": dm.padding, "pad_token_id": dm.pad_token_id},
        optimizer=adamw(1e-3),
    )
    recorder, cached = LossRecorder(), CacheRecorder()
    trainer = quiet_trainer(
        max_epochs=epochs, limit_train_batches=batches, limit_val_batches=4, callbacks=[recorder, cached]
    )
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.test(module, datamodule=dm, verbose=False)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    assert len(recorder.losses) == epochs * batches
    return module, recorder.losses, metrics, cached.splits


def assert_same_training(cached, uncached, tolerance=TOL):
    (module_c, losses_c, metrics_c, splits_c), (module_u, losses_u, metrics_u, splits_u) = cached, uncached
    assert module_c.cache is not None and set(splits_c) == {"train", "validation", "test"}
    assert module_u.cache is None and not splits_u
    assert losses_c == pytest.approx(losses_u, abs=tolerance, rel=0)
    assert {"val/loss", "val/acc", "final/test_loss", "final/test_acc", "train/loss_epoch"} <= set(metrics_u)
    assert set(metrics_c) == set(metrics_u)
    for name in metrics_u:
        assert metrics_c[name] == pytest.approx(metrics_u[name], abs=tolerance, rel=0), name
    # the losses moved: a model that did not train would make this comparison vacuous
    assert max(losses_u) - min(losses_u) > 1e-3


def kept_positions(splits, split="train"):
    return [len(s) for s in splits[split].states]


CASES = {
    # name: (padding, model, finetune, classifier, positions kept per example: f(token ids, max_length))
    "book_last_max_length": ("max_length", None, None, None, lambda ids, m: m),
    "flexible_max_length": ("max_length", None, None, {"position": "flexible"}, lambda ids, m: len(ids)),
    "flexible_dynamic": ("dynamic", None, None, {"position": "flexible"}, lambda ids, m: len(ids)),
    "first": ("max_length", None, None, {"position": "first"}, lambda ids, m: 1),
    "mean_max_length": ("max_length", None, None, {"pooling": "mean"}, lambda ids, m: len(ids)),
    "mean_dynamic": ("dynamic", None, None, {"pooling": "mean"}, lambda ids, m: len(ids)),
    "last_two_blocks_3_layers": (
        "max_length",
        {**TINY_MODEL, "n_layers": 3},
        {"policy": "last_two_blocks"},
        None,
        lambda ids, m: m,
    ),
    # only out_head learns: the cache holds the final hidden state at the read position alone
    "last_layer": ("max_length", None, {"policy": "last_layer"}, None, lambda ids, m: 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cache_gives_the_same_training(datamodules, case):
    padding, model, finetune, classifier, kept = CASES[case]
    dm = datamodules(padding)
    cached = fit(dm, True, model, finetune, classifier)
    uncached = fit(dm, False, model, finetune, classifier)
    assert_same_training(cached, uncached, tolerance=0.0 if case in EXACT else TOL)
    module, splits = cached[0], cached[3]
    assert {state.dtype for state in splits["train"].states} == {torch.float32}
    token_ids = dm.token_ids("train")
    assert kept_positions(splits) == [kept(ids, dm.max_length) for ids in token_ids]
    n_layers = (model or TINY_MODEL)["n_layers"]
    blocks = {"last_layer": 0, "last_two_blocks": 2}.get((finetune or {}).get("policy"), 1)
    assert module.cache.start_block == n_layers - blocks


def test_last_layer_cache_reads_position_zero_of_one_stored_state(datamodules):
    dm = datamodules()
    L.seed_everything(SEED)
    module = GPTClassifier(
        TINY_MODEL,
        dm.class_names,
        finetune={"policy": "last_layer", "cache_frozen": True},
        data={"max_length": dm.max_length},
    )
    module.cache.build("validation", dm.token_ids("validation"))
    cached = module.cache.splits["validation"]
    assert all(s.shape == (1, TINY_MODEL["emb_dim"]) for s in cached.states)
    assert torch.equal(cached.read_pos, torch.zeros(len(cached.states), dtype=torch.long))
    # the stored state is the one the whole model computes at the read (last padded) position
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        direct = module(batch["input_ids"], batch["lengths"])
        inputs = module.cache.batch("validation", batch["index"], module.device)
        from_cache = module.classifier.logits_from_rows(**inputs, start_block=module.cache.start_block)
    torch.testing.assert_close(from_cache, direct, atol=1e-5, rtol=0)


def test_cache_with_unpadded_batches_of_one(datamodules):
    """`data.padding=none` (batches of one, the book's row 14): nothing depends on the batch."""
    dm = datamodules("none")
    assert dm.batch_size == 1
    cached = fit(dm, True, batches=12, epochs=1)
    uncached = fit(dm, False, batches=12, epochs=1)
    assert_same_training(cached, uncached)


@pytest.mark.parametrize("cache_frozen", [False, True])
def test_read_positions_only_changes_nothing(datamodules, cache_frozen):
    dm = datamodules()
    read_only = fit(dm, cache_frozen, classifier={"read_positions_only": True}, epochs=1)
    full = fit(dm, cache_frozen, classifier={"read_positions_only": False}, epochs=1)
    assert read_only[1] == pytest.approx(full[1], abs=TOL, rel=0)
    for name, value in full[2].items():
        assert read_only[2][name] == pytest.approx(value, abs=TOL, rel=0), name


IMPOSSIBLE = {
    "policy_all": ({}, {"policy": "all"}, {}, "nothing below the first trainable block is frozen"),
    "policy_lora": ({}, {"policy": "lora"}, {}, "nothing below the first trainable block is frozen"),
    "dynamic_last": ({}, {}, {"padding": "dynamic"}, "batch-dependent padding"),
    "dropout": ({"drop_rate": 0.1}, {}, {}, "dropout (drop_rate=0.1)"),
    "dynamic_flexible_no_causal_mask": (
        {"causal": False},
        {},
        {"padding": "dynamic", "position": "flexible"},
        "batch-dependent padding",
    ),
}


def make_module(model_changes, finetune, data_changes, cache_frozen):
    data_changes = dict(data_changes)
    position = data_changes.pop("position", "last")
    return GPTClassifier(
        {**TINY_MODEL, **model_changes},
        ["not spam", "spam"],
        finetune={**finetune, "cache_frozen": cache_frozen},
        classifier={"position": position},
        data={"max_length": 120, **data_changes},
    )


@pytest.mark.parametrize("case", list(IMPOSSIBLE))
def test_impossible_cache_is_one_clear_error(case):
    model_changes, finetune, data_changes, reason = IMPOSSIBLE[case]
    with pytest.raises(GPTClassifierError) as info:
        make_module(model_changes, finetune, data_changes, True)
    message = str(info.value)
    assert message.startswith("finetune.cache_frozen=true is impossible here: ")
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize("case", list(IMPOSSIBLE))
def test_auto_cache_falls_back_silently(case, caplog):
    model_changes, finetune, data_changes, _ = IMPOSSIBLE[case]
    with caplog.at_level(logging.INFO, logger="gpt_classifier"):
        module = make_module(model_changes, finetune, data_changes, "auto")
    assert module.cache is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_auto_cache_is_on_when_exact():
    assert make_module({}, {}, {}, "auto").cache is not None
    assert make_module({}, {}, {"padding": "dynamic", "position": "flexible"}, "auto").cache is not None


@pytest.mark.parametrize("setting", ["yes", 1.5, None])
def test_unknown_cache_setting(setting):
    with pytest.raises(GPTClassifierError, match=r"finetune\.cache_frozen=.* is unknown"):
        make_module({}, {}, {}, setting)


@pytest.mark.parametrize(
    ("classifier", "match"),
    [
        ({"position": "middle"}, "classifier.position='middle'"),
        ({"pooling": "max"}, "classifier.pooling='max'"),
    ],
)
def test_unknown_classifier_settings(classifier, match):
    with pytest.raises(GPTClassifierError, match=match):
        GPTClassifier(TINY_MODEL, ["a", "b"], classifier=classifier)


def test_configure_optimizers_needs_an_optimizer():
    module = GPTClassifier(TINY_MODEL, ["a", "b"])
    with pytest.raises(GPTClassifierError, match="no optimizer configured"):
        module.configure_optimizers()
