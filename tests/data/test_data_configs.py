"""Every data config (sms_spam, csv, imdb) takes every batching/encoding key the docs name, with the
same defaults, and its data module accepts the value."""

import pytest
from helpers import CONF_DIR, TINY_OVERRIDES
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

DATA_CONFIGS = ["sms_spam", "csv", "imdb"]
# key: (a value other than the default, the default)
SHARED_KEYS = {
    "batch_size": (4, 8),
    "eval_batch_size": (16, 64),
    "max_length": (32, None),  # a dataset's own default: longest, or 256 for IMDb (the book)
    "truncation_side": ("left", "right"),
    "padding": ("dynamic", "max_length"),
    "group_by_length": (True, False),
    "num_workers": (1, 0),
    "positive_class": ("spam", None),
    "seed": (7, 123),
    "context_length": (128, 256),  # the tiny model's
}


def compose_data(name, overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY_OVERRIDES, f"data={name}", *overrides])
    return cfg.data


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_has_every_shared_key_with_the_same_default(name):
    data = compose_data(name)
    for key, (_, default) in SHARED_KEYS.items():
        assert key in data, f"data={name} lacks data.{key}"
        if default is not None:
            assert data[key] == default, (name, key)
    assert data.max_length == (256 if name == "imdb" else "longest")


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_every_data_config_takes_each_shared_key(name, tmp_path):
    overrides = [f"data.{key}={value}" for key, (value, _) in SHARED_KEYS.items()]
    overrides += [f"data.data_dir={tmp_path}"]
    if name == "csv":
        overrides.append(f"data.path={tmp_path / 'texts.csv'}")
    data = compose_data(name, overrides)
    for key, (value, _) in SHARED_KEYS.items():
        assert data[key] == value, (name, key)
    module = instantiate(data)  # builds nothing yet: no download, no file read
    assert (module.batch_size, module.eval_batch_size, module.max_length_option) == (4, 16, 32)
    assert module.truncation_side == "left" and module.padding == "dynamic"
