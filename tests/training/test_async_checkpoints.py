"""Checkpoints written in the background (`async_checkpoints=true`): training does not wait for the
write, the file is a snapshot of the moment it was asked for, writes/links/removals keep their order,
errors surface, and a process killed during a background write leaves the previous complete file."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from gpt_classifier.training.callbacks import AtomicCheckpointIO
from gpt_classifier.training.task import make_trainer

KILLED_WRITER = """
import sys, time, torch
from gpt_classifier.training.callbacks import AtomicCheckpointIO

path = sys.argv[1]
io = AtomicCheckpointIO(background=True)
io.save_checkpoint({"epoch": 0, "global_step": 10, "state_dict": {"w": torch.zeros(100_000)}}, path)
io.teardown()  # the previous checkpoint, complete
save = torch.save

def slow_save(obj, f, *args, **kwargs):  # a writer that never finishes: half written, then stuck
    save(obj, f, *args, **kwargs)
    f.truncate(f.tell() // 2)
    f.flush()
    print("writing", flush=True)
    time.sleep(600)

torch.save = slow_save
started = time.perf_counter()
io.save_checkpoint({"epoch": 1, "global_step": 20, "state_dict": {"w": torch.ones(100_000)}}, path)
print(f"returned {time.perf_counter() - started:.3f}", flush=True)
time.sleep(600)
"""


def test_kill_during_a_background_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        lines = {proc.stdout.readline().split()[0] for _ in range(2)}  # in either order
        assert lines == {"returned", "writing"}  # the save returned while the write was under way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    checkpoint = torch.load(path, weights_only=True)  # complete: the old one
    assert checkpoint["epoch"] == 0 and torch.equal(checkpoint["state_dict"]["w"], torch.zeros(100_000))
    assert [p.name for p in path.parent.iterdir() if p.name != "last.ckpt"] != []  # the stuck .part file


def test_background_save_is_a_snapshot_in_order(tmp_path, monkeypatch):
    io = AtomicCheckpointIO(background=True)
    gate = threading.Event()
    save = torch.save

    def gated_save(obj, f, *args, **kwargs):
        gate.wait(timeout=60)  # the writer is busy while training changes the weights
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", gated_save)
    weights = torch.zeros(1000)
    best, last, old = (tmp_path / name for name in ("best.ckpt", "last.ckpt", "old.ckpt"))
    old.write_bytes(b"an earlier best")
    started = time.perf_counter()
    io.save_checkpoint({"epoch": 2, "global_step": 30, "state_dict": {"w": weights}}, best)
    io.save_checkpoint({"epoch": 2, "global_step": 30, "state_dict": {"w": weights}}, last)  # same step
    io.remove_checkpoint(old)
    assert time.perf_counter() - started < 5  # nothing above waited for the writer
    weights.add_(1.0)  # the optimizer steps on, in place
    assert not best.exists() and old.exists()  # the removal waits its turn behind the write
    gate.set()
    io.teardown()
    assert os.path.samefile(best, last)  # linked after the write finished, not before
    assert torch.equal(torch.load(best, weights_only=True)["state_dict"]["w"], torch.zeros(1000))
    assert not old.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert io.write_seconds > 0


def test_background_error_is_raised_and_keeps_the_previous_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO(background=True)
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "state_dict": {"w": torch.zeros(10)}}, path)
    io.teardown()
    save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(10)}}, path)
    with pytest.raises(OSError, match="No space left"):
        io.teardown()
    assert torch.load(path, weights_only=True)["epoch"] == 0
    assert os.listdir(tmp_path) == ["last.ckpt"]


@pytest.mark.parametrize("setting", [False, True])
def test_async_checkpoints_setting(tiny_train_cfg, setting):
    tiny_train_cfg.async_checkpoints = setting
    trainer = make_trainer(tiny_train_cfg)
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO) and io.background is setting
