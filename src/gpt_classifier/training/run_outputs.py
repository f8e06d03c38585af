"""What a run writes after its final evaluation: metrics.json, the per-class (or per-label) report,
the plots (also logged as artifacts and to TensorBoard) and the summary on the console."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from gpt_classifier.atomic_files import write_json_atomic
from gpt_classifier.data.datamodule import SPLITS
from gpt_classifier.training.calibration import plot_reliability
from gpt_classifier.training.final_evaluation import SHORT_NAMES
from gpt_classifier.training.lightning_module import GPTClassifier
from gpt_classifier.training.multilabel import plot_per_label
from gpt_classifier.training.phases import PhaseTimer
from gpt_classifier.training.reports import close, plot_confusion, plot_curves, plot_history
from gpt_classifier.training.tracking import log_artifacts

log = logging.getLogger(__name__)


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
