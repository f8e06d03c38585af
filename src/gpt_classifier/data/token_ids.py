"""Token ids to padded id arrays, in numpy only: what prediction needs, so that an exported
`.onnx` predicts and serves without torch (training's torch batches, `encoding.pad_batch`, build on it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpt_classifier.data.tokenizer import PAD_TOKEN_ID


def pad_ids(
    token_ids: Sequence[Sequence[int]], pad_token_id: int = PAD_TOKEN_ID, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`input_ids [B, width or the longest]` (int64) padded at the end with `pad_token_id`, and
    `lengths [B]` (int64): the real tokens of each row."""
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
    input_ids = np.full((len(token_ids), width or int(lengths.max())), pad_token_id, dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, : lengths[row]] = ids
    return input_ids, lengths
