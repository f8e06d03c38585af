"""Which parameters learn: the trainable-layer policies of chapter 6, and LoRA.

Every policy starts from a fully frozen model whose `out_head` was replaced by a fresh classifier
layer (always trainable). `last_block`, the book's default, also trains the last transformer block
and `final_norm`. `lora` adds trainable low-rank factors to every linear layer of the transformer
blocks, as in the book's appendix E.

We use a small LoRA module of our own rather than peft: peft would bring transformers and
accelerate as runtime dependencies to wrap six linear layers per block, and our own layer keeps
both conventions and merges in one line. The update is `alpha * x @ A @ B` with
`lora_scaling="alpha"` (the book's bonus table, which the `book_lora_*` presets reproduce) or
`(alpha / rank) * x @ A @ B` with `"alpha_over_rank"` (appendix E since LLMs-from-scratch PR #823,
and peft's convention).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gpt_classifier.errors import GPTClassifierError
from gpt_classifier.model.gpt import GPTModel

POLICY_BLOCKS = {"last_layer": 0, "last_block": 1, "last_two_blocks": 2}
POLICIES = (*POLICY_BLOCKS, "last_n_blocks", "all", "lora")
LORA_SCALINGS = ("alpha", "alpha_over_rank")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: `base(x) + scale * (x @ A @ B)`, where
    `scale` is `alpha` (`scaling="alpha"`) or `alpha / rank` (`"alpha_over_rank"`).

    `B` starts at zero, so training starts from the pretrained function exactly.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, scaling: str = "alpha") -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(base.in_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(rank, base.out_features))
        self.alpha = alpha
        self.scale = alpha / rank if scaling == "alpha_over_rank" else alpha

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * (x @ self.A @ self.B)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` computing the same function, for export and fast prediction."""
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.scale * (self.A @ self.B).T)
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear.to(self.base.weight.device, self.base.weight.dtype)


def _swap(root: nn.Module, kind: type[nn.Module], make: Callable[[Any], nn.Module]) -> None:
    """Replace every submodule of type `kind` under `root` by `make(submodule)`."""
    for parent in list(root.modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, attr, make(child))


def add_lora(model: GPTModel, rank: int, alpha: float, scaling: str = "alpha") -> None:
    """Wrap every linear layer of the transformer blocks in a `LoRALinear`."""
    if rank < 1:
        raise GPTClassifierError(f"finetune.lora_rank={rank} must be at least 1")
    if scaling not in LORA_SCALINGS:
        raise GPTClassifierError(
            f"finetune.lora_scaling={scaling!r} is unknown: use alpha or alpha_over_rank"
        )
    _swap(model.trf_blocks, nn.Linear, lambda layer: LoRALinear(layer, rank, alpha, scaling))


def merge_lora(model: nn.Module) -> None:
    """Replace every `LoRALinear` in `model` by its merged plain `nn.Linear`, in place."""
    _swap(model, LoRALinear, LoRALinear.merged)


def apply_policy(
    model: GPTModel,
    policy: str,
    last_n_blocks: int | None = None,
    lora_rank: int = 16,
    lora_alpha: float = 16.0,
    lora_scaling: str = "alpha",
) -> None:
    """Freeze `model`, then unfreeze what `policy` trains (`last_n_blocks` needs `last_n_blocks=k`)."""
    n_layers = len(model.trf_blocks)
    if policy == "all":
        model.requires_grad_(True)
        return
    if policy == "lora":
        model.requires_grad_(False)
        add_lora(model, lora_rank, lora_alpha, lora_scaling)  # new factors are trainable, their bases frozen
        model.out_head.requires_grad_(True)
        return
    if policy in POLICY_BLOCKS:
        k = POLICY_BLOCKS[policy]
    elif policy == "last_n_blocks":
        if last_n_blocks is None or not 0 <= last_n_blocks <= n_layers:
            raise GPTClassifierError(
                f"finetune.last_n_blocks={last_n_blocks} must be between 0 and the model's {n_layers} blocks"
            )
        k = last_n_blocks
    else:
        raise GPTClassifierError(f"finetune.policy={policy!r} is unknown: use one of {', '.join(POLICIES)}")
    model.requires_grad_(False)
    model.out_head.requires_grad_(True)
    if k > 0:
        model.final_norm.requires_grad_(True)
        model.trf_blocks[n_layers - k :].requires_grad_(True)


def first_trainable_block(model: GPTModel) -> int:
    """Index of the lowest block with a trainable parameter; 0 if the embeddings learn too.

    Everything below it is the frozen trunk whose output can be cached.
    """
    if any(p.requires_grad for m in (model.tok_emb, model.pos_emb) for p in m.parameters()):
        return 0
    for index, block in enumerate(model.trf_blocks):
        if any(p.requires_grad for p in block.parameters()):
            return index
    return len(model.trf_blocks)


def count_parameters(model: GPTModel) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once (`parameters()` dedups)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
