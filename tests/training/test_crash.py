"""A trainer that survives crashes: kill a run with SIGKILL, resume it, get the uninterrupted result.

Also: checkpoints are written atomically (a failed write keeps the previous file, no temporary file
is left), a truncated checkpoint and a checkpoint from another model, class count or finetune
policy fail in one line. The command-line runs start in pairs; the tiny model keeps them short.
"""

import json
import os
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import TINY_OVERRIDES, TRAIN_PY, finish_cli, quiet_trainer, start_cli, train_config
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import read_checkpoint
from gpt_classifier.training.callbacks import AtomicCheckpointIO, BestCheckpoint, link_or_copy
from gpt_classifier.training.resume import check_resume
from gpt_classifier.training.task import METRIC_KEYS, make_trainer, train

EPOCHS = 3


def command(split_dir, run_dir, *extra):
    return [
        *TINY_OVERRIDES,
        "trainer=cpu",
        f"trainer.max_epochs={EPOCHS}",
        "optimizer.lr=1e-3",
        "model.drop_rate=0.1",  # dropout: the resumed run must continue the random stream too
        f"data.data_dir={split_dir}",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def temporary_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def crash(sms_split_dir, tmp_path_factory):
    """Run `a` killed after its first checkpoint, `b` resumed from it, `c` uninterrupted, and a run
    given a truncated copy of `a`'s last checkpoint."""
    root = tmp_path_factory.mktemp("crash")
    cwd = tmp_path_factory.mktemp("elsewhere")
    uninterrupted = start_cli(TRAIN_PY, command(sms_split_dir, root / "c"), cwd)
    killed = start_cli(TRAIN_PY, command(sms_split_dir, root / "a"), cwd)
    # the same with checkpoints written in the background: killed at once after its first checkpoint
    killed_async = start_cli(TRAIN_PY, command(sms_split_dir, root / "aa", "async_checkpoints=true"), cwd)
    running = {"a": killed, "aa": killed_async}
    deadline = time.monotonic() + 240
    while running and time.monotonic() < deadline:
        for name, run in list(running.items()):
            if (root / name / "checkpoints" / "last.ckpt").exists() or run[1].poll() is not None:
                run[1].send_signal(signal.SIGKILL)  # now in the second epoch or its validation
                del running[name]
        time.sleep(0.02)
    runs = {"a": finish_cli(killed), "aa": finish_cli(killed_async)}
    last = root / "a" / "checkpoints" / "last.ckpt"
    last_async = root / "aa" / "checkpoints" / "last.ckpt"

    truncated = root / "truncated.ckpt"
    data = last.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # what a non-atomic write leaves when killed
    resumed = start_cli(TRAIN_PY, command(sms_split_dir, root / "b", f"ckpt_path={last}"), cwd)
    broken = start_cli(TRAIN_PY, command(sms_split_dir, root / "t", f"ckpt_path={truncated}"), cwd)
    async_resume = command(sms_split_dir, root / "ba", "async_checkpoints=true", f"ckpt_path={last_async}")
    resumed_async = start_cli(TRAIN_PY, async_resume, cwd)
    runs.update(b=finish_cli(resumed), c=finish_cli(uninterrupted), truncated=finish_cli(broken))
    runs.update(ba=finish_cli(resumed_async))
    assert runs["a"].returncode == -signal.SIGKILL, runs["a"]
    assert runs["aa"].returncode == -signal.SIGKILL, runs["aa"]
    for name in ("b", "c", "ba"):
        assert runs[name].returncode == 0, runs[name]
        assert "Traceback" not in runs[name].stderr, runs[name]
    return root, runs


def test_killed_run_left_a_complete_checkpoint_and_no_result(crash):
    root, _ = crash
    assert not (root / "a" / "metrics.json").exists()  # it really died before the end
    last = read_checkpoint(root / "a" / "checkpoints" / "last.ckpt")  # readable: written atomically
    assert last["epoch"] < EPOCHS - 1


@pytest.mark.parametrize("resumed_run", ["b", "ba"])  # ba: checkpoints written in the background
def test_resumed_run_equals_the_uninterrupted_run(crash, resumed_run):
    root, _ = crash
    resumed = json.loads((root / resumed_run / "metrics.json").read_text())
    uninterrupted = json.loads((root / "c" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert resumed[key] == pytest.approx(uninterrupted[key], abs=1e-6), key
    assert resumed["examples_seen"] == uninterrupted["examples_seen"]
    runs = (resumed_run, "c")
    history = [read_checkpoint(root / run / "checkpoints" / "last.ckpt")["history"] for run in runs]
    assert [row["epoch"] for row in history[0]] == list(range(1, EPOCHS + 1))
    for resumed_row, uninterrupted_row in zip(*history, strict=True):  # per-epoch curves
        assert resumed_row == pytest.approx(uninterrupted_row, abs=1e-6)
    # the best checkpoint is the same epoch with the same score, inside the resumed run's own folder
    best = [sorted(p.name for p in (root / run / "checkpoints").glob("epoch*.ckpt")) for run in runs]
    assert best[0] == best[1] and len(best[0]) == 1


def test_runs_leave_no_temporary_files(crash):
    root, _ = crash
    for run in ("b", "c", "ba"):
        assert temporary_files(root / run / "checkpoints") == []
        assert temporary_files(root / run) == [".hydra"]


def test_truncated_checkpoint_fails_with_one_clear_line(crash):
    root, runs = crash
    result = runs["truncated"]
    output = result.stdout + result.stderr
    assert result.returncode == 2, result
    assert "Traceback" not in output, result
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, result
    assert "truncated.ckpt is unreadable" in errors[0] and "corrupt, truncated" in errors[0]
    assert not (root / "t" / "checkpoints").exists()  # it failed before training


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "state_dict": {"w": torch.zeros(10_000)}}, path)
    before = path.read_bytes()
    save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(10_000)}}, path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["last.ckpt"]
    monkeypatch.undo()
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(10_000)}}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_trainer_writes_checkpoints_atomically(tiny_train_cfg):
    trainer = make_trainer(tiny_train_cfg)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(trainer.checkpoint_callback, BestCheckpoint)
    # and a plain ModelCheckpoint writes last.ckpt after every epoch
    (last,) = [c for c in trainer.checkpoint_callbacks if c is not trainer.checkpoint_callback]
    assert type(last) is ModelCheckpoint and last.filename == "last" and last.monitor is None
    assert last.dirpath == trainer.checkpoint_callback.dirpath


