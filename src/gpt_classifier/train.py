"""The training task behind `train.py`: compose data, model and trainer from the Hydra config, fit,
evaluate the best checkpoint on every split, and write metrics, plots and a short report."""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from gpt_classifier.checkpoints import AtomicCheckpointIO, check_resume
from gpt_classifier.data import SPLITS, TextClassificationDataModule
from gpt_classifier.distributed import sweep_job
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.files import replace_atomically
from gpt_classifier.module import SHORT, GPTClassifier, load_classifier, per_class_report
from gpt_classifier.plots import close, plot_confusion, plot_history
from gpt_classifier.summary import FAILED_FILE

log = logging.getLogger(__name__)

METRIC_KEYS = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss")


def check_config(cfg: DictConfig) -> None:
    """Fail early, in one line, on values that would only break deep inside training."""
    lr = cfg.optimizer.get("lr")
    if lr is not None and lr <= 0:
        raise GPTClassifierError(f"optimizer.lr={lr} must be positive (the book uses 5e-5)")
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        raise GPTClassifierError(f"ckpt_path={cfg.ckpt_path} not found: pass the path of a .ckpt file")
    if not cfg.train and cfg.ckpt_path is None:
        raise GPTClassifierError(
            "train=false evaluates a checkpoint: also pass ckpt_path=<run>/checkpoints/best.ckpt"
        )


def write_json_atomic(data: dict, path: Path) -> None:
    replace_atomically(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def make_trainer(cfg: DictConfig) -> L.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    plugins = [AtomicCheckpointIO()]  # a run killed mid-write never leaves a truncated .ckpt
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)


def make_module(cfg: DictConfig, datamodule: TextClassificationDataModule) -> GPTClassifier:
    scheduler = cfg.get("scheduler")
    return GPTClassifier(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        class_names=datamodule.class_names,
        finetune=OmegaConf.to_container(cfg.finetune, resolve=True),
        classifier=OmegaConf.to_container(cfg.classifier, resolve=True),
        data={
            "max_length": datamodule.max_length,
            "padding": datamodule.padding,
            "pad_token_id": datamodule.pad_token_id,
        },
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler else None,
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (unless `train=false`), evaluate the best checkpoint on every split, write the run folder."""
    check_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.train:
        datamodule: TextClassificationDataModule = instantiate(cfg.data)
        datamodule.prepare_data()
        datamodule.setup()
        module = make_module(cfg, datamodule)
        if cfg.ckpt_path:  # one clear line now, not a size mismatch deep inside load_state_dict
            check_resume(cfg.ckpt_path, dict(module.hparams))
    else:  # evaluate a checkpoint: its own model and data settings, not the command line's
        module = load_classifier(cfg.ckpt_path)
        data = module.hparams["data"]
        datamodule = instantiate(cfg.data, max_length=data["max_length"], padding=data["padding"])
        datamodule.prepare_data()
        datamodule.setup()
    module.datamodule = datamodule
    if cfg.get("compile"):
        for block in module.model.trf_blocks:
            block.compile()
    trainer = make_trainer(cfg)

    started = time.perf_counter()
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    train_seconds = time.perf_counter() - started if cfg.train else 0.0
    history, examples_seen = list(module.history), module.examples_seen

    metrics: dict[str, float] = {}
    best = trainer.checkpoint_callback.best_model_path if cfg.train and trainer.checkpoint_callback else None
    if cfg.test:
        module.eval_splits = list(SPLITS)
        loaders = [datamodule.eval_dataloader(split) for split in SPLITS]
        trainer.test(module, dataloaders=loaders, ckpt_path=best or None, weights_only=True, verbose=False)
        results = {k.removeprefix("final/"): float(v) for k, v in trainer.callback_metrics.items()}
        metrics = {key: results[key] for key in METRIC_KEYS}
    module.release_cache()
    if cfg.test:  # gathered from every process (DDP): all take part, rank zero writes it below
        module.confusion.compute()
    if not trainer.is_global_zero:
        return metrics
    metrics.update(examples_seen=examples_seen, train_seconds=round(train_seconds, 2))
    write_json_atomic(metrics, out_dir / "metrics.json")
    plots = plot_history(history, out_dir)
    if cfg.test:
        plots.append(write_class_report(module, trainer, out_dir))
    report(metrics, out_dir, best or cfg.ckpt_path, plots)
    return metrics


def write_class_report(module: GPTClassifier, trainer: L.Trainer, out_dir: Path) -> Path:
    """Per-class precision/recall/F1 (`classification_report.json`) and the confusion matrix image."""
    report = per_class_report(module.confusion.compute().cpu(), module.class_names)
    write_json_atomic(report, out_dir / "classification_report.json")
    path, figure = plot_confusion(module.confusion, module.class_names, out_dir)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("test/confusion_matrix", figure, trainer.global_step, close=False)
    close(figure)
    return path


def report(metrics: dict[str, float], out_dir: Path, checkpoint: str | None, plots: list[Path]) -> None:
    """Print the results table and where everything is."""
    lines = ["", f"{'split':<12}{'accuracy':>10}{'loss':>10}"]
    for split in SPLITS:
        name = SHORT[split]
        if f"{name}_acc" in metrics:
            lines.append(f"{split:<12}{100 * metrics[f'{name}_acc']:>9.2f}%{metrics[f'{name}_loss']:>10.4f}")
    lines.append(
        f"examples seen: {metrics['examples_seen']:,}   training time: {metrics['train_seconds']:.1f} s"
    )
    lines.append(f"run folder:    {out_dir}")
    lines.append(f"checkpoint:    {checkpoint}")
    lines.append(f"metrics:       {out_dir / 'metrics.json'}")
    if plots:
        lines.append(f"plots:         {', '.join(p.name for p in plots)}")
    lines.append(f"tensorboard:   tensorboard --logdir {out_dir.parent}")
    print("\n".join(lines), flush=True)


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a task with one-line errors; in a sweep, record a failed run and let the others go on."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with sweep_job():  # DDP's extra processes re-run this job alone
            return task(cfg)
    except GPTClassifierError as err:
        if multirun:
            log.error("run failed: %s", err)
            (Path(HydraConfig.get().runtime.output_dir) / FAILED_FILE).write_text(f"{err}\n")
            return None
        log.error("%s", err)  # one line on the console and in the run's log file
        sys.exit(2)
    except Exception:
        if not multirun:
            raise
        log.exception("run failed")
        (Path(HydraConfig.get().runtime.output_dir) / FAILED_FILE).write_text(traceback.format_exc())
        return None
