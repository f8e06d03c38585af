"""int8 exports that check themselves: label agreement with fp32 and the accuracy change on known texts
(the run's validation split, or a file), and a bar below which the export is refused.

Quantization can cost more accuracy than its size saving is worth (reported drops of 5-15 %), and
nothing in the file would say so. Here each candidate (dynamic per-tensor, then per-channel) is run
on the texts beside the fp32 model; the first that clears the bar is written, with its numbers in the
metadata; when none does, the export stops with one line and the best numbers (`force` writes it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from gpt_classifier.errors import GPTClassifierError

DEFAULT_MIN_AGREEMENT = 0.99  # of the texts keep their fp32 label
DEFAULT_MAX_ACCURACY_DROP = 0.5  # accuracy points lost against fp32


@dataclass(frozen=True)
class CheckTexts:
    """Texts to compare the models on, their labels (class indexes) when known, and where they came from."""

    texts: list[str]
    labels: list[int] | None
    source: str


def column(frame: pd.DataFrame, name: str) -> str | None:
    """The column called `name` in any letter case, or None."""
    return next((c for c in frame.columns if str(c).lower() == name), None)


def read_check_texts(path: str | Path, class_names: list[str], *, source: str) -> CheckTexts:
    """A CSV with a `text` column and optionally a `label` column (class names or indexes)."""
    path = Path(path)
    if not path.is_file():
        raise GPTClassifierError(f"{source} {path} not found: pass a CSV with a text column (and label)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise GPTClassifierError(f"{source} {path} cannot be read as CSV ({type(err).__name__})") from None
    text_column, label_column = column(frame, "text"), column(frame, "label")
    if text_column is None or frame.empty:
        raise GPTClassifierError(f"{source} {path} needs a text column and at least one row")
    labels = None
    if label_column is not None:
        names = [str(name) for name in class_names]
        indexes = [str(i) for i in range(len(names))]
        values = frame[label_column].astype(str).tolist()
        unknown = sorted({v for v in values if v not in names and v not in indexes})
        if unknown:
            raise GPTClassifierError(
                f"{source} {path}: labels {unknown[:5]} are not classes: use "
                f"{', '.join(names)} or 0-{len(names) - 1}"
            )
        labels = [names.index(v) if v in names else int(v) for v in values]
    return CheckTexts(frame[text_column].tolist(), labels, f"{source} {path}")


@dataclass(frozen=True)
class Agreement:
    """How a quantized model's labels compare with fp32's on `texts` texts (accuracy: with labels)."""

    method: str
    texts: int
    agreeing: int
    fp32_accuracy: float | None
    int8_accuracy: float | None

    @property
    def agreement(self) -> float:
        return self.agreeing / self.texts

    @property
    def accuracy_drop(self) -> float | None:
        """Accuracy points lost against fp32 (negative: gained)."""
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    def summary(self) -> str:
        line = f"{self.method}: label agreement {100 * self.agreement:.2f}% ({self.agreeing}/{self.texts})"
        if self.accuracy_drop is not None:
            line += (
                f", accuracy {100 * self.fp32_accuracy:.2f}% -> {100 * self.int8_accuracy:.2f}%"
                f" ({100 * (self.int8_accuracy - self.fp32_accuracy):+.2f} points)"
            )
        return line

    def as_metadata(self) -> dict:
        return {**asdict(self), "agreement": self.agreement, "accuracy_drop_points": self.accuracy_drop}


def accuracy(predicted: list[int], labels: list[int] | None) -> float | None:
    if labels is None:
        return None
    return sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)


@dataclass(frozen=True)
class QuantizationGate:
    """The bar an int8 model must clear on `check`'s texts; `force` writes the best one anyway."""

    check: CheckTexts | None
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    force: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_agreement <= 1:
            raise GPTClassifierError(f"--min-agreement {self.min_agreement} must be in [0, 1] (e.g. 0.99)")
        if self.max_accuracy_drop < 0:
            raise GPTClassifierError(f"--max-accuracy-drop {self.max_accuracy_drop} must be >= 0 (points)")

    def passes(self, result: Agreement) -> bool:
        drop = result.accuracy_drop
        return result.agreement >= self.min_agreement and (drop is None or drop <= self.max_accuracy_drop)

    def choose(self, fp32: Path, candidates: Iterable[tuple[str, Path]]) -> tuple[Path, Agreement | None]:
        """The first candidate file that passes (or, with `force`, the best one) and its numbers."""
        if self.check is None:  # nothing to measure on: only with force (the CLI says so)
            return next(iter(candidates))[1], None
        from gpt_classifier.deploy.onnx_runtime import OnnxClassifier

        fp32_classifier = OnnxClassifier.load(fp32)
        reference = self.labels_of(fp32_classifier)
        best: tuple[Path, Agreement] | None = None
        for method, path in candidates:
            session = ort_session(path)
            predicted = self.labels_of(OnnxClassifier(session, fp32_classifier.settings))
            agreeing = sum(a == b for a, b in zip(predicted, reference, strict=True))
            result = Agreement(
                method,
                len(reference),
                agreeing,
                accuracy(reference, self.check.labels),
                accuracy(predicted, self.check.labels),
            )
            if self.passes(result):
                return path, result
            if best is None or result.agreement > best[1].agreement:
                best = (path, result)
        assert best is not None
        if self.force:
            return best
        raise GPTClassifierError(
            f"int8 refused on {self.check.source}: {best[1].summary()}; the bar is agreement >= "
            f"{100 * self.min_agreement:.2f}% and an accuracy drop <= {self.max_accuracy_drop:.2f} points "
            "(--min-agreement, --max-accuracy-drop); export fp32, or --force to write it anyway"
        )

    def labels_of(self, classifier) -> list[int]:
        """The class indexes an `OnnxClassifier` gives the check texts."""
        from gpt_classifier.deploy.predictor import predict_texts

        names = classifier.class_names
        with torch.no_grad():
            predictions = predict_texts(self.check.texts, classifier)
        return [names.index(p.label) for p in predictions]


def ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
