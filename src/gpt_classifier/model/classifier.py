"""`TextClassifier`: a `GPTModel` with a class head, reading one position per example (or the mean).

This is what a trained classifier is, without Lightning or Hydra: training wraps it in the
`GPTClassifier` LightningModule; prediction, serving and export load it alone from a checkpoint.
`Reading` is the one place that says which position the classifier reads and so which positions
its output depends on; the frozen-trunk cache and the model's packed path both ask it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gpt_classifier.data.long_texts import LongTexts
from gpt_classifier.data.tokenizer import PAD_TOKEN_ID
from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.finetune import apply_policy
from gpt_classifier.model.gpt import GPTModel
from gpt_classifier.model.packed import Packing, classify, classify_rows
from gpt_classifier.model.weights import build_backbone

Position = Literal["last", "first", "flexible"]
Pooling = Literal["token", "mean"]
Padding = Literal["max_length", "dynamic", "none"]


@dataclass(frozen=True)
class Reading:
    """Which output the classifier reads: position `last` (the book), `first`, or `flexible` (the last
    real token), or with `pooling="mean"` the mean over the real tokens. `causal` is the model's mask.

    Positions are per example: `lengths` are the real tokens, `widths` the padded length the
    example is seen at (an int for a padded batch, or one per example).
    """

    position: Position = "last"
    pooling: Pooling = "token"
    causal: bool = True

    def __post_init__(self) -> None:
        if self.position not in ("last", "first", "flexible"):
            raise GPTClassifierError(
                f"classifier.position={self.position!r} is unknown: use last, first or flexible"
            )
        if self.pooling not in ("token", "mean"):
            raise GPTClassifierError(f"classifier.pooling={self.pooling!r} is unknown: use token or mean")

    @classmethod
    def for_padding(cls, padding: Padding, **settings: Any) -> Reading:
        """Unpadded batches of one have their last token at the end, so `last` is the last real token
        there: say so once, and prediction's padded batches read the same token."""
        if padding == "none" and settings.get("position", "last") == "last":
            settings["position"] = "flexible"
        return cls(**settings)

    def read_positions(self, lengths: Tensor, widths: Tensor | int) -> Tensor:
        """The position read in each example: `widths - 1` (last), 0 (first) or `lengths - 1`."""
        if self.position == "last":
            return per_example(widths, lengths) - 1
        if self.position == "first":
            return torch.zeros_like(lengths)
        return lengths - 1

    def needed_lengths(self, lengths: Tensor, widths: Tensor | int) -> Tensor:
        """How many leading positions of each example the output depends on: with the causal mask, up
        to the read position (mean pooling: the real tokens); without it, all `widths`."""
        if not self.causal:
            return per_example(widths, lengths)
        if self.pooling == "mean":
            return lengths
        return self.read_positions(lengths, widths) + 1


def per_example(widths: Tensor | int, lengths: Tensor) -> Tensor:
    """`widths` as one value per example, shaped like `lengths`; a symbolic width stays symbolic (ONNX)."""
    if isinstance(widths, Tensor):
        return widths.to(lengths.device).expand_as(lengths).clone()
    return torch.full_like(lengths, widths)


def decide(probabilities: Tensor, *, positive_class: int, threshold: float | None) -> Tensor:
    """The predicted class per row of `probabilities` `[B, classes]`: argmax, or for two classes with
    a threshold, `positive_class` when its probability is >= the threshold."""
    if threshold is None or probabilities.shape[-1] != 2:
        return probabilities.argmax(-1)
    positive = probabilities[:, positive_class] >= threshold
    return torch.where(positive, positive_class, 1 - positive_class)


def decide_labels(probabilities: Tensor, thresholds: list[float] | None) -> Tensor:
    """Several labels per text: `[B, labels]` true where a label's probability is >= its threshold
    (0.5 for every label when none were chosen)."""
    cut = torch.tensor(thresholds or [0.5] * probabilities.shape[-1], dtype=probabilities.dtype)
    return probabilities >= cut.to(probabilities.device)


def to_probabilities(logits: Tensor, *, multi_label: bool) -> Tensor:
    """Softmax over the classes (one label per text), or a sigmoid per label (several)."""
    return logits.sigmoid() if multi_label else logits.softmax(-1)


