"""GPT-2 in plain PyTorch, with the names used in chapters 4-6 of the book.

`GPTModel.forward` is the language model of the book. `GPTModel.classify` is the classifier's path:
it reads one position per example (or averages the real tokens) and computes only what that reading
depends on. Under the causal mask nothing after the read position matters, so every block runs on
the packed prefixes of the examples (`Packing`: no work on padding); and in the last block the query,
attention output, MLP, `final_norm` and `out_head` are computed only at the read position, while
keys and values cover the prefix. The result equals slicing `forward`'s output, at a fraction of
the cost. `classify` can also start from hidden states at any block boundary, which is how training
reuses a cached frozen trunk.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GPTConfig:
    """Architecture of a GPT-2 model; the defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.0
    qkv_bias: bool = True
    causal: bool = True
    out_dim: int | None = None  # None: a language-model head over the vocabulary

    def to_dict(self) -> dict:
        return asdict(self)


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


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.emb_dim % cfg.n_heads:
            raise ValueError(f"emb_dim {cfg.emb_dim} is not divisible by n_heads {cfg.n_heads}")
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        self.causal = cfg.causal
        self.dropout = cfg.drop_rate
        self.W_query = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)

    def _heads(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, query_pos: Tensor | None = None, packing: Packing | None = None) -> Tensor:
        """Attend from every position, or only from `query_pos` (one index per example), `[B, 1, D]`.

        With `packing`, `x` holds the packed rows `[N, D]` of a padded batch, and so does the result.
        """
        keys, values = self.W_key(x), self.W_value(x)
        if packing:
            keys, values = packing.unpack(keys), packing.unpack(values)
        keys, values = self._heads(keys), self._heads(values)
        batch, _, tokens, _ = keys.shape
        dropout = self.dropout if self.training else 0.0
        if query_pos is None:
            queries = self.W_query(x)
            queries = self._heads(packing.unpack(queries) if packing else queries)
            context = F.scaled_dot_product_attention(
                queries, keys, values, is_causal=self.causal, dropout_p=dropout
            )
        else:
            at = packing.take(x, query_pos) if packing else gather_positions(x, query_pos)
            queries = self._heads(self.W_query(at))
            mask = None
            if self.causal:  # the query at position p sees keys 0..p
                mask = torch.arange(tokens, device=x.device) <= query_pos[:, None]
                mask = mask[:, None, None, :]
            context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, -1, x.shape[-1])
        if packing and query_pos is None:
            context = packing.pack(context)
        return self.out_proj(context)


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.att = MultiHeadAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: Tensor, query_pos: Tensor | None = None, packing: Packing | None = None) -> Tensor:
        """Pre-LayerNorm block; with `query_pos` it returns only those positions, `[B, 1, D]`.
        With `packing`, `x` (and the result without `query_pos`) are packed rows `[N, D]`."""
        shortcut = x
        if query_pos is not None:
            shortcut = packing.take(x, query_pos) if packing else gather_positions(x, query_pos)
        x = shortcut + self.drop_shortcut(self.att(self.norm1(x), query_pos, packing))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = nn.LayerNorm(cfg.emb_dim, eps=1e-5)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.out_dim or cfg.vocab_size, bias=False)

    def embed(self, in_idx: Tensor) -> Tensor:
        tokens = in_idx.shape[1]
        if tokens > self.cfg.context_length:
            raise ValueError(f"{tokens} tokens exceed the context length {self.cfg.context_length}")
        positions = torch.arange(tokens, device=in_idx.device)
        return self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))

    def forward(self, in_idx: Tensor) -> Tensor:
        """Logits at every position, `[B, T, out_dim]`."""
        x = self.trf_blocks(self.embed(in_idx))
        return self.out_head(self.final_norm(x))

    def classify(
        self,
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
        positions the result depends on (see `Reading.needed_lengths`): only those are computed,
        packed, and in the last block only the read position (`Packing`). `prefix=None` computes
        every block at every position and then reads, the book's `model(x)[:, -1, :]`.
        Pass `x=model.embed(input_ids)` and `start_block=0` to run the whole model.
        """
        if (read_pos is None) == (mean_over is None):
            raise ValueError("pass exactly one of read_pos (token pooling) or mean_over (mean pooling)")
        blocks = self.trf_blocks[start_block:]
        if prefix is None:  # the book's way: logits at every position, then read
            logits = self.out_head(self.final_norm(blocks(x)))  # the book's `model(x)`, then `[:, -1, :]`
            if mean_over is not None:
                return masked_mean(logits, mean_over)
            return logits[torch.arange(logits.shape[0], device=x.device), read_pos]
        packing = Packing(prefix, x.shape[1])
        return self.classify_rows(
            packing.pack(x), packing, start_block=start_block, read_pos=read_pos, mean_over=mean_over
        )

    def classify_rows(
        self,
        rows: Tensor,
        packing: Packing,
        *,
        start_block: int = 0,
        read_pos: Tensor | None = None,
        mean_over: Tensor | None = None,
    ) -> Tensor:
        """`classify` from packed rows `[N, D]` (the first `packing.lengths[b]` positions of each
        example, one after another): what the frozen-trunk cache stores, so no padding is made."""
        blocks = self.trf_blocks[start_block:]
        if mean_over is not None:
            return packing.mean(self.out_head(self.final_norm(run_blocks(blocks, rows, packing))), mean_over)
        if len(blocks) == 0:
            x = packing.take(rows, read_pos)
        else:
            x = blocks[-1](run_blocks(blocks[:-1], rows, packing), query_pos=read_pos, packing=packing)
        return self.out_head(self.final_norm(x[:, 0]))


def run_blocks(blocks: nn.Sequential, rows: Tensor, packing: Packing) -> Tensor:
    """Packed rows through a stack of blocks."""
    for block in blocks:
        rows = block(rows, packing=packing)
    return rows


def masked_mean(x: Tensor, counts: Tensor) -> Tensor:
    """The mean of `x[b, :counts[b]]` for every example of `x` `[B, T, C]`: `[B, C]`."""
    real = torch.arange(x.shape[1], device=x.device) < counts[:, None]
    return (x * real[..., None]).sum(1) / counts[:, None].to(x.dtype)


def gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """`x[b, positions[b]]` for every example, kept as a length-1 sequence: `[B, 1, D]`."""
    return x[torch.arange(x.shape[0], device=x.device), positions].unsqueeze(1)