def test_best_checkpoint_is_carried_into_the_resumed_folder(crash, tmp_path):
    """Lightning forgets the best score when the checkpoint folder changes; ours links the best file."""
    root, _ = crash
    checkpoint = read_checkpoint(root / "a" / "checkpoints" / "last.ckpt")
    # two checkpoint callbacks, each with its own state: the best by val/acc, and last.ckpt
    assert len(checkpoint["callbacks"]) == 2
    (key,) = [k for k, s in checkpoint["callbacks"].items() if s["monitor"] == "val/acc"]
    assert key == BestCheckpoint(dirpath=root / "a" / "checkpoints", monitor="val/acc", mode="max").state_key
    state = checkpoint["callbacks"][key]
    (old_best,) = state["best_k_models"]
    new_dir = tmp_path / "run" / "checkpoints"  # not made yet, as in a fresh run
    callback = BestCheckpoint(dirpath=new_dir, monitor="val/acc", mode="max")
    callback.load_state_dict(state)
    copy = new_dir / os.path.basename(old_best)
    assert callback.best_model_path == str(copy)
    assert callback.best_model_score == state["best_model_score"]
    assert callback.best_k_models == {str(copy): state["best_model_score"]}
    assert callback.kth_value == state["best_model_score"]
    assert copy.samefile(old_best)  # a hard link on the same filesystem: no copy
    assert os.listdir(new_dir) == [copy.name]
    callback.load_state_dict(state)  # again: nothing changes, no temporary file is left
    assert os.listdir(new_dir) == [copy.name] and callback.best_model_path == str(copy)


class ScriptedScores(L.LightningModule):
    """Logs the given val/acc in each epoch; notes at each epoch start what the last one saved."""

    def __init__(self, scores):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.scores = scores
        self.saved: list[tuple[int, bool]] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.scores[self.current_epoch])

    def on_train_epoch_start(self):
        if self.current_epoch:
            self.saved.append(last_saved(self.trainer))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def last_saved(trainer):
    """The epoch in `last.ckpt`, and whether it is the best checkpoint's file."""
    best, last_callback = trainer.checkpoint_callbacks
    last = Path(last_callback.best_model_path)  # its only file: monitor None, save_top_k 1
    assert last.name == "last.ckpt"
    return torch.load(last, weights_only=True)["epoch"], last.samefile(best.best_model_path)


