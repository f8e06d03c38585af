"""SMS split (chapter 6), its reuse, downloads against a local HTTP server, padding and batching."""

import functools
import logging
import os
import re
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytest
import torch

from gpt_classifier.data.datamodule import SPLITS, TextClassificationDataModule
from gpt_classifier.data.download import download, sha256_of
from gpt_classifier.data.samplers import LengthGroupedBatchSampler
from gpt_classifier.data.sms import SMS_SHA256, SMS_ZIP, SpamDataModule, read_sms_collection
from gpt_classifier.data.tokenizer import PAD_TOKEN_ID, get_tokenizer
from gpt_classifier.errors import GPTClassifierError

BUNDLED_ZIP = Path(str(files("gpt_classifier") / "assets" / SMS_ZIP))
FALLBACK_WARNING = "not reachable online"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        self.server.requests.append(self.path)


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving `root`; `requests` lists the paths it was asked for."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.root = root
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port_url():
    """A URL on a local port that nothing listens on: connecting is refused at once. The port stays
    bound (not listening) for the whole test, so no other process can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/x.zip"


def data_module(split_dir, **kwargs):
    dm = TextClassificationDataModule(split_dir, class_names=["not spam", "spam"], **kwargs)
    dm.setup()
    return dm


def read_splits(split_dir):
    return {split: pd.read_csv(split_dir / f"{split}.csv") for split in SPLITS}


def mtimes(split_dir):
    return {p.name: p.stat().st_mtime_ns for p in sorted(split_dir.iterdir())}


# --- the split itself -------------------------------------------------------------------------------


def test_bundled_zip_is_the_uci_archive():
    assert sha256_of(BUNDLED_ZIP) == SMS_SHA256
    df = read_sms_collection(BUNDLED_ZIP)
    assert len(df) == 5572  # as read by pandas defaults in the book
    assert df["Label"].value_counts().to_dict() == {"ham": 4825, "spam": 747}


def test_split_counts_columns_and_balance(sms_split_dir):
    frames = read_splits(sms_split_dir)
    assert {s: len(df) for s, df in frames.items()} == {"train": 1045, "validation": 149, "test": 300}
    for df in frames.values():
        assert list(df.columns) == ["Label", "Text"]
    counts = {s: df["Label"].value_counts().to_dict() for s, df in frames.items()}
    assert counts == {
        "train": {0: 528, 1: 517},
        "validation": {0: 70, 1: 79},
        "test": {0: 149, 1: 151},
    }
    assert sum(c[0] for c in counts.values()) == sum(c[1] for c in counts.values()) == 747
    assert frames["train"]["Text"][0] == "Dude how do you like the buff wind."


# --- reuse and rewrite --------------------------------------------------------------------------------


@pytest.fixture
def split_copy(sms_split_dir, tmp_path):
    """A private copy of the split with old mtimes, so any rewrite is visible."""
    folder = tmp_path / "split"
    shutil.copytree(sms_split_dir, folder)
    for path in folder.iterdir():
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return folder


def test_prepare_data_reuses_a_current_split(split_copy, tmp_path, closed_port_url, caplog):
    before = mtimes(split_copy)
    caplog.set_level(logging.INFO, logger="gpt_classifier.data.sms")
    SpamDataModule(data_dir=split_copy, urls=[closed_port_url], cache_dir=tmp_path / "cache").prepare_data()
    assert mtimes(split_copy) == before
    assert caplog.records == []  # neither a download attempt nor the fallback
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "damage",
    ["truncate_train", "garble_train", "delete_validation", "drop_column", "delete_stamp", "edit_one_text"],
)
def test_prepare_data_rewrites_a_damaged_split(damage, split_copy, sms_split_dir, tmp_path):
    train = split_copy / "train.csv"
    if damage == "truncate_train":
        train.write_bytes(train.read_bytes()[: train.stat().st_size // 2])
    elif damage == "garble_train":
        train.write_bytes(b"\x00\xff garbage \x00" * 50)
    elif damage == "delete_validation":
        (split_copy / "validation.csv").unlink()
    elif damage == "drop_column":
        pd.read_csv(train)[["Text"]].to_csv(train, index=None)
    elif damage == "edit_one_text":  # same rows and columns, one message changed
        df = pd.read_csv(train)
        df.loc[0, "Text"] = "edited by hand"
        df.to_csv(train, index=None)
    else:
        (split_copy / "split.json").unlink()
    before = mtimes(split_copy)
    SpamDataModule(data_dir=split_copy, urls=[], cache_dir=tmp_path / "cache", seed=123).prepare_data()
    after = mtimes(split_copy)
    assert after["train.csv"] != before["train.csv"]
    for split in SPLITS:
        assert (split_copy / f"{split}.csv").read_bytes() == (sms_split_dir / f"{split}.csv").read_bytes()


def test_prepare_data_rewrites_for_another_seed(split_copy, sms_split_dir, tmp_path):
    SpamDataModule(data_dir=split_copy, urls=[], cache_dir=tmp_path / "cache", seed=7).prepare_data()
    frames, original = read_splits(split_copy), read_splits(sms_split_dir)
    assert {s: len(df) for s, df in frames.items()} == {"train": 1045, "validation": 149, "test": 300}
    assert not frames["train"].equals(original["train"])
    assert sum((df["Label"] == 1).sum() for df in frames.values()) == 747
    # and back to seed 123 reproduces the book's split byte for byte
    SpamDataModule(data_dir=split_copy, urls=[], cache_dir=tmp_path / "cache", seed=123).prepare_data()
    for split in SPLITS:
        assert (split_copy / f"{split}.csv").read_bytes() == (sms_split_dir / f"{split}.csv").read_bytes()


# --- downloads ------------------------------------------------------------------------------------------


def test_download_good_file(http_server, tmp_path):
    shutil.copy(BUNDLED_ZIP, http_server.root / "sms.zip")
    dest = tmp_path / "downloads" / "sms.zip"
    assert download(f"{http_server.url}/sms.zip", dest, SMS_SHA256) == dest
    assert sha256_of(dest) == SMS_SHA256
    assert os.listdir(dest.parent) == ["sms.zip"]
    assert http_server.requests == ["/sms.zip"]


def test_download_corrupt_file_is_discarded(http_server, tmp_path):
    data = bytearray(BUNDLED_ZIP.read_bytes())
    data[1000] ^= 0xFF
    (http_server.root / "sms.zip").write_bytes(bytes(data))
    dest = tmp_path / "downloads" / "sms.zip"
    with pytest.raises(GPTClassifierError, match="checksum"):
        download(f"{http_server.url}/sms.zip", dest, SMS_SHA256)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []  # no .part file left behind


def test_download_http_error_leaves_nothing(http_server, tmp_path):
    dest = tmp_path / "downloads" / "sms.zip"
    with pytest.raises(OSError, match="404"):
        download(f"{http_server.url}/missing.zip", dest, SMS_SHA256)
    assert os.listdir(dest.parent) == []


def test_spam_module_downloads_into_cache(http_server, tmp_path, sms_split_dir, closed_port_url, caplog):
    shutil.copy(BUNDLED_ZIP, http_server.root / "sms.zip")
    cache = tmp_path / "cache"
    caplog.set_level(logging.WARNING, logger="gpt_classifier.data.sms")
    # a dead mirror first: the next URL is tried
    urls = [closed_port_url, f"{http_server.url}/sms.zip"]
    SpamDataModule(data_dir=tmp_path / "a", urls=urls, cache_dir=cache).prepare_data()
    assert http_server.requests == ["/sms.zip"]
    assert sha256_of(cache / SMS_ZIP) == SMS_SHA256
    assert (tmp_path / "a" / "train.csv").read_bytes() == (sms_split_dir / "train.csv").read_bytes()
    assert FALLBACK_WARNING not in caplog.text

    # a second split reuses the cached zip: no request even though the only URL is dead
    SpamDataModule(data_dir=tmp_path / "b", urls=[closed_port_url], cache_dir=cache).prepare_data()
    assert http_server.requests == ["/sms.zip"]
    assert (tmp_path / "b" / "test.csv").read_bytes() == (sms_split_dir / "test.csv").read_bytes()
    assert FALLBACK_WARNING not in caplog.text


def test_spam_module_falls_back_to_bundled_zip(tmp_path, sms_split_dir, closed_port_url, caplog):
    caplog.set_level(logging.WARNING, logger="gpt_classifier.data.sms")
    split_dir, cache = tmp_path / "split", tmp_path / "cache"
    SpamDataModule(data_dir=split_dir, urls=[closed_port_url], cache_dir=cache).prepare_data()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and FALLBACK_WARNING in warnings[0].getMessage()
    assert not (cache / SMS_ZIP).exists()
    for split in SPLITS:
        assert (split_dir / f"{split}.csv").read_bytes() == (sms_split_dir / f"{split}.csv").read_bytes()


# --- padding, truncation and batches -------------------------------------------------------------------


def test_longest_padding_matches_the_book(sms_split_dir):
    dm = data_module(sms_split_dir)
    assert dm.max_length == 120
    frame = pd.read_csv(sms_split_dir / "train.csv")
    tokenizer = get_tokenizer()
    batches = list(dm.train_dataloader())
    assert len(batches) == 1045 // 8 == 130
    seen = []
    for batch in batches:
        assert batch["input_ids"].shape == (8, 120)
        for row, index in enumerate(batch["index"].tolist()):
            length = batch["lengths"][row].item()
            ids = tokenizer.encode_ordinary(frame["Text"][index])
            assert batch["input_ids"][row, :length].tolist() == ids
            assert (batch["input_ids"][row, length:] == PAD_TOKEN_ID).all()
            assert batch["labels"][row].item() == frame["Label"][index]
            seen.append(index)
    assert len(set(seen)) == len(seen) == 1040  # shuffled, the last partial batch dropped


def test_eval_loaders_keep_every_example(sms_split_dir):
    dm = data_module(sms_split_dir)
    final = dict(zip(SPLITS, dm.test_dataloader(), strict=True))  # every split, in SPLITS order
    assert len(dm.val_dataloader()) == 19  # 149 = 18 * 8 + 5
    assert len(final["test"]) == 38  # 300 = 37 * 8 + 4
    for split, loader, size in [
        ("validation", dm.val_dataloader(), 149),
        ("test", final["test"], 300),
        ("train", final["train"], 1045),
    ]:
        index = torch.cat([b["index"] for b in loader])
        assert index.tolist() == list(range(size)), split  # in order, nothing dropped
        # every split is padded to the longest training example
        assert {b["input_ids"].shape[1] for b in loader} == {120}


def test_dynamic_padding(sms_split_dir):
    dm = data_module(sms_split_dir, padding="dynamic", eval_batch_size=16)
    widths = set()
    for batch in dm.val_dataloader():
        width = batch["input_ids"].shape[1]
        assert width == batch["lengths"].max().item()
        widths.add(width)
        for row, length in enumerate(batch["lengths"].tolist()):
            assert (batch["input_ids"][row, length:] == PAD_TOKEN_ID).all()
    assert len(widths) > 1 and max(widths) < 120
    assert [b["input_ids"].shape[0] for b in dm.val_dataloader()] == [16] * 9 + [5]


def test_max_length_truncates(sms_split_dir):
    dm = data_module(sms_split_dir, max_length=10)
    assert dm.max_length == 10
    for split in SPLITS:
        assert max(dm.datasets[split].lengths) == 10
    frame = pd.read_csv(sms_split_dir / "train.csv")
    first = dm.datasets["train"][0]["input_ids"]
    assert first.tolist() == get_tokenizer().encode_ordinary(frame["Text"][0])[:10]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 10) and (batch["lengths"] <= 10).all()


def test_max_length_model_uses_context_length(sms_split_dir):
    dm = data_module(sms_split_dir, max_length="model", context_length=256)
    assert dm.max_length == 256
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 256)


def test_longest_is_capped_by_context_length(sms_split_dir):
    dm = data_module(sms_split_dir, context_length=64)
    assert dm.max_length == 64
    assert max(dm.datasets["train"].lengths) == 64


def test_no_padding_gives_single_examples(sms_split_dir):
    dm = data_module(sms_split_dir, padding="none", batch_size=8)
    loader = dm.train_dataloader()
    assert len(loader) == 1045
    for batch in list(loader)[:50]:
        assert batch["input_ids"].shape == (1, batch["lengths"].item())
    assert len(dm.val_dataloader()) == 149


def test_length_grouped_sampler_covers_every_index_once(sms_split_dir):
    lengths = data_module(sms_split_dir).datasets["train"].lengths
    for shuffle in (True, False):
        sampler = LengthGroupedBatchSampler(lengths, batch_size=8, shuffle=shuffle, drop_last=False)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 131
        assert sorted(i for b in batches for i in b) == list(range(1045))
        assert sorted(len(b) for b in batches)[0] == 1045 % 8
    dropping = LengthGroupedBatchSampler(lengths, batch_size=8, shuffle=True, drop_last=True)
    batches = list(dropping)
    assert len(batches) == len(dropping) == 130 and {len(b) for b in batches} == {8}
    assert len({i for b in batches for i in b}) == 1040


def test_length_grouped_batches_pad_less(sms_split_dir):
    lengths = data_module(sms_split_dir).datasets["train"].lengths

    def waste(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    torch.manual_seed(0)
    grouped = list(LengthGroupedBatchSampler(lengths, batch_size=8, shuffle=True, drop_last=False))
    order = torch.randperm(len(lengths)).tolist()
    random_batches = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert waste(grouped) < waste(random_batches) / 5
    # shuffled: another epoch gives other batches
    assert list(LengthGroupedBatchSampler(lengths, 8, shuffle=True, drop_last=False)) != grouped


def test_group_by_length_loader(sms_split_dir):
    dm = data_module(sms_split_dir, padding="dynamic", group_by_length=True)
    train = list(dm.train_dataloader())
    assert len(train) == 130 and all(b["input_ids"].shape[0] == 8 for b in train)
    padded = sum(b["input_ids"].numel() for b in train)
    real = sum(b["lengths"].sum().item() for b in train)
    assert padded < 1.2 * real
    val_index = torch.cat([b["index"] for b in dm.val_dataloader()])
    assert sorted(val_index.tolist()) == list(range(149))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": "foo"},
        {"max_length": "foo"},
        {"max_length": 0},
        {"max_length": 2000},
        {"batch_size": 0},
    ],
)
def test_bad_options_raise(kwargs, sms_split_dir):
    [(key, value)] = kwargs.items()
    with pytest.raises(GPTClassifierError, match=re.escape(f"data.{key}={value!r}")):
        TextClassificationDataModule(sms_split_dir, class_names=["a", "b"], **kwargs)


def test_missing_split_or_column_raises(sms_split_dir, tmp_path):
    with pytest.raises(GPTClassifierError, match=re.escape("train.csv not found")):
        data_module(tmp_path)
    with pytest.raises(GPTClassifierError, match="no column 'message'"):
        data_module(sms_split_dir, text_column="message")
