"""`GPTClassifier`: the LightningModule that trains a `TextClassifier` as chapter 6 does.

It builds the classifier (GPT-2 with a fresh head and a trainable-layer policy), trains it with
cross-entropy on the logits at one read position per example (the last token, by default; a sigmoid
per label with several labels), keeps the per-epoch history behind the book's plots, and evaluates
every split with the best checkpoint at the end (`test`, finished by `final_evaluation.py`). When the
trainable part is a tail above a frozen, deterministic trunk, its input comes from a `TrunkCache`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import CatMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MultilabelExactMatch

from gpt_classifier.data.datamodule import SPLITS
from gpt_classifier.data.windows import aggregate_logits
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.classifier import build_classifier
from gpt_classifier.model.finetune import count_parameters, first_trainable_block
from gpt_classifier.training.calibration import check_method
from gpt_classifier.training.callbacks import ClearCacheOnFailure
from gpt_classifier.training.decision import check_settings, class_weights
from gpt_classifier.training.final_evaluation import SHORT_NAMES, finish
from gpt_classifier.training.multilabel import pos_weight
from gpt_classifier.training.resume import rng_states, set_rng_states
from gpt_classifier.training.trunk_cache import TrunkCache

log = logging.getLogger(__name__)


class GPTClassifier(L.LightningModule):
    """GPT-2 classifier; every argument but the optimizer, scheduler, `compile_blocks` and `cache_dir` is
    saved. `cache_dir`: where the frozen-trunk cache spills past its budget (None: `<the trainer's
    default_root_dir>/cache`). `loss`: `class_weights`, `label_smoothing`, `ignore_index`. `decision`:
    `positive_class` (an index), `min_precision` or `threshold`; None (evaluating a checkpoint): the
    checkpoint's own threshold. `calibration`: `method` none or temperature (fitted on validation
    after training, before the threshold is chosen).
    """

    def __init__(
        self,
        model: dict,
        class_names: list[str],
        finetune: dict | None = None,
        classifier: dict | None = None,
        data: dict | None = None,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., LRScheduler] | None = None,
        compile_blocks: bool = False,
        loss: dict | None = None,
        decision: dict | None = None,
        cache_dir: str | Path | None = None,
        calibration: dict | None = None,
    ) -> None:
        super().__init__()
        settings = {"model": model, "finetune": finetune or {}, "classifier": classifier or {}}
        hparams = {"class_names": list(class_names), "data": data or {}, "loss": loss or {}}
        calibration = calibration or {"method": "none"}
        check_method(calibration.get("method", "none"))
        self.save_hyperparameters({**settings, **hparams, "decision": decision, "calibration": calibration})
        self.classifier = build_classifier(class_names=list(class_names), data=data, **settings)
        self.decision = decision
        self.multi_label = bool((data or {}).get("multi_label"))  # a sigmoid per label, BCE
        if decision is not None:  # training: the config decides; else the checkpoint (on_load_checkpoint)
            check_settings(decision, 2 if self.multi_label else len(class_names))
            self.classifier.set_decision(decision)
        trainable, total = count_parameters(self.classifier.model)
        log.info(
            "trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compile_blocks = compile_blocks
        self.ignore_index = self.hparams["loss"].get("ignore_index", -100)
        self.label_smoothing = float(self.hparams["loss"].get("label_smoothing") or 0.0)
        self.class_weights: Tensor | None = None  # from the train split's labels, in `setup`
        finetune_settings = self.hparams["finetune"]
        self.cache = TrunkCache.for_classifier(
            self.classifier,
            first_trainable_block(self.classifier.model),
            setting=finetune_settings.get("cache_frozen", "auto"),
            budget_gb=finetune_settings.get("cache_budget_gb"),
            spill_dir=Path(cache_dir) if cache_dir is not None else None,
        )
        self._add_metrics(len(class_names))
        self.test_outputs: tuple[Tensor, Tensor] | None = None  # test split (probabilities, labels)
        self.uncalibrated_test_probs: Tensor | None = None  # before the fitted temperature
        self.test_scores: dict[str, float] = {}
        self.calibration_report: dict[str, float] = {}
        self.loaded_temperature = 1.0  # the classifier's before the final evaluation
        self.examples_seen = 0
        self.history: list[dict[str, float]] = []
        self.final_metrics: dict[str, float] = {}
        self.test_report: dict[str, dict[str, float]] = {}
        self._resumed_rng_states: dict[str, Any] | None = None

    def _add_metrics(self, num_classes: int) -> None:
        """Accuracy and loss while fitting; probabilities, labels and confusion for the final evaluation.
        Summed over processes (DDP) by torchmetrics; the final evaluation gathers every probability."""
        finals = tuple(f"final_{SHORT_NAMES[s]}" for s in SPLITS)
        fit = ("fit_train", "fit_val")
        accuracy = (  # several labels: a text counts when all its labels are right (subset accuracy)
            partial(MultilabelExactMatch, num_labels=num_classes)
            if self.multi_label
            else partial(MulticlassAccuracy, num_classes, average="micro")
        )
        self.accuracy = nn.ModuleDict({s: accuracy() for s in fit})
        self.mean_loss = nn.ModuleDict({s: MeanMetric() for s in (*fit, *finals)})
        self.final_logits = nn.ModuleDict({s: CatMetric() for s in finals})
        self.final_labels = nn.ModuleDict({s: CatMetric() for s in finals})
        self.confusion = MulticlassConfusionMatrix(num_classes, sync_on_compute=False)  # gathered already

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    def configure_callbacks(self) -> list[L.Callback]:
        return [ClearCacheOnFailure()]

    def setup(self, stage: str) -> None:
        if self.cache is not None and self.cache.spill_dir is None:
            self.cache.spill_dir = Path(self.trainer.default_root_dir) / "cache"
        if self.compile_blocks and stage == "fit":
            for block in self.classifier.model.trf_blocks:
                block.compile()
        setting = self.hparams["loss"].get("class_weights")
        if setting is not None and self.trainer.datamodule is not None:
            labels = self.trainer.datamodule.datasets["train"].labels
            self.class_weights = (
                pos_weight(setting, torch.tensor(labels), self.class_names)
                if self.multi_label
                else class_weights(setting, labels, len(self.class_names))
            )
            log.info("class weights (%s): %s", ", ".join(self.class_names), self.class_weights.tolist())

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """Class logits `[B, num_classes]` for padded token ids."""
        return self.classifier(input_ids, lengths)

    def _logits(self, batch: dict[str, Tensor], split: str) -> Tensor:
        """One row of logits per text: with windows, the aggregate of its windows' logits, so that the
        loss, the metrics and the threshold are per text (a window without the evidence is not taught
        the text's label)."""
        logits = self._row_logits(batch, split)
        if "text_of" not in batch:
            return logits
        aggregate = self.classifier.long_texts.aggregate
        return aggregate_logits(logits, batch["text_of"], len(batch["labels"]), aggregate)

    def _row_logits(self, batch: dict[str, Tensor], split: str) -> Tensor:
        if self.cache is None:
            return self(batch["input_ids"], batch["lengths"])
        # Built at the split's first batch; each DDP process keeps all of it.
        if split not in self.cache and not self.cache.build(split, self.trainer.datamodule.token_ids(split)):
            self.cache.clear()  # it fits nowhere (logged): the whole model runs, as uncached
            self.cache = None
            return self(batch["input_ids"], batch["lengths"])
        inputs = self.cache.batch(split, batch["index"], self.device)
        return self.classifier.logits_from_rows(**inputs, start_block=self.cache.start_block)

    def _step(self, batch: dict[str, Tensor], split: str, stage: str) -> Tensor:
        logits = self._logits(batch, split)
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        if self.multi_label:
            targets = batch["labels"].to(logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
        else:
            loss = F.cross_entropy(
                logits,
                batch["labels"],
                weight=weight,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
            )
        if stage == "fit_train":  # forward: also the batch's accuracy, logged every step
            self.accuracy[stage](logits, batch["labels"])
        elif stage == "fit_val":
            self.accuracy[stage].update(logits, batch["labels"])
        else:  # final: accuracy once the decision threshold is known
            self.final_logits[stage].update(logits.detach().float())
            self.final_labels[stage].update(batch["labels"])
        self.mean_loss[stage].update(loss.detach(), len(batch["labels"]))
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train", "fit_train")
        size = len(batch["labels"])
        self.examples_seen += size * self.trainer.world_size  # every process takes a full batch a step
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True
        )
        self.log("train/acc", self.accuracy["fit_train"], on_epoch=True, prog_bar=True, batch_size=size)
        self.log("examples_seen", float(self.examples_seen), on_step=True, on_epoch=False, batch_size=size)
        step_loss = loss.detach()
        if self.trainer.world_size > 1:  # the mean over the processes' batches of this step
            step_loss = self.trainer.strategy.reduce(step_loss.clone(), reduce_op="mean")
        self._log_by_examples({"train_loss": step_loss})
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "validation", "fit_val")
        size = len(batch["labels"])
        self.log("val/loss", self.mean_loss["fit_val"], on_epoch=True, prog_bar=True, batch_size=size)
        self.log("val/acc", self.accuracy["fit_val"], on_epoch=True, prog_bar=True, batch_size=size)

    def on_validation_epoch_end(self) -> None:
        """One history row per validation after training steps: the data behind the plots. It is added
        here, not at the training epoch's end, so that this epoch's checkpoint carries it."""
        if self.trainer.sanity_checking or self.mean_loss["fit_train"].update_count == 0:
            return
        row = {
            "epoch": self.current_epoch + 1,
            "examples_seen": self.examples_seen,
            "train_loss": float(self.mean_loss["fit_train"].compute()),
            "train_acc": float(self.accuracy["fit_train"].compute()),
            "val_loss": float(self.mean_loss["fit_val"].compute()),
            "val_acc": float(self.accuracy["fit_val"].compute()),
        }
        self.history.append(row)
        self._log_by_examples({key: row[key] for key in ("train_acc", "val_loss", "val_acc")})

    def on_train_epoch_end(self) -> None:
        self.mean_loss["fit_train"].reset()  # logged above through `train/loss`, kept for the history

    def _log_by_examples(self, values: dict[str, float | Tensor]) -> None:
        """The same metrics against examples seen, the book's second x-axis."""
        for logger in self.loggers:
            logger.log_metrics(
                {f"by_examples_seen/{k}": float(v) for k, v in values.items()}, step=self.examples_seen
            )

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Final evaluation: the datamodule's test loaders are every split, in `SPLITS` order."""
        split = SPLITS[dataloader_idx]
        stage = f"final_{SHORT_NAMES[split]}"
        self._step(batch, split, stage)
        size = len(batch["labels"])
        name = SHORT_NAMES[split]
        options = {"on_epoch": True, "batch_size": size, "add_dataloader_idx": False}
        self.log(f"final/{name}_loss", self.mean_loss[stage], **options)

    def on_test_epoch_start(self) -> None:
        """The final evaluation collects uncalibrated logits (its losses are the model's own); the
        temperature, fitted or the checkpoint's, is applied at its end."""
        self.loaded_temperature, self.classifier.temperature = self.classifier.temperature, 1.0
        for metric in (*self.final_logits.values(), *self.final_labels.values(), self.confusion):
            metric.reset()

    def on_test_epoch_end(self) -> None:
        """Every split's numbers from its logits (see `final_evaluation.finish`)."""
        finish(self)

    def teardown(self, stage: str) -> None:
        if stage == "test" and self.cache is not None:
            self.cache.clear()  # fit keeps it: the final evaluation reuses the train and val states

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["examples_seen"] = self.examples_seen
        checkpoint["history"] = self.history
        checkpoint["rng_states"] = rng_states()
        checkpoint["decision"] = self.classifier.decision()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.examples_seen = checkpoint.get("examples_seen", 0)
        self.history = checkpoint.get("history", [])
        self._resumed_rng_states = checkpoint.get("rng_states")
        if self.decision is None and checkpoint.get("decision"):  # evaluating a checkpoint: its own
            self.classifier.set_decision(checkpoint["decision"])

    def on_train_start(self) -> None:
        """A resumed run continues the random stream (dropout) where the checkpoint left it."""
        if self._resumed_rng_states is not None:
            set_rng_states(self._resumed_rng_states)
            self._resumed_rng_states = None

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise GPTClassifierError("no optimizer configured: pass optimizer=... to GPTClassifier")
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(
            optimizer=optimizer, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
