"""GPT-2 in plain PyTorch, as chapters 4-6 of the book write it: one path, `forward(x)` under the causal mask.

The names are the book's (`tok_emb`, `pos_emb`, `trf_blocks`, `final_norm`, `out_head`), and so are
the state-dict keys, which checkpoints and the weight loaders rely on. The classifier of chapter 6
reads the last position of the full forward pass, `model(x)[:, -1, :]`. Reading only some
positions, without computing what they cannot see, is `model/packed.py`: it reuses these modules'
weights and must give the same numbers.
"""

from __future__ import annotations

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


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """`[B, T, D]` to one sequence per head, `[B, heads, T, D / heads]`."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, n_heads, width // n_heads).transpose(1, 2)


def merge_heads(context: Tensor) -> Tensor:
    """`[B, heads, T, head_dim]` back to `[B, T, D]`."""
    batch, _, tokens, _ = context.shape
    return context.transpose(1, 2).reshape(batch, tokens, -1)


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.emb_dim % cfg.n_heads:
            raise ValueError(f"emb_dim {cfg.emb_dim} is not divisible by n_heads {cfg.n_heads}")
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.dropout = cfg.drop_rate
        self.W_query = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Every position attends to itself and the positions before it (all of them if not causal)."""
        queries = split_heads(self.W_query(x), self.n_heads)
        keys = split_heads(self.W_key(x), self.n_heads)
        values = split_heads(self.W_value(x), self.n_heads)
        context = F.scaled_dot_product_attention(
            queries, keys, values, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(merge_heads(context))


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

    def forward(self, x: Tensor) -> Tensor:
        """Pre-LayerNorm: attention, then the MLP, each added to its shortcut."""
        shortcut = x
        x = self.drop_shortcut(self.att(self.norm1(x)))
        x = x + shortcut
        shortcut = x
        x = self.drop_shortcut(self.ff(self.norm2(x)))
        return x + shortcut


class GPTModel(nn.Module):
    """Token ids in, logits at every position out; chapter 6's classifier reads `model(x)[:, -1, :]`."""

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
        """Token plus position embeddings, `[B, T, D]`: what enters the first block."""
        tokens = in_idx.shape[1]
        if tokens > self.cfg.context_length:
            raise ValueError(f"{tokens} tokens exceed the context length {self.cfg.context_length}")
        positions = torch.arange(tokens, device=in_idx.device)
        return self.drop_emb(self.tok_emb(in_idx) + self.pos_emb(positions))

    def forward(self, in_idx: Tensor) -> Tensor:
        """Logits at every position, `[B, T, out_dim]`."""
        x = self.embed(in_idx)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)
