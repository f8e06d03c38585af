"""GPT-2 in plain PyTorch, with the names used in chapters 4-6 of the book.

`GPTModel.forward` is the language model of the book. `GPTModel.classify` is the classifier's path:
it reads one position per example (or averages the real tokens), and in the last transformer block
computes the query, attention output, MLP, `final_norm` and `out_head` only at that position; keys
and values still cover every position. The result equals slicing `forward`'s output, at a fraction
of the last block's cost. `classify` can also start from hidden states at any block boundary, which
is how training reuses a cached frozen trunk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Position = Literal["last", "first", "flexible"]
Pooling = Literal["token", "mean"]


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

    def forward(self, x: Tensor, query_pos: Tensor | None = None) -> Tensor:
        """Attend from every position, or only from `query_pos` (one index per example)."""
        batch, tokens, emb_dim = x.shape
        keys, values = self._heads(self.W_key(x)), self._heads(self.W_value(x))
        dropout = self.dropout if self.training else 0.0
        if query_pos is None:
            queries = self._heads(self.W_query(x))
            context = F.scaled_dot_product_attention(
                queries, keys, values, is_causal=self.causal, dropout_p=dropout
            )
        else:
            queries = self._heads(self.W_query(gather_positions(x, query_pos)))
            mask = None
            if self.causal:  # the query at position p sees keys 0..p
                mask = torch.arange(tokens, device=x.device) <= query_pos[:, None]
                mask = mask[:, None, None, :]
            context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, -1, emb_dim)
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

    def forward(self, x: Tensor, query_pos: Tensor | None = None) -> Tensor:
        """Pre-LayerNorm block; with `query_pos` it returns only those positions, `[B, 1, D]`."""
        shortcut = x if query_pos is None else gather_positions(x, query_pos)
        x = shortcut + self.drop_shortcut(self.att(self.norm1(x), query_pos))
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

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> GPTModel:
        """GPT-2 weights by name (`gpt2-small` ... `gpt2-xl`, from the Hub) or from a local HF folder."""
        from gpt_classifier.weights import load_pretrained

        return load_pretrained(name_or_path)

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
        read_pos: Tensor,
        lengths: Tensor | None = None,
        start_block: int = 0,
        pooling: Pooling = "token",
        read_only: bool = True,
    ) -> Tensor:
        """Logits `[B, out_dim]` from hidden states `x` entering block `start_block`.

        `pooling="token"` reads position `read_pos[b]` of each example. `pooling="mean"` averages the
        logits over the first `lengths[b]` positions (the real tokens) and needs every position.
        Pass `x=model.embed(input_ids)` and `start_block=0` to run the whole model. `read_only=False`
        computes the last block at every position and then reads (the book's way, for comparison).
        """
        blocks = self.trf_blocks[start_block:]
        if pooling == "mean":
            if lengths is None:
                raise ValueError("mean pooling needs the real lengths")
            logits = self.out_head(self.final_norm(blocks(x)))
            real = torch.arange(x.shape[1], device=x.device) < lengths[:, None]
            return (logits * real[..., None]).sum(1) / lengths[:, None].to(logits.dtype)
        if len(blocks) == 0 or not read_only:
            x = gather_positions(blocks(x), read_pos)
        else:
            x = blocks[-1](blocks[:-1](x), query_pos=read_pos)
        return self.out_head(self.final_norm(x[:, 0]))


def gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """`x[b, positions[b]]` for every example, kept as a length-1 sequence: `[B, 1, D]`."""
    return x[torch.arange(x.shape[0], device=x.device), positions].unsqueeze(1)


def read_positions(lengths: Tensor, padded_length: int, position: Position) -> Tensor:
    """The position the classifier reads: the last (book), the first, or the last real token."""
    if position == "last":
        return torch.full_like(lengths, padded_length - 1)
    if position == "first":
        return torch.zeros_like(lengths)
    if position == "flexible":
        return lengths - 1
    raise ValueError(f"unknown position {position!r}: use last, first or flexible")
