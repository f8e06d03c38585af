"""Fine-tune GPT-2 family models for text classification."""

from gpt_classifier.errors import GPTClassifierError

__all__ = ["GPTClassifierError"]
__version__ = "0.1.0"
