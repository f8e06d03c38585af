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
from omegaconf import DictConfig, OmegaConf

from gpt_classifier.cpu_threads import apply_threads
from gpt_classifier.data.datamodule import TextClassificationDataModule
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.checkpoint import classifier_settings, read_hyper_parameters, write_decision
from gpt_classifier.training.callbacks import AtomicCheckpointIO, link_or_copy
from gpt_classifier.training.decision import ARGMAX_THRESHOLD, positive_index
from gpt_classifier.training.lightning_module import GPTClassifier
from gpt_classifier.training.resume import check_resume
from gpt_classifier.training.run_outputs import write_outputs
from gpt_classifier.training.sweeps import in_multirun

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
        apply_threads(cfg.get("threads"), log_level=logging.INFO)
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


def save_decision(module: GPTClassifier, best: str) -> None:
    """Rewrite the best checkpoint with the temperature and threshold chosen after training, and
    `last.ckpt` too when it is the same file (a hard link); a `last.ckpt` of a later epoch is another
    model: it keeps argmax and no temperature."""
    last = Path(best).with_name("last.ckpt")
    same = last.is_file() and os.path.samefile(best, last)
    write_decision(best, module.classifier.decision())
    if same:
        link_or_copy(best, str(last))
