"""The classifier's path through the book's model: compute only what the read positions depend on.

A classifier reads one position per example (or averages the real tokens). Under the causal mask
nothing after the read position matters, so every block runs on the packed prefixes of the examples
(`Packing`: no work on padding); and in the last block the query, attention output, MLP,
`final_norm` and `out_head` are computed only at the read position, while keys and values cover the
prefix. The functions take the book's modules (`model/gpt.py`) and use their weights, so the state
dict is the book's; the result equals slicing `GPTModel.forward`'s output (tests/model/test_packed.py).
`classify` can also start from hidden states at any block boundary, which is how training reuses a
cached frozen trunk.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt_classifier.model.gpt import GPTModel, MultiHeadAttention, TransformerBlock, merge_heads, split_heads


class Packing:
    """The positions of a padded batch `[B, T, ...]` that are computed: the first `lengths[b]` of each.

    Position-wise layers (LayerNorm, Linear, the MLP) run on the packed rows `[N, ...]` alone; only
    attention, which mixes positions, unpacks its queries, keys and values into the padded layout,
    with zeros past each prefix. Under the causal mask a position never sees those zeros.
    """

    def __init__(self, lengths: Tensor, width: int) -> None:
        self.lengths, self.width = lengths, width
        mask = torch.arange(width, device=lengths.device) < lengths[:, None]
        self.full = bool(mask.all())
        self.index = mask.flatten().nonzero().squeeze(1)
        self.starts = lengths.cumsum(0) - lengths

    def to(self, device: torch.device | str) -> Packing:
        """The same packing with its index tensors on `device` (build it where the lengths are)."""
        moved = copy.copy(self)
        moved.lengths, moved.index, moved.starts = (
            t.to(device, non_blocking=True) for t in (self.lengths, self.index, self.starts)
        )
        return moved

    def pack(self, x: Tensor) -> Tensor:
        """`[B, T, ...]` to the computed rows `[N, ...]`."""
        rows = x.flatten(0, 1)
        return rows if self.full else rows.index_select(0, self.index)

    def unpack(self, rows: Tensor) -> Tensor:
        """`[N, ...]` to `[B, T, ...]`, zeros past each prefix."""
        if not self.full:
            padded = rows.new_zeros(len(self.lengths) * self.width, *rows.shape[1:])
            rows = padded.index_copy(0, self.index, rows)
        return rows.unflatten(0, (len(self.lengths), self.width))

    def take(self, rows: Tensor, positions: Tensor) -> Tensor:
        """Row `positions[b]` of each example, as a length-1 sequence: `[B, 1, ...]`."""
        return rows[self.starts + positions].unsqueeze(1)

    def mean(self, rows: Tensor, counts: Tensor) -> Tensor:
        """The mean of the first `counts[b]` rows `[N, C]` of each example: `[B, C]`."""
        return masked_mean(self.unpack(rows), counts)


def attend(att: MultiHeadAttention, rows: Tensor, packing: Packing, read_pos: Tensor | None = None) -> Tensor:
    """`att` on packed rows `[N, D]`: from every row (result `[N, D]`), or with `read_pos` only from
    that position of each example (result `[B, 1, D]`), which sees keys 0..read_pos under the mask."""
    keys = split_heads(packing.unpack(att.W_key(rows)), att.n_heads)
    values = split_heads(packing.unpack(att.W_value(rows)), att.n_heads)
    dropout = att.dropout if att.training else 0.0
    if read_pos is None:
        queries = split_heads(packing.unpack(att.W_query(rows)), att.n_heads)
        context = F.scaled_dot_product_attention(
            queries, keys, values, is_causal=att.causal, dropout_p=dropout
        )
        return att.out_proj(packing.pack(merge_heads(context)))
    queries = split_heads(att.W_query(packing.take(rows, read_pos)), att.n_heads)
    mask = None
    if att.causal:
        mask = (torch.arange(packing.width, device=rows.device) <= read_pos[:, None])[:, None, None, :]
    context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)
    return att.out_proj(merge_heads(context))


def run_block(
    block: TransformerBlock, rows: Tensor, packing: Packing, read_pos: Tensor | None = None
) -> Tensor:
    """`block` on packed rows, as `TransformerBlock.forward` computes it; with `read_pos` only those
    positions come out, `[B, 1, D]`."""
    shortcut = rows if read_pos is None else packing.take(rows, read_pos)
    x = shortcut + block.drop_shortcut(attend(block.att, block.norm1(rows), packing, read_pos))
    return x + block.drop_shortcut(block.ff(block.norm2(x)))


def run_blocks(blocks: nn.Sequential, rows: Tensor, packing: Packing) -> Tensor:
    """Packed rows through a stack of blocks."""
    for block in blocks:
        rows = run_block(block, rows, packing)
    return rows


def classify(
    model: GPTModel,
    x: Tensor,
    *,
    start_block: int = 0,
    read_pos: Tensor | None = None,
    mean_over: Tensor | None = None,
    prefix: Tensor | None = None,
) -> Tensor:
    """Logits `[B, out_dim]` from hidden states `x` `[B, T, D]` entering block `start_block`.

    Reads position `read_pos[b]` of each example, or averages the logits over its first
    `mean_over[b]` positions (mean pooling): pass exactly one. `prefix[b]` is how many leading
    positions the result depends on (see `Reading.needed_lengths`): only those are computed, packed,
    and in the last block only the read position. `prefix=None` computes every block at every
    position and then reads, the book's `model(x)[:, -1, :]`.
    Pass `x=model.embed(input_ids)` and `start_block=0` to run the whole model.
    """
    if (read_pos is None) == (mean_over is None):
        raise ValueError("pass exactly one of read_pos (token pooling) or mean_over (mean pooling)")
    if prefix is None:  # the book's way: logits at every position, then read
        logits = model.out_head(model.final_norm(model.trf_blocks[start_block:](x)))
        if mean_over is not None:
            return masked_mean(logits, mean_over)
        return logits[torch.arange(logits.shape[0], device=x.device), read_pos]
    packing = Packing(prefix, x.shape[1])
    return classify_rows(
        model, packing.pack(x), packing, start_block=start_block, read_pos=read_pos, mean_over=mean_over
    )


def classify_rows(
    model: GPTModel,
    rows: Tensor,
    packing: Packing,
    *,
    start_block: int = 0,
    read_pos: Tensor | None = None,
    mean_over: Tensor | None = None,
) -> Tensor:
    """`classify` from packed rows `[N, D]` (the first `packing.lengths[b]` positions of each
    example, one after another): what the frozen-trunk cache stores, so no padding is made."""
    blocks = model.trf_blocks[start_block:]
    if mean_over is not None:
        hidden = run_blocks(blocks, rows, packing)
        return packing.mean(model.out_head(model.final_norm(hidden)), mean_over)
    if len(blocks) == 0:
        x = packing.take(rows, read_pos)
    else:
        x = run_block(blocks[-1], run_blocks(blocks[:-1], rows, packing), packing, read_pos)
    return model.out_head(model.final_norm(x[:, 0]))


def masked_mean(x: Tensor, counts: Tensor) -> Tensor:
    """The mean of `x[b, :counts[b]]` for every example of `x` `[B, T, C]`: `[B, C]`."""
    real = torch.arange(x.shape[1], device=x.device) < counts[:, None]
    return (x * real[..., None]).sum(1) / counts[:, None].to(x.dtype)
