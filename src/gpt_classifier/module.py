"""`GPTClassifier`: GPT-2 with a fresh classification head, trained as in chapter 6.

The module builds the `GPTModel` (pretrained, random or from a local folder), swaps `out_head` for
`Linear(emb_dim, num_classes)`, applies a trainable-layer policy and trains with cross-entropy on
the logits at one read position per example (the last token, by default). When the trainable part
is a tail above a frozen, deterministic trunk, the trunk's output is cached once (see `cache.py`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from gpt_classifier.cache import CachedSplit, build_cache, cache_problem
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.finetune import apply_policy, count_parameters, first_trainable_block
from gpt_classifier.model import GPTConfig, GPTModel, read_positions

log = logging.getLogger(__name__)

SHORT = {"train": "train", "validation": "val", "test": "test"}
DEFAULT_FINETUNE = {
    "policy": "last_block",
    "last_n_blocks": None,
    "lora_rank": 16,
    "lora_alpha": 16.0,
    "cache_frozen": "auto",
    "read_positions_only": True,
}
DEFAULT_CLASSIFIER = {"position": "last", "pooling": "token", "ignore_index": -100}
DEFAULT_DATA = {"max_length": None, "padding": "max_length", "pad_token_id": 50256}


def build_backbone(model: dict) -> GPTModel:
    """A `GPTModel` from a model config: `weights` is `pretrained` (by `name`), `random`, or a folder."""
    cfg = GPTConfig(**{k: v for k, v in model.items() if k not in ("name", "weights")})
    weights = str(model.get("weights", "random"))
    if weights == "random":
        return GPTModel(cfg)
    from gpt_classifier.weights import load_pretrained

    return load_pretrained(model["name"] if weights == "pretrained" else weights, cfg)


def rng_states() -> dict[str, Any]:
    """torch's CPU and CUDA random states: what dropout draws from."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