def test_last_checkpoint_links_the_best_of_the_same_epoch(tmp_path):
    """`last.ckpt` holds every epoch, even one that is not the best (Lightning 2.6 skips those), and
    the model is written once per epoch: `last.ckpt` is a hard link when the epoch is the best."""
    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    folder = tmp_path / "checkpoints"
    callbacks = [
        BestCheckpoint(dirpath=folder, monitor="val/acc", mode="max"),
        ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False),
    ]
    module = ScriptedScores([0.5, 0.7, 0.6, 0.8])
    trainer = quiet_trainer(
        max_epochs=4, enable_checkpointing=True, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
    )
    trainer.fit(module, data, data)
    assert trainer.checkpoint_callback is callbacks[0]
    assert [*module.saved, last_saved(trainer)] == [(0, True), (1, True), (2, False), (3, True)]
    assert sorted(os.listdir(folder)) == ["epoch=3-step=8.ckpt", "last.ckpt"]
    assert temporary_files(folder) == []


def test_best_checkpoint_is_copied_where_links_are_impossible(tmp_path, monkeypatch):
    source = tmp_path / "old" / "epoch00.ckpt"
    source.parent.mkdir()
    source.write_bytes(b"weights")

    def cross_device(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    target = tmp_path / "new" / "epoch00.ckpt"
    link_or_copy(str(source), str(target))
    assert target.read_bytes() == b"weights" and not target.samefile(source)
    assert os.listdir(target.parent) == ["epoch00.ckpt"]


def mismatch(overrides, ckpt, split_dir, out_dir) -> str:
    common = [*TINY_OVERRIDES, "trainer=cpu", f"data.data_dir={split_dir}", "logger=none"]
    with (
        train_config([*common, *overrides, f"ckpt_path={ckpt}"], out_dir) as cfg,
        pytest.raises(GPTClassifierError) as err,
    ):
        train(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert not (out_dir / "checkpoints").exists()
    return message


def test_checkpoint_of_another_model_size_fails_in_one_line(crash, sms_split_dir, tmp_path):
    root, _ = crash
    last = root / "a" / "checkpoints" / "last.ckpt"
    message = mismatch(["model.emb_dim=64"], last, sms_split_dir, tmp_path)
    assert message == (
        f"checkpoint {last} was trained with gpt2-tiny (emb_dim 32); this run builds gpt2-tiny (emb_dim 64): "
        "pass the matching model.emb_dim=32, or another checkpoint"
    )


def test_checkpoint_of_another_finetune_policy_fails_in_one_line(crash, sms_split_dir, tmp_path):
    root, _ = crash
    last = root / "a" / "checkpoints" / "last.ckpt"
    message = mismatch(["finetune=lora"], last, sms_split_dir, tmp_path)
    assert "was trained with finetune=last_block;" in message
    assert "this run builds finetune=lora finetune.lora_rank=16:" in message
    assert "pass the matching finetune=last_block, or another checkpoint" in message


def test_checkpoint_of_another_class_count_fails_in_one_line(crash):
    root, _ = crash
    last = root / "a" / "checkpoints" / "last.ckpt"
    hparams = read_checkpoint(last)["hyper_parameters"]
    check_resume(last, hparams)  # the same settings resume
    with pytest.raises(GPTClassifierError) as err:
        check_resume(last, {**hparams, "class_names": ["negative", "neutral", "positive"]})
    assert str(err.value) == (
        f"checkpoint {last} was trained with 2 classes (not spam, spam); this run builds 3 classes "
        "(negative, neutral, positive): pass the matching data with the classes ['not spam', 'spam'], "
        "or another checkpoint"
    )


def test_checkpoint_of_another_model_and_policy_names_both(tmp_path):
    """Differences are listed together; a model of another name is fixed by `model=<name>`."""
    small = {"name": "gpt2-small", "emb_dim": 768, "n_heads": 12, "n_layers": 12}
    medium = {"name": "gpt2-medium", "emb_dim": 1024, "n_heads": 16, "n_layers": 24}
    path = tmp_path / "small.ckpt"
    hparams = {"model": small, "class_names": ["a", "b"], "finetune": {"policy": "lora", "lora_rank": 8}}
    torch.save({"hyper_parameters": hparams, "state_dict": {}}, path)
    with pytest.raises(GPTClassifierError) as err:
        check_resume(path, {**hparams, "model": medium, "finetune": {"policy": "lora", "lora_rank": 16}})
    assert str(err.value) == (
        f"checkpoint {path} was trained with gpt2-small (emb_dim 768, n_heads 12, n_layers 12) and "
        "finetune=lora finetune.lora_rank=8; this run builds gpt2-medium (emb_dim 1024, n_heads 16, "
        "n_layers 24) and finetune=lora finetune.lora_rank=16: pass the matching model=gpt2-small "
        "finetune=lora finetune.lora_rank=8, or another checkpoint"
    )


def test_unreadable_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "foreign.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(GPTClassifierError, match=r"foreign\.ckpt is unreadable"):
        check_resume(path, {})
