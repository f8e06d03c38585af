"""data=imdb: the book's IMDb split from a small archive of the same layout served on 127.0.0.1."""

import functools
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading

import pandas as pd
import pytest
from helpers import TINY_OVERRIDES, train_config
from hydra.utils import instantiate

from gpt_classifier.data.imdb import IMDB_ARCHIVE, ImdbDataModule, book_split
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.training.task import train

SIZES = [14, 3, 7]  # 24 labelled reviews: 6 per folder


def review(subset: str, label: str, i: int) -> str:
    mood = "wonderful, moving" if label == "pos" else "dull, tedious"
    return f"Review {i} of {subset}/{label}: a {mood} film.<br /><br />Line two\r\nends here."


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """aclImdb_v1.tar.gz's layout: {train,test}/{pos,neg}/<id>_<rating>.txt, plus unsup and extras."""
    folder = tmp_path_factory.mktemp("imdb_archive")
    path = folder / IMDB_ARCHIVE
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(f"aclImdb/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("README", "Large Movie Review Dataset v1.0")
        add("imdb.vocab", "the\nfilm\n")
        for subset in ("train", "test"):  # ids written out of order: the reader must sort them
            for label in ("neg", "pos"):
                for i in (5, 0, 10, 3, 1, 2):
                    add(f"{subset}/{label}/{i}_{7 if label == 'pos' else 2}.txt", review(subset, label, i))
            add(f"{subset}/labeledBow.feat", "0:1\n")
        add("train/unsup/0_0.txt", "unlabelled, never used")
    return path


@pytest.fixture(scope="module")
def server(archive):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/{IMDB_ARCHIVE}"
    httpd.shutdown()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def books_recipe(root) -> dict[str, pd.DataFrame]:
    """The book's download_prepare_dataset.py steps, from an extracted copy: read test/pos, test/neg,
    train/pos, train/neg (sorted listdir, text mode), shuffle (123), shuffle again (123), cut."""
    rows = []
    for subset in ("test", "train"):
        for label in ("pos", "neg"):
            folder = root / "aclImdb" / subset / label
            for name in sorted(os.listdir(folder)):
                with open(folder / name, encoding="utf-8") as f:
                    rows.append({"text": f.read(), "label": {"pos": 1, "neg": 0}[label]})
    df = pd.DataFrame(rows).sample(frac=1, random_state=123).reset_index(drop=True)
    df = df.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end, val_end = SIZES[0], SIZES[0] + SIZES[1]
    return {"train": df[:train_end], "validation": df[train_end:val_end], "test": df[val_end:]}


def test_download_and_split_as_the_book(archive, server, tmp_path):
    dm = ImdbDataModule(
        tmp_path / "split", urls=[server], cache_dir=tmp_path / "cache", sha256=sha256(archive), sizes=SIZES
    )
    dm.prepare_data()
    assert sha256(tmp_path / "cache" / IMDB_ARCHIVE) == sha256(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    expected = books_recipe(tmp_path / "extracted")
    for split, want in expected.items():
        got = pd.read_csv(tmp_path / "split" / f"{split}.csv")
        assert got["Text"].tolist() == want["text"].tolist(), split
        assert got["Label"].tolist() == want["label"].tolist(), split
    assert [len(expected[s]) for s in ("train", "validation", "test")] == SIZES
    dm.setup()
    assert dm.class_names == ["negative", "positive"] and dm.max_length == 256
    # a second prepare reuses the split: no download (the server is not even asked)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "split").iterdir()}
    ImdbDataModule(
        tmp_path / "split", urls=[], cache_dir=tmp_path / "none", sha256=sha256(archive), sizes=SIZES
    ).prepare_data()
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "split").iterdir()} == before


@pytest.fixture
def closed_port_url():
    """A local port bound (so no other process takes it) but not listening: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/{IMDB_ARCHIVE}"


def test_offline_is_one_clear_line(tmp_path, closed_port_url):
    dm = ImdbDataModule(tmp_path / "split", urls=[closed_port_url], cache_dir=tmp_path / "cache")
    with pytest.raises(
        GPTClassifierError, match=r"could not be downloaded .*when offline, copy aclImdb_v1"
    ) as err:
        dm.prepare_data()
    assert "\n" not in str(err.value) and not (tmp_path / "split").exists()


def test_wrong_checksum_keeps_nothing(server, tmp_path):
    dm = ImdbDataModule(tmp_path / "split", urls=[server], cache_dir=tmp_path / "cache", sha256="0" * 64)
    with pytest.raises(GPTClassifierError, match="checksum mismatch"):
        dm.prepare_data()
    assert not (tmp_path / "cache" / IMDB_ARCHIVE).exists()


def test_sizes_must_leave_a_test_split():
    df = pd.DataFrame({"Text": list("abcdef"), "Label": [0, 1] * 3})
    with pytest.raises(GPTClassifierError, match=r"data.sizes=\[4, 2\] leaves no test reviews of the 6"):
        book_split(df, [4, 2])


def test_preset_runs_on_the_local_archive(archive, server, tmp_path):
    """`experiment=imdb_all_layers` composes to the book's settings and trains (tiny model, 2 steps)."""
    overrides = [
        "experiment=imdb_all_layers",
        *TINY_OVERRIDES,
        f"data.urls=[{server}]",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"+data.sha256={sha256(archive)}",
        f"data.sizes=[{SIZES[0]},{SIZES[1]}]",
        f"data.data_dir={tmp_path / 'split'}",
        "data.max_length=64",
        "+trainer.limit_train_batches=2",
        "trainer.accelerator=cpu",
        "logger=none",
    ]
    with train_config(overrides, tmp_path / "run") as cfg:
        assert cfg.finetune.policy == "all" and cfg.trainer.max_epochs == 1 and cfg.data.batch_size == 8
        assert cfg.optimizer.lr == 5e-5 and cfg.optimizer.weight_decay == 0.1
        assert cfg.book.test_acc == 91.88
        assert isinstance(instantiate(cfg.data), ImdbDataModule)
        metrics = train(cfg)
    assert {"train_acc", "val_acc", "test_acc"} <= metrics.keys()
    with train_config(["experiment=imdb_last_block"], tmp_path / "run2") as cfg:
        assert cfg.finetune.policy == "last_block" and cfg.data.max_length == 256
