"""The training task behind `train.py`: compose data, model and trainer from the Hydra config, fit,
evaluate the best checkpoint on every split (choosing the decision threshold first, when asked to),
and write metrics, plots and a short report."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.cpu_threads import apply_threads
from gpt_classifier.data.datamodule import SPLITS, TextClassificationDataModule
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import classifier_settings, read_hyper_parameters, write_decision
from gpt_classifier.training.calibration import plot_reliability
from gpt_classifier.training.callbacks import AtomicCheckpointIO, link_or_copy
from gpt_classifier.training.decision import ARGMAX_THRESHOLD, positive_index
from gpt_classifier.training.final_evaluation import SHORT_NAMES
from gpt_classifier.training.lightning_module import GPTClassifier
from gpt_classifier.training.multilabel import plot_per_label
from gpt_classifier.training.phases import PhaseTimer
from gpt_classifier.training.reports import close, plot_confusion, plot_curves, plot_history
from gpt_classifier.training.resume import check_resume
from gpt_classifier.training.sweeps import in_multirun
from gpt_classifier.training.tracking import log_artifacts

log = logging.getLogger(__name__)

# How the evaluated checkpoint read texts and labels: evaluation reads them the same way.
READ_AS_TRAINED_KEYS = (
    *("long_texts", "window_stride", "max_windows"),
    *("head_tokens", "tail_tokens", "window_aggregate", "multi_label"),
)
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


def instantiate_one(config: DictConfig) -> object:
    """`instantiate`, with our own one-line errors unwrapped from Hydra's `InstantiationException`."""
    try:
        return instantiate(config)
    except InstantiationException as err:
        if isinstance(err.__cause__, GPTClassifierError):
            raise err.__cause__ from None
        raise


def instantiate_all(group: DictConfig | None) -> list:
    """The objects of a group's `_target_` entries; a factory may return None (e.g. early stopping off)."""
    configs = [c for c in (group or {}).values() if isinstance(c, DictConfig) and "_target_" in c]
    return [made for made in map(instantiate_one, configs) if made is not None]


def make_trainer(cfg: DictConfig) -> L.Trainer:
    callbacks = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    # A run killed mid-write never leaves a truncated .ckpt; async_checkpoints: written in the background.
    plugins = [AtomicCheckpointIO(background=bool(cfg.get("async_checkpoints")))]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)


def make_datamodule(cfg: DictConfig, **overrides: object) -> TextClassificationDataModule:
    datamodule: TextClassificationDataModule = instantiate(cfg.data, **overrides)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def make_module(cfg: DictConfig, datamodule: TextClassificationDataModule) -> GPTClassifier:
    scheduler = cfg.get("scheduler")
    return GPTClassifier(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        class_names=datamodule.class_names,
        finetune=OmegaConf.to_container(cfg.finetune, resolve=True),
        classifier=OmegaConf.to_container(cfg.classifier, resolve=True),
        data={
            **datamodule.data_settings(),
            "data_dir": str(Path(datamodule.data_dir).resolve()),  # its validation split checks exports
            "dataset": describe_dataset(datamodule),  # for the model card
        },
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler else None,
        compile_blocks=bool(cfg.get("compile")),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        decision={
            **OmegaConf.to_container(cfg.decision, resolve=True),
            "positive_class": positive_index(datamodule.class_names, datamodule.positive_class),
        },
        calibration=OmegaConf.to_container(cfg.calibration, resolve=True) if "calibration" in cfg else None,
    )