class GPTClassifier(L.LightningModule):
    """GPT-2 classifier; every argument but the optimizer and scheduler is saved in checkpoints."""

    def __init__(
        self,
        model: dict,
        class_names: list[str],
        finetune: dict | None = None,
        classifier: dict | None = None,
        data: dict | None = None,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        finetune = {**DEFAULT_FINETUNE, **(finetune or {})}
        classifier = {**DEFAULT_CLASSIFIER, **(classifier or {})}
        data = {**DEFAULT_DATA, **(data or {})}
        self.save_hyperparameters(
            {
                "model": model,
                "class_names": list(class_names),
                "finetune": finetune,
                "classifier": classifier,
                "data": data,
            }
        )
        if classifier["position"] not in ("last", "first", "flexible"):
            raise GPTClassifierError(
                f"classifier.position={classifier['position']!r} is unknown: use last, first or flexible"
            )
        if classifier["pooling"] not in ("token", "mean"):
            raise GPTClassifierError(
                f"classifier.pooling={classifier['pooling']!r} is unknown: use token or mean"
            )
        # Unpadded batches of one have their last token at the end: read it however batches are padded later.
        unpadded_last = data["padding"] == "none" and classifier["position"] == "last"
        self.position = "flexible" if unpadded_last else classifier["position"]
        self.model = build_backbone(model)
        self.model.out_head = nn.Linear(self.model.cfg.emb_dim, len(class_names))
        apply_policy(
            self.model,
            finetune["policy"],
            finetune["last_n_blocks"],
            finetune["lora_rank"],
            finetune["lora_alpha"],
        )
        trainable, total = count_parameters(self.model)
        log.info(
            "trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.accuracy = nn.ModuleDict(
            {
                name: MulticlassAccuracy(len(class_names), average="micro")
                for name in ("fit_train", "fit_val", "final_train", "final_val", "final_test")
            }
        )
        self.confusion = MulticlassConfusionMatrix(len(class_names))  # of the final test split
        # Evaluation losses, weighted by batch size and summed over processes (DDP) by torchmetrics:
        # Lightning's own sync_dist mean is off when processes see different numbers of examples
        # (149 validation examples over 2 processes; Lightning issue #21859).
        self.mean_loss = nn.ModuleDict(
            {name: MeanMetric() for name in ("fit_val", "final_train", "final_val", "final_test")}
        )
        self.start_block = first_trainable_block(self.model)
        self.use_cache = self._cache_decision(finetune["cache_frozen"])
        self.cache: dict[str, CachedSplit] = {}
        self.datamodule: L.LightningDataModule | None = None  # set by the caller when not fitting
        self.eval_splits = ["test"]
        self.examples_seen = 0
        self.history: list[dict[str, float]] = []
        self._epoch_sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, examples
        self._resumed_rng_states: dict[str, Any] | None = None

    @property
    def class_names(self) -> list[str]:
        return self.hparams["class_names"]

    def _cache_decision(self, setting: bool | str) -> bool:
        if setting not in (True, False, "auto"):
            raise GPTClassifierError(f"finetune.cache_frozen={setting!r} is unknown: use auto, true or false")
        if setting is False:
            return False
        clf, data = self.hparams["classifier"], self.hparams["data"]
        problem = cache_problem(self.model, self.start_block, data["padding"], self.position, clf["pooling"])
        if problem and setting is True:
            raise GPTClassifierError(f"finetune.cache_frozen=true is impossible here: {problem}")
        if problem:
            log.info("frozen-trunk cache off: %s", problem)
        return problem is None

    def _cached_split(self, split: str) -> CachedSplit:
        """The split's cache, built at its first batch. Under DDP each process caches the whole split:
        the training shard of a process changes every epoch, and the cache is keyed by example."""
        if split not in self.cache:
            datamodule = self.datamodule or self.trainer.datamodule
            data, clf = self.hparams["data"], self.hparams["classifier"]
            pad_to = data["max_length"] if data["padding"] == "max_length" else None
            self.cache[split] = build_cache(
                self.model,
                self.start_block,
                datamodule.datasets[split],
                pad_to,
                self.position,
                clf["pooling"],
                data["pad_token_id"],
            )
            cached = self.cache[split]
            log.info(
                "cached the frozen blocks 0-%d for %d %s examples: %.1f MB of hidden states (%d positions)",
                self.start_block - 1,
                len(cached.states),
                split,
                cached.nbytes / 2**20,
                sum(len(s) for s in cached.states),
            )
        return self.cache[split]

    def release_cache(self) -> None:
        self.cache.clear()

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """Class logits `[B, num_classes]` for padded token ids, computed from the tokens."""
        clf = self.hparams["classifier"]
        read = read_positions(lengths, input_ids.shape[1], self.position)
        return self.model.classify(
            self.model.embed(input_ids),
            read,
            lengths,
            0,
            clf["pooling"],
            self.hparams["finetune"]["read_positions_only"],
        )

    def _logits(self, batch: dict[str, Tensor], split: str) -> Tensor:
        if not self.use_cache:
            return self(batch["input_ids"], batch["lengths"])
        x, read, lengths = self._cached_split(split).batch(batch["index"])
        return self.model.classify(
            x.to(self.device),
            read,
            lengths,
            self.start_block,
            self.hparams["classifier"]["pooling"],
            self.hparams["finetune"]["read_positions_only"],
        )

    def _loss(self, batch: dict[str, Tensor], split: str) -> tuple[Tensor, Tensor]:
        logits = self._logits(batch, split)
        loss = F.cross_entropy(
            logits, batch["labels"], ignore_index=self.hparams["classifier"]["ignore_index"]
        )
        return loss, logits

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, logits = self._loss(batch, "train")
        size = len(batch["labels"])
        self.examples_seen += size * self.trainer.world_size  # every process takes a full batch a step
        self.accuracy["fit_train"](logits, batch["labels"])
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True
        )
        self.log(
            "train/acc",
            self.accuracy["fit_train"],
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=size,
        )
        self.log("examples_seen", float(self.examples_seen), on_step=True, on_epoch=False)
        correct = (logits.argmax(-1) == batch["labels"]).sum()
        counts = torch.stack([loss.detach() * size, correct, torch.tensor(size, device=loss.device)])
        self._epoch_sums += counts.double().cpu()
        step_loss = loss.detach()
        if self.trainer.world_size > 1:  # the mean over the processes' batches of this step
            step_loss = self.trainer.strategy.reduce(step_loss.clone(), reduce_op="mean")
        self._log_by_examples({"train_loss": step_loss.item()})
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch, "validation")
        size = len(batch["labels"])
        self.accuracy["fit_val"](logits, batch["labels"])
        self.mean_loss["fit_val"].update(loss.detach(), size)
        self.log("val/loss", self.mean_loss["fit_val"], on_epoch=True, prog_bar=True, batch_size=size)
        self.log("val/acc", self.accuracy["fit_val"], on_epoch=True, prog_bar=True, batch_size=size)

    def on_validation_epoch_end(self) -> None:
        """One history row per validation after training steps: the data behind the plots."""
        if self.trainer.sanity_checking:
            return
        sums = self._epoch_sums
        if self.trainer.world_size > 1:  # each process counted its own batches: add them up
            sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum").cpu()
        loss_sum, correct, seen = sums.tolist()
        if seen == 0:
            return
        metrics = self.trainer.callback_metrics
        row = {
            "epoch": self.current_epoch + 1,
            "examples_seen": self.examples_seen,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": float(metrics["val/loss"]),
            "val_acc": float(metrics["val/acc"]),
        }
        self.history.append(row)
        self._epoch_sums.zero_()
        self._log_by_examples({"val_loss": row["val_loss"], "val_acc": row["val_acc"]})

    def _log_by_examples(self, values: dict[str, float]) -> None:
        """The same metrics against examples seen, the book's second x-axis."""
        for logger in self.loggers:
            logger.log_metrics(
                {f"by_examples_seen/{k}": v for k, v in values.items()}, step=self.examples_seen
            )

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.eval_splits[dataloader_idx]
        loss, logits = self._loss(batch, split)
        size = len(batch["labels"])
        name = SHORT[split]
        metric = self.accuracy[f"final_{name}"]
        metric(logits, batch["labels"])
        if split == "test":
            self.confusion.update(logits, batch["labels"])
        mean_loss = self.mean_loss[f"final_{name}"]
        mean_loss.update(loss.detach(), size)
        self.log(f"final/{name}_loss", mean_loss, on_epoch=True, batch_size=size, add_dataloader_idx=False)
        self.log(f"final/{name}_acc", metric, on_epoch=True, batch_size=size, add_dataloader_idx=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["examples_seen"] = self.examples_seen
        checkpoint["history"] = self.history
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.examples_seen = checkpoint.get("examples_seen", 0)
        self.history = checkpoint.get("history", [])
        self._resumed_rng_states = checkpoint.get("rng_states")

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


def per_class_report(confusion: Tensor, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (rows: true class)."""
    confusion = confusion.double()
    hits, predicted, actual = confusion.diag(), confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, hits / actual.clamp(min=1), 0.0)
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0
    )
    return {
        name: {"precision": p, "recall": r, "f1": f, "support": int(n)}
        for name, p, r, f, n in zip(
            class_names, precision.tolist(), recall.tolist(), f1.tolist(), actual.tolist(), strict=True
        )
    }


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.1, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup over `warmup_fraction` of the steps, then cosine decay to `min_lr_ratio` x lr."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint, loaded safely (`weights_only=True`), or one clear error."""
    path = Path(path)
    if not path.is_file():
        raise GPTClassifierError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise GPTClassifierError(
            f"checkpoint {path} is unreadable ({type(err).__name__}): it is corrupt, truncated or not a "
            "gpt-classifier checkpoint; use another one (e.g. checkpoints/last.ckpt)"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "hyper_parameters" not in checkpoint
        or "state_dict" not in checkpoint
    ):
        raise GPTClassifierError(
            f"checkpoint {path} has no model settings: it was not written by gpt-classifier"
        )
    return checkpoint


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> GPTClassifier:
    """A trained `GPTClassifier` from its checkpoint alone (no Hub access, no other file)."""
    checkpoint = read_checkpoint(path, map_location)
    hparams = dict(checkpoint["hyper_parameters"])
    hparams["model"] = {**hparams["model"], "weights": "random"}  # the checkpoint holds every weight
    module = GPTClassifier(**hparams)
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return module.to(map_location).eval()
