"""Why a text got its label: per-token attributions by occlusion (Captum's `FeatureAblation`).

Each token in turn is replaced by the pad token, and its score is how much the predicted class's
probability drops without it (positive: the token pushed the text toward the predicted class;
negative: toward another). Occlusion needs only forward passes, so the same code explains a
checkpoint (torch) and an exported `.onnx` (ONNX Runtime). The cost per text is one forward pass
over a batch of n + 1 copies of it (n tokens, batched by `perturbations_per_eval`).

Tokens come with character offsets into the original text (tiktoken's `decode_with_offsets`):
GPT-2's byte-level BPE decodes back to the exact text, so `text[start:end]` is the token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from captum.attr import FeatureAblation
from torch import Tensor

from gpt_classifier.data.long_texts import bounded_prefix_tokens
from gpt_classifier.data.tokenizer import get_tokenizer
from gpt_classifier.deploy.predictor import Prediction, Scorer, as_scorer, predict_texts

if TYPE_CHECKING:
    from gpt_classifier.model.classifier import TextClassifier

PERTURBATIONS_PER_PASS = 64  # occluded copies of a text per forward pass


@dataclass
class TokenScore:
    token: str
    start: int
    end: int
    score: float


@dataclass
class Explanation:
    """A prediction and its tokens' scores toward the predicted class (`prediction.label`)."""

    prediction: Prediction
    tokens: list[TokenScore] = field(default_factory=list)

    def strongest(self, count: int) -> list[TokenScore]:
        """The `count` tokens that pushed hardest toward the predicted class, strongest first."""
        return sorted((t for t in self.tokens if t.score > 0), key=lambda t: -t.score)[:count]


def token_spans(text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Each token's `[start, end)` in `text` (the first `len(ids)` tokens of it)."""
    decoded, starts = get_tokenizer().decode_with_offsets(ids)
    ends = [*starts[1:], len(decoded)]
    return [(min(start, len(text)), min(end, len(text))) for start, end in zip(starts, ends, strict=True)]


def occlusion_scores(scorer: Scorer, ids: list[int], target: int, width: int | None) -> Tensor:
    """How much `target`'s probability drops when each token is replaced by the pad token."""
    pad, length = scorer.pad_token_id, len(ids)

    def probabilities(batch: Tensor) -> Tensor:
        """The class probabilities of occluded copies, padded as prediction pads the text."""
        inputs = torch.full((batch.shape[0], width or length), pad, dtype=torch.long)
        inputs[:, :length] = batch
        lengths = torch.full((batch.shape[0],), length)
        return torch.from_numpy(scorer.probabilities(scorer.logits(inputs.numpy(), lengths.numpy())))

    ablation = FeatureAblation(probabilities)
    with torch.no_grad():
        scores = ablation.attribute(
            torch.tensor([ids]),
            baselines=pad,
            target=target,
            perturbations_per_eval=min(len(ids), PERTURBATIONS_PER_PASS),
        )
    return scores[0].float()


def explain_texts(
    texts: list[str],
    classifier: Scorer | TextClassifier,
    *,
    max_length: int | None = None,
    threshold: float | None = None,
) -> list[Explanation]:
    """The prediction of each text and its tokens' scores, in input order (texts truncated as in
    prediction: only the tokens the classifier reads are scored; `threshold` as in `predict_texts`)."""
    scorer = as_scorer(classifier)
    predictions = predict_texts(texts, scorer, max_length=max_length, threshold=threshold)
    limit = min(max_length or scorer.max_length or scorer.context_length, scorer.context_length)
    width = limit if scorer.padding == "max_length" else None
    tokenizer = get_tokenizer()
    explanations = []
    for text, prediction in zip(texts, predictions, strict=True):
        explanation = Explanation(prediction)
        ids = bounded_prefix_tokens(tokenizer, text, limit)
        if ids:
            names = scorer.class_names  # several labels: the most probable one is explained
            most_probable = max(names, key=prediction.probabilities.__getitem__)
            target = names.index(prediction.label if prediction.label in names else most_probable)
            scores = occlusion_scores(scorer, ids, target, width).tolist()
            explanation.tokens = [
                TokenScore(text[start:end], start, end, score)
                for (start, end), score in zip(token_spans(text, ids), scores, strict=True)
            ]
        explanations.append(explanation)
    return explanations


def marked_text(explanation: Explanation, *, count: int = 3, color: bool = False) -> str:
    """The text with its `count` strongest tokens marked: bold green on a terminal, else `[[...]]`."""
    strongest = {id(token) for token in explanation.strongest(count)}
    text, parts, position = explanation.prediction.text, [], 0
    for token in explanation.tokens:
        if id(token) in strongest and token.token.strip():
            word = token.token.strip()
            start = token.start + token.token.index(word)
            parts.append(text[position:start])
            parts.append(f"\033[1;32m{word}\033[0m" if color else f"[[{word}]]")
            position = start + len(word)
    return "".join(parts) + text[position:]
