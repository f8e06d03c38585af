"""Fine-tune GPT-2 family models for text classification, and use them.

The public names load lazily, so `import gpt_classifier` stays light (no torch, no Lightning):

    from gpt_classifier import SpamDataModule, GPTClassifier, TextClassifier, load_predictor
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
PUBLIC_NAMES = {
    "GPTClassifierError": "gpt_classifier.errors",
    "GPTModel": "gpt_classifier.model.gpt",
    "GPTConfig": "gpt_classifier.model.gpt",
    "TextClassifier": "gpt_classifier.model.classifier",
    "load_classifier": "gpt_classifier.model.checkpoint",
    "TextClassificationDataModule": "gpt_classifier.data.datamodule",
    "SpamDataModule": "gpt_classifier.data.sms",
    "ImdbDataModule": "gpt_classifier.data.imdb",
    "TabularDataModule": "gpt_classifier.data.tabular",
    "GPTClassifier": "gpt_classifier.training.lightning_module",
    "load_predictor": "gpt_classifier.deploy.predictor",
    "predict_texts": "gpt_classifier.deploy.predictor",
}
__all__ = sorted(PUBLIC_NAMES)


def __getattr__(name: str) -> Any:
    if name not in PUBLIC_NAMES:
        raise AttributeError(f"module 'gpt_classifier' has no attribute {name!r}")
    value = getattr(import_module(PUBLIC_NAMES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *PUBLIC_NAMES])