class TextClassifier(nn.Module):
    """Token ids in, class logits out; carries what prediction needs to tokenize and pad as in training."""

    def __init__(
        self,
        model: GPTModel,
        class_names: list[str],
        reading: Reading,
        *,
        max_length: int | None,
        padding: Padding = "max_length",
        pad_token_id: int = PAD_TOKEN_ID,
        read_positions_only: bool = True,
        positive_class: int | None = None,
        threshold: float | None = None,
        long_texts: LongTexts | None = None,
        multi_label: bool = False,
        thresholds: list[float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        # How a text longer than max_length is read (truncated, head and tail, or windows aggregated).
        self.long_texts = long_texts or LongTexts(max_length=max_length or model.cfg.context_length)
        self.model = model
        self.class_names = list(class_names)
        self.reading = reading
        self.max_length = max_length
        self.padding = padding
        self.pad_token_id = pad_token_id
        self.read_positions_only = read_positions_only
        # Two classes: the one called positive, and the decision threshold on its probability
        # (None: argmax, the book). Set by training (`decision.*`), saved in checkpoints and exports.
        self.positive_class = positive_class if positive_class is not None else len(self.class_names) - 1
        self.threshold = threshold
        # Several labels per text: a sigmoid per label, and one threshold per label (None: 0.5 each).
        self.multi_label = multi_label
        self.thresholds = thresholds
        # Calibration: the logits are divided by it before softmax (1: as trained). Fitted on the
        # validation split after training (`calibration=temperature`); argmax is unchanged by it.
        self.temperature = temperature

    def decide(self, probabilities: Tensor, threshold: float | None = None) -> Tensor:
        """The predicted class per row of `probabilities` (see `decide`); `threshold` overrides the own."""
        if self.multi_label:
            thresholds = self.thresholds if threshold is None else [threshold] * len(self.class_names)
            return decide_labels(probabilities, thresholds)
        threshold = self.threshold if threshold is None else threshold
        return decide(probabilities, positive_class=self.positive_class, threshold=threshold)

    def probabilities(self, logits: Tensor) -> Tensor:
        return to_probabilities(logits, multi_label=self.multi_label)

    def decision(self) -> dict[str, Any]:
        """The decision settings, as a checkpoint's top-level `decision` holds them."""
        decision: dict[str, Any] = {
            "positive_class": self.positive_class,
            "threshold": self.threshold,
            "temperature": self.temperature,
        }
        return {**decision, "thresholds": self.thresholds} if self.multi_label else decision

    def set_decision(self, decision: dict[str, Any]) -> None:
        """Take a `decision` (a checkpoint's, or training's `decision.*`): its positive class when it
        names one, its threshold (None: argmax) and its temperature (none: 1, uncalibrated)."""
        self.positive_class = decision.get("positive_class", self.positive_class)
        self.threshold = decision.get("threshold")
        self.thresholds = decision.get("thresholds")
        self.temperature = float(decision.get("temperature") or 1.0)

    def settings(self) -> dict[str, Any]:
        """What using the classifier needs besides its weights (JSON): exports carry it (ONNX, HF)."""
        return {
            "class_names": self.class_names,
            "max_length": self.max_length,
            "context_length": self.context_length,
            "padding": self.padding,
            "pad_token_id": self.pad_token_id,
            **asdict(self.reading),
            "positive_class": self.positive_class,
            "threshold": self.threshold,
            **self.long_texts.settings(),
            "multi_label": self.multi_label,
            "thresholds": self.thresholds,
            "temperature": self.temperature,
        }

    def calibrated(self, logits: Tensor) -> Tensor:
        """`logits / temperature`: what softmax turns into calibrated probabilities (exports trace it)."""
        return logits if self.temperature == 1.0 else logits / self.temperature

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """Class logits `[B, classes]` (divided by the temperature) for token ids padded to a common
        width, `lengths` real tokens each."""
        width = input_ids.shape[1]
        return self.logits_from(
            self.model.embed(input_ids),
            read_pos=self.reading.read_positions(lengths, width),
            lengths=lengths,
            needed=self.reading.needed_lengths(lengths, width),
        )

    def logits_from(
        self, x: Tensor, *, read_pos: Tensor, lengths: Tensor, needed: Tensor, start_block: int = 0
    ) -> Tensor:
        """Logits from hidden states `x` entering block `start_block` (the cached trunk's output)."""
        pooled = {"mean_over": lengths} if self.reading.pooling == "mean" else {"read_pos": read_pos}
        prefix = needed if self.read_positions_only else None
        return self.calibrated(classify(self.model, x, start_block=start_block, prefix=prefix, **pooled))

    def logits_from_rows(
        self, rows: Tensor, packing: Packing, *, read_pos: Tensor, lengths: Tensor, start_block: int = 0
    ) -> Tensor:
        """Logits from packed hidden states (the cache's layout: `packing.lengths` rows per example)."""
        if not self.read_positions_only:  # the book's computation needs the padded layout
            x = packing.unpack(rows)
            return self.logits_from(
                x, read_pos=read_pos, lengths=lengths, needed=packing.lengths, start_block=start_block
            )
        pooled = {"mean_over": lengths} if self.reading.pooling == "mean" else {"read_pos": read_pos}
        return self.calibrated(classify_rows(self.model, rows, packing, start_block=start_block, **pooled))

    @property
    def context_length(self) -> int:
        return self.model.cfg.context_length


def build_classifier(
    model: dict[str, Any],
    class_names: list[str],
    finetune: dict[str, Any] | None = None,
    classifier: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> TextClassifier:
    """A `TextClassifier` from the settings a checkpoint saves (`model`, `finetune`, `classifier`, `data`).

    The backbone comes from `model.weights` (pretrained, random or a folder), `out_head` becomes a
    fresh `Linear(emb_dim, classes)`, and the finetune policy decides what trains (LoRA adds layers).
    """
    finetune, classifier, data = dict(finetune or {}), dict(classifier or {}), dict(data or {})
    backbone = build_backbone(model)
    backbone.out_head = nn.Linear(backbone.cfg.emb_dim, len(class_names))
    apply_policy(
        backbone,
        finetune.get("policy", "last_block"),
        last_n_blocks=finetune.get("last_n_blocks"),
        lora_rank=finetune.get("lora_rank", 16),
        lora_alpha=finetune.get("lora_alpha", 16.0),
        lora_scaling=finetune.get("lora_scaling", "alpha"),
    )
    padding = data.get("padding", "max_length")
    max_length = data.get("max_length")
    reading = Reading.for_padding(
        padding,
        position=classifier.get("position", "last"),
        pooling=classifier.get("pooling", "token"),
        causal=backbone.cfg.causal,
    )
    return TextClassifier(
        backbone,
        class_names,
        reading,
        max_length=max_length,
        padding=padding,
        pad_token_id=data.get("pad_token_id", PAD_TOKEN_ID),
        read_positions_only=classifier.get("read_positions_only", True),
        long_texts=LongTexts.from_settings(data, max_length or backbone.cfg.context_length),
        multi_label=bool(data.get("multi_label")),
    )
