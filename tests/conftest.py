"""Shared fixtures: the chapter-6 SMS split (from the bundled zip), tiny Hugging Face GPT-2 checkpoints,
and the tiny training config composed once."""

import copy
import os
from collections.abc import Iterator

import pytest
import torch
from helpers import CONF_DIR, TINY_OVERRIDES
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

# The base of the in-process training tests: the tiny model on the CPU, no logger.
TINY_TRAIN_OVERRIDES = [*TINY_OVERRIDES, "trainer=cpu", "logger=none"]


@pytest.fixture(scope="session")
def tiny_train_cfg_global() -> DictConfig:
    """`conf/train.yaml` with `TINY_TRAIN_OVERRIDES`, composed once per session (Hydra's compose is slow);
    tests take their own copy from `tiny_train_cfg`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=TINY_TRAIN_OVERRIDES, return_hydra_config=True)


@pytest.fixture
def tiny_train_cfg(tiny_train_cfg_global: DictConfig, tmp_path) -> Iterator[DictConfig]:
    """A copy of the tiny config writing to `tmp_path`, as `train.py` would see it: change plain keys
    (`cfg.trainer.max_epochs = 2`); a group option (`finetune=all`) needs `helpers.train_config`.
    `HydraConfig` is set so that `${hydra:...}` interpolations resolve, and cleared afterwards."""
    cfg = copy.deepcopy(tiny_train_cfg_global)
    cfg.paths.output_dir = str(tmp_path)
    HydraConfig().set_config(cfg)
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = None


@pytest.fixture(scope="session")
def sms_split_dir(tmp_path_factory):
    """train/validation/test CSVs written by `SpamDataModule.prepare_data` from the bundled zip."""
    from gpt_classifier.data.sms import SpamDataModule

    root = tmp_path_factory.mktemp("sms")
    split_dir = root / "split"
    SpamDataModule(data_dir=split_dir, urls=[], cache_dir=root / "cache", seed=123).prepare_data()
    return split_dir


@pytest.fixture
def make_hf_checkpoint(tmp_path):
    """Factory: a random GPT-2 (vocab 50257, tiny widths) saved with `save_pretrained`.

    Returns `(folder, hf_model)` with the model in eval mode. Every parameter, biases and LayerNorm
    included, gets seeded noise on top of the HF init (which zeroes biases), so a weight mapped to
    the wrong place changes the logits.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(n_layer=2, n_head=2, n_embd=32, n_positions=64, seed=0):
        torch.manual_seed(seed)
        config = GPT2Config(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions, vocab_size=50257
        )
        hf_model = GPT2LMHeadModel(config)
        with torch.no_grad():
            for param in hf_model.parameters():
                param.add_(0.05 * torch.randn_like(param))
        folder = tmp_path / f"gpt2-l{n_layer}-h{n_head}-e{n_embd}-p{n_positions}-s{seed}"
        hf_model.save_pretrained(folder)
        return folder, hf_model.eval()

    return make


# --- Suite hygiene: no silent skips in CI ------------------------------------------------------------
# Under CI=true a skipped test fails, unless it is marked `optional_skip(reason=...)`: a skip that hides
# coverage (a missing browser, a cgroup the machine cannot give) then shows up instead of passing.
# The marker is registered in pyproject.toml, so that runs without this file (--noconftest) know it.


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def allowed_skip(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("optional_skip")
    return marker is not None and bool(marker.kwargs.get("reason") or marker.args)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and in_ci() and not allowed_skip(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (
            f"required test skipped under CI=true ({reason}): provide what it needs, "
            "or mark it @pytest.mark.optional_skip(reason=...) if the skip is allowed"
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    if report.skipped and in_ci():  # a module-level skip hides every test in the file
        report.outcome = "failed"
        report.longrepr = f"test module skipped under CI=true: {report.longrepr}"
    return report