def describe_dataset(datamodule: TextClassificationDataModule) -> dict[str, object]:
    """What the model card says of the data: the data module's first docstring line and the split sizes."""
    about = (type(datamodule).__doc__ or type(datamodule).__name__).strip().splitlines()[0]
    return {"about": about, "rows": {split: len(data) for split, data in datamodule.datasets.items()}}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (unless `train=false`), evaluate the best checkpoint on every split, write the run folder."""
    print_lightning_lines_once()
    with no_stub_folder_on_failure(Path(cfg.paths.output_dir)):
        check_config(cfg)
        apply_threads(cfg.get("threads"))
        L.seed_everything(cfg.seed, workers=True)
        datamodule, module = make_run(cfg)
        trainer = make_trainer(cfg)
    started = time.perf_counter()
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    train_seconds = time.perf_counter() - started if cfg.train else 0.0
    history, examples_seen = list(module.history), module.examples_seen
    best = trainer.checkpoint_callback.best_model_path if cfg.train and trainer.checkpoint_callback else None
    evaluated = best or cfg.ckpt_path
    if cfg.test:
        trainer.test(module, datamodule=datamodule, ckpt_path=evaluated, weights_only=True, verbose=False)
        if not cfg.train:  # the evaluated checkpoint's own history, restored by `test`
            history, examples_seen = list(module.history), module.examples_seen
    metrics: dict[str, float] = {key: module.final_metrics[key] for key in METRIC_KEYS if cfg.test}
    if not trainer.is_global_zero:
        return metrics
    classifier = module.classifier
    if module.multi_label:  # a threshold per label, chosen on validation
        if classifier.thresholds is not None:
            metrics["thresholds"] = dict(zip(module.class_names, classifier.thresholds, strict=True))
    elif len(module.class_names) == 2:
        metrics["threshold"] = ARGMAX_THRESHOLD if classifier.threshold is None else classifier.threshold
    metrics["temperature"] = classifier.temperature
    decided = classifier.threshold is not None or classifier.thresholds is not None
    if cfg.train and best and (decided or classifier.temperature != 1):
        save_decision(module, best)
    metrics.update(examples_seen=examples_seen, train_seconds=round(train_seconds, 2))
    metrics["epochs_trained"] = history[-1]["epoch"] if history else 0
    write_outputs(cfg, module, trainer, metrics=metrics, history=history, evaluated=evaluated)
    return metrics


def print_lightning_lines_once() -> None:
    """Lightning's `lightning` logger has a console handler of its own and also passes its lines on to
    the root logger: when the root prints them (Hydra's handlers), the own handler goes."""
    if not logging.getLogger().handlers:
        return
    lightning_log = logging.getLogger("lightning")
    for handler in list(lightning_log.handlers):
        if type(handler) is logging.StreamHandler:  # a console, not a file
            lightning_log.removeHandler(handler)


def make_run(cfg: DictConfig) -> tuple[TextClassificationDataModule, GPTClassifier]:
    """The data and the module: built from the config to train, or from the checkpoint to evaluate."""
    if cfg.train:
        datamodule = make_datamodule(cfg)
        module = make_module(cfg, datamodule)
        if cfg.ckpt_path:  # one clear line now, not a size mismatch deep inside load_state_dict
            check_resume(cfg.ckpt_path, dict(module.hparams))
        return datamodule, module
    # Evaluate a checkpoint: its own model and data settings, not the command line's.
    settings = classifier_settings(read_hyper_parameters(cfg.ckpt_path))
    data = settings["data"] or {}
    read_as_trained = {key: data[key] for key in READ_AS_TRAINED_KEYS if key in data}
    datamodule = make_datamodule(
        cfg, max_length=data.get("max_length"), padding=data.get("padding"), **read_as_trained
    )
    return datamodule, GPTClassifier(**{**settings, "model": {**settings["model"], "weights": "random"}})


@contextmanager
def no_stub_folder_on_failure(out_dir: Path) -> Iterator[None]:
    """A run that fails before writing anything but Hydra's own files (`.hydra/`, the log) removes its
    folder, so failed attempts do not pile up among the runs; sweeps keep theirs for `FAILED`."""
    try:
        yield
    except BaseException:
        hydra_files_only = out_dir.is_dir() and all(
            entry.name == ".hydra" or entry.suffix == ".log" for entry in out_dir.iterdir()
        )
        if hydra_files_only and not in_multirun():
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def write_outputs(
    cfg: DictConfig,
    module: GPTClassifier,
    trainer: L.Trainer,
    *,
    metrics: dict[str, float],
    history: list[dict[str, float]],
    evaluated: str | None,
) -> None:
    """metrics.json, the report and plots, logged as artifacts too, and the summary on the console."""
    out_dir = Path(cfg.paths.output_dir)
    write_json_atomic(metrics, out_dir / "metrics.json")
    plots = plot_history(history, out_dir)
    if cfg.test:
        calibration = {"temperature": module.classifier.temperature, **module.calibration_report}
        write_json_atomic(
            {**module.test_report, **module.test_scores, **calibration},
            out_dir / "classification_report.json",
        )
        if module.multi_label:
            plots.append(write_per_label(module, trainer, out_dir))
        else:
            plots.append(write_confusion_matrix(module, trainer, out_dir))
            plots += write_curves(module, trainer, out_dir)
            plots += write_reliability(module, out_dir)
    files = [out_dir / "metrics.json", out_dir / "classification_report.json", *plots]
    log_artifacts(trainer.loggers, files)
    report(metrics, out_dir, evaluated, plots)
    for callback in trainer.callbacks:
        if isinstance(callback, PhaseTimer):  # enabled by the speed benchmark: phases.json
            callback.finish(trainer, module)


def save_decision(module: GPTClassifier, best: str) -> None:
    """Rewrite the best checkpoint with the temperature and threshold chosen after training, and
    `last.ckpt` too when it is the same file (a hard link); a `last.ckpt` of a later epoch is another
    model: it keeps argmax and no temperature."""
    last = Path(best).with_name("last.ckpt")
    same = last.is_file() and os.path.samefile(best, last)
    write_decision(best, module.classifier.decision())
    if same:
        link_or_copy(best, str(last))


def write_curves(module: GPTClassifier, trainer: L.Trainer, out_dir: Path) -> list[Path]:
    """`pr_curve.png` and `roc_curve.png` of the test split, and the PR curve(s) in TensorBoard."""
    if module.test_outputs is None:
        return []
    probs, labels = module.test_outputs
    names, positive = module.class_names, module.classifier.positive_class
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            for index in [positive] if len(names) == 2 else range(len(names)):
                tag = f"test/pr_curve/{names[index]}"
                logger.experiment.add_pr_curve(tag, labels == index, probs[:, index], trainer.global_step)
    return plot_curves(probs, labels, names, positive, out_dir)


def write_reliability(module: GPTClassifier, out_dir: Path) -> list[Path]:
    """`reliability.png` of the test split, before and after the fitted temperature (when one was)."""
    if not module.calibration_report or module.test_outputs is None:
        return []
    probs, labels = module.test_outputs
    before, temperature = module.uncalibrated_test_probs, module.classifier.temperature
    return [plot_reliability(before, probs, labels, temperature, out_dir)]


def write_confusion_matrix(module: GPTClassifier, trainer: L.Trainer, out_dir: Path) -> Path:
    """`confusion_matrix.png` of the test split, also in TensorBoard."""
    path, figure = plot_confusion(module.confusion, module.class_names, out_dir)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("test/confusion_matrix", figure, trainer.global_step, close=False)
    close(figure)
    return path


def write_per_label(module: GPTClassifier, trainer: L.Trainer, out_dir: Path) -> Path:
    """`per_label.png`: several labels per text have no confusion matrix; bars per label instead."""
    path, figure = plot_per_label(module.test_report, module.class_names, out_dir)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("test/per_label", figure, trainer.global_step, close=False)
    close(figure)
    return path


def report(metrics: dict[str, float], out_dir: Path, checkpoint: str | None, plots: list[Path]) -> None:
    """Print the results table and where everything is."""
    lines = ["", f"{'split':<12}{'accuracy':>10}{'loss':>10}"]
    for split in SPLITS:
        name = SHORT_NAMES[split]
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
